//! RocksDB's flushes and compactions on idle CPU time (`--background-priority`),
//! seen from outside: the real gustd's threads, as the kernel schedules them.

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use gust::store::background;

/// Scheduling policy of every RocksDB thread of `pid`: (name, policy), the
/// policy from field 41 of `/proc/PID/task/TID/stat`.
fn rocksdb_threads(pid: i32) -> Vec<(String, i32)> {
    let mut threads = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let path = entry.expect("task").path();
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("stat")),
        ) else {
            continue;
        };
        let comm = comm.trim().to_string();
        if !comm.starts_with("rocksdb:") {
            continue;
        }
        // Fields after the parenthesised name start at field 3.
        let after_name = stat.rsplit_once(')').expect("stat has a name").1;
        let policy = after_name
            .split_whitespace()
            .nth(41 - 3)
            .and_then(|field| field.parse().ok())
            .expect("policy field");
        threads.push((comm, policy));
    }
    threads
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
