//! gustd's configuration: flags, their defaults, and validation before start.
//!
//! Every operational limit is here or in `crate::limits` (which holds the
//! protocol's fixed bounds and the ceilings this configuration is checked
//! against).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use argh::FromArgs;

use crate::chat::accounts::AccountsConfig;
use crate::chat::reader::ReaderConfig;
use crate::chat::writer::WriterConfig;
use crate::limits;
use crate::protocol::cipher::PSK_LEN;
use crate::store::background::BackgroundPriority;
use crate::store::{CompactionIo, Durability, StoreConfig};

/// gustd: the gust instant-messaging server.
#[derive(FromArgs, Debug)]
pub struct Flags {
    /// address to listen on (default 127.0.0.1:7700)
    #[argh(option, default = "default_listen()")]
    pub listen: SocketAddr,

    /// directory of the RocksDB store, created if missing (default ./gust-data)
    #[argh(option, default = "PathBuf::from(\"gust-data\")")]
    pub data_dir: PathBuf,

    /// event-loop threads, each owning its connections (default: half the
    /// cores, rounded up)
    #[argh(option)]
    pub shards: Option<usize>,

    /// how connections reach the shards: "reuseport" (default: one
    /// SO_REUSEPORT listener per shard, the kernel spreads connections) or
    /// "single" (shard 0 accepts and hands sockets out in turn)
    #[argh(option, default = "String::from(\"reuseport\")")]
    pub accept_mode: String,

    /// when an ack is sent: "sync" fsyncs the WAL first (survives power
    /// loss; the default), "buffered" once the WAL is in the page cache
    /// (survives kill -9, not power loss)
    #[argh(option, default = "String::from(\"sync\")")]
    pub durability: String,

    /// log level: error, warn, info, debug or trace (default info)
    #[argh(option, default = "String::from(\"info\")")]
    pub log_level: String,

    /// file holding the 32-byte pre-shared key that enables the
    /// chacha20-poly1305 payload cipher (raw or 64 hex digits)
    #[argh(option)]
    pub psk_file: Option<PathBuf>,

    /// most open connections across all shards (default 1,000,000)
    #[argh(option, default = "1_000_000")]
    pub max_connections: usize,

    /// seconds a connection has to finish hello and login (default 10)
    #[argh(option, default = "10")]
    pub handshake_timeout_secs: u64,

    /// seconds without a whole frame before a connection is closed (default 60)
    #[argh(option, default = "60")]
    pub idle_timeout_secs: u64,

    /// bytes queued to one connection before it is marked behind and catches
    /// up from storage instead, and is not read until its answers drain
    /// (default 262144)
    #[argh(option, default = "256 * 1024")]
    pub send_queue_bytes_max: usize,

    /// largest frame payload accepted from clients (default 1048576)
    #[argh(option, default = "limits::PAYLOAD_LEN_DEFAULT")]
    pub payload_len_max: u32,

    /// argon2id memory cost in KiB (default 19456, OWASP's minimum)
    #[argh(option, default = "19_456")]
    pub argon2_memory_kib: u32,

    /// argon2id iterations (default 2)
    #[argh(option, default = "2")]
    pub argon2_iterations: u32,

    /// failed logins per username or address within a minute before further
    /// attempts are refused (default 5)
    #[argh(option, default = "5")]
    pub login_failures_max: u32,

    /// password-hashing threads (default: one per core)
    #[argh(option)]
    pub hashers: Option<usize>,

    /// threads serving sync and history reads (default 2)
    #[argh(option, default = "2")]
    pub readers: usize,

    /// requests the storage writer groups into one commit (default 4096)
    #[argh(option, default = "4096")]
    pub batch_requests_max: usize,

    /// bytes of RocksDB write-ahead log kept before the oldest is flushed
    /// away: bounds the replay after a crash (default 536870912)
    #[argh(option, default = "limits::WAL_BYTES_MAX_DEFAULT")]
    pub wal_bytes_max: u64,

    /// bytes of RocksDB block cache, shared by every family, which also
    /// holds the messages log's index and filter: bounds what a growing log
    /// costs in memory (default 134217728, at least 16777216)
    #[argh(option, default = "limits::BLOCK_CACHE_BYTES_DEFAULT")]
    pub block_cache_bytes: u64,

    /// how RocksDB's flushes and compactions write: "direct" (default:
    /// O_DIRECT, around the page cache, so the write-ahead log's fsyncs do
    /// not queue behind their writeback bursts) or "buffered" (through the
    /// page cache)
    #[argh(option, default = "String::from(\"direct\")")]
    pub compaction_io: String,

    /// CPU priority of RocksDB's flushes and compactions: "adaptive"
    /// (default: idle while they have slack, normal once they fall behind;
    /// needs CAP_SYS_NICE or LimitNICE=+0, else it stays normal) or "normal"
    #[argh(option, default = "String::from(\"adaptive\")")]
    pub background_priority: String,

    /// print the version and exit
    #[argh(switch)]
    pub version: bool,
}

/// The embedded default: loopback only, so a fresh install exposes nothing.
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7700))
}

/// How accepted connections are spread over the shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcceptMode {
    /// One SO_REUSEPORT listener per shard: the kernel balances, no hand-off.
    ReusePort,
    /// Shard 0 accepts everything and hands sockets out round-robin.
    Single,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub shards: usize,
    pub accept_mode: AcceptMode,
    pub store: StoreConfig,
    pub background_priority: BackgroundPriority,
    pub log_level: log::LevelFilter,
    pub psk: Option<[u8; PSK_LEN]>,
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub send_queue_bytes_max: usize,
    pub payload_len_max: u32,
    pub hashers: usize,
    pub readers: usize,
    pub accounts: AccountsConfig,
    pub writer: WriterConfig,
    pub reader: ReaderConfig,
}

/// Connections one shard may hold is `max_connections / shards`; the slab
/// index of a token is 32 bits.
const CONNECTIONS_CEILING: usize = u32::MAX as usize;

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Half the cores, rounded up. The storage writer and its committer are
/// busy threads of their own at load, and RocksDB's flushes and compactions
/// need a core too: a shard per core oversubscribes the box, every loop turn
/// then gets shorter, and shorter turns carry fewer frames per socket call.
/// On 2 cores one shard carried 15 % more 1:1 chat than two at 10,000
/// connections, at the same latency at half load (BENCHMARKS.md, "One shard
/// on two cores").
fn default_shards() -> usize {
    shards_for_cores(cores())
}

fn shards_for_cores(cores: usize) -> usize {
    cores.div_ceil(2).max(1)
}

/// The value of a flag that names one of two modes.
fn one_of<T: Copy>(flag: &str, value: &str, choices: [(&str, T); 2]) -> Result<T, String> {
    let [(first, a), (second, b)] = choices;
    match value {
        v if v == first => Ok(a),
        v if v == second => Ok(b),
        other => Err(format!("{flag} must be {first} or {second}, not {other:?}")),
    }
}

impl Config {
    pub fn from_flags(flags: Flags) -> Result<Config, String> {
        let durability = one_of(
            "--durability",
            &flags.durability,
            [
                ("sync", Durability::Sync),
                ("buffered", Durability::Buffered),
            ],
        )?;
        let log_level = flags
            .log_level
            .parse::<log::LevelFilter>()
            .map_err(|_| format!("--log-level {:?} is not a level", flags.log_level))?;
        let psk = match &flags.psk_file {
            None => None,
            Some(path) => Some(read_psk(path)?),
        };
        let accept_mode = one_of(
            "--accept-mode",
            &flags.accept_mode,
            [
                ("reuseport", AcceptMode::ReusePort),
                ("single", AcceptMode::Single),
            ],
        )?;
        let shards = flags.shards.unwrap_or_else(default_shards);
        if shards == 0 || shards > 1024 {
            return Err("--shards must be between 1 and 1024".into());
        }
        if flags.max_connections == 0 || flags.max_connections > CONNECTIONS_CEILING {
            return Err("--max-connections out of range".into());
        }
        if !(limits::PAYLOAD_LEN_FLOOR..=limits::PAYLOAD_LEN_CEILING)
            .contains(&flags.payload_len_max)
        {
            return Err(format!(
                "--payload-len-max must be between {} and {}",
                limits::PAYLOAD_LEN_FLOOR,
                limits::PAYLOAD_LEN_CEILING
            ));
        }
        if flags.handshake_timeout_secs == 0 || flags.idle_timeout_secs == 0 {
            return Err("timeouts must be at least one second".into());
        }
        if flags.idle_timeout_secs > 24 * 3600 || flags.handshake_timeout_secs > 3600 {
            return Err("timeouts are capped at a day (idle) and an hour (handshake)".into());
        }
        if flags.send_queue_bytes_max < 64 * 1024 {
            return Err(
                "--send-queue-bytes-max must be at least 65536 (a sync page must fit)".into(),
            );
        }
        if flags.argon2_memory_kib < 8 || flags.argon2_iterations == 0 {
            return Err("argon2 costs too low".into());
        }
        if flags.readers == 0 || flags.batch_requests_max == 0 {
            return Err("--readers and --batch-requests-max must be at least 1".into());
        }
        if flags.wal_bytes_max < limits::WAL_BYTES_MAX_FLOOR {
            return Err(format!(
                "--wal-bytes-max must be at least {}",
                limits::WAL_BYTES_MAX_FLOOR
            ));
        }
        if !(limits::BLOCK_CACHE_BYTES_FLOOR..=limits::BLOCK_CACHE_BYTES_CEILING)
            .contains(&flags.block_cache_bytes)
        {
            return Err(format!(
                "--block-cache-bytes must be between {} and {}",
                limits::BLOCK_CACHE_BYTES_FLOOR,
                limits::BLOCK_CACHE_BYTES_CEILING
            ));
        }
        let compaction_io = one_of(
            "--compaction-io",
            &flags.compaction_io,
            [
                ("direct", CompactionIo::Direct),
                ("buffered", CompactionIo::Buffered),
            ],
        )?;
        let background_priority = one_of(
            "--background-priority",
            &flags.background_priority,
            [
                ("adaptive", BackgroundPriority::Adaptive),
                ("normal", BackgroundPriority::Normal),
            ],
        )?;
        let hashers = flags.hashers.unwrap_or_else(cores).max(1);
        Ok(Config {
            listen: flags.listen,
            data_dir: flags.data_dir,
            shards,
            accept_mode,
            store: StoreConfig {
                durability,
                wal_bytes_max: flags.wal_bytes_max,
                compaction_io,
                block_cache_bytes: flags.block_cache_bytes,
            },
            background_priority,
            log_level,
            psk,
            max_connections: flags.max_connections,
            handshake_timeout: Duration::from_secs(flags.handshake_timeout_secs),
            idle_timeout: Duration::from_secs(flags.idle_timeout_secs),
            send_queue_bytes_max: flags.send_queue_bytes_max,
            payload_len_max: flags.payload_len_max,
            hashers,
            readers: flags.readers,
            accounts: AccountsConfig {
                argon2_memory_kib: flags.argon2_memory_kib,
                argon2_iterations: flags.argon2_iterations,
                login_failures_max: flags.login_failures_max,
                login_failure_window: Duration::from_secs(60),
            },
            writer: WriterConfig {
                batch_requests_max: flags.batch_requests_max,
                ..WriterConfig::default()
            },
            reader: ReaderConfig {
                // Sync pages stay well inside what the client accepts, and
                // no page passes it.
                page_bytes_max: (flags.payload_len_max as usize / 2)
                    .min(flags.send_queue_bytes_max / 4),
                page_items_bytes_max: (flags.payload_len_max as usize)
                    .saturating_sub(limits::PAGE_FRAMING_BYTES_MAX),
                ..ReaderConfig::default()
            },
        })
    }
}

fn read_psk(path: &std::path::Path) -> Result<[u8; PSK_LEN], String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let trimmed = text.trim();
    let mut key = [0u8; PSK_LEN];
    if trimmed.len() == PSK_LEN * 2 && trimmed.chars().all(|c| c.is_ascii_hexdigit()) {
        for (i, byte) in key.iter_mut().enumerate() {
            *byte =
                u8::from_str_radix(&trimmed[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        return Ok(key);
    }
    if bytes.len() == PSK_LEN {
        key.copy_from_slice(&bytes);
        return Ok(key);
    }
    Err(format!(
        "{} must hold 32 raw bytes or 64 hex digits",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Result<Config, String> {
        let flags = Flags::from_args(&["gustd"], args).map_err(|e| e.output)?;
        Config::from_flags(flags)
    }

    #[test]
    fn write_ahead_log_bound_defaults_and_floor() {
        let default = config(&[]).expect("defaults are valid");
        assert_eq!(default.store.wal_bytes_max, limits::WAL_BYTES_MAX_DEFAULT);
        let floor = limits::WAL_BYTES_MAX_FLOOR.to_string();
        let set = config(&["--wal-bytes-max", &floor]).expect("the floor is valid");
        assert_eq!(set.store.wal_bytes_max, limits::WAL_BYTES_MAX_FLOOR);
        let below = (limits::WAL_BYTES_MAX_FLOOR - 1).to_string();
        let error = config(&["--wal-bytes-max", &below]).expect_err("below the floor");
        assert!(error.contains("--wal-bytes-max"), "{error}");
    }

    #[test]
    fn block_cache_defaults_and_floor() {
        let default = config(&[]).expect("defaults are valid");
        assert_eq!(
            default.store.block_cache_bytes,
            limits::BLOCK_CACHE_BYTES_DEFAULT
        );
        let floor = limits::BLOCK_CACHE_BYTES_FLOOR.to_string();
        let set = config(&["--block-cache-bytes", &floor]).expect("the floor is valid");
        assert_eq!(set.store.block_cache_bytes, limits::BLOCK_CACHE_BYTES_FLOOR);
        let below = (limits::BLOCK_CACHE_BYTES_FLOOR - 1).to_string();
        let error = config(&["--block-cache-bytes", &below]).expect_err("below the floor");
        assert!(error.contains("--block-cache-bytes"), "{error}");
        let ceiling = limits::BLOCK_CACHE_BYTES_CEILING.to_string();
        let set = config(&["--block-cache-bytes", &ceiling]).expect("the ceiling is valid");
        assert_eq!(
            set.store.block_cache_bytes,
            limits::BLOCK_CACHE_BYTES_CEILING
        );
        let error =
            config(&["--block-cache-bytes", &u64::MAX.to_string()]).expect_err("above the ceiling");
        assert!(error.contains("--block-cache-bytes"), "{error}");
    }

    #[test]
    fn shards_default_to_half_the_cores() {
        let pairs: Vec<(usize, usize)> = [1, 2, 3, 4, 16, 64]
            .into_iter()
            .map(|cores| (cores, shards_for_cores(cores)))
            .collect();
        assert_eq!(pairs, [(1, 1), (2, 1), (3, 2), (4, 2), (16, 8), (64, 32)]);
        let default = config(&[]).expect("defaults are valid");
        assert_eq!(default.shards, shards_for_cores(cores()));
        let set = config(&["--shards", "3"]).expect("an explicit count is valid");
        assert_eq!(set.shards, 3);
        let error = config(&["--shards", "0"]).expect_err("no shards");
        assert!(error.contains("--shards"), "{error}");
    }

    #[test]
    fn compaction_io_defaults_to_direct() {
        let default = config(&[]).expect("defaults are valid");
        assert_eq!(default.store.compaction_io, CompactionIo::Direct);
        let set = config(&["--compaction-io", "buffered"]).expect("buffered is valid");
        assert_eq!(set.store.compaction_io, CompactionIo::Buffered);
        let error = config(&["--compaction-io", "async"]).expect_err("unknown mode");
        assert!(error.contains("--compaction-io"), "{error}");
    }

    #[test]
    fn background_priority_defaults_to_adaptive() {
        let default = config(&[]).expect("defaults are valid");
        assert_eq!(default.background_priority, BackgroundPriority::Adaptive);
        let set = config(&["--background-priority", "normal"]).expect("normal is valid");
        assert_eq!(set.background_priority, BackgroundPriority::Normal);
        let error = config(&["--background-priority", "idle"]).expect_err("unknown mode");
        assert!(error.contains("--background-priority"), "{error}");
    }
}
