//! Fan-out: the storage writer persisting one message and routing it to N
//! online devices (one shared frame, N inbox events). Measures the writer
//! alone, with a sink that counts events instead of shards.
//!
//! `cargo bench --bench fanout`

use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gust::chat::writer::{Writer, WriterConfig};
use gust::chat::{ConnRef, Reply, ShardEvent, ShardSink, WriterRequest};
use gust::protocol::*;
use gust::store::{Durability, Store};

/// Counts the events the writer posts.
#[derive(Default)]
struct CountingSink {
    events: Mutex<usize>,
    changed: Condvar,
}

impl ShardSink for CountingSink {
    fn post(&self, events: Vec<ShardEvent>) {
        if let Ok(mut count) = self.events.lock() {
            *count += events.len();
            self.changed.notify_all();
        }
    }
}

impl CountingSink {
    fn wait_for(&self, total: usize) {
        let mut count = self.events.lock().expect("sink");
        while *count < total {
            let (next, timeout) = self
                .changed
                .wait_timeout(count, Duration::from_secs(10))
                .expect("sink");
            count = next;
            assert!(!timeout.timed_out(), "the writer stopped answering");
        }
    }

    fn count(&self) -> usize {
        *self.events.lock().expect("sink")
    }
}

fn reply(token: u64) -> Reply {
    Reply {
        conn: ConnRef { shard: 0, token },
        request_id: 1,
    }
}

/// A running writer over a temporary store.
struct Bench {
    _dir: tempfile::TempDir,
    requests: Sender<WriterRequest>,
    writer: Option<std::thread::JoinHandle<()>>,
    sink: Arc<CountingSink>,
}

impl Drop for Bench {
    /// Stops the writer and closes RocksDB before the directory goes: a
    /// process exiting with RocksDB still open aborts in its destructors.
    fn drop(&mut self) {
        let _ = self.requests.send(WriterRequest::Shutdown);
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn setup(devices: usize) -> (Bench, UserId) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), Durability::Buffered).expect("open");
    let sink = Arc::new(CountingSink::default());
    let writer = Writer::new(store, sink.clone(), WriterConfig::default()).expect("writer");
    let (tx, rx) = mpsc::channel();
    let writer = std::thread::spawn(move || writer.run(rx));
    for (i, name) in ["alice", "bob"].iter().enumerate() {
        tx.send(WriterRequest::Register {
            reply: reply(i as u64),
            username: name.to_string(),
            password_hash: "not used".into(),
        })
        .expect("writer");
    }
    sink.wait_for(2);
    // alice is user 1 on connection 1; bob (user 2) on `devices` connections.
    let mut expected = 2;
    tx.send(WriterRequest::OpenSession {
        reply: reply(1),
        user_id: 1,
        device_id: "sender".into(),
        token: [1u8; 32],
    })
    .expect("writer");
    expected += 1;
    for d in 0..devices {
        tx.send(WriterRequest::OpenSession {
            reply: reply(1000 + d as u64),
            user_id: 2,
            device_id: format!("device-{d}"),
            token: [(d % 251) as u8; 32],
        })
        .expect("writer");
        expected += 1;
    }
    sink.wait_for(expected);
    let bench = Bench {
        _dir: dir,
        requests: tx,
        writer: Some(writer),
        sink,
    };
    (bench, 2)
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fan-out");
    for devices in [1usize, 100, 1000] {
        let (bench, bob) = setup(devices);
        let (tx, sink) = (bench.requests.clone(), bench.sink.clone());
        let mut next_id = 0u64;
        group.throughput(Throughput::Elements(devices as u64));
        group.bench_function(format!("one message to {devices} devices"), |b| {
            b.iter_custom(|iterations| {
                let start = Instant::now();
                for _ in 0..iterations {
                    next_id += 1;
                    let before = sink.count();
                    tx.send(WriterRequest::Send {
                        reply: reply(1),
                        user_id: 1,
                        send: Box::new(Send {
                            client_message_id: next_id,
                            to: Target::User(bob),
                            content: Content::Text { text: "fan".into() },
                            extras: Default::default(),
                        }),
                    })
                    .expect("writer");
                    // The ack plus one deliver per device.
                    sink.wait_for(before + 1 + devices);
                }
                start.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
