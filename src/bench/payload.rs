//! The text of a bench message, and the process-wide clock it carries.
//!
//! A message's text starts with the send time (nanoseconds on this process's
//! monotonic clock, 16 hex digits) and the client message id (16 hex
//! digits), padded with `x` to the requested size. The receiver, which may
//! be on another worker thread, reads the send time back to measure
//! send→deliver latency on the same clock, and checks the id against the
//! message's own `client_message_id`.

use std::sync::OnceLock;
use std::time::Instant;

/// Bytes of the stamp at the start of every message.
pub const STAMP_BYTES: usize = 32;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the first call in this process (monotonic, shared by
/// all threads).
pub fn now_ns() -> u64 {
    ns_at(Instant::now())
}

/// `instant` on the `now_ns` clock (0 for an instant before its epoch).
pub fn ns_at(instant: Instant) -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    // u64 nanoseconds last 584 years.
    instant.saturating_duration_since(epoch).as_nanos() as u64
}

/// The message text: stamp, then padding up to `size_bytes` (never shorter
/// than the stamp).
pub fn message_text(send_ns: u64, client_message_id: u64, size_bytes: usize) -> String {
    // Hand-rolled hex: `format!` here was a tenth of the generator's CPU,
    // which the server shares the machine with.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = Vec::with_capacity(size_bytes.max(STAMP_BYTES));
    for value in [send_ns, client_message_id] {
        for shift in (0..16).rev() {
            text.push(HEX[((value >> (shift * 4)) & 0xF) as usize]);
        }
    }
    text.resize(size_bytes.max(STAMP_BYTES), b'x');
    // Only ASCII hex digits and 'x' were written.
    String::from_utf8(text).unwrap_or_default()
}

/// The (send time, client message id) stamped at the start of `text`, or
/// `None` if the text is not a bench message.
pub fn parse_stamp(text: &str) -> Option<(u64, u64)> {
    let stamp = text.get(..STAMP_BYTES)?;
    let send_ns = u64::from_str_radix(&stamp[..16], 16).ok()?;
    let client_message_id = u64::from_str_radix(&stamp[16..], 16).ok()?;
    Some((send_ns, client_message_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trip_and_size() {
        let text = message_text(123_456_789, u64::MAX - 5, 100);
        assert_eq!(text.len(), 100);
        assert_eq!(parse_stamp(&text), Some((123_456_789, u64::MAX - 5)));
        let short = message_text(1, 2, 10);
        assert_eq!(short.len(), STAMP_BYTES);
        assert_eq!(parse_stamp(&short), Some((1, 2)));
    }

    #[test]
    fn foreign_texts_are_refused() {
        assert_eq!(parse_stamp("hello"), None);
        assert_eq!(parse_stamp(&"z".repeat(40)), None);
        // A multi-byte character straddling the stamp's end.
        let mut text = "0".repeat(31);
        text.push('é');
        assert_eq!(parse_stamp(&text), None);
    }

    #[test]
    fn the_clock_moves_forward() {
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a);
    }
}
