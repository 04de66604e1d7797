//! Fuzzes a whole encrypted exchange: body -> sealed frame -> bytes -> frame
//! -> opened body, then tampering.
//!
//! Input layout:
//!
//! ```text
//! bytes 0..2    big-endian index into Command::ALL (modulo its length)
//! bytes 2..6    request id (big-endian)
//! byte  6       key seed: the connection key is seed, seed+1, ..., seed+31
//! bytes 7..9    position of the tampered byte (big-endian, modulo the frame)
//! byte  9       XOR mask for that byte (0 becomes 0x01)
//! byte  10      bit 0: 0 = flip only (the CRC should catch it),
//!                      1 = flip and recompute the CRC (only the header
//!                          checks or the AEAD can catch it; the CRC is not
//!                          fixed when the flip hits the length or the CRC)
//! bytes 11..    payload for Body::decode
//! ```
//!
//! When the payload decodes, the body is sealed twice with a
//! `ChaChaCipher` of role `Client` (frames at counter 0 and 1) and the stream
//! is decoded by a `FrameDecoder` (version 1 required) and opened with a
//! `ChaChaCipher` of role `Server`, as the server does:
//! - the first frame must give back the request id and the body (`PartialEq`
//!   unless the body holds a NaN; its re-encoding must match byte for byte);
//! - the second frame has one byte flipped: decoding must end in a
//!   `FrameError`, a `CipherError`, or (only when the length field grew) a
//!   wait for more bytes; it must never yield a body.
#![no_main]

use bytes::BytesMut;
use gust::limits::PAYLOAD_LEN_DEFAULT;
use gust::protocol::cipher::{ChaChaCipher, NoCipher, Role};
use gust::protocol::frame::{encode_frame, FrameDecoder, CRC_LEN, FRAME_OVERHEAD};
use gust::protocol::{Body, Command};
use libfuzzer_sys::fuzz_target;

const PREFIX: usize = 11;
/// Bytes 10..14 of the header: the payload length.
const LEN_FIELD: std::ops::Range<usize> = 10..14;

fn plain_bytes(body: &Body) -> Vec<u8> {
    let mut out = BytesMut::new();
    body.encode_into(&mut out).expect("body encodes");
    out.to_vec()
}

fuzz_target!(|data: &[u8]| {
    if data.len() < PREFIX {
        return;
    }
    let command = Command::ALL[u16::from_be_bytes([data[0], data[1]]) as usize % Command::ALL.len()];
    let request_id = u32::from_be_bytes([data[2], data[3], data[4], data[5]]);
    let mut key = [0u8; 32];
    for (i, k) in key.iter_mut().enumerate() {
        *k = data[6].wrapping_add(i as u8);
    }
    let flip_at = u16::from_be_bytes([data[7], data[8]]) as usize;
    let mask = if data[9] == 0 { 0x01 } else { data[9] };
    let fix_crc = data[10] & 1 == 1;
    let payload = &data[PREFIX..];

    let Ok(body) = Body::decode(command, payload) else {
        return;
    };

    // Client side: two frames, counters 0 and 1.
    let mut sealer = ChaChaCipher::from_key(&key, Role::Client);
    let mut wire = BytesMut::new();
    for _ in 0..2 {
        encode_frame(&mut wire, 1, request_id, &body, &mut sealer, PAYLOAD_LEN_DEFAULT)
            .unwrap_or_else(|e| panic!("a decoded body does not seal: {e:?}\n{body:?}"));
    }
    assert_eq!(wire.len() % 2, 0);
    let frame_len = wire.len() / 2;
    let plain = plain_bytes(&body);
    assert_eq!(frame_len, FRAME_OVERHEAD + plain.len() + 16, "tag overhead");

    // Tamper with the second frame.
    let at = frame_len + flip_at % frame_len;
    let in_crc = at >= wire.len() - CRC_LEN;
    wire[at] ^= mask;
    let fixed = fix_crc && !in_crc && !LEN_FIELD.contains(&(at - frame_len));
    if fixed {
        let crc_at = wire.len() - CRC_LEN;
        let crc = crc32fast::hash(&wire[frame_len..crc_at]);
        wire[crc_at..].copy_from_slice(&crc.to_be_bytes());
    }

    // Server side.
    let mut opener = ChaChaCipher::from_key(&key, Role::Server);
    let mut decoder = FrameDecoder::new(PAYLOAD_LEN_DEFAULT);
    decoder.require_version(1);

    let mut frame = decoder
        .decode(&mut wire)
        .expect("first frame decodes")
        .expect("first frame is whole");
    assert_eq!(frame.header.request_id, request_id);
    assert_eq!(frame.header.command, command as u16);
    assert_eq!(frame.header.cipher_id, 1);
    // NoCipher must refuse a sealed frame before touching it.
    assert!(frame.open(&mut NoCipher).is_err(), "NoCipher opened a sealed frame");
    let plaintext = frame.open(&mut opener).expect("first frame opens").to_vec();
    assert_eq!(plaintext, plain, "opened plaintext differs from the encoding");
    let again = Body::decode(command, &plaintext).expect("opened body decodes");
    if !format!("{body:?}").contains("NaN") {
        assert_eq!(again, body, "round trip changed the body");
    }
    assert_eq!(plain_bytes(&again), plain, "encoding is not deterministic");

    match decoder.decode(&mut wire) {
        Err(_) => {}
        Ok(None) => {
            let rel = at - frame_len;
            assert!(
                LEN_FIELD.contains(&rel),
                "tampered frame (byte {rel} ^ {mask:#04x}) left the decoder waiting"
            );
        }
        Ok(Some(mut tampered)) => {
            let rel = at - frame_len;
            if let Ok(opened) = tampered.open(&mut opener) {
                let opened = opened.to_vec();
                let decoded = Command::from_u16(tampered.header.command).map(|c| Body::decode(c, &opened));
                panic!(
                    "tampered frame (byte {rel} ^ {mask:#04x}, crc fixed: {fixed}) was accepted: \
                     header {:?}, body {decoded:?}",
                    tampered.header
                );
            }
        }
    }
});
