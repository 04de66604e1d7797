//! A logged-in session that survives lost connections.
//!
//! [`Session`] owns a [`Connection`] and the session token. When the connection
//! fails in a way a retry can fix (see [`ClientError::is_transient`]), it
//! reconnects, resumes with the token and repeats the call, with backoff.
//! Sends are repeated under the same client message id, which the server
//! dedupes, so a message whose ack was lost is never stored twice.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};

use super::connection::Connection;
use super::error::{ClientError, Result};
use super::events::Event;
use super::ClientOptions;
use crate::protocol::{Body, Content, LoggedIn, SendAck, Target, UserId};

/// How hard a [`Session`] tries before giving up on a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries per call, the first included (at least 1).
    pub attempts: u32,
    /// Wait before the second try; doubled for each later one.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 5,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed try number `failures` (1-based).
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32
            .checked_shl(failures.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.backoff_initial
            .saturating_mul(factor)
            .min(self.backoff_max)
    }
}

/// A logged-in, self-reconnecting session.
#[derive(Debug)]
pub struct Session {
    addrs: Vec<SocketAddr>,
    options: ClientOptions,
    device_id: String,
    token: Vec<u8>,
    user_id: UserId,
    username: String,
    retry: RetryPolicy,
    conn: Connection,
}

impl Session {
    /// Connects and logs in with a password.
    pub fn login(
        addr: impl ToSocketAddrs,
        options: &ClientOptions,
        username: &str,
        password: &str,
        device_id: &str,
    ) -> Result<Session> {
        let addrs = resolve(addr)?;
        let mut conn = Connection::connect(&addrs[..], options)?;
        let info = conn.login(username, password, device_id)?;
        Ok(Session::from_parts(addrs, options, conn, info))
    }

    /// Connects and resumes a session from an earlier login.
    pub fn resume(
        addr: impl ToSocketAddrs,
        options: &ClientOptions,
        token: &[u8],
        device_id: &str,
    ) -> Result<Session> {
        let addrs = resolve(addr)?;
        let mut conn = Connection::connect(&addrs[..], options)?;
        let info = conn.resume(token, device_id)?;
        Ok(Session::from_parts(addrs, options, conn, info))
    }

    fn from_parts(
        addrs: Vec<SocketAddr>,
        options: &ClientOptions,
        conn: Connection,
        info: LoggedIn,
    ) -> Session {
        Session {
            addrs,
            options: options.clone(),
            device_id: info.device_id,
            token: info.session_token,
            user_id: info.user_id,
            username: info.username,
            retry: RetryPolicy::default(),
            conn,
        }
    }

    /// The current connection, for anything the session does not wrap. It may
    /// be closed; [`reconnect`](Self::reconnect) replaces it.
    pub fn connection(&mut self) -> &mut Connection {
        &mut self.conn
    }

    pub fn token(&self) -> &[u8] {
        &self.token
    }

    pub fn user_id(&self) -> UserId {
        self.user_id
    }

    pub fn username(&self) -> &str {
        &self.username
    }

    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    pub fn set_retry_policy(&mut self, retry: RetryPolicy) {
        self.retry = retry;
    }

    /// Replaces the connection with a fresh, resumed one. Unreturned events
    /// and the duplicate filter carry over.
    pub fn reconnect(&mut self) -> Result<()> {
        // The server learns at once that the old connection is gone.
        self.conn.close();
        let mut conn = Connection::connect(&self.addrs[..], &self.options)?;
        let info = conn.resume(&self.token, &self.device_id)?;
        self.user_id = info.user_id;
        self.username = info.username;
        let old = std::mem::replace(&mut self.conn, conn);
        self.conn.inherit(old);
        log::info!("reconnected to {:?}", self.conn.peer_addr().ok());
        Ok(())
    }

    /// Sends a message, retrying transient failures under one client message id.
    pub fn send(
        &mut self,
        to: Target,
        content: Content,
        extras: BTreeMap<String, String>,
    ) -> Result<SendAck> {
        let mut id = [0u8; 8];
        SystemRandom::new().fill(&mut id).map_err(|_| {
            ClientError::Io(std::io::Error::other("the system random source failed"))
        })?;
        let client_message_id = u64::from_le_bytes(id);
        self.send_with_id(client_message_id, to, content, extras)
    }

    pub fn send_with_id(
        &mut self,
        client_message_id: u64,
        to: Target,
        content: Content,
        extras: BTreeMap<String, String>,
    ) -> Result<SendAck> {
        self.with_retry(|conn| {
            conn.send_with_id(client_message_id, to, content.clone(), extras.clone())
        })
    }

    pub fn send_text(&mut self, to: Target, text: &str) -> Result<SendAck> {
        let content = Content::Text {
            text: text.to_string(),
        };
        self.send(to, content, BTreeMap::new())
    }

    /// A request with retries. Only for requests that are safe to repeat
    /// (lookups, history, list queries).
    pub fn request(&mut self, body: Body) -> Result<Body> {
        self.with_retry(|conn| conn.request(body.clone()))
    }

    /// Like [`Connection::next_event`], reconnecting when the connection drops
    /// (the server's catch-up after `resume` then fills the gap).
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<Event>> {
        let deadline = Instant::now() + timeout;
        self.with_retry(|conn| conn.next_event(deadline.saturating_duration_since(Instant::now())))
    }

    /// Runs `call`, reconnecting and repeating it after transient failures.
    fn with_retry<T>(&mut self, mut call: impl FnMut(&mut Connection) -> Result<T>) -> Result<T> {
        let attempts = self.retry.attempts.max(1);
        let mut failures = 0;
        loop {
            let result = if self.conn.is_open() {
                call(&mut self.conn)
            } else {
                self.reconnect().and_then(|()| call(&mut self.conn))
            };
            let error = match result {
                Ok(value) => return Ok(value),
                Err(e) if e.is_transient() => e,
                Err(e) => return Err(e),
            };
            failures += 1;
            if failures >= attempts {
                return Err(error);
            }
            let mut wait = self.retry.backoff(failures);
            if let Some(g) = self.conn.going_away() {
                wait = wait.max(Duration::from_millis(u64::from(g.reconnect_after_ms)));
            }
            // Only a plain "busy, try later" answer proves the connection
            // healthy; after anything else (a timeout may be a stuck
            // connection) a fresh one costs little and rules that out.
            if !matches!(error, ClientError::Server { closing: false, .. }) {
                self.conn.close();
            }
            log::info!("{error}; retrying in {wait:?} ({failures}/{attempts})");
            std::thread::sleep(wait);
        }
    }
}

fn resolve(addr: impl ToSocketAddrs) -> Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    if addrs.is_empty() {
        return Err(ClientError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolved to nothing",
        )));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::super::test_server::{logged_in, serve_with, FakeConfig};
    use super::*;
    use crate::protocol::{ErrorReply, StatusCode};

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            attempts: 10,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(700),
        };
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(2), Duration::from_millis(200));
        assert_eq!(p.backoff(3), Duration::from_millis(400));
        assert_eq!(p.backoff(4), Duration::from_millis(700));
        assert_eq!(p.backoff(40), Duration::from_millis(700));
    }

    fn fast_retry(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts,
            backoff_initial: Duration::from_millis(1),
            backoff_max: Duration::from_millis(5),
        }
    }

    fn options() -> ClientOptions {
        ClientOptions {
            timeout: Duration::from_secs(5),
            ..ClientOptions::default()
        }
    }

    fn ack(id: u64) -> Body {
        Body::SendAck(SendAck {
            client_message_id: id,
            message_id: 11,
            conversation_id: 3,
            seq: 4,
            server_time_ms: 0,
        })
    }

    #[test]
    fn a_lost_connection_is_resumed_and_the_send_repeated_under_the_same_id() {
        let (addr, seen) = serve_with(FakeConfig::default(), |server, id, body| match body {
            Body::Resume(_) => server.send(id, logged_in(b"tok")),
            // The first connection dies before the ack.
            Body::Send(_) if server.connection == 0 => server.hang_up(),
            Body::Send(send) => server.send(id, ack(send.client_message_id)),
            _ => {}
        });
        let mut session = Session::resume(addr, &options(), b"tok", "d").unwrap();
        session.set_retry_policy(fast_retry(3));
        let sent = session.send_text(Target::User(2), "hi").unwrap();
        assert_eq!(sent.seq, 4);
        let frames: Vec<(usize, Body)> = seen.try_iter().collect();
        let sends: Vec<(usize, u64)> = frames
            .iter()
            .filter_map(|(c, b)| match b {
                Body::Send(s) => Some((*c, s.client_message_id)),
                _ => None,
            })
            .collect();
        assert_eq!(sends.len(), 2, "{frames:?}");
        assert_eq!((sends[0].0, sends[1].0), (0, 1));
        assert_eq!(sends[0].1, sends[1].1);
        assert_eq!(sends[1].1, sent.client_message_id);
        assert!(matches!(frames[2], (1, Body::Resume(_))), "{frames:?}");
    }

    #[test]
    fn busy_is_retried_on_the_same_connection() {
        let mut busy_once = true;
        let (addr, seen) = serve_with(FakeConfig::default(), move |server, id, body| match body {
            Body::Resume(_) => server.send(id, logged_in(b"tok")),
            Body::Send(_) if std::mem::take(&mut busy_once) => server.send(
                id,
                Body::Error(ErrorReply {
                    code: StatusCode::ServerBusy as u16,
                    closing: false,
                    message: "queue full".into(),
                }),
            ),
            Body::Send(send) => server.send(id, ack(send.client_message_id)),
            _ => {}
        });
        let mut session = Session::resume(addr, &options(), b"tok", "d").unwrap();
        session.set_retry_policy(fast_retry(3));
        session.send_text(Target::Conversation(3), "hi").unwrap();
        assert!(seen.try_iter().all(|(connection, _)| connection == 0));
    }

    #[test]
    fn refusals_are_not_retried_and_attempts_are_bounded() {
        let (addr, seen) = serve_with(FakeConfig::default(), |server, id, body| match body {
            Body::Resume(_) => server.send(id, logged_in(b"tok")),
            Body::Send(_) => server.send(
                id,
                Body::Error(ErrorReply {
                    code: if server.connection == 0 {
                        StatusCode::Forbidden as u16
                    } else {
                        StatusCode::StorageUnavailable as u16
                    },
                    closing: server.connection > 0,
                    message: String::new(),
                }),
            ),
            _ => {}
        });
        let mut session = Session::resume(addr, &options(), b"tok", "d").unwrap();
        session.set_retry_policy(fast_retry(3));
        let e = session.send_text(Target::User(2), "hi").unwrap_err();
        assert_eq!(e.status(), Some(StatusCode::Forbidden));
        // Now force a reconnect; every later try fails with a closing,
        // transient error: three tries, then the error.
        session.connection().close();
        let e = session.send_text(Target::User(2), "hi").unwrap_err();
        assert_eq!(e.status(), Some(StatusCode::StorageUnavailable));
        let sends = seen
            .try_iter()
            .filter(|(_, b)| matches!(b, Body::Send(_)))
            .count();
        assert_eq!(sends, 1 + 3);
    }
}
