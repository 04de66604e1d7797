//! The wire protocol, sans-I/O: bytes in, frames and bodies out, and back.
//!
//! Nothing in this folder touches a socket, a clock or the store, so all of it
//! is unit-tested and fuzzed alone (see `fuzz/`). protocol.md is the contract;
//! `tests/protocol_vectors.rs` checks its hex vectors against this code.

pub mod body;
pub mod body_codec;
pub mod cipher;
pub mod command;
pub mod frame;
pub mod status;

pub use body::*;
pub use body_codec::BodyError;
pub use cipher::{ChaChaCipher, CipherError, NoCipher, PayloadCipher, Role};
pub use command::{Body, Command, Direction};
pub use frame::{encode_frame, EncodeError, FrameDecoder, FrameError, FrameHeader, RawFrame};
pub use status::StatusCode;
