//! Passwords and logins, on hasher threads so that argon2id never blocks a
//! shard's event loop.
//!
//! Login failures are throttled per username and per address: after
//! `failures_max` failures inside the window the next attempts are refused
//! with `rate_limited` before any hashing (so a flood costs almost nothing).
//! An unknown username is verified against a dummy hash, so timing does not
//! tell whether a user exists, and both cases answer the same `unauthorized`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use ring::rand::{SecureRandom, SystemRandom};

use super::{frames, validate, Reply, ShardEvent, ShardSink, WriterRequest};
use crate::protocol::StatusCode;
use crate::store::Store;

#[derive(Debug)]
pub enum HashJob {
    Register {
        reply: Reply,
        username: String,
        password: String,
    },
    Login {
        reply: Reply,
        username: String,
        password: String,
        device_id: String,
        peer_ip: IpAddr,
    },
    Shutdown,
}

/// Tunables for hashing and throttling (see `server::config`).
#[derive(Clone, Debug)]
pub struct AccountsConfig {
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub login_failures_max: u32,
    pub login_failure_window: Duration,
}

/// Keys throttled separately: a username under attack from many addresses,
/// and one address trying many usernames.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum ThrottleKey {
    Username(String),
    Address(IpAddr),
}

/// Failure counts per key within a fixed window.
struct Throttle {
    failures: HashMap<ThrottleKey, (u32, Instant)>,
    failures_max: u32,
    window: Duration,
}

use crate::limits::THROTTLE_ENTRIES_MAX;

impl Throttle {
    fn blocked(&mut self, key: &ThrottleKey, now: Instant) -> bool {
        match self.failures.get(key) {
            Some((count, since)) if now.duration_since(*since) < self.window => {
                *count >= self.failures_max
            }
            Some(_) => {
                self.failures.remove(key);
                false
            }
            None => false,
        }
    }

    fn fail(&mut self, key: ThrottleKey, now: Instant) {
        if self.failures.len() >= THROTTLE_ENTRIES_MAX {
            let window = self.window;
            self.failures
                .retain(|_, (_, since)| now.duration_since(*since) < window);
            if self.failures.len() >= THROTTLE_ENTRIES_MAX {
                self.failures.clear();
            }
        }
        let window = self.window;
        let entry = self.failures.entry(key).or_insert((0, now));
        if now.duration_since(entry.1) >= window {
            *entry = (0, now);
        }
        entry.0 += 1;
    }

    fn succeed(&mut self, key: &ThrottleKey) {
        self.failures.remove(key);
    }
}

pub struct Accounts {
    store: Store,
    writer: Sender<WriterRequest>,
    sink: Arc<dyn ShardSink>,
    argon2: Argon2<'static>,
    throttle: Mutex<Throttle>,
    dummy_hash: String,
    rng: SystemRandom,
}

impl Accounts {
    pub fn new(
        config: &AccountsConfig,
        store: Store,
        writer: Sender<WriterRequest>,
        sink: Arc<dyn ShardSink>,
    ) -> Result<Accounts, String> {
        let params = Params::new(config.argon2_memory_kib, config.argon2_iterations, 1, None)
            .map_err(|e| format!("argon2 parameters: {e}"))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let rng = SystemRandom::new();
        let mut accounts = Accounts {
            store,
            writer,
            sink,
            argon2,
            throttle: Mutex::new(Throttle {
                failures: HashMap::new(),
                failures_max: config.login_failures_max,
                window: config.login_failure_window,
            }),
            dummy_hash: String::new(),
            rng,
        };
        accounts.dummy_hash = accounts
            .hash_password("dummy password for unknown users")
            .map_err(|e| format!("argon2: {e}"))?;
        Ok(accounts)
    }

    /// Runs hasher threads until a `Shutdown` job per thread arrives.
    pub fn spawn(
        self: Arc<Self>,
        threads: usize,
        jobs: Receiver<HashJob>,
    ) -> Vec<std::thread::JoinHandle<()>> {
        let jobs = Arc::new(Mutex::new(jobs));
        (0..threads)
            .map(|i| {
                let accounts = self.clone();
                let jobs = jobs.clone();
                std::thread::Builder::new()
                    .name(format!("gust-hasher-{i}"))
                    .spawn(move || loop {
                        let job = match jobs.lock() {
                            Ok(receiver) => receiver.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(HashJob::Shutdown) | Err(_) => return,
                            Ok(job) => accounts.handle(job),
                        }
                    })
                    .unwrap_or_else(|e| panic!("cannot start a hasher thread: {e}"))
            })
            .collect()
    }

    fn hash_password(&self, password: &str) -> Result<String, String> {
        let mut salt = [0u8; 16];
        self.rng
            .fill(&mut salt)
            .map_err(|_| "no randomness".to_string())?;
        let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
        self.argon2
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|e| e.to_string())
    }

    fn verify(&self, password: &str, stored: &str) -> bool {
        match PasswordHash::new(stored) {
            Ok(parsed) => self
                .argon2
                .verify_password(password.as_bytes(), &parsed)
                .is_ok(),
            Err(_) => false,
        }
    }

    fn fail(&self, reply: Reply, code: StatusCode, message: &str) {
        self.sink.post(vec![ShardEvent::Unauthenticated {
            conn: reply.conn,
            frame: frames::error(reply.request_id, code, message, false),
        }]);
    }

    pub fn handle(&self, job: HashJob) {
        match job {
            HashJob::Register {
                reply,
                username,
                password,
            } => {
                if let Err(invalid) =
                    validate::username(&username).and_then(|_| validate::password(&password))
                {
                    return self.fail(reply, invalid.code, &invalid.message);
                }
                match self.hash_password(&password) {
                    Ok(password_hash) => self.queue_to_writer(
                        reply,
                        WriterRequest::Register {
                            reply,
                            username,
                            password_hash,
                        },
                    ),
                    Err(e) => {
                        log::error!("password hashing failed: {e}");
                        self.fail(reply, StatusCode::Internal, "password hashing failed")
                    }
                }
            }
            HashJob::Login {
                reply,
                username,
                password,
                device_id,
                peer_ip,
            } => self.login(reply, username, password, device_id, peer_ip),
            HashJob::Shutdown => {}
        }
    }

    fn login(
        &self,
        reply: Reply,
        username: String,
        password: String,
        device_id: String,
        peer_ip: IpAddr,
    ) {
        // The register rules first: a name no account can have is answered
        // without a lookup or a hash, the throttle only ever keys names of
        // at most `USERNAME_BYTES_MAX`, and no password longer than
        // `PASSWORD_BYTES_MAX` is hashed.
        if let Err(invalid) = validate::username(&username)
            .and_then(|_| validate::password(&password))
            .and_then(|_| validate::device_id(&device_id))
        {
            return self.fail(reply, invalid.code, &invalid.message);
        }
        let name_key = ThrottleKey::Username(username.clone());
        let address_key = ThrottleKey::Address(peer_ip);
        let now = Instant::now();
        {
            let Ok(mut throttle) = self.throttle.lock() else {
                return self.fail(reply, StatusCode::Internal, "throttle unavailable");
            };
            if throttle.blocked(&name_key, now) || throttle.blocked(&address_key, now) {
                return self.fail(
                    reply,
                    StatusCode::RateLimited,
                    "too many failed logins; try later",
                );
            }
        }
        let user = match self.store.user_id_by_name(&username) {
            Ok(Some(user_id)) => match self.store.user(user_id) {
                Ok(Some(record)) => Some((user_id, record)),
                Ok(None) => None,
                Err(e) => {
                    log::error!("login read failed: {e}");
                    return self.fail(reply, StatusCode::StorageUnavailable, "store unavailable");
                }
            },
            Ok(None) => None,
            Err(e) => {
                log::error!("login read failed: {e}");
                return self.fail(reply, StatusCode::StorageUnavailable, "store unavailable");
            }
        };
        let verified = match &user {
            Some((_, record)) => self.verify(&password, &record.password_hash),
            None => {
                // Same work as a real check, so timing tells nothing.
                let _ = self.verify(&password, &self.dummy_hash);
                false
            }
        };
        let Ok(mut throttle) = self.throttle.lock() else {
            return self.fail(reply, StatusCode::Internal, "throttle unavailable");
        };
        match (verified, user) {
            (true, Some((user_id, _))) => {
                throttle.succeed(&name_key);
                drop(throttle);
                let mut token = [0u8; 32];
                if self.rng.fill(&mut token).is_err() {
                    return self.fail(reply, StatusCode::Internal, "no randomness");
                }
                self.queue_to_writer(
                    reply,
                    WriterRequest::OpenSession {
                        reply,
                        user_id,
                        device_id,
                        token,
                    },
                );
            }
            _ => {
                throttle.fail(name_key, now);
                throttle.fail(address_key, now);
                drop(throttle);
                log::info!("failed login for {:?} from {peer_ip}", sanitize(&username));
                self.fail(
                    reply,
                    StatusCode::Unauthorized,
                    "wrong username or password",
                )
            }
        }
    }

    fn queue_to_writer(&self, reply: Reply, request: WriterRequest) {
        if self.writer.send(request).is_err() {
            self.fail(reply, StatusCode::ServerBusy, "server is shutting down");
        }
    }
}

/// A bounded, printable sample of a peer-chosen string for logs.
pub fn sanitize(text: &str) -> String {
    text.chars()
        .take(40)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_blocks_after_max_failures_and_expires() {
        let mut throttle = Throttle {
            failures: HashMap::new(),
            failures_max: 3,
            window: Duration::from_secs(60),
        };
        let key = ThrottleKey::Username("bob".into());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(!throttle.blocked(&key, t0));
            throttle.fail(key.clone(), t0);
        }
        assert!(throttle.blocked(&key, t0));
        assert!(!throttle.blocked(&key, t0 + Duration::from_secs(61)));
        throttle.fail(key.clone(), t0);
        throttle.succeed(&key);
        assert!(!throttle.blocked(&key, t0));
    }
}
