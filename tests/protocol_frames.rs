//! The frame layer, its ciphers and its error paths, one property per test.
//!
//! Everything here is sans-I/O: bytes go into `FrameDecoder`, frames and
//! errors come out. Frames are built either with `encode_frame` or by hand
//! (`raw_frame`) when a test needs a header the encoder would never write.
//!
//! Two tests below are regressions of defects these tests found (a doubling
//! read buffer, and list preallocation from a hostile length prefix).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use gust::limits::{PAYLOAD_LEN_CEILING, PAYLOAD_LEN_DEFAULT, PAYLOAD_LEN_FLOOR};
use gust::protocol::cipher::{
    negotiate, ChaChaCipher, NoCipher, PayloadCipher, Role, CIPHER_CHACHA20_POLY1305, CIPHER_NONE,
    CONNECTION_NONCE_LEN, PSK_LEN,
};
use gust::protocol::frame::{CRC_LEN, FRAME_OVERHEAD, HEADER_LEN, MAGIC, VERSION_MAX};
use gust::protocol::*;

// ---------------------------------------------------------------- allocation probe

/// Counts the bytes allocated by the current thread, so a test can measure
/// what one call allocates while other tests run on other threads.
struct CountingAllocator;

thread_local! {
    static LIVE_BYTES: Cell<isize> = const { Cell::new(0) };
    static PEAK_BYTES: Cell<isize> = const { Cell::new(0) };
}

fn note_allocation(delta: isize) {
    let _ = LIVE_BYTES.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK_BYTES.try_with(|peak| {
            if now > peak.get() {
                peak.set(now);
            }
        });
    });
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            note_allocation(layout.size() as isize);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            note_allocation(layout.size() as isize);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        note_allocation(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_ptr = unsafe { System.realloc(ptr, layout, new_size) };
        if !new_ptr.is_null() {
            note_allocation(new_size as isize - layout.size() as isize);
        }
        new_ptr
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Runs `f` and returns its result with the peak number of bytes this thread
/// had allocated on top of what was live when `f` started.
fn peak_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let start = LIVE_BYTES.with(Cell::get);
    PEAK_BYTES.with(|peak| peak.set(start));
    let result = f();
    let peak = PEAK_BYTES.with(Cell::get);
    (result, (peak - start).max(0) as usize)
}

// ---------------------------------------------------------------- helpers

const VERSION: u8 = 1;
const PSK: [u8; PSK_LEN] = [0x5A; PSK_LEN];
const CLIENT_NONCE: [u8; CONNECTION_NONCE_LEN] = [0x11; CONNECTION_NONCE_LEN];
const SERVER_NONCE: [u8; CONNECTION_NONCE_LEN] = [0x22; CONNECTION_NONCE_LEN];

fn extras() -> BTreeMap<String, String> {
    let mut extras = BTreeMap::new();
    extras.insert("lang".to_string(), "en".to_string());
    extras.insert("ключ".to_string(), "値 🦀".to_string());
    extras
}

/// A few bodies of different shapes, including an empty payload (logout).
fn sample_bodies() -> Vec<Body> {
    vec![
        Body::Logout(Logout {}),
        Body::Ping(Ping {
            nonce: 0x0102_0304_0506,
        }),
        Body::Hello(Hello {
            version_min: 1,
            version_max: 1,
            cipher: CIPHER_CHACHA20_POLY1305,
            client_nonce: CLIENT_NONCE.to_vec(),
            agent: "gust-test/0.1".to_string(),
        }),
        Body::Send(Send {
            client_message_id: 77,
            to: Target::User(42),
            content: Content::Text {
                text: "héllo, 世界 👋".to_string(),
            },
            extras: extras(),
        }),
        Body::Error(ErrorReply {
            code: StatusCode::BadBody as u16,
            closing: false,
            message: "bad body".to_string(),
        }),
    ]
}

fn chacha(role: Role) -> ChaChaCipher {
    ChaChaCipher::derive(&PSK, &CLIENT_NONCE, &SERVER_NONCE, role)
}

/// One encoded frame (default payload limit).
fn encode(request_id: u32, body: &Body, cipher: &mut dyn PayloadCipher) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame(
        &mut out,
        VERSION,
        request_id,
        body,
        cipher,
        PAYLOAD_LEN_DEFAULT,
    )
    .expect("sample body encodes");
    out.to_vec()
}

/// A frame built by hand: any header, any payload, a correct CRC.
fn raw_frame(version: u8, flags: u8, command: u16, request_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(FRAME_OVERHEAD + payload.len());
    frame.extend_from_slice(&MAGIC);
    frame.push(version);
    frame.push(flags);
    frame.extend_from_slice(&command.to_be_bytes());
    frame.extend_from_slice(&request_id.to_be_bytes());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    let crc = crc32fast::hash(&frame);
    frame.extend_from_slice(&crc.to_be_bytes());
    frame
}

/// Just a header (no payload, no trailer), as the first bytes of a frame.
fn raw_header(version: u8, flags: u8, command: u16, payload_len: u32) -> Vec<u8> {
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(&MAGIC);
    header.push(version);
    header.push(flags);
    header.extend_from_slice(&command.to_be_bytes());
    header.extend_from_slice(&1u32.to_be_bytes());
    header.extend_from_slice(&payload_len.to_be_bytes());
    header
}

/// Rewrites the CRC trailer of a whole frame after a deliberate edit, so that
/// the edit reaches the layer under test instead of failing the checksum.
fn fix_crc(frame: &mut [u8]) {
    let body_end = frame.len() - CRC_LEN;
    let crc = crc32fast::hash(&frame[..body_end]);
    frame[body_end..].copy_from_slice(&crc.to_be_bytes());
}

/// Decodes exactly one whole frame from `wire`, which must hold nothing else.
fn decode_one(wire: &[u8]) -> RawFrame {
    let mut buf = BytesMut::from(wire);
    let frame = FrameDecoder::new(PAYLOAD_LEN_DEFAULT)
        .decode(&mut buf)
        .expect("a valid frame")
        .expect("a whole frame");
    assert!(buf.is_empty(), "{} bytes left after one frame", buf.len());
    frame
}

/// Decodes, opens and parses one whole frame.
fn open_body(wire: &[u8], cipher: &mut dyn PayloadCipher) -> Result<(u32, Body), CipherError> {
    let mut frame = decode_one(wire);
    let request_id = frame.header.request_id;
    let command = Command::from_u16(frame.header.command).expect("known command");
    let plaintext = frame.open(cipher)?;
    let body = Body::decode(command, plaintext).expect("body decodes");
    Ok((request_id, body))
}

/// Asserts that `frame` is the frame `wire` holds.
fn assert_same_frame(frame: &RawFrame, wire: &[u8]) {
    let header = FrameHeader::parse(wire[..HEADER_LEN].try_into().unwrap()).unwrap();
    assert_eq!(frame.header, header);
    assert_eq!(frame.header_bytes(), wire[..HEADER_LEN]);
    assert_eq!(frame.payload(), &wire[HEADER_LEN..wire.len() - CRC_LEN]);
}

fn varint_u64(value: u64) -> Vec<u8> {
    // bincode 2 standard config: < 251 in one byte, else a tag and LE bytes.
    match value {
        0..=250 => vec![value as u8],
        251..=0xFFFF => [&[251u8][..], &(value as u16).to_le_bytes()].concat(),
        0x1_0000..=0xFFFF_FFFF => [&[252u8][..], &(value as u32).to_le_bytes()].concat(),
        _ => [&[253u8][..], &value.to_le_bytes()].concat(),
    }
}

// ---------------------------------------------------------------- layout

#[test]
fn encoded_frame_has_the_documented_layout() {
    let mut out = BytesMut::new();
    let body = Body::Ping(Ping { nonce: 5 });
    encode_frame(
        &mut out,
        1,
        0x0102_0304,
        &body,
        &mut NoCipher,
        PAYLOAD_LEN_DEFAULT,
    )
    .unwrap();
    let expected_header = [
        0xA7, 0x47, // magic
        0x01, // version
        0x00, // flags: cipher none
        0x00, 0x09, // command ping
        0x01, 0x02, 0x03, 0x04, // request id
        0x00, 0x00, 0x00, 0x01, // payload length
    ];
    assert_eq!(out[..HEADER_LEN], expected_header);
    assert_eq!(out[HEADER_LEN], 5, "payload: varint nonce");
    let crc = crc32fast::hash(&out[..HEADER_LEN + 1]);
    assert_eq!(out[HEADER_LEN + 1..], crc.to_be_bytes());
    assert_eq!(out.len(), FRAME_OVERHEAD + 1);

    let header = FrameHeader::parse(out[..HEADER_LEN].try_into().unwrap()).unwrap();
    assert_eq!(
        header,
        FrameHeader {
            version: 1,
            cipher_id: CIPHER_NONE,
            command: Command::Ping as u16,
            request_id: 0x0102_0304,
            payload_len: 1,
        }
    );
    assert_eq!(header.to_bytes(), expected_header);
}

#[test]
fn encoded_chacha_frame_carries_cipher_id_and_tag_in_length() {
    let body = Body::Ping(Ping { nonce: 5 });
    let wire = encode(3, &body, &mut chacha(Role::Client));
    let frame = decode_one(&wire);
    assert_eq!(frame.header.cipher_id, CIPHER_CHACHA20_POLY1305);
    assert_eq!(
        wire[3], CIPHER_CHACHA20_POLY1305,
        "cipher id in the low flag bits"
    );
    assert_eq!(
        frame.header.payload_len as usize,
        1 + 16,
        "plaintext plus tag"
    );
    assert_eq!(frame.payload().len(), 17);
}

// ---------------------------------------------------------------- splitting

#[test]
fn frame_fed_one_byte_at_a_time_decodes_to_the_same_frame() {
    for body in sample_bodies() {
        for encrypted in [false, true] {
            let wire = if encrypted {
                encode(9, &body, &mut chacha(Role::Client))
            } else {
                encode(9, &body, &mut NoCipher)
            };
            let mut decoder = FrameDecoder::new(PAYLOAD_LEN_DEFAULT);
            let mut buf = BytesMut::new();
            let mut decoded = None;
            for (i, byte) in wire.iter().enumerate() {
                buf.extend_from_slice(&[*byte]);
                let got = decoder.decode(&mut buf).expect("a prefix of a valid frame");
                if i + 1 < wire.len() {
                    assert!(
                        got.is_none(),
                        "frame complete after {} of {} bytes",
                        i + 1,
                        wire.len()
                    );
                    assert_eq!(buf.len(), i + 1, "an incomplete frame is not consumed");
                } else {
                    decoded = got;
                }
            }
            let mut frame = decoded.expect("the last byte completes the frame");
            assert!(buf.is_empty());
            assert_same_frame(&frame, &wire);
            let plaintext = if encrypted {
                frame.open(&mut chacha(Role::Server)).unwrap().to_vec()
            } else {
                frame.open(&mut NoCipher).unwrap().to_vec()
            };
            assert_eq!(Body::decode(body.command(), &plaintext).unwrap(), body);
        }
    }
}

#[test]
fn frame_split_in_two_at_every_point_decodes_to_the_same_frame() {
    for body in sample_bodies() {
        let wire = encode(0xDEAD_BEEF, &body, &mut NoCipher);
        for split in 0..=wire.len() {
            let mut decoder = FrameDecoder::new(PAYLOAD_LEN_DEFAULT);
            let mut buf = BytesMut::from(&wire[..split]);
            let first = decoder.decode(&mut buf).expect("a prefix of a valid frame");
            if split < wire.len() {
                assert!(first.is_none(), "frame complete after {split} bytes");
                assert_eq!(buf.len(), split);
                buf.extend_from_slice(&wire[split..]);
                let frame = decoder.decode(&mut buf).unwrap().expect("whole frame");
                assert_same_frame(&frame, &wire);
            } else {
                assert_same_frame(&first.expect("whole frame"), &wire);
            }
            assert!(buf.is_empty(), "split {split}: {} bytes left", buf.len());
            assert!(decoder.decode(&mut buf).unwrap().is_none());
        }
    }
}

#[test]
fn frames_back_to_back_decode_in_order_and_empty_the_buffer() {
    let bodies = sample_bodies();
    let mut client = chacha(Role::Client);
    let mut wire = BytesMut::new();
    let mut frames = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let start = wire.len();
        encode_frame(
            &mut wire,
            VERSION,
            i as u32 + 100,
            body,
            &mut NoCipher,
            PAYLOAD_LEN_DEFAULT,
        )
        .unwrap();
        frames.push(wire[start..].to_vec());
        let start = wire.len();
        encode_frame(
            &mut wire,
            VERSION,
            i as u32 + 200,
            body,
            &mut client,
            PAYLOAD_LEN_DEFAULT,
        )
        .unwrap();
        frames.push(wire[start..].to_vec());
    }
    let stream = wire.to_vec();

    // All at once.
    let mut decoder = FrameDecoder::new(PAYLOAD_LEN_DEFAULT);
    let mut server = chacha(Role::Server);
    for (i, body) in bodies.iter().enumerate() {
        for (encrypted, expected_id) in [(false, i as u32 + 100), (true, i as u32 + 200)] {
            let mut frame = decoder.decode(&mut wire).unwrap().expect("next frame");
            assert_same_frame(&frame, &frames[2 * i + encrypted as usize]);
            assert_eq!(frame.header.request_id, expected_id);
            let plaintext = if encrypted {
                frame.open(&mut server).unwrap()
            } else {
                frame.open(&mut NoCipher).unwrap()
            };
            assert_eq!(&Body::decode(body.command(), plaintext).unwrap(), body);
        }
    }
    assert!(wire.is_empty(), "{} bytes left", wire.len());
    assert!(decoder.decode(&mut wire).unwrap().is_none());

    // The same stream one byte at a time.
    let mut buf = BytesMut::new();
    let mut seen = Vec::new();
    for byte in &stream {
        buf.extend_from_slice(&[*byte]);
        while let Some(frame) = decoder.decode(&mut buf).unwrap() {
            seen.push(frame);
        }
    }
    assert_eq!(seen.len(), frames.len());
    for (frame, wire) in seen.iter().zip(&frames) {
        assert_same_frame(frame, wire);
    }
    assert!(buf.is_empty());
}

#[test]
fn empty_buffer_needs_more() {
    let mut buf = BytesMut::new();
    assert!(FrameDecoder::new(PAYLOAD_LEN_DEFAULT)
        .decode(&mut buf)
        .unwrap()
        .is_none());
    assert_eq!(
        FrameDecoder::new(PAYLOAD_LEN_DEFAULT).peek_header(&[]),
        Ok(None)
    );
    assert_eq!(FrameDecoder::new(123).payload_len_max(), 123);
}

// ---------------------------------------------------------------- magic, flags, version

#[test]
fn bad_magic_in_a_whole_header_is_bad_frame() {
    let good = encode(1, &Body::Ping(Ping { nonce: 1 }), &mut NoCipher);
    for (index, replacement) in [(0usize, 0x16u8), (0, 0x47), (1, 0x00), (1, 0xA7)] {
        let mut bad = good.clone();
        bad[index] = replacement;
        let mut buf = BytesMut::from(&bad[..]);
        let err = FrameDecoder::new(PAYLOAD_LEN_DEFAULT)
            .decode(&mut buf)
            .unwrap_err();
        assert_eq!(err, FrameError::BadMagic([bad[0], bad[1]]));
        assert_eq!(err.status(), StatusCode::BadFrame);
        assert_eq!(buf.len(), bad.len(), "nothing consumed on error");
        let header: &[u8; HEADER_LEN] = bad[..HEADER_LEN].try_into().unwrap();
        assert_eq!(
            FrameHeader::parse(header),
            Err(FrameError::BadMagic([bad[0], bad[1]]))
        );
    }
}

#[test]
fn bad_magic_is_detected_from_the_first_byte_alone() {
    let decoder = FrameDecoder::new(PAYLOAD_LEN_DEFAULT);
    // TLS ClientHello, HTTP, an SSH banner, a NUL.
    for first in [0x16u8, b'G', b'S', 0x00, 0x47, 0xA6] {
        let mut buf = BytesMut::from(&[first][..]);
        let err = FrameDecoder::new(PAYLOAD_LEN_DEFAULT)
            .decode(&mut buf)
            .unwrap_err();
        assert_eq!(err, FrameError::BadMagic([first, 0]));
        assert_eq!(err.status(), StatusCode::BadFrame);
        assert_eq!(
            decoder.peek_header(&[first]),
            Err(FrameError::BadMagic([first, 0]))
        );
    }
    // Up to a whole header minus one byte: still refused at once.
    for prefix in [
        &b"GET / HTTP/1.1"[..HEADER_LEN - 1],
        &[0x16, 0x03, 0x01, 0x02, 0x00][..],
    ] {
        let mut buf = BytesMut::from(prefix);
        let err = FrameDecoder::new(PAYLOAD_LEN_DEFAULT)
            .decode(&mut buf)
            .unwrap_err();
        assert_eq!(err, FrameError::BadMagic([prefix[0], prefix[1]]));
    }
    // The right first byte alone is just "need more".
    assert_eq!(decoder.peek_header(&[MAGIC[0]]), Ok(None));
    assert_eq!(decoder.peek_header(&MAGIC), Ok(None));
}

#[test]
fn reserved_flag_bits_are_bad_frame() {
    for bit in 4..8 {
        for cipher_bits in [0x00u8, 0x01, 0x0F] {
            let flags = (1u8 << bit) | cipher_bits;
            let wire = raw_frame(VERSION, flags, Command::Ping as u16, 1, &[1]);
            let mut buf = BytesMut::from(&wire[..]);
            let err = FrameDecoder::new(PAYLOAD_LEN_DEFAULT)
                .decode(&mut buf)
                .unwrap_err();
            assert_eq!(err, FrameError::ReservedFlags(flags));
            assert_eq!(err.status(), StatusCode::BadFrame);
            // Known from the header alone.
            let decoder = FrameDecoder::new(PAYLOAD_LEN_DEFAULT);
            assert_eq!(
                decoder.peek_header(&wire[..HEADER_LEN]),
                Err(FrameError::ReservedFlags(flags))
            );
        }
    }
}

#[test]
fn every_cipher_id_passes_the_frame_layer() {
    // Whether the id is the connection's is the cipher's business (Mismatch).
    for cipher_id in 0..16u8 {
        let wire = raw_frame(VERSION, cipher_id, Command::Ping as u16, 1, &[0; 20]);
        assert_eq!(decode_one(&wire).header.cipher_id, cipher_id);
    }
}

#[test]
fn other_version_after_require_version_is_unsupported() {
    let v2 = raw_frame(2, 0, Command::Ping as u16, 1, &[1]);
    let v1 = raw_frame(1, 0, Command::Ping as u16, 1, &[1]);

    // Before hello nothing is required of the version.
    let mut decoder = FrameDecoder::new(PAYLOAD_LEN_DEFAULT);
    let mut buf = BytesMut::from(&v2[..]);
    assert_eq!(decoder.decode(&mut buf).unwrap().unwrap().header.version, 2);

    decoder.require_version(1);
    let mut buf = BytesMut::from(&v1[..]);
    assert_eq!(decoder.decode(&mut buf).unwrap().unwrap().header.version, 1);
    for version in [0u8, 2, VERSION_MAX + 1, 0xFF] {
        let wire = raw_frame(version, 0, Command::Ping as u16, 1, &[1]);
        let mut buf = BytesMut::from(&wire[..]);
        let err = decoder.decode(&mut buf).unwrap_err();
        assert_eq!(
            err,
            FrameError::UnsupportedVersion {
                got: version,
                expected: 1
            }
        );
        assert_eq!(err.status(), StatusCode::UnsupportedVersion);
        // Refused from the header alone, before the payload arrives.
        let mut header_only = BytesMut::from(&wire[..HEADER_LEN]);
        assert_eq!(decoder.decode(&mut header_only).unwrap_err(), err);
    }
}

// ---------------------------------------------------------------- length and memory

#[test]
fn payload_over_the_limit_is_too_large_and_nothing_is_reserved() {
    let limit = PAYLOAD_LEN_DEFAULT;
    for payload_len in [u32::MAX, limit + 1, PAYLOAD_LEN_CEILING] {
        let header = raw_header(VERSION, 0, Command::Send as u16, payload_len);
        let mut buf = BytesMut::from(&header[..]);
        let capacity = buf.capacity();
        let (result, allocated) = peak_allocation(|| {
            FrameDecoder::new(limit)
                .decode(&mut buf)
                .map(|f| f.is_some())
        });
        let err = result.unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                len: payload_len,
                max: limit
            }
        );
        assert_eq!(err.status(), StatusCode::TooLarge);
        assert_eq!(
            buf.capacity(),
            capacity,
            "no memory reserved for {payload_len} bytes"
        );
        assert_eq!(&buf[..], &header[..], "buffer untouched");
        assert!(allocated < 4096, "decode allocated {allocated} bytes");
    }
}

#[test]
fn payload_exactly_at_the_limit_is_accepted() {
    let limit = PAYLOAD_LEN_FLOOR;
    let wire = raw_frame(
        VERSION,
        0,
        Command::Ping as u16,
        1,
        &vec![7u8; limit as usize],
    );
    let mut buf = BytesMut::from(&wire[..]);
    let frame = FrameDecoder::new(limit).decode(&mut buf).unwrap().unwrap();
    assert_eq!(frame.payload().len(), limit as usize);
    let mut buf = BytesMut::from(&wire[..]);
    assert_eq!(
        FrameDecoder::new(limit - 1).decode(&mut buf).unwrap_err(),
        FrameError::TooLarge {
            len: limit,
            max: limit - 1
        }
    );
}

#[test]
fn partial_frame_with_only_its_header_reserves_the_frame_and_no_more() {
    let payload_len = 100_000u32;
    let frame_len = FRAME_OVERHEAD + payload_len as usize;
    let header = raw_header(VERSION, 0, Command::Send as u16, payload_len);
    for extra in [0usize, 1, 1000] {
        let mut buf = BytesMut::with_capacity(HEADER_LEN + extra);
        buf.extend_from_slice(&header);
        buf.extend_from_slice(&vec![0u8; extra]);
        let len = buf.len();
        assert!(FrameDecoder::new(PAYLOAD_LEN_DEFAULT)
            .decode(&mut buf)
            .unwrap()
            .is_none());
        assert_eq!(buf.len(), len, "nothing consumed");
        assert!(
            buf.capacity() >= frame_len,
            "room for the rest of the frame"
        );
        assert!(
            buf.capacity() <= frame_len,
            "reserved {} bytes for a {frame_len}-byte frame",
            buf.capacity()
        );
    }
    // A buffer that already has room is not grown.
    let mut buf = BytesMut::with_capacity(2 * frame_len);
    buf.extend_from_slice(&header);
    let capacity = buf.capacity();
    assert!(FrameDecoder::new(PAYLOAD_LEN_DEFAULT)
        .decode(&mut buf)
        .unwrap()
        .is_none());
    assert_eq!(buf.capacity(), capacity);
}

/// Regression: `BytesMut::reserve` may double the capacity, so a partial
/// frame could once cost twice the payload limit. The decoder now reserves
/// exactly the frame (`frame::reserve_exact`).
#[test]
fn partial_frame_never_grows_the_buffer_past_the_frame() {
    let limit = PAYLOAD_LEN_FLOOR;
    let wire = raw_frame(
        VERSION,
        0,
        Command::Ping as u16,
        1,
        &vec![0u8; limit as usize],
    );
    let decoder = FrameDecoder::new(limit);
    let mut too_big = Vec::new();
    for arrived in HEADER_LEN..wire.len() {
        let mut buf = BytesMut::with_capacity(arrived);
        buf.extend_from_slice(&wire[..arrived]);
        let before = buf.capacity();
        assert!(decoder.clone().decode(&mut buf).unwrap().is_none());
        assert!(buf.capacity() >= wire.len(), "room for the whole frame");
        if buf.capacity() > before.max(wire.len()) {
            too_big.push((arrived, buf.capacity()));
        }
    }
    let worst = too_big
        .iter()
        .max_by_key(|(_, capacity)| *capacity)
        .copied();
    assert!(
        too_big.is_empty(),
        "a {}-byte frame (limit {limit}) grew the read buffer past the frame at {} of {} split \
         points; worst: {} bytes arrived -> capacity {}",
        wire.len(),
        too_big.len(),
        wire.len() - HEADER_LEN,
        worst.unwrap().0,
        worst.unwrap().1,
    );
}

// ---------------------------------------------------------------- checksum

/// Every single-byte change of a valid frame (every byte, every xor mask) is
/// caught: never a frame with other content, never a panic. CRC-32 catches
/// every burst of up to 32 bits, so only a changed length may make the decoder
/// wait for more bytes.
#[test]
fn any_corrupted_byte_is_refused() {
    let bodies = [
        (Body::Ping(Ping { nonce: 1 }), false),
        (sample_bodies()[3].clone(), false),
        (sample_bodies()[3].clone(), true),
    ];
    for (body, encrypted) in bodies {
        let wire = if encrypted {
            encode(0x0A0B_0C0D, &body, &mut chacha(Role::Client))
        } else {
            encode(0x0A0B_0C0D, &body, &mut NoCipher)
        };
        for index in 0..wire.len() {
            for mask in 1..=255u8 {
                let mut bad = wire.clone();
                bad[index] ^= mask;
                let mut buf = BytesMut::from(&bad[..]);
                let mut decoder = FrameDecoder::new(PAYLOAD_LEN_DEFAULT);
                decoder.require_version(VERSION);
                let result = decoder.decode(&mut buf);
                let old_len = u32::from_be_bytes(wire[10..14].try_into().unwrap());
                let new_len = u32::from_be_bytes(bad[10..14].try_into().unwrap());
                let ok = match index {
                    0 | 1 => matches!(result, Err(FrameError::BadMagic(_))),
                    2 => matches!(result, Err(FrameError::UnsupportedVersion { .. })),
                    3 if mask & 0xF0 != 0 => matches!(result, Err(FrameError::ReservedFlags(_))),
                    10..=13 if new_len > PAYLOAD_LEN_DEFAULT => {
                        matches!(result, Err(FrameError::TooLarge { .. }))
                    }
                    // Longer but within the limit: wait for the rest.
                    10..=13 if new_len > old_len => matches!(result, Ok(None)),
                    _ => {
                        matches!(result, Err(FrameError::BadChecksum { got, computed }) if got != computed)
                    }
                };
                assert!(
                    ok,
                    "byte {index} ^ {mask:#04x} (encrypted {encrypted}): {result:?}"
                );
                if let Err(err) = result {
                    assert_ne!(err.status(), StatusCode::Ok);
                    assert_eq!(buf.len(), bad.len(), "nothing consumed on error");
                }
            }
        }
    }
}

#[test]
fn bad_checksum_reports_both_values() {
    let mut wire = encode(1, &Body::Ping(Ping { nonce: 1 }), &mut NoCipher);
    let crc_at = wire.len() - CRC_LEN;
    let computed = crc32fast::hash(&wire[..crc_at]);
    wire[crc_at..].copy_from_slice(&0xDEAD_BEEFu32.to_be_bytes());
    let mut buf = BytesMut::from(&wire[..]);
    let err = FrameDecoder::new(PAYLOAD_LEN_DEFAULT)
        .decode(&mut buf)
        .unwrap_err();
    assert_eq!(
        err,
        FrameError::BadChecksum {
            got: 0xDEAD_BEEF,
            computed
        }
    );
    assert_eq!(err.status(), StatusCode::BadChecksum);
}

// ---------------------------------------------------------------- commands and bodies

#[test]
fn unknown_command_is_a_valid_frame_and_a_per_request_error() {
    let known: HashSet<u16> = Command::ALL.iter().map(|c| *c as u16).collect();
    let mut buf = BytesMut::new();
    let unknown = [0x0000u16, 0x000E, 0x0100, 0x7777, 0xFFFF];
    for code in unknown {
        assert!(!known.contains(&code));
        buf.extend_from_slice(&raw_frame(VERSION, 0, code, code as u32, &[1, 2, 3]));
    }
    // The connection goes on: a valid frame follows the unknown ones.
    let ping = Body::Ping(Ping { nonce: 9 });
    buf.extend_from_slice(&encode(42, &ping, &mut NoCipher));

    let mut decoder = FrameDecoder::new(PAYLOAD_LEN_DEFAULT);
    decoder.require_version(VERSION);
    for code in unknown {
        let frame = decoder.decode(&mut buf).unwrap().expect("frame decodes");
        assert_eq!(frame.header.command, code);
        assert_eq!(frame.header.request_id, code as u32);
        assert_eq!(frame.payload(), &[1, 2, 3]);
        assert_eq!(Command::from_u16(code), None);
    }
    let mut frame = decoder.decode(&mut buf).unwrap().expect("next frame");
    assert_eq!(frame.header.request_id, 42);
    assert_eq!(
        Body::decode(Command::Ping, frame.open(&mut NoCipher).unwrap()),
        Ok(ping)
    );
    assert!(buf.is_empty());
}

fn assert_malformed(command: Command, payload: &[u8]) {
    match Body::decode(command, payload) {
        Err(BodyError::Malformed(message)) => assert!(!message.is_empty()),
        other => panic!("{command:?} {payload:02x?}: expected Malformed, got {other:?}"),
    }
}

#[test]
fn garbage_payload_for_a_known_command_is_malformed() {
    // Nothing where a u64 is due.
    assert_malformed(Command::Ping, &[]);
    // A varint tag announcing 8 bytes, then 2.
    assert_malformed(Command::Ping, &[253, 1, 2]);
    // Varint tags: 251 u16, 252 u32, 253 u64, 254 u128; 255 is no tag at all.
    assert_malformed(
        Command::Ping,
        &[255, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    );
    // GoingAway reason 4 does not exist (Shutdown, Idle, Replaced, Revoked).
    assert_malformed(Command::GoingAway, &[4, 0]);
    // A bool that is neither 0 nor 1.
    assert_malformed(Command::Error, &[5, 2, 0]);
    // Invalid UTF-8 in hello's agent (after three u8 and an empty nonce).
    assert_malformed(Command::Hello, &[1, 1, 0, 0, 2, 0xC3, 0x28]);
    // A string length longer than the payload.
    assert_malformed(Command::Register, &[10, b'a', b'b']);
    // Target variant 2 does not exist (User, Conversation).
    assert_malformed(Command::Send, &[1, 2, 1, 0, 0, 0]);
    // Content variant 9 does not exist (Text .. GroupEvent).
    assert_malformed(Command::Send, &[1, 0, 1, 9, 0, 0]);
    // Option<Message> tag 2.
    assert_malformed(
        Command::ConversationListPage,
        &[1, 1, 1, 1, 1, 1, 0, 0, 2, 0],
    );
    // Every command refuses a payload of 0xFF bytes (no body starts or ends so)
    // and every command with a field refuses an empty payload.
    for command in Command::ALL {
        let empty_ok = matches!(command, Command::Logout | Command::Ok);
        if !empty_ok {
            assert_malformed(*command, &[]);
        }
        assert!(Body::decode(*command, &[0xFF; 3]).is_err(), "{command:?}");
    }
}

#[test]
fn trailing_bytes_after_a_valid_body_are_refused() {
    assert_eq!(
        Body::decode(Command::Ping, &[1]),
        Ok(Body::Ping(Ping { nonce: 1 }))
    );
    assert_eq!(
        Body::decode(Command::Ping, &[1, 0, 0, 0]),
        Err(BodyError::TrailingBytes(3))
    );
    assert_eq!(
        Body::decode(Command::Logout, &[]),
        Ok(Body::Logout(Logout {}))
    );
    assert_eq!(
        Body::decode(Command::Logout, &[0]),
        Err(BodyError::TrailingBytes(1))
    );
    assert_eq!(
        Body::decode(Command::Ok, &[1, 2]),
        Err(BodyError::TrailingBytes(2))
    );
    for body in sample_bodies() {
        let mut payload = BytesMut::new();
        body.encode_into(&mut payload).unwrap();
        assert_eq!(Body::decode(body.command(), &payload), Ok(body.clone()));
        for extra in 1..4 {
            let mut longer = payload.to_vec();
            longer.extend(std::iter::repeat_n(0u8, extra));
            assert_eq!(
                Body::decode(body.command(), &longer),
                Err(BodyError::TrailingBytes(extra)),
                "{:?}",
                body.command()
            );
        }
    }
}

#[test]
fn bad_body_inside_a_good_frame_does_not_lose_framing() {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&raw_frame(VERSION, 0, Command::Send as u16, 5, &[0xFF; 12]));
    let ping = Body::Ping(Ping { nonce: 3 });
    buf.extend_from_slice(&encode(6, &ping, &mut NoCipher));
    let mut decoder = FrameDecoder::new(PAYLOAD_LEN_DEFAULT);
    let mut frame = decoder.decode(&mut buf).unwrap().unwrap();
    let command = Command::from_u16(frame.header.command).unwrap();
    assert!(matches!(
        Body::decode(command, frame.open(&mut NoCipher).unwrap()),
        Err(BodyError::Malformed(_))
    ));
    let mut frame = decoder.decode(&mut buf).unwrap().unwrap();
    assert_eq!(
        Body::decode(Command::Ping, frame.open(&mut NoCipher).unwrap()),
        Ok(ping)
    );
    assert!(buf.is_empty());
}

/// Payloads whose first length-prefixed field claims `claim` bytes or
/// elements, padded to at least 20 bytes.
fn hostile_payloads(claim: u64) -> Vec<(Command, &'static str, Vec<u8>)> {
    let cases: [(Command, &str, &[u8]); 15] = [
        (Command::Register, "username (string)", &[]),
        (Command::Login, "username (string)", &[]),
        (Command::Hello, "agent (string)", &[1, 1, 0, 0]),
        (Command::GroupCreate, "name (string)", &[]),
        // Send: id 1, Target::User(1), Content::Text, then the text.
        (Command::Send, "content text (string)", &[1, 0, 1, 0]),
        // Send: ..., Content::Text(""), then the extras map.
        (Command::Send, "extras (map)", &[1, 0, 1, 0, 0]),
        (Command::UserLookup, "users (list of enums)", &[]),
        (Command::Hello, "client_nonce (bytes)", &[1, 1, 0]),
        (Command::Resume, "session_token (bytes)", &[]),
        // Send: ..., Content::Custom { kind: "", data }.
        (Command::Send, "custom data (bytes)", &[1, 0, 1, 6, 0]),
        (Command::PresenceSubscribe, "users (list of u64)", &[]),
        (Command::GroupCreate, "members (list of u64)", &[0]),
        (Command::Sync, "cursors (list of structs)", &[]),
        (Command::SyncPage, "messages (list of messages)", &[]),
        (Command::ConversationListPage, "conversations (list)", &[]),
    ];
    cases
        .into_iter()
        .map(|(command, field, prefix)| {
            let mut payload = prefix.to_vec();
            payload.extend_from_slice(&varint_u64(claim));
            if payload.len() < 20 {
                payload.resize(20, 0);
            }
            (command, field, payload)
        })
        .collect()
}

fn is_string_field(field: &str) -> bool {
    field.ends_with("(string)") || field.ends_with("(map)")
}

#[test]
fn hostile_length_prefix_inside_a_body_fails_quickly() {
    let started = Instant::now();
    for claim in [1u64 << 60, u64::MAX, 1 << 32, 1_000_000, 100] {
        for (command, field, payload) in hostile_payloads(claim) {
            let result = Body::decode(command, &payload);
            assert!(
                matches!(result, Err(BodyError::Malformed(_))),
                "{command:?}.{field} claiming {claim} in {} bytes: {result:?}",
                payload.len()
            );
        }
    }
    // The Register case of the brief, spelled out: 20 bytes, 2^60 claimed.
    let mut payload = vec![0xFD, 0, 0, 0, 0, 0, 0, 0, 0x10];
    payload.resize(20, b'a');
    assert!(matches!(
        Body::decode(Command::Register, &payload),
        Err(BodyError::Malformed(_))
    ));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

/// Strings and map keys claim their bytes against bincode's limit before
/// anything is allocated (body_codec.rs).
#[test]
fn hostile_string_length_fails_before_allocating() {
    for claim in [1u64 << 60, u64::MAX, 1 << 32] {
        for (command, field, payload) in hostile_payloads(claim) {
            if !is_string_field(field) {
                continue;
            }
            let (result, allocated) = peak_allocation(|| Body::decode(command, &payload));
            assert!(result.is_err());
            assert!(
                allocated < 16 * 1024,
                "{command:?}.{field} claiming {claim}: {allocated} bytes allocated"
            );
        }
    }
}

/// Regression: serde's `Vec` preallocates up to 1 MiB from a length prefix
/// alone, which bincode's claim limit never sees; every list field now decodes
/// through `body_codec::bounded_vec`, so a hostile prefix costs almost nothing.
#[test]
fn hostile_byte_array_or_list_length_fails_before_allocating() {
    let mut offenders = Vec::new();
    for (command, field, payload) in hostile_payloads(1 << 60) {
        if is_string_field(field) {
            continue;
        }
        let (result, allocated) = peak_allocation(|| Body::decode(command, &payload));
        assert!(result.is_err());
        if allocated >= 16 * 1024 {
            offenders.push(format!("{command:?}.{field}: {allocated} bytes"));
        }
    }
    assert!(
        offenders.is_empty(),
        "a 2^60 length prefix in a 20-byte payload allocated before failing:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn large_valid_bodies_decode_at_every_size_tier() {
    // body_codec picks its claim limit by payload size (64 KiB, 1 MiB, above).
    for size in [60_000usize, 70_000, 1_000_000, 1_100_000, 3_000_000] {
        let body = Body::Send(Send {
            client_message_id: 1,
            to: Target::Conversation(2),
            content: Content::Text {
                text: "ü".repeat(size / 2),
            },
            extras: extras(),
        });
        let mut out = BytesMut::new();
        encode_frame(
            &mut out,
            VERSION,
            1,
            &body,
            &mut NoCipher,
            PAYLOAD_LEN_CEILING,
        )
        .unwrap();
        let mut decoder = FrameDecoder::new(PAYLOAD_LEN_CEILING);
        let mut frame = decoder.decode(&mut out).unwrap().unwrap();
        assert_eq!(
            Body::decode(Command::Send, frame.open(&mut NoCipher).unwrap()),
            Ok(body)
        );
    }
}

// ---------------------------------------------------------------- encoder limit

fn big_send(data_len: usize) -> Body {
    Body::Send(Send {
        client_message_id: 1,
        to: Target::User(2),
        content: Content::Custom {
            kind: "blob".to_string(),
            data: vec![0xAB; data_len],
        },
        extras: BTreeMap::new(),
    })
}

#[test]
fn encode_over_the_limit_is_too_large_and_leaves_the_buffer_unchanged() {
    let body = big_send(5000);
    let mut plain = BytesMut::new();
    body.encode_into(&mut plain).unwrap();
    let plaintext_len = plain.len();

    let mut out = BytesMut::new();
    encode_frame(
        &mut out,
        VERSION,
        1,
        &Body::Ping(Ping { nonce: 1 }),
        &mut NoCipher,
        64,
    )
    .unwrap();
    let before = out.clone();

    let err = encode_frame(
        &mut out,
        VERSION,
        2,
        &body,
        &mut NoCipher,
        PAYLOAD_LEN_FLOOR,
    )
    .unwrap_err();
    assert_eq!(
        err,
        EncodeError::TooLarge {
            len: plaintext_len,
            max: PAYLOAD_LEN_FLOOR
        }
    );
    assert_eq!(out, before, "output unchanged after a refused frame");

    let mut client = chacha(Role::Client);
    let err =
        encode_frame(&mut out, VERSION, 2, &body, &mut client, PAYLOAD_LEN_FLOOR).unwrap_err();
    assert_eq!(
        err,
        EncodeError::TooLarge {
            len: plaintext_len + 16,
            max: PAYLOAD_LEN_FLOOR
        }
    );
    assert_eq!(out, before);

    // The earlier frame is still intact and alone in the buffer.
    let mut decoder = FrameDecoder::new(PAYLOAD_LEN_DEFAULT);
    assert!(decoder.decode(&mut out).unwrap().is_some());
    assert!(out.is_empty());
}

#[test]
fn encode_exactly_at_the_limit_succeeds() {
    let body = big_send(3000);
    let mut plain = BytesMut::new();
    body.encode_into(&mut plain).unwrap();
    let plaintext_len = plain.len() as u32;

    let mut out = BytesMut::new();
    encode_frame(&mut out, VERSION, 1, &body, &mut NoCipher, plaintext_len).unwrap();
    assert_eq!(out.len(), FRAME_OVERHEAD + plaintext_len as usize);
    let mut out = BytesMut::new();
    assert!(encode_frame(
        &mut out,
        VERSION,
        1,
        &body,
        &mut NoCipher,
        plaintext_len - 1
    )
    .is_err());
    assert!(out.is_empty());

    let mut out = BytesMut::new();
    let mut client = chacha(Role::Client);
    assert!(encode_frame(&mut out, VERSION, 1, &body, &mut client, plaintext_len + 15).is_err());
    encode_frame(&mut out, VERSION, 1, &body, &mut client, plaintext_len + 16).unwrap();
    // The refused frame did not use up a nonce: the peer opens this one first.
    let (_, opened) = open_body(&out, &mut chacha(Role::Server)).unwrap();
    assert_eq!(opened, body);
}

// ---------------------------------------------------------------- cipher

#[test]
fn chacha_round_trips_both_ways_over_several_frames() {
    let mut client = chacha(Role::Client);
    let mut server = chacha(Role::Server);
    let bodies = sample_bodies();
    let mut previous_payloads: Vec<Vec<u8>> = Vec::new();
    for round in 0..4u32 {
        for (i, body) in bodies.iter().enumerate() {
            let request_id = round * 100 + i as u32;
            // Client to server.
            let wire = encode(request_id, body, &mut client);
            let frame = decode_one(&wire);
            assert_eq!(frame.header.cipher_id, CIPHER_CHACHA20_POLY1305);
            let mut plain = BytesMut::new();
            body.encode_into(&mut plain).unwrap();
            assert_eq!(frame.payload().len(), plain.len() + 16);
            if plain.len() >= 4 {
                assert_ne!(
                    &frame.payload()[..plain.len()],
                    &plain[..],
                    "payload is encrypted"
                );
            }
            // The counter advances: the same body never seals the same way.
            assert!(!previous_payloads.contains(&frame.payload().to_vec()));
            previous_payloads.push(frame.payload().to_vec());
            assert_eq!(
                open_body(&wire, &mut server),
                Ok((request_id, body.clone()))
            );

            // Server to client, interleaved.
            let wire = encode(request_id, body, &mut server);
            assert_eq!(
                open_body(&wire, &mut client),
                Ok((request_id, body.clone()))
            );
        }
    }
}

#[test]
fn frames_must_be_opened_in_order() {
    let mut client = chacha(Role::Client);
    let first = encode(1, &Body::Ping(Ping { nonce: 1 }), &mut client);
    let second = encode(2, &Body::Ping(Ping { nonce: 2 }), &mut client);
    let mut server = chacha(Role::Server);
    assert_eq!(
        open_body(&second, &mut server),
        Err(CipherError::Authentication)
    );
    let mut server = chacha(Role::Server);
    assert!(open_body(&first, &mut server).is_ok());
    assert!(open_body(&second, &mut server).is_ok());
}

#[test]
fn cipher_id_other_than_the_connections_is_a_mismatch() {
    let ping = Body::Ping(Ping { nonce: 1 });
    let plain = encode(1, &ping, &mut NoCipher);
    assert_eq!(
        decode_one(&plain)
            .open(&mut chacha(Role::Server))
            .unwrap_err(),
        CipherError::Mismatch {
            got: CIPHER_NONE,
            expected: CIPHER_CHACHA20_POLY1305
        }
    );
    let sealed = encode(1, &ping, &mut chacha(Role::Client));
    assert_eq!(
        decode_one(&sealed).open(&mut NoCipher).unwrap_err(),
        CipherError::Mismatch {
            got: CIPHER_CHACHA20_POLY1305,
            expected: CIPHER_NONE
        }
    );
    for cipher_id in 2..16u8 {
        let wire = raw_frame(VERSION, cipher_id, Command::Ping as u16, 1, &[0; 32]);
        assert_eq!(
            decode_one(&wire)
                .open(&mut chacha(Role::Server))
                .unwrap_err(),
            CipherError::Mismatch {
                got: cipher_id,
                expected: CIPHER_CHACHA20_POLY1305
            }
        );
    }
}

#[test]
fn tampered_ciphertext_or_tag_fails_authentication() {
    let body = sample_bodies()[3].clone();
    let wire = encode(7, &body, &mut chacha(Role::Client));
    let payload_end = wire.len() - CRC_LEN;
    for index in HEADER_LEN..payload_end {
        for mask in [0x01u8, 0x80, 0xFF] {
            let mut bad = wire.clone();
            bad[index] ^= mask;
            fix_crc(&mut bad);
            let mut frame = decode_one(&bad);
            assert_eq!(
                frame.open(&mut chacha(Role::Server)).unwrap_err(),
                CipherError::Authentication,
                "payload byte {} ^ {mask:#04x}",
                index - HEADER_LEN
            );
        }
    }
}

#[test]
fn tampered_header_fails_authentication() {
    // The header is associated data: command, request id and version are bound.
    let wire = encode(7, &Body::Ping(Ping { nonce: 1 }), &mut chacha(Role::Client));
    for index in [2usize, 4, 5, 6, 7, 8, 9] {
        let mut bad = wire.clone();
        bad[index] ^= 0x01;
        fix_crc(&mut bad);
        let mut frame = decode_one(&bad);
        assert_eq!(
            frame.open(&mut chacha(Role::Server)).unwrap_err(),
            CipherError::Authentication,
            "header byte {index}"
        );
    }
}

#[test]
fn replayed_frame_fails_the_second_time() {
    let mut client = chacha(Role::Client);
    let mut server = chacha(Role::Server);
    let ping = Body::Ping(Ping { nonce: 1 });
    let wire = encode(1, &ping, &mut client);
    assert_eq!(open_body(&wire, &mut server), Ok((1, ping.clone())));
    assert_eq!(
        open_body(&wire, &mut server),
        Err(CipherError::Authentication)
    );

    // Also after more traffic: an old frame never opens again.
    let mut client = chacha(Role::Client);
    let mut server = chacha(Role::Server);
    let old = encode(1, &ping, &mut client);
    assert!(open_body(&old, &mut server).is_ok());
    for i in 2..5 {
        let wire = encode(i, &ping, &mut client);
        assert!(open_body(&wire, &mut server).is_ok());
    }
    assert_eq!(
        open_body(&old, &mut server),
        Err(CipherError::Authentication)
    );
}

#[test]
fn reflected_frame_fails_authentication() {
    // A client frame sent back to a client (or a server frame to a server)
    // uses the other direction's nonce and must not open.
    let ping = Body::Ping(Ping { nonce: 1 });
    let from_client = encode(1, &ping, &mut chacha(Role::Client));
    assert_eq!(
        open_body(&from_client, &mut chacha(Role::Client)),
        Err(CipherError::Authentication)
    );
    let from_server = encode(1, &ping, &mut chacha(Role::Server));
    assert_eq!(
        open_body(&from_server, &mut chacha(Role::Server)),
        Err(CipherError::Authentication)
    );
}

#[test]
fn payload_shorter_than_the_tag_is_an_error_not_a_panic() {
    for len in 0..16usize {
        let wire = raw_frame(
            VERSION,
            CIPHER_CHACHA20_POLY1305,
            Command::Ping as u16,
            1,
            &vec![0; len],
        );
        let mut frame = decode_one(&wire);
        assert_eq!(
            frame.open(&mut chacha(Role::Server)).unwrap_err(),
            CipherError::Truncated,
            "{len}-byte payload"
        );
    }
    // Exactly a tag: an empty plaintext whose tag does not verify.
    let wire = raw_frame(
        VERSION,
        CIPHER_CHACHA20_POLY1305,
        Command::Ping as u16,
        1,
        &[0; 16],
    );
    assert_eq!(
        decode_one(&wire)
            .open(&mut chacha(Role::Server))
            .unwrap_err(),
        CipherError::Authentication
    );
    // A genuine empty body (logout) sealed: payload is just the tag, and opens.
    let wire = encode(1, &Body::Logout(Logout {}), &mut chacha(Role::Client));
    assert_eq!(decode_one(&wire).payload().len(), 16);
    assert_eq!(
        open_body(&wire, &mut chacha(Role::Server)),
        Ok((1, Body::Logout(Logout {})))
    );
}

#[test]
fn negotiate_refuses_unknown_ciphers_and_chacha_without_a_psk() {
    let unknown = |id: u8, psk: Option<&[u8; PSK_LEN]>| {
        negotiate(id, psk, &CLIENT_NONCE, &SERVER_NONCE, Role::Server).err()
    };
    assert_eq!(unknown(7, None), Some(CipherError::Unknown(7)));
    assert_eq!(unknown(7, Some(&PSK)), Some(CipherError::Unknown(7)));
    assert_eq!(unknown(15, Some(&PSK)), Some(CipherError::Unknown(15)));
    assert_eq!(
        unknown(CIPHER_CHACHA20_POLY1305, None),
        Some(CipherError::Unknown(1))
    );
    // A client nonce of the wrong size is refused too.
    for len in [0usize, 15, 17] {
        let nonce = vec![0x11; len];
        let result = negotiate(
            CIPHER_CHACHA20_POLY1305,
            Some(&PSK),
            &nonce,
            &SERVER_NONCE,
            Role::Server,
        );
        assert_eq!(
            result.err(),
            Some(CipherError::Unknown(1)),
            "{len}-byte client nonce"
        );
    }

    // Cipher none is always available.
    for psk in [None, Some(&PSK)] {
        let cipher = negotiate(CIPHER_NONE, psk, &[], &[], Role::Server)
            .ok()
            .unwrap();
        assert_eq!(cipher.id(), CIPHER_NONE);
        assert_eq!(cipher.overhead(), 0);
    }

    // Both ends negotiated alike interoperate, and match `derive`.
    let mut server = negotiate(
        CIPHER_CHACHA20_POLY1305,
        Some(&PSK),
        &CLIENT_NONCE,
        &SERVER_NONCE,
        Role::Server,
    )
    .ok()
    .unwrap();
    let mut client = negotiate(
        CIPHER_CHACHA20_POLY1305,
        Some(&PSK),
        &CLIENT_NONCE,
        &SERVER_NONCE,
        Role::Client,
    )
    .ok()
    .unwrap();
    assert_eq!(server.id(), CIPHER_CHACHA20_POLY1305);
    assert_eq!(server.overhead(), 16);
    let ping = Body::Ping(Ping { nonce: 77 });
    let wire = encode(5, &ping, client.as_mut());
    assert_eq!(wire, encode(5, &ping, &mut chacha(Role::Client)));
    assert_eq!(open_body(&wire, server.as_mut()), Ok((5, ping.clone())));
    let wire = encode(6, &ping, server.as_mut());
    assert_eq!(open_body(&wire, client.as_mut()), Ok((6, ping)));
}

#[test]
fn derive_is_deterministic_and_bound_to_every_input() {
    let ping = Body::Ping(Ping { nonce: 1 });
    let sealed_with = |psk: &[u8; PSK_LEN], client_nonce: &[u8], server_nonce: &[u8]| {
        let mut cipher = ChaChaCipher::derive(psk, client_nonce, server_nonce, Role::Client);
        encode(1, &ping, &mut cipher)
    };
    let reference = sealed_with(&PSK, &CLIENT_NONCE, &SERVER_NONCE);
    assert_eq!(
        reference,
        sealed_with(&PSK, &CLIENT_NONCE, &SERVER_NONCE),
        "deterministic"
    );

    let other_server_nonce = [0x23; CONNECTION_NONCE_LEN];
    let other_client_nonce = [0x12; CONNECTION_NONCE_LEN];
    let other_psk = [0x5B; PSK_LEN];
    let variants = [
        sealed_with(&PSK, &CLIENT_NONCE, &other_server_nonce),
        sealed_with(&PSK, &other_client_nonce, &SERVER_NONCE),
        sealed_with(&other_psk, &CLIENT_NONCE, &SERVER_NONCE),
    ];
    for wire in &variants {
        assert_eq!(wire[..HEADER_LEN], reference[..HEADER_LEN], "same header");
        assert_ne!(
            wire[HEADER_LEN..],
            reference[HEADER_LEN..],
            "different ciphertext"
        );
        // The server with the reference key cannot open it.
        assert_eq!(
            open_body(wire, &mut chacha(Role::Server)),
            Err(CipherError::Authentication)
        );
    }

    // The key is the same at both ends of one connection.
    let mut client = ChaChaCipher::derive(&PSK, &CLIENT_NONCE, &other_server_nonce, Role::Client);
    let mut server = ChaChaCipher::derive(&PSK, &CLIENT_NONCE, &other_server_nonce, Role::Server);
    let wire = encode(9, &ping, &mut client);
    assert_eq!(open_body(&wire, &mut server), Ok((9, ping.clone())));
    let wire = encode(10, &ping, &mut server);
    assert_eq!(open_body(&wire, &mut client), Ok((10, ping)));
}

#[test]
fn from_key_ends_interoperate() {
    let key = [0x42u8; 32];
    let mut client = ChaChaCipher::from_key(&key, Role::Client);
    let mut server = ChaChaCipher::from_key(&key, Role::Server);
    for body in sample_bodies() {
        let wire = encode(1, &body, &mut client);
        assert_eq!(open_body(&wire, &mut server), Ok((1, body.clone())));
        let wire = encode(2, &body, &mut server);
        assert_eq!(open_body(&wire, &mut client), Ok((2, body)));
    }
    let wire = encode(
        1,
        &Body::Ping(Ping { nonce: 1 }),
        &mut ChaChaCipher::from_key(&[0x43; 32], Role::Client),
    );
    assert_eq!(
        open_body(&wire, &mut ChaChaCipher::from_key(&key, Role::Server)),
        Err(CipherError::Authentication)
    );
}

// ---------------------------------------------------------------- status and command codes

#[test]
fn status_codes_round_trip_and_unknown_codes_are_none() {
    let mut codes = HashSet::new();
    let mut names = HashSet::new();
    for status in StatusCode::ALL {
        let code = status as u16;
        assert_eq!(StatusCode::from_u16(code), Some(status));
        assert!(codes.insert(code), "code {code} used twice");
        assert!(
            names.insert(status.name()),
            "name {} used twice",
            status.name()
        );
        assert_eq!(status.to_string(), format!("{} ({code})", status.name()));
    }
    for code in 0..=u16::MAX {
        assert_eq!(
            StatusCode::from_u16(code).is_some(),
            codes.contains(&code),
            "code {code}"
        );
    }
    assert_eq!(StatusCode::from_u16(StatusCode::ALL.len() as u16), None);
    assert_eq!(StatusCode::from_u16(u16::MAX), None);
    assert_eq!(StatusCode::Ok as u16, 0);
}

#[test]
fn frame_errors_map_to_final_statuses() {
    let cases = [
        (FrameError::BadMagic([0, 0]), StatusCode::BadFrame),
        (FrameError::ReservedFlags(0x10), StatusCode::BadFrame),
        (
            FrameError::UnsupportedVersion {
                got: 2,
                expected: 1,
            },
            StatusCode::UnsupportedVersion,
        ),
        (
            FrameError::TooLarge { len: 2, max: 1 },
            StatusCode::TooLarge,
        ),
        (
            FrameError::BadChecksum {
                got: 1,
                computed: 2,
            },
            StatusCode::BadChecksum,
        ),
    ];
    for (err, status) in cases {
        assert_eq!(err.status(), status, "{err}");
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn command_codes_round_trip_and_are_unique() {
    let mut codes = HashSet::new();
    let mut names = HashSet::new();
    for command in Command::ALL {
        let code = *command as u16;
        assert_eq!(Command::from_u16(code), Some(*command));
        assert!(codes.insert(code), "code {code:#06x} used twice");
        assert!(
            names.insert(command.name()),
            "name {} used twice",
            command.name()
        );
        assert!(
            command
                .name()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{} is not snake_case",
            command.name()
        );
    }
    for code in 0..=u16::MAX {
        assert_eq!(
            Command::from_u16(code).is_some(),
            codes.contains(&code),
            "code {code:#06x}"
        );
    }
    assert_eq!(codes.len(), Command::ALL.len());
    // Requests and their answers go opposite ways.
    assert_eq!(Command::Hello.direction(), Direction::ClientToServer);
    assert_eq!(Command::HelloAck.direction(), Direction::ServerToClient);
    assert_eq!(Command::Deliver.direction(), Direction::ServerToClient);
    assert_eq!(Command::Send.direction(), Direction::ClientToServer);
}
