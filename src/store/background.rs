//! RocksDB's flushes and compactions at idle CPU priority while they have
//! slack, at normal priority once they fall behind.
//!
//! On a box whose cores the shards, the storage writer and the committer
//! keep busy, a memtable flush (~0.4 s of CPU every few seconds at
//! 135,000 msg/s) or a compaction takes a core from the pipeline that every
//! acknowledgement waits on, and the p99 of those seconds doubles. Under
//! SCHED_IDLE they run only on CPU time nothing else wants: at 135,000–
//! 150,000 msg/s the p99 fell 10–25 % and window 8 rose 5–10 %
//! (BENCHMARKS.md, "Flushes and compactions on idle time"). But a box with
//! no idle time at all would starve them: the memtables fill and RocksDB
//! stalls every write for a second. So a governor thread watches the
//! backlog and puts a pool back at normal priority while its work is close
//! to holding up writes, and idle again once it is not; and a watchdog
//! raises them all when the write path stalls (a commit, or the storage
//! writer's dedupe lookup), in case one holds RocksDB's mutex while it
//! waits for idle time.
//!
//! Going back from SCHED_IDLE needs CAP_SYS_NICE or an RLIMIT_NICE that
//! allows nice 0 (`LimitNICE=+0` in the systemd unit). Without either the
//! governor never lowers a thread it could not raise again.
//!
//! The decision ([`standing`]) is a pure function of a [`Backlog`] so that it
//! is tested without RocksDB; the thread lookup and `sched_setscheduler` calls
//! are the only system-facing part.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::limits;
use crate::threads;

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
    /// RocksDB's estimate of the bytes compactions owe, in the family that
    /// owes most (RocksDB's own limits are per family).
    pub pending_compaction_bytes: u64,
    /// How long the oldest call on the write path in flight (the commit,
    /// or the storage writer's dedupe lookup) has been running. A background
    /// thread that holds RocksDB's mutex while it waits for idle time holds
    /// up every call that needs the mutex too; a call this slow is the sign.
    pub write_path_busy_for: Duration,
    /// Some figure could not be read: the governor then assumes the worst.
    pub unreadable: bool,
}

impl Default for Backlog {
    /// Nothing queued, in families of [`limits::MEMTABLES_BUSY_FAMILY`].
    fn default() -> Backlog {
        Backlog {
            spare_memtables: limits::MEMTABLES_BUSY_FAMILY - 1,
            level0_files: 0,
            pending_compaction_bytes: 0,
            write_path_busy_for: Duration::ZERO,
            unreadable: false,
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
/// within the time the active one takes to fill (~1.1 s at 300,000 msg/s,
/// the most measured here). The others hold two and compete as soon as one
/// waits.
///
/// Compactions compete from [`limits::LEVEL0_FILES_COMPETE`] files in a
/// family's level 0 (the messages and dedupe families start compacting at
/// [`limits::LEVEL0_FILES_COMPACT`] and slow writes at
/// [`limits::LEVEL0_FILES_SLOW_WRITES`]; the others at RocksDB's 4 and 20)
/// or [`limits::PENDING_COMPACTION_BYTES_COMPETE`] owed. (A flush installs
/// its result through the same queue and mutex as a compaction, so it can
/// wait behind an idle one; making compactions compete whenever flushes do
/// cost ~2 % of the window-8 rate (0.9–3.9 %), so that case is left to the
/// watchdog of [`spawn_governor`], which catches it once writes wait.)
///
/// Both compete while a call on the write path has run for
/// [`limits::WRITE_PATH_STALL_COMPETE`], and while the figures cannot be read.
pub fn standing(backlog: &Backlog, pool: Pool) -> Standing {
    let everything =
        backlog.unreadable || backlog.write_path_busy_for >= limits::WRITE_PATH_STALL_COMPETE;
    let behind = everything
        || match pool {
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
    threads::set_policy(
        tid,
        match standing {
            Standing::Yield => libc::SCHED_IDLE,
            Standing::Compete => libc::SCHED_OTHER,
        },
    )
}

/// RocksDB's background threads in this process: (thread id, pool).
pub fn background_threads() -> Vec<(i32, Pool)> {
    threads::named_here(Pool::of_thread)
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

/// Whether this process holds CAP_SYS_NICE (bit 23 of `CapEff` in
/// `/proc/self/status`), which always allows raising a priority again.
pub fn has_cap_sys_nice() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_NICE) != 0)
}

/// `linux/capability.h`'s number for CAP_SYS_NICE (libc does not export it).
const CAP_SYS_NICE: u32 = 23;

/// What the governor reads: RocksDB's backlog (which waits for RocksDB's
/// mutex), how long the oldest write-path call in flight has run (which
/// does not: [`crate::store::Store::write_path_busy_for`]), and the
/// threads to govern ([`background_threads`] in gustd).
pub struct Watched<B, C, T> {
    pub backlog: B,
    pub write_path_busy_for: C,
    pub threads: T,
}

/// Runs the governor until `stop` is set: every
/// [`limits::BACKGROUND_GOVERNOR_TICK`] it reads the backlog and moves each
/// pool's threads where [`standing`] says. Threads are looked up again every
/// [`limits::BACKGROUND_THREADS_RESCAN`].
///
/// Beside it a watchdog looks at the write path every
/// [`limits::WRITE_PATH_WATCH_TICK`], reading nothing that takes RocksDB's
/// mutex. A background thread that takes the mutex and is then left waiting
/// for idle time holds up the commit, the storage writer's lookups and the
/// governor's own reads (stalls of 125–390 ms were measured, each with an
/// idle compaction or flush starting); once a call on the write path has
/// run for [`limits::WRITE_PATH_STALL_COMPETE`] the watchdog puts every
/// background thread at normal priority, again at every look while the call
/// lasts, and the governor keeps them there for
/// [`limits::WRITE_PATH_STALL_HOLD`].
pub fn spawn_governor<B, C, T>(
    watched: Watched<B, C, T>,
    stop: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>>
where
    B: Fn() -> Backlog + Send + 'static,
    C: Fn() -> Duration + Send + Sync + 'static,
    T: Fn() -> Vec<(i32, Pool)> + Send + Sync + 'static,
{
    std::thread::Builder::new()
        .name("gust-background".into())
        .spawn(move || {
            let rescued = AtomicBool::new(false);
            std::thread::scope(|scope| {
                let watchdog = std::thread::Builder::new()
                    .name("gust-write-watch".into())
                    .spawn_scoped(scope, || {
                        watch_write_path(
                            &watched.write_path_busy_for,
                            &watched.threads,
                            &rescued,
                            &stop,
                        )
                    });
                if let Err(e) = watchdog {
                    log::warn!("cannot start the write-path watchdog: {e}");
                }
                govern(&watched.backlog, &watched.threads, &rescued, &stop);
            });
            // Leave them as RocksDB made them, for its own shutdown work
            // (looked up again: one started since the last rescan inherited
            // a policy too).
            for (tid, _) in (watched.threads)() {
                let _ = set_standing(tid, Standing::Compete);
            }
        })
}

fn watch_write_path(
    write_path_busy_for: &impl Fn() -> Duration,
    find_threads: &impl Fn() -> Vec<(i32, Pool)>,
    rescued: &AtomicBool,
    stop: &AtomicBool,
) {
    let mut rescues = 0u64;
    let mut reported = Instant::now();
    let mut stalled = false;
    while !stop.load(Ordering::Relaxed) {
        if write_path_busy_for() >= limits::WRITE_PATH_STALL_COMPETE {
            // Raised again at every look while the call stays stalled:
            // the governor may have idled a thread between reading the
            // backlog and seeing the flag, and then be stuck behind the
            // very mutex that thread holds.
            for (tid, _) in find_threads() {
                let _ = set_standing(tid, Standing::Compete);
            }
            rescued.store(true, Ordering::Relaxed);
            if !stalled {
                rescues += 1;
            }
            stalled = true;
        } else {
            stalled = false;
        }
        if rescues > 0 && reported.elapsed() >= Duration::from_secs(5) {
            log::info!(
                "background: {rescues} write-path calls stalled past {:?} since the last report; \
                 RocksDB's threads raised for each",
                limits::WRITE_PATH_STALL_COMPETE
            );
            rescues = 0;
            reported = Instant::now();
        }
        std::thread::sleep(limits::WRITE_PATH_WATCH_TICK);
    }
}

fn govern(
    backlog: &impl Fn() -> Backlog,
    find_threads: &impl Fn() -> Vec<(i32, Pool)>,
    rescued: &AtomicBool,
    stop: &AtomicBool,
) {
    let mut threads: Vec<(i32, Pool, Option<Standing>)> = Vec::new();
    let mut rescanned: Option<Instant> = None;
    let mut held_until: Option<Instant> = None;
    let mut changes = [0u64; 2];
    let mut reported = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if rescanned.is_none_or(|at| at.elapsed() >= limits::BACKGROUND_THREADS_RESCAN) {
            rescanned = Some(Instant::now());
            let found = find_threads();
            threads.retain(|(tid, _, _)| found.iter().any(|(t, _)| t == tid));
            for (tid, pool) in found {
                if !threads.iter().any(|(t, _, _)| *t == tid) {
                    threads.push((tid, pool, None));
                }
            }
        }
        let now = backlog();
        if rescued.swap(false, Ordering::Relaxed) {
            // The watchdog moved every thread to normal priority; the hold
            // keeps them there. Each is set again below (forgetting what was
            // set): this tick may have idled one just after the watchdog
            // raised it.
            held_until = Some(Instant::now() + limits::WRITE_PATH_STALL_HOLD);
            for (_, _, current) in threads.iter_mut() {
                *current = None;
            }
        }
        // Still held if the watchdog raised them again since the flag was
        // read above.
        let held = held_until.is_some_and(|until| Instant::now() < until)
            || rescued.load(Ordering::Relaxed);
        for (tid, pool, current) in threads.iter_mut() {
            let wanted = if held {
                Standing::Compete
            } else {
                standing(&now, *pool)
            };
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
                "background: flush threads moved {} times, compaction threads {} times since the last report",
                changes[0],
                changes[1]
            );
            changes = [0, 0];
            reported = Instant::now();
        }
        std::thread::sleep(limits::BACKGROUND_GOVERNOR_TICK);
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
        assert_eq!(standing(&backlog, Pool::Compaction), Standing::Yield);
        backlog.spare_memtables = 0;
        assert_eq!(standing(&backlog, Pool::Flush), Standing::Compete);
        // Memtables are the flushes' business, not the compactions'.
        assert_eq!(standing(&backlog, Pool::Compaction), Standing::Yield);
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
            ..Backlog::default()
        };
        assert_eq!(standing(&backlog, Pool::Compaction), Standing::Yield);
        backlog.level0_files += 1;
        assert_eq!(standing(&backlog, Pool::Compaction), Standing::Compete);
        backlog.level0_files = 0;
        backlog.pending_compaction_bytes += 1;
        assert_eq!(standing(&backlog, Pool::Compaction), Standing::Compete);
    }

    #[test]
    fn a_stalled_commit_or_unreadable_figures_make_everything_compete() {
        let stalled = Backlog {
            write_path_busy_for: limits::WRITE_PATH_STALL_COMPETE,
            ..Backlog::default()
        };
        let unreadable = Backlog {
            unreadable: true,
            ..Backlog::default()
        };
        let slow = Backlog {
            write_path_busy_for: limits::WRITE_PATH_STALL_COMPETE - Duration::from_micros(1),
            ..Backlog::default()
        };
        for pool in [Pool::Flush, Pool::Compaction] {
            assert_eq!(standing(&stalled, pool), Standing::Compete);
            assert_eq!(standing(&unreadable, pool), Standing::Compete);
            assert_eq!(standing(&slow, pool), Standing::Yield);
        }
    }

    #[test]
    fn rocksdb_thread_names_map_to_pools() {
        assert_eq!(Pool::of_thread("rocksdb:high\n"), Some(Pool::Flush));
        assert_eq!(Pool::of_thread("rocksdb:low"), Some(Pool::Compaction));
        assert_eq!(Pool::of_thread("rocksdb:bottom\n"), Some(Pool::Compaction));
        assert_eq!(Pool::of_thread("gust-committer"), None);
        assert_eq!(Pool::of_thread("rocksdb:highx"), None);
    }

    /// Whether this test may raise a priority. Where the process has
    /// CAP_SYS_NICE (root in CI) the probe must say yes; elsewhere the test
    /// skips unless RLIMIT_NICE allows it.
    fn may_raise_priorities() -> bool {
        let allowed = can_compete_again();
        if has_cap_sys_nice() {
            assert!(allowed, "CAP_SYS_NICE may raise priorities");
        } else if !allowed {
            eprintln!("skipped: no CAP_SYS_NICE nor RLIMIT_NICE for nice 0 here");
        }
        allowed
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
        assert_eq!(threads::policy_of(tid).unwrap(), libc::SCHED_OTHER);
        set_standing(tid, Standing::Yield).unwrap();
        assert_eq!(threads::policy_of(tid).unwrap(), libc::SCHED_IDLE);
        set_standing(tid, Standing::Compete).unwrap();
        assert_eq!(threads::policy_of(tid).unwrap(), libc::SCHED_OTHER);
        done.send(()).unwrap();
        thread.join().unwrap();
    }

    /// Waits up to 5 s (the governor looks every 20 ms, and for threads
    /// every second) for thread `tid` to be under `policy`.
    fn wait_for_policy(tid: i32, policy: i32) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while threads::policy_of(tid).expect("the thread is alive") != policy {
            assert!(
                Instant::now() < deadline,
                "thread {tid} never got policy {policy}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the governor and checks that it left the governed thread as
    /// RocksDB made it, then lets that thread end.
    fn stop_governor(
        governor: JoinHandle<()>,
        stop: &AtomicBool,
        (tid, done, thread): (i32, std::sync::mpsc::Sender<()>, JoinHandle<()>),
    ) {
        stop.store(true, Ordering::Relaxed);
        governor.join().unwrap();
        assert_eq!(threads::policy_of(tid).unwrap(), libc::SCHED_OTHER);
        done.send(()).unwrap();
        thread.join().unwrap();
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
            // Only the stand-in: RocksDB threads of other tests in this
            // process are left alone.
            let watched = Watched {
                backlog: move || *backlog.lock().unwrap(),
                write_path_busy_for: || Duration::ZERO,
                threads: move || vec![(tid, Pool::Flush)],
            };
            spawn_governor(watched, stop.clone()).unwrap()
        };
        wait_for_policy(tid, libc::SCHED_IDLE);
        backlog.lock().unwrap().spare_memtables = 0;
        wait_for_policy(tid, libc::SCHED_OTHER);
        backlog.lock().unwrap().spare_memtables = 1;
        wait_for_policy(tid, libc::SCHED_IDLE);
        stop_governor(governor, &stop, (tid, done, flush_thread));
    }

    /// A stalled commit while the governor itself is stuck reading the
    /// backlog (as it is behind RocksDB's mutex): the watchdog alone must
    /// put the pool back at normal priority, and the governor keeps it
    /// there for the hold before letting it yield again.
    #[test]
    fn the_watchdog_rescues_a_stalled_commit_while_the_governor_is_stuck() {
        if !may_raise_priorities() {
            return;
        }
        let (tid, done, compaction_thread) = parked_thread("rocksdb:low");
        let mutex = Arc::new(std::sync::Mutex::new(()));
        let stalled_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let governor = {
            let (mutex, stalled_ms) = (mutex.clone(), stalled_ms.clone());
            let watched = Watched {
                backlog: move || {
                    let _held = mutex.lock().unwrap();
                    Backlog::default()
                },
                write_path_busy_for: move || {
                    Duration::from_millis(stalled_ms.load(Ordering::Relaxed))
                },
                threads: move || vec![(tid, Pool::Compaction)],
            };
            spawn_governor(watched, stop.clone()).unwrap()
        };
        wait_for_policy(tid, libc::SCHED_IDLE);
        let held = mutex.lock().unwrap();
        let stall = limits::WRITE_PATH_STALL_COMPETE.as_millis() as u64 * 2;
        stalled_ms.store(stall, Ordering::Relaxed);
        wait_for_policy(tid, libc::SCHED_OTHER);
        stalled_ms.store(0, Ordering::Relaxed);
        let released = Instant::now();
        drop(held);
        wait_for_policy(tid, libc::SCHED_IDLE);
        // Not before the hold ran out (counted from when the governor saw
        // the rescue, which is after the release).
        assert!(released.elapsed() >= limits::WRITE_PATH_STALL_HOLD);
        stop_governor(governor, &stop, (tid, done, compaction_thread));
    }
}
