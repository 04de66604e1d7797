//! RocksDB's flushes and compactions at idle CPU priority while they have
//! slack, at normal priority once they fall behind.
//!
//! On a box whose cores the shards, the storage writer and the committer
//! keep busy, a memtable flush (half a core for ~0.4 s every few seconds at
//! 135,000 msg/s) or a compaction takes a core from the pipeline that every
//! acknowledgement waits on, and the p99 of those seconds doubles. Under
//! SCHED_IDLE they run only on CPU time nothing else wants; at 135,000
//! msg/s that cut the p99 by about a quarter (BENCHMARKS.md, "Flushes and
//! compactions on idle time"). But a box with no idle time at all would
//! starve them: the memtables fill and RocksDB stalls every write for a
//! second. So a governor thread watches the backlog and puts a pool back at
//! normal priority while its work is close to holding up writes, and idle
//! again once it is not.
//!
//! Going back from SCHED_IDLE needs CAP_SYS_NICE or an RLIMIT_NICE that
//! allows nice 0 (`LimitNICE=+0` in the systemd unit). Without either the
//! governor never lowers a thread it could not raise again.
//!
//! The decision ([`standing`]) is a pure function of a [`Backlog`] so that it
//! is tested without RocksDB; the thread lookup and `sched_setscheduler` calls
//! are the only system-facing part.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::limits;

/// `--background-priority`: whether the governor runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackgroundPriority {
    /// Idle while there is slack, normal once behind (the default).
    Adaptive,
    /// RocksDB's threads stay at normal priority, as RocksDB starts them.
    Normal,
}

/// The thread pools RocksDB runs its background work in, by the names it
/// gives their threads (`/proc/self/task/*/comm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    /// `rocksdb:high`: memtable flushes.
    Flush,
    /// `rocksdb:low` and `rocksdb:bottom`: compactions.
    Compaction,
}

impl Pool {
    /// The pool a thread of this name belongs to, if it is RocksDB's.
    pub fn of_thread(comm: &str) -> Option<Pool> {
        match comm.trim_end() {
            "rocksdb:high" => Some(Pool::Flush),
            "rocksdb:low" | "rocksdb:bottom" => Some(Pool::Compaction),
            _ => None,
        }
    }
}

/// How a pool's threads are scheduled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// SCHED_IDLE: only CPU time nothing else wants.
    Yield,
    /// SCHED_OTHER at nice 0, like every other thread of gustd.
    Compete,
}

/// What RocksDB has queued, the worst family counted for each figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backlog {
    /// Memtables a family may still seal before the one it fills is its
    /// last (RocksDB stops writes when that one is full too), in the family
    /// with fewest: its memtable limit, less one for the active memtable,
    /// less those already waiting for a flush.
    pub spare_memtables: u64,
    /// Sorted runs in level 0, in the family with most: each one is another
    /// filter probe for every dedupe lookup, and at RocksDB's slowdown
    /// trigger writes are delayed.
    pub level0_files: u64,
    /// RocksDB's estimate of the bytes compactions owe, over all families.
    pub pending_compaction_bytes: u64,
}

impl Default for Backlog {
    /// Nothing queued, in families of [`limits::MEMTABLES_BUSY_FAMILY`].
    fn default() -> Backlog {
        Backlog {
            spare_memtables: limits::MEMTABLES_BUSY_FAMILY - 1,
            level0_files: 0,
            pending_compaction_bytes: 0,
        }
    }
}

/// Where each pool should stand for this backlog.
///
/// Flushes compete once a family has no spare memtable: the one it is
/// filling is the last before RocksDB stops writes. The busy families
/// (messages, dedupe) hold [`limits::MEMTABLES_BUSY_FAMILY`] (three), so one
/// memtable waits for idle time and a second makes the flush compete; a
/// flush at normal priority (~0.4 s of a core for 64 MiB) finishes well
/// within the time the active one takes to fill (~1.1 s at 280,000 msg/s,
/// the most measured here). The others hold two and compete as soon as one
/// waits.
/// Compactions compete from [`limits::LEVEL0_FILES_COMPETE`] files in
/// level 0 (RocksDB starts compacting at 4 and slows writes at 20) or
/// [`limits::PENDING_COMPACTION_BYTES_COMPETE`] owed.
pub fn standing(backlog: &Backlog, pool: Pool) -> Standing {
    let behind = match pool {
        Pool::Flush => backlog.spare_memtables == 0,
        Pool::Compaction => {
            backlog.level0_files >= limits::LEVEL0_FILES_COMPETE
                || backlog.pending_compaction_bytes >= limits::PENDING_COMPACTION_BYTES_COMPETE
        }
    };
    if behind {
        Standing::Compete
    } else {
        Standing::Yield
    }
}

/// Schedules thread `tid` (of any process we may change) as `standing` says.
pub fn set_standing(tid: i32, standing: Standing) -> io::Result<()> {
    let policy = match standing {
        Standing::Yield => libc::SCHED_IDLE,
        Standing::Compete => libc::SCHED_OTHER,
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a live sched_param read for the duration of the
    // call; a tid that has exited only makes the call fail with ESRCH.
    let rc = unsafe { libc::sched_setscheduler(tid, policy, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The scheduling policy of thread `tid` (`libc::SCHED_*`).
pub fn policy_of(tid: i32) -> io::Result<i32> {
    // SAFETY: a plain query; a tid that has exited makes it fail with ESRCH.
    let policy = unsafe { libc::sched_getscheduler(tid) };
    if policy < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(policy)
    }
}

/// RocksDB's background threads in this process: (thread id, pool).
pub fn background_threads() -> Vec<(i32, Pool)> {
    threads_of(Path::new("/proc/self/task"))
}

/// The threads under a `/proc/PID/task` directory that belong to a pool.
fn threads_of(tasks: &Path) -> Vec<(i32, Pool)> {
    let Ok(entries) = std::fs::read_dir(tasks) else {
        return Vec::new();
    };
    let mut threads = Vec::new();
    for entry in entries.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        if let Some(pool) = Pool::of_thread(&comm) {
            threads.push((tid, pool));
        }
    }
    threads
}

/// Whether this process may put a thread back at normal priority after
/// making it idle: tried on a thread of its own, started for the purpose.
pub fn can_compete_again() -> bool {
    let probe = std::thread::Builder::new()
        .name("gust-prio-probe".into())
        .spawn(|| {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            set_standing(tid, Standing::Yield).is_ok()
                && set_standing(tid, Standing::Compete).is_ok()
        });
    match probe {
        Ok(handle) => handle.join().unwrap_or(false),
        Err(_) => false,
    }
}

/// Runs the governor until `stop` is set: every
/// [`limits::BACKGROUND_GOVERNOR_TICK`] it reads the backlog and moves each
/// pool's threads where [`standing`] says. Threads are looked up again every
/// [`limits::BACKGROUND_THREADS_RESCAN`] (RocksDB starts them lazily).
pub fn spawn_governor(
    backlog: impl Fn() -> Backlog + Send + 'static,
    stop: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("gust-background".into())
        .spawn(move || govern(backlog, &stop))
}

fn govern(backlog: impl Fn() -> Backlog, stop: &AtomicBool) {
    let mut threads: Vec<(i32, Pool, Option<Standing>)> = Vec::new();
    let mut rescanned: Option<Instant> = None;
    let mut changes = [0u64; 2];
    let mut reported = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if rescanned.is_none_or(|at| at.elapsed() >= limits::BACKGROUND_THREADS_RESCAN) {
            rescanned = Some(Instant::now());
            let found = background_threads();
            threads.retain(|(tid, _, _)| found.iter().any(|(t, _)| t == tid));
            for (tid, pool) in found {
                if !threads.iter().any(|(t, _, _)| *t == tid) {
                    threads.push((tid, pool, None));
                }
            }
        }
        let now = backlog();
        for (tid, pool, current) in threads.iter_mut() {
            let wanted = standing(&now, *pool);
            if *current == Some(wanted) {
                continue;
            }
            match set_standing(*tid, wanted) {
                Ok(()) => {
                    if current.is_some() {
                        changes[(*pool == Pool::Compaction) as usize] += 1;
                    }
                    *current = Some(wanted);
                }
                // Gone, or not ours to change: looked up again at the rescan.
                Err(e) => log::debug!("background thread {tid}: {e}"),
            }
        }
        if reported.elapsed() >= Duration::from_secs(5) && changes != [0, 0] {
            log::debug!(
                "background: flush threads moved {} times, compaction threads {} times in 5 s",
                changes[0],
                changes[1]
            );
            changes = [0, 0];
            reported = Instant::now();
        }
        std::thread::sleep(limits::BACKGROUND_GOVERNOR_TICK);
    }
    // Leave them as RocksDB made them, for its own shutdown work.
    for (tid, _, _) in threads {
        let _ = set_standing(tid, Standing::Compete);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flushes_yield_until_the_last_memtable_fills() {
        let mut backlog = Backlog::default();
        assert_eq!(backlog.spare_memtables, 2);
        assert_eq!(standing(&backlog, Pool::Flush), Standing::Yield);
        backlog.spare_memtables = 1;
        assert_eq!(standing(&backlog, Pool::Flush), Standing::Yield);
        backlog.spare_memtables = 0;
        assert_eq!(standing(&backlog, Pool::Flush), Standing::Compete);
        // Level 0 is the compactions' business, not the flushes'.
        let backlog = Backlog {
            level0_files: 100,
            ..Backlog::default()
        };
        assert_eq!(standing(&backlog, Pool::Flush), Standing::Yield);
    }

    #[test]
    fn compactions_compete_on_level0_files_or_debt() {
        let mut backlog = Backlog {
            level0_files: limits::LEVEL0_FILES_COMPETE - 1,
            pending_compaction_bytes: limits::PENDING_COMPACTION_BYTES_COMPETE - 1,
            spare_memtables: 0,
        };
        assert_eq!(standing(&backlog, Pool::Compaction), Standing::Yield);
        backlog.level0_files += 1;
        assert_eq!(standing(&backlog, Pool::Compaction), Standing::Compete);
        backlog.level0_files = 0;
        backlog.pending_compaction_bytes += 1;
        assert_eq!(standing(&backlog, Pool::Compaction), Standing::Compete);
    }

    #[test]
    fn rocksdb_thread_names_map_to_pools() {
        assert_eq!(Pool::of_thread("rocksdb:high\n"), Some(Pool::Flush));
        assert_eq!(Pool::of_thread("rocksdb:low"), Some(Pool::Compaction));
        assert_eq!(Pool::of_thread("rocksdb:bottom\n"), Some(Pool::Compaction));
        assert_eq!(Pool::of_thread("gust-committer"), None);
        assert_eq!(Pool::of_thread("rocksdb:highx"), None);
    }

    /// Whether this test may raise a priority; false (the test skips) only
    /// when not root and not allowed by RLIMIT_NICE. CI runs as root, where
    /// it must be allowed.
    fn may_raise_priorities() -> bool {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !root && !can_compete_again() {
            eprintln!("skipped: no CAP_SYS_NICE nor RLIMIT_NICE for nice 0 here");
            return false;
        }
        assert!(can_compete_again(), "root may raise priorities");
        true
    }

    /// A thread that waits until the returned sender is dropped or sent to:
    /// (its tid, that sender, its handle).
    fn parked_thread(
        name: &str,
    ) -> (
        i32,
        std::sync::mpsc::Sender<()>,
        std::thread::JoinHandle<()>,
    ) {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                // SAFETY: gettid has no preconditions.
                tid_tx.send(unsafe { libc::gettid() }).unwrap();
                let _ = done_rx.recv();
            })
            .unwrap();
        (tid_rx.recv().unwrap(), done_tx, thread)
    }

    /// A thread moved to idle and back, as the governor does, with the
    /// kernel's view of its policy checked after each move.
    #[test]
    fn a_thread_yields_and_competes_again_when_allowed() {
        if !may_raise_priorities() {
            return;
        }
        let (tid, done, thread) = parked_thread("gust-test");
        assert_eq!(policy_of(tid).unwrap(), libc::SCHED_OTHER);
        set_standing(tid, Standing::Yield).unwrap();
        assert_eq!(policy_of(tid).unwrap(), libc::SCHED_IDLE);
        set_standing(tid, Standing::Compete).unwrap();
        assert_eq!(policy_of(tid).unwrap(), libc::SCHED_OTHER);
        done.send(()).unwrap();
        thread.join().unwrap();
    }

    /// Waits up to 5 s (the governor looks every 20 ms, and for threads
    /// every second) for thread `tid` to be under `policy`.
    fn wait_for_policy(tid: i32, policy: i32) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while policy_of(tid).expect("the thread is alive") != policy {
            assert!(
                Instant::now() < deadline,
                "thread {tid} never got policy {policy}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The governor over a stand-in for RocksDB's flush thread (found by its
    /// name, as RocksDB's are) and a backlog the test sets.
    #[test]
    fn the_governor_moves_a_pool_with_its_backlog() {
        if !may_raise_priorities() {
            return;
        }
        let (tid, done, flush_thread) = parked_thread("rocksdb:high");
        let backlog = Arc::new(std::sync::Mutex::new(Backlog::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let governor = {
            let backlog = backlog.clone();
            spawn_governor(move || *backlog.lock().unwrap(), stop.clone()).unwrap()
        };
        wait_for_policy(tid, libc::SCHED_IDLE);
        backlog.lock().unwrap().spare_memtables = 0;
        wait_for_policy(tid, libc::SCHED_OTHER);
        backlog.lock().unwrap().spare_memtables = 1;
        wait_for_policy(tid, libc::SCHED_IDLE);
        stop.store(true, Ordering::Relaxed);
        governor.join().unwrap();
        // Stopped, it leaves the threads as RocksDB made them.
        assert_eq!(policy_of(tid).unwrap(), libc::SCHED_OTHER);
        done.send(()).unwrap();
        flush_thread.join().unwrap();
    }

    #[test]
    fn threads_are_found_by_name() {
        let dir = tempfile::tempdir().unwrap();
        for (tid, comm) in [
            ("101", "rocksdb:high\n"),
            ("102", "rocksdb:low\n"),
            ("103", "gust-shard-0\n"),
            ("notatid", "rocksdb:low\n"),
        ] {
            std::fs::create_dir(dir.path().join(tid)).unwrap();
            std::fs::write(dir.path().join(tid).join("comm"), comm).unwrap();
        }
        let mut found = threads_of(dir.path());
        found.sort_by_key(|(tid, _)| *tid);
        assert_eq!(found, vec![(101, Pool::Flush), (102, Pool::Compaction)]);
    }
}
