//! The store: gust's only persistent state, behind a narrow interface.
//!
//! This is the one module that imports `rocksdb` (see `keys.rs` for every key
//! and `records.rs` for every value). Column families:
//!
//! | family          | key                         | value                     |
//! |-----------------|-----------------------------|---------------------------|
//! | `messages`      | conversation, seq           | wire-encoded `Message`    |
//! | `conversations` | conversation                | `ConversationRecord`      |
//! | `direct`        | lower user, higher user     | conversation id           |
//! | `members`       | user, conversation          | `MemberRecord` (cursors)  |
//! | `users`         | user id                     | `UserRecord`              |
//! | `usernames`     | username                    | user id                   |
//! | `sessions`      | SHA-256(token)              | `SessionRecord`           |
//! | `dedupe`        | sender, client message id   | `DedupeRecord`            |
//! | `default`       | `counters`                  | `Counters`                |
//!
//! Writes happen only on the storage writer thread, one `WriteBatch` per
//! cycle (group commit); reads may come from any thread.

pub mod background;
pub mod keys;
pub mod mounts;
pub mod records;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, Direction,
    IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions, DB,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::limits;
use crate::protocol::body_codec;
use crate::protocol::{ConversationId, Message, Seq, UserId};
use background::Backlog;
use records::*;

const CF_MESSAGES: &str = "messages";
const CF_CONVERSATIONS: &str = "conversations";
const CF_DIRECT: &str = "direct";
const CF_MEMBERS: &str = "members";
const CF_USERS: &str = "users";
const CF_USERNAMES: &str = "usernames";
const CF_SESSIONS: &str = "sessions";
const CF_DEDUPE: &str = "dedupe";
const CF_DEVICES: &str = "devices";

const FAMILIES: [&str; 9] = [
    CF_MESSAGES,
    CF_CONVERSATIONS,
    CF_DIRECT,
    CF_MEMBERS,
    CF_USERS,
    CF_USERNAMES,
    CF_SESSIONS,
    CF_DEDUPE,
    CF_DEVICES,
];

/// What the server promises about an acknowledged message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// The WAL is fsynced before the ack: survives power loss.
    Sync,
    /// The WAL is written to the page cache before the ack: survives the
    /// process being killed, not the machine losing power.
    Buffered,
}

/// How flushes and compactions write their files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompactionIo {
    /// Around the page cache (`O_DIRECT`): each write reaches the disk when
    /// RocksDB makes it (a MiB at a time, the thread waiting for it), so at
    /// most that much compaction I/O is ever ahead of a write-ahead-log
    /// fsync, which every ack waits on. Buffered, a compaction's hundreds of
    /// megabytes pile up in the page cache and leave in writeback bursts that
    /// the log's fsyncs queue behind: at 50,000 msg/s for 120 s the
    /// send→deliver p99 was 32–48 ms buffered and 12–19 ms direct
    /// (BENCHMARKS.md). It also saves copying every flushed and compacted
    /// byte into the page cache.
    /// Falls back to `Buffered`, with a warning, on a filesystem that
    /// refuses `O_DIRECT`.
    Direct,
    /// RocksDB's default: through the page cache, written back by the kernel.
    Buffered,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Engine(#[from] rocksdb::Error),
    #[error("corrupt record in {family}: {detail}")]
    Corrupt {
        family: &'static str,
        detail: String,
    },
    #[error("column family {0} missing")]
    MissingFamily(&'static str),
    /// A commit failure injected by a unit test.
    #[cfg(test)]
    #[error("injected commit failure")]
    Injected,
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A cheap-to-clone handle on the open database.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
    durability: Durability,
    /// When each call on the write path in flight started (the commit, and
    /// the storage writer's dedupe lookup), in nanoseconds after `epoch`, 0
    /// for none: read by the background governor without RocksDB's mutex.
    write_path_started_ns: Arc<[AtomicU64; WRITE_PATH_CALLS]>,
    epoch: Instant,
    /// Unit tests script the next commits: each takes the front entry,
    /// sleeps that long (holding the batch in flight while the writer builds
    /// the next), then fails if the flag says so.
    #[cfg(test)]
    pub(crate) commit_script:
        Arc<std::sync::Mutex<std::collections::VecDeque<(std::time::Duration, bool)>>>,
    /// Set once [`Store::cancel_after`]'s deadline passed.
    cancelled: Arc<AtomicBool>,
    /// Unit tests make `flush` wait first, until the store is cancelled, as
    /// a RocksDB flush waiting for a write stall that cannot clear would.
    #[cfg(test)]
    pub(crate) flush_holds: Arc<AtomicBool>,
}

/// Writes gathered for one commit. They are kept as a list and put into a
/// RocksDB `WriteBatch` only at commit, sorted by family and key: RocksDB
/// inserts a batch into its memtable skiplists in batch order, and an insert
/// near the previous one reuses its search path, while arrival order (sends
/// to conversations all over the key space) made the skiplist search most
/// of a commit's CPU. Building the batch at commit also moves that copying
/// from the storage writer to the committer thread.
pub struct Batch {
    ops: Vec<BatchOp>,
    /// Every op's key, back to back.
    keys: Vec<u8>,
}

struct BatchOp {
    /// Index into `FAMILIES`, or `DEFAULT_FAMILY`.
    family: u8,
    key: std::ops::Range<usize>,
    /// `None` deletes the key.
    value: Option<Bytes>,
}

/// `BatchOp::family` of a named family.
fn family_index(family: &'static str) -> StoreResult<u8> {
    FAMILIES
        .iter()
        .position(|name| *name == family)
        // FAMILIES has 9 entries: the index fits.
        .map(|index| index as u8)
        .ok_or(StoreError::MissingFamily(family))
}

/// RocksDB's write batch starts with a 12-byte header (sequence, count).
const WRITE_BATCH_HEADER: usize = 12;
/// Per put in a RocksDB write batch: a tag byte, a column family varint and
/// two length varints; 12 bytes covers them with room to spare.
const BATCH_OP_OVERHEAD: usize = 12;

/// Bloom filter bits per key: about 1 % false positives.
const FILTER_BITS_PER_KEY: f64 = 10.0;

/// The dedupe family's filter is asked about every send, and the answer is
/// almost always "not there": each false positive is a data-block read (a
/// `pread`) on the storage writer's path, once per sorted run of the family.
/// At 10 bits the writer made ~3,000 reads a second late in a 120 s run; at
/// 20 bits (~0.03 % false positives) ~120, and the sustained rate rose from
/// 133–138k to 146–150k msg/s (BENCHMARKS.md). The price is memory: filters
/// stay resident, 2.5 bytes per dedupe entry instead of 1.25.
const DEDUPE_FILTER_BITS_PER_KEY: f64 = 20.0;

/// The largest single write RocksDB makes to a file (its write buffer): with
/// direct I/O (`--compaction-io direct`, the default) flushes and
/// compactions write their tables in pieces of this size. Every
/// commit's `fdatasync` ends in a cache flush that the disk completes only
/// after the writes already queued ahead of it, so it waits behind whatever
/// piece of a table is in flight. At RocksDB's default, 1 MiB, a memtable
/// flush (56 MB in ~0.3 s here) made `fdatasync` 4× slower at the p90 for
/// its duration (2.4–2.8 ms against 0.6–0.7); at 128 KiB the p99
/// send→deliver at 100,000 msg/s fell by about a quarter in three of four
/// same-hour series (BENCHMARKS.md, "Commits behind a flush's writes"). The
/// write-ahead log goes through the same buffer (never direct I/O; RocksDB
/// appends it in pieces of at most 32 KiB), so a commit larger than this is
/// several `write`s into the page cache instead of one: a few system calls
/// per large commit, with no change to what reaches the disk at
/// `fdatasync` (window 8, whose commits run to ~800 KB, measured level).
const FILE_WRITE_CHUNK_BYTES: u64 = 128 * 1024;

/// The families written on every send, which get
/// [`limits::MEMTABLES_BUSY_FAMILY`] memtables.
const BUSY_FAMILIES: [&str; 2] = [CF_MESSAGES, CF_DEDUPE];

/// RocksDB's flush and compaction threads: a quarter (at least one) flush,
/// the rest compactions.
const ROCKSDB_BACKGROUND_JOBS: i32 = 3;

/// RocksDB's own memtable limit per family (`max_write_buffer_number`).
const ROCKSDB_MEMTABLES_DEFAULT: u64 = 2;

/// `BatchOp::family` of RocksDB's default family (the counters).
const DEFAULT_FAMILY: u8 = FAMILIES.len() as u8;

/// How the store is opened: `gustd`'s flags set both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    pub durability: Durability,
    /// Bytes of write-ahead log kept before RocksDB flushes the families
    /// that pin the oldest log file (`max_total_wal_size`). It bounds the
    /// replay after a crash and the disk the log takes; see
    /// [`limits::WAL_BYTES_MAX_DEFAULT`].
    pub wal_bytes_max: u64,
    pub compaction_io: CompactionIo,
    /// The block cache every family shares, which holds the messages
    /// family's index and filter too; see [`limits::BLOCK_CACHE_BYTES_DEFAULT`].
    pub block_cache_bytes: u64,
}

impl StoreConfig {
    /// `durability` with every other setting at its default.
    pub fn with_durability(durability: Durability) -> StoreConfig {
        StoreConfig {
            durability,
            wal_bytes_max: limits::WAL_BYTES_MAX_DEFAULT,
            compaction_io: CompactionIo::Direct,
            block_cache_bytes: limits::BLOCK_CACHE_BYTES_DEFAULT,
        }
    }
}

impl Store {
    /// Opens with every setting but the durability at its default.
    pub fn open(path: &Path, durability: Durability) -> StoreResult<Store> {
        Store::open_with(path, StoreConfig::with_durability(durability))
    }

    pub fn open_with(path: &Path, config: StoreConfig) -> StoreResult<Store> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        // One writer thread produces large batches; let flush and compaction
        // run beside it: one flush thread and two compaction threads. Every
        // flush of the messages family spans every active conversation, so
        // each level-0 compaction rewrites the whole base level; with one
        // compaction thread those always won, the base level grew, each got
        // longer, and level 0 filled to RocksDB's write slowdown. A second
        // thread pushes the base level down meanwhile: over five minutes at
        // window 16, +6 % and a quarter of the slowdowns (BENCHMARKS.md,
        // "Two compaction threads"). Compactions run on idle CPU time
        // until they fall behind (`background`), which for the busy
        // families' level-0 compactions is as soon as they are due
        // (`limits::LEVEL0_FILES_COMPETE`); the fixed-rate latency rows
        // measured within the noise with the second thread.
        options.increase_parallelism(2);
        options.set_max_background_jobs(ROCKSDB_BACKGROUND_JOBS);
        options.set_max_total_wal_size(config.wal_bytes_max);
        options.set_writable_file_max_buffer_size(FILE_WRITE_CHUNK_BYTES);
        if config.compaction_io == CompactionIo::Direct {
            if let Err(e) = probe_direct_io(path) {
                log::warn!(
                    "{} refuses O_DIRECT ({e}): flushes and compactions write through the page cache",
                    path.display()
                );
            } else {
                options.set_use_direct_io_for_flush_and_compaction(true);
            }
        }
        // One cache for every family's data blocks (without it RocksDB gives
        // each family its own 32 MiB), which holds the messages family's
        // index and filter too. Its size is held to the ceiling here as well
        // as in the flags: RocksDB's per-shard arithmetic wraps near the top
        // of the range (and a 32-bit usize takes half of it).
        let block_cache_bytes = config
            .block_cache_bytes
            .min(limits::BLOCK_CACHE_BYTES_CEILING);
        let block_cache =
            Cache::new_lru_cache(usize::try_from(block_cache_bytes).unwrap_or(usize::MAX >> 1));
        let families = FAMILIES.iter().map(|name| {
            let mut family = Options::default();
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&block_cache);
            if *name == CF_MESSAGES {
                // The log only grows, and RocksDB would keep every table's
                // index and filter in memory for as long as the table
                // exists: ~2.5 bytes per stored message. Both are
                // partitioned and live in a bounded cache, so a miss loads
                // one 4 KiB partition; each table's top level (~1/150 of
                // its index) and the level-0 tables' blocks stay pinned.
                // The family is read by range (catch-up, history, the
                // newest message), where a whole-key filter plays no part,
                // and by point reads that always hit (history by time):
                // there the filter spares the newer tables whose range the
                // key falls in, but not the level that holds it, so the
                // bottom level, most of the keys, has none.
                table.set_cache_index_and_filter_blocks(true);
                table.set_pin_l0_filter_and_index_blocks_in_cache(true);
                table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
                table.set_metadata_block_size(4096);
                table.set_pin_top_level_index_and_filter(true);
                table.set_bloom_filter(FILTER_BITS_PER_KEY, false);
                table.set_partition_filters(true);
                family.set_optimize_filters_for_hits(true);
            } else {
                // Point lookups (dedupe, sessions, usernames) mostly miss or
                // hit one key: a bloom filter turns a miss into no disk read.
                // The dedupe family's filters and index stay resident: every
                // send looks it up, and from a cache each of those probes
                // (one per level-0 table) cost a lookup and, at 256 MiB, a
                // storage writer that fell behind (BENCHMARKS.md).
                let bits_per_key = if *name == CF_DEDUPE {
                    DEDUPE_FILTER_BITS_PER_KEY
                } else {
                    FILTER_BITS_PER_KEY
                };
                table.set_bloom_filter(bits_per_key, false);
            }
            family.set_block_based_table_factory(&table);
            if *name == CF_MESSAGES {
                family.set_write_buffer_size(64 * 1024 * 1024);
            }
            if BUSY_FAMILIES.contains(name) {
                family.set_max_write_buffer_number(limits::MEMTABLES_BUSY_FAMILY as i32);
                family.set_level_zero_file_num_compaction_trigger(limits::LEVEL0_FILES_COMPACT);
                family.set_level_zero_slowdown_writes_trigger(limits::LEVEL0_FILES_SLOW_WRITES);
                family.set_level_zero_stop_writes_trigger(limits::LEVEL0_FILES_STOP_WRITES);
            }
            if *name == CF_DEDUPE {
                // Every send looks its (sender, client id) up and almost
                // always misses: a memtable bloom filter answers most misses
                // without walking the skiplist. (A hash memtable made the
                // insert and lookup cheaper but cost more than it saved: a
                // flush must sort it first, measured at a seventh of the
                // server's CPU.)
                family.set_memtable_prefix_bloom_ratio(0.1);
                family.set_memtable_whole_key_filtering(true);
            }
            ColumnFamilyDescriptor::new(*name, family)
        });
        let db = DB::open_cf_descriptors(&options, path, families)?;
        if let Some(mount) = mounts::mount_of(path).filter(|m| m.online_discard) {
            log::warn!(
                "{} is on {} ({}), mounted with online discard: every log and table \
                 RocksDB deletes is trimmed while commits wait on their fsync, which \
                 stalls acks for tens of milliseconds; mount it with nodiscard and trim \
                 it periodically (fstrim.timer)",
                path.display(),
                mount.mount_point.display(),
                mount.fs_type
            );
        }
        Ok(Store {
            db: Arc::new(db),
            durability: config.durability,
            write_path_started_ns: Arc::default(),
            epoch: Instant::now(),
            #[cfg(test)]
            commit_script: Arc::default(),
            cancelled: Arc::default(),
            #[cfg(test)]
            flush_holds: Arc::default(),
        })
    }

    /// What RocksDB's flushes and compactions have queued, for the
    /// background governor (`background.rs`). A write-path call that has run
    /// past [`limits::WRITE_PATH_STALL_COMPETE`] is reported without reading
    /// RocksDB's figures, which wait for its mutex: what holds the call up
    /// may be a background thread holding that mutex on idle time.
    pub fn backlog(&self) -> Backlog {
        let mut backlog = Backlog {
            write_path_busy_for: self.write_path_busy_for(),
            ..Backlog::default()
        };
        if backlog.write_path_busy_for >= limits::WRITE_PATH_STALL_COMPETE {
            return backlog;
        }
        let default_family = self.db.cf_handle(rocksdb::DEFAULT_COLUMN_FAMILY_NAME);
        let families = FAMILIES
            .iter()
            .map(|name| (*name, self.family(name).ok()))
            .chain([(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, default_family)]);
        for (name, cf) in families {
            let Some(cf) = cf else {
                backlog.unreadable = true;
                continue;
            };
            let mut int = |property: &str| match self.db.property_int_value_cf(cf, property) {
                Ok(Some(value)) => value,
                _ => {
                    backlog.unreadable = true;
                    0
                }
            };
            let immutable = int("rocksdb.num-immutable-mem-table");
            let level0 = int("rocksdb.num-files-at-level0");
            let owed = int("rocksdb.estimate-pending-compaction-bytes");
            let limit = if BUSY_FAMILIES.contains(&name) {
                limits::MEMTABLES_BUSY_FAMILY
            } else {
                ROCKSDB_MEMTABLES_DEFAULT
            };
            let spare = (limit - 1).saturating_sub(immutable);
            backlog.spare_memtables = backlog.spare_memtables.min(spare);
            backlog.level0_files = backlog.level0_files.max(level0);
            backlog.pending_compaction_bytes = backlog.pending_compaction_bytes.max(owed);
        }
        backlog
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    fn family(&self, name: &'static str) -> StoreResult<&ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or(StoreError::MissingFamily(name))
    }

    fn read<T: DeserializeOwned>(
        &self,
        family: &'static str,
        key: &[u8],
    ) -> StoreResult<Option<T>> {
        let cf = self.family(family)?;
        match self.db.get_pinned_cf(cf, key)? {
            None => Ok(None),
            Some(bytes) => decode(family, &bytes).map(Some),
        }
    }

    pub fn counters(&self) -> StoreResult<Counters> {
        match self.db.get_pinned(keys::COUNTERS)? {
            None => Ok(Counters::default()),
            Some(bytes) => decode("default", &bytes),
        }
    }

    pub fn user(&self, user_id: UserId) -> StoreResult<Option<UserRecord>> {
        self.read(CF_USERS, &keys::user(user_id))
    }

    pub fn user_id_by_name(&self, username: &str) -> StoreResult<Option<UserId>> {
        let cf = self.family(CF_USERNAMES)?;
        match self.db.get_pinned_cf(cf, keys::username(username))? {
            None => Ok(None),
            Some(bytes) => keys::decode_u64(&bytes)
                .map(Some)
                .ok_or(StoreError::Corrupt {
                    family: CF_USERNAMES,
                    detail: format!("user id of {} bytes", bytes.len()),
                }),
        }
    }

    pub fn session(&self, token_hash: &[u8; 32]) -> StoreResult<Option<SessionRecord>> {
        self.read(CF_SESSIONS, &keys::session(token_hash))
    }

    /// The device's session as recorded; `None` if it has no record.
    pub fn device_session(
        &self,
        user_id: UserId,
        device_id: &str,
    ) -> StoreResult<Option<DeviceSession>> {
        let key = keys::device(user_id, device_id);
        match self.db.get_cf(self.family(CF_DEVICES)?, &key)? {
            None => Ok(None),
            Some(value) if value.is_empty() => Ok(Some(DeviceSession::LoggedOut)),
            Some(value) => value
                .as_slice()
                .try_into()
                .map(|hash| Some(DeviceSession::Current(hash)))
                .map_err(|_| StoreError::Corrupt {
                    family: CF_DEVICES,
                    detail: format!("a value of {} bytes, not a token hash", value.len()),
                }),
        }
    }

    /// The conversation's record, with `last_seq` and `last_time_ms` taken
    /// from its newest message in the log.
    pub fn conversation(
        &self,
        conversation_id: ConversationId,
    ) -> StoreResult<Option<ConversationRecord>> {
        Ok(self
            .conversation_with_newest(conversation_id)?
            .map(|(record, _)| record))
    }

    /// Like `conversation`, with the newest message itself (for previews).
    pub fn conversation_with_newest(
        &self,
        conversation_id: ConversationId,
    ) -> StoreResult<Option<(ConversationRecord, Option<Message>)>> {
        let Some(mut record): Option<ConversationRecord> =
            self.read(CF_CONVERSATIONS, &keys::conversation(conversation_id))?
        else {
            return Ok(None);
        };
        let mut newest = None;
        self.scan_messages_back(conversation_id, 0, Seq::MAX, |seq, bytes| {
            newest = Some((seq, decode::<Message>(CF_MESSAGES, bytes)));
            false
        })?;
        let newest = match newest {
            Some((seq, message)) => {
                let message = message?;
                record.last_seq = seq;
                record.last_time_ms = message.server_time_ms;
                Some(message)
            }
            None => None,
        };
        Ok(Some((record, newest)))
    }

    pub fn direct_conversation(
        &self,
        user_a: UserId,
        user_b: UserId,
    ) -> StoreResult<Option<ConversationId>> {
        let cf = self.family(CF_DIRECT)?;
        match self.db.get_pinned_cf(cf, keys::direct(user_a, user_b))? {
            None => Ok(None),
            Some(bytes) => keys::decode_u64(&bytes)
                .map(Some)
                .ok_or(StoreError::Corrupt {
                    family: CF_DIRECT,
                    detail: format!("conversation id of {} bytes", bytes.len()),
                }),
        }
    }

    pub fn member(
        &self,
        user_id: UserId,
        conversation_id: ConversationId,
    ) -> StoreResult<Option<MemberRecord>> {
        self.read(CF_MEMBERS, &keys::member(user_id, conversation_id))
    }

    /// The user's conversations with their cursors, in conversation order.
    pub fn memberships(&self, user_id: UserId) -> StoreResult<Vec<(ConversationId, MemberRecord)>> {
        let cf = self.family(CF_MEMBERS)?;
        let prefix = keys::member_prefix(user_id);
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(keys::member_prefix(user_id.saturating_add(1)).to_vec());
        let mut out = Vec::new();
        for item in
            self.db
                .iterator_cf_opt(cf, options, IteratorMode::From(&prefix, Direction::Forward))
        {
            let (key, value) = item?;
            let Some((owner, conversation_id)) = keys::parse_member(&key) else {
                return Err(corrupt_key(CF_MEMBERS, &key));
            };
            if owner != user_id {
                break;
            }
            out.push((conversation_id, decode(CF_MEMBERS, &value)?));
        }
        Ok(out)
    }

    pub fn dedupe(
        &self,
        user_id: UserId,
        client_message_id: u64,
    ) -> StoreResult<Option<DedupeRecord>> {
        self.read(CF_DEDUPE, &keys::dedupe(user_id, client_message_id))
    }

    /// `dedupe` for many (sender, client message id) pairs in one batched
    /// RocksDB MultiGet, answers in the order asked. The writer looks up
    /// every send of a cycle at once: one pass over the memtables and each
    /// file's filter for the whole set (with prefetching) instead of one
    /// point lookup per send, which was a third of the writer's CPU.
    pub fn dedupe_many(&self, pairs: &[(UserId, u64)]) -> Vec<StoreResult<Option<DedupeRecord>>> {
        if pairs.is_empty() {
            return Vec::new();
        }
        let _running = WritePathCall::start(self, WRITE_PATH_DEDUPE_LOOKUP);
        let cf = match self.family(CF_DEDUPE) {
            Ok(cf) => cf,
            Err(_) => {
                return pairs
                    .iter()
                    .map(|_| Err(StoreError::MissingFamily(CF_DEDUPE)))
                    .collect()
            }
        };
        // Sorted here and passed as sorted: RocksDB would otherwise sort its
        // key contexts through the comparator, a tenth of the writer's CPU
        // at 4,096 sends a cycle; plain byte arrays sort in a fraction.
        let mut keys: Vec<([u8; 16], usize)> = pairs
            .iter()
            .enumerate()
            .map(|(asked, (user_id, client_message_id))| {
                (keys::dedupe(*user_id, *client_message_id), asked)
            })
            .collect();
        keys.sort_unstable();
        let found = self
            .db
            .batched_multi_get_cf(cf, keys.iter().map(|(key, _)| key), true);
        // Every slot is overwritten; one left over would be a lookup that
        // RocksDB did not answer, which must not pass for "never seen".
        let mut answers: Vec<StoreResult<Option<DedupeRecord>>> = pairs
            .iter()
            .map(|_| {
                Err(StoreError::Corrupt {
                    family: CF_DEDUPE,
                    detail: "MultiGet gave no answer for this key".into(),
                })
            })
            .collect();
        for ((_, asked), found) in keys.iter().zip(found) {
            let answer = match found {
                Err(e) => Err(e.into()),
                Ok(None) => Ok(None),
                Ok(Some(bytes)) => decode(CF_DEDUPE, &bytes).map(Some),
            };
            if let Some(slot) = answers.get_mut(*asked) {
                *slot = answer;
            }
        }
        answers
    }

    /// Raw wire-encoded messages with `from <= seq <= to`, ascending, at most
    /// `limit`; `visit` gets each (seq, bytes) and returns false to stop early.
    pub fn scan_messages(
        &self,
        conversation_id: ConversationId,
        from: Seq,
        to: Seq,
        mut visit: impl FnMut(Seq, &[u8]) -> bool,
    ) -> StoreResult<()> {
        if from > to {
            return Ok(());
        }
        let cf = self.family(CF_MESSAGES)?;
        let start = keys::message(conversation_id, from);
        let mut options = ReadOptions::default();
        // Exclusive bound: (conversation, to + 1), or the next conversation.
        let bound = match to.checked_add(1) {
            Some(end) => keys::message(conversation_id, end),
            None => keys::message(conversation_id.saturating_add(1), 0),
        };
        options.set_iterate_upper_bound(bound.to_vec());
        for item in
            self.db
                .iterator_cf_opt(cf, options, IteratorMode::From(&start, Direction::Forward))
        {
            let (key, value) = item?;
            let Some((_, seq)) = keys::parse_message(&key) else {
                return Err(corrupt_key(CF_MESSAGES, &key));
            };
            if !visit(seq, &value) {
                break;
            }
        }
        Ok(())
    }

    /// Like `scan_messages` but descending from `to` down to `from`.
    pub fn scan_messages_back(
        &self,
        conversation_id: ConversationId,
        from: Seq,
        to: Seq,
        mut visit: impl FnMut(Seq, &[u8]) -> bool,
    ) -> StoreResult<()> {
        if from > to {
            return Ok(());
        }
        let cf = self.family(CF_MESSAGES)?;
        let start = keys::message(conversation_id, to);
        let mut options = ReadOptions::default();
        options.set_iterate_lower_bound(keys::message(conversation_id, from).to_vec());
        for item in
            self.db
                .iterator_cf_opt(cf, options, IteratorMode::From(&start, Direction::Reverse))
        {
            let (key, value) = item?;
            let Some((owner, seq)) = keys::parse_message(&key) else {
                return Err(corrupt_key(CF_MESSAGES, &key));
            };
            if owner != conversation_id {
                break;
            }
            if !visit(seq, &value) {
                break;
            }
        }
        Ok(())
    }

    /// One message's raw bytes.
    pub fn message(
        &self,
        conversation_id: ConversationId,
        seq: Seq,
    ) -> StoreResult<Option<Vec<u8>>> {
        let cf = self.family(CF_MESSAGES)?;
        Ok(self.db.get_cf(cf, keys::message(conversation_id, seq))?)
    }

    pub fn batch(&self) -> Batch {
        Batch {
            ops: Vec::new(),
            keys: Vec::new(),
        }
    }

    /// Writes the batch atomically, with the WAL synced when the durability
    /// is `Sync`. Only the committer thread calls this.
    pub fn commit(&self, batch: Batch) -> StoreResult<()> {
        let _running = WritePathCall::start(self, WRITE_PATH_COMMIT);
        #[cfg(test)]
        if let Some((delay, fail)) = self
            .commit_script
            .lock()
            .ok()
            .and_then(|mut s| s.pop_front())
        {
            std::thread::sleep(delay);
            if fail {
                return Err(StoreError::Injected);
            }
        }
        let mut families = Vec::with_capacity(FAMILIES.len());
        for name in FAMILIES {
            families.push(self.family(name)?);
        }
        let keys = &batch.keys;
        let order = batch.commit_order();
        // Sized up front: growing RocksDB's batch buffer by doubling copied
        // it over and over (memmove was the committer's largest cost).
        let bytes: usize = batch
            .ops
            .iter()
            .map(|op| op.key.len() + op.value.as_ref().map_or(0, |v| v.len()) + BATCH_OP_OVERHEAD)
            .sum();
        let mut inner = WriteBatch::with_capacity_bytes(WRITE_BATCH_HEADER + bytes);
        for op in order.iter().filter_map(|at| batch.ops.get(*at)) {
            let key = &keys[op.key.clone()];
            match (families.get(usize::from(op.family)), &op.value) {
                (Some(cf), Some(value)) => inner.put_cf(*cf, key, value),
                (Some(cf), None) => inner.delete_cf(*cf, key),
                (None, Some(value)) => inner.put(key, value),
                (None, None) => inner.delete(key),
            }
        }
        let mut options = WriteOptions::default();
        options.set_sync(self.durability == Durability::Sync);
        self.db.write_opt(inner, &options)?;
        Ok(())
    }

    /// How long the oldest call on the write path in flight (a commit, or
    /// the storage writer's dedupe lookup) has been running; zero if none.
    /// Reads no RocksDB state, so it answers while RocksDB's mutex is held.
    /// Both calls can wait for that mutex: a commit when it switches
    /// memtables, a lookup when it takes the newest version of the tree.
    pub fn write_path_busy_for(&self) -> Duration {
        let now = self.epoch.elapsed().as_nanos() as u64;
        let oldest = self
            .write_path_started_ns
            .iter()
            .map(|started| started.load(Ordering::Relaxed))
            .filter(|started| *started != 0)
            .min();
        match oldest {
            None => Duration::ZERO,
            Some(started) => Duration::from_nanos(now.saturating_sub(started)),
        }
    }

    /// Flushes memtables so the next open does not replay the WAL (shutdown).
    pub fn flush(&self) -> StoreResult<()> {
        #[cfg(test)]
        while self.flush_holds.load(Ordering::Relaxed) && !self.cancelled.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.db.flush_wal(true)?;
        for name in FAMILIES {
            self.db.flush_cf(self.family(name)?)?;
        }
        Ok(())
    }
}

impl Store {
    /// Cancels RocksDB's work if the returned guard is still held after
    /// `limit`: a shutdown's deadline for its last commit and its flush.
    ///
    /// With the disk full RocksDB can wait for ever: a manual flush first
    /// waits until flushing would not stall writes, and a write waits while
    /// RocksDB recovers from the error; compactions fail for space and
    /// level 0 stays at its limit. gustd's shutdown hung there until killed.
    /// Cancelling makes those waits return (`ShutdownInProgress`) and stops
    /// compactions, so the shutdown ends; nothing acknowledged depends on
    /// it (the write-ahead log holds it, and the next open replays it).
    pub fn cancel_after(&self, limit: Duration) -> CancelGuard {
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let store = self.clone();
        let watching = std::thread::Builder::new()
            .name("gust-deadline".into())
            .spawn(move || {
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(limit)
                {
                    log::warn!(
                        "the store did not finish within {limit:?} (is the disk full?): \
                         cancelling RocksDB's work; the next start replays the write-ahead log"
                    );
                    store.cancelled.store(true, Ordering::Relaxed);
                    store.db.cancel_all_background_work(false);
                }
            });
        if let Err(e) = &watching {
            log::error!("could not start the store's shutdown deadline: {e}");
        }
        CancelGuard {
            done: Some(done_tx),
            watching: watching.ok(),
        }
    }

    /// Whether [`Store::cancel_after`]'s deadline passed.
    pub fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }
}

/// Held while the store's work must finish; dropping it in time stops the
/// deadline of [`Store::cancel_after`].
pub struct CancelGuard {
    done: Option<std::sync::mpsc::Sender<()>>,
    watching: Option<std::thread::JoinHandle<()>>,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        // Disconnecting wakes the watcher; joining it releases its handle on
        // the database before the caller closes it.
        drop(self.done.take());
        if let Some(watching) = self.watching.take() {
            let _ = watching.join();
        }
    }
}

/// The calls on the write path that [`Store::write_path_busy_for`] watches.
const WRITE_PATH_CALLS: usize = 2;
const WRITE_PATH_COMMIT: usize = 0;
const WRITE_PATH_DEDUPE_LOOKUP: usize = 1;

/// Marks a write-path call as running for [`Store::write_path_busy_for`]
/// until dropped, whichever way the call ends. (Each kind has one caller,
/// the committer or the storage writer; were there another, each guard
/// clears only its own mark.)
struct WritePathCall<'a> {
    started: &'a AtomicU64,
    started_ns: u64,
}

impl<'a> WritePathCall<'a> {
    fn start(store: &'a Store, call: usize) -> WritePathCall<'a> {
        // 0 means "none", so a call in the epoch's first nanosecond is 1.
        let started_ns = (store.epoch.elapsed().as_nanos() as u64).max(1);
        let started = &store.write_path_started_ns[call];
        started.store(started_ns, Ordering::Relaxed);
        WritePathCall {
            started,
            started_ns,
        }
    }
}

impl Drop for WritePathCall<'_> {
    fn drop(&mut self) {
        let _ =
            self.started
                .compare_exchange(self.started_ns, 0, Ordering::Relaxed, Ordering::Relaxed);
    }
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// The ops' indexes sorted by (family, key), two ops on one key in the
    /// order they were added. Sorted on each key's first 16 bytes as one
    /// integer, which all but a few keys fit (messages, dedupe, members):
    /// comparing slices through their ranges was 5 % of the committer.
    fn commit_order(&self) -> Vec<usize> {
        // Tuples compare field by field, so the whole key is compared only
        // on equal heads (longer keys, or a short key and its zero-padded
        // twin), and the index keeps equal keys in the order added.
        let mut order: Vec<(u8, u128, &[u8], usize)> = self
            .ops
            .iter()
            .enumerate()
            .map(|(at, op)| {
                let key = self.keys.get(op.key.clone()).unwrap_or_default();
                let mut head = [0u8; 16];
                let len = key.len().min(16);
                head[..len].copy_from_slice(&key[..len]);
                (op.family, u128::from_be_bytes(head), key, at)
            })
            .collect();
        order.sort_unstable();
        order.into_iter().map(|(_, _, _, at)| at).collect()
    }

    fn push(&mut self, family: u8, key: &[u8], value: Option<Bytes>) {
        let start = self.keys.len();
        self.keys.extend_from_slice(key);
        self.ops.push(BatchOp {
            family,
            key: start..self.keys.len(),
            value,
        });
    }

    fn put(&mut self, family: &'static str, key: &[u8], value: Bytes) -> StoreResult<()> {
        self.push(family_index(family)?, key, Some(value));
        Ok(())
    }

    fn put_record<T: Serialize>(
        &mut self,
        family: &'static str,
        key: &[u8],
        value: &T,
    ) -> StoreResult<()> {
        let bytes = encode(family, value)?;
        self.put(family, key, Bytes::from(bytes))
    }

    pub fn put_counters(&mut self, counters: &Counters) -> StoreResult<()> {
        let bytes = encode("default", counters)?;
        self.push(DEFAULT_FAMILY, keys::COUNTERS, Some(Bytes::from(bytes)));
        Ok(())
    }

    /// `wire` is shared, not copied: the same bytes are pushed to recipients.
    pub fn put_message(
        &mut self,
        conversation_id: ConversationId,
        seq: Seq,
        wire: Bytes,
    ) -> StoreResult<()> {
        self.put(CF_MESSAGES, &keys::message(conversation_id, seq), wire)
    }

    pub fn put_conversation(
        &mut self,
        conversation_id: ConversationId,
        record: &ConversationRecord,
    ) -> StoreResult<()> {
        self.put_record(
            CF_CONVERSATIONS,
            &keys::conversation(conversation_id),
            record,
        )
    }

    pub fn put_direct(
        &mut self,
        user_a: UserId,
        user_b: UserId,
        conversation_id: ConversationId,
    ) -> StoreResult<()> {
        self.put(
            CF_DIRECT,
            &keys::direct(user_a, user_b),
            Bytes::copy_from_slice(&conversation_id.to_be_bytes()),
        )
    }

    pub fn put_member(
        &mut self,
        user_id: UserId,
        conversation_id: ConversationId,
        record: &MemberRecord,
    ) -> StoreResult<()> {
        self.put_record(CF_MEMBERS, &keys::member(user_id, conversation_id), record)
    }

    pub fn put_user(&mut self, user_id: UserId, record: &UserRecord) -> StoreResult<()> {
        self.put_record(CF_USERS, &keys::user(user_id), record)?;
        self.put(
            CF_USERNAMES,
            keys::username(&record.username),
            Bytes::copy_from_slice(&user_id.to_be_bytes()),
        )
    }

    pub fn put_session(
        &mut self,
        token_hash: &[u8; 32],
        record: &SessionRecord,
    ) -> StoreResult<()> {
        self.put_record(CF_SESSIONS, &keys::session(token_hash), record)
    }

    pub fn delete_session(&mut self, token_hash: &[u8; 32]) -> StoreResult<()> {
        self.push(family_index(CF_SESSIONS)?, &keys::session(token_hash), None);
        Ok(())
    }

    pub fn set_device_session(
        &mut self,
        user_id: UserId,
        device_id: &str,
        session: DeviceSession,
    ) -> StoreResult<()> {
        let key = keys::device(user_id, device_id);
        let value = match session {
            DeviceSession::Current(hash) => Bytes::copy_from_slice(&hash),
            DeviceSession::LoggedOut => Bytes::new(),
        };
        self.put(CF_DEVICES, &key, value)
    }

    pub fn put_dedupe(
        &mut self,
        user_id: UserId,
        client_message_id: u64,
        record: &DedupeRecord,
    ) -> StoreResult<()> {
        self.put_record(CF_DEDUPE, &keys::dedupe(user_id, client_message_id), record)
    }
}

fn encode<T: Serialize>(family: &'static str, value: &T) -> StoreResult<Vec<u8>> {
    body_codec::encode_to_vec(value).map_err(|e| StoreError::Corrupt {
        family,
        detail: e.to_string(),
    })
}

fn decode<T: DeserializeOwned>(family: &'static str, bytes: &[u8]) -> StoreResult<T> {
    body_codec::decode(bytes).map_err(|e| StoreError::Corrupt {
        family,
        detail: e.to_string(),
    })
}

/// Whether files in `dir` can be written with `O_DIRECT`: opens a scratch
/// file that way and writes one aligned block. tmpfs before Linux 6.6, some
/// FUSE and network filesystems refuse it, and RocksDB would only find out at
/// its first flush, with writes then stalled.
fn probe_direct_io(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    const BLOCK: usize = 4096;
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(".direct-io-probe");
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .and_then(|mut file| {
            // O_DIRECT wants the buffer aligned too: take an aligned block
            // out of a buffer twice its size.
            let buffer = vec![0u8; 2 * BLOCK];
            let start = buffer.as_ptr().align_offset(BLOCK);
            let block = buffer
                .get(start..start + BLOCK)
                .ok_or_else(|| std::io::Error::other("no aligned block in the probe buffer"))?;
            file.write_all(block)
        });
    let _ = std::fs::remove_file(&probe);
    result
}

fn corrupt_key(family: &'static str, key: &[u8]) -> StoreError {
    StoreError::Corrupt {
        family,
        detail: format!("key of {} bytes", key.len()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// The commit order is a stable sort by (family, key): keys of every
        /// length from empty to past the 16-byte head, drawn from three byte
        /// values so that equal keys, equal heads and zero-padded twins
        /// ("\x01" and "\x01\x00") all occur.
        #[test]
        fn commit_order_is_a_stable_sort_by_family_and_key(
            ops in proptest::collection::vec(
                (0u8..3, proptest::collection::vec(0u8..3, 0..24)),
                0..64,
            )
        ) {
            let mut batch = Batch { ops: Vec::new(), keys: Vec::new() };
            for (family, key) in &ops {
                batch.push(*family, key, None);
            }
            let mut expected: Vec<usize> = (0..ops.len()).collect();
            expected.sort_by(|a, b| (ops[*a].0, &ops[*a].1).cmp(&(ops[*b].0, &ops[*b].1)));
            prop_assert_eq!(batch.commit_order(), expected);
        }
    }

    /// Bytes of write-ahead log files (`NNNNNN.log`) in a store directory.
    fn wal_bytes(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .expect("read dir")
            .filter_map(|entry| entry.ok())
            .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "log"))
            .filter_map(|entry| entry.metadata().ok())
            .map(|metadata| metadata.len())
            .sum()
    }

    #[test]
    fn rocksdb_runs_two_compactions_and_compacts_busy_families_eight_files_at_a_time() {
        let dir = tempfile::tempdir().expect("temp dir");
        let _store = Store::open(dir.path(), Durability::Buffered).expect("open");
        let options = options_file(dir.path());
        assert!(
            options.contains(&format!("max_background_jobs={ROCKSDB_BACKGROUND_JOBS}")),
            "{options}"
        );
        // The busy families' level-0 thresholds, each once per family.
        for (name, value) in [
            (
                "level0_file_num_compaction_trigger",
                limits::LEVEL0_FILES_COMPACT,
            ),
            (
                "level0_slowdown_writes_trigger",
                limits::LEVEL0_FILES_SLOW_WRITES,
            ),
            (
                "level0_stop_writes_trigger",
                limits::LEVEL0_FILES_STOP_WRITES,
            ),
        ] {
            let set = options.matches(&format!("{name}={value}\n")).count();
            assert_eq!(set, BUSY_FAMILIES.len(), "{name}");
        }
    }

    /// With a cache smaller than the log's index, every message still reads
    /// back (by range, backwards and by point) once the tables are compacted
    /// out of level 0 (whose blocks are pinned), and the tables keep a few
    /// KiB each outside the cache, where the dedupe family, whose index and
    /// filter stay resident, keeps bytes per entry.
    #[test]
    fn a_log_larger_than_its_cache_reads_back_whole_and_keeps_its_index_in_the_cache() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = StoreConfig {
            compaction_io: CompactionIo::Buffered,
            block_cache_bytes: 64 * 1024,
            ..StoreConfig::with_durability(Durability::Buffered)
        };
        let store = Store::open_with(dir.path(), config).expect("open");
        let text =
            |conversation: u64, seq: u64| format!("c{conversation} s{seq} {}", "y".repeat(200));
        let (conversations, rounds, per_round) = (40u64, 4u64, 500u64);
        for round in 0..rounds {
            let mut batch = store.batch();
            for conversation in 1..=conversations {
                for i in 0..per_round {
                    let seq = round * per_round + i + 1;
                    batch
                        .put_message(conversation, seq, Bytes::from(text(conversation, seq)))
                        .expect("put");
                    let record = DedupeRecord {
                        message_id: seq,
                        conversation_id: conversation,
                        seq,
                        server_time_ms: seq,
                    };
                    batch.put_dedupe(conversation, seq, &record).expect("put");
                }
            }
            store.commit(batch).expect("commit");
            store.flush().expect("flush");
        }
        let messages_family = store.family(CF_MESSAGES).expect("family");
        store
            .db
            .compact_range_cf(messages_family, None::<&[u8]>, None::<&[u8]>);
        let last = rounds * per_round;
        for conversation in 1..=conversations {
            let mut next = 1;
            store
                .scan_messages(conversation, 1, last, |seq, bytes| {
                    assert_eq!(seq, next);
                    assert_eq!(bytes, text(conversation, seq).as_bytes());
                    next += 1;
                    true
                })
                .expect("scan");
            assert_eq!(next, last + 1, "conversation {conversation} whole");
            let mut newest = None;
            store
                .scan_messages_back(conversation, 1, last, |seq, _| {
                    newest = Some(seq);
                    false
                })
                .expect("scan back");
            assert_eq!(newest, Some(last));
            let middle = store.message(conversation, last / 2).expect("read");
            assert_eq!(
                middle.as_deref(),
                Some(text(conversation, last / 2).as_bytes())
            );
        }
        let outside_cache = |family: &'static str| {
            let cf = store.family(family).expect("family");
            store
                .db
                .property_int_value_cf(cf, "rocksdb.estimate-table-readers-mem")
                .expect("property")
                .expect("a value")
        };
        let (messages, dedupe) = (outside_cache(CF_MESSAGES), outside_cache(CF_DEDUPE));
        let stored = conversations * last;
        // A few KiB per table, not bytes per message: a quarter of a byte
        // per message here, with tables a hundredth of a real flush.
        assert!(
            messages * 4 < stored,
            "messages: {messages} bytes outside the cache for {stored} messages"
        );
        // 20 bits of filter per entry, resident (and so this check can fail).
        assert!(
            dedupe > stored * 2,
            "dedupe: {dedupe} bytes resident for {stored} entries"
        );
    }

    /// One family's table options, from the options file RocksDB wrote.
    fn table_options(options: &str, family: &str) -> String {
        let header = format!("[TableOptions/BlockBasedTable \"{family}\"]");
        let start = options.find(&header).expect("the family's table options");
        let section = &options[start + header.len()..];
        let end = section.find("\n[").unwrap_or(section.len());
        section[..end].to_string()
    }

    #[test]
    fn the_messages_index_lives_in_a_bounded_cache_and_the_dedupe_filter_stays() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = StoreConfig {
            compaction_io: CompactionIo::Buffered,
            block_cache_bytes: limits::BLOCK_CACHE_BYTES_FLOOR,
            ..StoreConfig::with_durability(Durability::Buffered)
        };
        let store = Store::open_with(dir.path(), config).expect("open");
        let options = options_file(dir.path());
        let messages = table_options(&options, CF_MESSAGES);
        for line in [
            "cache_index_and_filter_blocks=true",
            "pin_l0_filter_and_index_blocks_in_cache=true",
            "pin_top_level_index_and_filter=true",
            "index_type=kTwoLevelIndexSearch",
            "metadata_block_size=4096",
            "partition_filters=true",
        ] {
            assert!(
                messages.lines().any(|l| l.trim() == line),
                "messages lacks {line}:{messages}"
            );
        }
        // One cache of the configured size behind every family.
        for name in FAMILIES {
            let cf = store.family(name).expect("family");
            let capacity = store
                .db
                .property_int_value_cf(cf, "rocksdb.block-cache-capacity")
                .expect("property");
            assert_eq!(capacity, Some(limits::BLOCK_CACHE_BYTES_FLOOR), "{name}");
        }
        let has_filter = |section: &str| {
            section.lines().any(|l| {
                let l = l.trim();
                l.starts_with("filter_policy=") && l != "filter_policy=nullptr"
            })
        };
        assert!(has_filter(&messages), "messages has a filter:{messages}");
        assert_eq!(
            options.matches("optimize_filters_for_hits=true").count(),
            1,
            "only the messages family leaves its bottom level unfiltered"
        );
        // Every send probes the dedupe family: its filter stays, resident.
        let dedupe = table_options(&options, CF_DEDUPE);
        for line in [
            "cache_index_and_filter_blocks=false",
            "index_type=kBinarySearch",
            "partition_filters=false",
        ] {
            assert!(
                dedupe.lines().any(|l| l.trim() == line),
                "dedupe lacks {line}:{dedupe}"
            );
        }
        assert!(
            has_filter(&dedupe),
            "dedupe keeps its bloom filter:{dedupe}"
        );
    }

    #[test]
    fn a_flush_that_does_not_end_is_cancelled_at_the_deadline() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path(), Durability::Buffered).expect("open");
        let mut batch = store.batch();
        batch.put_counters(&Counters::default()).expect("counters");
        store.commit(batch).expect("commit");
        // Done in time: nothing is cancelled.
        let deadline = store.cancel_after(Duration::from_secs(30));
        store.flush().expect("flush");
        drop(deadline);
        assert!(!store.cancelled());
        store.flush().expect("the store still works");
        // A flush that waits for ever is cancelled at the deadline, and
        // RocksDB answers it (and every later flush) at once.
        store.flush_holds.store(true, Ordering::Relaxed);
        let limit = Duration::from_millis(200);
        let started = Instant::now();
        let deadline = store.cancel_after(limit);
        let flushed = store.flush();
        drop(deadline);
        let waited = started.elapsed();
        assert!(store.cancelled());
        assert!(flushed.is_err(), "a cancelled store's flush fails");
        assert!(
            waited >= limit && waited < limit + Duration::from_secs(5),
            "waited {waited:?}"
        );
    }

    #[test]
    fn a_running_commit_is_seen_and_reported_as_a_stall() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path(), Durability::Buffered).expect("open");
        assert_eq!(store.write_path_busy_for(), Duration::ZERO);
        // The scripted commit sleeps inside `commit`, as a write held up by
        // RocksDB's mutex would.
        let stall = limits::WRITE_PATH_STALL_COMPETE * 4;
        store
            .commit_script
            .lock()
            .expect("script")
            .push_back((stall, false));
        let committing = {
            let store = store.clone();
            std::thread::spawn(move || store.commit(store.batch()))
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let backlog = loop {
            let backlog = store.backlog();
            if backlog.write_path_busy_for >= limits::WRITE_PATH_STALL_COMPETE {
                break backlog;
            }
            assert!(Instant::now() < deadline, "the commit was never seen");
            std::thread::sleep(Duration::from_millis(1));
        };
        for pool in [background::Pool::Flush, background::Pool::Compaction] {
            assert_eq!(
                background::standing(&backlog, pool),
                background::Standing::Compete
            );
        }
        committing.join().expect("thread").expect("commit");
        assert_eq!(store.write_path_busy_for(), Duration::ZERO);
    }

    #[test]
    fn backlog_counts_level0_files_and_spare_memtables() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path(), Durability::Buffered).expect("open");
        let fresh = store.backlog();
        // Every figure of every family was read (a misspelt property or a
        // missing family would say otherwise).
        assert!(!fresh.unreadable);
        // The small families keep RocksDB's two memtables: one spare.
        assert_eq!(fresh.spare_memtables, ROCKSDB_MEMTABLES_DEFAULT - 1);
        assert_eq!(fresh.level0_files, 0);
        assert_eq!(fresh.write_path_busy_for, Duration::ZERO);
        // Three flushes of the messages family, below its trigger for a
        // level-0 compaction.
        for seq in 1..=3 {
            let mut batch = store.batch();
            batch
                .put_message(1, seq, Bytes::from_static(b"message"))
                .expect("put");
            store.commit(batch).expect("commit");
            store.flush().expect("flush");
        }
        assert_eq!(store.backlog().level0_files, 3);
    }

    /// Writes 48 MiB of messages after one member record (a family written
    /// once, which pins the oldest log file) and returns the log bytes left
    /// once background flushes settle.
    fn wal_bytes_after_48_mib(wal_bytes_max: u64) -> u64 {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = StoreConfig {
            wal_bytes_max,
            ..StoreConfig::with_durability(Durability::Buffered)
        };
        let store = Store::open_with(dir.path(), config).expect("open");
        let mut batch = store.batch();
        batch
            .put_member(1, 1, &MemberRecord::default())
            .expect("put member");
        store.commit(batch).expect("commit");
        let value = Bytes::from(vec![7u8; 4096]);
        for round in 0..192u64 {
            let mut batch = store.batch();
            for i in 0..64u64 {
                batch
                    .put_message(1, round * 64 + i + 1, value.clone())
                    .expect("put");
            }
            store.commit(batch).expect("commit");
        }
        // Forced flushes run in the background; the log they free is
        // deleted when they finish. RocksDB checks the bound only when a
        // write arrives and skips the check while the oldest log's flush
        // runs, so a burst faster than that flush ends over the bound until
        // the next write: keep writing a little, as a live server does.
        let mut bytes = wal_bytes(dir.path());
        for tick in 0..100u64 {
            if bytes <= 2 * wal_bytes_max {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            let mut batch = store.batch();
            batch
                .put_message(2, tick + 1, Bytes::from_static(b"tick"))
                .expect("put");
            store.commit(batch).expect("commit");
            bytes = wal_bytes(dir.path());
        }
        bytes
    }

    #[test]
    fn write_ahead_log_stays_within_its_bound() {
        let bounded = wal_bytes_after_48_mib(limits::WAL_BYTES_MAX_FLOOR);
        assert!(
            bounded <= 2 * limits::WAL_BYTES_MAX_FLOOR,
            "{bounded} bytes of log with a {} byte bound",
            limits::WAL_BYTES_MAX_FLOOR
        );
        // The same writes under the default bound keep all of it: the
        // bound above is what deleted the logs.
        let default = wal_bytes_after_48_mib(limits::WAL_BYTES_MAX_DEFAULT);
        assert!(default >= 48 * 1024 * 1024, "{default} bytes of log");
    }

    /// RocksDB's record of the options it opened with (the newest OPTIONS
    /// file), as `key=value` lines.
    fn options_file(dir: &Path) -> String {
        let newest = std::fs::read_dir(dir)
            .expect("read dir")
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.path())
            .filter(|path| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with("OPTIONS-"))
            })
            .max()
            .expect("an OPTIONS file");
        std::fs::read_to_string(newest).expect("read OPTIONS")
    }

    /// Messages flushed and compacted with each `CompactionIo` read back
    /// whole, and RocksDB ran with direct I/O exactly when it was asked for
    /// and the filesystem takes it, writing files in `FILE_WRITE_CHUNK_BYTES`
    /// pieces.
    #[test]
    fn messages_survive_flush_and_compaction_with_each_compaction_io() {
        for compaction_io in [CompactionIo::Direct, CompactionIo::Buffered] {
            let dir = tempfile::tempdir().expect("temp dir");
            let config = StoreConfig {
                compaction_io,
                ..StoreConfig::with_durability(Durability::Sync)
            };
            let store = Store::open_with(dir.path(), config).expect("open");
            // Four flushed files of interleaved conversations, then one
            // compaction that merges them: the write path that direct I/O
            // takes over.
            for round in 0..4u64 {
                let mut batch = store.batch();
                for conversation in 1..=50u64 {
                    for i in 0..20u64 {
                        let seq = round * 20 + i + 1;
                        let text = format!("c{conversation} s{seq} {}", "x".repeat(300));
                        batch
                            .put_message(conversation, seq, Bytes::from(text))
                            .expect("put");
                    }
                }
                store.commit(batch).expect("commit");
                store.flush().expect("flush");
            }
            let messages = store.family(CF_MESSAGES).expect("family");
            store
                .db
                .compact_range_cf(messages, None::<&[u8]>, None::<&[u8]>);
            for conversation in 1..=50u64 {
                for seq in 1..=80u64 {
                    let stored = store
                        .db
                        .get_pinned_cf(messages, keys::message(conversation, seq))
                        .expect("read")
                        .expect("every message is there");
                    let expected = format!("c{conversation} s{seq} {}", "x".repeat(300));
                    assert_eq!(&stored[..], expected.as_bytes());
                }
            }
            let direct =
                compaction_io == CompactionIo::Direct && probe_direct_io(dir.path()).is_ok();
            let recorded = options_file(dir.path());
            for line in [
                format!("use_direct_io_for_flush_and_compaction={direct}"),
                format!("writable_file_max_buffer_size={FILE_WRITE_CHUNK_BYTES}"),
            ] {
                assert!(
                    recorded.lines().any(|l| l.trim() == line),
                    "{compaction_io:?}: OPTIONS lacks {line}"
                );
            }
        }
    }

    /// Random batches of messages, member records and sessions, checked
    /// against a `BTreeMap` model, with the store closed and reopened along
    /// the way (what a restart does).
    #[test]
    fn store_matches_a_model_across_reopens() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = Store::open(dir.path(), Durability::Buffered).expect("open");
        let mut model: BTreeMap<(u64, u64), Vec<u8>> = BTreeMap::new();
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..40 {
            let mut batch = store.batch();
            for _ in 0..(next() % 50) {
                let conversation = next() % 5 + 1;
                let seq = next() % 100 + 1;
                let value = next().to_le_bytes().to_vec();
                batch
                    .put_message(conversation, seq, Bytes::copy_from_slice(&value))
                    .expect("put");
                model.insert((conversation, seq), value);
            }
            batch
                .put_member(
                    round % 3 + 1,
                    round,
                    &MemberRecord {
                        delivered_seq: round,
                        ..MemberRecord::default()
                    },
                )
                .expect("put member");
            store.commit(batch).expect("commit");
            if round % 10 == 9 {
                drop(store);
                store = Store::open(dir.path(), Durability::Buffered).expect("reopen");
            }
            for conversation in 1..=5u64 {
                let expected: Vec<(u64, Vec<u8>)> = model
                    .range((conversation, 0)..=(conversation, u64::MAX))
                    .map(|((_, seq), value)| (*seq, value.clone()))
                    .collect();
                let mut forward = Vec::new();
                store
                    .scan_messages(conversation, 0, u64::MAX, |seq, value| {
                        forward.push((seq, value.to_vec()));
                        true
                    })
                    .expect("scan");
                assert_eq!(forward, expected);
                let mut backward = Vec::new();
                store
                    .scan_messages_back(conversation, 0, u64::MAX, |seq, value| {
                        backward.push((seq, value.to_vec()));
                        true
                    })
                    .expect("scan back");
                backward.reverse();
                assert_eq!(backward, expected);
                let mut bounded = Vec::new();
                store
                    .scan_messages(conversation, 10, 20, |seq, _| {
                        bounded.push(seq);
                        true
                    })
                    .expect("bounded scan");
                let expected_bounded: Vec<u64> = expected
                    .iter()
                    .map(|(s, _)| *s)
                    .filter(|s| (10..=20).contains(s))
                    .collect();
                assert_eq!(bounded, expected_bounded);
            }
        }
        let memberships = store.memberships(1).expect("memberships");
        assert!(memberships
            .iter()
            .all(|(conversation, record)| record.delivered_seq == *conversation));
        assert!(!memberships.is_empty());
    }

    /// The batched lookup answers in the order asked, hits and misses
    /// alike, from the memtable and (after a reopen) from table files, and
    /// agrees with the one-key lookup.
    #[test]
    fn dedupe_many_answers_in_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = Store::open(dir.path(), Durability::Buffered).expect("open");
        let record = |n: u64| DedupeRecord {
            message_id: 1000 + n,
            conversation_id: n % 7,
            seq: n,
            server_time_ms: 5 * n,
        };
        let mut batch = store.batch();
        for n in (0..200u64).step_by(2) {
            batch.put_dedupe(n % 5 + 1, n, &record(n)).expect("put");
        }
        store.commit(batch).expect("commit");
        for reopen in [false, true] {
            if reopen {
                store.flush().expect("flush");
                drop(store);
                store = Store::open(dir.path(), Durability::Buffered).expect("reopen");
            }
            // Asked out of key order, with repeats and misses between hits.
            let pairs: Vec<(UserId, u64)> = (0..200u64)
                .rev()
                .chain([4, 4, 5])
                .map(|n| (n % 5 + 1, n))
                .chain([(9, 2)])
                .collect();
            let answers = store.dedupe_many(&pairs);
            assert_eq!(answers.len(), pairs.len());
            for ((user_id, n), answer) in pairs.iter().zip(answers) {
                let found = answer.expect("lookup");
                let expected = (*user_id == n % 5 + 1 && n % 2 == 0).then(|| record(*n));
                assert_eq!(found, expected, "pair ({user_id}, {n})");
                assert_eq!(store.dedupe(*user_id, *n).expect("one lookup"), expected);
            }
        }
        assert!(store.dedupe_many(&[]).is_empty());
    }

    #[test]
    fn counters_and_users_round_trip() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path(), Durability::Sync).expect("open");
        assert_eq!(store.counters().expect("counters"), Counters::default());
        let mut batch = store.batch();
        let counters = Counters {
            next_user_id: 7,
            next_conversation_id: 3,
            next_message_id: 99,
        };
        batch.put_counters(&counters).expect("counters");
        let user = UserRecord {
            username: "alice".into(),
            password_hash: "$argon2id$...".into(),
            created_ms: 1,
        };
        batch.put_user(6, &user).expect("user");
        store.commit(batch).expect("commit");
        drop(store);
        let store = Store::open(dir.path(), Durability::Sync).expect("reopen");
        assert_eq!(store.counters().expect("counters"), counters);
        assert_eq!(store.user_id_by_name("alice").expect("by name"), Some(6));
        assert_eq!(store.user(6).expect("user"), Some(user));
        assert_eq!(store.user_id_by_name("bob").expect("by name"), None);
    }
}
