//! Request, response and event bodies: one struct per command.
//!
//! These types are the wire contract of protocol.md. Field order is encoding
//! order; adding, removing or reordering a field is a protocol version change.
//! Maps are `BTreeMap` so that encoding is deterministic (test vectors). Plain
//! data only: validation of lengths and rules lives in `validate.rs`, encoding
//! in `body_codec.rs`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub type UserId = u64;
pub type ConversationId = u64;
pub type MessageId = u64;
pub type Seq = u64;

// ---------------------------------------------------------------- session

/// First frame of every connection (client to server).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Lowest protocol version the client speaks.
    pub version_min: u8,
    /// Highest protocol version the client speaks.
    pub version_max: u8,
    /// Payload cipher the client wants for every frame after `HelloAck`
    /// (0 none, 1 chacha20-poly1305).
    pub cipher: u8,
    /// 16 random bytes; half of the salt of the per-connection cipher key.
    #[serde(deserialize_with = "crate::protocol::body_codec::bounded_vec")]
    pub client_nonce: Vec<u8>,
    /// Free-form client name and version, for logs ("gust-cli/0.1").
    pub agent: String,
}

/// The server's answer to `Hello`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloAck {
    /// The version every later frame must carry.
    pub version: u8,
    pub server_version_min: u8,
    pub server_version_max: u8,
    /// The cipher every later frame must carry (the client's choice).
    pub cipher: u8,
    /// 16 random bytes; the other half of the cipher key salt.
    #[serde(deserialize_with = "crate::protocol::body_codec::bounded_vec")]
    pub server_nonce: Vec<u8>,
    /// Send a frame (a ping if nothing else) at least this often; the server
    /// closes a connection silent for its idle timeout (protocol.md, "Heartbeat").
    pub heartbeat_interval_ms: u32,
    /// Largest payload the server accepts.
    pub payload_len_max: u32,
    pub server: String,
}

impl HelloAck {
    /// The payload limit to use with this server: its own, but never above
    /// the ceiling, so a broken server cannot make a client reserve gigabytes.
    pub fn payload_len_limit(&self) -> u32 {
        self.payload_len_max.min(crate::limits::PAYLOAD_LEN_CEILING)
    }

    /// A decoder for every frame after this one.
    pub fn decoder(&self) -> super::FrameDecoder {
        let mut decoder = super::FrameDecoder::new(self.payload_len_limit());
        decoder.require_version(self.version);
        decoder
    }

    /// How often to send a frame when idle; `None` when the server asks for
    /// no heartbeat (0).
    pub fn heartbeat(&self) -> Option<std::time::Duration> {
        match self.heartbeat_interval_ms {
            0 => None,
            ms => Some(std::time::Duration::from_millis(u64::from(ms))),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    pub username: String,
    pub password: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    pub user_id: UserId,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Login {
    pub username: String,
    pub password: String,
    /// Stable id of this install, chosen by the client.
    pub device_id: String,
}

/// Resume a session with a token from an earlier `LoggedIn`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    #[serde(deserialize_with = "crate::protocol::body_codec::bounded_vec")]
    pub session_token: Vec<u8>,
    pub device_id: String,
}

/// Answer to `Login` and `Resume`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedIn {
    pub user_id: UserId,
    pub username: String,
    pub device_id: String,
    /// A new token after `Login`; the same token after `Resume`.
    #[serde(deserialize_with = "crate::protocol::body_codec::bounded_vec")]
    pub session_token: Vec<u8>,
    pub server_time_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logout {}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// Echoed in the pong; lets the client measure round trips.
    pub nonce: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    pub nonce: u64,
    pub server_time_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GoingAwayReason {
    /// The server is shutting down.
    Shutdown,
    /// No frame arrived within the idle deadline.
    Idle,
    /// The same device logged in on another connection.
    Replaced,
    /// The session was revoked (logout elsewhere).
    Revoked,
}

/// Sent by the server just before it closes a healthy connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoingAway {
    pub reason: GoingAwayReason,
    /// Wait at least this long before reconnecting (0: at once).
    pub reconnect_after_ms: u32,
}

/// Sent by the server for a failed request (same request id) or before closing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// A `StatusCode` value. Unknown codes must be treated as `internal`.
    pub code: u16,
    /// True when the server closes the connection after this frame.
    pub closing: bool,
    /// Human-readable detail, for logs. Never parse it.
    pub message: String,
}

/// Empty success response for commands that return nothing else.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OkReply {}

// ---------------------------------------------------------------- messages

/// Where a message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// The 1:1 conversation with this user (created on first send).
    User(UserId),
    /// An existing conversation: a group, or a known 1:1.
    Conversation(ConversationId),
}

/// What a message carries. Media is referenced by URL, never inlined.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Content {
    Text {
        text: String,
    },
    Image {
        url: String,
        width: u32,
        height: u32,
        size_bytes: u64,
    },
    Voice {
        url: String,
        duration_ms: u32,
        size_bytes: u64,
    },
    Video {
        url: String,
        duration_ms: u32,
        width: u32,
        height: u32,
        size_bytes: u64,
        thumbnail_url: String,
    },
    File {
        url: String,
        name: String,
        size_bytes: u64,
        mime_type: String,
    },
    Location {
        latitude: f64,
        longitude: f64,
        label: String,
    },
    Custom {
        kind: String,
        #[serde(deserialize_with = "crate::protocol::body_codec::bounded_vec")]
        data: Vec<u8>,
    },
    /// Written by the server when a sender recalls message `seq`.
    Recalled {
        seq: Seq,
    },
    /// Written by the server for group lifecycle changes.
    GroupEvent {
        event: GroupEventKind,
        actor: UserId,
        #[serde(deserialize_with = "crate::protocol::body_codec::bounded_vec")]
        subjects: Vec<UserId>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupEventKind {
    Created,
    Joined,
    Quit,
    Kicked,
    Dissolved,
    OwnerChanged,
}

/// Send a message (client to server). Answered with `SendAck`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Send {
    /// Chosen by the client, unique per user; a retry with the same id returns
    /// the original ack and stores nothing twice.
    pub client_message_id: u64,
    pub to: Target,
    pub content: Content,
    pub extras: BTreeMap<String, String>,
}

/// The message is durable (per the server's durability setting).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendAck {
    pub client_message_id: u64,
    pub message_id: MessageId,
    pub conversation_id: ConversationId,
    pub seq: Seq,
    pub server_time_ms: u64,
}

/// A stored message as devices receive it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub conversation_id: ConversationId,
    pub seq: Seq,
    pub message_id: MessageId,
    pub sender_id: UserId,
    pub client_message_id: u64,
    pub server_time_ms: u64,
    pub content: Content,
    pub extras: BTreeMap<String, String>,
}

/// Push of a new message (server to client, request id 0).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Deliver {
    pub message: Message,
}

/// Cumulative: this device has every message of the conversation up to `seq`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryAck {
    pub conversation_id: ConversationId,
    pub seq: Seq,
}

/// Cumulative: the user has read the conversation up to `seq`; the other
/// members get a `Receipt`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadAck {
    pub conversation_id: ConversationId,
    pub seq: Seq,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReceiptKind {
    Delivered,
    Read,
}

/// Another member's delivery or read position (server to client).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub conversation_id: ConversationId,
    pub user_id: UserId,
    pub kind: ReceiptKind,
    pub seq: Seq,
}

/// Recall one's own message. Answered with `SendAck` for the `Recalled` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recall {
    pub client_message_id: u64,
    pub conversation_id: ConversationId,
    pub seq: Seq,
}

/// Ephemeral typing indicator; never stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Typing {
    pub conversation_id: ConversationId,
    pub typing: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypingEvent {
    pub conversation_id: ConversationId,
    pub user_id: UserId,
    pub typing: bool,
}

// ---------------------------------------------------------------- sync and history

/// The last seq a device holds in one conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncCursor {
    pub conversation_id: ConversationId,
    pub seq: Seq,
}

/// Fetch everything missed. Answered by zero or more `SyncPage` then one
/// `SyncEnd`, all with this request id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sync {
    /// Conversations not listed start after the user's delivered cursor.
    #[serde(deserialize_with = "crate::protocol::body_codec::bounded_vec")]
    pub cursors: Vec<SyncCursor>,
    /// Messages per page; 0 or more than the server's maximum means its maximum.
    pub page_messages_max: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyncPage {
    #[serde(deserialize_with = "crate::protocol::body_codec::bounded_vec")]
    pub messages: Vec<Message>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncEnd {
    /// Per conversation, the last seq covered by this sync.
    #[serde(deserialize_with = "crate::protocol::body_codec::bounded_vec")]
    pub cursors: Vec<SyncCursor>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HistoryAnchor {
    /// Messages with seq < n, newest first walked, returned ascending.
    BeforeSeq(Seq),
    /// Messages with seq > n, ascending.
    AfterSeq(Seq),
    /// Messages with server time < t (ms since the Unix epoch).
    BeforeTime(u64),
    /// Messages with server time >= t.
    AfterTime(u64),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    pub conversation_id: ConversationId,
    pub anchor: HistoryAnchor,
    pub limit: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryPage {
    /// Ascending by seq.
    #[serde(deserialize_with = "crate::protocol::body_codec::bounded_vec")]
    pub messages: Vec<Message>,
    /// True when more messages lie beyond this page in the anchor's direction.
    pub more: bool,
}

// ---------------------------------------------------------------- conversations

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationList {
    /// Resume after this conversation id (0: from the start).
    pub after_conversation_id: ConversationId,
    pub limit: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConversationKind {
    Direct { peer_id: UserId },
    Group,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConversationSummary {
    pub conversation_id: ConversationId,
    pub kind: ConversationKind,
    pub last_seq: Seq,
    pub read_seq: Seq,
    pub unread_count: u64,
    pub pinned: bool,
    pub muted: bool,
    pub last_message: Option<Message>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConversationListPage {
    #[serde(deserialize_with = "crate::protocol::body_codec::bounded_vec")]
    pub conversations: Vec<ConversationSummary>,
    pub more: bool,
}

/// Move the read cursor without sending a read receipt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkRead {
    pub conversation_id: ConversationId,
    pub seq: Seq,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetPinned {
    pub conversation_id: ConversationId,
    pub pinned: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetMuted {
    pub conversation_id: ConversationId,
    pub muted: bool,
}

/// Hide from the conversation list until the next message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HideConversation {
    pub conversation_id: ConversationId,
}

// ---------------------------------------------------------------- groups

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCreate {
    pub name: String,
    /// Initial members besides the creator.
    #[serde(deserialize_with = "crate::protocol::body_codec::bounded_vec")]
    pub members: Vec<UserId>,
}

/// Join, quit or dissolve name only the group; each is answered with `Ok`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRef {
    pub group_id: ConversationId,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMember {
    pub group_id: ConversationId,
    pub user_id: UserId,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    pub group_id: ConversationId,
    pub name: String,
    pub owner_id: UserId,
    pub member_count: u32,
    pub created_ms: u64,
    pub dissolved: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMembers {
    pub group_id: ConversationId,
    pub after_user_id: UserId,
    pub limit: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMembersPage {
    #[serde(deserialize_with = "crate::protocol::body_codec::bounded_vec")]
    pub members: Vec<UserId>,
    pub more: bool,
}

// ---------------------------------------------------------------- users and presence

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserKey {
    Id(UserId),
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserLookup {
    #[serde(deserialize_with = "crate::protocol::body_codec::bounded_vec")]
    pub users: Vec<UserKey>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub user_id: UserId,
    pub username: String,
    pub online: bool,
    pub last_seen_ms: u64,
}

/// Found users in request order; keys that match no user are left out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserList {
    #[serde(deserialize_with = "crate::protocol::body_codec::bounded_vec")]
    pub users: Vec<UserInfo>,
}

/// Receive `PresenceEvent`s for these users until the connection closes
/// (replaces the previous subscription).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceSubscribe {
    #[serde(deserialize_with = "crate::protocol::body_codec::bounded_vec")]
    pub users: Vec<UserId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEvent {
    pub user_id: UserId,
    pub online: bool,
    pub last_seen_ms: u64,
}
