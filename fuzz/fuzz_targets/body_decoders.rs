//! Fuzzes every body decoder, and the encoder on whatever decodes.
//!
//! Input layout:
//!
//! ```text
//! bytes 0..2  big-endian index into Command::ALL (modulo its length)
//! bytes 2..   the payload handed to Body::decode
//! ```
//!
//! `Body::decode` must return `Ok` or `Err`, never panic or allocate beyond
//! the payload's claim limit. When it decodes, the body is encoded into a
//! frame with `encode_frame` (`NoCipher`), the frame is decoded and opened
//! again, and the second body must equal the first (`PartialEq`; skipped when
//! the body holds a NaN, which is never equal to itself) and must re-encode
//! to the same bytes (encoding is deterministic, NaN or not).
#![no_main]

use bytes::BytesMut;
use gust::limits::PAYLOAD_LEN_CEILING;
use gust::protocol::cipher::NoCipher;
use gust::protocol::frame::{encode_frame, FrameDecoder, FRAME_OVERHEAD, HEADER_LEN};
use gust::protocol::{Body, Command};
use libfuzzer_sys::fuzz_target;

fn encode(body: &Body, request_id: u32) -> BytesMut {
    let mut out = BytesMut::new();
    encode_frame(&mut out, 1, request_id, body, &mut NoCipher, PAYLOAD_LEN_CEILING)
        .unwrap_or_else(|e| panic!("a decoded body does not encode: {e:?}\n{body:?}"));
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((selector, payload)) = data.split_first_chunk::<2>() else {
        return;
    };
    let command = Command::ALL[u16::from_be_bytes(*selector) as usize % Command::ALL.len()];
    let Ok(body) = Body::decode(command, payload) else {
        return;
    };
    assert_eq!(body.command(), command);

    let request_id = u32::from_be_bytes([selector[0], selector[1], 0x5A, 0xA5]);
    let first = encode(&body, request_id);
    assert!(first.len() >= FRAME_OVERHEAD);
    // The encoder is canonical: never longer than what it decoded from.
    assert!(
        first.len() - FRAME_OVERHEAD <= payload.len(),
        "re-encoding grew the body from {} to {} bytes",
        payload.len(),
        first.len() - FRAME_OVERHEAD
    );

    let mut buf = first.clone();
    let mut decoder = FrameDecoder::new(PAYLOAD_LEN_CEILING);
    decoder.require_version(1);
    let mut frame = decoder
        .decode(&mut buf)
        .expect("own frame decodes")
        .expect("own frame is whole");
    assert!(buf.is_empty(), "frame left {} bytes behind", buf.len());
    assert_eq!(frame.header.command, command as u16);
    assert_eq!(frame.header.request_id, request_id);
    assert_eq!(frame.header.payload_len as usize, first.len() - FRAME_OVERHEAD);
    let plaintext = frame.open(&mut NoCipher).expect("NoCipher opens");
    assert_eq!(plaintext, &first[HEADER_LEN..first.len() - 4]);
    let again = Body::decode(command, plaintext)
        .unwrap_or_else(|e| panic!("re-encoded body does not decode: {e:?}\n{body:?}"));

    if !format!("{body:?}").contains("NaN") {
        assert_eq!(again, body, "round trip changed the body");
    }
    assert_eq!(encode(&again, request_id), first, "encoding is not deterministic");
});
