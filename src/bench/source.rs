//! Source addresses for outgoing connections.
//!
//! One source address gives at most ~28,000 ephemeral ports towards one
//! server address, far below the million connections gust targets, so the
//! load generator binds each socket to one of many local addresses before
//! connecting. On Linux every address of 127.0.0.0/8 is local, which makes
//! 253 loopback sources available without any configuration.
//!
//! This file only parses and picks addresses; binding is in `engine.rs`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Most addresses one `--source` value may name: more would be a typo, and
/// the list is held in memory.
pub const SOURCES_MAX: usize = 65_536;

/// Parses a `--source` value: comma-separated items, each an address
/// (`127.0.0.9`, `::1`) or an inclusive IPv4 range written in full
/// (`127.0.0.2-127.0.0.250`) or with only the last octet after the dash
/// (`127.0.0.2-250`). `none` means "do not bind; let the kernel choose".
pub fn parse_sources(text: &str) -> Result<Vec<IpAddr>, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for item in text.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(format!("--source {text:?}: empty item"));
        }
        match item.split_once('-') {
            None => {
                let addr: IpAddr = item
                    .parse()
                    .map_err(|_| format!("--source: {item:?} is not an IP address"))?;
                out.push(addr);
            }
            Some((first, last)) => {
                let first: Ipv4Addr = first
                    .trim()
                    .parse()
                    .map_err(|_| format!("--source: {first:?} is not an IPv4 address"))?;
                let last = parse_range_end(first, last.trim())?;
                let (lo, hi) = (u32::from(first), u32::from(last));
                if lo > hi {
                    return Err(format!("--source: range {item:?} runs backwards"));
                }
                let count = (hi - lo) as usize + 1;
                if out.len() + count > SOURCES_MAX {
                    return Err(format!("--source names more than {SOURCES_MAX} addresses"));
                }
                out.extend((lo..=hi).map(|a| IpAddr::V4(Ipv4Addr::from(a))));
            }
        }
        if out.len() > SOURCES_MAX {
            return Err(format!("--source names more than {SOURCES_MAX} addresses"));
        }
    }
    Ok(out)
}

/// The end of a range: a full address, or a last octet that replaces the
/// first address's.
fn parse_range_end(first: Ipv4Addr, text: &str) -> Result<Ipv4Addr, String> {
    if let Ok(full) = text.parse::<Ipv4Addr>() {
        return Ok(full);
    }
    let octet: u8 = text
        .parse()
        .map_err(|_| format!("--source: range end {text:?} is neither an address nor an octet"))?;
    let [a, b, c, _] = first.octets();
    Ok(Ipv4Addr::new(a, b, c, octet))
}

/// The sources used when `--source` is not given: for a loopback target,
/// 127.0.0.2 ..= 127.0.0.254 (253 addresses, ~7 million ports); otherwise
/// none, since only the operator knows which addresses the box owns.
pub fn default_sources(target: SocketAddr) -> Vec<IpAddr> {
    match target.ip() {
        IpAddr::V4(v4) if v4.is_loopback() => (2..=254u8)
            .map(|last| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
            .collect(),
        _ => Vec::new(),
    }
}

/// The source of connection `index`: round-robin over `sources`, or `None`
/// when there are none.
pub fn source_for(sources: &[IpAddr], index: usize) -> Option<IpAddr> {
    if sources.is_empty() {
        None
    } else {
        Some(sources[index % sources.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    #[test]
    fn full_and_short_ranges() {
        let full = parse_sources("127.0.0.2-127.0.0.250").unwrap();
        assert_eq!(full.len(), 249);
        assert_eq!(full[0], v4(127, 0, 0, 2));
        assert_eq!(full[248], v4(127, 0, 0, 250));
        assert_eq!(parse_sources("127.0.0.2-250").unwrap(), full);
    }

    #[test]
    fn ranges_cross_octets() {
        let r = parse_sources("10.0.0.254-10.0.1.1").unwrap();
        assert_eq!(
            r,
            [
                v4(10, 0, 0, 254),
                v4(10, 0, 0, 255),
                v4(10, 0, 1, 0),
                v4(10, 0, 1, 1)
            ]
        );
    }

    #[test]
    fn lists_singles_and_none() {
        let r = parse_sources("127.0.0.5, 127.0.0.7-8,::1").unwrap();
        assert_eq!(r.len(), 4);
        assert_eq!(r[3], "::1".parse::<IpAddr>().unwrap());
        assert!(parse_sources("none").unwrap().is_empty());
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            "",
            "127.0.0.9-127.0.0.3",
            "127.0.0.1-300",
            "localhost",
            "1.2.3.4,",
            "::1-::2",
            "0.0.0.0-255.255.255.255",
        ] {
            assert!(parse_sources(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn defaults_only_for_loopback() {
        let d = default_sources("127.0.0.1:7700".parse().unwrap());
        assert_eq!(d.len(), 253);
        assert_eq!(d[0], v4(127, 0, 0, 2));
        assert_eq!(d[252], v4(127, 0, 0, 254));
        assert!(default_sources("10.1.2.3:7700".parse().unwrap()).is_empty());
        assert_eq!(source_for(&d, 0), Some(v4(127, 0, 0, 2)));
        assert_eq!(source_for(&d, 253), Some(v4(127, 0, 0, 2)));
        assert_eq!(source_for(&[], 5), None);
    }
}
