//! This process's threads as the kernel sees them: found by name under
//! `/proc/PID/task`, and their scheduling policy read and set by thread id.
//! gustd uses it for RocksDB's background threads (`store::background`),
//! gust-bench for its own workers (`bench::engine`).

use std::io;
use std::path::Path;

/// The threads under a `/proc/PID/task` directory whose name (`comm`, with
/// its newline trimmed) `pick` maps to a value: (thread id, value).
pub fn named<T>(tasks: &Path, pick: impl Fn(&str) -> Option<T>) -> Vec<(i32, T)> {
    let Ok(entries) = std::fs::read_dir(tasks) else {
        return Vec::new();
    };
    let mut threads = Vec::new();
    for entry in entries.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        // A thread that ended since the directory was read has no comm.
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        if let Some(value) = pick(comm.trim_end()) {
            threads.push((tid, value));
        }
    }
    threads
}

/// [`named`] over this process's threads.
pub fn named_here<T>(pick: impl Fn(&str) -> Option<T>) -> Vec<(i32, T)> {
    named(Path::new("/proc/self/task"), pick)
}

/// Puts thread `tid` (0: the calling thread) under `policy` (`libc::SCHED_*`)
/// at static priority 0.
pub fn set_policy(tid: i32, policy: libc::c_int) -> io::Result<()> {
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

/// The scheduling policy of thread `tid` (`libc::SCHED_*`), of this process
/// or another.
pub fn policy_of(tid: i32) -> io::Result<libc::c_int> {
    // SAFETY: a plain query; a tid that has exited makes it fail with ESRCH.
    let policy = unsafe { libc::sched_getscheduler(tid) };
    if policy < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut found = named(dir.path(), |comm| {
            comm.strip_prefix("rocksdb:").map(String::from)
        });
        found.sort();
        assert_eq!(
            found,
            vec![(101, "high".to_string()), (102, "low".to_string())]
        );
    }
}
