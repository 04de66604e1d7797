//! The one error type of the client library.
//!
//! Every failure a caller can see, local or remote, is a [`ClientError`]. The
//! variants keep the protocol's own error types so a caller can tell a lost
//! connection (retry elsewhere) from a refused request (do not retry).

use crate::protocol::{
    BodyError, CipherError, EncodeError, FrameError, GoingAwayReason, StatusCode,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The server's bytes do not frame; the connection is unusable.
    #[error("bad frame from the server: {0}")]
    Frame(#[from] FrameError),
    /// A payload did not authenticate (wrong pre-shared key?); the connection is unusable.
    #[error("cipher error: {0}")]
    Cipher(#[from] CipherError),
    /// A request could not be encoded (usually: larger than the payload limit).
    #[error("cannot encode request: {0}")]
    Encode(#[from] EncodeError),
    /// A frame from the server did not decode as its command's body.
    #[error("bad body from the server: {0}")]
    Body(#[from] BodyError),
    /// The server answered with an `Error` frame.
    #[error("{code}: {message}")]
    Server {
        code: StatusCode,
        message: String,
        /// The server closes the connection after this error.
        closing: bool,
    },
    #[error("timed out waiting for the server")]
    Timeout,
    #[error("connection closed by the server")]
    Closed,
    /// The server sent something the protocol does not allow here.
    #[error("unexpected response: {0}")]
    UnexpectedResponse(String),
    /// The server said `GoingAway` and then closed the connection.
    #[error("server going away ({})", reason_name(*.0))]
    GoingAway(GoingAwayReason),
}

impl ClientError {
    /// The status code the server sent, for [`ClientError::Server`] only:
    /// local failures have no code, so matching on a code never mistakes a
    /// local timeout for a server verdict.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True when the same request may succeed on a fresh connection (or later
    /// on this one): the transport failed, or the server asked to retry.
    /// Refusals (`unauthorized`, `forbidden`, ...) and protocol breakage are not.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Io(_) | ClientError::Closed | ClientError::Timeout => true,
            ClientError::Server { code, .. } => {
                matches!(
                    code,
                    StatusCode::ServerBusy | StatusCode::StorageUnavailable
                )
            }
            // Replaced and Revoked mean another login owns this device or the
            // session is gone: reconnecting would fight it or fail.
            ClientError::GoingAway(reason) => {
                matches!(reason, GoingAwayReason::Shutdown | GoingAwayReason::Idle)
            }
            _ => false,
        }
    }

    /// Builds the error for an `Error` frame; unknown codes read as `internal`
    /// (protocol.md, "Status codes").
    pub(crate) fn from_reply(reply: crate::protocol::ErrorReply) -> ClientError {
        ClientError::Server {
            code: StatusCode::from_u16(reply.code).unwrap_or(StatusCode::Internal),
            message: reply.message,
            closing: reply.closing,
        }
    }
}

/// The snake_case name of a going-away reason, for messages.
pub fn reason_name(reason: GoingAwayReason) -> &'static str {
    match reason {
        GoingAwayReason::Shutdown => "shutdown",
        GoingAwayReason::Idle => "idle",
        GoingAwayReason::Replaced => "replaced",
        GoingAwayReason::Revoked => "revoked",
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorReply;

    #[test]
    fn unknown_codes_read_as_internal() {
        let e = ClientError::from_reply(ErrorReply {
            code: 9999,
            closing: false,
            message: "x".into(),
        });
        assert_eq!(e.status(), Some(StatusCode::Internal));
        assert!(!e.is_transient());
    }

    #[test]
    fn busy_is_transient_and_forbidden_is_not() {
        let busy = ClientError::from_reply(ErrorReply {
            code: StatusCode::ServerBusy as u16,
            closing: false,
            message: String::new(),
        });
        assert!(busy.is_transient());
        let forbidden = ClientError::from_reply(ErrorReply {
            code: StatusCode::Forbidden as u16,
            closing: false,
            message: String::new(),
        });
        assert!(!forbidden.is_transient());
        assert!(ClientError::GoingAway(GoingAwayReason::Shutdown).is_transient());
        assert!(!ClientError::GoingAway(GoingAwayReason::Replaced).is_transient());
        assert_eq!(ClientError::Timeout.status(), None);
    }
}
