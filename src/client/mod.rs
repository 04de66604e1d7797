//! A blocking client for the gust protocol, and the `gust` command line.
//!
//! - [`Connection`]: one TCP connection: hello, requests, pushes as [`Event`]s.
//! - [`Session`]: a logged-in session that reconnects, resumes and retries.
//! - [`cli`]: the `gust` command (the binary is a thin wrapper around it).
//!
//! Built without the `server` feature: std sockets and the sans-I/O codec in
//! [`crate::protocol`] only, no RocksDB, no event loop. Blocking I/O with
//! per-read deadlines suits tools, tests and benchmarks; an application that
//! needs many connections per thread should drive the codec itself.

pub mod cli;
mod connection;
mod error;
mod events;
mod format;
mod session;
pub(crate) mod session_file;
// ok: test-only (cfg(test)); its unwraps fail a test, never touch wire input
#[cfg(test)]
mod test_server;

use std::time::Duration;

pub use connection::Connection;
pub use error::{ClientError, Result};
pub use events::{Event, SeqTracker};
pub use session::{RetryPolicy, Session};

/// How to connect.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// Pre-shared key: when set, the connection asks for chacha20-poly1305.
    pub psk: Option<[u8; 32]>,
    /// Deadline of each request (and of connecting).
    pub timeout: Duration,
    /// Sent in the hello, for the server's logs.
    pub agent: String,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            psk: None,
            timeout: Duration::from_secs(10),
            agent: format!("gust/{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

// Hand-written so the key never lands in a log.
impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("psk", &self.psk.map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("agent", &self.agent)
            .finish()
    }
}
