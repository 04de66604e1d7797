//! Tests of the engine and the chat checks against a scripted fake server
//! (blocking, one thread per connection, built from the same codec), so the
//! load path is exercised without gustd and RocksDB, and so that a server
//! that loses or duplicates messages is shown to fail the run.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::engine::{ConnSpec, Engine, Latencies, Phase, Plan, Settings};
use super::report::Report;
use super::scenarios::check_pairs;
use crate::protocol::*;

/// What the fake server does wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    /// Every 7th deliver is sent twice.
    DuplicateDeliver,
    /// Every 7th deliver is not sent.
    DropDeliver,
    /// Every send is answered `SLOW_ACK` late.
    SlowAck,
}

/// How late `Fault::SlowAck` answers.
const SLOW_ACK: Duration = Duration::from_millis(5);

struct FakeState {
    fault: Fault,
    /// Write halves by user id.
    writers: Mutex<HashMap<UserId, Arc<Mutex<TcpStream>>>>,
    /// The one conversation's last seq (the test has one pair).
    last_seq: Mutex<Seq>,
    delivers: AtomicU64,
    /// Every delivery ack: (user, seq).
    delivery_acks: Mutex<Vec<(UserId, Seq)>>,
    /// The last seq delivered to each user.
    delivered_to: Mutex<HashMap<UserId, Seq>>,
}

fn frame(request_id: u32, body: &Body) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame(&mut out, 1, request_id, body, &mut NoCipher, 1 << 20).unwrap();
    out.to_vec()
}

fn token_user(token: &[u8]) -> UserId {
    u64::from(token[0])
}

fn serve(fault: Fault) -> (std::net::SocketAddr, Arc<FakeState>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(FakeState {
        fault,
        writers: Mutex::new(HashMap::new()),
        last_seq: Mutex::new(0),
        delivers: AtomicU64::new(0),
        delivery_acks: Mutex::new(Vec::new()),
        delivered_to: Mutex::new(HashMap::new()),
    });
    let served = state.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let state = state.clone();
            std::thread::spawn(move || connection(stream, state));
        }
    });
    (addr, served)
}

fn connection(mut stream: TcpStream, state: Arc<FakeState>) {
    let writer = Arc::new(Mutex::new(stream.try_clone().unwrap()));
    let mut decoder = FrameDecoder::new(1 << 20);
    let mut buf = BytesMut::new();
    let mut user = 0;
    let mut chunk = [0u8; 4096];
    loop {
        let frame_in = match decoder.decode(&mut buf) {
            Ok(Some(f)) => f,
            Ok(None) => match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    continue;
                }
            },
            Err(_) => return,
        };
        let rid = frame_in.header.request_id;
        let command = Command::from_u16(frame_in.header.command).unwrap();
        let body = Body::decode(command, frame_in.payload()).unwrap();
        let reply = |body: Body| {
            let _ = writer.lock().unwrap().write_all(&frame(rid, &body));
        };
        match body {
            Body::Hello(_) => reply(Body::HelloAck(HelloAck {
                version: 1,
                server_version_min: 1,
                server_version_max: 1,
                cipher: 0,
                server_nonce: vec![0; 16],
                heartbeat_interval_ms: 60_000,
                payload_len_max: 1 << 20,
                server: "fake".into(),
            })),
            Body::Resume(r) => {
                user = token_user(&r.session_token);
                state.writers.lock().unwrap().insert(user, writer.clone());
                reply(Body::LoggedIn(LoggedIn {
                    user_id: user,
                    username: format!("u{user}"),
                    device_id: r.device_id,
                    session_token: r.session_token,
                    server_time_ms: 0,
                }));
            }
            Body::Send(send) => {
                let Target::User(peer) = send.to else {
                    panic!("{:?}", send.to)
                };
                if state.fault == Fault::SlowAck {
                    std::thread::sleep(SLOW_ACK);
                }
                // One lock over seq assignment and both writes keeps the
                // ack and deliver streams in seq order, as gustd does.
                let mut last_seq = state.last_seq.lock().unwrap();
                *last_seq += 1;
                let seq = *last_seq;
                reply(Body::SendAck(SendAck {
                    client_message_id: send.client_message_id,
                    message_id: seq,
                    conversation_id: 7,
                    seq,
                    server_time_ms: 0,
                }));
                let deliver = frame(
                    0,
                    &Body::Deliver(Deliver {
                        message: Message {
                            conversation_id: 7,
                            seq,
                            message_id: seq,
                            sender_id: user,
                            client_message_id: send.client_message_id,
                            server_time_ms: 0,
                            content: send.content,
                            extras: send.extras,
                        },
                    }),
                );
                let n = state.delivers.fetch_add(1, Ordering::Relaxed) + 1;
                let copies = match state.fault {
                    Fault::DuplicateDeliver if n % 7 == 0 => 2,
                    Fault::DropDeliver if n % 7 == 0 => 0,
                    _ => 1,
                };
                if let Some(peer_writer) = state.writers.lock().unwrap().get(&peer) {
                    let mut w = peer_writer.lock().unwrap();
                    for _ in 0..copies {
                        let _ = w.write_all(&deliver);
                    }
                    if copies > 0 {
                        state.delivered_to.lock().unwrap().insert(peer, seq);
                    }
                }
                drop(last_seq);
            }
            Body::Ping(p) => reply(Body::Pong(Pong {
                nonce: p.nonce,
                server_time_ms: 0,
            })),
            Body::DeliveryAck(ack) => {
                assert_eq!(ack.conversation_id, 7);
                state.delivery_acks.lock().unwrap().push((user, ack.seq));
            }
            other => panic!("fake server got {other:?}"),
        }
    }
}

/// The receivers' delivery-ack timer in `chat_against`.
const ACK_INTERVAL: Duration = Duration::from_millis(20);
/// How long `chat_against` sends.
const RUN_TIME: Duration = Duration::from_millis(300);
/// The windows of `chat_against`'s delivery timeline.
const TIMELINE_WIDTH: Duration = Duration::from_millis(50);

/// What `chat_against` saw.
struct ChatRun {
    report: Report,
    /// What the fake server received.
    state: Arc<FakeState>,
    /// From the start of sending to the engine's stop.
    elapsed: Duration,
    /// The run's latency histograms.
    latencies: Latencies,
    /// Sends written, and those the schedule had due but never written.
    sent: u64,
    rate_unsent: u64,
}

/// The scheduling policy of each of this process's engine workers (threads
/// named `bench-N`), read from the kernel by thread id.
fn worker_policies() -> Vec<libc::c_int> {
    crate::threads::named_here(|comm| comm.starts_with("bench-").then_some(()))
        .into_iter()
        // An error: the thread ended since the directory was read.
        .filter_map(|(tid, ())| crate::threads::policy_of(tid).ok())
        .collect()
}

/// One pair (users 1 and 2) chatting for a moment, as fast as a window of 4
/// allows.
fn chat_against(fault: Fault) -> ChatRun {
    chat_shaped(fault, 4, 0)
}

/// One pair chatting for a moment with `window` sends in flight each, at
/// `rate_per_s` between them (0: as fast as the window allows).
fn chat_shaped(fault: Fault, window: usize, rate_per_s: u64) -> ChatRun {
    let (target, state) = serve(fault);
    let specs = [1u64, 2]
        .iter()
        .enumerate()
        .map(|(i, &user)| ConnSpec {
            user_index: i,
            user_id: user,
            token: vec![user as u8; 32],
            device_id: "d".into(),
            plan: Plan::Chat { peer: 3 - user },
        })
        .collect();
    let settings = Settings {
        target,
        // Exercises source binding too: every 127/8 address is local.
        sources: vec!["127.0.0.2".parse().unwrap()],
        threads: 2,
        connect_rate_per_s: 0,
        connect_inflight_max: 10,
        handshake_timeout: Duration::from_secs(5),
        window,
        rate_per_s,
        size_bytes: 64,
        ack_interval: ACK_INTERVAL,
        sync_stall_timeout: Duration::from_secs(5),
        psk: None,
        agent: "test".into(),
        timeline: Some(TIMELINE_WIDTH),
        batch_scheduling: true,
    };
    let engine = Engine::start(settings, specs).unwrap();
    while engine.snapshot().authenticated < 2 {
        std::thread::sleep(Duration::from_millis(5));
    }
    // Other tests' engines may be running in this process too, every one
    // with its workers under SCHED_BATCH, but a worker just spawned sets its
    // policy a moment after its name: look again until all agree (this
    // engine's own workers would never).
    let all_batch = |policies: &[libc::c_int]| {
        policies.len() >= 2 && policies.iter().all(|p| *p == libc::SCHED_BATCH)
    };
    let mut policies = worker_policies();
    for _ in 0..100 {
        if all_batch(&policies) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        policies = worker_policies();
    }
    assert!(
        all_batch(&policies),
        "the workers run SCHED_BATCH: {policies:?}"
    );
    // Idle a moment between login and the run, so that a timeline counted
    // from anything but the run's start shows empty windows first.
    std::thread::sleep(4 * TIMELINE_WIDTH);
    let started = Instant::now();
    engine.set_phase(Phase::Run);
    std::thread::sleep(RUN_TIME);
    engine.set_phase(Phase::Drain);
    std::thread::sleep(Duration::from_millis(200));
    let result = engine.stop();
    let elapsed = started.elapsed();
    assert_eq!(result.errors.total, 0, "{:?}", result.errors.samples);
    assert!(result.results.iter().all(|r| r.open_at_end && r.sent > 10));
    assert!(result.latencies.ack_us.len() > 10);
    let mut report = Report::new("chat", "test".into(), target.to_string(), None);
    check_pairs(&mut report, &result);
    ChatRun {
        report,
        state,
        elapsed,
        latencies: result.latencies,
        sent: result.results.iter().map(|r| r.sent).sum(),
        rate_unsent: result.rate_unsent,
    }
}

#[test]
fn a_correct_server_passes() {
    let report = chat_against(Fault::None).report;
    assert!(report.ok(), "{}", report.table());
}

#[test]
fn receivers_ack_deliveries_while_the_run_goes_on() {
    let ChatRun {
        report,
        state,
        elapsed,
        ..
    } = chat_against(Fault::None);
    assert!(report.ok(), "{}", report.table());
    let acks = state.delivery_acks.lock().unwrap().clone();
    let delivered_to = state.delivered_to.lock().unwrap().clone();
    for user in [1u64, 2] {
        let seqs: Vec<Seq> = acks
            .iter()
            .filter(|(u, _)| *u == user)
            .map(|&(_, seq)| seq)
            .collect();
        // Acked while the run went on, not only at its end, and at most
        // once per timer interval (plus the final ack when the engine
        // stops): a timer starts only after the previous ack.
        let most = (elapsed.as_millis() / ACK_INTERVAL.as_millis()) as usize + 2;
        assert!(
            (3..=most).contains(&seqs.len()),
            "user {user}: {} acks, expected 3..={most}",
            seqs.len()
        );
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "user {user}: acks not increasing: {seqs:?}"
        );
        // The last ack covers everything the user was sent.
        assert_eq!(seqs.last(), delivered_to.get(&user), "user {user}");
    }
}

#[test]
fn the_timeline_places_every_delivery_in_its_window() {
    let run = chat_against(Fault::None);
    assert!(run.report.ok(), "{}", run.report.table());
    let delivered = run.latencies.deliver_us.len();
    assert!(delivered > 10);
    // Every delivery the run's histogram counts is in one window, with its
    // latency: the windows added up are the run's histogram.
    let timeline = &run.latencies.deliver_timeline;
    let counts: Vec<u64> = timeline.iter().map(|h| h.len()).collect();
    assert_eq!(counts.iter().sum::<u64>(), delivered);
    let slowest = timeline.iter().map(|h| h.max()).max().unwrap_or(0);
    let (a, b) = (slowest as f64, run.latencies.deliver_us.max() as f64);
    assert!((a - b).abs() <= b * 0.01 + 1.0, "{slowest} against {b}");
    // Windows count from the run's start: the pair sends from its first
    // moment, so deliveries begin in the first window or the next (a late
    // thread on a busy machine), not after the idle time before the run.
    let first = counts.iter().position(|&n| n > 0);
    assert!(first.is_some_and(|i| i <= 1), "{counts:?}");
    // And they span the run, ending with the last delivery, which came
    // before the engine stopped.
    let width = TIMELINE_WIDTH.as_millis();
    let sending = (RUN_TIME.as_millis() / width) as usize;
    let most = (run.elapsed.as_millis() / width + 1) as usize;
    assert!(
        (sending + 1..=most).contains(&counts.len()),
        "{} windows, expected {}..={most}: {counts:?}",
        counts.len(),
        sending + 1
    );
}

#[test]
fn without_a_schedule_nothing_is_counted_from_one() {
    let run = chat_against(Fault::None);
    assert!(run.report.ok(), "{}", run.report.table());
    assert!(run.latencies.deliver_us.len() > 10);
    assert_eq!(run.latencies.deliver_from_due_us.len(), 0);
    assert_eq!(run.latencies.send_slip_us.len(), 0);
}

#[test]
fn a_generator_behind_its_schedule_counts_its_lateness() {
    // One send in flight per sender, each answered 5 ms late: at most ~400
    // a second get out against the 2,000 the schedule asks for, so sends
    // fall further behind it the longer the run goes. Counted from the
    // write, a send takes ~5 ms; counted from when it was due, it also
    // waited its turn, tens of milliseconds by the middle of the run.
    let run = chat_shaped(Fault::SlowAck, 1, 2_000);
    assert!(run.report.ok(), "{}", run.report.table());
    let l = &run.latencies;
    let delivered = l.deliver_us.len();
    assert!(delivered > 10);
    // Every delivery is counted both ways, every send's lateness once.
    assert_eq!(l.deliver_from_due_us.len(), delivered);
    assert_eq!(l.send_slip_us.len(), l.ack_us.len());
    let ms = 1_000;
    let (from_write, from_due) = (
        l.deliver_us.value_at_quantile(0.5),
        l.deliver_from_due_us.value_at_quantile(0.5),
    );
    assert!(from_write >= 5 * ms, "p50 from the write {from_write} µs");
    assert!(
        from_due >= from_write + 20 * ms,
        "p50 from due {from_due} µs, from the write {from_write} µs"
    );
    assert!(l.send_slip_us.value_at_quantile(0.5) >= 20 * ms);
    // Nothing was due before the run began or delivered after it ended.
    let run_us = run.elapsed.as_micros() as u64;
    assert!(
        l.deliver_from_due_us.max() <= run_us + ms,
        "{run_us} µs run"
    );
    assert!(l.send_slip_us.max() <= run_us + ms, "{run_us} µs run");
    // What the schedule still owed at the end is counted, not dropped:
    // ~600 due in the run's 300 ms, ~120 of them written.
    assert!(
        run.rate_unsent >= 200,
        "{} unsent, {} sent",
        run.rate_unsent,
        run.sent
    );
}

#[test]
fn a_generator_on_schedule_sends_what_is_due_when_it_is_due() {
    // 400 a second that the server keeps up with: ~120 sends in the run's
    // 300 ms, each written within a loop turn or two of its due time.
    let run = chat_shaped(Fault::None, 4, 400);
    assert!(run.report.ok(), "{}", run.report.table());
    let expected = 400 * RUN_TIME.as_millis() as u64 / 1_000;
    assert!(
        (expected * 7 / 10..=expected * 13 / 10).contains(&run.sent),
        "{} sent, ~{expected} due",
        run.sent
    );
    assert!(
        run.rate_unsent <= expected / 20,
        "{} unsent",
        run.rate_unsent
    );
    let l = &run.latencies;
    assert_eq!(l.send_slip_us.len(), run.sent);
    assert_eq!(l.deliver_from_due_us.len(), l.deliver_us.len());
    let slip_p50 = l.send_slip_us.value_at_quantile(0.5);
    assert!(slip_p50 < 20_000, "lateness p50 {slip_p50} µs");
}

#[test]
fn duplicated_deliveries_fail_the_run() {
    let report = chat_against(Fault::DuplicateDeliver).report;
    assert!(!report.ok());
    assert!(
        report.failures.iter().any(|f| f.contains("duplicate seqs")),
        "{}",
        report.table()
    );
}

#[test]
fn lost_deliveries_fail_the_run() {
    let report = chat_against(Fault::DropDeliver).report;
    assert!(!report.ok());
    assert!(
        report.failures.iter().any(|f| f.contains("never arrived")),
        "{}",
        report.table()
    );
}
