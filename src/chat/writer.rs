//! The storage writer: the single owner of every write, every seq and every
//! id, and of the routing table that says which connections are online.
//!
//! One thread drains what the shards and hashers have queued, in chunks, and
//! applies it to one RocksDB `WriteBatch` (up to `batch_requests_max`
//! requests); a second thread, the committer, writes that batch (fsync per
//! the durability setting) and only then posts its acks and deliveries to
//! the shards: group commit by construction. An idle committer gets the
//! first chunk at once. Because one thread assigns seqs, a conversation's
//! seqs are gapless and strictly increasing, and the seq is written in the
//! same atomic batch as the message.
//!
//! The two threads form a pipeline one batch deep: while batch N is being
//! written and fsynced, the writer applies the requests that arrive to the
//! open batch N+1 (and, once N lands, those that came while it slept), and
//! hands N+1 over at once. So a request waits for the rest of the write in
//! progress and then its own: one and a half writes on average. (A writer
//! that seals N+1 early and sleeps until N lands makes requests arriving
//! meanwhile wait for N+2: two and a half writes, measured in
//! BENCHMARKS.md.) Batch N+1 is built on N's in-memory effects, so:
//! - it is handed over only once N is known to be durable, and if N failed it
//!   is refused whole (nothing of it written) and the caches are reread;
//! - reads that could miss N's not-yet-written keys are answered from memory:
//!   dedupe entries, usernames and device sessions of the batch in flight
//!   (and of the open cycle) are kept until it lands, and the caches are
//!   only ever dropped with nothing in flight. Every
//!   other store read concerns keys a client can only learn of from an
//!   answer, and answers go out after their batch is durable.

use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use ring::digest;

use super::{
    frames, now_ms, ConnRef, MemberFlag, Reply, ShardEvent, ShardEvents, ShardSink, WriterRequest,
};
use crate::protocol::body_codec;
use crate::protocol::*;
use crate::store::records::*;
use crate::store::{Batch, Store, StoreError};

/// Requests taken from the queue and applied together (their dedupe entries
/// read in one batched lookup). The writer learns that the batch in flight
/// landed only between chunks, and applies one chunk of what arrived while it
/// slept before handing the next batch over, so this bounds how long the
/// committer can sit idle with a batch ready: ~0.25 ms at ~1 µs per request.
const APPLY_CHUNK_REQUESTS: usize = 256;

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
    /// Requests applied to it, against `batch_requests_max`.
    requests: usize,
    batch: Batch,
    /// Posted only after the batch is durable; sorted by shard as they are
    /// made, so the committer's hand-over is one append per shard.
    after_commit: ShardEvents,
    /// Refused with `storage_unavailable` instead of `after_commit` if the
    /// commit fails (frames are built only then: the common case never pays).
    on_failure: Vec<Refused>,
    /// Posted whatever happens (errors, reads).
    immediate: Vec<ShardEvent>,
    dirty_conversations: HashSet<ConversationId>,
    dirty_members: HashSet<(UserId, ConversationId)>,
    sends: HashMap<(UserId, u64), SendAck>,
    usernames: HashSet<String>,
    /// Devices whose session it sets.
    device_sessions: DeviceSessions,
    routes_added: Vec<(UserId, ConnRef)>,
    counters_dirty: bool,
}

/// (user, device id) -> its session, as a cycle sets it.
type DeviceSessions = HashMap<(UserId, String), DeviceSession>;

#[derive(Default)]
struct CycleSizes {
    /// The longest shard's share of `after_commit`.
    after_commit_per_shard: usize,
    on_failure: usize,
    sends: usize,
}

/// A sealed cycle on its way to the committer thread.
struct Commit {
    /// `None` when the cycle wrote nothing (only reads and refusals).
    batch: Option<Batch>,
    after_commit: ShardEvents,
    on_failure: Vec<Refused>,
}

/// The committer's answer for one `Commit`.
struct Committed {
    ok: bool,
    /// Time spent in RocksDB's write (memtable insert, WAL write, fsync).
    took: Duration,
    /// Time spent handing the batch's events to the shards afterwards.
    posting: Duration,
}

/// The batch being written while the next one is applied.
struct InFlight {
    /// Its sends by (sender, client message id), so that a retry arriving
    /// before the batch lands is answered from memory, not missed in the store.
    sends: HashMap<(UserId, u64), SendAck>,
    /// Its registered usernames, for the same reason.
    usernames: HashSet<String>,
    /// The device sessions it sets, for the same reason.
    device_sessions: DeviceSessions,
    /// Routes it added, removed again if it fails.
    routes_added: Vec<(UserId, ConnRef)>,
}

/// What the writer did over the last interval, logged at debug level: the
/// first thing to read when throughput disappoints.
#[derive(Default)]
struct CycleStats {
    since: Option<Instant>,
    cycles: u64,
    requests: u64,
    /// Applying requests to the open cycle.
    apply: Duration,
    /// Asleep until the batch in flight landed (nothing queued, or the open
    /// cycle full).
    wait: Duration,
    /// The committer's writes, and the slowest of them.
    commit: Duration,
    commit_max: Duration,
    /// The committer's posting of events to the shards after each write.
    posting: Duration,
}

impl CycleStats {
    fn applied(&mut self, apply: Duration) {
        self.since.get_or_insert_with(Instant::now);
        self.apply += apply;
    }

    fn handed_over(&mut self, requests: usize) {
        self.cycles += 1;
        self.requests += requests as u64;
    }

    fn waited(&mut self, wait: Duration) {
        self.wait += wait;
    }

    fn committed(&mut self, commit: Duration, posting: Duration) {
        self.commit += commit;
        self.posting += posting;
        self.commit_max = self.commit_max.max(commit);
        let Some(since) = self.since else { return };
        if since.elapsed() >= Duration::from_secs(5) && self.cycles > 0 {
            let per_cycle = |d: Duration| d.as_micros() as f64 / self.cycles as f64;
            log::debug!(
                "writer: {} cycles, {:.0} requests per cycle; per cycle {:.0} us applying, \
                 {:.0} us asleep until the batch in flight landed, {:.0} us committing \
                 (slowest {} us), {:.0} us posting events",
                self.cycles,
                self.requests as f64 / self.cycles as f64,
                per_cycle(self.apply),
                per_cycle(self.wait),
                per_cycle(self.commit),
                self.commit_max.as_micros(),
                per_cycle(self.posting),
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
    /// The batch the committer holds, if any.
    in_flight: Option<InFlight>,
    /// Sizes of the last cycle, to size the next one's collections: under
    /// load consecutive cycles are alike, and regrowing them was measurable.
    last_cycle: CycleSizes,
    stats: CycleStats,
    /// The chunk of requests being applied (kept for its capacity).
    drained: Vec<WriterRequest>,
}

/// A send's stored dedupe entry, looked up before its chunk is applied.
type DedupeLookup = Result<Option<DedupeRecord>, StoreError>;

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
            in_flight: None,
            last_cycle: CycleSizes::default(),
            stats: CycleStats::default(),
            drained: Vec::new(),
        })
    }

    /// Runs until a `Shutdown` request arrives or every sender is gone.
    pub fn run(mut self, requests: Receiver<WriterRequest>) {
        // Depth one: the writer never gets two batches ahead of the disk.
        let (commits, commits_rx) = mpsc::sync_channel::<Commit>(1);
        let (committed_tx, committed) = mpsc::channel::<Committed>();
        let committer = {
            let store = self.store.clone();
            let sink = self.sink.clone();
            std::thread::Builder::new()
                .name("gust-committer".into())
                .spawn(move || commit_loop(store, sink, commits_rx, committed_tx))
        };
        let committer = match committer {
            Ok(handle) => handle,
            Err(e) => {
                log::error!("cannot start the committer thread: {e}");
                return;
            }
        };
        let pipe = Pipe { commits, committed };
        self.serve(&requests, &pipe);
        self.settle(&pipe, &mut None);
        drop(pipe);
        if committer.join().is_err() {
            log::error!("the committer thread panicked");
        }
        log::info!("storage writer stopped");
    }

    fn serve(&mut self, requests: &Receiver<WriterRequest>, pipe: &Pipe) {
        // The cycle being applied while the one in flight is written.
        let mut open: Option<Cycle> = None;
        loop {
            if self.in_flight.is_some() {
                // Busy with a stream of requests, the writer looks for the
                // outcome between chunks instead of sleeping on it.
                if let Ok(outcome) = pipe.committed.try_recv() {
                    self.landed(outcome, &mut open);
                }
            }
            let applied = open.as_ref().map_or(0, |cycle| cycle.requests);
            if self.in_flight.is_none() && applied > 0 {
                // The committer is free: everything applied so far goes now.
                if let Some(cycle) = open.take() {
                    self.hand_over(cycle, pipe);
                }
                continue;
            }
            let room = self.config.batch_requests_max.saturating_sub(applied);
            let mut drained = std::mem::take(&mut self.drained);
            if self.in_flight.is_none() {
                // Idle: sleep until a request arrives.
                match requests.recv() {
                    Ok(request) => drained.push(request),
                    Err(_) => return self.finish(pipe, open),
                }
            } else if room == 0 {
                // Full: nothing more is applied until the disk catches up.
                self.drained = drained;
                self.settle(pipe, &mut open);
                continue;
            } else {
                match requests.try_recv() {
                    Ok(request) => drained.push(request),
                    // Nothing queued: sleep until the batch in flight lands,
                    // then apply what arrived meanwhile before handing the
                    // open cycle over. The committer idles ~1 µs per such
                    // request; each of them is spared a whole write. (Asleep
                    // on the queue instead, the writer was woken by every
                    // request, ~28,000 times a second at 100,000 msg/s, and
                    // each wake-up preempted the shard that sent it.)
                    Err(TryRecvError::Empty) => self.settle(pipe, &mut open),
                    Err(TryRecvError::Disconnected) => return self.finish(pipe, open),
                }
            }
            while drained.len() < room.min(APPLY_CHUNK_REQUESTS) {
                match requests.try_recv() {
                    Ok(request) => drained.push(request),
                    Err(_) => break,
                }
            }
            if drained.is_empty() {
                self.drained = drained;
                continue;
            }
            let started = Instant::now();
            let cycle = open.get_or_insert_with(|| self.new_cycle(pipe));
            let mut lookups = self.dedupe_lookups(&drained).into_iter();
            let mut shutdown = false;
            for request in drained.drain(..) {
                let lookup = match request {
                    WriterRequest::Send { .. } => lookups.next(),
                    _ => None,
                };
                cycle.requests += 1;
                if self.apply(request, lookup, cycle) {
                    // Requests after a shutdown are dropped with the channel.
                    shutdown = true;
                    break;
                }
            }
            drained.clear();
            self.drained = drained;
            // Errors and reads wait neither for this cycle nor for the one in
            // flight (a connection only sends requests once the events that
            // authenticated it were posted, so none can overtake those).
            let immediate = std::mem::take(&mut cycle.immediate);
            if !immediate.is_empty() {
                self.sink.post(immediate);
            }
            self.stats.applied(started.elapsed());
            if shutdown {
                return self.finish(pipe, open);
            }
        }
    }

    /// Shutdown, or every sender gone: writes what has been applied.
    fn finish(&mut self, pipe: &Pipe, mut open: Option<Cycle>) {
        self.settle(pipe, &mut open);
        if let Some(cycle) = open.take() {
            self.hand_over(cycle, pipe);
        }
    }

    /// The stored dedupe entry of every send among `requests`, in order, in
    /// one batched read. Answers are sound for the whole chunk: the batch in
    /// flight is not in the store yet and stays in flight while the chunk is
    /// applied (a landing is learnt only between chunks), and `send` checks
    /// it (and the open cycle) in memory before it trusts a lookup.
    fn dedupe_lookups(&self, requests: &[WriterRequest]) -> Vec<DedupeLookup> {
        let pairs: Vec<(UserId, u64)> = requests
            .iter()
            .filter_map(|request| match request {
                WriterRequest::Send { user_id, send, .. } => {
                    Some((*user_id, send.client_message_id))
                }
                _ => None,
            })
            .collect();
        if pairs.is_empty() {
            return Vec::new();
        }
        self.store.dedupe_many(&pairs)
    }

    /// Waits for the batch in flight, if any, and deals with its outcome.
    fn settle(&mut self, pipe: &Pipe, open: &mut Option<Cycle>) {
        if self.in_flight.is_none() {
            return;
        }
        let waiting = Instant::now();
        let outcome = pipe.committed.recv().unwrap_or(Committed {
            ok: false,
            took: Duration::ZERO,
            posting: Duration::ZERO,
        });
        self.stats.waited(waiting.elapsed());
        self.landed(outcome, open);
    }

    /// The batch in flight was written, or failed: then its routes are rolled
    /// back, the caches dropped, and the open cycle, built on it, is refused
    /// whole (nothing of it written).
    fn landed(&mut self, outcome: Committed, open: &mut Option<Cycle>) {
        let Some(in_flight) = self.in_flight.take() else {
            return;
        };
        self.stats.committed(outcome.took, outcome.posting);
        if outcome.ok {
            return;
        }
        for (user_id, conn) in in_flight.routes_added {
            self.remove_route(user_id, conn);
        }
        if let Some(cycle) = open.take() {
            self.refuse_cycle(cycle, "built on a failed batch");
        }
        self.forget_cached_state();
    }

    /// Answers every request of a cycle that will not be written with
    /// `storage_unavailable`, and rolls back its routes.
    fn refuse_cycle(&mut self, cycle: Cycle, why: &str) {
        log::error!(
            "batch not written ({why}): {} replies refused",
            cycle.on_failure.len()
        );
        for (user_id, conn) in cycle.routes_added {
            self.remove_route(user_id, conn);
        }
        self.sink.post(refusals(cycle.on_failure));
    }

    /// Seals the cycle and hands it to the committer, which is free: the
    /// batch before it is durable.
    fn hand_over(&mut self, mut cycle: Cycle, pipe: &Pipe) {
        debug_assert!(self.in_flight.is_none(), "a batch is still in flight");
        self.last_cycle = CycleSizes {
            after_commit_per_shard: cycle.after_commit.longest(),
            on_failure: cycle.on_failure.len(),
            sends: cycle.sends.len(),
        };
        self.stats.handed_over(cycle.requests);
        // (Its `immediate` events went out as each chunk was applied.)
        if let Err(e) = self.seal(&mut cycle) {
            self.refuse_cycle(cycle, &e.to_string());
            self.forget_cached_state();
            return;
        }
        let commit = Commit {
            batch: (!cycle.batch.is_empty()).then_some(cycle.batch),
            after_commit: cycle.after_commit,
            on_failure: cycle.on_failure,
        };
        if commit.batch.is_none() && commit.after_commit.is_empty() {
            return;
        }
        if let Err(mpsc::SendError(commit)) = pipe.commits.send(commit) {
            log::error!(
                "the committer is gone: {} replies refused",
                commit.on_failure.len()
            );
            self.sink.post(refusals(commit.on_failure));
            return;
        }
        self.in_flight = Some(InFlight {
            sends: cycle.sends,
            usernames: cycle.usernames,
            device_sessions: cycle.device_sessions,
            routes_added: cycle.routes_added,
        });
    }

    /// Called only when no cycle is open, so that a batch in flight that
    /// fails while the caches are refilled has nothing built on it to refuse.
    fn new_cycle(&mut self, pipe: &Pipe) -> Cycle {
        let cache_max = self.config.conversation_cache_max;
        let over = |len: usize| len > cache_max;
        if over(self.conversations.len()) || over(self.members.len()) {
            // Refilled from the store: only safe with nothing in flight (and
            // nothing applied yet: this cycle is the open one).
            self.settle(pipe, &mut None);
            if over(self.conversations.len()) {
                self.conversations.clear();
                self.direct.clear();
            }
            if over(self.members.len()) {
                self.members.clear();
            }
        }
        Cycle {
            requests: 0,
            batch: self.store.batch(),
            after_commit: ShardEvents::new(
                self.sink.shard_count(),
                self.last_cycle.after_commit_per_shard,
            ),
            on_failure: Vec::with_capacity(self.last_cycle.on_failure),
            immediate: Vec::new(),
            dirty_conversations: HashSet::new(),
            dirty_members: HashSet::new(),
            sends: HashMap::with_capacity(self.last_cycle.sends),
            usernames: HashSet::new(),
            device_sessions: HashMap::new(),
            routes_added: Vec::new(),
            counters_dirty: false,
        }
    }

    /// Applies one request to the cycle; a send comes with its stored dedupe
    /// entry, read beforehand for the whole chunk. Returns true on shutdown.
    fn apply(
        &mut self,
        request: WriterRequest,
        lookup: Option<DedupeLookup>,
        cycle: &mut Cycle,
    ) -> bool {
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
            } => (reply, self.send(cycle, reply, user_id, *send, lookup)),
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
            } => {
                let result = self.advance_cursor(
                    cycle,
                    user_id,
                    conversation_id,
                    seq,
                    ReceiptKind::Read,
                    receipt,
                );
                // `mark_read` (no receipt) is answered `ok`, after this cycle
                // is durable, whether or not the cursor moved: a cursor
                // already past `seq` may have moved in a batch not yet
                // written. `read_ack` has no answer on success.
                if result.is_ok() && !receipt {
                    Self::ok_after_commit(cycle, reply);
                }
                (reply, result)
            }
            WriterRequest::Presence { reply, users } => (reply, self.presence(cycle, reply, users)),
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

    /// Adds the cycle's dirty records to its batch.
    fn seal(&mut self, cycle: &mut Cycle) -> Result<(), StoreError> {
        for conversation_id in cycle.dirty_conversations.drain() {
            if let Some(record) = self.conversations.get(&conversation_id) {
                cycle.batch.put_conversation(conversation_id, record)?;
            }
        }
        for (user_id, conversation_id) in cycle.dirty_members.drain() {
            if let Some(record) = self.members.get(&(user_id, conversation_id)) {
                cycle.batch.put_member(user_id, conversation_id, record)?;
            }
        }
        if cycle.counters_dirty {
            cycle.batch.put_counters(&self.counters)?;
        }
        Ok(())
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
        let in_flight = self
            .in_flight
            .as_ref()
            .is_some_and(|f| f.usernames.contains(&username));
        if in_flight
            || cycle.usernames.contains(&username)
            || self.store.user_id_by_name(&username)?.is_some()
        {
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
        // One session per device: the token of its last login stops working
        // (and its record goes) when a new one is issued.
        if let Some(DeviceSession::Current(previous)) =
            self.device_session(cycle, user_id, &device_id)?
        {
            if previous != hash {
                cycle.batch.delete_session(&previous)?;
            }
        }
        cycle.batch.put_session(
            &hash,
            &SessionRecord {
                user_id,
                device_id: device_id.clone(),
                created_ms: now_ms(),
            },
        )?;
        Self::set_device_session(cycle, user_id, &device_id, DeviceSession::Current(hash))?;
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
        match self.device_session(cycle, session.user_id, &device_id)? {
            Some(DeviceSession::Current(current)) if current == hash => {}
            // The device logged in again since, or logged out (perhaps in a
            // batch not written yet, while this record still reads back).
            Some(_) => return Err(INVALID),
            // A session from before devices recorded theirs: it becomes the
            // device's session, and any other of the device's goes stale.
            None => Self::set_device_session(
                cycle,
                session.user_id,
                &device_id,
                DeviceSession::Current(hash),
            )?,
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
        // Read before anything is written: a failed read refuses the logout
        // whole.
        let current = self.device_session(cycle, user_id, &device.device_id)?;
        cycle.batch.delete_session(&device.token_hash)?;
        // Logged out, not unrecorded: older tokens of the device, from before
        // devices recorded their sessions, must not resume either.
        if !matches!(current, Some(DeviceSession::Current(newer)) if newer != device.token_hash) {
            Self::set_device_session(cycle, user_id, &device.device_id, DeviceSession::LoggedOut)?;
        }
        self.remove_route(user_id, reply.conn);
        cycle.after_commit.push(ShardEvent::Unauthenticated {
            conn: reply.conn,
            frame: frames::encode(reply.request_id, &Body::Ok(OkReply {})),
        });
        Self::refuse_on_failure(cycle, reply);
        Ok(())
    }

    /// The device's session: as the open cycle sets it, else the batch in
    /// flight, else the store; `None` if it has no record.
    fn device_session(
        &self,
        cycle: &Cycle,
        user_id: UserId,
        device_id: &str,
    ) -> Result<Option<DeviceSession>, Refusal> {
        let key = (user_id, device_id.to_string());
        let pending = cycle.device_sessions.get(&key).or_else(|| {
            self.in_flight
                .as_ref()
                .and_then(|f| f.device_sessions.get(&key))
        });
        match pending {
            Some(session) => Ok(Some(*session)),
            None => Ok(self.store.device_session(user_id, device_id)?),
        }
    }

    fn set_device_session(
        cycle: &mut Cycle,
        user_id: UserId,
        device_id: &str,
        session: DeviceSession,
    ) -> Result<(), Refusal> {
        cycle
            .batch
            .set_device_session(user_id, device_id, session)?;
        cycle
            .device_sessions
            .insert((user_id, device_id.to_string()), session);
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

    /// Answers a `user_lookup` whose users a reader found: who is online,
    /// from the routing table, which only this thread holds.
    fn presence(
        &mut self,
        cycle: &mut Cycle,
        reply: Reply,
        found: Vec<(UserId, String)>,
    ) -> Result<(), Refusal> {
        let users = found
            .into_iter()
            .map(|(user_id, username)| UserInfo {
                user_id,
                username,
                online: self.online.contains_key(&user_id),
                last_seen_ms: self.last_seen_ms.get(&user_id).copied().unwrap_or(0),
            })
            .collect();
        cycle.immediate.push(ShardEvent::ReadAnswer {
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
        lookup: Option<DedupeLookup>,
    ) -> Result<(), Refusal> {
        let dedupe_key = (user_id, send.client_message_id);
        let pending = cycle.sends.get(&dedupe_key).or_else(|| {
            self.in_flight
                .as_ref()
                .and_then(|f| f.sends.get(&dedupe_key))
        });
        if let Some(ack) = pending {
            // A retry of a send not yet durable (in this batch or the one in
            // flight): answer once the original is, after this batch.
            cycle.after_commit.push(ShardEvent::SendAck {
                conn: reply.conn,
                request_id: reply.request_id,
                ack: ack.clone(),
            });
            Self::refuse_on_failure(cycle, reply);
            return Ok(());
        }
        let stored = match lookup {
            Some(lookup) => lookup?,
            None => self.store.dedupe(user_id, send.client_message_id)?,
        };
        if let Some(record) = stored {
            let ack = SendAck {
                client_message_id: send.client_message_id,
                message_id: record.message_id,
                conversation_id: record.conversation_id,
                seq: record.seq,
                server_time_ms: record.server_time_ms,
            };
            cycle.immediate.push(ShardEvent::SendAck {
                conn: reply.conn,
                request_id: reply.request_id,
                ack,
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
        self.counters.next_message_id += 1;
        cycle.counters_dirty = true;

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
        let wire = Bytes::from(wire);
        cycle
            .batch
            .put_message(conversation_id, seq, wire.clone())?;
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
        cycle.after_commit.push(ShardEvent::SendAck {
            conn: reply.conn,
            request_id: reply.request_id,
            ack,
        });
        Self::refuse_on_failure(cycle, reply);

        // `Deliver { message }` encodes exactly as the stored message: every
        // recipient's shard frames the same shared bytes. Members borrowed,
        // not cloned: this is the per-message path.
        let members = self
            .conversations
            .get(&conversation_id)
            .map(|c| c.members.as_slice())
            .unwrap_or_default();
        for member in members {
            let Some(devices) = self.online.get(member) else {
                continue;
            };
            for device in devices.iter().filter(|d| d.conn != reply.conn) {
                cycle.after_commit.push(ShardEvent::Deliver {
                    conn: device.conn,
                    conversation_id,
                    seq,
                    message: wire.clone(),
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
        Self::ok_after_commit(cycle, reply);
        Ok(())
    }

    /// Answers `ok` once the cycle is durable (`storage_unavailable` if its
    /// write fails).
    fn ok_after_commit(cycle: &mut Cycle, reply: Reply) {
        cycle.after_commit.push(ShardEvent::Frame {
            conn: reply.conn,
            frame: frames::encode(reply.request_id, &Body::Ok(OkReply {})),
        });
        Self::refuse_on_failure(cycle, reply);
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

/// The writer's two ends of the pipeline to the committer.
struct Pipe {
    commits: SyncSender<Commit>,
    committed: Receiver<Committed>,
}

/// The committer thread: writes each sealed batch, reports the outcome to
/// the writer, then posts the batch's answers (or refusals, if the write
/// failed).
///
/// The report goes first: the writer, waiting on it with the next batch
/// applied, hands that batch over while these events are posted, so the
/// committer finds it queued instead of waiting for the writer to wake. At
/// saturation posting (and the shard wake-ups it causes) took 1.2-2 ms of
/// every ~18 ms cycle, on the path every acknowledgement waits on. Answers
/// still leave in commit order: this thread posts them all.
fn commit_loop(
    store: Store,
    sink: Arc<dyn ShardSink>,
    commits: Receiver<Commit>,
    committed: mpsc::Sender<Committed>,
) {
    // Posting time is reported with the next batch's outcome.
    let mut last_posting = Duration::ZERO;
    for commit in commits {
        let started = Instant::now();
        let outcome = match commit.batch {
            Some(batch) => store.commit(batch),
            None => Ok(()),
        };
        let took = started.elapsed();
        let writer_listens = committed
            .send(Committed {
                ok: outcome.is_ok(),
                took,
                posting: last_posting,
            })
            .is_ok();
        let posting = Instant::now();
        match outcome {
            Ok(()) => {
                if !commit.after_commit.is_empty() {
                    sink.post_sorted(commit.after_commit);
                }
            }
            Err(e) => {
                log::error!(
                    "commit failed, {} replies refused: {e}",
                    commit.on_failure.len()
                );
                sink.post(refusals(commit.on_failure));
            }
        }
        last_posting = posting.elapsed();
        if !writer_listens {
            return;
        }
    }
}

/// `storage_unavailable` for every request of a batch that was not written.
fn refusals(refused: Vec<Refused>) -> Vec<ShardEvent> {
    refused
        .into_iter()
        .map(|refused| {
            let frame = frames::error(
                refused.reply.request_id,
                StatusCode::StorageUnavailable,
                "store unavailable; nothing was written",
                false,
            );
            let conn = refused.reply.conn;
            if refused.unauthenticated {
                ShardEvent::Unauthenticated { conn, frame }
            } else {
                ShardEvent::Frame { conn, frame }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    //! The pipeline's failure path, which needs a commit to fail on demand:
    //! the store's test-only fault hook makes one commit fail after a delay,
    //! long enough for the writer to build the next batch on top of it.

    use std::sync::mpsc::{self, Receiver, Sender};
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::protocol::frame;
    use crate::store::Durability;

    struct ChannelSink(Mutex<Sender<ShardEvent>>);

    impl ShardSink for ChannelSink {
        fn post(&self, events: Vec<ShardEvent>) {
            if let Ok(sender) = self.0.lock() {
                for event in events {
                    let _ = sender.send(event);
                }
            }
        }
    }

    fn reply(token: u64, request_id: u32) -> Reply {
        Reply {
            conn: ConnRef { shard: 0, token },
            request_id,
        }
    }

    fn body_of(frame: &[u8]) -> Body {
        let (header, payload) = frame::split_plain_frame(frame).expect("a whole frame");
        let command = Command::from_u16(header.command).expect("a known command");
        Body::decode(command, payload).expect("a valid body")
    }

    /// What a connection was told: acks as they are, frames decoded.
    #[derive(Debug, PartialEq)]
    enum Told {
        Ack(SendAck),
        Body(Body),
        Deliver(Seq),
        Other,
    }

    fn next(events: &Receiver<ShardEvent>) -> (u64, Told) {
        let event = events
            .recv_timeout(Duration::from_secs(10))
            .expect("the writer answered");
        let token = event.conn().map(|c| c.token).unwrap_or(0);
        let told = match event {
            ShardEvent::SendAck { ack, .. } => Told::Ack(ack),
            ShardEvent::Deliver { seq, .. } => Told::Deliver(seq),
            ShardEvent::Frame { frame, .. }
            | ShardEvent::Authenticated { frame, .. }
            | ShardEvent::Unauthenticated { frame, .. } => Told::Body(body_of(&frame)),
            _ => Told::Other,
        };
        (token, told)
    }

    fn send(to: UserId, client_message_id: u64) -> Box<Send> {
        Box::new(Send {
            client_message_id,
            to: Target::User(to),
            content: Content::Text {
                text: format!("message {client_message_id}"),
            },
            extras: Default::default(),
        })
    }

    fn refused(told: &Told) -> bool {
        matches!(told, Told::Body(Body::Error(e)) if e.code == StatusCode::StorageUnavailable as u16)
    }

    /// A writer over a temporary store with `batch_requests_max` requests per
    /// batch, and two users online: alice on connection 1, bob on
    /// connection 2.
    struct Harness {
        _dir: tempfile::TempDir,
        store: Store,
        events: Receiver<ShardEvent>,
        requests: Sender<WriterRequest>,
        thread: Option<std::thread::JoinHandle<()>>,
        alice: UserId,
        bob: UserId,
    }

    impl Harness {
        /// One request per batch: each request below is its own batch.
        fn start() -> Harness {
            Harness::with_batches_of(1)
        }

        fn with_batches_of(batch_requests_max: usize) -> Harness {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = Store::open(dir.path(), Durability::Buffered).expect("open");
            let (events_tx, events) = mpsc::channel();
            let sink = Arc::new(ChannelSink(Mutex::new(events_tx)));
            let config = WriterConfig {
                batch_requests_max,
                ..WriterConfig::default()
            };
            let writer = Writer::new(store.clone(), sink, config).expect("writer");
            let (requests, requests_rx) = mpsc::channel();
            let thread = std::thread::spawn(move || writer.run(requests_rx));
            let mut ids = Vec::new();
            for (token, name) in [(1, "alice"), (2, "bob")] {
                requests
                    .send(WriterRequest::Register {
                        reply: reply(token, 1),
                        username: name.into(),
                        password_hash: "not checked here".into(),
                    })
                    .expect("writer");
                let Told::Body(Body::Registered(r)) = next(&events).1 else {
                    panic!("registered expected");
                };
                requests
                    .send(WriterRequest::OpenSession {
                        reply: reply(token, 2),
                        user_id: r.user_id,
                        device_id: "d".into(),
                        token: [token as u8; 32],
                    })
                    .expect("writer");
                assert!(matches!(next(&events).1, Told::Body(Body::LoggedIn(_))));
                ids.push(r.user_id);
            }
            Harness {
                _dir: dir,
                store,
                events,
                requests,
                thread: Some(thread),
                alice: ids[0],
                bob: ids[1],
            }
        }

        fn script_commits(&self, steps: &[(u64, bool)]) {
            self.store.commit_script.lock().expect("script").extend(
                steps
                    .iter()
                    .map(|(ms, fail)| (Duration::from_millis(*ms), *fail)),
            );
        }

        fn scripted_commits_left(&self) -> usize {
            self.store.commit_script.lock().expect("script").len()
        }

        fn send_as_alice(&self, request_id: u32, client_id: u64) {
            self.requests
                .send(WriterRequest::Send {
                    reply: reply(1, request_id),
                    user_id: self.alice,
                    send: send(self.bob, client_id),
                })
                .expect("writer");
        }

        fn next(&self) -> (u64, Told) {
            next(&self.events)
        }

        /// An ack to alice and a push to bob, in either order.
        fn acked_and_delivered(&self) -> SendAck {
            let mut told: Vec<(u64, Told)> = (0..2).map(|_| self.next()).collect();
            told.sort_by_key(|(token, _)| *token);
            let (1, Told::Ack(ack)) = &told[0] else {
                panic!("an ack to alice expected, got {told:?}");
            };
            assert_eq!(told[1], (2, Told::Deliver(ack.seq)));
            ack.clone()
        }

        fn stored_seqs(&self, conversation_id: ConversationId) -> Vec<Seq> {
            let mut stored = Vec::new();
            self.store
                .scan_messages(conversation_id, 1, 100, |seq, _| {
                    stored.push(seq);
                    true
                })
                .expect("scan");
            stored
        }
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            let _ = self.requests.send(WriterRequest::Shutdown);
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    #[test]
    fn a_failed_commit_refuses_its_batch_and_every_batch_built_on_it() {
        let h = Harness::start();
        // Send 100 commits slowly, so that 101 and 102 queue behind it; 101
        // is then written and fails after a while, and 102, applied while
        // 101 was in flight (on the seq 101 took), must be refused with it.
        h.script_commits(&[(300, false), (300, true)]);
        h.send_as_alice(10, 100);
        h.send_as_alice(11, 101);
        h.send_as_alice(12, 102);
        let first = h.acked_and_delivered();
        assert_eq!((first.seq, first.client_message_id), (1, 100));
        for _ in 0..2 {
            let (token, answer) = h.next();
            assert_eq!(token, 1, "nothing may reach bob: {answer:?}");
            assert!(refused(&answer), "a refusal expected, got {answer:?}");
        }

        // Nothing of either batch was written: seqs continue at 2, and the
        // refused client ids are new again (a retry is not a duplicate).
        h.send_as_alice(13, 101);
        let second = h.acked_and_delivered();
        assert_eq!((second.seq, second.client_message_id), (2, 101));
        assert!(second.message_id > first.message_id);
        h.send_as_alice(14, 102);
        assert_eq!(h.acked_and_delivered().seq, 3);
        // A retry of a durable send is answered from the store.
        h.send_as_alice(15, 100);
        assert_eq!(h.next(), (1, Told::Ack(first.clone())));
        assert_eq!(h.stored_seqs(first.conversation_id), vec![1, 2, 3]);
    }

    #[test]
    fn requests_arriving_while_a_batch_is_written_join_the_next_one() {
        let h = Harness::with_batches_of(2);
        // Four slow commits; the first, 100, is in flight while 101-103
        // queue up. When it lands, 101 and 102 fill the next batch, and 103
        // is applied while that one is written. 104 arrives while the writer
        // sleeps until the disk is done: it must join 103's batch (one
        // write later), not follow it (two writes later).
        // Writes take 500 ms: 101-103 are queued by 50 ms, 103 is applied
        // at ~500 ms, and 104 comes at ~750 ms, 250 ms from either edge.
        h.script_commits(&[(500, false); 4]);
        h.send_as_alice(10, 100);
        std::thread::sleep(Duration::from_millis(50));
        for id in 101..=103 {
            h.send_as_alice(id as u32 - 90, id);
        }
        std::thread::sleep(Duration::from_millis(700));
        h.send_as_alice(14, 104);
        let seqs: Vec<(Seq, u64)> = (0..5)
            .map(|_| h.acked_and_delivered())
            .map(|ack| (ack.seq, ack.client_message_id))
            .collect();
        assert_eq!(seqs, [(1, 100), (2, 101), (3, 102), (4, 103), (5, 104)]);
        assert_eq!(
            h.scripted_commits_left(),
            1,
            "100, 101+102 and 103+104: three writes"
        );
    }

    #[test]
    fn a_request_arriving_while_a_batch_fails_is_written_afresh() {
        let h = Harness::with_batches_of(2);
        // 100 is written slowly and fails; 101 arrives while the writer
        // sleeps on that write, with nothing applied on top of it. 101 must
        // not be refused with 100, and must not take a seq after 100's.
        h.script_commits(&[(300, true)]);
        h.send_as_alice(10, 100);
        std::thread::sleep(Duration::from_millis(50));
        h.send_as_alice(11, 101);
        let (token, answer) = h.next();
        assert_eq!(token, 1);
        assert!(
            refused(&answer),
            "a refusal for 100 expected, got {answer:?}"
        );
        let ack = h.acked_and_delivered();
        assert_eq!((ack.seq, ack.client_message_id), (1, 101));
        h.send_as_alice(12, 100);
        assert_eq!(h.acked_and_delivered().seq, 2);
        assert_eq!(h.stored_seqs(ack.conversation_id), vec![1, 2]);
    }

    #[test]
    fn a_retry_of_a_send_in_flight_gets_the_same_ack_once_it_lands() {
        let h = Harness::start();
        // 100 commits slowly; 101 queues behind it and is written slowly
        // too, while its retry is applied (answered from memory: the store
        // does not have 101 yet).
        h.script_commits(&[(200, false), (300, false)]);
        h.send_as_alice(10, 100);
        h.send_as_alice(11, 101);
        h.send_as_alice(12, 101);
        assert_eq!(h.acked_and_delivered().seq, 1);
        let original = h.acked_and_delivered();
        assert_eq!((original.seq, original.client_message_id), (2, 101));
        let (token, Told::Ack(retry)) = h.next() else {
            panic!("an ack for the retry expected");
        };
        assert_eq!((token, retry), (1, original.clone()));
        // Stored once, delivered once.
        assert_eq!(h.stored_seqs(original.conversation_id), vec![1, 2]);
        assert!(h.events.recv_timeout(Duration::from_millis(200)).is_err());
    }

    #[test]
    fn a_username_claimed_by_the_batch_in_flight_is_taken() {
        let h = Harness::start();
        // The first register commits slowly; the second, applied meanwhile,
        // must not miss the name in the store.
        h.script_commits(&[(300, false)]);
        for token in [3, 4] {
            h.requests
                .send(WriterRequest::Register {
                    reply: reply(token, 1),
                    username: "carol".into(),
                    password_hash: "not checked here".into(),
                })
                .expect("writer");
        }
        let mut told: Vec<(u64, Told)> = (0..2).map(|_| h.next()).collect();
        told.sort_by_key(|(token, _)| *token);
        assert!(
            matches!(told[0], (3, Told::Body(Body::Registered(_)))),
            "{told:?}"
        );
        assert!(
            matches!(&told[1], (4, Told::Body(Body::Error(e))) if e.code == StatusCode::Conflict as u16),
            "{told:?}"
        );
    }
}
