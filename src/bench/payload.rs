//! The text of a bench message, and the process-wide clock it carries.
//!
//! A message's text starts with its stamp: the send time, the time the
//! schedule had it due (nanoseconds on this process's monotonic clock) and
//! the client message id, 16 hex digits each, padded with `x` to the
//! requested size. The receiver, which may be on another worker thread,
//! reads the times back to measure send→deliver latency on the same clock,
//! and checks the id against the message's own `client_message_id`.
//!
//! Two times, because at a fixed rate a generator that falls behind its
//! schedule (on a busy machine, the CPU it shares with the server) writes
//! late, and latency counted from the late write leaves that out: the
//! "coordinated omission" of load generators that wait for their own
//! turn. Counted from the due time it is in. Without a schedule (window
//! mode) the two are the same.

use std::sync::OnceLock;
use std::time::Instant;

/// Bytes of the stamp at the start of every message.
pub const STAMP_BYTES: usize = 48;

/// What a message's text carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// When the message was written (queued for its socket).
    pub sent_ns: u64,
    /// When the schedule had it due; `sent_ns` when there is no schedule.
    pub due_ns: u64,
    pub client_message_id: u64,
}

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
pub fn message_text(stamp: Stamp, size_bytes: usize) -> String {
    // Hand-rolled hex: `format!` here was a tenth of the generator's CPU,
    // which the server shares the machine with.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = Vec::with_capacity(size_bytes.max(STAMP_BYTES));
    for value in [stamp.sent_ns, stamp.due_ns, stamp.client_message_id] {
        for shift in (0..16).rev() {
            text.push(HEX[((value >> (shift * 4)) & 0xF) as usize]);
        }
    }
    text.resize(size_bytes.max(STAMP_BYTES), b'x');
    // Only ASCII hex digits and 'x' were written.
    String::from_utf8(text).unwrap_or_default()
}

/// The stamp at the start of `text`, or `None` if the text is not a bench
/// message.
pub fn parse_stamp(text: &str) -> Option<Stamp> {
    let stamp = text.get(..STAMP_BYTES)?;
    let field = |at: usize| {
        let digits = stamp.get(at..at + 16)?;
        // from_str_radix alone would take a leading '+'.
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(digits, 16).ok()
    };
    Some(Stamp {
        sent_ns: field(0)?,
        due_ns: field(16)?,
        client_message_id: field(32)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trip_and_size() {
        let stamp = Stamp {
            sent_ns: 123_456_789,
            due_ns: 123_000_000,
            client_message_id: u64::MAX - 5,
        };
        let text = message_text(stamp, 100);
        assert_eq!(text.len(), 100);
        assert_eq!(parse_stamp(&text), Some(stamp));
        let small = Stamp {
            sent_ns: 1,
            due_ns: 0,
            client_message_id: 2,
        };
        let short = message_text(small, 10);
        assert_eq!(short.len(), STAMP_BYTES);
        assert_eq!(parse_stamp(&short), Some(small));
        // Byte-exact: each field is 16 lowercase hex digits, in order.
        assert_eq!(
            &message_text(small, 0),
            "0000000000000001\
             0000000000000000\
             0000000000000002"
        );
    }

    #[test]
    fn foreign_texts_are_refused() {
        assert_eq!(parse_stamp("hello"), None);
        assert_eq!(parse_stamp(&"z".repeat(60)), None);
        let mut signed = message_text(
            Stamp {
                sent_ns: 1,
                due_ns: 1,
                client_message_id: 1,
            },
            60,
        );
        signed.replace_range(0..1, "+");
        assert_eq!(parse_stamp(&signed), None);
        // A multi-byte character straddling the stamp's end.
        let mut text = "0".repeat(STAMP_BYTES - 1);
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
