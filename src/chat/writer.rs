//! The storage writer: the single owner of every write, every seq and every
//! id, and of the routing table that says which connections are online.
//!
//! One thread drains everything the shards and hashers have queued (up to
//! `batch_requests_max`), applies it to one RocksDB `WriteBatch`, commits it
//! once (fsync per the durability setting), and only then posts the acks and
//! deliveries back to the shards: group commit by construction. Because one
//! thread assigns seqs, a conversation's seqs are gapless and strictly
//! increasing, and the seq is written in the same atomic batch as the message.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use ring::digest;

use super::{frames, now_ms, ConnRef, MemberFlag, Reply, ShardEvent, ShardSink, WriterRequest};
use crate::protocol::body_codec;
use crate::protocol::*;
use crate::store::records::*;
use crate::store::{Batch, Store, StoreError};

/// Tunables (see `server::config` and `limits`).
#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// Requests applied to one batch before it is committed. Larger batches
    /// amortise the fsync; 4096 sends of ~200 bytes is ~1 MiB per commit.
    pub batch_requests_max: usize,
    /// Conversations kept in memory (about 150 bytes each for 1:1) before the
    /// cache is dropped and refilled from the store.
    pub conversation_cache_max: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            batch_requests_max: 4096,
            conversation_cache_max: 1_000_000,
        }
    }
}

/// One online connection of a user.
#[derive(Clone, Debug)]
struct Device {
    conn: ConnRef,
    device_id: String,
    token_hash: [u8; 32],
}

/// A request whose answer depends on the commit.
struct Refused {
    reply: Reply,
    /// Register, login or resume: the connection goes back to unauthenticated.
    unauthenticated: bool,
}

/// Everything one commit carries, and what to post once it is durable.
struct Cycle {
    batch: Batch,
    /// Posted only after the batch is durable.
    after_commit: Vec<ShardEvent>,
    /// Refused with `storage_unavailable` instead of `after_commit` if the
    /// commit fails (frames are built only then: the common case never pays).
    on_failure: Vec<Refused>,
    /// Posted whatever happens (errors, reads).
    immediate: Vec<ShardEvent>,
    dirty_conversations: HashSet<ConversationId>,
    dirty_members: HashSet<(UserId, ConversationId)>,
    sends: HashMap<(UserId, u64), SendAck>,
    usernames: HashSet<String>,
    routes_added: Vec<(UserId, ConnRef)>,
    counters_dirty: bool,
}

/// What the writer did over the last interval, logged at debug level: the
/// first thing to read when throughput disappoints.
#[derive(Default)]
struct CycleStats {
    since: Option<std::time::Instant>,
    cycles: u64,
    requests: u64,
    apply: std::time::Duration,
    commit: std::time::Duration,
}

impl CycleStats {
    fn record(&mut self, requests: usize, apply: std::time::Duration, commit: std::time::Duration) {
        let since = *self.since.get_or_insert_with(std::time::Instant::now);
        self.cycles += 1;
        self.requests += requests as u64;
        self.apply += apply;
        self.commit += commit;
        if since.elapsed() >= std::time::Duration::from_secs(5) {
            log::debug!(
                "writer: {} cycles, {:.0} requests per cycle, {:.0} us applying and {:.0} us committing per cycle",
                self.cycles,
                self.requests as f64 / self.cycles as f64,
                self.apply.as_micros() as f64 / self.cycles as f64,
                self.commit.as_micros() as f64 / self.cycles as f64,
            );
            *self = CycleStats::default();
        }
    }
}

pub struct Writer {
    store: Store,
    sink: Arc<dyn ShardSink>,
    config: WriterConfig,
    counters: Counters,
    conversations: HashMap<ConversationId, ConversationRecord>,
    members: HashMap<(UserId, ConversationId), MemberRecord>,
    direct: HashMap<(UserId, UserId), ConversationId>,
    online: HashMap<UserId, Vec<Device>>,
    last_seen_ms: HashMap<UserId, u64>,
}

/// Why a request failed, as the client will see it.
struct Refusal(StatusCode, &'static str);

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Refusal {
        log::error!("store read failed: {e}");
        Refusal(StatusCode::StorageUnavailable, "store unavailable")
    }
}

fn token_hash(token: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, token).as_ref());
    out
}

impl Writer {
    pub fn new(
        store: Store,
        sink: Arc<dyn ShardSink>,
        config: WriterConfig,
    ) -> Result<Writer, StoreError> {
        let counters = store.counters()?;
        Ok(Writer {
            store,
            sink,
            config,
            counters,
            conversations: HashMap::new(),
            members: HashMap::new(),
            direct: HashMap::new(),
            online: HashMap::new(),
            last_seen_ms: HashMap::new(),
        })
    }

    /// Runs until a `Shutdown` request arrives or every sender is gone.
    pub fn run(mut self, requests: Receiver<WriterRequest>) {
        let mut stats = CycleStats::default();
        loop {
            let Ok(first) = requests.recv() else {
                return;
            };
            let started = std::time::Instant::now();
            let mut cycle = self.new_cycle();
            let mut shutdown = self.apply(first, &mut cycle);
            let mut applied = 1;
            while !shutdown && applied < self.config.batch_requests_max {
                match requests.try_recv() {
                    Ok(request) => {
                        shutdown = self.apply(request, &mut cycle);
                        applied += 1;
                    }
                    Err(_) => break,
                }
            }
            let applied_at = std::time::Instant::now();
            self.commit(cycle);
            stats.record(applied, applied_at - started, applied_at.elapsed());
            if shutdown {
                log::info!("storage writer stopped");
                return;
            }
        }
    }

    fn new_cycle(&mut self) -> Cycle {
        if self.conversations.len() > self.config.conversation_cache_max {
            self.conversations.clear();
            self.direct.clear();
        }
        if self.members.len() > self.config.conversation_cache_max {
            self.members.clear();
        }
        Cycle {
            batch: self.store.batch(),
            after_commit: Vec::new(),
            on_failure: Vec::new(),
            immediate: Vec::new(),
            dirty_conversations: HashSet::new(),
            dirty_members: HashSet::new(),
            sends: HashMap::new(),
            usernames: HashSet::new(),
            routes_added: Vec::new(),
            counters_dirty: false,
        }
    }

    /// Applies one request to the cycle. Returns true on shutdown.
    fn apply(&mut self, request: WriterRequest, cycle: &mut Cycle) -> bool {
        // Authentication requests leave the connection unauthenticated on failure.
        let authenticating = matches!(
            request,
            WriterRequest::Register { .. }
                | WriterRequest::OpenSession { .. }
                | WriterRequest::Resume { .. }
        );
        let (reply, result) = match request {
            WriterRequest::Shutdown => return true,
            WriterRequest::Register {
                reply,
                username,
                password_hash,
            } => (reply, self.register(cycle, reply, username, password_hash)),
            WriterRequest::OpenSession {
                reply,
                user_id,
                device_id,
                token,
            } => (
                reply,
                self.open_session(cycle, reply, user_id, device_id, token),
            ),
            WriterRequest::Resume {
                reply,
                token,
                device_id,
            } => (reply, self.resume(cycle, reply, token, device_id)),
            WriterRequest::Logout { reply, user_id } => (reply, self.logout(cycle, reply, user_id)),
            WriterRequest::Disconnected { conn, user_id } => {
                self.remove_route(user_id, conn);
                return false;
            }
            WriterRequest::Send {
                reply,
                user_id,
                send,
            } => (reply, self.send(cycle, reply, user_id, *send)),
            WriterRequest::DeliveryAck {
                reply,
                user_id,
                conversation_id,
                seq,
            } => (
                reply,
                self.advance_cursor(
                    cycle,
                    user_id,
                    conversation_id,
                    seq,
                    ReceiptKind::Delivered,
                    true,
                ),
            ),
            WriterRequest::ReadAck {
                reply,
                user_id,
                conversation_id,
                seq,
                receipt,
            } => (
                reply,
                self.advance_cursor(
                    cycle,
                    user_id,
                    conversation_id,
                    seq,
                    ReceiptKind::Read,
                    receipt,
                ),
            ),
            WriterRequest::UserLookup { reply, users } => {
                (reply, self.user_lookup(cycle, reply, users))
            }
            WriterRequest::SetFlag {
                reply,
                user_id,
                conversation_id,
                flag,
            } => (
                reply,
                self.set_flag(cycle, reply, user_id, conversation_id, flag),
            ),
        };
        if let Err(Refusal(code, message)) = result {
            let frame = frames::error(reply.request_id, code, message, false);
            let event = if authenticating {
                ShardEvent::Unauthenticated {
                    conn: reply.conn,
                    frame,
                }
            } else {
                ShardEvent::Frame {
                    conn: reply.conn,
                    frame,
                }
            };
            cycle.immediate.push(event);
        }
        false
    }

    fn commit(&mut self, mut cycle: Cycle) {
        let mut write_error = None;
        for conversation_id in cycle.dirty_conversations.drain() {
            if let Some(record) = self.conversations.get(&conversation_id) {
                if let Err(e) = cycle.batch.put_conversation(conversation_id, record) {
                    write_error = Some(e);
                }
            }
        }
        for (user_id, conversation_id) in cycle.dirty_members.drain() {
            if let Some(record) = self.members.get(&(user_id, conversation_id)) {
                if let Err(e) = cycle.batch.put_member(user_id, conversation_id, record) {
                    write_error = Some(e);
                }
            }
        }
        if cycle.counters_dirty {
            if let Err(e) = cycle.batch.put_counters(&self.counters) {
                write_error = Some(e);
            }
        }
        let outcome = match write_error {
            Some(e) => Err(e),
            None if cycle.batch.is_empty() => Ok(()),
            None => self.store.commit(cycle.batch),
        };
        let mut events = cycle.immediate;
        match outcome {
            Ok(()) => events.append(&mut cycle.after_commit),
            Err(e) => {
                log::error!(
                    "commit failed, {} replies refused: {e}",
                    cycle.on_failure.len()
                );
                for (user_id, conn) in cycle.routes_added {
                    self.remove_route(user_id, conn);
                }
                self.forget_cached_state();
                for refused in cycle.on_failure {
                    let frame = frames::error(
                        refused.reply.request_id,
                        StatusCode::StorageUnavailable,
                        "store unavailable; nothing was written",
                        false,
                    );
                    let conn = refused.reply.conn;
                    events.push(if refused.unauthenticated {
                        ShardEvent::Unauthenticated { conn, frame }
                    } else {
                        ShardEvent::Frame { conn, frame }
                    });
                }
            }
        }
        if !events.is_empty() {
            self.sink.post(events);
        }
    }

    /// After a failed commit the caches may hold state the store does not:
    /// drop them and reread.
    fn forget_cached_state(&mut self) {
        self.conversations.clear();
        self.members.clear();
        self.direct.clear();
        match self.store.counters() {
            Ok(counters) => self.counters = counters,
            Err(e) => log::error!("cannot reread counters: {e}"),
        }
    }

    fn refuse_on_failure(cycle: &mut Cycle, reply: Reply) {
        cycle.on_failure.push(Refused {
            reply,
            unauthenticated: false,
        });
    }

    // ------------------------------------------------------------ accounts

    fn register(
        &mut self,
        cycle: &mut Cycle,
        reply: Reply,
        username: String,
        password_hash: String,
    ) -> Result<(), Refusal> {
        if cycle.usernames.contains(&username) || self.store.user_id_by_name(&username)?.is_some() {
            return Err(Refusal(StatusCode::Conflict, "username taken"));
        }
        let user_id = self.counters.next_user_id;
        self.counters.next_user_id += 1;
        cycle.counters_dirty = true;
        let record = UserRecord {
            username: username.clone(),
            password_hash,
            created_ms: now_ms(),
        };
        cycle.batch.put_user(user_id, &record)?;
        cycle.usernames.insert(username);
        let frame = frames::encode(reply.request_id, &Body::Registered(Registered { user_id }));
        cycle.after_commit.push(ShardEvent::Unauthenticated {
            conn: reply.conn,
            frame,
        });
        cycle.on_failure.push(Refused {
            reply,
            unauthenticated: true,
        });
        Ok(())
    }

    fn open_session(
        &mut self,
        cycle: &mut Cycle,
        reply: Reply,
        user_id: UserId,
        device_id: String,
        token: [u8; 32],
    ) -> Result<(), Refusal> {
        let user = self.store.user(user_id)?.ok_or(Refusal(
            StatusCode::Unauthorized,
            "wrong username or password",
        ))?;
        let hash = token_hash(&token);
        cycle.batch.put_session(
            &hash,
            &SessionRecord {
                user_id,
                device_id: device_id.clone(),
                created_ms: now_ms(),
            },
        )?;
        self.authenticate(
            cycle,
            reply,
            user_id,
            user.username,
            device_id,
            token.to_vec(),
            hash,
        );
        Ok(())
    }

    fn resume(
        &mut self,
        cycle: &mut Cycle,
        reply: Reply,
        token: Vec<u8>,
        device_id: String,
    ) -> Result<(), Refusal> {
        const INVALID: Refusal = Refusal(StatusCode::Unauthorized, "invalid session token");
        if token.len() != crate::limits::SESSION_TOKEN_LEN {
            return Err(INVALID);
        }
        let hash = token_hash(&token);
        let session = self.store.session(&hash)?.ok_or(INVALID)?;
        if session.device_id != device_id {
            return Err(INVALID);
        }
        let user = self.store.user(session.user_id)?.ok_or(INVALID)?;
        self.authenticate(
            cycle,
            reply,
            session.user_id,
            user.username,
            device_id,
            token,
            hash,
        );
        Ok(())
    }

    /// Routes the connection as the user's device (replacing the same device
    /// on another connection) and answers `logged_in` once durable.
    #[allow(clippy::too_many_arguments)]
    fn authenticate(
        &mut self,
        cycle: &mut Cycle,
        reply: Reply,
        user_id: UserId,
        username: String,
        device_id: String,
        token: Vec<u8>,
        hash: [u8; 32],
    ) {
        // Most users have one device online: no room reserved for four.
        let devices = self
            .online
            .entry(user_id)
            .or_insert_with(|| Vec::with_capacity(1));
        if let Some(at) = devices
            .iter()
            .position(|d| d.device_id == device_id && d.conn != reply.conn)
        {
            let replaced = devices.swap_remove(at);
            cycle.after_commit.push(ShardEvent::Close {
                conn: replaced.conn,
                frame: frames::encode(
                    0,
                    &Body::GoingAway(GoingAway {
                        reason: GoingAwayReason::Replaced,
                        reconnect_after_ms: 0,
                    }),
                ),
            });
        }
        devices.push(Device {
            conn: reply.conn,
            device_id: device_id.clone(),
            token_hash: hash,
        });
        cycle.routes_added.push((user_id, reply.conn));
        let body = Body::LoggedIn(LoggedIn {
            user_id,
            username,
            device_id,
            session_token: token,
            server_time_ms: now_ms(),
        });
        cycle.after_commit.push(ShardEvent::Authenticated {
            conn: reply.conn,
            user_id,
            frame: frames::encode(reply.request_id, &body),
        });
        cycle.on_failure.push(Refused {
            reply,
            unauthenticated: true,
        });
    }

    fn logout(&mut self, cycle: &mut Cycle, reply: Reply, user_id: UserId) -> Result<(), Refusal> {
        let device = self
            .online
            .get(&user_id)
            .and_then(|devices| devices.iter().find(|d| d.conn == reply.conn))
            .cloned()
            .ok_or(Refusal(StatusCode::Unauthenticated, "not logged in"))?;
        cycle.batch.delete_session(&device.token_hash)?;
        self.remove_route(user_id, reply.conn);
        cycle.after_commit.push(ShardEvent::Unauthenticated {
            conn: reply.conn,
            frame: frames::encode(reply.request_id, &Body::Ok(OkReply {})),
        });
        Self::refuse_on_failure(cycle, reply);
        Ok(())
    }

    fn remove_route(&mut self, user_id: UserId, conn: ConnRef) {
        if let Some(devices) = self.online.get_mut(&user_id) {
            devices.retain(|d| d.conn != conn);
            if devices.is_empty() {
                self.online.remove(&user_id);
                self.last_seen_ms.insert(user_id, now_ms());
            }
        }
    }

    fn user_lookup(
        &mut self,
        cycle: &mut Cycle,
        reply: Reply,
        keys: Vec<UserKey>,
    ) -> Result<(), Refusal> {
        if keys.len() > crate::limits::QUERY_USERS_MAX {
            return Err(Refusal(
                StatusCode::TooLarge,
                "too many users in one lookup",
            ));
        }
        let mut users = Vec::with_capacity(keys.len());
        for key in keys {
            let user_id = match key {
                UserKey::Id(id) => Some(id),
                UserKey::Name(name) => self.store.user_id_by_name(&name)?,
            };
            let Some(user_id) = user_id else { continue };
            let Some(record) = self.store.user(user_id)? else {
                continue;
            };
            users.push(UserInfo {
                user_id,
                username: record.username,
                online: self.online.contains_key(&user_id),
                last_seen_ms: self.last_seen_ms.get(&user_id).copied().unwrap_or(0),
            });
        }
        cycle.immediate.push(ShardEvent::Frame {
            conn: reply.conn,
            frame: frames::encode(reply.request_id, &Body::UserList(UserList { users })),
        });
        Ok(())
    }

    // ------------------------------------------------------------ messages

    fn conversation(
        &mut self,
        conversation_id: ConversationId,
    ) -> Result<Option<&mut ConversationRecord>, Refusal> {
        if !self.conversations.contains_key(&conversation_id) {
            match self.store.conversation(conversation_id)? {
                Some(record) => {
                    self.conversations.insert(conversation_id, record);
                }
                None => return Ok(None),
            }
        }
        Ok(self.conversations.get_mut(&conversation_id))
    }

    /// The 1:1 conversation of two users, created on first use.
    fn direct_conversation(
        &mut self,
        cycle: &mut Cycle,
        user_id: UserId,
        peer_id: UserId,
    ) -> Result<ConversationId, Refusal> {
        let pair = (user_id.min(peer_id), user_id.max(peer_id));
        if let Some(id) = self.direct.get(&pair) {
            return Ok(*id);
        }
        if let Some(id) = self.store.direct_conversation(user_id, peer_id)? {
            self.direct.insert(pair, id);
            return Ok(id);
        }
        if self.store.user(peer_id)?.is_none() {
            return Err(Refusal(StatusCode::NotFound, "no such user"));
        }
        let conversation_id = self.counters.next_conversation_id;
        self.counters.next_conversation_id += 1;
        cycle.counters_dirty = true;
        let mut members = vec![pair.0];
        if pair.1 != pair.0 {
            members.push(pair.1);
        }
        for member in &members {
            self.members
                .insert((*member, conversation_id), MemberRecord::default());
            cycle.dirty_members.insert((*member, conversation_id));
        }
        self.conversations.insert(
            conversation_id,
            ConversationRecord {
                kind: ConversationRecordKind::Direct,
                members,
                last_seq: 0,
                last_time_ms: 0,
                created_ms: now_ms(),
            },
        );
        cycle.dirty_conversations.insert(conversation_id);
        cycle.batch.put_direct(pair.0, pair.1, conversation_id)?;
        self.direct.insert(pair, conversation_id);
        Ok(conversation_id)
    }

    fn send(
        &mut self,
        cycle: &mut Cycle,
        reply: Reply,
        user_id: UserId,
        send: Send,
    ) -> Result<(), Refusal> {
        let dedupe_key = (user_id, send.client_message_id);
        if let Some(ack) = cycle.sends.get(&dedupe_key) {
            // A retry inside the same batch: answer once the original is durable.
            let frame = frames::encode(reply.request_id, &Body::SendAck(ack.clone()));
            cycle.after_commit.push(ShardEvent::Frame {
                conn: reply.conn,
                frame,
            });
            Self::refuse_on_failure(cycle, reply);
            return Ok(());
        }
        if let Some(record) = self.store.dedupe(user_id, send.client_message_id)? {
            let ack = SendAck {
                client_message_id: send.client_message_id,
                message_id: record.message_id,
                conversation_id: record.conversation_id,
                seq: record.seq,
                server_time_ms: record.server_time_ms,
            };
            let frame = frames::encode(reply.request_id, &Body::SendAck(ack));
            cycle.immediate.push(ShardEvent::Frame {
                conn: reply.conn,
                frame,
            });
            return Ok(());
        }
        let conversation_id = match send.to {
            Target::User(peer_id) => self.direct_conversation(cycle, user_id, peer_id)?,
            Target::Conversation(id) => id,
        };
        let message_id = self.counters.next_message_id;
        let record = self
            .conversation(conversation_id)?
            .ok_or(Refusal(StatusCode::NotFound, "no such conversation"))?;
        if !record.members.contains(&user_id) {
            return Err(Refusal(
                StatusCode::Forbidden,
                "not a member of this conversation",
            ));
        }
        let seq = record.last_seq + 1;
        // Times never go backwards inside a conversation (history by time
        // relies on it), even if the wall clock does.
        let server_time_ms = now_ms().max(record.last_time_ms);
        record.last_seq = seq;
        record.last_time_ms = server_time_ms;
        let members = record.members.clone();
        self.counters.next_message_id += 1;
        cycle.counters_dirty = true;
        cycle.dirty_conversations.insert(conversation_id);

        let message = Message {
            conversation_id,
            seq,
            message_id,
            sender_id: user_id,
            client_message_id: send.client_message_id,
            server_time_ms,
            content: send.content,
            extras: send.extras,
        };
        let wire = body_codec::encode_to_vec(&message).map_err(|e| {
            log::error!("cannot encode a message: {e}");
            Refusal(StatusCode::Internal, "message could not be encoded")
        })?;
        cycle.batch.put_message(conversation_id, seq, &wire)?;
        let dedupe = DedupeRecord {
            message_id,
            conversation_id,
            seq,
            server_time_ms,
        };
        cycle
            .batch
            .put_dedupe(user_id, send.client_message_id, &dedupe)?;
        let ack = SendAck {
            client_message_id: send.client_message_id,
            message_id,
            conversation_id,
            seq,
            server_time_ms,
        };
        cycle.sends.insert(dedupe_key, ack.clone());
        cycle.after_commit.push(ShardEvent::Frame {
            conn: reply.conn,
            frame: frames::encode(reply.request_id, &Body::SendAck(ack)),
        });
        Self::refuse_on_failure(cycle, reply);

        // `Deliver { message }` encodes exactly as the stored message: frame
        // the stored bytes once and share them with every recipient.
        let deliver = frames::raw(0, Command::Deliver, &wire);
        for member in members {
            let Some(devices) = self.online.get(&member) else {
                continue;
            };
            for device in devices.iter().filter(|d| d.conn != reply.conn) {
                cycle.after_commit.push(ShardEvent::Deliver {
                    conn: device.conn,
                    conversation_id,
                    seq,
                    frame: deliver.clone(),
                });
            }
        }
        Ok(())
    }

    /// The member record of a user in a conversation, cached; `forbidden` for
    /// a non-member, `not_found` for no such conversation.
    fn member_mut(
        &mut self,
        user_id: UserId,
        conversation_id: ConversationId,
    ) -> Result<&mut MemberRecord, Refusal> {
        let key = (user_id, conversation_id);
        if !self.members.contains_key(&key) {
            let Some(record) = self.store.member(user_id, conversation_id)? else {
                return Err(match self.conversation(conversation_id)? {
                    Some(_) => Refusal(StatusCode::Forbidden, "not a member of this conversation"),
                    None => Refusal(StatusCode::NotFound, "no such conversation"),
                });
            };
            self.members.insert(key, record);
        }
        self.members
            .get_mut(&key)
            .ok_or(Refusal(StatusCode::Internal, "member cache"))
    }

    fn set_flag(
        &mut self,
        cycle: &mut Cycle,
        reply: Reply,
        user_id: UserId,
        conversation_id: ConversationId,
        flag: MemberFlag,
    ) -> Result<(), Refusal> {
        let last_seq = match flag {
            MemberFlag::Hidden => self
                .conversation(conversation_id)?
                .map(|c| c.last_seq)
                .unwrap_or(0),
            _ => 0,
        };
        let member = self.member_mut(user_id, conversation_id)?;
        match flag {
            MemberFlag::Pinned(pinned) => member.pinned = pinned,
            MemberFlag::Muted(muted) => member.muted = muted,
            MemberFlag::Hidden => member.hidden_through_seq = Some(last_seq),
        }
        cycle.dirty_members.insert((user_id, conversation_id));
        cycle.after_commit.push(ShardEvent::Frame {
            conn: reply.conn,
            frame: frames::encode(reply.request_id, &Body::Ok(OkReply {})),
        });
        Self::refuse_on_failure(cycle, reply);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn advance_cursor(
        &mut self,
        cycle: &mut Cycle,
        user_id: UserId,
        conversation_id: ConversationId,
        seq: Seq,
        kind: ReceiptKind,
        receipt: bool,
    ) -> Result<(), Refusal> {
        let Some(conversation) = self.conversation(conversation_id)? else {
            return Err(Refusal(StatusCode::NotFound, "no such conversation"));
        };
        // Cursors never pass the newest message.
        let seq = seq.min(conversation.last_seq);
        let key = (user_id, conversation_id);
        let member = self.member_mut(user_id, conversation_id)?;
        let advanced = match kind {
            ReceiptKind::Delivered if seq > member.delivered_seq => {
                member.delivered_seq = seq;
                true
            }
            ReceiptKind::Read if seq > member.read_seq => {
                member.read_seq = seq;
                member.delivered_seq = member.delivered_seq.max(seq);
                true
            }
            _ => false,
        };
        if !advanced {
            return Ok(());
        }
        cycle.dirty_members.insert(key);
        if receipt {
            let frame = frames::encode(
                0,
                &Body::Receipt(Receipt {
                    conversation_id,
                    user_id,
                    kind,
                    seq,
                }),
            );
            // Borrowed, not cloned: acks are on the per-message path.
            let members = self
                .conversations
                .get(&conversation_id)
                .map(|c| c.members.as_slice())
                .unwrap_or_default();
            for member in members.iter().filter(|m| **m != user_id) {
                let Some(devices) = self.online.get(member) else {
                    continue;
                };
                for device in devices {
                    cycle.after_commit.push(ShardEvent::Frame {
                        conn: device.conn,
                        frame: frame.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}
