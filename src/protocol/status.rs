//! Stable status codes carried by `Error` frames (protocol.md, "Status codes").
//!
//! A code never changes meaning once published. Whether an error ends the
//! connection is carried by the `Error` body's `closing` flag, because a few
//! codes (`too_large`) can be either: a frame too large to read loses framing,
//! a text field too long inside a good frame does not.

/// Why a request failed, or why the server is closing the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum StatusCode {
    Ok = 0,
    /// The frame header is malformed (bad magic, reserved flag bits set). Final.
    BadFrame = 1,
    /// The CRC-32 trailer does not match the frame. Final.
    BadChecksum = 2,
    /// The frame's version is not the negotiated one, or hello found no common
    /// version. Final.
    UnsupportedVersion = 3,
    /// The command code is not one this version defines. Per request.
    UnknownCommand = 4,
    /// The payload does not decode as the command's body, or a field breaks a
    /// documented rule. Per request.
    BadBody = 5,
    /// The command needs a logged-in session. Per request.
    Unauthenticated = 6,
    /// Wrong credentials or an invalid session token. Per request.
    Unauthorized = 7,
    /// Logged in, but not allowed to touch that conversation or group.
    Forbidden = 8,
    NotFound = 9,
    /// The thing already exists (a username, a membership).
    Conflict = 10,
    /// Too many requests; retry later.
    RateLimited = 11,
    /// A frame larger than the payload limit (final) or a field over its limit
    /// (per request).
    TooLarge = 12,
    /// The server cannot take this now (connection limit, a full queue). Retry.
    ServerBusy = 13,
    /// The store failed to read or write; the request had no effect. Retry.
    StorageUnavailable = 14,
    /// A server bug. The request may or may not have had an effect.
    Internal = 15,
    /// Unknown cipher id, a cipher other than the negotiated one, or a payload
    /// whose authentication tag does not verify. Final.
    BadCipher = 16,
    /// Hello and login were not completed within the handshake deadline. Final.
    /// (An idle authenticated connection gets `going_away(Idle)` instead.)
    Timeout = 17,
}

impl StatusCode {
    pub const ALL: [StatusCode; 18] = [
        StatusCode::Ok,
        StatusCode::BadFrame,
        StatusCode::BadChecksum,
        StatusCode::UnsupportedVersion,
        StatusCode::UnknownCommand,
        StatusCode::BadBody,
        StatusCode::Unauthenticated,
        StatusCode::Unauthorized,
        StatusCode::Forbidden,
        StatusCode::NotFound,
        StatusCode::Conflict,
        StatusCode::RateLimited,
        StatusCode::TooLarge,
        StatusCode::ServerBusy,
        StatusCode::StorageUnavailable,
        StatusCode::Internal,
        StatusCode::BadCipher,
        StatusCode::Timeout,
    ];

    /// The snake_case name used in protocol.md and in logs.
    pub fn name(self) -> &'static str {
        match self {
            StatusCode::Ok => "ok",
            StatusCode::BadFrame => "bad_frame",
            StatusCode::BadChecksum => "bad_checksum",
            StatusCode::UnsupportedVersion => "unsupported_version",
            StatusCode::UnknownCommand => "unknown_command",
            StatusCode::BadBody => "bad_body",
            StatusCode::Unauthenticated => "unauthenticated",
            StatusCode::Unauthorized => "unauthorized",
            StatusCode::Forbidden => "forbidden",
            StatusCode::NotFound => "not_found",
            StatusCode::Conflict => "conflict",
            StatusCode::RateLimited => "rate_limited",
            StatusCode::TooLarge => "too_large",
            StatusCode::ServerBusy => "server_busy",
            StatusCode::StorageUnavailable => "storage_unavailable",
            StatusCode::Internal => "internal",
            StatusCode::BadCipher => "bad_cipher",
            StatusCode::Timeout => "timeout",
        }
    }

    pub fn from_u16(code: u16) -> Option<StatusCode> {
        StatusCode::ALL.iter().copied().find(|c| *c as u16 == code)
    }
}

impl std::fmt::Display for StatusCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), *self as u16)
    }
}
