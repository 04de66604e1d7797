//! Domain logic: accounts, 1:1 chat, sync and history. Nothing here knows
//! about sockets or mio.
//!
//! Shards turn frames into [`WriterRequest`]s, [`ReaderJob`]s and [`HashJob`]s;
//! the storage writer, the readers and the hashers answer with
//! [`ShardEvent`]s posted through a [`ShardSink`], which the server implements
//! with per-shard inboxes and mio wakers.
//!
//! - `writer`: the single owner of seqs, ids and routing; group commit.
//! - `reader`: sync and history, off the shard threads.
//! - `accounts`: password hashing and login throttling, off the shard threads.
//! - `validate`: field rules for bodies coming from clients.

pub mod accounts;
pub mod frames;
pub mod reader;
pub mod validate;
pub mod writer;

use bytes::Bytes;

use crate::protocol::{
    ConversationId, ConversationList, History, Send, SendAck, Seq, SyncCursor, UserId, UserKey,
};

pub use accounts::HashJob;

/// A connection somewhere in the server: its shard and its slot token (which
/// carries a generation, so a stale reference to a reused slot is ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnRef {
    pub shard: u16,
    pub token: u64,
}

/// Where the answer to a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    pub conn: ConnRef,
    pub request_id: u32,
}

/// Work for a shard, produced by the writer, its committer, the readers and
/// the hashers. `frame`s are encoded once, in plaintext, with their request
/// id, and resealed by the shard when the connection uses a payload cipher;
/// the two per-message events (`SendAck`, `Deliver`) carry data instead, and
/// the shard encodes them straight into the connection's buffer.
#[derive(Debug)]
pub enum ShardEvent {
    /// A response or error: always written.
    Frame { conn: ConnRef, frame: Bytes },
    /// The answer (a page, a user list or an error) to a history,
    /// conversation-list or user-lookup request: written, and the
    /// connection's reads in flight counted down.
    ReadAnswer { conn: ConnRef, frame: Bytes },
    /// A send's ack, encoded by the shard straight into the connection's
    /// buffer: the storage writer, which every send passes through, does not
    /// spend its time on frames.
    SendAck {
        conn: ConnRef,
        request_id: u32,
        ack: SendAck,
    },
    /// A push of a stored message: held during a sync, dropped (and caught up
    /// later from storage) when the connection is behind. `message` is the
    /// stored encoding of the `Message`, which is exactly a `deliver` payload;
    /// the shard frames it for each recipient.
    Deliver {
        conn: ConnRef,
        conversation_id: ConversationId,
        seq: Seq,
        message: Bytes,
    },
    /// Login or resume succeeded: the connection is now this user's device.
    Authenticated {
        conn: ConnRef,
        user_id: UserId,
        frame: Bytes,
    },
    /// Register finished, or login/resume failed, or logout: the connection is
    /// (again) unauthenticated.
    Unauthenticated { conn: ConnRef, frame: Bytes },
    /// A sync job wrote its pages; `more` when it stopped early to let the
    /// connection drain and should be continued from `cursors`.
    SyncDone {
        conn: ConnRef,
        request_id: u32,
        cursors: Vec<SyncCursor>,
        more: bool,
        /// The job failed and already sent an error: end the sync without a
        /// `sync_end`, releasing held pushes.
        failed: bool,
    },
    /// Write `frame` (a going-away) and close.
    Close { conn: ConnRef, frame: Bytes },
    /// Stop: going-away to everyone, flush, exit the loop.
    Shutdown,
}

impl ShardEvent {
    /// The connection the event is for; `None` for shutdown (every shard).
    pub fn conn(&self) -> Option<ConnRef> {
        match self {
            ShardEvent::Frame { conn, .. }
            | ShardEvent::ReadAnswer { conn, .. }
            | ShardEvent::SendAck { conn, .. }
            | ShardEvent::Deliver { conn, .. }
            | ShardEvent::Authenticated { conn, .. }
            | ShardEvent::Unauthenticated { conn, .. }
            | ShardEvent::SyncDone { conn, .. }
            | ShardEvent::Close { conn, .. } => Some(*conn),
            ShardEvent::Shutdown => None,
        }
    }
}

/// How the domain side reaches the shards.
pub trait ShardSink: std::marker::Send + Sync {
    /// Appends events to each shard's inbox and wakes the shards concerned.
    fn post(&self, events: Vec<ShardEvent>);

    /// Shards that events can be addressed to (`ConnRef::shard` below this).
    fn shard_count(&self) -> usize {
        1
    }

    /// Posts events already sorted by shard: one append per shard.
    fn post_sorted(&self, events: ShardEvents) {
        self.post(events.per_shard.into_iter().flatten().collect());
    }
}

/// Events sorted by shard as they are made, so that handing them over costs
/// one append per shard, not a routing step per event. The storage writer
/// builds a commit's acks and pushes this way: posting a cycle's ~8,000
/// events one by one cost its committer ~2 ms of every ~18 ms cycle, on the
/// path that every acknowledgement waits on (BENCHMARKS.md).
#[derive(Debug)]
pub struct ShardEvents {
    /// Indexed by `ConnRef::shard`; one list when the sink has one shard.
    per_shard: Vec<Vec<ShardEvent>>,
}

impl ShardEvents {
    /// Empty lists for `shard_count` shards, each with room for `capacity`.
    pub fn new(shard_count: usize, capacity: usize) -> ShardEvents {
        ShardEvents {
            per_shard: (0..shard_count.max(1))
                .map(|_| Vec::with_capacity(capacity))
                .collect(),
        }
    }

    /// Files the event under its connection's shard. `Shutdown`, which names
    /// no connection, goes to every shard.
    pub fn push(&mut self, event: ShardEvent) {
        let shards = self.per_shard.len();
        match event.conn() {
            Some(conn) => {
                let shard = if shards == 1 {
                    0
                } else {
                    usize::from(conn.shard)
                };
                match self.per_shard.get_mut(shard) {
                    Some(events) => events.push(event),
                    // A connection of a shard that does not exist: a bug.
                    None => debug_assert!(false, "event for shard {shard} of {shards}"),
                }
            }
            None => {
                for events in &mut self.per_shard {
                    events.push(ShardEvent::Shutdown);
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.per_shard.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.per_shard.iter().all(Vec::is_empty)
    }

    /// The longest shard's list (to size the next batch of lists).
    pub fn longest(&self) -> usize {
        self.per_shard.iter().map(Vec::len).max().unwrap_or(0)
    }

    /// The lists by shard index, for the sink.
    pub fn into_per_shard(self) -> Vec<Vec<ShardEvent>> {
        self.per_shard
    }
}

/// Requests to the storage writer, in arrival order.
#[derive(Debug)]
pub enum WriterRequest {
    Register {
        reply: Reply,
        username: String,
        password_hash: String,
    },
    /// The password checked out (on a hasher thread): create a session.
    OpenSession {
        reply: Reply,
        user_id: UserId,
        device_id: String,
        token: [u8; 32],
    },
    Resume {
        reply: Reply,
        token: Vec<u8>,
        device_id: String,
    },
    Logout {
        reply: Reply,
        user_id: UserId,
    },
    /// The connection is gone: stop routing to it.
    Disconnected {
        conn: ConnRef,
        user_id: UserId,
    },
    Send {
        reply: Reply,
        user_id: UserId,
        send: Box<Send>,
    },
    DeliveryAck {
        reply: Reply,
        user_id: UserId,
        conversation_id: ConversationId,
        seq: Seq,
    },
    ReadAck {
        reply: Reply,
        user_id: UserId,
        conversation_id: ConversationId,
        seq: Seq,
        /// false for `mark_read`: move the cursor, send no receipt.
        receipt: bool,
    },
    /// Users a reader found for a `user_lookup`, in request order: the
    /// writer, which routes connections, adds who is online and answers.
    Presence {
        reply: Reply,
        users: Vec<(UserId, String)>,
    },
    /// Pin, mute or hide a conversation for this user.
    SetFlag {
        reply: Reply,
        user_id: UserId,
        conversation_id: ConversationId,
        flag: MemberFlag,
    },
    /// Commit what is pending and exit.
    Shutdown,
}

/// A per-user conversation setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberFlag {
    Pinned(bool),
    Muted(bool),
    /// Hidden until the next message.
    Hidden,
}

/// Reads that may touch disk, run on reader threads.
#[derive(Debug)]
pub enum ReaderJob {
    Sync {
        reply: Reply,
        user_id: UserId,
        cursors: Vec<SyncCursor>,
        /// Only the listed conversations (a slow consumer's catch-up), rather
        /// than every conversation of the user.
        only_listed: bool,
        page_messages_max: u32,
    },
    History {
        reply: Reply,
        user_id: UserId,
        history: History,
    },
    ConversationList {
        reply: Reply,
        user_id: UserId,
        list: ConversationList,
    },
    /// Finds the users (their store reads stay off the storage writer), then
    /// hands them to the writer for their presence.
    UserLookup {
        reply: Reply,
        users: Vec<UserKey>,
    },
    Shutdown,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_for(shard: u16, token: u64) -> ShardEvent {
        ShardEvent::Frame {
            conn: ConnRef { shard, token },
            frame: Bytes::from_static(b"x"),
        }
    }

    fn tokens(events: &[ShardEvent]) -> Vec<Option<u64>> {
        events
            .iter()
            .map(|event| event.conn().map(|conn| conn.token))
            .collect()
    }

    #[test]
    fn shard_events_are_filed_by_shard_in_order() {
        let mut events = ShardEvents::new(3, 0);
        for (shard, token) in [(2, 1), (0, 2), (2, 3), (1, 4), (0, 5)] {
            events.push(frame_for(shard, token));
        }
        events.push(ShardEvent::Shutdown);
        assert_eq!(events.len(), 8);
        assert_eq!(events.longest(), 3);
        let per_shard = events.into_per_shard();
        assert_eq!(tokens(&per_shard[0]), [Some(2), Some(5), None]);
        assert_eq!(tokens(&per_shard[1]), [Some(4), None]);
        assert_eq!(tokens(&per_shard[2]), [Some(1), Some(3), None]);
    }

    #[test]
    fn one_shard_takes_every_event() {
        let mut events = ShardEvents::new(1, 4);
        assert!(events.is_empty());
        events.push(frame_for(0, 1));
        events.push(frame_for(5, 2));
        let per_shard = events.into_per_shard();
        assert_eq!(per_shard.len(), 1);
        assert_eq!(tokens(&per_shard[0]), [Some(1), Some(2)]);
    }
}
