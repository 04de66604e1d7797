//! The frame: a fixed 14-byte header, the payload, a CRC-32 trailer.
//!
//! Sans-I/O: [`FrameDecoder`] takes bytes as they arrive, split anywhere, and
//! returns whole frames or "need more"; [`encode_frame`] appends a frame to a
//! buffer. Nothing here knows about sockets or clocks (protocol.md, "Frame").
//!
//! ```text
//! offset size field
//!  0     1    magic 0xA7 (not ASCII, not 0x16: tells gust from HTTP and TLS)
//!  1     1    magic 0x47
//!  2     1    version
//!  3     1    flags: bits 0-3 cipher id, bits 4-7 reserved (zero)
//!  4     2    command, big-endian
//!  6     4    request id, big-endian
//! 10     4    payload length, big-endian (bytes on the wire, tag included)
//! 14     n    payload
//! 14+n   4    CRC-32 (IEEE) of bytes 0 .. 14+n, big-endian
//! ```

use bytes::{Buf, BufMut, BytesMut};

use super::body_codec::BodyError;
use super::cipher::{CipherError, PayloadCipher};
use super::command::Body;
use super::status::StatusCode;

pub const MAGIC: [u8; 2] = [0xA7, 0x47];
pub const HEADER_LEN: usize = 14;
pub const CRC_LEN: usize = 4;
/// Header plus trailer: the fixed cost of a frame.
pub const FRAME_OVERHEAD: usize = HEADER_LEN + CRC_LEN;
/// The protocol version this build speaks. Hello is always framed as version 1.
pub const VERSION_MIN: u8 = 1;
pub const VERSION_MAX: u8 = 1;
const FLAGS_CIPHER_MASK: u8 = 0x0F;

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub version: u8,
    pub cipher_id: u8,
    /// Raw command code: an unknown code is a per-request error, not a framing one.
    pub command: u16,
    pub request_id: u32,
    pub payload_len: u32,
}

impl FrameHeader {
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..2].copy_from_slice(&MAGIC);
        out[2] = self.version;
        out[3] = self.cipher_id & FLAGS_CIPHER_MASK;
        out[4..6].copy_from_slice(&self.command.to_be_bytes());
        out[6..10].copy_from_slice(&self.request_id.to_be_bytes());
        out[10..14].copy_from_slice(&self.payload_len.to_be_bytes());
        out
    }

    /// Parses and checks a header (everything but the version, which only the
    /// connection knows how to judge).
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Result<FrameHeader, FrameError> {
        if bytes[0..2] != MAGIC {
            return Err(FrameError::BadMagic([bytes[0], bytes[1]]));
        }
        let flags = bytes[3];
        if flags & !FLAGS_CIPHER_MASK != 0 {
            return Err(FrameError::ReservedFlags(flags));
        }
        Ok(FrameHeader {
            version: bytes[2],
            cipher_id: flags & FLAGS_CIPHER_MASK,
            command: u16::from_be_bytes([bytes[4], bytes[5]]),
            request_id: u32::from_be_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]),
            payload_len: u32::from_be_bytes([bytes[10], bytes[11], bytes[12], bytes[13]]),
        })
    }
}

/// Framing is lost: the connection must be closed after an error frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("bad magic {0:02x?}")]
    BadMagic([u8; 2]),
    #[error("reserved flag bits set in {0:#04x}")]
    ReservedFlags(u8),
    #[error("frame version {got}, connection speaks {expected}")]
    UnsupportedVersion { got: u8, expected: u8 },
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: u32, max: u32 },
    #[error("checksum {got:#010x}, computed {computed:#010x}")]
    BadChecksum { got: u32, computed: u32 },
}

impl FrameError {
    pub fn status(&self) -> StatusCode {
        match self {
            FrameError::BadMagic(_) | FrameError::ReservedFlags(_) => StatusCode::BadFrame,
            FrameError::UnsupportedVersion { .. } => StatusCode::UnsupportedVersion,
            FrameError::TooLarge { .. } => StatusCode::TooLarge,
            FrameError::BadChecksum { .. } => StatusCode::BadChecksum,
        }
    }
}

/// One whole frame as received: header checked, CRC verified, payload still
/// sealed if a cipher is in use.
#[derive(Debug)]
pub struct RawFrame {
    pub header: FrameHeader,
    /// The frame bytes from the header to the end of the payload (the trailer
    /// is stripped once verified).
    bytes: BytesMut,
}

impl RawFrame {
    pub fn header_bytes(&self) -> [u8; HEADER_LEN] {
        self.header.to_bytes()
    }

    pub fn payload(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..]
    }

    /// Opens the payload with `cipher` (a no-op for cipher `none`) and returns
    /// the plaintext.
    pub fn open(&mut self, cipher: &mut dyn PayloadCipher) -> Result<&[u8], CipherError> {
        if self.header.cipher_id != cipher.id() {
            return Err(CipherError::Mismatch {
                got: self.header.cipher_id,
                expected: cipher.id(),
            });
        }
        let header = self.header_bytes();
        let plaintext_len = cipher.open(&header, &mut self.bytes[HEADER_LEN..])?;
        Ok(&self.bytes[HEADER_LEN..HEADER_LEN + plaintext_len])
    }
}

/// Incremental frame decoder. Holds no buffer of its own: the caller owns the
/// bytes, so an idle connection can hold none at all.
#[derive(Clone, Debug)]
pub struct FrameDecoder {
    payload_len_max: u32,
    /// When set, every frame must carry this version (after hello).
    version: Option<u8>,
}

impl FrameDecoder {
    pub fn new(payload_len_max: u32) -> FrameDecoder {
        FrameDecoder {
            payload_len_max,
            version: None,
        }
    }

    pub fn payload_len_max(&self) -> u32 {
        self.payload_len_max
    }

    /// From now on, a frame of any other version is a final error.
    pub fn require_version(&mut self, version: u8) {
        self.version = Some(version);
    }

    /// The header of the next frame once a whole header is in `buf`, checked
    /// (magic, flags, version, length) so that an oversized length is refused
    /// before anything is reserved. A wrong first byte fails at once.
    pub fn peek_header(&self, buf: &[u8]) -> Result<Option<FrameHeader>, FrameError> {
        let Some(header_bytes) = buf.first_chunk::<HEADER_LEN>() else {
            if let Some(&first) = buf.first() {
                if first != MAGIC[0] {
                    return Err(FrameError::BadMagic([
                        first,
                        buf.get(1).copied().unwrap_or(0),
                    ]));
                }
            }
            return Ok(None);
        };
        let header = FrameHeader::parse(header_bytes)?;
        if let Some(expected) = self.version {
            if header.version != expected {
                return Err(FrameError::UnsupportedVersion {
                    got: header.version,
                    expected,
                });
            }
        }
        if header.payload_len > self.payload_len_max {
            return Err(FrameError::TooLarge {
                len: header.payload_len,
                max: self.payload_len_max,
            });
        }
        Ok(Some(header))
    }

    /// The header and total length of the whole frame at the front of `buf`,
    /// its CRC verified, or `None` when more bytes are needed. For callers that
    /// parse in place from their own buffer.
    pub fn split(&self, buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, FrameError> {
        let Some(header) = self.peek_header(buf)? else {
            return Ok(None);
        };
        let frame_len = FRAME_OVERHEAD + header.payload_len as usize;
        let Some(frame) = buf.get(..frame_len) else {
            return Ok(None);
        };
        let (covered, mut trailer) = frame.split_at(frame_len - CRC_LEN);
        let computed = crc32fast::hash(covered);
        let got = trailer.get_u32();
        if got != computed {
            return Err(FrameError::BadChecksum { got, computed });
        }
        Ok(Some((header, frame_len)))
    }

    /// Splits the next whole frame off the front of `buf`, or returns `None`
    /// when more bytes are needed (having reserved exactly the rest of the
    /// frame, never more than the payload limit allows). On error the
    /// connection must close.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<RawFrame>, FrameError> {
        let Some((header, frame_len)) = self.split(buf)? else {
            if let Some(header) = self.peek_header(buf)? {
                reserve_exact(buf, FRAME_OVERHEAD + header.payload_len as usize);
            }
            return Ok(None);
        };
        let mut bytes = buf.split_to(frame_len);
        bytes.truncate(frame_len - CRC_LEN);
        Ok(Some(RawFrame { header, bytes }))
    }
}

/// Makes room for a frame of `frame_len` bytes in `buf`, exactly:
/// `BytesMut::reserve` may double the capacity, which would let a partial
/// frame cost up to twice the payload limit.
pub fn reserve_exact(buf: &mut BytesMut, frame_len: usize) {
    if buf.capacity() >= frame_len {
        return;
    }
    let mut exact = BytesMut::with_capacity(frame_len);
    exact.extend_from_slice(buf);
    *buf = exact;
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error(transparent)]
    Cipher(#[from] CipherError),
    #[error("encoded payload of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: u32 },
}

/// Appends one frame carrying `body` to `out`: the body is encoded in place
/// after a header placeholder, sealed in place, and the CRC appended, so the
/// payload is never copied. On error `out` is left as it was.
pub fn encode_frame(
    out: &mut BytesMut,
    version: u8,
    request_id: u32,
    body: &Body,
    cipher: &mut dyn PayloadCipher,
    payload_len_max: u32,
) -> Result<(), EncodeError> {
    let start = out.len();
    put_header_placeholder(out);
    let result = body
        .encode_into(out)
        .map_err(EncodeError::from)
        .and_then(|()| {
            finish_frame(
                out,
                start,
                version,
                body.command() as u16,
                request_id,
                cipher,
                payload_len_max,
            )
        });
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// Appends a frame whose plaintext payload is already encoded (a stored
/// message, a page assembled from stored messages, or a frame being resealed
/// for a connection's cipher).
pub fn encode_raw_frame(
    out: &mut BytesMut,
    version: u8,
    request_id: u32,
    command: u16,
    payload: &[u8],
    cipher: &mut dyn PayloadCipher,
    payload_len_max: u32,
) -> Result<(), EncodeError> {
    let start = out.len();
    out.reserve(FRAME_OVERHEAD + payload.len() + cipher.overhead());
    put_header_placeholder(out);
    out.put_slice(payload);
    let result = finish_frame(
        out,
        start,
        version,
        command,
        request_id,
        cipher,
        payload_len_max,
    );
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// Reserves a frame's header, filled in by `finish_frame`. A fixed-size
/// copy compiles to a couple of stores; `put_bytes` called `memset`, a few
/// percent of a shard's CPU.
fn put_header_placeholder(out: &mut BytesMut) {
    out.put_slice(&[0u8; HEADER_LEN]);
}

/// Fills in the header of the frame that starts at `start` (whose plaintext
/// payload follows the header placeholder), seals it and appends the CRC.
fn finish_frame(
    out: &mut BytesMut,
    start: usize,
    version: u8,
    command: u16,
    request_id: u32,
    cipher: &mut dyn PayloadCipher,
    payload_len_max: u32,
) -> Result<(), EncodeError> {
    let plaintext_len = out.len() - start - HEADER_LEN;
    let overhead = cipher.overhead();
    let payload_len = plaintext_len + overhead;
    if payload_len > payload_len_max as usize {
        return Err(EncodeError::TooLarge {
            len: payload_len,
            max: payload_len_max,
        });
    }
    let header = FrameHeader {
        version,
        cipher_id: cipher.id(),
        command,
        request_id,
        // Cannot truncate: payload_len <= payload_len_max, a u32.
        payload_len: payload_len as u32,
    };
    let header_bytes = header.to_bytes();
    out[start..start + HEADER_LEN].copy_from_slice(&header_bytes);
    if overhead > 0 {
        out.put_bytes(0, overhead);
    }
    let (plaintext, tag) = out[start + HEADER_LEN..].split_at_mut(plaintext_len);
    cipher.seal(&header_bytes, plaintext, tag)?;
    let crc = crc32fast::hash(&out[start..]);
    out.put_u32(crc);
    Ok(())
}

/// The header and plaintext payload of a frame this process encoded without a
/// cipher (used to reseal shared frames per connection). `None` if `frame` is
/// not such a frame.
pub fn split_plain_frame(frame: &[u8]) -> Option<(FrameHeader, &[u8])> {
    let header_bytes = frame.first_chunk::<HEADER_LEN>()?;
    let header = FrameHeader::parse(header_bytes).ok()?;
    let end = HEADER_LEN.checked_add(header.payload_len as usize)?;
    if header.cipher_id != 0 || frame.len() != end + CRC_LEN {
        return None;
    }
    Some((header, frame.get(HEADER_LEN..end)?))
}
