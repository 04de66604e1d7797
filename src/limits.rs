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
/// Cursors a single sync request may carry (one per conversation).
pub const SYNC_CURSORS_MAX: usize = 10_000;
/// Messages per sync or history page when the client asks for more (or 0).
pub const PAGE_MESSAGES_MAX: u32 = 200;
/// Users named in one lookup or presence query.
pub const QUERY_USERS_MAX: usize = 256;
/// Members of one group (the fan-out of one message).
pub const GROUP_MEMBERS_MAX: usize = 10_000;

/// Session tokens are 32 random bytes; only their SHA-256 is stored.
pub const SESSION_TOKEN_LEN: usize = 32;

const _: () = assert!(PAYLOAD_LEN_FLOOR <= PAYLOAD_LEN_DEFAULT);
const _: () = assert!(PAYLOAD_LEN_DEFAULT <= PAYLOAD_LEN_CEILING);
// A maximal text message with maximal extras and URL must fit a frame with the
// smallest payload limit the server accepts from its configuration... not quite:
// the floor is for handshakes. It must fit the default.
const _: () = assert!(
    (TEXT_BYTES_MAX + EXTRAS_BYTES_MAX + URL_BYTES_MAX + 1024) < PAYLOAD_LEN_DEFAULT as usize
);
const _: () =
    assert!(CUSTOM_DATA_BYTES_MAX + EXTRAS_BYTES_MAX + 1024 < PAYLOAD_LEN_DEFAULT as usize);
