//! Every bound gust enforces, in one place.
//!
//! Each limit says what it bounds, why the number is what it is, and the memory
//! it implies. Names carry their unit last. Relationships between limits are
//! checked at compile time at the bottom of this file; the server's
//! configuration may tighten most of them (see `server::config`) and is
//! validated against these ceilings before anything starts.

/// Largest frame payload a peer may send by default (1 MiB). A text message is
/// at most [`TEXT_BYTES_MAX`]; the headroom is for sync and history pages, which
/// the server sizes to fit.
pub const PAYLOAD_LEN_DEFAULT: u32 = 1024 * 1024;

/// Largest payload length any configuration may allow (16 MiB). The frame
/// decoder never reserves more than the configured limit, so this ceiling is
/// also the most one connection's read buffer can ever hold.
pub const PAYLOAD_LEN_CEILING: u32 = 16 * 1024 * 1024;

/// Smallest configurable payload limit: a hello, a login and an error body must
/// always fit.
pub const PAYLOAD_LEN_FLOOR: u32 = 4 * 1024;

/// Longest username in bytes (UTF-8 is not allowed; see `USERNAME_*` rules in
/// protocol.md): short enough to index and show, long enough for emails-as-names.
pub const USERNAME_BYTES_MAX: usize = 32;
/// Shortest username in bytes.
pub const USERNAME_BYTES_MIN: usize = 3;
/// Passwords are hashed with argon2id; the cap stops a peer from making the
/// hasher chew megabytes.
pub const PASSWORD_BYTES_MAX: usize = 128;
/// Shortest password accepted at registration.
pub const PASSWORD_BYTES_MIN: usize = 8;
/// A device id is chosen by the client (an install id); it keys sessions.
pub const DEVICE_ID_BYTES_MAX: usize = 64;
/// Longest text message body (16 KiB), the same order as other IM servers.
pub const TEXT_BYTES_MAX: usize = 16 * 1024;
/// Total bytes of a message's `extras` map (keys plus values).
pub const EXTRAS_BYTES_MAX: usize = 4 * 1024;
/// Entries in a message's `extras` map.
pub const EXTRAS_ENTRIES_MAX: usize = 32;
/// Longest media URL.
pub const URL_BYTES_MAX: usize = 2 * 1024;
/// Opaque data of a `custom` content (64 KiB).
pub const CUSTOM_DATA_BYTES_MAX: usize = 64 * 1024;
/// Short labels: file names, location labels, custom kinds, group names.
pub const LABEL_BYTES_MAX: usize = 256;
/// Bytes a page (sync, history, conversation list) adds around its items, at
/// most: the item count (a varint, 9 bytes at most), the `more` flag and the
/// 16-byte AEAD tag of an encrypted connection. Pages are closed before
/// their items would pass the payload limit less this.
pub const PAGE_FRAMING_BYTES_MAX: usize = 32;
/// Bytes a message's frames add to the `send` body that carried it, at most:
/// the stored `Message` has five more u64 fields than the `send` (45 bytes
/// as varints at most, less the 2 of the send's target), a conversation
/// list's summary puts 64 bytes of its own fields around it, and a page adds
/// [`PAGE_FRAMING_BYTES_MAX`]. A `send` whose payload is within this much of
/// the payload limit is refused `too_large`, so that every stored message
/// fits a `deliver`, a page and a conversation list entry on its own
/// (checked against real encodings in `chat::frames`' tests).
pub const MESSAGE_FRAMING_BYTES_MAX: usize = 160;
/// Cursors a single sync request may carry (one per conversation).
pub const SYNC_CURSORS_MAX: usize = 10_000;
/// Messages per sync or history page when the client asks for more (or 0).
pub const PAGE_MESSAGES_MAX: u32 = 200;
/// Users named in one lookup or presence query.
pub const QUERY_USERS_MAX: usize = 256;
/// Members of one group (the fan-out of one message).
pub const GROUP_MEMBERS_MAX: usize = 10_000;

/// Write-ahead log kept before a forced flush (512 MiB). Without a bound
/// RocksDB keeps four times every family's memtable budget (ten families
/// of two or three 64 MiB memtables: 5.6 GB): families written rarely (users,
/// usernames, sessions, conversations) pin the oldest log file, so no log is ever
/// deleted until then, and a restart after a crash replays all of it
/// (measured: 655 MB replayed in 2.1 s on this project's disk). At 512 MiB a
/// replay takes under 2 s here; the forced flushes it adds are of small
/// families and did not change the 1:1 chat rate (BENCHMARKS.md).
/// `--wal-bytes-max` sets it.
pub const WAL_BYTES_MAX_DEFAULT: u64 = 512 * 1024 * 1024;

/// Smallest configurable log bound: below a few memtables' worth, RocksDB
/// would flush almost every write.
pub const WAL_BYTES_MAX_FLOOR: u64 = 16 * 1024 * 1024;

/// RocksDB's block cache (128 MiB), one for every family: the data blocks
/// reads go through (catch-up and history, sessions at resume,
/// conversations as they load; without it RocksDB gives each family a
/// cache of its own, 32 MiB each), and the messages family's
/// index and filter, partitioned. Those would otherwise grow with the log: RocksDB keeps every table's
/// index and filter in memory outside any cache unless told to cache them,
/// ~2.5 bytes per stored message. What stays pinned beyond the bound: each
/// table's top-level index (~1/150 of the index) and the level-0 tables'
/// index and filter blocks, so that the newest messages, which catch-up
/// reads, never wait on an index or filter miss (up to ~16 MiB with level
/// 0 at its write slowdown; RocksDB's cache lets pinned blocks exceed its
/// capacity). `--block-cache-bytes` sets it.
pub const BLOCK_CACHE_BYTES_DEFAULT: u64 = 128 * 1024 * 1024;

/// Smallest configurable block cache: about what level 0's pinned blocks
/// take at the write slowdown, so that data blocks keep some room.
pub const BLOCK_CACHE_BYTES_FLOOR: u64 = 16 * 1024 * 1024;

/// Largest configurable block cache (1 TiB): RocksDB splits the capacity
/// into shards with arithmetic that wraps near `u64::MAX`, leaving a cache
/// of nothing.
pub const BLOCK_CACHE_BYTES_CEILING: u64 = 1 << 40;

/// Memtables of 64 MiB each that the busy families (messages, dedupe) may
/// hold before RocksDB stops writes; the others keep RocksDB's two. The
/// third gives a flush running on idle CPU time a whole memtable of slack
/// before it must compete (`store::background`); it costs 64 MiB per
/// family only while a flush is behind.
pub const MEMTABLES_BUSY_FAMILY: u64 = 3;

/// Level-0 files from which RocksDB compacts the messages and dedupe
/// families (its default is 4). Every flush of those families spans every
/// active conversation or sender, so a level-0 compaction rewrites the
/// whole base level; taking 8 files at a time rewrites it half as often.
/// Over five minutes at window 16 that removed every write slowdown
/// (BENCHMARKS.md, "Level-0 compactions of eight files").
pub const LEVEL0_FILES_COMPACT: i32 = 8;
/// Level-0 files at which RocksDB slows writes to those families (its
/// default, 20, sized for a trigger of 4), and, 16 later, stops them.
pub const LEVEL0_FILES_SLOW_WRITES: i32 = 40;
pub const LEVEL0_FILES_STOP_WRITES: i32 = LEVEL0_FILES_SLOW_WRITES + 16;

/// Files in a family's level 0 from which compactions run at normal CPU
/// priority instead of idle (`store::background`): where the busy
/// families' compactions begin ([`LEVEL0_FILES_COMPACT`]), so those run at
/// normal priority as soon as they are due, as measured; the other
/// families start theirs at RocksDB's 4. Every file is one more filter
/// probe for each dedupe lookup.
pub const LEVEL0_FILES_COMPETE: u64 = 8;

/// Bytes of compaction owed (RocksDB's estimate) from which compactions run
/// at normal CPU priority: an eighth of RocksDB's soft limit, where it
/// starts slowing writes.
pub const PENDING_COMPACTION_BYTES_COMPETE: u64 = 8 * 1024 * 1024 * 1024;

/// A call on the write path (a commit, or the storage writer's dedupe
/// lookup) running this long makes every RocksDB background thread compete
/// (`store::background`): a thread holding RocksDB's mutex on idle time may
/// be what holds it up. Lookups take well under a millisecond; commits
/// ~1–2 ms at 135,000 msg/s and 4–6 ms at window 8 (batches of ~2,500
/// requests), the slowest of each 5 s 15–35 ms at window 8: it fires about
/// once a run there.
pub const WRITE_PATH_STALL_COMPETE: std::time::Duration = std::time::Duration::from_millis(25);

/// How long every RocksDB background thread stays at normal priority after
/// a stalled write-path call (`WRITE_PATH_STALL_COMPETE`).
pub const WRITE_PATH_STALL_HOLD: std::time::Duration = std::time::Duration::from_secs(1);

/// How often the write-path watchdog looks at the calls in flight (it reads
/// atomics, nothing of RocksDB's).
pub const WRITE_PATH_WATCH_TICK: std::time::Duration = std::time::Duration::from_millis(5);

/// How often the background governor reads RocksDB's backlog. A 64 MiB
/// memtable takes over a second to fill at the highest rate measured, so
/// this is ~50 looks per fill.
pub const BACKGROUND_GOVERNOR_TICK: std::time::Duration = std::time::Duration::from_millis(20);

/// How often the governor looks for RocksDB threads it has not seen.
pub const BACKGROUND_THREADS_RESCAN: std::time::Duration = std::time::Duration::from_secs(1);

/// Session tokens are 32 random bytes; only their SHA-256 is stored.
pub const SESSION_TOKEN_LEN: usize = 32;

const _: () = assert!(PAYLOAD_LEN_FLOOR <= PAYLOAD_LEN_DEFAULT);
// Even at the floor, a send has room for a message.
const _: () = assert!(MESSAGE_FRAMING_BYTES_MAX * 8 < PAYLOAD_LEN_FLOOR as usize);
const _: () = assert!(PAYLOAD_LEN_DEFAULT <= PAYLOAD_LEN_CEILING);
const _: () = assert!(WAL_BYTES_MAX_FLOOR <= WAL_BYTES_MAX_DEFAULT);
// A maximal text message with maximal extras and URL must fit a frame with the
// smallest payload limit the server accepts from its configuration... not quite:
// the floor is for handshakes. It must fit the default.
const _: () = assert!(
    (TEXT_BYTES_MAX + EXTRAS_BYTES_MAX + URL_BYTES_MAX + 1024) < PAYLOAD_LEN_DEFAULT as usize
);
const _: () =
    assert!(CUSTOM_DATA_BYTES_MAX + EXTRAS_BYTES_MAX + 1024 < PAYLOAD_LEN_DEFAULT as usize);

// ---------------------------------------------------------------- server internals
//
// Bounds on what one turn of a shard's loop, one connection or one worker may
// do. Operators tune the per-connection and per-server settings through
// gustd's flags (`server::config`, with their defaults in README.md); these
// are the fixed ones.

/// Reads of one connection per turn before the others get a go: 4 x 64 KiB
/// keeps one fast sender from starving a shard's other connections.
pub const READS_PER_TURN: usize = 4;
/// History, conversation-list and user-lookup requests one connection may
/// have at the readers at once. Each answer can be a page as large as the
/// payload limit, so the connection is not read while it has this many; one
/// more in the bytes already read is answered `server_busy`.
pub const READS_IN_FLIGHT_MAX: u8 = 4;
/// Size of each shard's read scratch buffer. Whole frames are parsed from it
/// in place; a connection keeps only a trailing partial frame of its own.
pub const SCRATCH_BYTES: usize = 64 * 1024;
/// Initial size of a connection's output buffer, lent from the shard's pool
/// while the connection has output and taken back once it drains.
pub const OUT_BUFFER_BYTES: usize = 8 * 1024;
/// Drained output buffers a shard keeps for reuse (at most 512 KiB per shard:
/// a fixed cost, not one per connection).
pub const OUT_BUFFER_POOL_MAX: usize = 64;
/// Connections accepted per turn before the loop serves the others.
pub const ACCEPTS_PER_TURN: usize = 512;
/// Readiness events taken from the kernel per poll.
pub const EVENTS_PER_POLL: usize = 1024;
/// Pushes held for one connection while its sync runs (about 150 bytes each
/// with a shared frame); past this the sync continues from storage instead.
pub const HELD_PUSHES_MAX: usize = 1024;
/// Seconds a closing connection gets to flush its last frames.
pub const CLOSING_GRACE_SECS: u64 = 2;
/// Seconds a graceful shutdown waits for connections to flush `going_away`.
pub const SHUTDOWN_GRACE_SECS: u64 = 5;
/// How long a shutdown waits for the store (the storage writer's last
/// commit and the memtable flush) before it cancels RocksDB's work and
/// exits without (the next start replays the write-ahead log instead):
/// with the disk full RocksDB may wait for ever. With the grace above,
/// inside systemd's `TimeoutStopSec` (30 s), so gustd ends on its own
/// rather than by SIGKILL.
pub const SHUTDOWN_STORE_WAIT: std::time::Duration = std::time::Duration::from_secs(15);
/// Listen backlog per shard; the kernel caps it at net.core.somaxconn.
pub const LISTEN_BACKLOG: i32 = 4096;
/// One-second slots in each shard's timer wheel: deadlines further out are
/// refiled when their slot comes round (about 68 minutes of reach).
pub const TIMER_WHEEL_SLOTS: usize = 4096;
/// Failed-login records the throttle keeps (about 100 bytes each) before it
/// sweeps expired ones.
pub const THROTTLE_ENTRIES_MAX: usize = 100_000;
/// Sync pages one reader job writes before the shard lets the connection
/// drain (16 x 200 messages).
pub const SYNC_PAGES_PER_JOB: usize = 16;

const _: () = assert!(SCRATCH_BYTES >= 4 * 1024);
const _: () = assert!(HELD_PUSHES_MAX > 0 && SYNC_PAGES_PER_JOB > 0);
const _: () = assert!(
    LEVEL0_FILES_COMPACT < LEVEL0_FILES_SLOW_WRITES
        && LEVEL0_FILES_SLOW_WRITES < LEVEL0_FILES_STOP_WRITES
);
// Busy-family level-0 compactions compete once due (as measured); a
// higher threshold would leave them idle while level 0 grows.
const _: () = assert!(LEVEL0_FILES_COMPETE as i32 <= LEVEL0_FILES_COMPACT);
