//! The only module that calls bincode. Replacing bincode with a compatible
//! encoder is a change to this file alone.
//!
//! Encoding (protocol.md, "Body encoding"): bincode 2 `config::standard()`, that is
//! little-endian with variable-length integers, no header. Decoding caps the
//! bytes that length prefixes inside a body may claim, so that a string length
//! of 2^60 in a 40-byte payload fails before anything is allocated.

use bincode::config;
use bytes::{BufMut, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    /// The payload is not a valid encoding of the command's body.
    #[error("body does not decode: {0}")]
    Malformed(String),
    /// The payload decoded but bytes were left over.
    #[error("{0} trailing bytes after the body")]
    TrailingBytes(usize),
    /// Encoding failed (a bug or an unencodable value).
    #[error("body does not encode: {0}")]
    Unencodable(String),
}

/// Appends `body` to `out` without an intermediate buffer.
pub fn encode<T: Serialize>(body: &T, out: &mut BytesMut) -> Result<(), BodyError> {
    let mut writer = out.writer();
    bincode::serde::encode_into_std_write(body, &mut writer, config::standard())
        .map(|_| ())
        .map_err(|e| BodyError::Unencodable(e.to_string()))
}

/// bincode charges each decoded value its in-memory width against the claim
/// limit, however few bytes its varint took: 8 for every u64 and every length
/// prefix, 4 for every enum tag, plus the bytes of each string or byte array.
/// No body field is wider than 8 bytes and each takes at least one byte on the
/// wire, so a valid payload claims at most 8 times its length. (A factor of 2
/// once refused valid syncs of 8,192 cursors: found by the `body_grow` fuzz
/// target.)
const CLAIM_PER_PAYLOAD_BYTE_MAX: usize = 8;

/// Decodes a whole payload. The claim limit is 8 times the payload, rounded
/// up to a tier, so it never refuses a valid body, and a hostile length
/// prefix costs at most that much transient memory before the read fails
/// (32 KiB for the small frames that are almost all traffic).
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, BodyError> {
    const TIER_TINY: usize = 4 * 1024;
    const TIER_SMALL: usize = 64 * 1024;
    const TIER_MEDIUM: usize = 1024 * 1024;
    const CEILING: usize = crate::limits::PAYLOAD_LEN_CEILING as usize;
    const K: usize = CLAIM_PER_PAYLOAD_BYTE_MAX;
    let result = if payload.len() <= TIER_TINY {
        bincode::serde::decode_from_slice(
            payload,
            config::standard().with_limit::<{ K * TIER_TINY }>(),
        )
    } else if payload.len() <= TIER_SMALL {
        bincode::serde::decode_from_slice(
            payload,
            config::standard().with_limit::<{ K * TIER_SMALL }>(),
        )
    } else if payload.len() <= TIER_MEDIUM {
        bincode::serde::decode_from_slice(
            payload,
            config::standard().with_limit::<{ K * TIER_MEDIUM }>(),
        )
    } else {
        bincode::serde::decode_from_slice(
            payload,
            config::standard().with_limit::<{ K * CEILING }>(),
        )
    };
    match result {
        Ok((body, used)) if used == payload.len() => Ok(body),
        Ok((_, used)) => Err(BodyError::TrailingBytes(payload.len() - used)),
        Err(e) => Err(BodyError::Malformed(e.to_string())),
    }
}

/// Encodes a value to a fresh vector: for storage records, which use the same
/// encoding as the wire so one decoder serves both. Starts with room for a
/// typical message so the common case allocates once (bincode's own
/// `encode_to_vec` starts empty and regrows several times: a measured 10% of
/// the storage writer's time).
pub fn encode_to_vec<T: Serialize>(value: &T) -> Result<Vec<u8>, BodyError> {
    const TYPICAL_RECORD_BYTES: usize = 256;
    let mut out = Vec::with_capacity(TYPICAL_RECORD_BYTES);
    bincode::serde::encode_into_std_write(value, &mut out, config::standard())
        .map(|_| out)
        .map_err(|e| BodyError::Unencodable(e.to_string()))
}

/// Appends the encoding of a sequence length (a varint): pages of stored
/// messages are assembled as this prefix followed by the messages' stored
/// bytes, which is exactly the encoding of `Vec<Message>`.
pub fn encode_len(len: usize, out: &mut BytesMut) -> Result<(), BodyError> {
    encode(&(len as u64), out)
}

/// Appends the encoding of a bool.
pub fn encode_bool(value: bool, out: &mut BytesMut) -> Result<(), BodyError> {
    encode(&value, out)
}

/// Deserializes a sequence without trusting its length prefix for
/// preallocation: serde's own `Vec` preallocates up to 1 MiB from the prefix
/// alone, which a 20-byte hostile payload could claim for every list field.
/// Here at most `PREALLOCATE_MAX` elements are reserved up front; the vector
/// grows as elements actually decode. Every `Vec` field of a body uses this.
pub fn bounded_vec<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    const PREALLOCATE_MAX: usize = 64;

    struct BoundedVec<T>(std::marker::PhantomData<T>);

    impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for BoundedVec<T> {
        type Value = Vec<T>;

        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            formatter.write_str("a sequence")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(PREALLOCATE_MAX));
            while let Some(item) = seq.next_element()? {
                out.push(item);
            }
            Ok(out)
        }
    }

    deserializer.deserialize_seq(BoundedVec(std::marker::PhantomData))
}
