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
