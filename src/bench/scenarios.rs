//! The four scenarios: what each one sets up, waits for, measures and
//! checks. The engine does the I/O; this file steers its phases from the
//! main thread, prints a progress line to stderr once per second, and turns
//! what the workers saw into a [`Report`].
//!
//! - `connect`: N × (TCP connect, hello, resume); rate and time to reach N.
//! - `idle`: N authenticated connections held with heartbeats for T seconds;
//!   server RSS per connection and server CPU while idle.
//! - `chat`: N/2 pairs exchanging 1:1 messages (window or fixed rate);
//!   acked and delivered messages/s, send→ack and send→deliver latency.
//! - `sync`: K messages sent to an offline user, then its reconnect + sync;
//!   catch-up time and messages/s.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::cli::{ChatArgs, Common, ConnectArgs, IdleArgs, SyncArgs};
use super::engine::{
    ConnSpec, Engine, EngineReport, Phase, Plan, Settings, Snapshot, TIMELINE_WINDOWS_MAX,
};
use super::payload::STAMP_BYTES;
use super::report::Report;
use super::seqcheck::{check_contiguous, compare};
use super::source::{default_sources, parse_sources};
use super::sysinfo;
use super::users::{ensure_users, SetupOptions, UserPool, DEVICE_ID};
use crate::client::ClientOptions;

/// Descriptors the process needs besides its connections.
const FD_HEADROOM: u64 = 64;
/// Longest any wait may take, whatever the flags say.
const WAIT_CEILING: Duration = Duration::from_secs(3600);
/// How long the server gets to settle before its RSS is read.
const SETTLE: Duration = Duration::from_secs(1);

/// Everything a scenario needs besides its own flags.
struct Context {
    common: Common,
    target: SocketAddr,
    sources: Vec<IpAddr>,
    psk: Option<[u8; 32]>,
}

impl Context {
    fn new(common: Common) -> Result<Context, String> {
        let target = common
            .target
            .to_socket_addrs()
            .map_err(|e| format!("--target {}: {e}", common.target))?
            .next()
            .ok_or_else(|| format!("--target {} resolves to nothing", common.target))?;
        let sources = match &common.source {
            Some(text) => parse_sources(text)?,
            None => default_sources(target),
        };
        if sources.iter().any(|s| s.is_ipv4() != target.is_ipv4()) {
            return Err("--source addresses must be of the target's family (IPv4 or IPv6)".into());
        }
        let psk = match &common.psk_file {
            Some(path) => Some(read_psk(path)?),
            None => None,
        };
        if common.threads == 0 || common.threads > 256 {
            return Err("--threads must be between 1 and 256".into());
        }
        Ok(Context {
            common,
            target,
            sources,
            psk,
        })
    }

    fn client_options(&self) -> ClientOptions {
        ClientOptions {
            psk: self.psk,
            timeout: Duration::from_secs(self.common.handshake_timeout_secs.max(1)),
            agent: format!("gust-bench/{}", env!("CARGO_PKG_VERSION")),
        }
    }

    fn settings(&self) -> Settings {
        Settings {
            target: self.target,
            sources: self.sources.clone(),
            threads: self.common.threads,
            connect_rate_per_s: self.common.connect_rate,
            connect_inflight_max: self.common.connect_inflight.max(1),
            handshake_timeout: Duration::from_secs(self.common.handshake_timeout_secs.max(1)),
            window: 8,
            rate_per_s: 0,
            size_bytes: 100,
            ack_interval: Duration::from_millis(100),
            sync_stall_timeout: Duration::from_secs(30),
            psk: self.psk,
            agent: format!("gust-bench/{}", env!("CARGO_PKG_VERSION")),
            timeline: None,
            batch_scheduling: !self.common.sched_normal,
        }
    }

    fn report(&self, scenario: &'static str, title: String) -> Report {
        let mut report = Report::new(
            scenario,
            title,
            self.target.to_string(),
            self.common.server_flags.clone(),
        );
        report
            .param("threads", self.common.threads)
            .param("sources", self.sources.len())
            .param("connect_rate_per_s", self.common.connect_rate)
            .param("connect_inflight", self.common.connect_inflight)
            .param("smoke", self.common.smoke)
            .param(
                "generator_scheduling",
                if self.common.sched_normal {
                    "normal"
                } else {
                    "batch"
                },
            )
            .param(
                "cipher",
                if self.psk.is_some() {
                    "chacha20-poly1305"
                } else {
                    "none"
                },
            );
        report
    }

    /// Accounts 0..count with live tokens.
    fn users(&self, count: usize) -> Result<UserPool, String> {
        let options = SetupOptions {
            path: PathBuf::from(&self.common.users_file),
            target: self.target,
            threads: self.common.setup_threads.max(1),
            client: self.client_options(),
        };
        let outcome = ensure_users(&options, count)?;
        if outcome.provisioned > 0 {
            eprintln!(
                "gust-bench: setup: {} users provisioned, {} reused, in {:.1} s",
                outcome.provisioned,
                outcome.reused,
                outcome.elapsed.as_secs_f64()
            );
        }
        Ok(outcome.pool)
    }

    /// Checks that `connections` descriptors are available.
    fn check_fd_limit(&self, connections: usize) -> Result<(), String> {
        if let Some(limit) = sysinfo::raise_open_file_limit() {
            if connections as u64 + FD_HEADROOM > limit {
                return Err(format!(
                    "{connections} connections need more descriptors than the open-file limit ({limit}) allows; \
                     lower --connections or raise the limit"
                ));
            }
        }
        Ok(())
    }

    /// The server's pid: --server-pid, or whoever listens on the target.
    fn server_pid(&self) -> Option<u32> {
        self.common
            .server_pid
            .or_else(|| sysinfo::find_listener_pid(self.target))
    }
}

fn read_psk(path: &str) -> Result<[u8; 32], String> {
    let bytes = std::fs::read(path).map_err(|e| format!("--psk-file {path}: {e}"))?;
    if let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice()) {
        return Ok(key);
    }
    let text = String::from_utf8_lossy(&bytes);
    let decoded = super::users::hex_decode(text.trim()).unwrap_or_default();
    <[u8; 32]>::try_from(decoded.as_slice())
        .map_err(|_| format!("--psk-file {path}: expected 32 raw bytes or 64 hex digits"))
}

fn spec(pool: &UserPool, index: usize, plan: Plan) -> ConnSpec {
    let user = &pool.users[index];
    ConnSpec {
        user_index: index,
        user_id: user.user_id,
        token: user.token.clone(),
        device_id: DEVICE_ID.to_string(),
        plan,
    }
}

/// Waits until `done` holds, printing `line` to stderr once per second.
/// Returns whether `done` held (false on timeout or if `abort` held first).
fn wait(
    engine: &Engine,
    limit: Duration,
    done: impl Fn(&Snapshot) -> bool,
    abort: impl Fn(&Snapshot) -> bool,
    mut line: impl FnMut(&Snapshot, &Snapshot, Duration) -> String,
) -> bool {
    let start = Instant::now();
    let mut last_line = Instant::now();
    let mut previous = engine.snapshot();
    loop {
        let now = engine.snapshot();
        if done(&now) {
            return true;
        }
        if abort(&now) || start.elapsed() >= limit.min(WAIT_CEILING) || engine.workers_gone() {
            return false;
        }
        if last_line.elapsed() >= Duration::from_secs(1) {
            let interval = last_line.elapsed();
            eprintln!("gust-bench: {}", line(&now, &previous, interval));
            previous = now;
            last_line = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn per_second(now: u64, before: u64, interval: Duration) -> f64 {
    now.saturating_sub(before) as f64 / interval.as_secs_f64().max(1e-9)
}

/// Connect phase shared by connect, idle and chat: waits until every
/// connection is authenticated or failed; returns the time it took and the
/// best one-second rate.
fn connect_all(engine: &Engine, label: &str) -> (bool, Duration, f64) {
    let n = engine.connections() as u64;
    let start = Instant::now();
    let mut peak_per_s: f64 = 0.0;
    let ok = wait(
        engine,
        WAIT_CEILING,
        |s| s.authenticated + s.failed >= n,
        |_| false,
        |s, before, interval| {
            let rate = per_second(s.authenticated, before.authenticated, interval);
            peak_per_s = peak_per_s.max(rate);
            format!(
                "{label} {:.0}s: {}/{n} authenticated ({rate:.0}/s), {} connecting, {} failed",
                start.elapsed().as_secs_f64(),
                s.authenticated,
                s.started.saturating_sub(s.authenticated + s.failed),
                s.failed
            )
        },
    );
    let elapsed = start.elapsed();
    let s = engine.snapshot();
    let ok = ok && s.failed == 0 && s.authenticated == n;
    if peak_per_s == 0.0 {
        // Finished within the first second.
        peak_per_s = s.authenticated as f64 / elapsed.as_secs_f64().max(1e-9);
    }
    (ok, elapsed, peak_per_s)
}

/// Failures common to every scenario: connections that did not make it,
/// errors the workers logged.
fn common_failures(report: &mut Report, engine: &EngineReport, expect_open: bool) {
    let not_authenticated = engine.results.iter().filter(|r| !r.authenticated).count();
    if not_authenticated > 0 {
        report.fail(format!(
            "{not_authenticated} connections never authenticated"
        ));
    }
    if expect_open {
        let closed = engine
            .results
            .iter()
            .filter(|r| r.authenticated && !r.open_at_end)
            .count();
        if closed > 0 {
            report.fail(format!(
                "{closed} authenticated connections were closed before the end"
            ));
        }
    }
    if engine.errors.total > 0 {
        report.fail(format!(
            "{} errors: {}",
            engine.errors.total,
            engine.errors.summary().join(", ")
        ));
        for sample in &engine.errors.samples {
            report.notes.push(format!("error: {sample}"));
        }
    }
}

fn io_figures(report: &mut Report, engine: &EngineReport) {
    report
        .figure("bytes_out", "bytes sent", engine.bytes_out, "B")
        .figure("bytes_in", "bytes received", engine.bytes_in, "B")
        .figure(
            "frames_per_write",
            "frames per write call",
            engine.frames_out as f64 / engine.write_calls.max(1) as f64,
            "",
        );
}

/// CPU use of a process between two tick readings, as percent of one core.
fn cpu_percent(before: Option<u64>, after: Option<u64>, elapsed: Duration) -> Option<f64> {
    let ticks = after?.checked_sub(before?)?;
    let seconds = ticks as f64 / sysinfo::clock_ticks_per_second() as f64;
    Some(100.0 * seconds / elapsed.as_secs_f64().max(1e-9))
}

// ---------------------------------------------------------------- connect

pub fn connect(args: &ConnectArgs) -> Result<Report, String> {
    let cx = Context::new(args.common())?;
    let n = args
        .connections
        .unwrap_or(if cx.common.smoke { 50 } else { 10_000 });
    if n == 0 {
        return Err("--connections must be at least 1".into());
    }
    cx.check_fd_limit(n)?;
    let pool = cx.users(n)?;
    let mut report = cx.report(
        "connect",
        format!("{n} connections, {} threads", cx.common.threads),
    );
    report.param("connections", n);
    let specs = (0..n).map(|i| spec(&pool, i, Plan::Hold)).collect();
    let own_before = sysinfo::own_cpu_ticks();
    let engine = Engine::start(cx.settings(), specs)?;
    let (_, elapsed, peak_per_s) = connect_all(&engine, "connect");
    let own_cpu = cpu_percent(own_before, sysinfo::own_cpu_ticks(), elapsed);
    let result = engine.stop();
    let authenticated = result.results.iter().filter(|r| r.authenticated).count();
    report
        .figure(
            "connections",
            "connections authenticated",
            authenticated,
            "",
        )
        .figure("time_to_n_s", "time to reach N", elapsed.as_secs_f64(), "s")
        .figure(
            "connects_per_s",
            "connect+hello+resume rate",
            authenticated as f64 / elapsed.as_secs_f64().max(1e-9),
            "/s",
        )
        .figure(
            "peak_connects_per_s",
            "best one-second rate",
            peak_per_s,
            "/s",
        )
        .figure(
            "bench_cpu_percent",
            "gust-bench CPU",
            own_cpu,
            "% of a core",
        );
    report
        .latency(
            "connect_latency_us",
            "connect -> logged_in",
            &result.latencies.connect_us,
        )
        .latency("tcp_latency_us", "TCP handshake", &result.latencies.tcp_us)
        .latency(
            "hello_latency_us",
            "hello -> hello_ack",
            &result.latencies.hello_us,
        )
        .latency(
            "resume_latency_us",
            "resume -> logged_in",
            &result.latencies.resume_us,
        );
    io_figures(&mut report, &result);
    common_failures(&mut report, &result, true);
    report.checks.push(format!(
        "{authenticated}/{n} resumed as the user the token was issued to"
    ));
    Ok(report)
}

// ---------------------------------------------------------------- idle

pub fn idle(args: &IdleArgs) -> Result<Report, String> {
    let cx = Context::new(args.common())?;
    let smoke = cx.common.smoke;
    let n = args.connections.unwrap_or(if smoke { 50 } else { 10_000 });
    let seconds = args.seconds.unwrap_or(if smoke { 2 } else { 30 });
    if n == 0 {
        return Err("--connections must be at least 1".into());
    }
    cx.check_fd_limit(n)?;
    let pool = cx.users(n)?;
    let mut report = cx.report(
        "idle",
        format!(
            "{n} connections held {seconds} s, {} threads",
            cx.common.threads
        ),
    );
    report.param("connections", n).param("seconds", seconds);
    let pid = cx.server_pid();
    if pid.is_none() {
        report
            .notes
            .push("server pid unknown (pass --server-pid): no server memory or CPU figures".into());
    }
    let rss_before = pid.and_then(sysinfo::vm_rss_bytes);
    let specs = (0..n).map(|i| spec(&pool, i, Plan::Hold)).collect();
    let engine = Engine::start(cx.settings(), specs)?;
    let (connected, connect_time, _) = connect_all(&engine, "idle: connect");
    std::thread::sleep(SETTLE);
    let rss_after = pid.and_then(sysinfo::vm_rss_bytes);
    let cpu_before = pid.and_then(sysinfo::cpu_ticks);
    let own_before = sysinfo::own_cpu_ticks();
    let hold_start = Instant::now();
    if connected {
        let hold = Duration::from_secs(seconds);
        wait(
            &engine,
            hold,
            |_| false,
            |s| s.lost > 0,
            |s, _, _| {
                format!(
                    "idle {:.0}/{seconds}s: {} open, {} pings, {} pongs",
                    hold_start.elapsed().as_secs_f64(),
                    s.authenticated.saturating_sub(s.lost),
                    s.pings,
                    s.pongs
                )
            },
        );
    }
    let held = hold_start.elapsed();
    let server_cpu = cpu_percent(cpu_before, pid.and_then(sysinfo::cpu_ticks), held);
    let own_cpu = cpu_percent(own_before, sysinfo::own_cpu_ticks(), held);
    let rss_end = pid.and_then(sysinfo::vm_rss_bytes);
    let result = engine.stop();
    let per_connection = match (rss_before, rss_after) {
        (Some(before), Some(after)) => Some((after as f64 - before as f64) / n as f64),
        _ => None,
    };
    let held_to_end = result.results.iter().filter(|r| r.open_at_end).count();
    let (pings, pongs): (u64, u64) = result
        .results
        .iter()
        .fold((0, 0), |(a, b), r| (a + r.pings, b + r.pongs));
    report
        .figure(
            "connections",
            "connections held to the end",
            held_to_end,
            "",
        )
        .figure(
            "connect_s",
            "time to connect all",
            connect_time.as_secs_f64(),
            "s",
        )
        .figure("held_s", "held for", held.as_secs_f64(), "s")
        .figure("server_pid", "server pid", pid.map(u64::from), "")
        .figure(
            "server_rss_before_bytes",
            "server RSS before",
            rss_before,
            "B",
        )
        .figure(
            "server_rss_after_bytes",
            "server RSS, all connected",
            rss_after,
            "B",
        )
        .figure(
            "server_rss_end_bytes",
            "server RSS at the end",
            rss_end,
            "B",
        )
        .figure(
            "server_rss_per_connection_bytes",
            "server RSS per connection",
            per_connection,
            "B",
        )
        .figure(
            "server_cpu_percent",
            "server CPU while idle",
            server_cpu,
            "% of a core",
        )
        .figure(
            "bench_cpu_percent",
            "gust-bench CPU while idle",
            own_cpu,
            "% of a core",
        )
        .figure("pings", "heartbeat pings", pings, "")
        .figure("pongs", "pongs", pongs, "");
    report.latency(
        "connect_latency_us",
        "connect -> logged_in",
        &result.latencies.connect_us,
    );
    common_failures(&mut report, &result, true);
    // The last ping of a connection may still be on its way.
    let unanswered: u64 = result
        .results
        .iter()
        .map(|r| r.pings.saturating_sub(r.pongs))
        .filter(|&missing| missing > 1)
        .sum();
    if unanswered > 0 {
        report.fail(format!("{unanswered} pings were never answered"));
    }
    if pid.is_some() {
        report.notes.push(
            "RSS per connection = (RSS 1 s after the last logged_in - RSS before connecting) / N: \
             it includes allocator retention and store caches warmed by the resumes"
                .into(),
        );
    }
    report.checks.push(format!(
        "all {n} connections stayed open {seconds} s on heartbeats ({pings} pings, {pongs} pongs)"
    ));
    Ok(report)
}

// ---------------------------------------------------------------- chat

pub fn chat(args: &ChatArgs) -> Result<Report, String> {
    let cx = Context::new(args.common())?;
    let smoke = cx.common.smoke;
    let requested = args.connections.unwrap_or(if smoke { 50 } else { 10_000 });
    let n = requested - requested % 2;
    let seconds = args.seconds.unwrap_or(if smoke { 2 } else { 20 });
    if n < 2 {
        return Err("--connections must be at least 2 (one pair)".into());
    }
    if args.window == 0 {
        return Err("--window must be at least 1".into());
    }
    if args.size > crate::limits::TEXT_BYTES_MAX {
        return Err(format!(
            "--size is at most {} (the text limit)",
            crate::limits::TEXT_BYTES_MAX
        ));
    }
    check_timeline(args.timeline_ms, seconds.saturating_add(args.drain_secs))?;
    cx.check_fd_limit(n)?;
    let pool = cx.users(n)?;
    let mode = if args.rate > 0 {
        format!("{} msg/s", args.rate)
    } else {
        format!("window {}", args.window)
    };
    let mut report = cx.report(
        "chat",
        format!(
            "{} pairs, {mode}, {} B messages, {seconds} s, {} threads",
            n / 2,
            args.size.max(STAMP_BYTES),
            cx.common.threads
        ),
    );
    report
        .param("connections", n)
        .param("seconds", seconds)
        .param("size_bytes", args.size.max(STAMP_BYTES))
        .param("window", args.window)
        .param("rate_per_s", args.rate)
        .param("ack_interval_ms", args.ack_interval_ms)
        .param("timeline_ms", args.timeline_ms);
    if requested != n {
        report.notes.push(format!(
            "--connections {requested} rounded down to {n} (pairs)"
        ));
    }
    if args.size < STAMP_BYTES {
        report.notes.push(format!(
            "--size {} raised to {STAMP_BYTES}: the send stamp must fit",
            args.size
        ));
    }
    let specs = (0..n)
        .map(|i| {
            let peer = pool.users[i ^ 1].user_id;
            spec(&pool, i, Plan::Chat { peer })
        })
        .collect();
    let mut settings = cx.settings();
    settings.window = args.window;
    settings.rate_per_s = args.rate;
    settings.size_bytes = args.size.max(STAMP_BYTES);
    settings.ack_interval = Duration::from_millis(args.ack_interval_ms.max(1));
    settings.timeline = (args.timeline_ms > 0).then(|| Duration::from_millis(args.timeline_ms));
    let pid = cx.server_pid();
    let timeline_width = settings.timeline;
    let engine = Engine::start(settings, specs)?;
    let (connected, _, _) = connect_all(&engine, "chat: connect");
    let before = engine.snapshot();
    let cpu_before = pid.and_then(sysinfo::cpu_ticks);
    let own_before = sysinfo::own_cpu_ticks();
    let run_start = Instant::now();
    let run_start_unix_ms = sysinfo::unix_ms();
    if connected {
        engine.set_phase(Phase::Run);
        wait(
            &engine,
            Duration::from_secs(seconds),
            |_| false,
            |s| s.lost > 0,
            |s, previous, interval| {
                format!(
                    "chat {:.0}/{seconds}s: acked {:.0}/s, delivered {:.0}/s, {} awaiting ack, \
                     slowest ack {:.1} ms, {} errors",
                    run_start.elapsed().as_secs_f64(),
                    per_second(s.acked, previous.acked, interval),
                    per_second(s.delivered, previous.delivered, interval),
                    s.sent.saturating_sub(s.acked + s.refused),
                    engine.take_slowest_ack().as_secs_f64() * 1e3,
                    s.errors
                )
            },
        );
    }
    let at_end = engine.snapshot();
    let ran = run_start.elapsed();
    let server_cpu = cpu_percent(cpu_before, pid.and_then(sysinfo::cpu_ticks), ran);
    let own_cpu = cpu_percent(own_before, sysinfo::own_cpu_ticks(), ran);
    engine.set_phase(Phase::Drain);
    let drain_start = Instant::now();
    let drained = connected
        && wait(
            &engine,
            Duration::from_secs(args.drain_secs),
            |s| s.acked + s.refused >= s.sent && s.delivered >= s.acked,
            |s| s.lost > 0,
            |s, _, _| {
                format!(
                    "chat: draining: {} awaiting ack, {} awaiting delivery",
                    s.sent.saturating_sub(s.acked + s.refused),
                    s.acked.saturating_sub(s.delivered)
                )
            },
        );
    let drain_time = drain_start.elapsed();
    // One more ack interval so the last cumulative delivery acks go out.
    std::thread::sleep(Duration::from_millis(args.ack_interval_ms.min(1000)));
    let result = engine.stop();
    let acked = at_end.acked.saturating_sub(before.acked);
    let delivered = at_end.delivered.saturating_sub(before.delivered);
    let total = engine_totals(&result);
    report
        .figure(
            "acked_per_s",
            "acked (persisted) rate",
            acked as f64 / ran.as_secs_f64(),
            "msg/s",
        )
        .figure(
            "delivered_per_s",
            "delivered rate",
            delivered as f64 / ran.as_secs_f64(),
            "msg/s",
        )
        .figure("messages_sent", "messages sent", total.sent, "")
        .figure("messages_acked", "messages acked", total.acked, "")
        .figure(
            "messages_delivered",
            "messages delivered",
            total.received,
            "",
        )
        .figure(
            "drain_s",
            "drain after sending stopped",
            drain_time.as_secs_f64(),
            "s",
        )
        .figure(
            "server_cpu_percent",
            "server CPU while sending",
            server_cpu,
            "% of a core",
        )
        .figure(
            "bench_cpu_percent",
            "gust-bench CPU while sending",
            own_cpu,
            "% of a core",
        );
    if args.rate > 0 {
        report
            .figure("target_rate_per_s", "target rate", args.rate, "msg/s")
            .figure(
                "rate_stalls",
                "turns with every window full",
                result.rate_stalls,
                "",
            )
            .figure(
                "rate_unsent",
                "sends due by the end, never written",
                result.rate_unsent,
                "",
            );
    }
    // With a schedule, "send" would be ambiguous: these count from the
    // write, the `due ->` rows below from when the schedule had it due.
    let (ack_label, deliver_label) = match args.rate {
        0 => ("send -> send_ack", "send -> deliver"),
        _ => ("write -> send_ack", "write -> deliver"),
    };
    report
        .latency("ack_latency_us", ack_label, &result.latencies.ack_us)
        .latency(
            "deliver_latency_us",
            deliver_label,
            &result.latencies.deliver_us,
        )
        .latency(
            "connect_latency_us",
            "connect -> logged_in",
            &result.latencies.connect_us,
        );
    if args.rate > 0 {
        // The rows above count from the write; these from the schedule,
        // with the generator's own lateness in (see bench::payload).
        report
            .latency(
                "deliver_from_due_latency_us",
                "due -> deliver",
                &result.latencies.deliver_from_due_us,
            )
            .latency(
                "send_slip_us",
                "due -> write (lateness)",
                &result.latencies.send_slip_us,
            );
    }
    if let (Some(width), true) = (timeline_width, connected) {
        report.timeline(
            "deliver_timeline",
            deliver_label,
            width,
            run_start_unix_ms,
            &result.latencies.deliver_timeline,
        );
    }
    io_figures(&mut report, &result);
    common_failures(&mut report, &result, true);
    if connected && !drained {
        report.fail(format!(
            "after {} s of draining, {} sends were unanswered and {} acked messages undelivered",
            args.drain_secs,
            total.sent.saturating_sub(total.acked),
            total.acked.saturating_sub(total.received)
        ));
    }
    if connected && total.acked == 0 {
        report.fail("no message was acknowledged");
    }
    check_pairs(&mut report, &result);
    Ok(report)
}

/// `--timeline-ms` must leave the run and its drain within
/// `TIMELINE_WINDOWS_MAX` windows (each is memory in every thread).
fn check_timeline(width_ms: u64, span_secs: u64) -> Result<(), String> {
    if width_ms == 0 {
        return Ok(());
    }
    let span_ms = span_secs.saturating_mul(1000);
    let windows = span_ms.div_ceil(width_ms);
    if windows > TIMELINE_WINDOWS_MAX as u64 {
        let narrowest = span_ms.div_ceil(TIMELINE_WINDOWS_MAX as u64);
        return Err(format!(
            "--timeline-ms {width_ms} makes {windows} windows over the run and its drain \
             ({span_secs} s); at most {TIMELINE_WINDOWS_MAX}: use --timeline-ms {narrowest} \
             or more, or a shorter --seconds or --drain-secs"
        ));
    }
    Ok(())
}

#[derive(Default)]
struct Totals {
    sent: u64,
    acked: u64,
    received: u64,
}

fn engine_totals(result: &EngineReport) -> Totals {
    let mut t = Totals::default();
    for r in &result.results {
        t.sent += r.sent;
        t.acked += r.acked.len() as u64;
        t.received += r.received.len() as u64;
    }
    t
}

/// The chat checks, per pair (connections 2k and 2k+1).
pub(super) fn check_pairs(report: &mut Report, result: &EngineReport) {
    let mut problems = Vec::new();
    let mut conversations = 0;
    let mut messages = 0u64;
    for pair in result.results.chunks(2) {
        let [a, b] = pair else {
            problems.push("a connection without its pair".to_string());
            continue;
        };
        let name = format!("pair {}/{}", a.user_index, b.user_index);
        let conversation = match (a.conversation_id, b.conversation_id) {
            (Some(x), Some(y)) if x != y => {
                problems.push(format!(
                    "{name}: the two sides name conversations {x} and {y}"
                ));
                continue;
            }
            (x, y) => x.or(y),
        };
        for side in [a, b] {
            let who = format!("{name}, user {}", side.user_index);
            problems.extend(side.acked.problems(&format!("{who}: send_acks")));
            problems.extend(side.received.problems(&format!("{who}: deliveries")));
            if side.unanswered > 0 {
                problems.push(format!("{who}: {} sends never answered", side.unanswered));
            }
        }
        problems.extend(compare(
            &format!("{name}: {} -> {}", a.user_index, b.user_index),
            &a.acked,
            &b.received,
        ));
        problems.extend(compare(
            &format!("{name}: {} -> {}", b.user_index, a.user_index),
            &b.acked,
            &a.received,
        ));
        match check_contiguous(
            &format!("{name}: conversation {conversation:?}"),
            &[&a.acked, &b.acked],
        ) {
            Ok(Some(_)) => conversations += 1,
            Ok(None) => {}
            Err(e) => problems.push(e),
        }
        messages += (a.acked.len() + b.acked.len()) as u64;
    }
    let total = problems.len();
    for problem in problems.into_iter().take(20) {
        report.fail(problem);
    }
    if total > 20 {
        report.fail(format!("... and {} more problems", total - 20));
    }
    report.checks.push(format!(
        "{conversations} conversations, {messages} messages: every send acked once with its own client id; \
         acked seqs gapless and unique per conversation; every acked message delivered to the peer exactly \
         once, in seq order, with the text sent"
    ));
}

// ---------------------------------------------------------------- sync

pub fn sync(args: &SyncArgs) -> Result<Report, String> {
    let cx = Context::new(args.common())?;
    let k = args
        .messages
        .unwrap_or(if cx.common.smoke { 500 } else { 100_000 });
    if k == 0 || args.window == 0 {
        return Err("--messages and --window must be at least 1".into());
    }
    if args.size > crate::limits::TEXT_BYTES_MAX {
        return Err(format!(
            "--size is at most {} (the text limit)",
            crate::limits::TEXT_BYTES_MAX
        ));
    }
    let pool = cx.users(2)?;
    let (sender, receiver) = (&pool.users[0], &pool.users[1]);
    let size = args.size.max(STAMP_BYTES);
    let mut report = cx.report(
        "sync",
        format!("{k} messages of {size} B to an offline user, then its catch-up"),
    );
    // One connection at a time: more worker threads would sit idle.
    report
        .param("threads", 1usize)
        .param("messages", k)
        .param("size_bytes", size)
        .param("window", args.window);
    let mut settings = cx.settings();
    settings.threads = 1;
    settings.window = args.window;
    settings.size_bytes = size;
    settings.sync_stall_timeout = Duration::from_secs(args.stall_secs.max(1));

    // Fill the conversation while the receiver is offline.
    let fill_spec = vec![spec(
        &pool,
        0,
        Plan::Send {
            peer: receiver.user_id,
            count: k,
        },
    )];
    let engine = Engine::start(settings.clone(), fill_spec)?;
    let (connected, _, _) = connect_all(&engine, "sync: connect sender");
    let fill_start = Instant::now();
    let mut filled = false;
    if connected {
        engine.set_phase(Phase::Run);
        let stall = Duration::from_secs(args.stall_secs.max(1));
        // (acks seen, when that count last changed): a stalled server fails
        // the run instead of hanging it.
        let last_acked = std::cell::Cell::new((0, Instant::now()));
        filled = wait(
            &engine,
            WAIT_CEILING,
            |s| s.acked + s.refused >= k,
            |s| {
                let (count, since) = last_acked.get();
                s.lost > 0 || s.refused > 0 || (s.acked == count && since.elapsed() > stall)
            },
            |s, previous, interval| {
                if s.acked != last_acked.get().0 {
                    last_acked.set((s.acked, Instant::now()));
                }
                format!(
                    "sync: sending {}/{k} ({:.0}/s)",
                    s.acked,
                    per_second(s.acked, previous.acked, interval)
                )
            },
        );
    }
    let fill_time = fill_start.elapsed();
    let filled_report = engine.stop();
    common_failures(&mut report, &filled_report, true);
    let Some(sent) = filled_report.results.first() else {
        report.fail("the sender connection vanished");
        return Ok(report);
    };
    if !filled {
        report.fail(format!(
            "only {} of {k} messages were acknowledged",
            sent.acked.len()
        ));
    }
    problems_into(&mut report, sent.acked.problems("sender: send_acks"));
    let range = match check_contiguous("the filled conversation", &[&sent.acked]) {
        Ok(range) => range,
        Err(e) => {
            report.fail(e);
            None
        }
    };
    let (Some((first, last)), Some(conversation_id)) = (range, sent.conversation_id) else {
        report.fail("nothing to sync: no message was acknowledged");
        return Ok(report);
    };
    report
        .figure(
            "fill_per_s",
            "sending rate (one connection)",
            sent.acked.len() as f64 / fill_time.as_secs_f64(),
            "msg/s",
        )
        .latency(
            "ack_latency_us",
            "send -> send_ack",
            &filled_report.latencies.ack_us,
        );

    // The receiver comes online and catches up.
    let sync_spec = vec![spec(
        &pool,
        1,
        Plan::Sync {
            conversation_id,
            after_seq: first.saturating_sub(1),
            sender: sender.user_id,
        },
    )];
    let catch_up_start = Instant::now();
    let engine = Engine::start(settings, sync_spec)?;
    let synced = wait(
        &engine,
        WAIT_CEILING,
        |s| s.syncs_done >= 1,
        |s| s.failed > 0 || s.lost > 0,
        |s, previous, interval| {
            format!(
                "sync: received {}/{k} ({:.0}/s)",
                s.synced,
                per_second(s.synced, previous.synced, interval)
            )
        },
    );
    let catch_up = catch_up_start.elapsed();
    // Let the final delivery ack leave before closing.
    std::thread::sleep(Duration::from_millis(100));
    let synced_report = engine.stop();
    common_failures(&mut report, &synced_report, true);
    let Some(got) = synced_report.results.first() else {
        report.fail("the receiver connection vanished");
        return Ok(report);
    };
    if !synced {
        report.fail(format!(
            "the sync did not finish: {} of {k} messages received",
            got.received.len()
        ));
    }
    problems_into(&mut report, got.received.problems("receiver: sync pages"));
    problems_into(
        &mut report,
        compare("sender -> receiver (sync)", &sent.acked, &got.received),
    );
    let outcome = got.sync.clone().unwrap_or_default();
    let sync_time = outcome
        .end_ns
        .map(|end| Duration::from_nanos(end.saturating_sub(outcome.requested_ns)));
    let first_page = outcome
        .first_page_ns
        .map(|at| Duration::from_nanos(at.saturating_sub(outcome.requested_ns)));
    let received = got.received.len() as u64;
    report
        .figure("messages_synced", "messages caught up", received, "")
        .figure(
            "catch_up_ms",
            "connect + resume + sync",
            catch_up.as_secs_f64() * 1e3,
            "ms",
        )
        .figure(
            "sync_ms",
            "sync request -> sync_end",
            sync_time.map(|d| d.as_secs_f64() * 1e3),
            "ms",
        )
        .figure(
            "sync_per_s",
            "catch-up rate",
            sync_time.map(|d| received as f64 / d.as_secs_f64().max(1e-9)),
            "msg/s",
        )
        .figure(
            "first_page_ms",
            "sync -> first page",
            first_page.map(|d| d.as_secs_f64() * 1e3),
            "ms",
        )
        .figure("pages", "sync pages", outcome.pages, "")
        .figure(
            "text_bytes",
            "text bytes caught up",
            outcome.payload_bytes,
            "B",
        );
    if outcome.other_messages > 0 {
        report.notes.push(format!(
            "the sync also returned {} messages of other conversations (not checked)",
            outcome.other_messages
        ));
    }
    report
        .notes
        .push("byte and write figures are the receiver's (the catch-up)".into());
    io_figures(&mut report, &synced_report);
    report.checks.push(format!(
        "{k} sends acked once each with seqs {first}..={last} gapless; the sync returned exactly those \
         messages, in seq order, from the sender, with the text sent"
    ));
    Ok(report)
}

fn problems_into(report: &mut Report, problems: Vec<String>) {
    for problem in problems {
        report.fail(problem);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_windows_are_bounded() {
        assert_eq!(check_timeline(0, 50), Ok(()));
        // 20 s + 30 s of drain in 25 ms windows: exactly the most allowed.
        assert_eq!(check_timeline(25, 50), Ok(()));
        let refused = check_timeline(24, 50).unwrap_err();
        assert!(
            refused.contains("use --timeline-ms 25 or more"),
            "{refused}"
        );
        assert!(check_timeline(1, u64::MAX).is_err());
    }

    #[test]
    fn cpu_percent_of_one_core() {
        let hz = sysinfo::clock_ticks_per_second();
        let p = cpu_percent(Some(0), Some(hz), Duration::from_secs(2)).unwrap();
        assert!((p - 50.0).abs() < 1e-9, "{p}");
        assert_eq!(cpu_percent(None, Some(1), Duration::from_secs(1)), None);
        assert_eq!(cpu_percent(Some(5), Some(1), Duration::from_secs(1)), None);
    }

    #[test]
    fn psk_files_raw_and_hex() {
        let dir = std::env::temp_dir().join(format!("gust-bench-psk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let raw = dir.join("raw");
        std::fs::write(&raw, [7u8; 32]).unwrap();
        assert_eq!(read_psk(raw.to_str().unwrap()).unwrap(), [7u8; 32]);
        let hex = dir.join("hex");
        std::fs::write(&hex, format!("{}\n", "0a".repeat(32))).unwrap();
        assert_eq!(read_psk(hex.to_str().unwrap()).unwrap(), [10u8; 32]);
        std::fs::write(&hex, "short").unwrap();
        assert!(read_psk(hex.to_str().unwrap()).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
