//! Sync and history: reads that may touch disk, on reader threads so a long
//! scan never stalls a shard's other connections.
//!
//! Pages are assembled from the stored bytes of each message without decoding
//! them: a page is a length prefix followed by stored messages, which is
//! exactly the encoding of `Vec<Message>`. A sync job writes at most
//! `pages_per_job` pages and then reports where it stopped, so the shard can
//! let the connection drain before continuing (memory stays bounded however
//! far behind a device is).

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};

use super::{frames, ReaderJob, Reply, ShardEvent, ShardSink, WriterRequest};
use crate::protocol::body_codec;
use crate::protocol::*;
use crate::store::records::ConversationRecordKind;
use crate::store::{Store, StoreError};

#[derive(Clone, Debug)]
pub struct ReaderConfig {
    /// Messages per page when the client asks for 0 or more.
    pub page_messages_max: u32,
    /// Bytes of stored messages after which a sync page is closed; kept well
    /// below the payload limit.
    pub page_bytes_max: usize,
    /// Bytes of items no page may pass: the payload limit less what a page
    /// adds around them (`limits::PAGE_FRAMING_BYTES_MAX`). An item that
    /// would take a page past it goes in the next one; sends are held to a
    /// size that fits a page alone.
    pub page_items_bytes_max: usize,
    /// Pages one sync job writes before yielding to let the connection drain.
    pub pages_per_job: usize,
}

impl Default for ReaderConfig {
    fn default() -> Self {
        ReaderConfig {
            page_messages_max: crate::limits::PAGE_MESSAGES_MAX,
            page_bytes_max: crate::limits::PAYLOAD_LEN_DEFAULT as usize / 2,
            page_items_bytes_max: crate::limits::PAYLOAD_LEN_DEFAULT as usize
                - crate::limits::PAGE_FRAMING_BYTES_MAX,
            pages_per_job: crate::limits::SYNC_PAGES_PER_JOB,
        }
    }
}

pub struct Reader {
    store: Store,
    sink: Arc<dyn ShardSink>,
    /// For the presence half of a user lookup.
    writer: Sender<WriterRequest>,
    config: ReaderConfig,
}

/// A page being filled: the stored bytes of its messages.
struct Page {
    items: BytesMut,
    count: usize,
}

impl Page {
    fn new() -> Page {
        Page {
            items: BytesMut::new(),
            count: 0,
        }
    }

    fn push(&mut self, stored: &[u8]) {
        self.items.extend_from_slice(stored);
        self.count += 1;
    }

    fn would_overflow(&self, stored: &[u8], items_bytes_max: usize) -> bool {
        overflows(self.count, self.items.len(), stored.len(), items_bytes_max)
    }

    /// The payload: a length prefix, then the messages, then `trailer`.
    fn payload(&self, trailer: Option<bool>) -> Result<BytesMut, body_codec::BodyError> {
        let mut out = BytesMut::with_capacity(self.items.len() + 10);
        body_codec::encode_len(self.count, &mut out)?;
        out.extend_from_slice(&self.items);
        if let Some(more) = trailer {
            body_codec::encode_bool(more, &mut out)?;
        }
        Ok(out)
    }
}

/// Whether an item of `len` bytes would take a page of `count` items and
/// `used` bytes past `items_bytes_max`. An empty page takes any one item.
fn overflows(count: usize, used: usize, len: usize, items_bytes_max: usize) -> bool {
    count > 0 && used + len > items_bytes_max
}

/// The pages one sync job has written, and the one it is filling.
struct SyncPages {
    events: Vec<ShardEvent>,
    page: Page,
    pages: usize,
}

impl SyncPages {
    /// Sends the page being filled and starts another; true once the job has
    /// written its `pages_per_job`.
    fn close(&mut self, reply: Reply, pages_per_job: usize) -> bool {
        let page = std::mem::replace(&mut self.page, Page::new());
        self.events.push(ShardEvent::Frame {
            conn: reply.conn,
            frame: page_frame(reply.request_id, Command::SyncPage, &page, None),
        });
        self.pages += 1;
        self.pages >= pages_per_job
    }
}

fn page_frame(request_id: u32, command: Command, page: &Page, trailer: Option<bool>) -> Bytes {
    match page.payload(trailer) {
        Ok(payload) => frames::raw(request_id, command, &payload),
        Err(e) => {
            log::error!("cannot encode a {}: {e}", command.name());
            frames::error(
                request_id,
                StatusCode::Internal,
                "page could not be encoded",
                false,
            )
        }
    }
}

enum Refusal {
    Status(StatusCode, &'static str),
    Store(StoreError),
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        Refusal::Store(e)
    }
}

impl Reader {
    pub fn new(
        store: Store,
        sink: Arc<dyn ShardSink>,
        writer: Sender<WriterRequest>,
        config: ReaderConfig,
    ) -> Reader {
        Reader {
            store,
            sink,
            writer,
            config,
        }
    }

    /// Runs `threads` reader threads sharing one job queue.
    pub fn spawn(
        self: Arc<Self>,
        threads: usize,
        jobs: Receiver<ReaderJob>,
    ) -> Vec<std::thread::JoinHandle<()>> {
        let jobs = Arc::new(Mutex::new(jobs));
        (0..threads)
            .map(|i| {
                let reader = self.clone();
                let jobs = jobs.clone();
                std::thread::Builder::new()
                    .name(format!("gust-reader-{i}"))
                    .spawn(move || loop {
                        let job = match jobs.lock() {
                            Ok(receiver) => receiver.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(ReaderJob::Shutdown) | Err(_) => return,
                            Ok(job) => reader.handle(job),
                        }
                    })
                    .unwrap_or_else(|e| panic!("cannot start a reader thread: {e}"))
            })
            .collect()
    }

    /// Runs one job and posts its answer. A job that fails, panics included,
    /// is answered with an error, so that its connection's count of reads in
    /// flight comes down and a failed sync stops holding the pushes.
    pub fn handle(&self, job: ReaderJob) {
        let reply = match &job {
            ReaderJob::Sync { reply, .. }
            | ReaderJob::History { reply, .. }
            | ReaderJob::ConversationList { reply, .. }
            | ReaderJob::UserLookup { reply, .. } => *reply,
            ReaderJob::Shutdown => return,
        };
        // History, conversation-list and user-lookup answers, errors
        // included, count the connection's reads in flight down (a lookup's
        // answer comes from the writer).
        let counted = !matches!(job, ReaderJob::Sync { .. });
        let result = catch_unwind(AssertUnwindSafe(|| self.run(job))).unwrap_or_else(|_| {
            log::error!("a read panicked; answered internal");
            Err(Refusal::Status(StatusCode::Internal, "the read failed"))
        });
        let Err(refusal) = result else {
            return;
        };
        let (code, message) = match refusal {
            Refusal::Status(code, message) => (code, message),
            Refusal::Store(e) => {
                log::error!("store read failed: {e}");
                (StatusCode::StorageUnavailable, "store unavailable")
            }
        };
        let (conn, frame) = (
            reply.conn,
            frames::error(reply.request_id, code, message, false),
        );
        let events = if counted {
            vec![ShardEvent::ReadAnswer { conn, frame }]
        } else {
            // A sync that failed still ends, so the shard stops holding pushes.
            vec![
                ShardEvent::Frame { conn, frame },
                ShardEvent::SyncDone {
                    conn,
                    request_id: reply.request_id,
                    cursors: Vec::new(),
                    more: false,
                    failed: true,
                },
            ]
        };
        self.sink.post(events);
    }

    fn run(&self, job: ReaderJob) -> Result<(), Refusal> {
        match job {
            ReaderJob::Sync {
                reply,
                user_id,
                cursors,
                only_listed,
                page_messages_max,
            } => self.sync(reply, user_id, cursors, only_listed, page_messages_max),
            ReaderJob::History {
                reply,
                user_id,
                history,
            } => self.history(reply, user_id, history),
            ReaderJob::ConversationList {
                reply,
                user_id,
                list,
            } => self.conversation_list(reply, user_id, list),
            ReaderJob::UserLookup { reply, users } => self.user_lookup(reply, users),
            ReaderJob::Shutdown => Ok(()),
        }
    }

    fn page_limit(&self, asked: u32) -> usize {
        match asked {
            0 => self.config.page_messages_max as usize,
            n => n.min(self.config.page_messages_max) as usize,
        }
    }

    fn sync(
        &self,
        reply: Reply,
        user_id: UserId,
        cursors: Vec<SyncCursor>,
        only_listed: bool,
        page_messages_max: u32,
    ) -> Result<(), Refusal> {
        let page_limit = self.page_limit(page_messages_max);
        let asked: HashMap<ConversationId, Seq> =
            cursors.iter().map(|c| (c.conversation_id, c.seq)).collect();
        let conversations: Vec<(ConversationId, Seq)> = if only_listed {
            let mut listed = Vec::with_capacity(cursors.len());
            for cursor in &cursors {
                if self
                    .store
                    .member(user_id, cursor.conversation_id)?
                    .is_some()
                {
                    listed.push((cursor.conversation_id, cursor.seq));
                }
            }
            listed
        } else {
            self.store
                .memberships(user_id)?
                .into_iter()
                .map(|(id, member)| (id, asked.get(&id).copied().unwrap_or(member.delivered_seq)))
                .collect()
        };

        let mut out = SyncPages {
            events: Vec::new(),
            page: Page::new(),
            pages: 0,
        };
        let per_job = self.config.pages_per_job;
        let mut stopped = false;
        let mut end = Vec::with_capacity(conversations.len());
        for (conversation_id, after) in conversations {
            let mut last = after;
            if stopped {
                end.push(SyncCursor {
                    conversation_id,
                    seq: last,
                });
                continue;
            }
            let result = self.store.scan_messages(
                conversation_id,
                after.saturating_add(1),
                Seq::MAX,
                |seq, stored| {
                    // A page this message would overflow goes without it; the
                    // next page (or job: `last` has not moved) begins with it.
                    if out
                        .page
                        .would_overflow(stored, self.config.page_items_bytes_max)
                        && out.close(reply, per_job)
                    {
                        stopped = true;
                        return false;
                    }
                    out.page.push(stored);
                    last = seq;
                    let full = out.page.count >= page_limit
                        || out.page.items.len() >= self.config.page_bytes_max;
                    if full && out.close(reply, per_job) {
                        stopped = true;
                        return false;
                    }
                    true
                },
            );
            end.push(SyncCursor {
                conversation_id,
                seq: last,
            });
            result?;
        }
        if out.page.count > 0 {
            out.close(reply, per_job);
        }
        let mut events = out.events;
        events.push(ShardEvent::SyncDone {
            conn: reply.conn,
            request_id: reply.request_id,
            cursors: end,
            more: stopped,
            failed: false,
        });
        self.sink.post(events);
        Ok(())
    }

    fn history(&self, reply: Reply, user_id: UserId, history: History) -> Result<(), Refusal> {
        let conversation_id = history.conversation_id;
        let Some(conversation) = self.store.conversation(conversation_id)? else {
            return Err(Refusal::Status(
                StatusCode::NotFound,
                "no such conversation",
            ));
        };
        if self.store.member(user_id, conversation_id)?.is_none() {
            return Err(Refusal::Status(
                StatusCode::Forbidden,
                "not a member of this conversation",
            ));
        }
        let limit = self.page_limit(history.limit);
        let last_seq = conversation.last_seq;
        let (forward, bound) = match history.anchor {
            HistoryAnchor::AfterSeq(seq) => (true, seq),
            HistoryAnchor::BeforeSeq(seq) => (false, seq),
            HistoryAnchor::AfterTime(time) => (
                true,
                self.first_seq_at_or_after(conversation_id, last_seq, time)? - 1,
            ),
            HistoryAnchor::BeforeTime(time) => (
                false,
                self.first_seq_at_or_after(conversation_id, last_seq, time)?,
            ),
        };
        let mut stored: Vec<Bytes> = Vec::with_capacity(limit);
        let mut stored_bytes = 0usize;
        let mut more = false;
        // A message past the page, by count or by bytes, tells that there is
        // more.
        let mut collect = |_: Seq, bytes: &[u8]| {
            let items_bytes_max = self.config.page_items_bytes_max;
            if stored.len() == limit
                || overflows(stored.len(), stored_bytes, bytes.len(), items_bytes_max)
            {
                more = true;
                return false;
            }
            stored_bytes += bytes.len();
            stored.push(Bytes::copy_from_slice(bytes));
            true
        };
        if forward {
            self.store.scan_messages(
                conversation_id,
                bound.saturating_add(1),
                last_seq,
                &mut collect,
            )?;
        } else if bound > 1 {
            self.store
                .scan_messages_back(conversation_id, 1, bound - 1, &mut collect)?;
        }
        if !forward {
            stored.reverse();
        }
        let mut page = Page::new();
        for bytes in &stored {
            page.push(bytes);
        }
        self.sink.post(vec![ShardEvent::ReadAnswer {
            conn: reply.conn,
            frame: page_frame(reply.request_id, Command::HistoryPage, &page, Some(more)),
        }]);
        Ok(())
    }

    /// The user's conversations in id order, with unread counts and the
    /// newest message of each; hidden ones are left out.
    fn conversation_list(
        &self,
        reply: Reply,
        user_id: UserId,
        list: ConversationList,
    ) -> Result<(), Refusal> {
        let limit = self.page_limit(list.limit);
        let mut conversations = Vec::new();
        let mut items_bytes = 0usize;
        let mut more = false;
        for (conversation_id, member) in self.store.memberships(user_id)? {
            if conversation_id <= list.after_conversation_id {
                continue;
            }
            let Some((record, last_message)) =
                self.store.conversation_with_newest(conversation_id)?
            else {
                continue;
            };
            if member
                .hidden_through_seq
                .is_some_and(|hidden| record.last_seq <= hidden)
            {
                continue;
            }
            if conversations.len() == limit {
                more = true;
                break;
            }
            let kind = match record.kind {
                ConversationRecordKind::Direct => ConversationKind::Direct {
                    peer_id: record
                        .members
                        .iter()
                        .copied()
                        .find(|m| *m != user_id)
                        .unwrap_or(user_id),
                },
                ConversationRecordKind::Group { .. } => ConversationKind::Group,
            };
            let summary = ConversationSummary {
                conversation_id,
                kind,
                last_seq: record.last_seq,
                read_seq: member.read_seq,
                unread_count: record.last_seq.saturating_sub(member.read_seq),
                pinned: member.pinned,
                muted: member.muted,
                last_message,
            };
            // Each summary carries a whole message: the page is held to the
            // payload limit by bytes as well as by count.
            let summary_bytes = match body_codec::encode_to_vec(&summary) {
                Ok(encoded) => encoded.len(),
                Err(e) => {
                    log::error!("cannot encode a conversation summary: {e}");
                    return Err(Refusal::Status(
                        StatusCode::Internal,
                        "conversation could not be encoded",
                    ));
                }
            };
            if overflows(
                conversations.len(),
                items_bytes,
                summary_bytes,
                self.config.page_items_bytes_max,
            ) {
                more = true;
                break;
            }
            items_bytes += summary_bytes;
            conversations.push(summary);
        }
        // Pages walk conversation ids, so paging is stable; clients sort
        // (pinned first, newest message first) for display.
        let page = ConversationListPage {
            conversations,
            more,
        };
        self.sink.post(vec![ShardEvent::ReadAnswer {
            conn: reply.conn,
            frame: frames::encode(reply.request_id, &Body::ConversationListPage(page)),
        }]);
        Ok(())
    }

    /// Finds each key's user (ids and names that match none are left out)
    /// and hands them to the writer, which adds their presence and answers.
    fn user_lookup(&self, reply: Reply, keys: Vec<UserKey>) -> Result<(), Refusal> {
        if keys.len() > crate::limits::QUERY_USERS_MAX {
            return Err(Refusal::Status(
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
            if let Some(record) = self.store.user(user_id)? {
                users.push((user_id, record.username));
            }
        }
        self.writer
            .send(WriterRequest::Presence { reply, users })
            .map_err(|_| Refusal::Status(StatusCode::ServerBusy, "server is shutting down"))
    }

    /// The first seq whose server time is >= `time`, or `last_seq + 1`. Times
    /// never decrease within a conversation, so a binary search over seqs
    /// needs no time index: about log2(n) point reads.
    fn first_seq_at_or_after(
        &self,
        conversation_id: ConversationId,
        last_seq: Seq,
        time: u64,
    ) -> Result<Seq, Refusal> {
        let (mut low, mut high) = (1u64, last_seq.saturating_add(1));
        while low < high {
            let middle = low + (high - low) / 2;
            let at = match self.store.message(conversation_id, middle)? {
                Some(bytes) => match body_codec::decode::<Message>(&bytes) {
                    Ok(message) => message.server_time_ms,
                    Err(e) => {
                        log::error!(
                            "stored message {conversation_id}/{middle} does not decode: {e}"
                        );
                        return Err(Refusal::Status(
                            StatusCode::Internal,
                            "stored message is corrupt",
                        ));
                    }
                },
                None => {
                    return Err(Refusal::Status(
                        StatusCode::Internal,
                        "gap in the message log",
                    ))
                }
            };
            if at >= time {
                high = middle;
            } else {
                low = middle + 1;
            }
        }
        Ok(low)
    }
}
