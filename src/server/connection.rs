//! One client connection: its stage, its buffers, and its sync state.
//!
//! Memory per idle connection is a headline figure, so an idle connection
//! holds no buffers: `read_buf` is allocated only while a partial frame is
//! pending (whole frames are parsed straight from the shard's scratch
//! buffer), `out` is freed once drained, and sync and slow-consumer state are
//! boxed and absent unless in use. Only the owning shard touches it.

use std::collections::HashMap;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use mio::net::TcpStream;

use crate::protocol::cipher::PayloadCipher;
use crate::protocol::{ConversationId, FrameDecoder, Seq, SyncCursor, UserId};

/// The stages of a connection, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Connected; the first frame must be hello.
    AwaitHello,
    /// Hello done; register, login or resume expected.
    Unauthenticated,
    /// A register, login or resume is being processed off the shard.
    Authenticating,
    Authenticated {
        user_id: UserId,
    },
    /// Writing what is queued (an error or a going-away), then closing.
    Closing,
}

/// A sync in progress: pushes are held until it ends, so that a message is
/// neither lost nor sent twice.
pub struct SyncState {
    /// The client's request id, or 0 for a server-initiated catch-up.
    pub request_id: u32,
    pub only_listed: bool,
    pub page_messages_max: u32,
    /// Where the sync has reached, per conversation.
    pub cursors: HashMap<ConversationId, Seq>,
    /// Pushes that arrived meanwhile, released after `sync_end`.
    /// Pushes held during the sync: (conversation, seq, deliver payload).
    pub held: Vec<(ConversationId, Seq, Bytes)>,
    /// Too many pushes to hold: they were dropped and the sync will continue
    /// from storage instead.
    pub overflow: bool,
    /// The reader stopped early; continue from here once `out` drains.
    pub continuation: Option<Vec<SyncCursor>>,
}

pub struct Connection {
    pub socket: TcpStream,
    pub peer: SocketAddr,
    pub stage: Stage,
    pub decoder: FrameDecoder,
    /// `None` until hello negotiates a cipher other than none.
    pub cipher: Option<Box<dyn PayloadCipher>>,
    /// Bytes of a partial frame, kept between reads; empty otherwise.
    pub read_buf: BytesMut,
    /// Frames waiting for the socket; empty (unallocated) once drained.
    pub out: BytesMut,
    /// Shard tick the current stage's deadline counts from: accept (or a
    /// logout) for the handshake deadline, the start of closing for its grace.
    pub stage_since_tick: u64,
    /// Shard tick of the last whole frame, for the idle deadline.
    pub last_frame_tick: u64,
    pub sync: Option<Box<SyncState>>,
    /// Set when `out` passed its bound: pushes are dropped and the first
    /// dropped seq of each conversation is kept, to catch up from storage.
    pub behind: Option<Box<Vec<(ConversationId, Seq)>>>,
    /// Already in the shard's flush list this turn.
    pub flush_queued: bool,
    /// History, conversation-list and user-lookup requests queued to the
    /// readers and not yet answered (at most `limits::READS_IN_FLIGHT_MAX`).
    pub reads_in_flight: u8,
    /// Not read while `out` is over its bound or its reads in flight are at
    /// their limit, so that a client that never reads its answers cannot
    /// make the server queue more. Epoll is edge-triggered: resuming reads
    /// the socket once by hand.
    pub reading_paused: bool,
    /// The peer closed its side while reading was paused: epoll said so
    /// once, so the resumed read goes on to the end of the stream.
    pub read_closed: bool,
}

impl Connection {
    pub fn new(socket: TcpStream, peer: SocketAddr, payload_len_max: u32, tick: u64) -> Connection {
        Connection {
            socket,
            peer,
            stage: Stage::AwaitHello,
            decoder: FrameDecoder::new(payload_len_max),
            cipher: None,
            read_buf: BytesMut::new(),
            out: BytesMut::new(),
            stage_since_tick: tick,
            last_frame_tick: tick,
            sync: None,
            behind: None,
            flush_queued: false,
            reads_in_flight: 0,
            reading_paused: false,
            read_closed: false,
        }
    }

    pub fn user_id(&self) -> Option<UserId> {
        match self.stage {
            Stage::Authenticated { user_id } => Some(user_id),
            _ => None,
        }
    }

    /// Records a push dropped because the connection is behind.
    pub fn note_dropped(&mut self, conversation_id: ConversationId, seq: Seq) {
        let behind = self.behind.get_or_insert_with(Default::default);
        if !behind.iter().any(|(c, _)| *c == conversation_id) {
            behind.push((conversation_id, seq));
        }
    }
}
