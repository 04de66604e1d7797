//! Fuzzes the incremental frame decoder with a byte stream split anywhere.
//!
//! Input layout:
//!
//! ```text
//! byte 0      options: bit 0 require_version(1); bits 1-2 pick the payload
//!             limit (64 KiB, 4 KiB, 64 B, 0 B)
//! bytes 1..5  chunk sizes, used in turn (0 = everything that is left)
//! bytes 5..   the stream
//! ```
//!
//! Each chunk is appended to a `BytesMut` and `FrameDecoder::decode` is called
//! until it asks for more bytes or fails; a failure ends the stream, as it
//! closes a connection. Every decoded frame is opened with `NoCipher` and, when
//! its command is known, its payload decoded (`Ok` or `Err`, never a panic).
//!
//! Checked:
//! - a frame's payload is exactly `header.payload_len` bytes, within the limit,
//!   of the required version, and its header round-trips through `to_bytes`;
//! - when the decoder wants more bytes, fewer than one whole frame
//!   (limit + overhead) are pending, and the rest of the frame is reserved;
//! - the buffer's capacity stays within twice what was fed plus one frame
//!   (the decoder never reserves beyond the payload limit);
//! - chunking does not matter: the frames (and the kind of final error) equal
//!   those of decoding the whole stream in one call.
#![no_main]

use bytes::BytesMut;
use gust::protocol::cipher::{NoCipher, CIPHER_NONE};
use gust::protocol::frame::{FrameDecoder, FrameError, FrameHeader, FRAME_OVERHEAD, HEADER_LEN};
use gust::protocol::{Body, CipherError, Command};
use libfuzzer_sys::fuzz_target;

const LIMITS: [u32; 4] = [64 * 1024, 4 * 1024, 64, 0];

#[derive(Debug, PartialEq)]
struct Decoded {
    header: FrameHeader,
    payload: Vec<u8>,
}

/// What happened to a stream: its frames, then how it ended.
#[derive(Debug)]
struct Outcome {
    frames: Vec<Decoded>,
    error: Option<FrameError>,
}

fn same_kind(a: &Option<FrameError>, b: &Option<FrameError>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => std::mem::discriminant(a) == std::mem::discriminant(b),
        _ => false,
    }
}

fn run(stream: &[u8], chunks: &[u8], require_version: bool, limit: u32) -> Outcome {
    let mut decoder = FrameDecoder::new(limit);
    if require_version {
        decoder.require_version(1);
    }
    let frame_max = limit as usize + FRAME_OVERHEAD;
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut fed = 0usize;
    let mut rest = stream;
    let mut turn = 0usize;
    loop {
        // The next chunk (an empty one when the stream is done, so that the
        // decoder is also called with nothing new).
        let want = if chunks.is_empty() {
            rest.len()
        } else {
            match chunks[turn % chunks.len()] {
                0 => rest.len(),
                n => n as usize,
            }
        };
        turn += 1;
        let (chunk, tail) = rest.split_at(want.min(rest.len()));
        rest = tail;
        buf.extend_from_slice(chunk);
        fed += chunk.len();

        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(mut frame)) => {
                    let header = frame.header;
                    assert_eq!(frame.payload().len(), header.payload_len as usize, "payload length");
                    assert!(header.payload_len <= limit, "frame over the limit: {header:?}");
                    if require_version {
                        assert_eq!(header.version, 1, "version not enforced");
                    }
                    assert_eq!(FrameHeader::parse(&header.to_bytes()), Ok(header), "header round trip");
                    assert_eq!(frame.header_bytes(), header.to_bytes());
                    let payload = frame.payload().to_vec();
                    match frame.open(&mut NoCipher) {
                        Ok(plaintext) => {
                            assert_eq!(header.cipher_id, CIPHER_NONE);
                            assert_eq!(plaintext, &payload[..], "NoCipher changed the payload");
                            if let Some(command) = Command::from_u16(header.command) {
                                if let Ok(body) = Body::decode(command, plaintext) {
                                    assert_eq!(body.command(), command);
                                }
                            }
                        }
                        Err(e) => {
                            assert_ne!(header.cipher_id, CIPHER_NONE);
                            assert!(matches!(e, CipherError::Mismatch { .. }), "{e:?}");
                        }
                    }
                    frames.push(Decoded { header, payload });
                }
                Ok(None) => {
                    // Less than one whole frame is pending, and if a header is
                    // in, the rest of its frame is reserved (and no more than
                    // that frame may be).
                    assert!(buf.len() < frame_max.max(HEADER_LEN), "{} bytes pending", buf.len());
                    if buf.len() >= HEADER_LEN {
                        let header = FrameHeader::parse(buf[..HEADER_LEN].try_into().unwrap())
                            .expect("decoder waits on a bad header");
                        let frame_len = FRAME_OVERHEAD + header.payload_len as usize;
                        assert!(frame_len <= frame_max);
                        assert!(buf.len() < frame_len);
                        assert!(buf.capacity() >= frame_len, "rest of the frame not reserved");
                    }
                    break;
                }
                Err(error) => {
                    return Outcome {
                        frames,
                        error: Some(error),
                    };
                }
            }
            // Growth is at most doubling of what was fed or of one frame.
            assert!(
                buf.capacity() <= 2 * (fed + frame_max) + 64,
                "capacity {} after {fed} bytes fed (limit {limit})",
                buf.capacity()
            );
        }
        assert!(buf.capacity() <= 2 * (fed + frame_max) + 64, "capacity {}", buf.capacity());
        if chunk.is_empty() && rest.is_empty() {
            return Outcome { frames, error: None };
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let options = data[0];
    let require_version = options & 1 != 0;
    let limit = LIMITS[((options >> 1) & 3) as usize];
    let chunks = &data[1..5];
    let stream = &data[5..];

    let chunked = run(stream, chunks, require_version, limit);
    let whole = run(stream, &[], require_version, limit);
    assert_eq!(chunked.frames, whole.frames, "chunking changed the frames");
    assert!(
        same_kind(&chunked.error, &whole.error),
        "chunking changed the outcome: {:?} vs {:?}",
        chunked.error,
        whole.error
    );
});
