//! How the `gust` command line shows messages: one line per message.
//!
//! Pure functions from protocol values to text, so the output format is unit
//! tested without a server. Lines never contain a raw newline or control
//! character, so a parent process can read the output line by line.

use crate::protocol::{Content, GroupEventKind, Message};

/// `HH:MM:SS` (UTC) of a server timestamp in ms since the Unix epoch.
pub(crate) fn clock_utc(server_time_ms: u64) -> String {
    let secs_of_day = (server_time_ms / 1000) % 86_400;
    format!(
        "{:02}:{:02}:{:02}",
        secs_of_day / 3600,
        (secs_of_day / 60) % 60,
        secs_of_day % 60
    )
}

/// The one-line form of a message:
/// `[12:34:56 UTC] alice (conversation 7 seq 42): hi`.
pub(crate) fn message_line(message: &Message, sender: &str) -> String {
    format!(
        "[{} UTC] {} (conversation {} seq {}): {}",
        clock_utc(message.server_time_ms),
        sender,
        message.conversation_id,
        message.seq,
        content_text(&message.content)
    )
}

/// Text as is (control characters escaped); anything else as a bracketed summary.
pub(crate) fn content_text(content: &Content) -> String {
    match content {
        Content::Text { text } => one_line(text),
        Content::Image {
            url, width, height, ..
        } => format!("[image {} {width}x{height}]", one_line(url)),
        Content::Voice {
            url, duration_ms, ..
        } => format!("[voice {} {}]", one_line(url), seconds(*duration_ms)),
        Content::Video {
            url, duration_ms, ..
        } => format!("[video {} {}]", one_line(url), seconds(*duration_ms)),
        Content::File {
            url,
            name,
            size_bytes,
            ..
        } => format!(
            "[file {} {size_bytes} bytes {}]",
            one_line(name),
            one_line(url)
        ),
        Content::Location {
            latitude,
            longitude,
            label,
        } => {
            if label.is_empty() {
                format!("[location {latitude},{longitude}]")
            } else {
                format!("[location {latitude},{longitude} {}]", one_line(label))
            }
        }
        Content::Custom { kind, data } => {
            format!("[custom {} {} bytes]", one_line(kind), data.len())
        }
        Content::Recalled { seq } => format!("[recalled seq {seq}]"),
        Content::GroupEvent {
            event,
            actor,
            subjects,
        } => {
            let mut line = format!("[group {} by #{actor}", group_event_name(*event));
            for (i, subject) in subjects.iter().enumerate() {
                line.push_str(if i == 0 { ": #" } else { ", #" });
                line.push_str(&subject.to_string());
            }
            line.push(']');
            line
        }
    }
}

fn seconds(duration_ms: u32) -> String {
    format!("{}.{}s", duration_ms / 1000, (duration_ms % 1000) / 100)
}

fn group_event_name(kind: GroupEventKind) -> &'static str {
    match kind {
        GroupEventKind::Created => "created",
        GroupEventKind::Joined => "joined",
        GroupEventKind::Quit => "quit",
        GroupEventKind::Kicked => "kicked",
        GroupEventKind::Dissolved => "dissolved",
        GroupEventKind::OwnerChanged => "owner_changed",
    }
}

/// Escapes control characters (`\n` becomes the two characters `\n`) so one
/// message is always one output line.
fn one_line(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn message(content: Content) -> Message {
        Message {
            conversation_id: 7,
            seq: 42,
            message_id: 1001,
            sender_id: 1,
            client_message_id: 99,
            // 2023-11-14T22:13:20.123Z
            server_time_ms: 1_700_000_000_123,
            content,
            extras: BTreeMap::new(),
        }
    }

    #[test]
    fn clock_is_utc_time_of_day() {
        assert_eq!(clock_utc(0), "00:00:00");
        assert_eq!(clock_utc(1_700_000_000_123), "22:13:20");
        assert_eq!(clock_utc(86_399_999), "23:59:59");
        assert_eq!(clock_utc(86_400_000), "00:00:00");
    }

    #[test]
    fn text_line() {
        let m = message(Content::Text { text: "hi".into() });
        assert_eq!(
            message_line(&m, "alice"),
            "[22:13:20 UTC] alice (conversation 7 seq 42): hi"
        );
    }

    #[test]
    fn newlines_stay_on_one_line() {
        let m = message(Content::Text {
            text: "a\nb\tc\u{1b}".into(),
        });
        let line = message_line(&m, "#3");
        assert!(!line.contains('\n'));
        assert!(line.ends_with(r"a\nb\tc\u{1b}"), "{line}");
        assert!(line.contains("] #3 ("));
    }

    #[test]
    fn media_summaries() {
        assert_eq!(
            content_text(&Content::Image {
                url: "https://x/a.png".into(),
                width: 640,
                height: 480,
                size_bytes: 1,
            }),
            "[image https://x/a.png 640x480]"
        );
        assert_eq!(
            content_text(&Content::Voice {
                url: "u".into(),
                duration_ms: 2500,
                size_bytes: 1,
            }),
            "[voice u 2.5s]"
        );
        assert_eq!(
            content_text(&Content::File {
                url: "u".into(),
                name: "a.pdf".into(),
                size_bytes: 10,
                mime_type: "application/pdf".into(),
            }),
            "[file a.pdf 10 bytes u]"
        );
        assert_eq!(
            content_text(&Content::Recalled { seq: 3 }),
            "[recalled seq 3]"
        );
        assert_eq!(
            content_text(&Content::GroupEvent {
                event: GroupEventKind::Kicked,
                actor: 1,
                subjects: vec![2, 3],
            }),
            "[group kicked by #1: #2, #3]"
        );
        assert_eq!(
            content_text(&Content::Custom {
                kind: "poll".into(),
                data: vec![0; 5],
            }),
            "[custom poll 5 bytes]"
        );
    }
}
