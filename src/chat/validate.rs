//! Field rules for bodies from clients (protocol.md, "Limits" and "Accounts").
//! A violation is a per-request `bad_body` or `too_large`, never a panic.

use crate::limits::*;
use crate::protocol::{Content, Send, StatusCode};

#[derive(Debug, PartialEq, Eq)]
pub struct Invalid {
    pub code: StatusCode,
    pub message: String,
}

fn bad(message: impl Into<String>) -> Invalid {
    Invalid {
        code: StatusCode::BadBody,
        message: message.into(),
    }
}

fn too_large(what: &str, len: usize, max: usize) -> Invalid {
    Invalid {
        code: StatusCode::TooLarge,
        message: format!("{what} is {len} bytes, the limit is {max}"),
    }
}

fn at_most(what: &str, value: &str, max: usize) -> Result<(), Invalid> {
    if value.len() > max {
        return Err(too_large(what, value.len(), max));
    }
    Ok(())
}

/// Usernames: 3 to 32 bytes of `a-z 0-9 _ . -`, starting with a letter. ASCII
/// only, so that two names never look alike and no normalisation is needed.
pub fn username(name: &str) -> Result<(), Invalid> {
    if name.len() < USERNAME_BYTES_MIN || name.len() > USERNAME_BYTES_MAX {
        return Err(bad(format!(
            "a username has {USERNAME_BYTES_MIN} to {USERNAME_BYTES_MAX} characters"
        )));
    }
    let mut chars = name.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_lowercase()) {
        return Err(bad("a username starts with a lowercase letter"));
    }
    if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'))
    {
        return Err(bad("a username has only a-z, 0-9, '_', '.' and '-'"));
    }
    Ok(())
}

pub fn password(password: &str) -> Result<(), Invalid> {
    if password.len() < PASSWORD_BYTES_MIN {
        return Err(bad(format!(
            "a password has at least {PASSWORD_BYTES_MIN} bytes"
        )));
    }
    at_most("password", password, PASSWORD_BYTES_MAX)
}

pub fn device_id(device_id: &str) -> Result<(), Invalid> {
    if device_id.is_empty() {
        return Err(bad("device id is empty"));
    }
    at_most("device id", device_id, DEVICE_ID_BYTES_MAX)
}

pub fn send(send: &Send) -> Result<(), Invalid> {
    content(&send.content)?;
    if send.extras.len() > EXTRAS_ENTRIES_MAX {
        return Err(too_large(
            "extras (entries)",
            send.extras.len(),
            EXTRAS_ENTRIES_MAX,
        ));
    }
    let extras_bytes: usize = send.extras.iter().map(|(k, v)| k.len() + v.len()).sum();
    if extras_bytes > EXTRAS_BYTES_MAX {
        return Err(too_large("extras", extras_bytes, EXTRAS_BYTES_MAX));
    }
    Ok(())
}

pub fn content(content: &Content) -> Result<(), Invalid> {
    match content {
        Content::Text { text } => {
            if text.is_empty() {
                return Err(bad("text is empty"));
            }
            at_most("text", text, TEXT_BYTES_MAX)
        }
        Content::Image { url, .. } | Content::Voice { url, .. } => url_rule(url),
        Content::Video {
            url, thumbnail_url, ..
        } => {
            url_rule(url)?;
            at_most("thumbnail url", thumbnail_url, URL_BYTES_MAX)
        }
        Content::File {
            url,
            name,
            mime_type,
            ..
        } => {
            url_rule(url)?;
            at_most("file name", name, LABEL_BYTES_MAX)?;
            at_most("mime type", mime_type, LABEL_BYTES_MAX)
        }
        Content::Location {
            latitude,
            longitude,
            label,
        } => {
            if !(-90.0..=90.0).contains(latitude) || !(-180.0..=180.0).contains(longitude) {
                return Err(bad("latitude or longitude out of range"));
            }
            at_most("location label", label, LABEL_BYTES_MAX)
        }
        Content::Custom { kind, data } => {
            if kind.is_empty() {
                return Err(bad("custom kind is empty"));
            }
            at_most("custom kind", kind, LABEL_BYTES_MAX)?;
            if data.len() > CUSTOM_DATA_BYTES_MAX {
                return Err(too_large("custom data", data.len(), CUSTOM_DATA_BYTES_MAX));
            }
            Ok(())
        }
        Content::Recalled { .. } | Content::GroupEvent { .. } => Err(bad(
            "recalled and group-event contents are written by the server only",
        )),
    }
}

fn url_rule(url: &str) -> Result<(), Invalid> {
    if url.is_empty() {
        return Err(bad("url is empty"));
    }
    at_most("url", url, URL_BYTES_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert!(username("alice").is_ok());
        assert!(username("a.b-c_9").is_ok());
        assert_eq!(username("al").unwrap_err().code, StatusCode::BadBody);
        assert!(username("Alice").is_err());
        assert!(username("9lives").is_err());
        assert!(username("ali ce").is_err());
        assert!(username("álice").is_err());
        assert!(username(&"a".repeat(33)).is_err());
    }

    #[test]
    fn contents() {
        let text = |t: &str| Content::Text {
            text: t.to_string(),
        };
        assert!(content(&text("hi")).is_ok());
        assert_eq!(content(&text("")).unwrap_err().code, StatusCode::BadBody);
        assert_eq!(
            content(&text(&"x".repeat(TEXT_BYTES_MAX + 1)))
                .unwrap_err()
                .code,
            StatusCode::TooLarge
        );
        assert!(content(&Content::Recalled { seq: 1 }).is_err());
        let nan = Content::Location {
            latitude: f64::NAN,
            longitude: 0.0,
            label: String::new(),
        };
        assert!(content(&nan).is_err());
    }
}
