//! How the data directory's filesystem is mounted, read from
//! `/proc/self/mountinfo`. One option matters enough to warn about: online
//! discard. With it, every file RocksDB deletes (write-ahead logs after each
//! flush, tables after each compaction: every few seconds under load) is
//! trimmed on the device as it is unlinked, and the log's fsyncs queue
//! behind the trims. Measured on ext4 (BENCHMARKS.md): deleting 2 GB took
//! 0.35 s and made five commits of 32–76 ms; each 64 MiB table ~12 ms.
//! Mounted without it (and trimmed by `fstrim.timer`) the same deletion took
//! 3 ms.
//!
//! Not seen: discard set as an ext4 default in the superblock (`tune2fs -o
//! discard`), which mountinfo does not list, and a mount hidden under a
//! later mount of one of its parents (the longest mount point wins here).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// Filesystems whose plain `discard` trims synchronously as blocks are
/// freed. f2fs prints `discard` by default and trims from a background
/// thread; btrfs spells its background mode `discard=async`.
const SYNCHRONOUS_DISCARD: [&str; 5] = ["ext2", "ext3", "ext4", "xfs", "btrfs"];

/// Where `/proc/self/mountinfo` says the data lives.
#[derive(Debug, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub fs_type: String,
    /// Trims synchronously as files are deleted.
    pub online_discard: bool,
}

/// The mount holding `dir`, or `None` where there is no mountinfo (not
/// Linux, no /proc) or `dir` cannot be resolved.
pub fn mount_of(dir: &Path) -> Option<Mount> {
    let dir = std::fs::canonicalize(dir).ok()?;
    // Bytes, not text: a mount point is any path, UTF-8 or not.
    let mountinfo = std::fs::read("/proc/self/mountinfo").ok()?;
    find_mount(&mountinfo, &dir)
}

/// The mount in `mountinfo` whose mount point is the longest ancestor of
/// `dir` (the last one listed wins a tie: it is mounted over the others).
fn find_mount(mountinfo: &[u8], dir: &Path) -> Option<Mount> {
    let mut best: Option<Mount> = None;
    for line in mountinfo.split(|&b| b == b'\n') {
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
fn parse_line(line: &[u8]) -> Option<Mount> {
    let separator = line.windows(3).position(|w| w == b" - ")?;
    let (before, after) = (line.get(..separator)?, line.get(separator + 3..)?);
    let mut before = before.split(|&b| b == b' ');
    let mount_point = before.nth(4)?;
    let mount_options = String::from_utf8_lossy(before.next()?);
    let mut after = after.split(|&b| b == b' ');
    let fs_type = String::from_utf8_lossy(after.next()?).into_owned();
    let _source = after.next()?;
    let super_options = String::from_utf8_lossy(after.next().unwrap_or_default());
    let online_discard = SYNCHRONOUS_DISCARD.contains(&fs_type.as_str())
        && mount_options
            .split(',')
            .chain(super_options.split(','))
            .any(|option| option == "discard" || option == "discard=sync");
    Some(Mount {
        mount_point: PathBuf::from(OsString::from_vec(unescape(mount_point))),
        fs_type,
        online_discard,
    })
}

/// Undoes the kernel's octal escapes (`\040` for a space, `\134` for a
/// backslash); anything else is kept as it is.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while let Some(&byte) = field.get(i) {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|digits| byte == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)))
            .map(|digits| digits.iter().fold(0u32, |n, d| n * 8 + u32::from(d - b'0')))
            .and_then(|value| u8::try_from(value).ok());
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
    out
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
        find_mount(MOUNTINFO.as_bytes(), Path::new(dir)).expect("a mount") // ok: test
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
        let found = find_mount(text.as_bytes(), Path::new("/data")).expect("a mount"); // ok: test
        assert!(!found.online_discard);
        let text = "27 1 254:0 / / rw,discard - ext4 /dev/vda rw\n";
        let found = find_mount(text.as_bytes(), Path::new("/data")).expect("a mount"); // ok: test
        assert!(found.online_discard);
        assert_eq!(find_mount(b"nothing here\n", Path::new("/data")), None);
    }

    #[test]
    fn background_discard_is_not_counted_and_odd_bytes_in_paths_are_kept() {
        use std::os::unix::ffi::OsStrExt;
        let mut text = b"43 27 254:48 / /srv/f2 rw - f2fs /dev/vde rw,discard\n".to_vec();
        text.extend_from_slice(b"44 27 254:64 / /srv/\xff rw - ext4 /dev/vdf rw,discard\n");
        let f2fs = find_mount(&text, Path::new("/srv/f2/gust")).expect("a mount"); // ok: test
        assert_eq!(f2fs.fs_type, "f2fs");
        assert!(!f2fs.online_discard);
        let odd = PathBuf::from(OsString::from_vec(b"/srv/\xff/gust".to_vec()));
        let found = find_mount(&text, &odd).expect("a mount"); // ok: test
        assert_eq!(found.mount_point.as_os_str().as_bytes(), b"/srv/\xff");
        assert!(found.online_discard);
        // Escapes need three octal digits; anything else is kept verbatim.
        assert_eq!(unescape(b"a\\040b\\+12\\9"), b"a b\\+12\\9".to_vec());
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn this_machines_mounts_can_be_read() {
        // Linux CI always has /proc; the answer itself depends on the box.
        let found = mount_of(&std::env::temp_dir());
        assert!(found.is_some(), "no mount found for the temp directory");
    }
}
