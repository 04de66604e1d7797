//! How the data directory's filesystem is mounted, read from
//! `/proc/self/mountinfo`. One option matters enough to warn about: online
//! discard. With it, every file RocksDB deletes (write-ahead logs after each
//! flush, tables after each compaction: every few seconds under load) is
//! trimmed on the device as it is unlinked, and the log's fsyncs queue
//! behind the trims. Measured on ext4 (BENCHMARKS.md): deleting 2 GB took
//! 0.35 s and made commits of 64–76 ms; each 64 MiB table ~12 ms. Mounted
//! without it (and trimmed by `fstrim.timer`) the same deletion took 3 ms.

use std::path::{Path, PathBuf};

/// Where `/proc/self/mountinfo` says the data lives.
#[derive(Debug, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub fs_type: String,
    /// Trims synchronously as files are deleted (`discard`; btrfs's
    /// `discard=async` batches them in the background and is not counted).
    pub online_discard: bool,
}

/// The mount holding `dir`, or `None` where there is no mountinfo (not
/// Linux, no /proc) or `dir` cannot be resolved.
pub fn mount_of(dir: &Path) -> Option<Mount> {
    let dir = std::fs::canonicalize(dir).ok()?;
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    find_mount(&text, &dir)
}

/// The mount in `mountinfo` whose mount point is the longest ancestor of
/// `dir` (the last one listed wins a tie: it is mounted over the others).
fn find_mount(mountinfo: &str, dir: &Path) -> Option<Mount> {
    let mut best: Option<Mount> = None;
    for line in mountinfo.lines() {
        let Some(mount) = parse_line(line) else {
            continue;
        };
        if !dir.starts_with(&mount.mount_point) {
            continue;
        }
        let longer = best
            .as_ref()
            .is_none_or(|b| mount.mount_point.as_os_str().len() >= b.mount_point.as_os_str().len());
        if longer {
            best = Some(mount);
        }
    }
    best
}

/// One line: `id parent major:minor root mount_point options [optional...] -
/// fs_type source super_options` (proc(5)). Malformed lines are skipped.
fn parse_line(line: &str) -> Option<Mount> {
    let (before, after) = line.split_once(" - ")?;
    let mut before = before.split(' ');
    let mount_point = before.nth(4)?;
    let mount_options = before.next()?;
    let mut after = after.split(' ');
    let fs_type = after.next()?;
    let _source = after.next()?;
    let super_options = after.next().unwrap_or("");
    let online_discard = mount_options
        .split(',')
        .chain(super_options.split(','))
        .any(|option| option == "discard" || option == "discard=sync");
    Some(Mount {
        mount_point: PathBuf::from(unescape(mount_point)),
        fs_type: fs_type.to_string(),
        online_discard,
    })
}

/// Undoes the kernel's octal escapes (`\040` for a space, `\134` for a
/// backslash); anything else is kept as it is.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|_| byte == b'\\')
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        match octal {
            Some(unescaped) => {
                out.push(unescaped);
                i += 4;
            }
            None => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard,resv_strict
40 27 254:16 / /var/lib/gust rw,noatime - xfs /dev/vdb rw,attr2,inode64
41 27 254:32 / /srv/my\\040data rw,relatime - ext4 /dev/vdc rw,discard
42 27 0:40 / /mnt/b rw,relatime - btrfs /dev/vdd rw,ssd,discard=async,space_cache=v2
garbage without the separator
";

    fn mount(dir: &str) -> Mount {
        find_mount(MOUNTINFO, Path::new(dir)).expect("a mount") // ok: test
    }

    #[test]
    fn the_longest_mount_point_holding_the_directory_wins() {
        let root = mount("/tmp/gust-data");
        assert_eq!(root.mount_point, PathBuf::from("/"));
        assert_eq!(root.fs_type, "ext4");
        assert!(root.online_discard);

        let own = mount("/var/lib/gust/data");
        assert_eq!(own.mount_point, PathBuf::from("/var/lib/gust"));
        assert_eq!(own.fs_type, "xfs");
        assert!(!own.online_discard);

        // A sibling whose name merely starts the same is not inside it.
        assert_eq!(mount("/var/lib/gustx").mount_point, PathBuf::from("/"));
    }

    #[test]
    fn escaped_mount_points_and_async_discard() {
        let spaced = mount("/srv/my data/gust");
        assert_eq!(spaced.mount_point, PathBuf::from("/srv/my data"));
        assert!(spaced.online_discard);
        assert!(!mount("/mnt/b/gust").online_discard);
    }

    #[test]
    fn per_mount_options_count_too_and_the_last_mount_on_a_point_wins() {
        let text = "\
27 1 254:0 / / rw,discard - ext4 /dev/vda rw
50 27 254:0 / / rw - ext4 /dev/vda rw
";
        let found = find_mount(text, Path::new("/data")).expect("a mount"); // ok: test
        assert!(!found.online_discard);
        let text = "27 1 254:0 / / rw,discard - ext4 /dev/vda rw\n";
        let found = find_mount(text, Path::new("/data")).expect("a mount"); // ok: test
        assert!(found.online_discard);
        assert_eq!(find_mount("nothing here\n", Path::new("/data")), None);
    }

    #[test]
    fn this_machines_mounts_can_be_read() {
        // Linux CI always has /proc; the answer itself depends on the box.
        let found = mount_of(&std::env::temp_dir());
        assert!(found.is_some(), "no mount found for the temp directory");
    }
}
