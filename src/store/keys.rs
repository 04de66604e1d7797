//! Every storage key, encoded in one place.
//!
//! Integers are big-endian so that RocksDB's bytewise order is numeric order:
//! a range scan over `message(conversation, ..)` walks one conversation by seq,
//! and a scan over `member(user, ..)` lists one user's conversations.

use crate::protocol::{ConversationId, Seq, UserId};

pub const MESSAGE_KEY_LEN: usize = 16;

/// Column family `messages`: (conversation, seq) -> wire-encoded `Message`.
pub fn message(conversation_id: ConversationId, seq: Seq) -> [u8; MESSAGE_KEY_LEN] {
    pair(conversation_id, seq)
}

/// Splits a `messages` key back into (conversation, seq).
pub fn parse_message(key: &[u8]) -> Option<(ConversationId, Seq)> {
    parse_pair(key)
}

/// Column family `conversations`: conversation -> `ConversationRecord`.
pub fn conversation(conversation_id: ConversationId) -> [u8; 8] {
    conversation_id.to_be_bytes()
}

/// Column family `direct`: the 1:1 conversation of two users, lower id first,
/// so both users find the same conversation.
pub fn direct(user_a: UserId, user_b: UserId) -> [u8; 16] {
    pair(user_a.min(user_b), user_a.max(user_b))
}

/// Column family `members`: (user, conversation) -> `MemberRecord` (the user's
/// cursors and flags in that conversation). A prefix scan on the user lists
/// their conversations.
pub fn member(user_id: UserId, conversation_id: ConversationId) -> [u8; 16] {
    pair(user_id, conversation_id)
}

pub fn member_prefix(user_id: UserId) -> [u8; 8] {
    user_id.to_be_bytes()
}

pub fn parse_member(key: &[u8]) -> Option<(UserId, ConversationId)> {
    parse_pair(key)
}

/// Column family `users`: user id -> `UserRecord`.
pub fn user(user_id: UserId) -> [u8; 8] {
    user_id.to_be_bytes()
}

/// Column family `usernames`: username bytes -> user id (8 bytes BE).
pub fn username(name: &str) -> &[u8] {
    name.as_bytes()
}

/// Column family `sessions`: SHA-256 of the session token -> `SessionRecord`.
pub fn session(token_hash: &[u8; 32]) -> [u8; 32] {
    *token_hash
}

/// Column family `devices`: (user, device id) -> the SHA-256 of that
/// device's current session token (32 bytes), or nothing once it logged out
/// (`records::DeviceSession`), so that a new login on the device revokes the
/// token before it.
pub fn device(user_id: UserId, device_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + device_id.len());
    key.extend_from_slice(&user_id.to_be_bytes());
    key.extend_from_slice(device_id.as_bytes());
    key
}

/// Column family `dedupe`: (sender, client message id) -> the original ack.
pub fn dedupe(user_id: UserId, client_message_id: u64) -> [u8; 16] {
    pair(user_id, client_message_id)
}

/// Default column family: the id counters.
pub const COUNTERS: &[u8] = b"counters";

fn pair(a: u64, b: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&a.to_be_bytes());
    key[8..].copy_from_slice(&b.to_be_bytes());
    key
}

fn parse_pair(key: &[u8]) -> Option<(u64, u64)> {
    let (a, b) = key.split_first_chunk::<8>()?;
    let b: &[u8; 8] = b.try_into().ok()?;
    Some((u64::from_be_bytes(*a), u64::from_be_bytes(*b)))
}

pub fn decode_u64(value: &[u8]) -> Option<u64> {
    let bytes: &[u8; 8] = value.try_into().ok()?;
    Some(u64::from_be_bytes(*bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_keys_sort_by_conversation_then_seq() {
        let mut keys = [
            message(2, 1),
            message(1, 300),
            message(1, 2),
            message(1, 256),
        ];
        keys.sort();
        let parsed: Vec<_> = keys.iter().map(|k| parse_message(k).unwrap()).collect();
        assert_eq!(parsed, vec![(1, 2), (1, 256), (1, 300), (2, 1)]);
    }

    #[test]
    fn direct_key_is_symmetric() {
        assert_eq!(direct(5, 9), direct(9, 5));
        assert_ne!(direct(5, 9), direct(5, 10));
    }

    #[test]
    fn short_keys_do_not_parse() {
        assert_eq!(parse_message(&[0u8; 15]), None);
        assert_eq!(parse_member(&[0u8; 17]), None);
        assert_eq!(decode_u64(&[1, 2]), None);
    }
}
