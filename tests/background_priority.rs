//! RocksDB's flushes and compactions on idle CPU time (`--background-priority`),
//! seen from outside: the real gustd's threads, as the kernel schedules them.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::TestServer;
use gust::store::background;
use gust::threads;

/// Scheduling policy of every RocksDB thread of `pid`: (name, policy).
fn rocksdb_threads(pid: i32) -> Vec<(String, i32)> {
    let tasks = format!("/proc/{pid}/task");
    threads::named(Path::new(&tasks), |comm| {
        comm.starts_with("rocksdb:").then(|| comm.to_string())
    })
    .into_iter()
    .filter_map(|(tid, name)| Some((name, threads::policy_of(tid).ok()?)))
    .collect()
}

/// Whether gustd, started by this process with its privileges, may raise a
/// priority again; with CAP_SYS_NICE (root in CI) it must.
fn gustd_may_raise_priorities() -> bool {
    let allowed = background::can_compete_again();
    if background::has_cap_sys_nice() {
        assert!(allowed, "CAP_SYS_NICE may raise priorities");
    }
    allowed
}

#[test]
fn flushes_and_compactions_wait_for_idle_time_by_default() {
    let server = TestServer::start();
    if !gustd_may_raise_priorities() {
        // Unprivileged, gustd must not lower what it could not raise again.
        assert!(server.log_contains("stay at normal CPU priority"));
        let threads = rocksdb_threads(server.pid());
        assert!(threads
            .iter()
            .all(|(_, policy)| *policy == libc::SCHED_OTHER));
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let threads = rocksdb_threads(server.pid());
        let flush = threads.iter().any(|(name, _)| name == "rocksdb:high");
        let compaction = threads.iter().any(|(name, _)| name == "rocksdb:low");
        if flush
            && compaction
            && threads
                .iter()
                .all(|(_, policy)| *policy == libc::SCHED_IDLE)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "RocksDB's threads are not all idle: {threads:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(server.log_contains("run on idle CPU time until they fall behind"));
}

#[test]
fn normal_background_priority_leaves_rocksdb_threads_alone() {
    let server = TestServer::start_with(&["--background-priority", "normal"]);
    // Give a governor, were one running, time to act.
    std::thread::sleep(Duration::from_millis(300));
    let threads = rocksdb_threads(server.pid());
    assert!(
        threads.iter().any(|(name, _)| name == "rocksdb:high"),
        "{threads:?}"
    );
    assert!(
        threads
            .iter()
            .all(|(_, policy)| *policy == libc::SCHED_OTHER),
        "{threads:?}"
    );
    assert!(!server.log_contains("run on idle CPU time"));
}
