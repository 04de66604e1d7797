//! Setup: bench accounts and their session tokens, cached in a file.
//!
//! Password hashing is deliberately slow, so measured phases never log in:
//! setup registers and logs in `bench-<tag>-<i>` once, with a fixed device
//! id, on a small pool of threads using the blocking client
//! ([`crate::client::Connection`]), and writes the tokens to the users file.
//! Measured phases then `resume`, which is a single point read on the
//! server. Later runs reuse the file; tokens the server no longer knows (a
//! new data directory) are detected and the pool is provisioned afresh.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};

use crate::client::{ClientError, ClientOptions, Connection};
use crate::protocol::{StatusCode, UserId};

/// The device id every bench session is issued to.
pub const DEVICE_ID: &str = "gust-bench";
/// Every bench account's password (they are throwaway accounts).
const PASSWORD: &str = "gust-bench-password";
const FILE_HEADER: &str =
    "# gust-bench users: username user_id session_token_hex (device gust-bench)";

/// One provisioned account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchUser {
    pub username: String,
    pub user_id: UserId,
    pub token: Vec<u8>,
}

/// The accounts of one users file: `bench-<tag>-<index>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserPool {
    /// Random per file, so two files against one server do not collide.
    pub tag: String,
    pub users: Vec<BenchUser>,
}

impl UserPool {
    pub fn username(tag: &str, index: usize) -> String {
        format!("bench-{tag}-{index}")
    }

    pub fn parse(text: &str) -> Result<UserPool, String> {
        let mut tag = None;
        let mut users = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                ["tag", t] => tag = Some(t.to_string()),
                [username, user_id, token] => {
                    let user_id = user_id
                        .parse()
                        .map_err(|_| format!("line {}: bad user id {user_id:?}", number + 1))?;
                    let token = hex_decode(token)
                        .ok_or_else(|| format!("line {}: bad token", number + 1))?;
                    users.push(BenchUser {
                        username: username.to_string(),
                        user_id,
                        token,
                    });
                }
                _ => return Err(format!("line {}: expected 3 fields", number + 1)),
            }
        }
        let tag = tag.ok_or("no tag line")?;
        // Index i must be bench-<tag>-<i>: scenarios pick users by index.
        for (i, user) in users.iter().enumerate() {
            if user.username != UserPool::username(&tag, i) {
                return Err(format!(
                    "user {i} is {:?}, expected {:?}",
                    user.username,
                    UserPool::username(&tag, i)
                ));
            }
        }
        Ok(UserPool { tag, users })
    }

    pub fn render(&self) -> String {
        let mut out = format!("{FILE_HEADER}\ntag {}\n", self.tag);
        for user in &self.users {
            out.push_str(&format!(
                "{} {} {}\n",
                user.username,
                user.user_id,
                hex_encode(&user.token)
            ));
        }
        out
    }

    fn save(&self, path: &Path) -> Result<(), String> {
        // Write then rename, so an interrupted run never leaves half a file.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, self.render())
            .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .map_err(|e| format!("renaming {} to {}: {e}", tmp.display(), path.display()))
    }
}

/// Hex as the client's session file writes it: one codec for both.
pub use crate::client::session_file::{hex_decode, hex_encode};

fn random_tag() -> Result<String, String> {
    let mut bytes = [0u8; 3];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system random source failed".to_string())?;
    Ok(hex_encode(&bytes))
}

/// How to provision.
#[derive(Clone, Debug)]
pub struct SetupOptions {
    pub path: PathBuf,
    pub target: SocketAddr,
    pub threads: usize,
    pub client: ClientOptions,
}

/// What setup did.
#[derive(Debug)]
pub struct SetupOutcome {
    pub pool: UserPool,
    pub reused: usize,
    pub provisioned: usize,
    pub elapsed: Duration,
}

/// Makes sure the users file holds at least `count` accounts with live
/// tokens, registering and logging in the missing ones.
pub fn ensure_users(options: &SetupOptions, count: usize) -> Result<SetupOutcome, String> {
    let start = Instant::now();
    let mut pool = match std::fs::read_to_string(&options.path) {
        Ok(text) => match UserPool::parse(&text) {
            Ok(pool) => Some(pool),
            Err(e) => {
                eprintln!("gust-bench: ignoring {}: {e}", options.path.display());
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("reading {}: {e}", options.path.display())),
    };
    if let Some(existing) = &pool {
        if !tokens_still_valid(options, existing, count)? {
            eprintln!(
                "gust-bench: the server no longer knows the tokens in {} (a new data directory?); provisioning afresh",
                options.path.display()
            );
            pool = None;
        }
    }
    let mut pool = match pool {
        Some(pool) => pool,
        None => UserPool {
            tag: random_tag()?,
            users: Vec::new(),
        },
    };
    let reused = pool.users.len().min(count);
    let missing = count.saturating_sub(pool.users.len());
    if missing > 0 {
        eprintln!(
            "gust-bench: setup: registering and logging in {missing} users ({} threads)",
            options.threads
        );
        let result = provision(options, &pool.tag, pool.users.len(), count);
        let (fresh, error) = match result {
            Ok(fresh) => (fresh, None),
            Err((partial, e)) => (partial, Some(e)),
        };
        pool.users.extend(fresh);
        // Keep whatever succeeded: the next run continues from there.
        pool.save(&options.path)?;
        if let Some(e) = error {
            return Err(e);
        }
    }
    Ok(SetupOutcome {
        pool,
        reused,
        provisioned: missing,
        elapsed: start.elapsed(),
    })
}

/// Resumes the first and the last user that will be used: a server with a
/// fresh data directory refuses both.
fn tokens_still_valid(
    options: &SetupOptions,
    pool: &UserPool,
    count: usize,
) -> Result<bool, String> {
    let last = count.min(pool.users.len());
    if last == 0 {
        return Ok(true);
    }
    for user in [&pool.users[0], &pool.users[last - 1]] {
        let mut conn = Connection::connect(options.target, &options.client)
            .map_err(|e| format!("setup: connecting to {}: {e}", options.target))?;
        match conn.resume(&user.token, DEVICE_ID) {
            Ok(info) if info.user_id == user.user_id => {}
            Ok(info) => {
                eprintln!(
                    "gust-bench: {} resumed as user {}, the file says {}",
                    user.username, info.user_id, user.user_id
                );
                return Ok(false);
            }
            Err(e) if e.status() == Some(StatusCode::Unauthorized) => return Ok(false),
            Err(e) => return Err(format!("setup: resuming {}: {e}", user.username)),
        }
        conn.close();
    }
    Ok(true)
}

/// Registers and logs in users `from..to`. On failure returns the users
/// provisioned before the first failure (a prefix) and the error.
fn provision(
    options: &SetupOptions,
    tag: &str,
    from: usize,
    to: usize,
) -> Result<Vec<BenchUser>, (Vec<BenchUser>, String)> {
    let next = Arc::new(AtomicUsize::new(from));
    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let slots: Arc<Mutex<Vec<Option<BenchUser>>>> = Arc::new(Mutex::new(vec![None; to - from]));
    let first_error: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let mut handles = Vec::new();
    for _ in 0..options.threads.max(1).min(to - from) {
        let (next, done, failed, slots, first_error) = (
            next.clone(),
            done.clone(),
            failed.clone(),
            slots.clone(),
            first_error.clone(),
        );
        let options = options.clone();
        let tag = tag.to_string();
        handles.push(std::thread::spawn(move || {
            while !failed.load(Ordering::Relaxed) {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= to {
                    break;
                }
                match provision_one(&options, &tag, index) {
                    Ok(user) => {
                        if let Ok(mut slots) = slots.lock() {
                            slots[index - from] = Some(user);
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        if let Ok(mut first) = first_error.lock() {
                            first.get_or_insert(e);
                        }
                    }
                }
            }
        }));
    }
    let start = Instant::now();
    let mut last_report = Instant::now();
    while handles.iter().any(|h| !h.is_finished()) {
        std::thread::sleep(Duration::from_millis(50));
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            let n = done.load(Ordering::Relaxed);
            eprintln!(
                "gust-bench: setup: {n}/{} users ({:.0}/s)",
                to - from,
                n as f64 / start.elapsed().as_secs_f64()
            );
        }
    }
    for handle in handles {
        if handle.join().is_err() {
            failed.store(true, Ordering::Relaxed);
        }
    }
    let slots = match Arc::try_unwrap(slots) {
        Ok(mutex) => mutex
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
        Err(shared) => shared.lock().map(|s| s.clone()).unwrap_or_default(),
    };
    let prefix: Vec<BenchUser> = slots.iter().map_while(|s| s.clone()).collect();
    if failed.load(Ordering::Relaxed) || prefix.len() != to - from {
        let error = first_error
            .lock()
            .ok()
            .and_then(|mut e| e.take())
            .unwrap_or_else(|| "a setup thread panicked".to_string());
        return Err((prefix, error));
    }
    Ok(prefix)
}

fn provision_one(options: &SetupOptions, tag: &str, index: usize) -> Result<BenchUser, String> {
    let username = UserPool::username(tag, index);
    let context = |what: &str, e: ClientError| format!("setup: {what} {username}: {e}");
    let mut conn = Connection::connect(options.target, &options.client)
        .map_err(|e| context("connecting for", e))?;
    match conn.register(&username, PASSWORD) {
        Ok(_) => {}
        // Left over from a lost users file: the password is the same.
        Err(e) if e.status() == Some(StatusCode::Conflict) => {}
        Err(e) => return Err(context("registering", e)),
    }
    let info = conn
        .login(&username, PASSWORD, DEVICE_ID)
        .map_err(|e| context("logging in", e))?;
    conn.close();
    Ok(BenchUser {
        username,
        user_id: info.user_id,
        token: info.session_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        assert_eq!(hex_encode(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(hex_decode("00ab10"), Some(vec![0, 0xab, 0x10]));
        assert_eq!(hex_decode("0"), None);
        assert_eq!(hex_decode("zz"), None);
        assert_eq!(hex_decode("é1"), None);
    }

    #[test]
    fn pool_file_round_trip_and_checks() {
        let pool = UserPool {
            tag: "a1b2c3".into(),
            users: (0..3)
                .map(|i| BenchUser {
                    username: UserPool::username("a1b2c3", i),
                    user_id: 10 + i as u64,
                    token: vec![i as u8; 32],
                })
                .collect(),
        };
        let text = pool.render();
        assert_eq!(UserPool::parse(&text), Ok(pool.clone()));
        let shuffled = text.replace("bench-a1b2c3-1 ", "bench-a1b2c3-9 ");
        assert!(UserPool::parse(&shuffled).is_err());
        assert!(UserPool::parse("bench-x-0 1 00\n").is_err(), "no tag line");
        assert!(UserPool::parse("tag x\nbench-x-0 one 00\n").is_err());
    }
}
