//! What the store keeps besides messages. Encoded with the wire encoding
//! (`protocol::body_codec`) so that one encoder serves disk and network.

use serde::{Deserialize, Serialize};

use crate::protocol::{MessageId, Seq, UserId};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub username: String,
    /// argon2id PHC string.
    pub password_hash: String,
    pub created_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub user_id: UserId,
    pub device_id: String,
    pub created_ms: u64,
}

/// A device's session as the `devices` family records it. Stored as the
/// token's SHA-256 (32 bytes), or nothing (0 bytes) once the device logged
/// out: a device with no record at all has sessions older than the family,
/// and the first of them to resume becomes its current one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSession {
    Current([u8; 32]),
    LoggedOut,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationRecord {
    pub kind: ConversationRecordKind,
    pub members: Vec<UserId>,
    /// Seq of the newest message; 0 while empty. Not stored: `Store::
    /// conversation` reads it from the log's tail, so the record is written
    /// once at creation instead of with every message, and can never
    /// disagree with the log.
    #[serde(skip)]
    pub last_seq: Seq,
    /// Server time of the newest message, read from the log like `last_seq`.
    /// Times within a conversation never decrease, which lets history find a
    /// time by binary search over seqs.
    #[serde(skip)]
    pub last_time_ms: u64,
    pub created_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConversationRecordKind {
    /// Two members (one when a user writes to themself).
    Direct,
    Group {
        name: String,
        owner_id: UserId,
    },
}

/// One user's position and preferences in one conversation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub delivered_seq: Seq,
    pub read_seq: Seq,
    pub pinned: bool,
    pub muted: bool,
    /// Hidden from the conversation list while the conversation's last seq is
    /// at most this: the next message shows it again without a write here.
    pub hidden_through_seq: Option<Seq>,
}

/// The original outcome of a send, returned again to a retry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupeRecord {
    pub message_id: MessageId,
    pub conversation_id: u64,
    pub seq: Seq,
    pub server_time_ms: u64,
}

/// Next ids to hand out. Written in every batch that consumed one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub next_user_id: UserId,
    pub next_conversation_id: u64,
    pub next_message_id: MessageId,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            next_user_id: 1,
            next_conversation_id: 1,
            next_message_id: 1,
        }
    }
}
