//! A shard: one event-loop thread owning its listener, its connections, its
//! timers and its inbox. No other thread touches its connections.
//!
//! Each turn, in a fixed order: poll (timeout: the next timer tick), accept,
//! read and dispatch ready connections, drain the inbox (acks, pushes and
//! pages from the writer, readers and hashers), expire timers, flush queued
//! writes (one write per connection per turn, many frames each), and reap
//! closed connections. Tokens carry a generation so that an event or inbox
//! entry for a reused slot is ignored.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::config::{AcceptMode, Config};
use super::connection::{Connection, Stage, SyncState};
use super::timer::TimerWheel;
use crate::chat::{
    validate, ConnRef, HashJob, MemberFlag, ReaderJob, Reply, ShardEvent, ShardEvents, ShardSink,
    WriterRequest,
};
use crate::limits;
use crate::protocol::cipher::{self, NoCipher, Role, CONNECTION_NONCE_LEN};
use crate::protocol::frame::{self, HEADER_LEN, VERSION_MAX, VERSION_MIN};
use crate::protocol::*;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
/// A shard's mailbox: events from other threads and the waker that rouses
/// the shard's poll.
pub struct Inbox {
    events: Mutex<Vec<ShardEvent>>,
    /// Sockets accepted by another shard (`--accept-mode single`).
    adopted: Mutex<Vec<(std::net::TcpStream, SocketAddr)>>,
    waker: Waker,
}

impl Inbox {
    pub fn new(poll: &Poll) -> std::io::Result<Inbox> {
        Ok(Inbox {
            events: Mutex::new(Vec::new()),
            adopted: Mutex::new(Vec::new()),
            waker: Waker::new(poll.registry(), WAKER)?,
        })
    }

    /// Hands an accepted socket to this shard.
    pub fn adopt(&self, socket: std::net::TcpStream, peer: SocketAddr) {
        let was_empty = match self.adopted.lock() {
            Ok(mut queue) => {
                let was_empty = queue.is_empty();
                queue.push((socket, peer));
                was_empty
            }
            Err(_) => return,
        };
        self.wake_if(was_empty);
    }

    fn take_adopted(&self, into: &mut Vec<(std::net::TcpStream, SocketAddr)>) {
        if let Ok(mut queue) = self.adopted.lock() {
            std::mem::swap(&mut *queue, into);
        }
    }

    /// Appends events; wakes the shard only if the inbox was empty, since a
    /// non-empty inbox already has a wake pending.
    pub fn push(&self, mut events: Vec<ShardEvent>) {
        let was_empty = match self.events.lock() {
            Ok(mut queue) => {
                let was_empty = queue.is_empty();
                if was_empty {
                    // Taken whole: no copy of a commit's thousands of events.
                    std::mem::swap(&mut *queue, &mut events);
                } else {
                    queue.append(&mut events);
                }
                was_empty
            }
            Err(_) => return,
        };
        self.wake_if(was_empty);
    }

    /// Wakes the shard only if its queue was empty: a non-empty queue already
    /// has a wake pending.
    fn wake_if(&self, was_empty: bool) {
        if was_empty {
            if let Err(e) = self.waker.wake() {
                log::error!("cannot wake a shard: {e}");
            }
        }
    }

    fn take(&self, into: &mut Vec<ShardEvent>) {
        if let Ok(mut queue) = self.events.lock() {
            std::mem::swap(&mut *queue, into);
        }
    }
}

/// Posts events to the shards they name.
pub struct Inboxes(pub Vec<Arc<Inbox>>);

impl ShardSink for Inboxes {
    fn post(&self, events: Vec<ShardEvent>) {
        if self.0.len() == 1 {
            return self.0[0].push(events);
        }
        let mut sorted = ShardEvents::new(self.0.len(), events.len() / self.0.len().max(1));
        for event in events {
            sorted.push(event);
        }
        self.post_sorted(sorted);
    }

    fn shard_count(&self) -> usize {
        self.0.len()
    }

    fn post_sorted(&self, events: ShardEvents) {
        for (inbox, events) in self.0.iter().zip(events.into_per_shard()) {
            if !events.is_empty() {
                inbox.push(events);
            }
        }
    }
}

/// What every shard shares: configuration and the queues to the workers.
pub struct Shared {
    pub config: Config,
    /// Every shard's inbox, for handing accepted sockets over.
    pub inboxes: Arc<Inboxes>,
    pub writer: Sender<WriterRequest>,
    pub readers: Sender<ReaderJob>,
    pub hashers: Sender<HashJob>,
    pub open_connections: AtomicUsize,
}

struct Slot {
    generation: u32,
    connection: Option<Connection>,
}

pub struct Shard {
    id: u16,
    poll: Poll,
    listener: Option<TcpListener>,
    /// Round-robin position when this shard accepts for all of them.
    next_shard: usize,
    /// Connections refused at the limit since the last log line, and the tick
    /// of that line.
    refused: u64,
    refused_logged_tick: Option<u64>,
    accept_paused_until: Option<u64>,
    accept_pending: bool,
    inbox: Arc<Inbox>,
    shared: Arc<Shared>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    wheel: TimerWheel,
    started: Instant,
    tick: u64,
    scratch: Vec<u8>,
    /// Drained output buffers kept for the next connection that writes: a
    /// busy connection's `out` empties every turn, and growing a fresh one
    /// from nothing each time cost a tenth of the shard's CPU under load.
    /// Idle connections hold no buffer either way.
    out_pool: Vec<BytesMut>,
    to_flush: Vec<u64>,
    to_close: Vec<u64>,
    still_readable: Vec<u64>,
    shutdown_deadline: Option<Instant>,
    rng: ring::rand::SystemRandom,
}

fn token_of(index: u32, generation: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(index)
}

fn split_token(token: u64) -> (u32, u32) {
    ((token & 0xFFFF_FFFF) as u32, (token >> 32) as u32)
}

/// Outcome of handling one frame.
enum Flow {
    Continue,
    /// Framing or the session is lost: send this final error and close.
    Fatal(StatusCode, String),
}

impl Shard {
    pub fn new(
        id: u16,
        poll: Poll,
        listener: Option<TcpListener>,
        inbox: Arc<Inbox>,
        shared: Arc<Shared>,
    ) -> std::io::Result<Shard> {
        let mut listener = listener;
        if let Some(listener) = listener.as_mut() {
            poll.registry()
                .register(listener, LISTENER, Interest::READABLE)?;
        }
        Ok(Shard {
            id,
            poll,
            listener,
            next_shard: id as usize,
            refused: 0,
            refused_logged_tick: None,
            accept_paused_until: None,
            accept_pending: false,
            inbox,
            shared,
            slots: Vec::new(),
            free: Vec::new(),
            wheel: TimerWheel::new(),
            started: Instant::now(),
            tick: 0,
            scratch: vec![0u8; limits::SCRATCH_BYTES],
            out_pool: Vec::new(),
            to_flush: Vec::new(),
            to_close: Vec::new(),
            still_readable: Vec::new(),
            shutdown_deadline: None,
            rng: ring::rand::SystemRandom::new(),
        })
    }

    /// Whole seconds since the shard started, as of the last
    /// `refresh_tick`. Deadlines are in whole seconds, so the clock is read
    /// twice per turn of the loop instead of once per frame (which was 1 %
    /// of the machine under load).
    fn tick(&self) -> u64 {
        self.tick
    }

    fn refresh_tick(&mut self) {
        self.tick = self.started.elapsed().as_secs();
    }

    fn conn_ref(&self, token: u64) -> ConnRef {
        ConnRef {
            shard: self.id,
            token,
        }
    }

    fn connection(&mut self, token: u64) -> Option<&mut Connection> {
        let (index, generation) = split_token(token);
        let slot = self.slots.get_mut(index as usize)?;
        if slot.generation != generation {
            return None;
        }
        slot.connection.as_mut()
    }

    /// Runs the loop until shutdown completes.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(limits::EVENTS_PER_POLL);
        let mut inbox = Vec::new();
        let mut adopted = Vec::new();
        let mut due = Vec::new();
        loop {
            let timeout = if self.still_readable.is_empty() && !self.accept_pending {
                let elapsed = self.started.elapsed();
                Some(Duration::from_secs(elapsed.as_secs() + 1).saturating_sub(elapsed))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != ErrorKind::Interrupted {
                    log::error!("shard {}: poll failed: {e}", self.id);
                }
                continue;
            }
            self.refresh_tick();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_pending = true,
                    WAKER => {}
                    Token(token) => {
                        let token = token as u64;
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            let until_eof = event.is_read_closed() || event.is_error();
                            self.guarded(token, |shard| shard.read_ready(token, until_eof));
                        }
                        if event.is_writable() {
                            self.guarded(token, |shard| shard.flush(token));
                        }
                    }
                }
            }
            if self.accept_pending {
                self.accept();
            }
            for token in std::mem::take(&mut self.still_readable) {
                self.guarded(token, |shard| shard.read_ready(token, false));
            }
            self.inbox.take_adopted(&mut adopted);
            for (socket, peer) in adopted.drain(..) {
                if self.shutdown_deadline.is_some() {
                    continue; // dropping it closes it
                }
                if let Err(e) = socket.set_nonblocking(true) {
                    log::warn!("shard {}: cannot adopt {peer}: {e}", self.id);
                    continue;
                }
                self.insert(TcpStream::from_std(socket), peer);
            }
            self.inbox.take(&mut inbox);
            for event in inbox.drain(..) {
                match event.conn() {
                    Some(conn) => self.guarded(conn.token, |shard| shard.handle_event(event)),
                    None => self.begin_shutdown(),
                }
            }
            self.refresh_tick();
            let now_tick = self.tick();
            self.wheel.advance(now_tick, &mut due);
            for token in due.drain(..) {
                self.guarded(token, |shard| shard.check_deadline(token, now_tick));
            }
            if let Some(until) = self.accept_paused_until {
                if now_tick >= until {
                    self.resume_accept();
                }
            }
            for token in std::mem::take(&mut self.to_flush) {
                self.guarded(token, |shard| shard.flush(token));
            }
            for token in std::mem::take(&mut self.to_close) {
                self.remove(token);
            }
            if let Some(deadline) = self.shutdown_deadline {
                let open = self.slots.iter().filter(|s| s.connection.is_some()).count();
                if open == 0 || Instant::now() >= deadline {
                    for index in 0..self.slots.len() {
                        let generation = self.slots[index].generation;
                        self.remove(token_of(index as u32, generation));
                    }
                    log::info!("shard {} stopped", self.id);
                    return;
                }
            }
        }
    }

    /// Runs per-connection work so that a panic (a bug) closes that one
    /// connection and the shard keeps serving the others.
    fn guarded(&mut self, token: u64, work: impl FnOnce(&mut Shard)) {
        if catch_unwind(AssertUnwindSafe(|| work(self))).is_err() {
            log::error!(
                "shard {}: panic while serving connection {token:#x}; closing it",
                self.id
            );
            // The read path lends out the scratch buffer; a panic there
            // leaves it empty, which would read as end-of-file for everyone.
            if self.scratch.len() != limits::SCRATCH_BYTES {
                self.scratch = vec![0u8; limits::SCRATCH_BYTES];
            }
            self.remove(token);
        }
    }

    // ------------------------------------------------------------ accept

    fn accept(&mut self) {
        self.accept_pending = false;
        let per_shard_max = (self.shared.config.max_connections / self.shared.config.shards).max(1);
        for _ in 0..limits::ACCEPTS_PER_TURN {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((socket, peer)) => {
                    let open = self.slots.len() - self.free.len();
                    if open >= per_shard_max {
                        self.refuse(socket, peer, per_shard_max);
                        continue;
                    }
                    self.place(socket, peer);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE/ENFILE and friends: stop accepting for a second
                    // instead of spinning on a listener that stays ready.
                    log::warn!(
                        "shard {}: accept failed ({e}); pausing accept for 1 s",
                        self.id
                    );
                    self.pause_accept();
                    return;
                }
            }
        }
        self.accept_pending = true;
    }

    /// At the connection limit: a final `server_busy` (one small write into
    /// an empty socket buffer, so it does not block) and close. One log line
    /// per second at most, with a count, so a flood cannot flood the log.
    fn refuse(&mut self, mut socket: TcpStream, peer: SocketAddr, limit: usize) {
        let body = Body::Error(ErrorReply {
            code: StatusCode::ServerBusy as u16,
            closing: true,
            message: "connection limit reached; retry later".into(),
        });
        let mut frame = BytesMut::new();
        if frame::encode_frame(&mut frame, VERSION_MAX, 0, &body, &mut NoCipher, u32::MAX).is_ok() {
            let _ = socket.write(&frame);
        }
        drop(socket);
        self.refused += 1;
        let tick = self.tick();
        if self.refused_logged_tick != Some(tick) {
            self.refused_logged_tick = Some(tick);
            log::warn!(
                "shard {}: connection limit {limit} reached; refused {} connections (latest {peer})",
                self.id,
                self.refused
            );
            self.refused = 0;
        }
    }

    /// Keeps an accepted socket, or, when this shard accepts for all
    /// (`--accept-mode single`), hands it to the next shard in turn.
    fn place(&mut self, socket: TcpStream, peer: SocketAddr) {
        let shards = self.shared.inboxes.0.len();
        if shards <= 1 || self.shared.config.accept_mode != AcceptMode::Single {
            return self.insert(socket, peer);
        }
        self.next_shard = (self.next_shard + 1) % shards;
        if self.next_shard == self.id as usize {
            return self.insert(socket, peer);
        }
        if let Some(inbox) = self.shared.inboxes.0.get(self.next_shard) {
            inbox.adopt(std::net::TcpStream::from(socket), peer);
        }
    }

    fn pause_accept(&mut self) {
        if let Some(listener) = self.listener.as_mut() {
            let _ = self.poll.registry().deregister(listener);
        }
        self.accept_paused_until = Some(self.tick() + 1);
    }

    fn resume_accept(&mut self) {
        self.accept_paused_until = None;
        if let Some(listener) = self.listener.as_mut() {
            if let Err(e) = self
                .poll
                .registry()
                .register(listener, LISTENER, Interest::READABLE)
            {
                log::error!("shard {}: cannot resume accepting: {e}", self.id);
            }
        }
        self.accept_pending = true;
    }

    fn insert(&mut self, mut socket: TcpStream, peer: SocketAddr) {
        let _ = socket.set_nodelay(true);
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slots.push(Slot {
                    generation: 1,
                    connection: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let generation = self.slots[index as usize].generation;
        let token = token_of(index, generation);
        if let Err(e) = self.poll.registry().register(
            &mut socket,
            Token(token as usize),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("shard {}: cannot register {peer}: {e}", self.id);
            self.free.push(index);
            return;
        }
        let tick = self.tick();
        self.slots[index as usize].connection = Some(Connection::new(
            socket,
            peer,
            self.shared.config.payload_len_max,
            tick,
        ));
        self.shared.open_connections.fetch_add(1, Ordering::Relaxed);
        self.wheel
            .schedule(token, tick + self.shared.config.handshake_timeout.as_secs());
    }

    /// Drops a connection now (deferred teardown: only called at safe points).
    fn remove(&mut self, token: u64) {
        let (index, generation) = split_token(token);
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return;
        };
        if slot.generation != generation {
            return;
        }
        let Some(mut connection) = slot.connection.take() else {
            return;
        };
        slot.generation = slot.generation.wrapping_add(1).max(1);
        self.free.push(index);
        self.shared.open_connections.fetch_sub(1, Ordering::Relaxed);
        let _ = self.poll.registry().deregister(&mut connection.socket);
        if let Some(user_id) = connection.user_id() {
            let _ = self.shared.writer.send(WriterRequest::Disconnected {
                conn: self.conn_ref(token),
                user_id,
            });
        }
    }

    // ------------------------------------------------------------ reading

    /// Reads what the socket has. `until_eof` when the peer closed its side
    /// (or the socket errored): then only end-of-file or an error stops it.
    fn read_ready(&mut self, token: u64, until_eof: bool) {
        let mut scratch = std::mem::take(&mut self.scratch);
        self.read_into(token, &mut scratch, until_eof);
        self.scratch = scratch;
    }

    fn read_into(&mut self, token: u64, scratch: &mut [u8], until_eof: bool) {
        let queue_max = self.shared.config.send_queue_bytes_max;
        let until_eof = until_eof || self.connection(token).is_some_and(|c| c.read_closed);
        for _ in 0..limits::READS_PER_TURN {
            let Some(connection) = self.connection(token) else {
                return;
            };
            if connection.stage == Stage::Closing {
                return;
            }
            if answers_pile_up(connection, queue_max) {
                // `resume_reading` reads on once they have gone out.
                connection.reading_paused = true;
                connection.read_closed |= until_eof;
                return;
            }
            let read = match connection.socket.read(scratch) {
                Ok(0) => {
                    self.to_close.push(token);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.to_close.push(token);
                    return;
                }
            };
            self.consume(token, &mut scratch[..read]);
            if read < scratch.len() && !until_eof {
                // A short read drained the socket: skip the read that would
                // only say WouldBlock (half the read syscalls when clients
                // send a frame at a time). Epoll is edge-triggered and Linux
                // signals every arrival of data, so nothing is missed; a
                // close arriving with the data came in this same event,
                // flagged read-closed, and is read to the end above.
                return;
            }
        }
        self.still_readable.push(token);
    }

    /// Reads a paused connection again once its answers stopped piling up.
    fn resume_reading(&mut self, token: u64) {
        let queue_max = self.shared.config.send_queue_bytes_max;
        let Some(connection) = self.connection(token) else {
            return;
        };
        if connection.reading_paused && !answers_pile_up(connection, queue_max) {
            connection.reading_paused = false;
            self.still_readable.push(token);
        }
    }

    /// Parses whole frames from new bytes, straight from the scratch buffer
    /// when no partial frame is pending; keeps only a trailing partial frame.
    fn consume(&mut self, token: u64, fresh: &mut [u8]) {
        let Some(connection) = self.connection(token) else {
            return;
        };
        if connection.read_buf.is_empty() {
            let used = self.parse(token, fresh);
            if let Some(connection) = self.connection(token) {
                if used < fresh.len() && connection.stage != Stage::Closing {
                    let partial = &fresh[used..];
                    let frame_len = Self::pending_frame_len(&connection.decoder, partial);
                    frame::reserve_exact(&mut connection.read_buf, frame_len.max(partial.len()));
                    connection.read_buf.extend_from_slice(partial);
                }
            }
        } else {
            // Grow to exactly what the pending frame needs: `extend` alone may
            // double the buffer.
            let frame_len = Self::pending_frame_len(&connection.decoder, &connection.read_buf);
            let needed = connection.read_buf.len() + fresh.len();
            frame::reserve_exact(&mut connection.read_buf, frame_len.max(needed));
            connection.read_buf.extend_from_slice(fresh);
            let mut pending = std::mem::take(&mut connection.read_buf);
            let used = self.parse(token, &mut pending);
            if let Some(connection) = self.connection(token) {
                pending.advance(used);
                // Keep the buffer only while a partial frame is pending.
                connection.read_buf = if pending.is_empty() {
                    BytesMut::new()
                } else {
                    pending
                };
            }
        }
    }

    /// Length of the frame whose start is in `partial`, once its header is
    /// there (the header was checked against the limit); 0 before that.
    fn pending_frame_len(decoder: &FrameDecoder, partial: &[u8]) -> usize {
        match decoder.peek_header(partial) {
            Ok(Some(header)) => frame::FRAME_OVERHEAD + header.payload_len as usize,
            _ => 0,
        }
    }

    /// Handles every whole frame at the front of `buf`; returns bytes used.
    fn parse(&mut self, token: u64, buf: &mut [u8]) -> usize {
        let mut used = 0;
        loop {
            let tick = self.tick();
            let Some(connection) = self.connection(token) else {
                return used;
            };
            if connection.stage == Stage::Closing {
                return used;
            }
            let rest = &mut buf[used..];
            let (header, frame_len) = match connection.decoder.split(rest) {
                Ok(Some(found)) => found,
                Ok(None) => return used,
                Err(e) => {
                    self.log_bad_input(token, &e.to_string(), rest);
                    self.fail(token, e.status(), &e.to_string());
                    return used;
                }
            };
            used += frame_len;
            let header_bytes = header.to_bytes();
            let payload = &mut rest[HEADER_LEN..frame_len - frame::CRC_LEN];
            let plaintext_len = match connection.cipher.as_mut() {
                None if header.cipher_id == cipher::CIPHER_NONE => payload.len(),
                None => {
                    self.fail(token, StatusCode::BadCipher, "cipher not negotiated");
                    return used;
                }
                Some(cipher) if header.cipher_id != cipher.id() => {
                    self.fail(token, StatusCode::BadCipher, "frame uses another cipher");
                    return used;
                }
                Some(cipher) => match cipher.open(&header_bytes, payload) {
                    Ok(len) => len,
                    Err(e) => {
                        self.fail(token, StatusCode::BadCipher, &e.to_string());
                        return used;
                    }
                },
            };
            connection.last_frame_tick = tick;
            let plaintext = &payload[..plaintext_len];
            if let Flow::Fatal(code, message) = self.frame(token, header, plaintext) {
                self.fail(token, code, &message);
                return used;
            }
        }
    }

    fn log_bad_input(&self, token: u64, what: &str, bytes: &[u8]) {
        let sample: Vec<String> = bytes.iter().take(16).map(|b| format!("{b:02x}")).collect();
        let peer = self
            .slots
            .get(split_token(token).0 as usize)
            .and_then(|slot| slot.connection.as_ref())
            .map(|c| c.peer.to_string())
            .unwrap_or_default();
        log::info!(
            "bad frame from {peer}: {what}; first bytes {}",
            sample.join(" ")
        );
    }

    // ------------------------------------------------------------ dispatch

    /// One decoded frame, by stage and command.
    fn frame(&mut self, token: u64, header: FrameHeader, plaintext: &[u8]) -> Flow {
        let request_id = header.request_id;
        let Some(stage) = self.connection(token).map(|c| c.stage) else {
            return Flow::Continue;
        };
        // Whatever the command, known or not, only hello may come first.
        if stage == Stage::AwaitHello && header.command != Command::Hello as u16 {
            return Flow::Fatal(StatusCode::BadFrame, "the first frame must be hello".into());
        }
        // Id 0 marks pushes: an answer to it could not be told from one.
        if request_id == 0 {
            return Flow::Fatal(
                StatusCode::BadFrame,
                "request id 0 is for the server's pushes; requests use a nonzero id".into(),
            );
        }
        let Some(command) = Command::from_u16(header.command) else {
            self.error(
                token,
                request_id,
                StatusCode::UnknownCommand,
                "unknown command",
            );
            return Flow::Continue;
        };
        if command.direction() != Direction::ClientToServer {
            self.error(
                token,
                request_id,
                StatusCode::UnknownCommand,
                "a server-to-client command",
            );
            return Flow::Continue;
        }
        let body = match Body::decode(command, plaintext) {
            Ok(body) => body,
            Err(e) => {
                if stage == Stage::AwaitHello {
                    return Flow::Fatal(StatusCode::BadBody, format!("hello: {e}"));
                }
                self.error(token, request_id, StatusCode::BadBody, &e.to_string());
                return Flow::Continue;
            }
        };
        let reply = Reply {
            conn: self.conn_ref(token),
            request_id,
        };
        match (stage, body) {
            (Stage::AwaitHello, Body::Hello(hello)) => return self.hello(token, header, hello),
            (_, Body::Hello(_)) => self.error(
                token,
                request_id,
                StatusCode::BadBody,
                "hello was already done",
            ),
            (_, Body::Ping(ping)) => {
                let pong = Body::Pong(Pong {
                    nonce: ping.nonce,
                    server_time_ms: crate::chat::now_ms(),
                });
                self.respond(token, request_id, &pong);
            }
            (Stage::Authenticating, _) => self.error(
                token,
                request_id,
                StatusCode::ServerBusy,
                "authentication in progress",
            ),
            (Stage::Unauthenticated, Body::Register(register)) => {
                self.set_stage(token, Stage::Authenticating);
                self.queue_to_hashers(
                    reply,
                    HashJob::Register {
                        reply,
                        username: register.username,
                        password: register.password,
                    },
                );
            }
            (Stage::Unauthenticated, Body::Login(login)) => {
                let Some(peer_ip) = self.connection(token).map(|c| c.peer.ip()) else {
                    return Flow::Continue;
                };
                self.set_stage(token, Stage::Authenticating);
                self.queue_to_hashers(
                    reply,
                    HashJob::Login {
                        reply,
                        username: login.username,
                        password: login.password,
                        device_id: login.device_id,
                        peer_ip,
                    },
                );
            }
            (Stage::Unauthenticated, Body::Resume(resume)) => {
                if let Err(invalid) = validate::device_id(&resume.device_id) {
                    self.error(token, request_id, invalid.code, &invalid.message);
                    return Flow::Continue;
                }
                self.set_stage(token, Stage::Authenticating);
                self.queue_to_writer(
                    reply,
                    WriterRequest::Resume {
                        reply,
                        token: resume.session_token,
                        device_id: resume.device_id,
                    },
                );
            }
            (Stage::Unauthenticated, _) => self.error(
                token,
                request_id,
                StatusCode::Unauthenticated,
                "log in first",
            ),
            (Stage::Authenticated { .. }, Body::Register(_) | Body::Login(_) | Body::Resume(_)) => {
                self.error(
                    token,
                    request_id,
                    StatusCode::Conflict,
                    "already logged in; log out first",
                )
            }
            (Stage::Authenticated { user_id }, body) => {
                self.authenticated(token, reply, user_id, body, plaintext.len())
            }
            (Stage::AwaitHello | Stage::Closing, _) => {}
        }
        Flow::Continue
    }

    fn hello(&mut self, token: u64, header: FrameHeader, hello: Hello) -> Flow {
        // A deliberate bug for the test that proves a panic costs one
        // connection, not a shard; inert unless the variable is set.
        if hello.agent == "gust-test-panic" && std::env::var_os("GUSTD_TEST_PANIC").is_some() {
            panic!("deliberate panic for a test");
        }
        if header.version != VERSION_MIN {
            return Flow::Fatal(
                StatusCode::UnsupportedVersion,
                "hello is framed as version 1".into(),
            );
        }
        let version = hello.version_max.min(VERSION_MAX);
        if version < hello.version_min || version < VERSION_MIN {
            return Flow::Fatal(
                StatusCode::UnsupportedVersion,
                format!("this server speaks versions {VERSION_MIN} to {VERSION_MAX}"),
            );
        }
        let mut server_nonce = vec![0u8; CONNECTION_NONCE_LEN];
        if ring::rand::SecureRandom::fill(&self.rng, &mut server_nonce).is_err() {
            return Flow::Fatal(StatusCode::Internal, "no randomness".into());
        }
        let psk = self.shared.config.psk;
        let cipher = match cipher::negotiate(
            hello.cipher,
            psk.as_ref(),
            &hello.client_nonce,
            &server_nonce,
            Role::Server,
        ) {
            Ok(cipher) => cipher,
            Err(e) => return Flow::Fatal(StatusCode::BadCipher, e.to_string()),
        };
        let ack = Body::HelloAck(HelloAck {
            version,
            server_version_min: VERSION_MIN,
            server_version_max: VERSION_MAX,
            cipher: hello.cipher,
            server_nonce,
            heartbeat_interval_ms: (self.shared.config.idle_timeout.as_millis() / 2)
                .min(u32::MAX as u128) as u32,
            payload_len_max: self.shared.config.payload_len_max,
            server: format!("gustd/{}", env!("CARGO_PKG_VERSION")),
        });
        // The ack itself travels in plaintext; the cipher starts after it.
        self.respond(token, header.request_id, &ack);
        if let Some(connection) = self.connection(token) {
            connection.decoder.require_version(version);
            if cipher.id() != cipher::CIPHER_NONE {
                connection.cipher = Some(cipher);
            }
            connection.stage = Stage::Unauthenticated;
        }
        Flow::Continue
    }

    /// `body_len`: the request's plaintext payload, in bytes.
    fn authenticated(
        &mut self,
        token: u64,
        reply: Reply,
        user_id: UserId,
        body: Body,
        body_len: usize,
    ) {
        let request_id = reply.request_id;
        match body {
            Body::Send(send) => {
                if let Err(invalid) = validate::send(&send) {
                    return self.error(token, request_id, invalid.code, &invalid.message);
                }
                // The stored message must fit the frames that carry it to
                // clients (a deliver, a page), which this limit bounds too.
                let room = (self.shared.config.payload_len_max as usize)
                    .saturating_sub(limits::MESSAGE_FRAMING_BYTES_MAX);
                if body_len > room {
                    return self.error(
                        token,
                        request_id,
                        StatusCode::TooLarge,
                        &format!(
                            "a send may have {room} bytes on this server ({} less what a delivery adds), not {body_len}",
                            self.shared.config.payload_len_max
                        ),
                    );
                }
                self.queue_to_writer(
                    reply,
                    WriterRequest::Send {
                        reply,
                        user_id,
                        send: Box::new(send),
                    },
                );
            }
            Body::DeliveryAck(ack) => self.queue_to_writer(
                reply,
                WriterRequest::DeliveryAck {
                    reply,
                    user_id,
                    conversation_id: ack.conversation_id,
                    seq: ack.seq,
                },
            ),
            Body::ReadAck(ack) => self.queue_to_writer(
                reply,
                WriterRequest::ReadAck {
                    reply,
                    user_id,
                    conversation_id: ack.conversation_id,
                    seq: ack.seq,
                    receipt: true,
                },
            ),
            Body::MarkRead(mark) => self.queue_to_writer(
                reply,
                WriterRequest::ReadAck {
                    reply,
                    user_id,
                    conversation_id: mark.conversation_id,
                    seq: mark.seq,
                    receipt: false,
                },
            ),
            Body::Logout(_) => {
                self.queue_to_writer(reply, WriterRequest::Logout { reply, user_id })
            }
            Body::UserLookup(lookup) => self.queue_read(
                reply,
                ReaderJob::UserLookup {
                    reply,
                    users: lookup.users,
                },
            ),
            Body::Sync(sync) => {
                if sync.cursors.len() > limits::SYNC_CURSORS_MAX {
                    return self.error(
                        token,
                        request_id,
                        StatusCode::TooLarge,
                        "too many sync cursors",
                    );
                }
                let Some(connection) = self.connection(token) else {
                    return;
                };
                if connection.sync.is_some() {
                    return self.error(
                        token,
                        request_id,
                        StatusCode::ServerBusy,
                        "a sync is already running",
                    );
                }
                connection.sync = Some(Box::new(SyncState {
                    request_id,
                    only_listed: false,
                    page_messages_max: sync.page_messages_max,
                    cursors: HashMap::new(),
                    held: Vec::new(),
                    overflow: false,
                    continuation: None,
                }));
                self.queue_to_readers(
                    reply,
                    ReaderJob::Sync {
                        reply,
                        user_id,
                        cursors: sync.cursors,
                        only_listed: false,
                        page_messages_max: sync.page_messages_max,
                    },
                );
            }
            Body::History(history) => self.queue_read(
                reply,
                ReaderJob::History {
                    reply,
                    user_id,
                    history,
                },
            ),
            Body::SetPinned(set) => self.queue_to_writer(
                reply,
                WriterRequest::SetFlag {
                    reply,
                    user_id,
                    conversation_id: set.conversation_id,
                    flag: MemberFlag::Pinned(set.pinned),
                },
            ),
            Body::SetMuted(set) => self.queue_to_writer(
                reply,
                WriterRequest::SetFlag {
                    reply,
                    user_id,
                    conversation_id: set.conversation_id,
                    flag: MemberFlag::Muted(set.muted),
                },
            ),
            Body::HideConversation(hide) => self.queue_to_writer(
                reply,
                WriterRequest::SetFlag {
                    reply,
                    user_id,
                    conversation_id: hide.conversation_id,
                    flag: MemberFlag::Hidden,
                },
            ),
            Body::ConversationList(list) => self.queue_read(
                reply,
                ReaderJob::ConversationList {
                    reply,
                    user_id,
                    list,
                },
            ),
            other => self.error(
                token,
                request_id,
                StatusCode::UnknownCommand,
                &format!("{} is not served by this release", other.command().name()),
            ),
        }
    }

    fn queue_to_writer(&mut self, reply: Reply, request: WriterRequest) {
        if self.shared.writer.send(request).is_err() {
            self.error(
                reply.conn.token,
                reply.request_id,
                StatusCode::ServerBusy,
                "server is shutting down",
            );
        }
    }

    /// A history, conversation-list or user-lookup request, counted against the
    /// connection's reads in flight (`ShardEvent::ReadAnswer` counts it down).
    fn queue_read(&mut self, reply: Reply, job: ReaderJob) {
        let token = reply.conn.token;
        let Some(connection) = self.connection(token) else {
            return;
        };
        if connection.reads_in_flight >= limits::READS_IN_FLIGHT_MAX {
            return self.error(
                token,
                reply.request_id,
                StatusCode::ServerBusy,
                "too many history, conversation-list and user-lookup requests in flight",
            );
        }
        connection.reads_in_flight += 1;
        if !self.queue_to_readers(reply, job) {
            if let Some(connection) = self.connection(token) {
                connection.reads_in_flight -= 1;
            }
        }
    }

    /// False (and the request answered `server_busy`) once the readers
    /// have stopped.
    fn queue_to_readers(&mut self, reply: Reply, job: ReaderJob) -> bool {
        let sent = self.shared.readers.send(job).is_ok();
        if !sent {
            self.error(
                reply.conn.token,
                reply.request_id,
                StatusCode::ServerBusy,
                "server is shutting down",
            );
        }
        sent
    }

    fn queue_to_hashers(&mut self, reply: Reply, job: HashJob) {
        if self.shared.hashers.send(job).is_err() {
            self.set_stage(reply.conn.token, Stage::Unauthenticated);
            self.error(
                reply.conn.token,
                reply.request_id,
                StatusCode::ServerBusy,
                "server is shutting down",
            );
        }
    }

    fn set_stage(&mut self, token: u64, stage: Stage) {
        if let Some(connection) = self.connection(token) {
            if connection.stage != Stage::Closing {
                connection.stage = stage;
            }
        }
    }

    // ------------------------------------------------------------ writing

    /// Encodes a response for this connection (with its cipher).
    fn respond(&mut self, token: u64, request_id: u32, body: &Body) {
        self.encode_out(token, body.command().name(), |out, cipher| {
            frame::encode_frame(
                out,
                VERSION_MAX,
                request_id,
                body,
                cipher,
                limits::PAYLOAD_LEN_CEILING,
            )
        });
    }

    /// Runs `encode` on the connection's output buffer (lent from the pool if
    /// it has none) and its cipher, then queues a flush.
    fn encode_out(
        &mut self,
        token: u64,
        what: &str,
        encode: impl FnOnce(&mut BytesMut, &mut dyn PayloadCipher) -> Result<(), frame::EncodeError>,
    ) {
        self.lend_out_buffer(token);
        let Some(connection) = self.connection(token) else {
            return;
        };
        let result = match connection.cipher.as_mut() {
            Some(cipher) => encode(&mut connection.out, cipher.as_mut()),
            None => encode(&mut connection.out, &mut NoCipher),
        };
        if let Err(e) = result {
            log::error!("cannot encode {what}: {e}");
        }
        self.queue_flush(token);
    }

    fn error(&mut self, token: u64, request_id: u32, code: StatusCode, message: &str) {
        let body = Body::Error(ErrorReply {
            code: code as u16,
            closing: false,
            message: message.to_string(),
        });
        self.respond(token, request_id, &body);
    }

    /// A final error: send it, stop reading, close once flushed.
    fn fail(&mut self, token: u64, code: StatusCode, message: &str) {
        let body = Body::Error(ErrorReply {
            code: code as u16,
            closing: true,
            message: message.to_string(),
        });
        self.respond(token, 0, &body);
        self.close_after_flush(token);
    }

    fn close_after_flush(&mut self, token: u64) {
        let tick = self.tick();
        if let Some(connection) = self.connection(token) {
            if let Some(user_id) = connection.user_id() {
                // Stop routing to it now; the shard will not deliver anyway.
                let _ = self.shared.writer.send(WriterRequest::Disconnected {
                    conn: ConnRef {
                        shard: self.id,
                        token,
                    },
                    user_id,
                });
            }
            if let Some(connection) = self.connection(token) {
                connection.stage = Stage::Closing;
                connection.stage_since_tick = tick;
            }
            self.wheel
                .schedule(token, tick + limits::CLOSING_GRACE_SECS);
            self.queue_flush(token);
        }
    }

    /// Appends a frame encoded elsewhere (in plaintext), resealing it when
    /// the connection has a cipher.
    fn queue_frame(&mut self, token: u64, frame_bytes: &Bytes) {
        self.lend_out_buffer(token);
        let Some(connection) = self.connection(token) else {
            return;
        };
        match connection.cipher.as_mut() {
            None => connection.out.extend_from_slice(frame_bytes),
            Some(cipher) => {
                let Some((header, payload)) = frame::split_plain_frame(frame_bytes) else {
                    log::error!("shard {}: a shared frame is malformed", self.id);
                    return;
                };
                if let Err(e) = frame::encode_raw_frame(
                    &mut connection.out,
                    header.version,
                    header.request_id,
                    header.command,
                    payload,
                    cipher.as_mut(),
                    limits::PAYLOAD_LEN_CEILING,
                ) {
                    log::error!("cannot reseal a frame: {e}");
                }
            }
        }
        self.queue_flush(token);
    }

    /// Frames an already-encoded payload straight into the connection's
    /// buffer, sealed if the connection has a cipher.
    fn queue_payload(&mut self, token: u64, request_id: u32, command: Command, payload: &[u8]) {
        self.encode_out(token, command.name(), |out, cipher| {
            frame::encode_raw_frame(
                out,
                VERSION_MAX,
                request_id,
                command as u16,
                payload,
                cipher,
                limits::PAYLOAD_LEN_CEILING,
            )
        });
    }

    /// Gives a connection with no output buffer one from the pool.
    fn lend_out_buffer(&mut self, token: u64) {
        if self.connection(token).is_none_or(|c| c.out.capacity() != 0) {
            return;
        }
        let buffer = self
            .out_pool
            .pop()
            .unwrap_or_else(|| BytesMut::with_capacity(limits::OUT_BUFFER_BYTES));
        if let Some(connection) = self.connection(token) {
            connection.out = buffer;
        }
    }

    /// Takes back a drained output buffer, unless the pool is full or the
    /// buffer grew past the usual size (a catch-up burst).
    fn return_out_buffer(&mut self, mut buffer: BytesMut) {
        if self.out_pool.len() < limits::OUT_BUFFER_POOL_MAX
            && buffer.capacity() <= limits::OUT_BUFFER_BYTES
        {
            // Moves the empty view back to the start of its allocation.
            buffer.clear();
            buffer.reserve(limits::OUT_BUFFER_BYTES);
            self.out_pool.push(buffer);
        }
    }

    fn queue_flush(&mut self, token: u64) {
        if let Some(connection) = self.connection(token) {
            if !connection.flush_queued {
                connection.flush_queued = true;
                self.to_flush.push(token);
            }
        }
    }

    /// Writes as much of `out` as the socket takes. Frees the buffer once it
    /// is drained, then resumes whatever was waiting for the drain.
    fn flush(&mut self, token: u64) {
        let Some(connection) = self.connection(token) else {
            return;
        };
        connection.flush_queued = false;
        while !connection.out.is_empty() {
            match connection.socket.write(&connection.out) {
                Ok(0) => {
                    self.to_close.push(token);
                    return;
                }
                Ok(n) => connection.out.advance(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    return self.resume_reading(token);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.to_close.push(token);
                    return;
                }
            }
        }
        let drained = std::mem::take(&mut connection.out);
        let closing = connection.stage == Stage::Closing;
        self.return_out_buffer(drained);
        if closing {
            self.to_close.push(token);
            return;
        }
        self.resume_reading(token);
        self.after_drain(token);
    }

    /// The connection's queue is empty: continue a paused sync, or start the
    /// catch-up of a connection that fell behind.
    fn after_drain(&mut self, token: u64) {
        let reply = Reply {
            conn: self.conn_ref(token),
            request_id: 0,
        };
        let Some(connection) = self.connection(token) else {
            return;
        };
        let Some(user_id) = connection.user_id() else {
            return;
        };
        if let Some(sync) = connection.sync.as_mut() {
            if let Some(cursors) = sync.continuation.take() {
                let job = ReaderJob::Sync {
                    reply: Reply {
                        request_id: sync.request_id,
                        ..reply
                    },
                    user_id,
                    cursors,
                    only_listed: sync.only_listed,
                    page_messages_max: sync.page_messages_max,
                };
                self.queue_to_readers(reply, job);
            }
            return;
        }
        if let Some(behind) = connection.behind.take() {
            let cursors: Vec<SyncCursor> = behind
                .iter()
                .map(|(conversation_id, first_dropped)| SyncCursor {
                    conversation_id: *conversation_id,
                    seq: first_dropped.saturating_sub(1),
                })
                .collect();
            connection.sync = Some(Box::new(SyncState {
                request_id: 0,
                only_listed: true,
                page_messages_max: 0,
                cursors: HashMap::new(),
                held: Vec::new(),
                overflow: false,
                continuation: None,
            }));
            self.queue_to_readers(
                reply,
                ReaderJob::Sync {
                    reply,
                    user_id,
                    cursors,
                    only_listed: true,
                    page_messages_max: 0,
                },
            );
        }
    }

    // ------------------------------------------------------------ inbox

    fn handle_event(&mut self, event: ShardEvent) {
        match event {
            ShardEvent::Frame { conn, frame } => self.queue_frame(conn.token, &frame),
            ShardEvent::ReadAnswer { conn, frame } => {
                if let Some(connection) = self.connection(conn.token) {
                    connection.reads_in_flight = connection.reads_in_flight.saturating_sub(1);
                }
                self.queue_frame(conn.token, &frame);
                self.resume_reading(conn.token);
            }
            ShardEvent::SendAck {
                conn,
                request_id,
                ack,
            } => self.respond(conn.token, request_id, &Body::SendAck(ack)),
            ShardEvent::Deliver {
                conn,
                conversation_id,
                seq,
                message,
            } => self.deliver(conn.token, conversation_id, seq, message),
            ShardEvent::Authenticated {
                conn,
                user_id,
                frame,
            } => {
                let tick = self.tick();
                match self.connection(conn.token) {
                    Some(connection) if connection.stage == Stage::Authenticating => {
                        connection.stage = Stage::Authenticated { user_id };
                        connection.last_frame_tick = tick;
                        self.queue_frame(conn.token, &frame);
                    }
                    _ => {
                        // Gone or closing meanwhile: undo the route.
                        let _ = self
                            .shared
                            .writer
                            .send(WriterRequest::Disconnected { conn, user_id });
                    }
                }
            }
            ShardEvent::Unauthenticated { conn, frame } => {
                let tick = self.tick();
                if let Some(connection) = self.connection(conn.token) {
                    if connection.stage != Stage::Closing {
                        connection.stage = Stage::Unauthenticated;
                        // A new handshake window starts after a logout.
                        connection.stage_since_tick = tick;
                        connection.sync = None;
                        connection.behind = None;
                    }
                    self.queue_frame(conn.token, &frame);
                }
            }
            ShardEvent::SyncDone {
                conn,
                request_id,
                cursors,
                more,
                failed,
            } => self.sync_done(conn.token, request_id, cursors, more, failed),
            ShardEvent::Close { conn, frame } => {
                if let Some(connection) = self.connection(conn.token) {
                    // Replaced: the writer already removed the route.
                    connection.stage = Stage::Closing;
                    self.queue_frame(conn.token, &frame);
                    self.close_after_flush(conn.token);
                }
            }
            ShardEvent::Shutdown => self.begin_shutdown(),
        }
    }

    /// Pushes a stored message (`message` is a `deliver` payload), unless the
    /// connection is syncing (held) or behind (dropped, caught up later).
    fn deliver(&mut self, token: u64, conversation_id: ConversationId, seq: Seq, message: Bytes) {
        let queue_max = self.shared.config.send_queue_bytes_max;
        let Some(connection) = self.connection(token) else {
            return;
        };
        if connection.user_id().is_none() {
            return;
        }
        if let Some(sync) = connection.sync.as_mut() {
            if sync.overflow {
                return;
            }
            if sync.held.len() >= limits::HELD_PUSHES_MAX {
                sync.overflow = true;
                sync.held = Vec::new();
                return;
            }
            sync.held.push((conversation_id, seq, message));
            return;
        }
        let frame_len = frame::FRAME_OVERHEAD + message.len();
        if connection.behind.is_none() && connection.out.len() + frame_len > queue_max {
            // A burst may fill the queue within one turn: try the socket
            // before calling the device slow.
            self.flush(token);
        }
        let Some(connection) = self.connection(token) else {
            return;
        };
        if connection.behind.is_some() || connection.out.len() + frame_len > queue_max {
            connection.note_dropped(conversation_id, seq);
            return;
        }
        self.queue_payload(token, 0, Command::Deliver, &message);
    }

    fn sync_done(
        &mut self,
        token: u64,
        request_id: u32,
        cursors: Vec<SyncCursor>,
        more: bool,
        failed: bool,
    ) {
        let Some(connection) = self.connection(token) else {
            return;
        };
        let Some(sync) = connection.sync.as_mut() else {
            return;
        };
        if sync.request_id != request_id {
            return;
        }
        if failed {
            // The reader sent the error; pushes held meanwhile go out as they
            // are (the client retries the sync for anything older).
            let Some(sync) = connection.sync.take() else {
                return;
            };
            for (conversation_id, seq, message) in sync.held {
                self.deliver(token, conversation_id, seq, message);
            }
            return;
        }
        for cursor in &cursors {
            sync.cursors.insert(cursor.conversation_id, cursor.seq);
        }
        if more || sync.overflow {
            // Continue from storage once the queue drains; after an overflow
            // the held pushes were dropped, so scan every conversation again
            // from where this sync reached.
            if sync.overflow {
                sync.overflow = false;
                sync.only_listed = false;
            }
            sync.continuation = Some(cursors);
            let drained = connection.out.is_empty();
            if drained {
                self.after_drain(token);
            }
            return;
        }
        let Some(sync) = connection.sync.take() else {
            return;
        };
        let mut end: Vec<SyncCursor> = sync
            .cursors
            .iter()
            .map(|(conversation_id, seq)| SyncCursor {
                conversation_id: *conversation_id,
                seq: *seq,
            })
            .collect();
        end.sort_by_key(|c| c.conversation_id);
        self.respond(token, request_id, &Body::SyncEnd(SyncEnd { cursors: end }));
        for (conversation_id, seq, message) in sync.held {
            let covered = sync.cursors.get(&conversation_id).copied().unwrap_or(0);
            if seq > covered {
                self.deliver(token, conversation_id, seq, message);
            }
        }
    }

    // ------------------------------------------------------------ timers

    fn check_deadline(&mut self, token: u64, now_tick: u64) {
        let handshake = self.shared.config.handshake_timeout.as_secs();
        let idle = self.shared.config.idle_timeout.as_secs();
        let Some(connection) = self.connection(token) else {
            return;
        };
        let stage = connection.stage;
        let deadline = match stage {
            Stage::AwaitHello | Stage::Unauthenticated | Stage::Authenticating => {
                connection.stage_since_tick + handshake
            }
            Stage::Authenticated { .. } => connection.last_frame_tick + idle,
            Stage::Closing => connection.stage_since_tick + limits::CLOSING_GRACE_SECS,
        };
        if now_tick < deadline {
            self.wheel.schedule(token, deadline);
            return;
        }
        match stage {
            Stage::Closing => self.to_close.push(token),
            Stage::Authenticated { .. } => {
                let going_away = Body::GoingAway(GoingAway {
                    reason: GoingAwayReason::Idle,
                    reconnect_after_ms: 0,
                });
                self.respond(token, 0, &going_away);
                self.close_after_flush(token);
            }
            _ => self.fail(
                token,
                StatusCode::Timeout,
                "hello and login not completed in time",
            ),
        }
    }

    // ------------------------------------------------------------ shutdown

    fn begin_shutdown(&mut self) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        self.shutdown_deadline =
            Some(Instant::now() + Duration::from_secs(limits::SHUTDOWN_GRACE_SECS));
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let going_away = Body::GoingAway(GoingAway {
            reason: GoingAwayReason::Shutdown,
            reconnect_after_ms: 1000,
        });
        for index in 0..self.slots.len() {
            let token = token_of(index as u32, self.slots[index].generation);
            let Some(connection) = self.connection(token) else {
                continue;
            };
            if connection.stage == Stage::Closing {
                continue;
            }
            if connection.stage != Stage::AwaitHello {
                self.respond(token, 0, &going_away);
            }
            self.close_after_flush(token);
        }
    }
}

/// Whether a connection's answers are piling up: its queue is over the
/// per-connection bound, or its reads in flight are at their limit.
fn answers_pile_up(connection: &Connection, queue_max: usize) -> bool {
    connection.out.len() >= queue_max || connection.reads_in_flight >= limits::READS_IN_FLIGHT_MAX
}
