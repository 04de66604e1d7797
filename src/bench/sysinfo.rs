//! What the bench reads about the machine and the server process: /proc
//! (server RSS and CPU time, total memory, the pid listening on the target
//! port), the core count, the open-file limit and the git commit.
//!
//! Linux only, like gustd itself. Parsers are separate from file reads so
//! they are unit-tested on fixed text. Everything here is best effort: a
//! figure that cannot be read is reported as unknown, never guessed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

/// Resident set size in bytes from the text of /proc/PID/status.
pub fn parse_vm_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let kib: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => Some(kib * 1024),
        _ => None,
    }
}

/// User plus system CPU time in clock ticks from the text of /proc/PID/stat.
/// The command name (field 2) may hold spaces and parentheses, so fields are
/// counted after its last `)`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name: field 3 (state) is index 0, so utime (14) is 11 and
    // stime (15) is 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// MemTotal in bytes from the text of /proc/meminfo.
pub fn parse_mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line["MemTotal:".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

pub fn vm_rss_bytes(pid: u32) -> Option<u64> {
    parse_vm_rss_bytes(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

pub fn cpu_ticks(pid: u32) -> Option<u64> {
    parse_cpu_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU time of this process, for "was the generator the bottleneck?".
pub fn own_cpu_ticks() -> Option<u64> {
    parse_cpu_ticks(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

pub fn mem_total_bytes() -> Option<u64> {
    parse_mem_total_bytes(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Clock ticks per second of /proc/PID/stat times.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a constant of the C library.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// `git rev-parse HEAD` in the current directory, if git and a repository
/// are there.
pub fn git_commit() -> Option<String> {
    let output = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let commit = text.trim();
    (output.status.success() && !commit.is_empty()).then(|| commit.to_string())
}

/// Raises the soft open-file limit to the hard one and returns the soft
/// limit now in force (each connection is one descriptor).
pub fn raise_open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(limit.rlim_cur)
}

/// One listening socket from /proc/net/tcp or tcp6: its address and inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub addr: SocketAddr,
    pub inode: u64,
}

/// The sockets in LISTEN state (0A) in the text of /proc/net/tcp (or tcp6).
/// Addresses are printed as the kernel holds them: each 32-bit word in host
/// byte order (little-endian here), the port big-endian.
pub fn parse_listeners(table: &str) -> Vec<Listener> {
    let mut out = Vec::new();
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state), Some(inode)) = (fields.get(1), fields.get(3), fields.get(9))
        else {
            continue;
        };
        if *state != "0A" {
            continue;
        }
        let (Some(addr), Ok(inode)) = (parse_hex_socket_addr(local), inode.parse::<u64>()) else {
            continue;
        };
        out.push(Listener { addr, inode });
    }
    out
}

fn parse_hex_socket_addr(text: &str) -> Option<SocketAddr> {
    let (ip_hex, port_hex) = text.split_once(':')?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    let ip = match ip_hex.len() {
        8 => {
            let word = u32::from_str_radix(ip_hex, 16).ok()?;
            IpAddr::V4(Ipv4Addr::from(word.to_le_bytes()))
        }
        32 => {
            let mut bytes = [0u8; 16];
            for (w, chunk) in bytes.chunks_mut(4).enumerate() {
                let word = u32::from_str_radix(ip_hex.get(w * 8..w * 8 + 8)?, 16).ok()?;
                chunk.copy_from_slice(&word.to_le_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Whether a listener at `listening` accepts connections made to `target`.
fn serves(listening: SocketAddr, target: SocketAddr) -> bool {
    listening.port() == target.port()
        && (listening.ip() == target.ip() || listening.ip().is_unspecified())
}

/// The pid of the process listening on `target`, found by the listening
/// socket's inode in /proc/PID/fd (needs the permission to read the server's
/// fd directory: the same user, or root). None when not found.
pub fn find_listener_pid(target: SocketAddr) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            inodes.extend(
                parse_listeners(&text)
                    .into_iter()
                    .filter(|l| serves(l.addr, target))
                    .map(|l| format!("socket:[{}]", l.inode)),
            );
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let own = std::process::id();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        if process_holds_any(&entry.path().join("fd"), &inodes) {
            return Some(pid);
        }
    }
    None
}

fn process_holds_any(fd_dir: &Path, sockets: &[String]) -> bool {
    let Ok(fds) = std::fs::read_dir(fd_dir) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .ok()
            .and_then(|target| target.to_str().map(|t| sockets.iter().any(|s| s == t)))
            .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_rss() {
        let status = "Name:\tgustd\nVmPeak:\t  9000 kB\nVmRSS:\t    5120 kB\nThreads:\t7\n";
        assert_eq!(parse_vm_rss_bytes(status), Some(5120 * 1024));
        assert_eq!(parse_vm_rss_bytes("Name:\tx\n"), None);
        assert_eq!(parse_vm_rss_bytes("VmRSS:\t12 MB\n"), None);
    }

    #[test]
    fn stat_ticks_with_a_hostile_name() {
        let stat = "4242 (gus) d) x) S 1 4242 4242 0 -1 4194560 500 0 0 0 170 35 0 0 20 0 7 0 100 1000 300";
        assert_eq!(parse_cpu_ticks(stat), Some(205));
        assert_eq!(parse_cpu_ticks("4242 (short) S 1 2"), None);
    }

    #[test]
    fn meminfo_total() {
        assert_eq!(
            parse_mem_total_bytes("MemTotal:        8000000 kB\nMemFree: 1 kB\n"),
            Some(8_000_000 * 1024)
        );
    }

    #[test]
    fn proc_net_tcp_listeners() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1E14 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 123456 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1E14 0200007F:A000 01 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 20 4 30 10 -1
   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 999 1 0000000000000000 100 0 0 10 0
";
        let listeners = parse_listeners(table);
        assert_eq!(
            listeners,
            [
                Listener {
                    addr: "127.0.0.1:7700".parse().unwrap(),
                    inode: 123456
                },
                Listener {
                    addr: "0.0.0.0:22".parse().unwrap(),
                    inode: 999
                },
            ]
        );
        let target: SocketAddr = "127.0.0.1:7700".parse().unwrap();
        assert!(serves(listeners[0].addr, target));
        assert!(!serves(listeners[1].addr, target));
        assert!(serves("0.0.0.0:7700".parse().unwrap(), target));
    }

    #[test]
    fn proc_net_tcp6_address() {
        // ::1 port 7700 as the kernel prints it.
        let addr = parse_hex_socket_addr("00000000000000000000000001000000:1E14").unwrap();
        assert_eq!(addr, "[::1]:7700".parse().unwrap());
    }
}
