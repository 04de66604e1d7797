//! Pluggable payload encryption (protocol.md, "Payload ciphers").
//!
//! The cipher id travels in the low four bits of the frame flags. The header
//! is bound as associated data, so a frame's command, request id or length
//! cannot be altered without the tag failing. One cipher object serves one
//! connection end: it seals what that end sends and opens what it receives,
//! with a separate counter per direction.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::hkdf;

use super::frame::HEADER_LEN;

pub const CIPHER_NONE: u8 = 0;
pub const CIPHER_CHACHA20_POLY1305: u8 = 1;
/// Bytes of each connection nonce exchanged in hello / hello_ack.
pub const CONNECTION_NONCE_LEN: usize = 16;
/// Pre-shared keys are exactly 32 bytes.
pub const PSK_LEN: usize = 32;
const HKDF_INFO: &[u8] = b"gust/1 chacha20-poly1305";

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CipherError {
    #[error("frame carries cipher {got}, the connection uses {expected}")]
    Mismatch { got: u8, expected: u8 },
    #[error("payload authentication failed")]
    Authentication,
    #[error("payload shorter than the cipher's tag")]
    Truncated,
    #[error("frame counter exhausted")]
    CounterExhausted,
    #[error("unknown cipher id {0}")]
    Unknown(u8),
}

/// Which end of the connection a cipher object belongs to. The sender's role
/// is the first nonce byte, so the two directions never share a nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

impl Role {
    fn nonce_tag(self) -> u8 {
        match self {
            Role::Client => b'C',
            Role::Server => b'S',
        }
    }

    fn peer(self) -> Role {
        match self {
            Role::Client => Role::Server,
            Role::Server => Role::Client,
        }
    }
}

/// Seals outgoing and opens incoming payloads of one connection end.
pub trait PayloadCipher: Send {
    /// The id written in the frame flags.
    fn id(&self) -> u8;
    /// Bytes the cipher adds to each payload (its tag).
    fn overhead(&self) -> usize;
    /// Encrypts `plaintext` in place and writes the tag (`overhead()` bytes).
    fn seal(
        &mut self,
        header: &[u8; HEADER_LEN],
        plaintext: &mut [u8],
        tag: &mut [u8],
    ) -> Result<(), CipherError>;
    /// Decrypts `payload` (ciphertext then tag) in place and returns the
    /// plaintext length.
    fn open(&mut self, header: &[u8; HEADER_LEN], payload: &mut [u8])
        -> Result<usize, CipherError>;
}

/// Cipher 0: the payload travels as is.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoCipher;

impl PayloadCipher for NoCipher {
    fn id(&self) -> u8 {
        CIPHER_NONE
    }

    fn overhead(&self) -> usize {
        0
    }

    fn seal(
        &mut self,
        _: &[u8; HEADER_LEN],
        _: &mut [u8],
        _: &mut [u8],
    ) -> Result<(), CipherError> {
        Ok(())
    }

    fn open(&mut self, _: &[u8; HEADER_LEN], payload: &mut [u8]) -> Result<usize, CipherError> {
        Ok(payload.len())
    }
}

/// Cipher 1: ChaCha20-Poly1305 with a per-connection key derived from a
/// pre-shared key and both connection nonces; the nonce of each frame is the
/// sender's role byte, three zero bytes and a 64-bit big-endian frame counter.
pub struct ChaChaCipher {
    key: LessSafeKey,
    role: Role,
    sent: u64,
    received: u64,
}

impl ChaChaCipher {
    /// Derives the connection key: HKDF-SHA256 with salt
    /// `client_nonce || server_nonce`, the PSK as input key material and the
    /// info string `gust/1 chacha20-poly1305`.
    pub fn derive(
        psk: &[u8; PSK_LEN],
        client_nonce: &[u8],
        server_nonce: &[u8],
        role: Role,
    ) -> ChaChaCipher {
        let mut salt_bytes = Vec::with_capacity(client_nonce.len() + server_nonce.len());
        salt_bytes.extend_from_slice(client_nonce);
        salt_bytes.extend_from_slice(server_nonce);
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, &salt_bytes);
        let mut key = [0u8; 32];
        salt.extract(psk)
            .expand(&[HKDF_INFO], &CHACHA20_POLY1305)
            // Cannot fail: the output length (32) is far below HKDF's 255 * 32.
            .and_then(|okm| okm.fill(&mut key))
            .unwrap_or_else(|_| unreachable!("HKDF-SHA256 can always produce 32 bytes"));
        ChaChaCipher::from_key(&key, role)
    }

    /// A cipher with an explicit connection key (test vectors use this).
    pub fn from_key(key: &[u8; 32], role: Role) -> ChaChaCipher {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, key)
            // Cannot fail: the key length matches the algorithm.
            .unwrap_or_else(|_| unreachable!("a 32-byte key is valid for ChaCha20-Poly1305"));
        ChaChaCipher {
            key: LessSafeKey::new(unbound),
            role,
            sent: 0,
            received: 0,
        }
    }

    fn nonce(role: Role, counter: u64) -> Nonce {
        let mut bytes = [0u8; aead::NONCE_LEN];
        bytes[0] = role.nonce_tag();
        bytes[4..12].copy_from_slice(&counter.to_be_bytes());
        Nonce::assume_unique_for_key(bytes)
    }
}

impl PayloadCipher for ChaChaCipher {
    fn id(&self) -> u8 {
        CIPHER_CHACHA20_POLY1305
    }

    fn overhead(&self) -> usize {
        CHACHA20_POLY1305.tag_len()
    }

    fn seal(
        &mut self,
        header: &[u8; HEADER_LEN],
        plaintext: &mut [u8],
        tag_out: &mut [u8],
    ) -> Result<(), CipherError> {
        let counter = self.sent;
        self.sent = counter
            .checked_add(1)
            .ok_or(CipherError::CounterExhausted)?;
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Self::nonce(self.role, counter),
                Aad::from(header),
                plaintext,
            )
            .map_err(|_| CipherError::Authentication)?;
        if tag_out.len() != tag.as_ref().len() {
            return Err(CipherError::Truncated);
        }
        tag_out.copy_from_slice(tag.as_ref());
        Ok(())
    }

    fn open(
        &mut self,
        header: &[u8; HEADER_LEN],
        payload: &mut [u8],
    ) -> Result<usize, CipherError> {
        if payload.len() < self.overhead() {
            return Err(CipherError::Truncated);
        }
        let counter = self.received;
        self.received = counter
            .checked_add(1)
            .ok_or(CipherError::CounterExhausted)?;
        let plaintext = self
            .key
            .open_in_place(
                Self::nonce(self.role.peer(), counter),
                Aad::from(header),
                payload,
            )
            .map_err(|_| CipherError::Authentication)?;
        Ok(plaintext.len())
    }
}

/// Builds the cipher a hello asked for. `psk` is `None` when the server has no
/// key configured, in which case only cipher 0 is available.
pub fn negotiate(
    cipher_id: u8,
    psk: Option<&[u8; PSK_LEN]>,
    client_nonce: &[u8],
    server_nonce: &[u8],
    role: Role,
) -> Result<Box<dyn PayloadCipher>, CipherError> {
    match (cipher_id, psk) {
        (CIPHER_NONE, _) => Ok(Box::new(NoCipher)),
        (CIPHER_CHACHA20_POLY1305, Some(psk)) if client_nonce.len() == CONNECTION_NONCE_LEN => Ok(
            Box::new(ChaChaCipher::derive(psk, client_nonce, server_nonce, role)),
        ),
        (other, _) => Err(CipherError::Unknown(other)),
    }
}
