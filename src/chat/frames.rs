//! Encoding the server's frames once, in plaintext, to share among shards.

use bytes::{Bytes, BytesMut};

use crate::protocol::cipher::NoCipher;
use crate::protocol::frame::{self, VERSION_MAX};
use crate::protocol::{Body, Command, ErrorReply, StatusCode};

const SMALL_FRAME_BYTES: usize = 96;

/// Encodes a server frame. Server bodies are sized by the server itself
/// (pages stop well below the payload ceiling), so failure is a bug: it is
/// logged and turned into an `internal` error frame rather than a panic.
pub fn encode(request_id: u32, body: &Body) -> Bytes {
    // Most server frames (acks, receipts, errors) fit: one allocation, no
    // regrowth.
    let mut out = BytesMut::with_capacity(SMALL_FRAME_BYTES);
    match frame::encode_frame(
        &mut out,
        VERSION_MAX,
        request_id,
        body,
        &mut NoCipher,
        crate::limits::PAYLOAD_LEN_CEILING,
    ) {
        Ok(()) => out.freeze(),
        Err(e) => {
            log::error!("cannot encode {}: {e}", body.command().name());
            error(
                request_id,
                StatusCode::Internal,
                "response could not be encoded",
                false,
            )
        }
    }
}

pub fn error(request_id: u32, code: StatusCode, message: &str, closing: bool) -> Bytes {
    let body = Body::Error(ErrorReply {
        code: code as u16,
        closing,
        message: message.to_string(),
    });
    let mut out = BytesMut::with_capacity(SMALL_FRAME_BYTES);
    // An error body is a u16, a bool and a short string: it always encodes.
    match frame::encode_frame(
        &mut out,
        VERSION_MAX,
        request_id,
        &body,
        &mut NoCipher,
        u32::MAX,
    ) {
        Ok(()) => out.freeze(),
        Err(_) => Bytes::new(),
    }
}

/// A frame whose payload is already encoded: a stored message (a push shares
/// its stored bytes) or a page assembled from stored messages.
pub fn raw(request_id: u32, command: Command, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(frame::FRAME_OVERHEAD + payload.len());
    match frame::encode_raw_frame(
        &mut out,
        VERSION_MAX,
        request_id,
        command as u16,
        payload,
        &mut NoCipher,
        crate::limits::PAYLOAD_LEN_CEILING,
    ) {
        Ok(()) => out.freeze(),
        Err(e) => {
            log::error!("cannot frame {}: {e}", command.name());
            error(
                request_id,
                StatusCode::Internal,
                "response could not be encoded",
                false,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::limits::{MESSAGE_FRAMING_BYTES_MAX, PAGE_FRAMING_BYTES_MAX, PAGE_MESSAGES_MAX};
    use crate::protocol::cipher::{ChaChaCipher, PayloadCipher, Role};
    use crate::protocol::*;

    fn len<T: serde::Serialize>(value: &T) -> usize {
        body_codec::encode_to_vec(value).expect("encodes").len()
    }

    /// The framing limits against real encodings at their extremes: a send
    /// with its smallest fixed fields becomes a stored message with its
    /// largest, inside a conversation summary with its largest, inside a
    /// full page of an encrypted connection.
    #[test]
    fn a_message_s_frames_stay_within_the_framing_limits() {
        let content = Content::Text {
            text: "t".repeat(1000),
        };
        let extras: BTreeMap<String, String> = [("k".to_string(), "v".repeat(100))].into();
        let send = Send {
            client_message_id: u64::MAX,
            to: Target::User(0),
            content: content.clone(),
            extras: extras.clone(),
        };
        let message = Message {
            conversation_id: u64::MAX,
            seq: u64::MAX,
            message_id: u64::MAX,
            sender_id: u64::MAX,
            client_message_id: u64::MAX,
            server_time_ms: u64::MAX,
            content,
            extras,
        };
        let summary = ConversationSummary {
            conversation_id: u64::MAX,
            kind: ConversationKind::Direct { peer_id: u64::MAX },
            last_seq: u64::MAX,
            read_seq: u64::MAX,
            unread_count: u64::MAX,
            pinned: true,
            muted: true,
            last_message: Some(message.clone()),
        };
        let tag = ChaChaCipher::derive(&[7; 32], &[1; 16], &[2; 16], Role::Server).overhead();
        let full = PAGE_MESSAGES_MAX as usize;
        let page = HistoryPage {
            messages: vec![message.clone(); full],
            more: true,
        };
        let page_framing = len(&page) - full * len(&message) + tag;
        let list = ConversationListPage {
            conversations: vec![summary.clone(); full],
            more: true,
        };
        let list_framing = len(&list) - full * len(&summary) + tag;
        assert!(
            page_framing.max(list_framing) <= PAGE_FRAMING_BYTES_MAX,
            "{page_framing} {list_framing}"
        );
        let growth = len(&summary) - len(&send);
        assert!(
            growth + PAGE_FRAMING_BYTES_MAX <= MESSAGE_FRAMING_BYTES_MAX,
            "a summary is {growth} bytes longer than its send"
        );
        assert!(len(&message) <= len(&summary));
    }
}
