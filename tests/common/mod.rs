//! A real `gustd` for end-to-end tests: the release binary Cargo built for
//! this test run, on an ephemeral loopback port, with RocksDB in a temporary
//! directory. Tests talk to it through the real client library.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gust::client::{ClientOptions, Connection};
use gust::protocol::LoggedIn;

/// Deadline for anything a test waits on; generous for a loaded CI machine.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct TestServer {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    extra_args: Vec<String>,
    /// RLIMIT_NOFILE for the server process, to test the descriptor limit.
    nofile: Option<u64>,
    /// RLIMIT_FSIZE for the server process: writes that would grow a file
    /// past it fail (EFBIG), as they would on a full disk.
    pub file_size_max: Option<u64>,
    /// Extra environment for the server process.
    pub env: Vec<(String, String)>,
    pub log: Arc<Mutex<Vec<String>>>,
}

/// Flags that keep tests fast: cheap argon2 (the real cost is a production
/// setting, not what is under test here).
const TEST_FLAGS: &[&str] = &["--argon2-memory-kib", "64", "--argon2-iterations", "1"];

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> TestServer {
        Self::start_limited(extra, None)
    }

    /// Starts with extra environment variables.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> TestServer {
        Self::start_full(extra, None, None, env)
    }

    /// Starts with every file it writes limited to `bytes` (RLIMIT_FSIZE):
    /// the store runs out of room as on a full disk, without one.
    pub fn start_with_file_size_max(extra: &[&str], bytes: u64) -> TestServer {
        Self::start_full(extra, None, Some(bytes), &[])
    }

    /// Starts with at most `nofile` open descriptors.
    pub fn start_limited(extra: &[&str], nofile: Option<u64>) -> TestServer {
        Self::start_full(extra, nofile, None, &[])
    }

    fn start_full(
        extra: &[&str],
        nofile: Option<u64>,
        file_size_max: Option<u64>,
        env: &[(&str, &str)],
    ) -> TestServer {
        let temp = tempfile::tempdir().expect("temp dir");
        let data_dir = temp.path().join("data");
        let mut server = TestServer {
            child: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            data_dir,
            _temp: Some(temp),
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            nofile,
            file_size_max,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log: Arc::new(Mutex::new(Vec::new())),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_gustd"));
        command
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(TEST_FLAGS)
            .args(&self.extra_args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let (nofile, file_size_max) = (self.nofile, self.file_size_max);
        if nofile.is_some() || file_size_max.is_some() {
            use std::os::unix::process::CommandExt;
            // Runs in the child between fork and exec: only async-signal-safe
            // calls (setrlimit and sigaction are).
            unsafe {
                command.pre_exec(move || {
                    let limits = [
                        (libc::RLIMIT_NOFILE, nofile),
                        (libc::RLIMIT_FSIZE, file_size_max),
                    ];
                    for (resource, limit) in limits {
                        let Some(limit) = limit else { continue };
                        let rlimit = libc::rlimit {
                            rlim_cur: limit,
                            rlim_max: limit,
                        };
                        if libc::setrlimit(resource, &rlimit) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    if file_size_max.is_some() {
                        // Past the limit the kernel sends SIGXFSZ, which
                        // would kill gustd: ignored, the write fails with
                        // EFBIG instead (ignored signals survive exec).
                        let mut ignore: libc::sigaction = std::mem::zeroed();
                        ignore.sa_sigaction = libc::SIG_IGN;
                        if libc::sigaction(libc::SIGXFSZ, &ignore, std::ptr::null_mut()) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        if !self.extra_args.iter().any(|a| a == "--shards") {
            // Two shards: cross-shard delivery is the normal case under test.
            command.args(["--shards", "2"]);
        }
        let mut child = command.spawn().expect("start gustd");
        let stderr = child.stderr.take().expect("stderr piped");
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let log = self.log.clone();
        std::thread::spawn(move || {
            let mut addr_tx = Some(addr_tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    if let Some(addr) = rest.split_whitespace().next() {
                        if let (Some(tx), Ok(addr)) = (addr_tx.take(), addr.parse::<SocketAddr>()) {
                            let _ = tx.send(addr);
                        }
                    }
                }
                if std::env::var_os("GUST_TEST_LOG").is_some() {
                    eprintln!("[gustd] {line}");
                }
                if let Ok(mut log) = log.lock() {
                    log.push(line);
                }
            }
        });
        self.addr = match addr_rx.recv_timeout(WAIT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "gustd did not start; log: {:?}",
                    self.log.lock().map(|l| l.clone())
                );
            }
        };
        self.child = Some(child);
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// SIGKILL: no flush, no goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            child.wait().expect("reap");
        }
    }

    /// SIGTERM and wait for the exit status: at most the shutdown's grace
    /// and its deadline for the store, plus `WAIT` for a loaded machine.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now()
            + Duration::from_secs(gust::limits::SHUTDOWN_GRACE_SECS)
            + gust::limits::SHUTDOWN_STORE_WAIT
            + WAIT;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("gustd did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts again on the same data directory (on a new port).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server first");
        self.spawn();
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn connect(&self) -> Connection {
        Connection::connect(self.addr, &options()).expect("connect and hello")
    }

    /// Registers `username` (password derived from it) and logs in a device.
    pub fn user(&self, username: &str, device: &str) -> (Connection, LoggedIn) {
        let mut connection = self.connect();
        let _ = connection.register(username, &password(username));
        let logged_in = connection
            .login(username, &password(username), device)
            .expect("login");
        (connection, logged_in)
    }

    /// Logs in another device of an existing user.
    pub fn device(&self, username: &str, device: &str) -> (Connection, LoggedIn) {
        let mut connection = self.connect();
        let logged_in = connection
            .login(username, &password(username), device)
            .expect("login");
        (connection, logged_in)
    }

    /// User plus system CPU time the server has used so far.
    pub fn cpu_time(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("read /proc stat");
        // Fields after the command name (which may hold spaces) start at ')'.
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 =
            fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / hz.max(1))
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.log
            .lock()
            .map(|l| l.iter().any(|line| line.contains(needle)))
            .unwrap_or(false)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn options() -> ClientOptions {
    ClientOptions {
        timeout: WAIT,
        ..ClientOptions::default()
    }
}

pub fn password(username: &str) -> String {
    format!("{username}-password")
}

/// Waits for the next message event, skipping other pushes.
pub fn next_message(connection: &mut Connection) -> gust::protocol::Message {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no message within {WAIT:?}");
        match connection.next_event(left).expect("next event") {
            Some(gust::client::Event::Message(message)) => return message,
            Some(_) | None => continue,
        }
    }
}

pub fn text_of(message: &gust::protocol::Message) -> &str {
    match &message.content {
        gust::protocol::Content::Text { text } => text,
        other => panic!("not a text message: {other:?}"),
    }
}
