//! The load engine: worker threads, each with one mio `Poll` and its share
//! of the connections, driving the protocol through the crate's sans-I/O
//! codec on non-blocking sockets.
//!
//! A connection goes `NotStarted → Connecting → HelloSent → ResumeSent →
//! Ready` and then does what its [`Plan`] says (hold and heartbeat, chat with
//! a peer, send a batch, or sync). Reads drain the socket (a short read ends
//! them: epoll signals every arrival) and are parsed in place; frames
//! produced in one turn of the loop are appended to the connection's buffer
//! and written with one `write` call at the end of the turn (many frames per
//! syscall).
//!
//! The main thread steers the workers through a shared [`Phase`] and reads
//! progress from shared atomic counters; everything else a worker measures
//! (histograms, per-connection seq streams, errors) stays thread-local and
//! is handed back when the worker stops. Scenario logic (what to wait for,
//! what to report) lives in `scenarios.rs`, not here.

use std::collections::{BTreeMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use ring::rand::{SecureRandom, SystemRandom};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::payload::{message_text, now_ns, ns_at, parse_stamp, Stamp};
use super::seqcheck::SeqStream;
use crate::limits;
use crate::protocol::cipher::{self, CONNECTION_NONCE_LEN};
use crate::protocol::frame::{CRC_LEN, HEADER_LEN, VERSION_MAX, VERSION_MIN};
use crate::protocol::{
    encode_frame, Body, Command, Content, ConversationId, DeliveryAck, Direction, FrameDecoder,
    Hello, Message, NoCipher, PayloadCipher, Ping, Resume, Role, Send, Seq, Sync, SyncCursor,
    Target, UserId,
};

/// Bytes read per `read` call (one buffer per worker).
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// An output buffer larger than this is freed once flushed, so that a burst
/// (a sync request, a window of sends) does not pin memory on an idle
/// connection.
const OUT_KEEP_BYTES: usize = 16 * 1024;
/// How often the slow timers run.
const HEARTBEAT_TICK: Duration = Duration::from_secs(1);
const DEADLINE_TICK: Duration = Duration::from_millis(250);
/// Full messages kept per error log; the rest are only counted.
const ERROR_SAMPLES_MAX: usize = 12;

/// What the main thread wants the workers to do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Open and authenticate connections; nothing else.
    Connect = 0,
    /// Senders send.
    Run = 1,
    /// No new sends; answers and deliveries still flow.
    Drain = 2,
    /// Send final delivery acks, close everything, report.
    Stop = 3,
}

impl Phase {
    fn from_u8(value: u8) -> Phase {
        match value {
            0 => Phase::Connect,
            1 => Phase::Run,
            2 => Phase::Drain,
            _ => Phase::Stop,
        }
    }
}

/// What one connection does once authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Stay connected and heartbeat (connect, idle).
    Hold,
    /// From `Run` until `Drain`, send to `peer`; receive what `peer` sends.
    Chat { peer: UserId },
    /// From `Run`, send `count` messages to `peer`.
    Send { peer: UserId, count: u64 },
    /// Right after authenticating, sync one conversation from `after_seq`.
    Sync {
        conversation_id: ConversationId,
        after_seq: Seq,
        sender: UserId,
    },
}

/// One connection to open.
#[derive(Clone, Debug)]
pub struct ConnSpec {
    /// Index in the users file (for reports).
    pub user_index: usize,
    pub user_id: UserId,
    pub token: Vec<u8>,
    pub device_id: String,
    pub plan: Plan,
}

/// How the engine runs (shared by all workers).
#[derive(Clone, Debug)]
pub struct Settings {
    pub target: SocketAddr,
    /// Local addresses to bind before connecting, round-robin (empty: none).
    pub sources: Vec<IpAddr>,
    pub threads: usize,
    /// Connects started per second across all workers (0: unlimited).
    pub connect_rate_per_s: u64,
    /// Connections started but not yet authenticated, across all workers.
    pub connect_inflight_max: usize,
    pub handshake_timeout: Duration,
    /// Unacknowledged sends per connection.
    pub window: usize,
    /// Aggregate send rate over all senders (0: as fast as the window allows).
    pub rate_per_s: u64,
    /// Text bytes per message.
    pub size_bytes: usize,
    /// From a receiver's first unacknowledged delivery to its cumulative
    /// delivery ack.
    pub ack_interval: Duration,
    /// A sync that receives nothing for this long has failed.
    pub sync_stall_timeout: Duration,
    pub psk: Option<[u8; 32]>,
    pub agent: String,
    /// Width of the windows of `Latencies::deliver_timeline` (None: no
    /// timeline).
    pub timeline: Option<Duration>,
    /// Run the workers under SCHED_BATCH (see `use_batch_scheduling`).
    pub batch_scheduling: bool,
}

/// Progress counters shared with the main thread. Totals over all workers.
#[derive(Debug, Default)]
pub struct Counters {
    pub started: AtomicU64,
    pub connected: AtomicU64,
    pub authenticated: AtomicU64,
    /// Connections that failed before authenticating.
    pub failed: AtomicU64,
    /// Authenticated connections that ended before `Stop`.
    pub lost: AtomicU64,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    /// Sends answered with an error instead of an ack.
    pub refused: AtomicU64,
    pub delivered: AtomicU64,
    pub synced: AtomicU64,
    pub syncs_done: AtomicU64,
    pub pings: AtomicU64,
    pub pongs: AtomicU64,
    pub errors: AtomicU64,
    /// The slowest send→ack, in microseconds, since the progress line last
    /// took it: a stall shows in the second it ended (while it lasts,
    /// "awaiting ack" grows), not only in the run's percentiles.
    pub slowest_ack_us: AtomicU64,
}

/// A copy of the counters at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub started: u64,
    pub connected: u64,
    pub authenticated: u64,
    pub failed: u64,
    pub lost: u64,
    pub sent: u64,
    pub acked: u64,
    pub refused: u64,
    pub delivered: u64,
    pub synced: u64,
    pub syncs_done: u64,
    pub pings: u64,
    pub pongs: u64,
    pub errors: u64,
}

impl Counters {
    pub fn snapshot(&self) -> Snapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            started: load(&self.started),
            connected: load(&self.connected),
            authenticated: load(&self.authenticated),
            failed: load(&self.failed),
            lost: load(&self.lost),
            sent: load(&self.sent),
            acked: load(&self.acked),
            refused: load(&self.refused),
            delivered: load(&self.delivered),
            synced: load(&self.synced),
            syncs_done: load(&self.syncs_done),
            pings: load(&self.pings),
            pongs: load(&self.pongs),
            errors: load(&self.errors),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// State shared between the main thread and the workers.
#[derive(Debug, Default)]
pub struct Shared {
    phase: AtomicU8,
    /// `now_ns` when the run phase began: the timeline's origin.
    run_started_ns: AtomicU64,
    pub counters: Counters,
}

impl Shared {
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }
}

/// Latency histograms, in microseconds.
#[derive(Clone, Debug)]
pub struct Latencies {
    /// Connect start to `logged_in`.
    pub connect_us: Histogram<u64>,
    /// TCP handshake alone.
    pub tcp_us: Histogram<u64>,
    /// `hello` to `hello_ack`.
    pub hello_us: Histogram<u64>,
    /// `resume` to `logged_in`.
    pub resume_us: Histogram<u64>,
    /// `send` to its `send_ack`.
    pub ack_us: Histogram<u64>,
    /// `send` to the peer's `deliver`, from when the send was written.
    pub deliver_us: Histogram<u64>,
    /// Rate mode only: from when the schedule had the send due to the
    /// peer's `deliver`. Counts the generator's own lateness, which
    /// `deliver_us` leaves out (see `payload`).
    pub deliver_from_due_us: Histogram<u64>,
    /// Rate mode only: how late each send was queued for its socket against
    /// its due time (the write follows within the same loop turn).
    pub send_slip_us: Histogram<u64>,
    /// `send` to `deliver` by when the delivery arrived: one histogram per
    /// `Settings::timeline` window from the start of the run phase. A
    /// run's p99 says how bad the tail is; this says whether it is spread
    /// evenly or comes in bursts, and when (to set beside the server's logs).
    pub deliver_timeline: Vec<Histogram<u64>>,
}

/// One hour: longer latencies are recorded as one hour.
const LATENCY_MAX_US: u64 = 3_600_000_000;

fn histogram() -> Histogram<u64> {
    histogram_with_digits(3)
}

/// 1 µs .. 1 h with `digits` significant digits (1..=5): bounds that
/// hdrhistogram accepts, so this cannot fail.
fn histogram_with_digits(digits: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, digits)
        .unwrap_or_else(|e| unreachable!("constant histogram bounds are valid: {e}"))
}

/// Most windows a timeline may have: each is a histogram of ~27 KB (two
/// significant digits over 1 µs .. 1 h) in every generator thread, so 2,000
/// windows are ~53 MB per thread. `chat` refuses narrower windows up front.
pub const TIMELINE_WINDOWS_MAX: usize = 2_000;

/// A timeline window's histogram: two significant digits (1 % resolution)
/// instead of three make it ~27 KB instead of ~190 KB.
fn timeline_histogram() -> Histogram<u64> {
    histogram_with_digits(2)
}

impl Default for Latencies {
    fn default() -> Latencies {
        Latencies {
            connect_us: histogram(),
            tcp_us: histogram(),
            hello_us: histogram(),
            resume_us: histogram(),
            ack_us: histogram(),
            deliver_us: histogram(),
            deliver_from_due_us: histogram(),
            send_slip_us: histogram(),
            deliver_timeline: Vec::new(),
        }
    }
}

impl Latencies {
    fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides, so adding cannot fail; a failure would
        // only lose samples of a report, never correctness.
        let _ = self.connect_us.add(&other.connect_us);
        let _ = self.tcp_us.add(&other.tcp_us);
        let _ = self.hello_us.add(&other.hello_us);
        let _ = self.resume_us.add(&other.resume_us);
        let _ = self.ack_us.add(&other.ack_us);
        let _ = self.deliver_us.add(&other.deliver_us);
        let _ = self.deliver_from_due_us.add(&other.deliver_from_due_us);
        let _ = self.send_slip_us.add(&other.send_slip_us);
        if self.deliver_timeline.len() < other.deliver_timeline.len() {
            self.deliver_timeline
                .resize_with(other.deliver_timeline.len(), timeline_histogram);
        }
        for (mine, theirs) in self
            .deliver_timeline
            .iter_mut()
            .zip(&other.deliver_timeline)
        {
            let _ = mine.add(theirs);
        }
    }

    /// Records a delivery `latency_ns` long that arrived `since_run_ns`
    /// into the run, in windows `width` wide. Anything past the last window
    /// `TIMELINE_WINDOWS_MAX` allows is counted in it (`chat` sizes the
    /// windows so that the run and its drain fit).
    fn record_timeline(&mut self, width: Duration, since_run_ns: u64, latency_ns: u64) {
        let width_ns = u64::try_from(width.as_nanos()).unwrap_or(u64::MAX).max(1);
        let window = usize::try_from(since_run_ns / width_ns)
            .unwrap_or(usize::MAX)
            .min(TIMELINE_WINDOWS_MAX - 1);
        if window >= self.deliver_timeline.len() {
            self.deliver_timeline
                .resize_with(window + 1, timeline_histogram);
        }
        if let Some(histogram) = self.deliver_timeline.get_mut(window) {
            record_ns(histogram, latency_ns);
        }
    }
}

/// How many sends a schedule of `rate_per_s` has due `elapsed_ns` after
/// its origin: the whole ones.
fn sends_due(elapsed_ns: u64, rate_per_s: f64) -> u64 {
    // f64 to u64 saturates (and a negative or NaN rate gives 0).
    (rate_per_s * elapsed_ns as f64 / 1e9) as u64
}

/// When a schedule of `rate_per_s` from `run_started_ns` has its send
/// number `index` (from 0) due: the moment `sends_due` first counts it.
fn due_at_ns(run_started_ns: u64, index: u64, rate_per_s: f64) -> u64 {
    if rate_per_s <= 0.0 {
        return run_started_ns;
    }
    let after_ns = (index.saturating_add(1) as f64 * 1e9 / rate_per_s).ceil();
    // f64 to u64 saturates; no run lasts 584 years.
    run_started_ns.saturating_add(after_ns as u64)
}

fn record_ns(histogram: &mut Histogram<u64>, ns: u64) {
    histogram.saturating_record((ns / 1_000).clamp(1, LATENCY_MAX_US));
}

/// Errors by kind, with the first few in full.
#[derive(Clone, Debug, Default)]
pub struct ErrorLog {
    pub total: u64,
    pub by_kind: BTreeMap<&'static str, u64>,
    pub samples: Vec<String>,
}

impl ErrorLog {
    pub fn record(&mut self, kind: &'static str, detail: String) {
        self.total += 1;
        *self.by_kind.entry(kind).or_insert(0) += 1;
        if self.samples.len() < ERROR_SAMPLES_MAX {
            self.samples.push(format!("{kind}: {detail}"));
        }
    }

    fn merge(&mut self, other: ErrorLog) {
        self.total += other.total;
        for (kind, n) in other.by_kind {
            *self.by_kind.entry(kind).or_insert(0) += n;
        }
        for sample in other.samples {
            if self.samples.len() < ERROR_SAMPLES_MAX {
                self.samples.push(sample);
            }
        }
    }

    /// One line per kind: "kind: n".
    pub fn summary(&self) -> Vec<String> {
        self.by_kind
            .iter()
            .map(|(kind, n)| format!("{kind}: {n}"))
            .collect()
    }
}

/// How a sync request went (the `Sync` plan).
#[derive(Clone, Debug, Default)]
pub struct SyncOutcome {
    pub requested_ns: u64,
    pub first_page_ns: Option<u64>,
    pub end_ns: Option<u64>,
    pub pages: u64,
    /// Messages of other conversations (not checked).
    pub other_messages: u64,
    pub payload_bytes: u64,
}

/// What one connection saw, for the end-of-run checks.
#[derive(Clone, Debug)]
pub struct ConnResult {
    pub user_index: usize,
    pub user_id: UserId,
    pub plan: Plan,
    pub authenticated: bool,
    /// Still connected and healthy when `Stop` came.
    pub open_at_end: bool,
    pub failure: Option<String>,
    pub conversation_id: Option<ConversationId>,
    pub sent: u64,
    /// Sends with neither an ack nor an error at the end.
    pub unanswered: u64,
    /// Seqs of this connection's own messages, from its `send_ack`s.
    pub acked: SeqStream,
    /// Seqs of messages received (`deliver`, or the sync's pages).
    pub received: SeqStream,
    pub pings: u64,
    pub pongs: u64,
    pub sync: Option<SyncOutcome>,
}

/// Everything the workers hand back.
#[derive(Debug, Default)]
pub struct EngineReport {
    pub results: Vec<ConnResult>,
    pub latencies: Latencies,
    pub errors: ErrorLog,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub frames_out: u64,
    pub write_calls: u64,
    /// Turns in which the rate schedule found no sender with window room.
    pub rate_stalls: u64,
    /// Sends the rate schedule had due by the end of the run that were
    /// never written (owed while every window was full, or the generator
    /// too far behind): in no latency figure, so reported on their own.
    pub rate_unsent: u64,
}

/// The running workers.
pub struct Engine {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<EngineReport>>,
    total: usize,
}

impl Engine {
    /// Starts `settings.threads` workers; connection `i` goes to worker
    /// `i % threads` and binds source `i % sources`. Connecting begins at once.
    pub fn start(settings: Settings, specs: Vec<ConnSpec>) -> Result<Engine, String> {
        let threads = settings.threads.max(1);
        let total = specs.len();
        let senders_total = specs
            .iter()
            .filter(|s| matches!(s.plan, Plan::Chat { .. }))
            .count();
        let mut shares: Vec<Vec<(ConnSpec, Option<IpAddr>)>> =
            (0..threads).map(|_| Vec::new()).collect();
        for (i, spec) in specs.into_iter().enumerate() {
            let source = super::source::source_for(&settings.sources, i);
            shares[i % threads].push((spec, source));
        }
        let shared = Arc::new(Shared::default());
        let settings = Arc::new(settings);
        let mut handles = Vec::new();
        for (id, share) in shares.into_iter().enumerate() {
            let senders = share
                .iter()
                .filter(|(s, _)| matches!(s.plan, Plan::Chat { .. }))
                .count();
            let rate_share_per_s = if senders_total == 0 {
                0.0
            } else {
                settings.rate_per_s as f64 * senders as f64 / senders_total as f64
            };
            let poll = Poll::new().map_err(|e| format!("creating a mio Poll: {e}"))?;
            let worker = Worker::new(
                id,
                threads,
                settings.clone(),
                shared.clone(),
                poll,
                share,
                rate_share_per_s,
            );
            let batch_scheduling = settings.batch_scheduling;
            let handle = std::thread::Builder::new()
                .name(format!("bench-{id}"))
                .spawn(move || {
                    if batch_scheduling {
                        if let Err(e) = use_batch_scheduling() {
                            log::warn!("worker {id} keeps the default scheduling: {e}");
                        }
                    }
                    worker.run()
                })
                .map_err(|e| format!("spawning a worker: {e}"))?;
            handles.push(handle);
        }
        Ok(Engine {
            shared,
            handles,
            total,
        })
    }

    pub fn connections(&self) -> usize {
        self.total
    }

    pub fn set_phase(&self, phase: Phase) {
        if phase == Phase::Run {
            // Before the phase: a worker that sees Run sees this too.
            self.shared
                .run_started_ns
                .store(now_ns(), Ordering::Release);
        }
        self.shared.phase.store(phase as u8, Ordering::Release);
    }

    pub fn snapshot(&self) -> Snapshot {
        self.shared.counters.snapshot()
    }

    /// The slowest send→ack since the last call, and starts over.
    pub fn take_slowest_ack(&self) -> Duration {
        Duration::from_micros(
            self.shared
                .counters
                .slowest_ack_us
                .swap(0, Ordering::Relaxed),
        )
    }

    /// True once every worker has returned (normally only after `Stop`).
    pub fn workers_gone(&self) -> bool {
        self.handles.iter().all(|h| h.is_finished())
    }

    /// Stops the workers and merges what they measured.
    pub fn stop(self) -> EngineReport {
        self.set_phase(Phase::Stop);
        let mut report = EngineReport::default();
        for handle in self.handles {
            match handle.join() {
                Ok(part) => {
                    report.results.extend(part.results);
                    report.latencies.merge(&part.latencies);
                    report.errors.merge(part.errors);
                    report.bytes_in += part.bytes_in;
                    report.bytes_out += part.bytes_out;
                    report.frames_out += part.frames_out;
                    report.write_calls += part.write_calls;
                    report.rate_stalls += part.rate_stalls;
                    report.rate_unsent += part.rate_unsent;
                }
                Err(_) => report.errors.record(
                    "worker panicked",
                    "a worker thread panicked; its results are lost".into(),
                ),
            }
        }
        report.results.sort_by_key(|r| r.user_index);
        report
    }
}

// ---------------------------------------------------------------- connection

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    NotStarted,
    Connecting,
    HelloSent,
    ResumeSent,
    Ready,
    Closed,
}

impl State {
    fn in_handshake(self) -> bool {
        matches!(
            self,
            State::Connecting | State::HelloSent | State::ResumeSent
        )
    }
}

/// A send awaiting its ack.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    request_id: u32,
    client_message_id: u64,
    sent_ns: u64,
}

struct Conn {
    spec: ConnSpec,
    source: Option<IpAddr>,
    stream: Option<TcpStream>,
    state: State,
    decoder: FrameDecoder,
    cipher: Box<dyn PayloadCipher>,
    client_nonce: [u8; CONNECTION_NONCE_LEN],
    version: u8,
    payload_len_max: u32,
    /// Bytes of a partial frame carried to the next read (usually empty).
    pending_in: Vec<u8>,
    out: BytesMut,
    /// Frames in `out` not yet counted as written.
    out_frames: u64,
    in_dirty_list: bool,
    next_request_id: u32,
    handshake_request_id: u32,
    sync_request_id: u32,
    started_ns: u64,
    tcp_ns: u64,
    step_ns: u64,
    last_sent: Instant,
    last_progress_ns: u64,
    heartbeat: Option<Duration>,
    pings_unanswered: u32,
    pings: u64,
    pongs: u64,
    conversation_id: Option<ConversationId>,
    inflight: VecDeque<InFlight>,
    client_message_id_base: u64,
    sent: u64,
    acked: SeqStream,
    received: SeqStream,
    /// Messages received since the last delivery ack.
    ack_due: bool,
    authenticated: bool,
    sync: Option<SyncOutcome>,
    failure: Option<String>,
}

impl Conn {
    fn new(spec: ConnSpec, source: Option<IpAddr>, client_message_id_base: u64) -> Conn {
        Conn {
            spec,
            source,
            stream: None,
            state: State::NotStarted,
            decoder: FrameDecoder::new(limits::PAYLOAD_LEN_DEFAULT),
            cipher: Box::new(NoCipher),
            client_nonce: [0; CONNECTION_NONCE_LEN],
            version: 1,
            payload_len_max: limits::PAYLOAD_LEN_DEFAULT,
            pending_in: Vec::new(),
            out: BytesMut::new(),
            out_frames: 0,
            in_dirty_list: false,
            next_request_id: 1,
            handshake_request_id: 0,
            sync_request_id: 0,
            started_ns: 0,
            tcp_ns: 0,
            step_ns: 0,
            last_sent: Instant::now(),
            last_progress_ns: 0,
            heartbeat: None,
            pings_unanswered: 0,
            pings: 0,
            pongs: 0,
            conversation_id: None,
            inflight: VecDeque::new(),
            client_message_id_base,
            sent: 0,
            acked: SeqStream::default(),
            received: SeqStream::default(),
            ack_due: false,
            authenticated: false,
            sync: None,
            failure: None,
        }
    }

    fn take_request_id(&mut self) -> u32 {
        let id = self.next_request_id;
        // Zero is reserved for pushes.
        self.next_request_id = self.next_request_id.checked_add(1).unwrap_or(1);
        id
    }

    fn peer(&self) -> Option<UserId> {
        match self.spec.plan {
            Plan::Chat { peer } | Plan::Send { peer, .. } => Some(peer),
            Plan::Hold | Plan::Sync { .. } => None,
        }
    }

    fn result(self, open_at_end: bool) -> ConnResult {
        ConnResult {
            user_index: self.spec.user_index,
            user_id: self.spec.user_id,
            plan: self.spec.plan,
            authenticated: self.authenticated,
            open_at_end,
            failure: self.failure,
            conversation_id: self.conversation_id,
            sent: self.sent,
            unanswered: self.inflight.len() as u64,
            acked: self.acked,
            received: self.received,
            pings: self.pings,
            pongs: self.pongs,
            sync: self.sync,
        }
    }
}

/// Opens a non-blocking TCP socket, bound to `source` if given, and starts
/// connecting it to `target`.
fn open_socket(target: SocketAddr, source: Option<IpAddr>) -> std::io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_nonblocking(true)?;
    // Frames are small and latency-bound; Nagle would hold them back.
    socket.set_tcp_nodelay(true)?;
    if let Some(source) = source {
        bind_address_no_port(&socket);
        socket.bind(&SockAddr::from(SocketAddr::new(source, 0)))?;
    }
    match socket.connect(&SockAddr::from(target)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(socket)
}

/// IP_BIND_ADDRESS_NO_PORT: bind only the address now and pick the port at
/// connect time, per destination, so one source address serves more than
/// the ephemeral range when there are several targets. Best effort: without
/// it binding still works, with one port per socket per source.
fn bind_address_no_port(socket: &Socket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads `one` (a live c_int of the given size) for the
    // duration of the call; the fd is owned by `socket`.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Puts the calling thread under SCHED_BATCH: same share of the CPU as
/// before (same nice level), but its wake-ups no longer preempt the thread
/// running on that core. On a box it shares with gustd, every worker woken
/// by a server write otherwise cut into the server's event loop mid-turn:
/// ~9,000 involuntary switches of gustd's shard a second at 100,000 msg/s
/// (BENCHMARKS.md), a cost that clients on other machines never impose.
/// No privilege is needed.
pub fn use_batch_scheduling() -> std::io::Result<()> {
    crate::threads::set_policy(0, libc::SCHED_BATCH)
}

// ---------------------------------------------------------------- worker

struct Worker {
    id: usize,
    settings: Arc<Settings>,
    shared: Arc<Shared>,
    poll: Poll,
    conns: Vec<Conn>,
    dirty: Vec<usize>,
    scratch: Vec<u8>,
    rng: SystemRandom,
    /// Connections not yet started begin at this index.
    next_to_start: usize,
    /// Started and not yet authenticated or failed.
    in_handshake: usize,
    inflight_cap: usize,
    connect_rate_per_s: f64,
    started_at: Instant,
    phase: Phase,
    /// Rate mode: when the run started, on the `now_ns` clock: the origin
    /// of this worker's schedule (the engine's, not when this worker first
    /// noticed, so a late start shows as lateness).
    schedule_origin_ns: Option<u64>,
    rate_share_per_s: f64,
    rate_sent: u64,
    rate_cursor: usize,
    rate_stalls: u64,
    rate_unsent: u64,
    latencies: Latencies,
    errors: ErrorLog,
    bytes_in: u64,
    bytes_out: u64,
    frames_out: u64,
    write_calls: u64,
    pings_nonce: u64,
    /// The clock as of the last read from a socket or turn of the loop
    /// (`tick_clock`): the arrival time of every frame that read returned,
    /// and the send time of the messages those frames let out. Reading the
    /// clock once per frame instead was 2 % of the generator's CPU, which
    /// the server shares the machine with. A send is stamped no later than
    /// it is written, so latencies are never understated by it.
    clock: Instant,
    clock_ns: u64,
    /// Each receiver's delivery-ack timer, started by the first delivery it
    /// has not acked yet: (due, connection), in due order because the
    /// interval is fixed. Every client acks on its own clock, as real ones
    /// do; a tick acking all of them at once sent the server a burst of
    /// 10,000 acks every interval, and the sends behind it waited.
    ack_timers: VecDeque<(Instant, usize)>,
}

impl Worker {
    fn new(
        id: usize,
        threads: usize,
        settings: Arc<Settings>,
        shared: Arc<Shared>,
        poll: Poll,
        share: Vec<(ConnSpec, Option<IpAddr>)>,
        rate_share_per_s: f64,
    ) -> Worker {
        let rng = SystemRandom::new();
        let conns = share
            .into_iter()
            .map(|(spec, source)| {
                // Client message ids must be unique per user across runs (the
                // server dedupes on them): a random high half, a counter below.
                let mut high = [0u8; 4];
                let high = match rng.fill(&mut high) {
                    Ok(()) => u32::from_le_bytes(high),
                    Err(_) => (now_ns() as u32) ^ (spec.user_id as u32),
                };
                Conn::new(spec, source, u64::from(high) << 32)
            })
            .collect();
        Worker {
            id,
            inflight_cap: (settings.connect_inflight_max / threads).max(1),
            connect_rate_per_s: settings.connect_rate_per_s as f64 / threads as f64,
            settings,
            shared,
            poll,
            conns,
            dirty: Vec::new(),
            scratch: vec![0; READ_CHUNK_BYTES],
            rng,
            next_to_start: 0,
            in_handshake: 0,
            started_at: Instant::now(),
            phase: Phase::Connect,
            schedule_origin_ns: None,
            rate_share_per_s,
            rate_sent: 0,
            rate_cursor: 0,
            rate_stalls: 0,
            rate_unsent: 0,
            latencies: Latencies::default(),
            errors: ErrorLog::default(),
            bytes_in: 0,
            bytes_out: 0,
            frames_out: 0,
            write_calls: 0,
            pings_nonce: 0,
            clock: Instant::now(),
            clock_ns: now_ns(),
            ack_timers: VecDeque::new(),
        }
    }

    fn tick_clock(&mut self) -> Instant {
        self.clock = Instant::now();
        self.clock_ns = ns_at(self.clock);
        self.clock
    }

    fn run(mut self) -> EngineReport {
        let mut events = Events::with_capacity(4096);
        let mut next_heartbeat = Instant::now() + HEARTBEAT_TICK;
        let mut next_deadline = Instant::now() + DEADLINE_TICK;
        loop {
            let phase = self.shared.phase();
            if phase == Phase::Stop {
                break;
            }
            if phase != self.phase {
                if self.phase == Phase::Run {
                    // What the schedule still owed stays owed: count it.
                    self.tick_clock();
                    self.rate_unsent = self.sends_owed();
                }
                self.phase = phase;
                if phase == Phase::Run {
                    self.tick_clock();
                    // Stored before the phase (`Engine::set_phase`); 0 only
                    // if a test sets phases some other way.
                    let origin = self.shared.run_started_ns.load(Ordering::Acquire);
                    self.schedule_origin_ns = Some(match origin {
                        0 => self.clock_ns,
                        origin => origin.min(self.clock_ns),
                    });
                    if self.settings.rate_per_s == 0 {
                        for i in 0..self.conns.len() {
                            self.fill_window(i);
                        }
                    }
                }
            }
            self.start_connects();
            self.flush_dirty();
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != ErrorKind::Interrupted {
                    self.errors.record("poll failed", e.to_string());
                    bump(&self.shared.counters.errors);
                    break;
                }
            }
            for event in events.iter() {
                let i = event.token().0;
                if i >= self.conns.len() || self.conns[i].state == State::Closed {
                    continue;
                }
                if self.conns[i].state == State::Connecting && !self.check_connected(i) {
                    continue;
                }
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    self.read_ready(i, event.is_read_closed() || event.is_error());
                }
                if event.is_writable() && !self.conns[i].out.is_empty() {
                    self.mark_dirty(i);
                }
            }
            let now = self.tick_clock();
            if self.phase == Phase::Run && self.settings.rate_per_s > 0 {
                self.send_on_schedule();
            }
            self.send_due_delivery_acks(now);
            if now >= next_heartbeat {
                next_heartbeat = now + HEARTBEAT_TICK;
                self.heartbeats();
            }
            if now >= next_deadline {
                next_deadline = now + DEADLINE_TICK;
                self.check_deadlines();
            }
            self.flush_dirty();
        }
        self.finish()
    }

    fn poll_timeout(&self) -> Duration {
        let timeout = if self.phase == Phase::Run && self.settings.rate_per_s > 0 {
            Duration::from_millis(1)
        } else if self.next_to_start < self.conns.len() && self.in_handshake < self.inflight_cap {
            // Waiting only for the connect pacer.
            Duration::from_millis(2)
        } else {
            Duration::from_millis(20)
        };
        match self.ack_timers.front() {
            Some(&(due, _)) => timeout.min(due.saturating_duration_since(Instant::now())),
            None => timeout,
        }
    }

    fn finish(mut self) -> EngineReport {
        // Leave the server with the delivered cursors where they belong.
        self.send_delivery_acks();
        self.flush_dirty();
        let counters = &self.shared.counters;
        let mut results = Vec::with_capacity(self.conns.len());
        for conn in std::mem::take(&mut self.conns) {
            let open = conn.state == State::Ready;
            if conn.state.in_handshake() {
                bump(&counters.failed);
            }
            results.push(conn.result(open));
        }
        log::debug!("worker {} done", self.id);
        EngineReport {
            results,
            latencies: self.latencies,
            errors: self.errors,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            frames_out: self.frames_out,
            write_calls: self.write_calls,
            rate_stalls: self.rate_stalls,
            rate_unsent: self.rate_unsent,
        }
    }

    // ------------------------------------------------------------ errors

    /// Records an error that does not end the connection.
    fn note(&mut self, kind: &'static str, detail: String) {
        self.errors.record(kind, detail);
        bump(&self.shared.counters.errors);
    }

    /// Ends connection `i` with an error.
    fn fail(&mut self, i: usize, kind: &'static str, detail: String) {
        let user = &self.conns[i].spec.user_index;
        let detail = format!("user {user}: {detail}");
        self.note(kind, detail.clone());
        let counters = &self.shared.counters;
        let conn = &mut self.conns[i];
        if conn.state.in_handshake() {
            self.in_handshake = self.in_handshake.saturating_sub(1);
            bump(&counters.failed);
        } else if conn.state == State::Ready {
            bump(&counters.lost);
        }
        conn.failure.get_or_insert(format!("{kind}: {detail}"));
        conn.state = State::Closed;
        if let Some(mut stream) = conn.stream.take() {
            let _ = self.poll.registry().deregister(&mut stream);
        }
        conn.out = BytesMut::new();
        conn.pending_in = Vec::new();
    }

    // ------------------------------------------------------------ connecting

    fn start_connects(&mut self) {
        while self.next_to_start < self.conns.len() && self.in_handshake < self.inflight_cap {
            if self.connect_rate_per_s > 0.0 {
                let allowed = (self.connect_rate_per_s * self.started_at.elapsed().as_secs_f64())
                    as usize
                    + 1;
                if self.next_to_start >= allowed {
                    break;
                }
            }
            let i = self.next_to_start;
            self.next_to_start += 1;
            self.start_connect(i);
        }
    }

    fn start_connect(&mut self, i: usize) {
        bump(&self.shared.counters.started);
        self.in_handshake += 1;
        let conn = &mut self.conns[i];
        conn.started_ns = now_ns();
        conn.state = State::Connecting;
        let socket = match open_socket(self.settings.target, conn.source) {
            Ok(socket) => socket,
            Err(e) => {
                let source = conn.source;
                return self.fail(i, "connect failed", format!("from {source:?}: {e}"));
            }
        };
        let mut stream = TcpStream::from_std(socket.into());
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            return self.fail(i, "register failed", e.to_string());
        }
        self.conns[i].stream = Some(stream);
    }

    /// Checks whether a connecting socket is now connected; if so, sends the
    /// hello. Returns false while still connecting or after a failure.
    fn check_connected(&mut self, i: usize) -> bool {
        let Some(stream) = self.conns[i].stream.as_ref() else {
            return false;
        };
        match stream.take_error() {
            Ok(None) => {}
            Ok(Some(e)) | Err(e) => {
                self.fail(i, "connect failed", e.to_string());
                return false;
            }
        }
        match stream.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotConnected => return false,
            Err(e) => {
                self.fail(i, "connect failed", e.to_string());
                return false;
            }
        }
        bump(&self.shared.counters.connected);
        let now = now_ns();
        let conn = &mut self.conns[i];
        conn.tcp_ns = now;
        record_ns(&mut self.latencies.tcp_us, now - conn.started_ns);
        let mut nonce = [0u8; CONNECTION_NONCE_LEN];
        if self.rng.fill(&mut nonce).is_err() {
            self.fail(i, "random source failed", "no client nonce".into());
            return false;
        }
        let conn = &mut self.conns[i];
        conn.client_nonce = nonce;
        let wanted_cipher = match self.settings.psk {
            Some(_) => cipher::CIPHER_CHACHA20_POLY1305,
            None => cipher::CIPHER_NONE,
        };
        let hello = Body::Hello(Hello {
            version_min: VERSION_MIN,
            version_max: VERSION_MAX,
            cipher: wanted_cipher,
            client_nonce: nonce.to_vec(),
            agent: self.settings.agent.clone(),
        });
        conn.state = State::HelloSent;
        conn.step_ns = now;
        let request_id = self.queue(i, &hello).unwrap_or(0);
        self.conns[i].handshake_request_id = request_id;
        self.conns[i].state == State::HelloSent
    }

    // ------------------------------------------------------------ writing

    /// Encodes `body` into connection `i`'s output buffer; returns its
    /// request id. Written at the end of the turn.
    fn queue(&mut self, i: usize, body: &Body) -> Option<u32> {
        let conn = &mut self.conns[i];
        conn.stream.as_ref()?;
        let request_id = conn.take_request_id();
        if let Err(e) = encode_frame(
            &mut conn.out,
            conn.version,
            request_id,
            body,
            conn.cipher.as_mut(),
            conn.payload_len_max,
        ) {
            self.fail(
                i,
                "encode failed",
                format!("{}: {e}", body.command().name()),
            );
            return None;
        }
        conn.out_frames += 1;
        conn.last_sent = self.clock;
        self.mark_dirty(i);
        Some(request_id)
    }

    fn mark_dirty(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        if !conn.in_dirty_list {
            conn.in_dirty_list = true;
            self.dirty.push(i);
        }
    }

    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &i in &dirty {
            self.conns[i].in_dirty_list = false;
            self.flush(i);
        }
        // Reuse the allocation (flush never marks a connection dirty).
        self.dirty = dirty;
        self.dirty.clear();
    }

    /// Writes as much of the output buffer as the socket takes; the rest
    /// waits for the next writable event.
    fn flush(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        let Some(stream) = conn.stream.as_mut() else {
            return;
        };
        if conn.state == State::Connecting {
            return;
        }
        while !conn.out.is_empty() {
            match stream.write(&conn.out) {
                Ok(0) => {
                    return self.fail(i, "write failed", "socket wrote nothing".into());
                }
                Ok(n) => {
                    self.write_calls += 1;
                    self.bytes_out += n as u64;
                    conn.out.advance(n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    return self.fail(i, "write failed", e.to_string());
                }
            }
        }
        if conn.out.is_empty() {
            self.frames_out += conn.out_frames;
            conn.out_frames = 0;
            if conn.out.capacity() > OUT_KEEP_BYTES {
                conn.out = BytesMut::new();
            } else {
                conn.out.clear();
            }
        }
    }

    // ------------------------------------------------------------ reading

    /// Reads what the socket has, handling every whole frame; `until_eof`
    /// when the server closed its side (or the socket errored).
    fn read_ready(&mut self, i: usize, until_eof: bool) {
        let mut scratch = std::mem::take(&mut self.scratch);
        while let Some(stream) = self.conns[i].stream.as_mut() {
            let n = match stream.read(&mut scratch) {
                Ok(0) => {
                    let what = format!(
                        "the server closed the connection in state {:?}",
                        self.conns[i].state
                    );
                    self.fail(i, "closed by server", what);
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.fail(i, "read failed", e.to_string());
                    break;
                }
            };
            self.tick_clock();
            self.bytes_in += n as u64;
            if self.conns[i].pending_in.is_empty() {
                let used = self.parse(i, &mut scratch[..n]);
                let conn = &mut self.conns[i];
                if conn.state != State::Closed && used < n {
                    conn.pending_in.extend_from_slice(&scratch[used..n]);
                }
            } else {
                let mut buf = std::mem::take(&mut self.conns[i].pending_in);
                buf.extend_from_slice(&scratch[..n]);
                let used = self.parse(i, &mut buf);
                let conn = &mut self.conns[i];
                if conn.state != State::Closed && used < buf.len() {
                    buf.drain(..used);
                    conn.pending_in = buf;
                }
            }
            if n < scratch.len() && !until_eof {
                // Drained: skip the read that would only say WouldBlock
                // (epoll is edge-triggered and signals every arrival; see
                // the server's shard for the same reasoning).
                break;
            }
        }
        self.scratch = scratch;
    }

    /// Handles the whole frames at the front of `buf`; returns the bytes used.
    fn parse(&mut self, i: usize, buf: &mut [u8]) -> usize {
        let mut at = 0;
        while self.conns[i].state != State::Closed {
            let split = self.conns[i].decoder.split(&buf[at..]);
            let (header, frame_len) = match split {
                Ok(Some(found)) => found,
                Ok(None) => break,
                Err(e) => {
                    self.fail(i, "bad frame", e.to_string());
                    break;
                }
            };
            let frame = &mut buf[at..at + frame_len];
            at += frame_len;
            let conn = &mut self.conns[i];
            if header.cipher_id != conn.cipher.id() {
                let detail = format!(
                    "frame cipher {}, connection cipher {}",
                    header.cipher_id,
                    conn.cipher.id()
                );
                self.fail(i, "bad cipher", detail);
                break;
            }
            let header_bytes = header.to_bytes();
            let payload = &mut frame[HEADER_LEN..frame_len - CRC_LEN];
            let plaintext_len = match conn.cipher.open(&header_bytes, payload) {
                Ok(len) => len,
                Err(e) => {
                    self.fail(i, "bad cipher", e.to_string());
                    break;
                }
            };
            let plaintext = &payload[..plaintext_len];
            let body = match Command::from_u16(header.command) {
                Some(command) if command.direction() == Direction::ServerToClient => {
                    Body::decode(command, plaintext)
                }
                Some(command) => {
                    self.note(
                        "unexpected frame",
                        format!("server sent client command {}", command.name()),
                    );
                    continue;
                }
                None => {
                    self.note(
                        "unexpected frame",
                        format!("unknown command {:#06x}", header.command),
                    );
                    continue;
                }
            };
            match body {
                Ok(body) => self.on_body(i, header.request_id, body),
                Err(e) => self.note("bad body", format!("command {:#06x}: {e}", header.command)),
            }
        }
        at
    }

    // ------------------------------------------------------------ protocol

    fn on_body(&mut self, i: usize, request_id: u32, body: Body) {
        let state = self.conns[i].state;
        match (state, body) {
            (_, Body::Error(reply)) => self.on_error(i, request_id, reply),
            (_, Body::GoingAway(g)) => self.fail(
                i,
                "going away",
                format!(
                    "{:?}, reconnect after {} ms",
                    g.reason, g.reconnect_after_ms
                ),
            ),
            (State::HelloSent, Body::HelloAck(ack))
                if request_id == self.conns[i].handshake_request_id =>
            {
                self.on_hello_ack(i, ack)
            }
            (State::ResumeSent, Body::LoggedIn(info))
                if request_id == self.conns[i].handshake_request_id =>
            {
                self.on_logged_in(i, info)
            }
            (State::Ready, Body::Pong(_)) => {
                let conn = &mut self.conns[i];
                conn.pongs += 1;
                conn.pings_unanswered = 0;
                bump(&self.shared.counters.pongs);
            }
            (State::Ready, Body::SendAck(ack)) => self.on_send_ack(i, request_id, ack),
            (State::Ready, Body::Deliver(d)) if request_id == 0 => {
                self.on_message(i, d.message, true)
            }
            (State::Ready, Body::Receipt(_)) if request_id == 0 => {}
            (State::Ready, Body::SyncPage(page)) => {
                let own = request_id != 0 && request_id == self.conns[i].sync_request_id;
                if own {
                    self.on_sync_page(i, page.messages);
                } else {
                    // A server-initiated catch-up: its messages count as pushes.
                    for message in page.messages {
                        self.on_message(i, message, false);
                    }
                }
            }
            (State::Ready, Body::SyncEnd(_))
                if request_id != 0 && request_id == self.conns[i].sync_request_id =>
            {
                self.on_sync_end(i)
            }
            (State::Ready, Body::SyncEnd(_)) if request_id == 0 => {}
            (state, other) => self.note(
                "unexpected frame",
                format!(
                    "{} (request {request_id}) in state {state:?}",
                    other.command().name()
                ),
            ),
        }
    }

    fn on_error(&mut self, i: usize, request_id: u32, reply: crate::protocol::ErrorReply) {
        let code = crate::protocol::StatusCode::from_u16(reply.code)
            .map(|c| c.name().to_string())
            .unwrap_or_else(|| format!("code {}", reply.code));
        let conn = &mut self.conns[i];
        let what = if conn.state.in_handshake() && request_id == conn.handshake_request_id {
            "handshake refused"
        } else if let Some(at) = conn
            .inflight
            .iter()
            .position(|f| f.request_id == request_id)
        {
            conn.inflight.remove(at);
            bump(&self.shared.counters.refused);
            "send refused"
        } else if request_id != 0 && request_id == conn.sync_request_id {
            "sync refused"
        } else {
            "error reply"
        };
        let detail = format!(
            "{code}: {} (request {request_id}, closing {})",
            reply.message, reply.closing
        );
        if reply.closing || what == "handshake refused" || what == "sync refused" {
            self.fail(i, what, detail);
        } else {
            self.note(what, detail);
        }
    }

    fn on_hello_ack(&mut self, i: usize, ack: crate::protocol::HelloAck) {
        let now = now_ns();
        let wanted_cipher = match self.settings.psk {
            Some(_) => cipher::CIPHER_CHACHA20_POLY1305,
            None => cipher::CIPHER_NONE,
        };
        if !(VERSION_MIN..=VERSION_MAX).contains(&ack.version) || ack.cipher != wanted_cipher {
            let detail = format!(
                "version {} cipher {} (asked cipher {wanted_cipher})",
                ack.version, ack.cipher
            );
            return self.fail(i, "bad hello_ack", detail);
        }
        let conn = &mut self.conns[i];
        record_ns(&mut self.latencies.hello_us, now - conn.step_ns);
        match cipher::negotiate(
            ack.cipher,
            self.settings.psk.as_ref(),
            &conn.client_nonce,
            &ack.server_nonce,
            Role::Client,
        ) {
            Ok(c) => conn.cipher = c,
            Err(e) => return self.fail(i, "bad hello_ack", e.to_string()),
        }
        conn.version = ack.version;
        conn.payload_len_max = ack.payload_len_limit();
        conn.decoder = ack.decoder();
        conn.heartbeat = ack.heartbeat();
        conn.state = State::ResumeSent;
        conn.step_ns = now;
        let resume = Body::Resume(Resume {
            session_token: conn.spec.token.clone(),
            device_id: conn.spec.device_id.clone(),
        });
        let request_id = self.queue(i, &resume).unwrap_or(0);
        self.conns[i].handshake_request_id = request_id;
    }

    fn on_logged_in(&mut self, i: usize, info: crate::protocol::LoggedIn) {
        let now = now_ns();
        let conn = &mut self.conns[i];
        if info.user_id != conn.spec.user_id {
            let detail = format!(
                "resumed as user {}, expected {}",
                info.user_id, conn.spec.user_id
            );
            return self.fail(i, "wrong user", detail);
        }
        record_ns(&mut self.latencies.resume_us, now - conn.step_ns);
        record_ns(&mut self.latencies.connect_us, now - conn.started_ns);
        conn.state = State::Ready;
        conn.authenticated = true;
        conn.last_progress_ns = now;
        self.in_handshake = self.in_handshake.saturating_sub(1);
        bump(&self.shared.counters.authenticated);
        match conn.spec.plan.clone() {
            Plan::Sync {
                conversation_id,
                after_seq,
                ..
            } => {
                let sync = Body::Sync(Sync {
                    cursors: vec![SyncCursor {
                        conversation_id,
                        seq: after_seq,
                    }],
                    // 0: the server's largest page.
                    page_messages_max: 0,
                });
                self.conns[i].sync = Some(SyncOutcome {
                    requested_ns: now_ns(),
                    ..SyncOutcome::default()
                });
                self.conns[i].sync_request_id = self.queue(i, &sync).unwrap_or(0);
            }
            Plan::Chat { .. } | Plan::Send { .. }
                if self.phase == Phase::Run && self.settings.rate_per_s == 0 =>
            {
                self.fill_window(i)
            }
            _ => {}
        }
    }

    /// Sends until the window is full (window mode, `Run` phase only).
    fn fill_window(&mut self, i: usize) {
        if self.phase != Phase::Run || self.settings.rate_per_s > 0 {
            return;
        }
        loop {
            let conn = &self.conns[i];
            if conn.state != State::Ready || conn.inflight.len() >= self.settings.window {
                return;
            }
            match conn.spec.plan {
                Plan::Chat { .. } => {}
                Plan::Send { count, .. } if conn.sent < count => {}
                _ => return,
            }
            self.send_message(i, self.clock_ns);
        }
    }

    /// Sends connection `i`'s next message; `due_ns` is when the schedule
    /// had it due (the clock's reading without a schedule).
    fn send_message(&mut self, i: usize, due_ns: u64) {
        let conn = &mut self.conns[i];
        let Some(peer) = conn.peer() else {
            return;
        };
        let client_message_id = conn.client_message_id_base + conn.sent;
        let sent_ns = self.clock_ns;
        let stamp = Stamp {
            sent_ns,
            due_ns: due_ns.min(sent_ns),
            client_message_id,
        };
        let body = Body::Send(Send {
            client_message_id,
            to: Target::User(peer),
            content: Content::Text {
                text: message_text(stamp, self.settings.size_bytes),
            },
            extras: BTreeMap::new(),
        });
        conn.sent += 1;
        if let Some(request_id) = self.queue(i, &body) {
            self.conns[i].inflight.push_back(InFlight {
                request_id,
                client_message_id,
                sent_ns,
            });
            bump(&self.shared.counters.sent);
        }
    }

    /// Rate mode: sends the schedule has due and not yet written, as of
    /// the clock's last reading.
    fn sends_owed(&self) -> u64 {
        match (self.settings.rate_per_s, self.schedule_origin_ns) {
            (0, _) | (_, None) => 0,
            (_, Some(origin)) => {
                let due = sends_due(self.clock_ns.saturating_sub(origin), self.rate_share_per_s);
                due.saturating_sub(self.rate_sent)
            }
        }
    }

    /// Rate mode: sends what the schedule says is due, round-robin over the
    /// senders with room in their window.
    fn send_on_schedule(&mut self) {
        let Some(origin) = self.schedule_origin_ns else {
            return;
        };
        let due = sends_due(self.clock_ns.saturating_sub(origin), self.rate_share_per_s);
        let n = self.conns.len();
        while self.rate_sent < due {
            let mut found = None;
            for step in 0..n {
                let i = (self.rate_cursor + step) % n;
                let conn = &self.conns[i];
                if conn.state == State::Ready
                    && matches!(conn.spec.plan, Plan::Chat { .. })
                    && conn.inflight.len() < self.settings.window
                {
                    found = Some(i);
                    break;
                }
            }
            let Some(i) = found else {
                // Every sender's window is full: the server is behind the
                // schedule. The debt is kept and paid when acks come back.
                self.rate_stalls += 1;
                return;
            };
            self.rate_cursor = (i + 1) % n;
            let due_ns = due_at_ns(origin, self.rate_sent, self.rate_share_per_s);
            debug_assert!(
                due_ns <= self.clock_ns,
                "send {} due at {due_ns} after the clock {}",
                self.rate_sent,
                self.clock_ns
            );
            // `sends_due` counted it, so it is due by now up to float
            // rounding, which the saturation here and `send_message`'s clamp
            // of the stamp absorb.
            record_ns(
                &mut self.latencies.send_slip_us,
                self.clock_ns.saturating_sub(due_ns),
            );
            self.send_message(i, due_ns);
            self.rate_sent += 1;
        }
    }

    fn on_send_ack(&mut self, i: usize, request_id: u32, ack: crate::protocol::SendAck) {
        let now = self.clock_ns;
        let conn = &mut self.conns[i];
        let at = match conn.inflight.front() {
            Some(front) if front.request_id == request_id => Some(0),
            _ => conn
                .inflight
                .iter()
                .position(|f| f.request_id == request_id),
        };
        let Some(flight) = at.and_then(|at| conn.inflight.remove(at)) else {
            return self.note(
                "unmatched ack",
                format!("send_ack for request {request_id}, which awaits none"),
            );
        };
        bump(&self.shared.counters.acked);
        if ack.client_message_id != flight.client_message_id {
            let detail = format!(
                "send_ack for request {request_id} names client message {}, sent {}",
                ack.client_message_id, flight.client_message_id
            );
            return self.note("wrong ack", detail);
        }
        let took_ns = now.saturating_sub(flight.sent_ns);
        record_ns(&mut self.latencies.ack_us, took_ns);
        // A locked read-modify-write only when this ack is the new slowest.
        let took_us = took_ns / 1_000;
        let slowest = &self.shared.counters.slowest_ack_us;
        if took_us > slowest.load(Ordering::Relaxed) {
            slowest.fetch_max(took_us, Ordering::Relaxed);
        }
        let conn = &mut self.conns[i];
        match conn.conversation_id {
            None => conn.conversation_id = Some(ack.conversation_id),
            Some(c) if c != ack.conversation_id => {
                let detail = format!(
                    "send_ack in conversation {}, earlier {c}",
                    ack.conversation_id
                );
                return self.note("wrong conversation", detail);
            }
            Some(_) => {}
        }
        conn.acked.push(ack.seq, ack.client_message_id);
        self.fill_window(i);
    }

    /// A pushed message (`deliver`, or a page of a server-initiated catch-up).
    fn on_message(&mut self, i: usize, message: Message, live: bool) {
        let now = self.clock_ns;
        let size_bytes = self.settings.size_bytes;
        let conn = &mut self.conns[i];
        let Some(peer) = conn
            .peer()
            .filter(|_| matches!(conn.spec.plan, Plan::Chat { .. }))
        else {
            let detail = format!(
                "message {}/{} pushed to a connection that expects none",
                message.conversation_id, message.seq
            );
            return self.note("unexpected message", detail);
        };
        if message.sender_id != peer {
            let detail = format!(
                "message from user {}, the peer is {peer}",
                message.sender_id
            );
            return self.note("wrong sender", detail);
        }
        match conn.conversation_id {
            None => conn.conversation_id = Some(message.conversation_id),
            Some(c) if c != message.conversation_id => {
                let detail = format!(
                    "message in conversation {}, expected {c}",
                    message.conversation_id
                );
                return self.note("wrong conversation", detail);
            }
            Some(_) => {}
        }
        let stamp = match &message.content {
            Content::Text { text } if text.len() == size_bytes.max(super::payload::STAMP_BYTES) => {
                parse_stamp(text)
            }
            _ => None,
        };
        let Some(Stamp {
            sent_ns,
            due_ns,
            client_message_id: stamped_id,
        }) = stamp
        else {
            let detail = format!(
                "message {}/{} does not carry the text that was sent",
                message.conversation_id, message.seq
            );
            return self.note("corrupt message", detail);
        };
        if stamped_id != message.client_message_id {
            let detail = format!(
                "message {}/{} has client message id {}, its text says {stamped_id}",
                message.conversation_id, message.seq, message.client_message_id
            );
            return self.note("corrupt message", detail);
        }
        if live {
            let latency_ns = now.saturating_sub(sent_ns);
            record_ns(&mut self.latencies.deliver_us, latency_ns);
            if self.settings.rate_per_s > 0 {
                record_ns(
                    &mut self.latencies.deliver_from_due_us,
                    now.saturating_sub(due_ns),
                );
            }
            if let Some(width) = self.settings.timeline {
                // The receiving worker may not have seen the phase change
                // yet (this delivery can be what woke it), so it reads the
                // origin itself. The sender saw Run, stored after the origin,
                // before sending; should the origin still read 0 here, the
                // delivery counts in the first window rather than at the
                // process's age.
                let run_started_ns = self.shared.run_started_ns.load(Ordering::Acquire);
                let since_run_ns = match run_started_ns {
                    0 => 0,
                    started => now.saturating_sub(started),
                };
                self.latencies
                    .record_timeline(width, since_run_ns, latency_ns);
            }
        }
        let conn = &mut self.conns[i];
        conn.received.push(message.seq, message.client_message_id);
        self.start_ack_timer(i);
        bump(&self.shared.counters.delivered);
    }

    fn on_sync_page(&mut self, i: usize, messages: Vec<Message>) {
        let now = now_ns();
        let conn = &mut self.conns[i];
        let Plan::Sync {
            conversation_id,
            sender,
            ..
        } = conn.spec.plan
        else {
            return self.note(
                "unexpected frame",
                "sync_page for a connection that did not sync".into(),
            );
        };
        conn.last_progress_ns = now;
        let mut problems = Vec::new();
        let mut accepted = 0u64;
        if let Some(sync) = conn.sync.as_mut() {
            sync.pages += 1;
            sync.first_page_ns.get_or_insert(now);
        }
        for message in messages {
            if message.conversation_id != conversation_id {
                if let Some(sync) = conn.sync.as_mut() {
                    sync.other_messages += 1;
                }
                continue;
            }
            let (text_ok, stamped) = match &message.content {
                Content::Text { text } => (true, parse_stamp(text)),
                _ => (false, None),
            };
            if message.sender_id != sender
                || !text_ok
                || stamped.map(|s| s.client_message_id) != Some(message.client_message_id)
            {
                problems.push(format!(
                    "message {}/{} from user {} does not match what was sent",
                    message.conversation_id, message.seq, message.sender_id
                ));
                continue;
            }
            if let Some(sync) = conn.sync.as_mut() {
                if let Content::Text { text } = &message.content {
                    sync.payload_bytes += text.len() as u64;
                }
            }
            conn.received.push(message.seq, message.client_message_id);
            accepted += 1;
        }
        conn.conversation_id = Some(conversation_id);
        if accepted > 0 {
            self.start_ack_timer(i);
        }
        self.shared
            .counters
            .synced
            .fetch_add(accepted, Ordering::Relaxed);
        for problem in problems {
            self.note("corrupt message", problem);
        }
    }

    fn on_sync_end(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        if let Some(sync) = conn.sync.as_mut() {
            sync.end_ns = Some(now_ns());
        }
        conn.sync_request_id = 0;
        bump(&self.shared.counters.syncs_done);
        // Move the delivered cursor at once: the sync is the delivery.
        self.send_delivery_ack(i);
    }

    // ------------------------------------------------------------ timers

    fn send_delivery_ack(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        if !conn.ack_due || conn.state != State::Ready {
            return;
        }
        let (Some(conversation_id), seq) = (conn.conversation_id, conn.received.highest()) else {
            return;
        };
        conn.ack_due = false;
        if seq > 0 {
            self.queue(
                i,
                &Body::DeliveryAck(DeliveryAck {
                    conversation_id,
                    seq,
                }),
            );
        }
    }

    /// Marks a delivery ack due and, unless one already was, starts the
    /// connection's timer: the ack covers everything received until it fires.
    fn start_ack_timer(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        if !conn.ack_due {
            conn.ack_due = true;
            self.ack_timers
                .push_back((self.clock + self.settings.ack_interval, i));
        }
    }

    /// Cumulative delivery acks of the connections whose timers are due.
    fn send_due_delivery_acks(&mut self, now: Instant) {
        while let Some(&(due, i)) = self.ack_timers.front() {
            if due > now {
                break;
            }
            self.ack_timers.pop_front();
            self.send_delivery_ack(i);
            let conn = &self.conns[i];
            if conn.ack_due && conn.state != State::Closed {
                // Not sendable yet (mid-handshake or mid-sync): try again
                // an interval later.
                self.ack_timers
                    .push_back((now + self.settings.ack_interval, i));
            }
        }
    }

    /// Cumulative delivery acks of every connection with one due (the end
    /// of a run).
    fn send_delivery_acks(&mut self) {
        for i in 0..self.conns.len() {
            if self.conns[i].ack_due {
                self.send_delivery_ack(i);
            }
        }
    }

    /// Pings connections that have sent nothing for a heartbeat interval;
    /// fails those whose pings go unanswered.
    fn heartbeats(&mut self) {
        for i in 0..self.conns.len() {
            let conn = &self.conns[i];
            if conn.state != State::Ready {
                continue;
            }
            let Some(interval) = conn.heartbeat else {
                continue;
            };
            if conn.last_sent.elapsed() < interval {
                continue;
            }
            if conn.pings_unanswered >= 2 {
                self.fail(i, "heartbeat lost", "two pings went unanswered".into());
                continue;
            }
            self.pings_nonce += 1;
            let nonce = self.pings_nonce;
            if self.queue(i, &Body::Ping(Ping { nonce })).is_some() {
                let conn = &mut self.conns[i];
                conn.pings += 1;
                conn.pings_unanswered += 1;
                bump(&self.shared.counters.pings);
            }
        }
    }

    fn check_deadlines(&mut self) {
        let now = now_ns();
        let handshake_ns = self.settings.handshake_timeout.as_nanos() as u64;
        let stall_ns = self.settings.sync_stall_timeout.as_nanos() as u64;
        for i in 0..self.conns.len() {
            let conn = &self.conns[i];
            if conn.state.in_handshake() && now.saturating_sub(conn.started_ns) > handshake_ns {
                let detail = format!(
                    "no answer in {:?} (state {:?})",
                    self.settings.handshake_timeout, conn.state
                );
                self.fail(i, "handshake timeout", detail);
            } else if conn.state == State::Ready
                && conn.sync_request_id != 0
                && now.saturating_sub(conn.last_progress_ns) > stall_ns
            {
                let detail = format!("no sync page for {:?}", self.settings.sync_stall_timeout);
                self.fail(i, "sync stalled", detail);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_windows_record_and_merge() {
        let width = Duration::from_millis(10);
        let ms = 1_000_000u64;
        let mut a = Latencies::default();
        a.record_timeline(width, 0, 2 * ms);
        a.record_timeline(width, 9 * ms, 3 * ms);
        a.record_timeline(width, 25 * ms, 40 * ms);
        let mut b = Latencies::default();
        b.record_timeline(width, 12 * ms, 5 * ms);
        b.record_timeline(width, 58 * ms, 7 * ms);
        // Unequal lengths: the shorter one grows, nothing is dropped.
        a.merge(&b);
        let counts: Vec<u64> = a.deliver_timeline.iter().map(|h| h.len()).collect();
        assert_eq!(counts, [2, 1, 1, 0, 0, 1]);
        let max_ms: Vec<u64> = a.deliver_timeline.iter().map(|h| h.max() / 1000).collect();
        assert_eq!(max_ms, [3, 5, 40, 0, 0, 7]);
        // Past the last window allowed, samples count in it; a width too
        // large for nanoseconds in a u64 is one window, not a division by 0.
        let mut far = Latencies::default();
        far.record_timeline(width, u64::MAX, ms);
        assert_eq!(far.deliver_timeline.len(), TIMELINE_WINDOWS_MAX);
        let mut wide = Latencies::default();
        wide.record_timeline(Duration::from_secs(u64::MAX), 5 * ms, ms);
        assert_eq!(wide.deliver_timeline.len(), 1);
    }

    #[test]
    fn sends_fall_due_evenly_from_the_run_start() {
        // 1,000 a second: one a millisecond, the first a millisecond in.
        assert_eq!(due_at_ns(5_000, 0, 1_000.0), 1_005_000);
        assert_eq!(due_at_ns(5_000, 1, 1_000.0), 2_005_000);
        assert_eq!(due_at_ns(0, 999, 1_000.0), 1_000_000_000);
        // Fractional rates (a worker's share), rounded up to the
        // nanosecond: due exactly when `sends_due` first counts it.
        for rate in [333.333, 1_000.0, 37_500.5, 150_000.0] {
            for index in [0u64, 1, 7, 12_345, 2_250_000] {
                let origin = 1_000_000;
                let due = due_at_ns(origin, index, rate);
                assert!(
                    sends_due(due - origin, rate) > index,
                    "{rate} {index}: {due}"
                );
                assert!(
                    sends_due(due - origin - 1, rate) <= index,
                    "{rate} {index}: {due}"
                );
            }
        }
        assert_eq!(sends_due(1_500_000_000, 1_000.0), 1_500);
        assert_eq!(sends_due(u64::MAX, 1e12), u64::MAX);
        assert_eq!(sends_due(5, f64::NAN), 0);
        // No schedule, or one past u64's end, does not wrap.
        assert_eq!(due_at_ns(7, 3, 0.0), 7);
        assert_eq!(due_at_ns(u64::MAX - 1, u64::MAX, 1e-9), u64::MAX);
    }
}
