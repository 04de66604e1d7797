//! One blocking TCP connection to a gust server.
//!
//! [`Connection`] does the hello (and the cipher it negotiates), then offers a
//! request/response call and typed helpers for the common commands. Pushes
//! (request id 0) that arrive while a response is awaited are queued and handed
//! out by [`Connection::next_event`], which also acks delivered messages and
//! drops duplicates. There is no reconnection here; see
//! [`Session`](super::Session) for that.
//!
//! Everything read from the socket goes through the sans-I/O codec in
//! [`crate::protocol`]; nothing the server sends can panic this code: a frame
//! that does not decode is an error for that frame, a frame that does not
//! parse or authenticate ends the connection.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ring::rand::{SecureRandom, SystemRandom};

use super::error::{ClientError, Result};
use super::events::{Event, SeqTracker};
use super::ClientOptions;
use crate::limits;
use crate::protocol::cipher::{self, CONNECTION_NONCE_LEN};
use crate::protocol::frame::{VERSION_MAX, VERSION_MIN};
use crate::protocol::*;

/// Bytes read from the socket per call. Frames larger than this are
/// reassembled across reads by the decoder.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// One decoded frame: the body, or why this frame alone could not be decoded
/// (the stream itself is still in step).
struct Incoming {
    request_id: u32,
    body: Result<Body>,
}

/// A connected, hello'd connection. Blocking; not shared between threads.
pub struct Connection {
    stream: TcpStream,
    read_buf: BytesMut,
    write_buf: BytesMut,
    decoder: FrameDecoder,
    cipher: Box<dyn PayloadCipher>,
    /// Frame version of every frame after hello.
    version: u8,
    /// The server's payload limit (what it accepts from us).
    payload_len_max: u32,
    hello_ack: HelloAck,
    timeout: Duration,
    /// Send something at least this often while idle (None: no requirement).
    heartbeat: Option<Duration>,
    last_sent: Instant,
    next_request_id: u32,
    rng: SystemRandom,
    /// Pushes not yet handed to the caller. Not bounded: dropping a message
    /// would be unsafe, since a later message's cumulative ack would cover it.
    events: VecDeque<Event>,
    seen: SeqTracker,
    auto_ack: bool,
    /// Set once the connection can no longer be used.
    closed: bool,
    going_away: Option<GoingAway>,
    user_id: Option<UserId>,
    username: Option<String>,
    device_id: Option<String>,
    session_token: Option<Vec<u8>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.stream.peer_addr().ok())
            .field("version", &self.version)
            .field("cipher", &self.cipher.id())
            .field("user_id", &self.user_id)
            .field("closed", &self.closed)
            .field("events_queued", &self.events.len())
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects to the first address that accepts and does the hello.
    pub fn connect(addr: impl ToSocketAddrs, options: &ClientOptions) -> Result<Connection> {
        let mut last_error = None;
        for candidate in addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&candidate, options.timeout) {
                Ok(stream) => return Connection::handshake(stream, options),
                Err(e) => last_error = Some(e),
            }
        }
        Err(match last_error {
            Some(e) if e.kind() == ErrorKind::TimedOut => ClientError::Timeout,
            Some(e) => ClientError::Io(e),
            None => ClientError::Io(std::io::Error::new(
                ErrorKind::InvalidInput,
                "the address resolved to nothing",
            )),
        })
    }

    fn handshake(stream: TcpStream, options: &ClientOptions) -> Result<Connection> {
        // Requests are small and latency-bound; Nagle would hold them back.
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(options.timeout))?;
        let mut conn = Connection {
            stream,
            read_buf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            write_buf: BytesMut::new(),
            // Until hello_ack names the server's limit, accept the default.
            decoder: FrameDecoder::new(limits::PAYLOAD_LEN_DEFAULT),
            cipher: Box::new(NoCipher),
            // Hello is always framed as version 1.
            version: 1,
            payload_len_max: limits::PAYLOAD_LEN_DEFAULT,
            hello_ack: HelloAck {
                version: 1,
                server_version_min: 1,
                server_version_max: 1,
                cipher: 0,
                server_nonce: Vec::new(),
                heartbeat_interval_ms: 0,
                payload_len_max: limits::PAYLOAD_LEN_DEFAULT,
                server: String::new(),
            },
            timeout: options.timeout,
            heartbeat: None,
            last_sent: Instant::now(),
            next_request_id: 1,
            rng: SystemRandom::new(),
            events: VecDeque::new(),
            seen: SeqTracker::default(),
            auto_ack: true,
            closed: false,
            going_away: None,
            user_id: None,
            username: None,
            device_id: None,
            session_token: None,
        };
        let mut client_nonce = [0u8; CONNECTION_NONCE_LEN];
        conn.fill_random(&mut client_nonce)?;
        let wanted_cipher = match options.psk {
            Some(_) => cipher::CIPHER_CHACHA20_POLY1305,
            None => cipher::CIPHER_NONE,
        };
        let reply = conn.request(Body::Hello(Hello {
            version_min: VERSION_MIN,
            version_max: VERSION_MAX,
            cipher: wanted_cipher,
            client_nonce: client_nonce.to_vec(),
            agent: options.agent.clone(),
        }))?;
        let Body::HelloAck(ack) = reply else {
            return Err(unexpected("hello_ack", &reply));
        };
        if !(VERSION_MIN..=VERSION_MAX).contains(&ack.version) {
            return Err(ClientError::UnexpectedResponse(format!(
                "server chose protocol version {}, this client speaks {VERSION_MIN}..={VERSION_MAX}",
                ack.version
            )));
        }
        if ack.cipher != wanted_cipher {
            return Err(ClientError::UnexpectedResponse(format!(
                "server chose cipher {}, the client asked for {wanted_cipher}",
                ack.cipher
            )));
        }
        conn.cipher = cipher::negotiate(
            ack.cipher,
            options.psk.as_ref(),
            &client_nonce,
            &ack.server_nonce,
            Role::Client,
        )?;
        conn.version = ack.version;
        conn.payload_len_max = ack.payload_len_limit();
        conn.decoder = ack.decoder();
        conn.heartbeat = ack.heartbeat();
        log::debug!(
            "connected to {:?} ({}), version {}, cipher {}",
            conn.stream.peer_addr().ok(),
            ack.server,
            ack.version,
            ack.cipher
        );
        conn.hello_ack = ack;
        Ok(conn)
    }

    // ------------------------------------------------------------ accessors

    /// The server's hello answer (its name, limits, heartbeat interval).
    pub fn hello_ack(&self) -> &HelloAck {
        &self.hello_ack
    }

    /// The logged-in user, once `login` or `resume` succeeded.
    pub fn user_id(&self) -> Option<UserId> {
        self.user_id
    }

    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    pub fn device_id(&self) -> Option<&str> {
        self.device_id.as_deref()
    }

    /// The token to `resume` with, once logged in.
    pub fn session_token(&self) -> Option<&[u8]> {
        self.session_token.as_deref()
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.stream.local_addr()
    }

    pub fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        self.stream.peer_addr()
    }

    /// The per-request deadline.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Whether [`next_event`](Self::next_event) acks each delivered message
    /// (default true).
    pub fn set_auto_ack(&mut self, auto_ack: bool) {
        self.auto_ack = auto_ack;
    }

    pub fn auto_ack(&self) -> bool {
        self.auto_ack
    }

    /// False once the connection failed or was closed; every call then fails.
    pub fn is_open(&self) -> bool {
        !self.closed
    }

    /// The server's `GoingAway`, if one arrived.
    pub fn going_away(&self) -> Option<&GoingAway> {
        self.going_away.as_ref()
    }

    /// Pushes queued and not yet returned by `next_event`.
    pub fn events_queued(&self) -> usize {
        self.events.len()
    }

    /// Closes the connection; later calls fail with `Closed`.
    pub fn close(&mut self) {
        if !self.closed {
            // Tell the server at once rather than when this value is dropped.
            // A broken socket fails to shut down; nothing to do about that.
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
            self.closed = true;
        }
    }

    // ------------------------------------------------------------ requests

    /// Sends `body` and waits for the frame with its request id. Pushes that
    /// arrive meanwhile are queued; an `Error` answer becomes
    /// [`ClientError::Server`].
    pub fn request(&mut self, body: Body) -> Result<Body> {
        let deadline = Instant::now() + self.timeout;
        let request_id = self.send_frame(&body)?;
        self.await_response(request_id, deadline)
    }

    /// Sends one frame without waiting (for fire-and-forget commands such as
    /// `DeliveryAck`) and returns its request id. A failure answer, if any,
    /// arrives later and is only logged.
    pub fn send_frame(&mut self, body: &Body) -> Result<u32> {
        self.check_open()?;
        let request_id = self.take_request_id();
        self.write_buf.clear();
        encode_frame(
            &mut self.write_buf,
            self.version,
            request_id,
            body,
            self.cipher.as_mut(),
            self.payload_len_max,
        )?;
        if let Err(e) = self.stream.write_all(&self.write_buf) {
            // Part of a frame may be out: the stream is no longer in step.
            self.close();
            return Err(match e.kind() {
                ErrorKind::WouldBlock | ErrorKind::TimedOut => ClientError::Timeout,
                _ => ClientError::Io(e),
            });
        }
        self.last_sent = Instant::now();
        Ok(request_id)
    }

    /// Creates an account. Does not log in.
    pub fn register(&mut self, username: &str, password: &str) -> Result<UserId> {
        match self.request(Body::Register(Register {
            username: username.to_string(),
            password: password.to_string(),
        }))? {
            Body::Registered(r) => Ok(r.user_id),
            other => Err(unexpected("registered", &other)),
        }
    }

    /// Logs in; the answer carries the session token for later `resume`s.
    pub fn login(&mut self, username: &str, password: &str, device_id: &str) -> Result<LoggedIn> {
        let reply = self.request(Body::Login(Login {
            username: username.to_string(),
            password: password.to_string(),
            device_id: device_id.to_string(),
        }))?;
        self.logged_in(reply)
    }

    /// Resumes a session with a token from an earlier login.
    pub fn resume(&mut self, session_token: &[u8], device_id: &str) -> Result<LoggedIn> {
        let reply = self.request(Body::Resume(Resume {
            session_token: session_token.to_vec(),
            device_id: device_id.to_string(),
        }))?;
        self.logged_in(reply)
    }

    fn logged_in(&mut self, reply: Body) -> Result<LoggedIn> {
        let Body::LoggedIn(info) = reply else {
            return Err(unexpected("logged_in", &reply));
        };
        self.user_id = Some(info.user_id);
        self.username = Some(info.username.clone());
        self.device_id = Some(info.device_id.clone());
        self.session_token = Some(info.session_token.clone());
        Ok(info)
    }

    /// Ends the session server-side; the token stops working.
    pub fn logout(&mut self) -> Result<()> {
        match self.request(Body::Logout(Logout {}))? {
            Body::Ok(_) => {
                self.session_token = None;
                Ok(())
            }
            other => Err(unexpected("ok", &other)),
        }
    }

    /// Round trip time of a ping.
    pub fn ping(&mut self) -> Result<Duration> {
        let nonce = self.random_u64()?;
        let start = Instant::now();
        match self.request(Body::Ping(Ping { nonce }))? {
            Body::Pong(pong) if pong.nonce == nonce => Ok(start.elapsed()),
            Body::Pong(pong) => Err(ClientError::UnexpectedResponse(format!(
                "pong nonce {} for ping nonce {nonce}",
                pong.nonce
            ))),
            other => Err(unexpected("pong", &other)),
        }
    }

    /// Sends a message under a fresh random client message id.
    pub fn send(
        &mut self,
        to: Target,
        content: Content,
        extras: BTreeMap<String, String>,
    ) -> Result<SendAck> {
        let client_message_id = self.random_u64()?;
        self.send_with_id(client_message_id, to, content, extras)
    }

    /// Sends a message under a chosen client message id. Resending with the
    /// same id after a failure is safe: the server stores it once and answers
    /// with the original ack.
    pub fn send_with_id(
        &mut self,
        client_message_id: u64,
        to: Target,
        content: Content,
        extras: BTreeMap<String, String>,
    ) -> Result<SendAck> {
        match self.request(Body::Send(Send {
            client_message_id,
            to,
            content,
            extras,
        }))? {
            Body::SendAck(ack) if ack.client_message_id == client_message_id => Ok(ack),
            Body::SendAck(ack) => Err(ClientError::UnexpectedResponse(format!(
                "send_ack for client message {}, sent {client_message_id}",
                ack.client_message_id
            ))),
            other => Err(unexpected("send_ack", &other)),
        }
    }

    pub fn send_text(&mut self, to: Target, text: &str) -> Result<SendAck> {
        self.send(
            to,
            Content::Text {
                text: text.to_string(),
            },
            BTreeMap::new(),
        )
    }

    /// Tells the server this device holds the conversation up to `seq`
    /// (fire-and-forget).
    pub fn delivery_ack(&mut self, conversation_id: ConversationId, seq: Seq) -> Result<()> {
        self.send_frame(&Body::DeliveryAck(DeliveryAck {
            conversation_id,
            seq,
        }))
        .map(|_| ())
    }

    /// Marks the conversation read up to `seq`; other members get a receipt
    /// (fire-and-forget).
    pub fn read_ack(&mut self, conversation_id: ConversationId, seq: Seq) -> Result<()> {
        self.send_frame(&Body::ReadAck(ReadAck {
            conversation_id,
            seq,
        }))
        .map(|_| ())
    }

    /// Moves this user's read cursor to `seq` without a receipt to the other
    /// members (e.g. read on another device, or "mark as read" in a list);
    /// returns once the server has stored it.
    pub fn mark_read(&mut self, conversation_id: ConversationId, seq: Seq) -> Result<()> {
        match self.request(Body::MarkRead(MarkRead {
            conversation_id,
            seq,
        }))? {
            Body::Ok(_) => Ok(()),
            other => Err(unexpected("ok", &other)),
        }
    }

    /// Fetches missed messages: everything after each cursor, and for
    /// conversations not listed everything after this user's delivered cursor.
    /// Returns the messages in the order the server sent them, without
    /// duplicates. With auto-ack on, acks the highest seq of each conversation.
    pub fn sync(&mut self, cursors: Vec<SyncCursor>) -> Result<Vec<Message>> {
        let mut deadline = Instant::now() + self.timeout;
        let request_id = self.send_frame(&Body::Sync(Sync {
            cursors,
            page_messages_max: 0,
        }))?;
        let mut messages = Vec::new();
        let mut returned = HashSet::new();
        loop {
            match self.await_response(request_id, deadline)? {
                Body::SyncPage(page) => {
                    for message in page.messages {
                        if returned.insert((message.conversation_id, message.seq)) {
                            messages.push(message);
                        }
                    }
                    // A long catch-up is many pages; the deadline is per page.
                    deadline = Instant::now() + self.timeout;
                }
                Body::SyncEnd(_) => break,
                other => return Err(unexpected("sync_page or sync_end", &other)),
            }
        }
        // Copies of these messages may already sit in the push queue.
        let mut highest = BTreeMap::new();
        for message in &messages {
            self.seen.observe(message.conversation_id, message.seq);
            let entry = highest.entry(message.conversation_id).or_insert(0);
            *entry = message.seq.max(*entry);
        }
        if self.auto_ack {
            for (conversation_id, seq) in highest {
                if let Err(e) = self.delivery_ack(conversation_id, seq) {
                    // The messages are still the caller's; the next sync
                    // returns them again.
                    log::warn!("delivery ack after sync failed: {e}");
                    break;
                }
            }
        }
        Ok(messages)
    }

    /// One page of a conversation's history, ascending by seq.
    pub fn history(
        &mut self,
        conversation_id: ConversationId,
        anchor: HistoryAnchor,
        limit: u32,
    ) -> Result<HistoryPage> {
        match self.request(Body::History(History {
            conversation_id,
            anchor,
            limit,
        }))? {
            Body::HistoryPage(page) => Ok(page),
            other => Err(unexpected("history_page", &other)),
        }
    }

    /// Looks users up by id or name; unknown keys are left out of the answer.
    pub fn lookup_users(&mut self, users: Vec<UserKey>) -> Result<Vec<UserInfo>> {
        match self.request(Body::UserLookup(UserLookup { users }))? {
            Body::UserList(list) => Ok(list.users),
            other => Err(unexpected("user_list", &other)),
        }
    }

    pub fn lookup_user_by_name(&mut self, username: &str) -> Result<Option<UserInfo>> {
        // One key asked, so the one answer (if any) is its match, even if the
        // server normalised the name's spelling.
        let users = self.lookup_users(vec![UserKey::Name(username.to_string())])?;
        Ok(users.into_iter().next())
    }

    pub fn lookup_user_by_id(&mut self, user_id: UserId) -> Result<Option<UserInfo>> {
        let users = self.lookup_users(vec![UserKey::Id(user_id)])?;
        Ok(users.into_iter().find(|u| u.user_id == user_id))
    }

    /// One page of this user's conversations.
    pub fn conversation_list(
        &mut self,
        after_conversation_id: ConversationId,
        limit: u32,
    ) -> Result<ConversationListPage> {
        match self.request(Body::ConversationList(ConversationList {
            after_conversation_id,
            limit,
        }))? {
            Body::ConversationListPage(page) => Ok(page),
            other => Err(unexpected("conversation_list_page", &other)),
        }
    }

    // ------------------------------------------------------------ events

    /// The next push: queued ones first, else waits up to `timeout` for one.
    /// `Ok(None)` when none came in time. Messages already returned (same or
    /// lower seq in their conversation) are skipped; with auto-ack on, each
    /// returned message is acked. Sends pings while idle as the server's
    /// heartbeat interval requires.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<Event>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(event) = self.pop_event() {
                return Ok(Some(event));
            }
            self.check_open()?;
            let heartbeat_due = self.heartbeat.map(|interval| self.last_sent + interval);
            let wait_until = match heartbeat_due {
                Some(due) => due.min(deadline),
                None => deadline,
            };
            match self.read_incoming(wait_until) {
                Ok(incoming) => self.dispatch_unsolicited(incoming)?,
                Err(ClientError::Timeout) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Ok(None);
                    }
                    if heartbeat_due.is_some_and(|due| now >= due) {
                        let nonce = self.random_u64()?;
                        // The pong comes back under an id nobody awaits and is dropped.
                        self.send_frame(&Body::Ping(Ping { nonce }))?;
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Pops queued events until one is worth returning.
    fn pop_event(&mut self) -> Option<Event> {
        while let Some(event) = self.events.pop_front() {
            if let Event::Message(message) = &event {
                if !self.seen.accept(message.conversation_id, message.seq) {
                    log::debug!(
                        "dropping duplicate message {}/{}",
                        message.conversation_id,
                        message.seq
                    );
                    continue;
                }
                if self.auto_ack {
                    let (conversation_id, seq) = (message.conversation_id, message.seq);
                    if let Err(e) = self.delivery_ack(conversation_id, seq) {
                        // The caller still gets the message; the server will
                        // offer it again, and the tracker will skip it then.
                        log::warn!("delivery ack failed: {e}");
                    }
                }
            }
            return Some(event);
        }
        None
    }

    // ------------------------------------------------------------ internals

    /// State a reconnecting wrapper carries from a dead connection to its
    /// replacement: unreturned events (first), the duplicate filter, auto-ack.
    pub(crate) fn inherit(&mut self, old: Connection) {
        let mut events = old.events;
        events.append(&mut self.events);
        self.events = events;
        self.seen = old.seen;
        self.auto_ack = old.auto_ack;
    }

    fn check_open(&self) -> Result<()> {
        if self.closed {
            return Err(self.closed_error());
        }
        Ok(())
    }

    fn closed_error(&self) -> ClientError {
        match &self.going_away {
            Some(g) => ClientError::GoingAway(g.reason),
            None => ClientError::Closed,
        }
    }

    fn take_request_id(&mut self) -> u32 {
        let id = self.next_request_id;
        // Zero is reserved for pushes.
        self.next_request_id = self.next_request_id.checked_add(1).unwrap_or(1);
        id
    }

    fn fill_random(&self, out: &mut [u8]) -> Result<()> {
        self.rng
            .fill(out)
            .map_err(|_| ClientError::Io(std::io::Error::other("the system random source failed")))
    }

    fn random_u64(&self) -> Result<u64> {
        let mut bytes = [0u8; 8];
        self.fill_random(&mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    /// Reads until the frame with `request_id` arrives, routing everything else.
    fn await_response(&mut self, request_id: u32, deadline: Instant) -> Result<Body> {
        loop {
            let incoming = self.read_incoming(deadline)?;
            if incoming.request_id != request_id {
                self.dispatch_unsolicited(incoming)?;
                continue;
            }
            return match incoming.body? {
                Body::Error(reply) => {
                    if reply.closing {
                        self.close();
                    }
                    Err(ClientError::from_reply(reply))
                }
                body => Ok(body),
            };
        }
    }

    /// Handles a frame nobody is waiting for: pushes are queued, late answers
    /// (to timed-out requests, fire-and-forget commands, heartbeat pings) are
    /// dropped. A fatal `Error` ends the connection.
    fn dispatch_unsolicited(&mut self, incoming: Incoming) -> Result<()> {
        let body = match incoming.body {
            Ok(body) => body,
            Err(e) => {
                // One bad frame; the stream is still in step, so carry on.
                log::warn!("dropping frame for request {}: {e}", incoming.request_id);
                return Ok(());
            }
        };
        if let Body::Error(reply) = body {
            if incoming.request_id == 0 || reply.closing {
                // An error about no request is about the connection: it ends.
                self.close();
                return Err(ClientError::from_reply(ErrorReply {
                    closing: true,
                    ..reply
                }));
            }
            log::warn!(
                "request {} failed: {}",
                incoming.request_id,
                ClientError::from_reply(reply)
            );
            return Ok(());
        }
        if incoming.request_id != 0 {
            log::debug!(
                "dropping late {} for request {}",
                body.command().name(),
                incoming.request_id
            );
            return Ok(());
        }
        match body {
            Body::Deliver(d) => self.events.push_back(Event::Message(d.message)),
            Body::SyncPage(page) => self
                .events
                .extend(page.messages.into_iter().map(Event::Message)),
            Body::SyncEnd(end) => self.events.push_back(Event::SyncEnd(end)),
            Body::Receipt(r) => self.events.push_back(Event::Receipt(r)),
            Body::TypingEvent(t) => self.events.push_back(Event::Typing(t)),
            Body::PresenceEvent(p) => self.events.push_back(Event::Presence(p)),
            Body::GoingAway(g) => {
                log::debug!("server going away: {g:?}");
                self.going_away = Some(g.clone());
                self.events.push_back(Event::GoingAway(g));
            }
            other => log::warn!("dropping unexpected push {}", other.command().name()),
        }
        Ok(())
    }

    /// The next whole frame, reading as needed until `deadline`.
    fn read_incoming(&mut self, deadline: Instant) -> Result<Incoming> {
        self.check_open()?;
        loop {
            match self.decoder.decode(&mut self.read_buf) {
                Ok(Some(frame)) => return self.open_frame(frame),
                Ok(None) => {}
                Err(e) => {
                    self.close();
                    return Err(e.into());
                }
            }
            self.fill_read_buf(deadline)?;
        }
    }

    fn open_frame(&mut self, mut frame: RawFrame) -> Result<Incoming> {
        let header = frame.header;
        let plaintext = match frame.open(self.cipher.as_mut()) {
            Ok(plaintext) => plaintext,
            Err(e) => {
                // Counters are out of step or the key is wrong: nothing later decodes.
                self.close();
                return Err(e.into());
            }
        };
        let body = match Command::from_u16(header.command) {
            None => Err(ClientError::UnexpectedResponse(format!(
                "unknown command {:#06x}",
                header.command
            ))),
            Some(command) if command.direction() != Direction::ServerToClient => {
                Err(ClientError::UnexpectedResponse(format!(
                    "server sent client command {}",
                    command.name()
                )))
            }
            Some(command) => Body::decode(command, plaintext).map_err(ClientError::from),
        };
        Ok(Incoming {
            request_id: header.request_id,
            body,
        })
    }

    /// One successful read into the buffer, or Timeout at `deadline`.
    fn fill_read_buf(&mut self, deadline: Instant) -> Result<()> {
        let mut chunk = [0u8; READ_CHUNK_BYTES];
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            // set_read_timeout refuses zero, which would mean "block forever".
            if remaining.is_zero() {
                return Err(ClientError::Timeout);
            }
            self.stream.set_read_timeout(Some(remaining))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.close();
                    return Err(self.closed_error());
                }
                Ok(n) => {
                    self.read_buf.extend_from_slice(&chunk[..n]);
                    return Ok(());
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    self.close();
                    return Err(match (&self.going_away, e.kind()) {
                        // A reset right after GoingAway is the server closing.
                        (Some(g), ErrorKind::ConnectionReset) => ClientError::GoingAway(g.reason),
                        _ => ClientError::Io(e),
                    });
                }
            }
        }
    }
}

fn unexpected(expected: &str, got: &Body) -> ClientError {
    ClientError::UnexpectedResponse(format!("expected {expected}, got {}", got.command().name()))
}

#[cfg(test)]
mod tests {
    //! Against a scripted fake server built from the same codec, playing the
    //! server's half of the protocol.

    use super::super::test_server::{logged_in, serve, serve_with, text_message, FakeConfig};
    use super::*;

    const PSK: [u8; 32] = [7; 32];

    fn options(psk: Option<[u8; 32]>) -> ClientOptions {
        ClientOptions {
            psk,
            timeout: Duration::from_secs(5),
            ..ClientOptions::default()
        }
    }

    #[test]
    fn encrypted_login_with_pushes_reassembled_byte_by_byte() {
        let (addr, seen) = serve(Some(PSK), true, |server, id, body| match body {
            Body::Login(_) => {
                // A push races the response; the client must queue it.
                server.send(
                    0,
                    Body::Deliver(Deliver {
                        message: text_message(5, 1, "hi"),
                    }),
                );
                server.send(id, logged_in(b"token"));
            }
            Body::Ping(p) => server.send(
                id,
                Body::Pong(Pong {
                    nonce: p.nonce,
                    server_time_ms: 0,
                }),
            ),
            _ => {}
        });
        let mut conn = Connection::connect(addr, &options(Some(PSK))).unwrap();
        let info = conn.login("alice", "password", "d").unwrap();
        assert_eq!(info.user_id, 1);
        assert_eq!(conn.session_token(), Some(&b"token"[..]));
        assert_eq!(conn.user_id(), Some(1));
        assert_eq!(conn.events_queued(), 1);
        conn.ping().unwrap();
        let event = conn.next_event(Duration::from_secs(1)).unwrap();
        assert_eq!(event, Some(Event::Message(text_message(5, 1, "hi"))));
        assert!(matches!(seen.recv().unwrap(), Body::Login(_)));
        assert!(matches!(seen.recv().unwrap(), Body::Ping(_)));
        assert_eq!(
            seen.recv().unwrap(),
            Body::DeliveryAck(DeliveryAck {
                conversation_id: 5,
                seq: 1
            })
        );
    }

    #[test]
    fn duplicates_are_skipped_and_acked_once() {
        let (addr, seen) = serve(None, false, |server, id, body| {
            if let Body::Resume(_) = body {
                server.send(id, logged_in(b"t"));
                server.send(
                    0,
                    Body::Deliver(Deliver {
                        message: text_message(5, 2, "b"),
                    }),
                );
                // A catch-up page overlapping the live delivery.
                server.send(
                    0,
                    Body::SyncPage(SyncPage {
                        messages: vec![
                            text_message(5, 1, "a"),
                            text_message(5, 2, "b"),
                            text_message(5, 3, "c"),
                        ],
                    }),
                );
                server.send(0, Body::SyncEnd(SyncEnd { cursors: vec![] }));
            }
        });
        let mut conn = Connection::connect(addr, &options(None)).unwrap();
        conn.resume(b"t", "d").unwrap();
        let mut texts = Vec::new();
        while let Some(event) = conn.next_event(Duration::from_millis(300)).unwrap() {
            match event {
                Event::Message(m) => texts.push(m.seq),
                Event::SyncEnd(_) => texts.push(0),
                other => panic!("{other:?}"),
            }
        }
        // Seq 1 arrived after seq 2 had been handed out: covered, skipped.
        assert_eq!(texts, [2, 3, 0]);
        assert!(matches!(seen.recv().unwrap(), Body::Resume(_)));
        let acks: Vec<Body> = seen.try_iter().collect();
        assert_eq!(
            acks,
            [
                Body::DeliveryAck(DeliveryAck {
                    conversation_id: 5,
                    seq: 2
                }),
                Body::DeliveryAck(DeliveryAck {
                    conversation_id: 5,
                    seq: 3
                }),
            ]
        );
    }

    #[test]
    fn sync_collects_pages_and_errors_carry_status() {
        let (addr, _seen) = serve(None, false, |server, id, body| match body {
            Body::Sync(_) => {
                server.send(
                    id,
                    Body::SyncPage(SyncPage {
                        messages: vec![text_message(1, 1, "a")],
                    }),
                );
                server.send(
                    0,
                    Body::Deliver(Deliver {
                        message: text_message(1, 2, "b"),
                    }),
                );
                server.send(
                    id,
                    Body::SyncPage(SyncPage {
                        messages: vec![text_message(1, 2, "b")],
                    }),
                );
                server.send(
                    id,
                    Body::SyncEnd(SyncEnd {
                        cursors: vec![SyncCursor {
                            conversation_id: 1,
                            seq: 2,
                        }],
                    }),
                );
            }
            Body::History(_) => server.send(
                id,
                Body::Error(ErrorReply {
                    code: StatusCode::Forbidden as u16,
                    closing: false,
                    message: "not yours".into(),
                }),
            ),
            Body::UserLookup(_) => server.send(
                id,
                Body::Error(ErrorReply {
                    code: 4242,
                    closing: false,
                    message: "?".into(),
                }),
            ),
            _ => {}
        });
        let mut conn = Connection::connect(addr, &options(None)).unwrap();
        let messages = conn.sync(Vec::new()).unwrap();
        assert_eq!(messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2]);
        let e = conn
            .history(1, HistoryAnchor::BeforeSeq(10), 5)
            .unwrap_err();
        assert_eq!(e.status(), Some(StatusCode::Forbidden));
        let e = conn.lookup_user_by_name("bob").unwrap_err();
        assert_eq!(e.status(), Some(StatusCode::Internal));
        assert!(conn.is_open());
        // The pushed copy of seq 2 was covered by the sync.
        assert_eq!(conn.next_event(Duration::from_millis(100)).unwrap(), None);
    }

    #[test]
    fn going_away_then_close_is_reported_as_such() {
        let (addr, _seen) = serve(None, false, |server, _id, body| {
            if let Body::Ping(_) = body {
                server.send(
                    0,
                    Body::GoingAway(GoingAway {
                        reason: GoingAwayReason::Shutdown,
                        reconnect_after_ms: 10,
                    }),
                );
                server.hang_up();
            }
        });
        let mut conn = Connection::connect(addr, &options(None)).unwrap();
        let e = conn.ping().unwrap_err();
        assert!(
            matches!(e, ClientError::GoingAway(GoingAwayReason::Shutdown)),
            "{e:?}"
        );
        assert!(e.is_transient());
        assert!(!conn.is_open());
        // The queued GoingAway event is still handed out, then the error.
        assert!(matches!(
            conn.next_event(Duration::from_millis(10)).unwrap(),
            Some(Event::GoingAway(_))
        ));
        assert!(conn.next_event(Duration::from_millis(10)).is_err());
    }

    #[test]
    fn fatal_error_push_ends_the_connection() {
        let (addr, _seen) = serve(None, false, |server, _id, body| {
            if let Body::Ping(_) = body {
                server.send(
                    0,
                    Body::Error(ErrorReply {
                        code: StatusCode::Timeout as u16,
                        closing: true,
                        message: "idle".into(),
                    }),
                );
            }
        });
        let mut conn = Connection::connect(addr, &options(None)).unwrap();
        let e = conn.ping().unwrap_err();
        assert_eq!(e.status(), Some(StatusCode::Timeout));
        assert!(!conn.is_open());
        assert!(matches!(conn.ping(), Err(ClientError::Closed)));
    }

    #[test]
    fn garbage_from_the_server_is_an_error_not_a_panic() {
        let (addr, _seen) = serve(None, false, |server, _id, _body| {
            let _ = server.stream.write_all(&[
                0xA7, 0x47, 1, 0, 0, 0x0A, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff,
            ]);
        });
        let mut conn = Connection::connect(addr, &options(None)).unwrap();
        assert!(matches!(
            conn.ping(),
            Err(ClientError::Frame(FrameError::TooLarge { .. }))
        ));
        assert!(!conn.is_open());
    }

    #[test]
    fn silence_times_out_and_the_connection_survives() {
        let mut pings = 0;
        let (addr, _seen) = serve(None, false, move |server, id, body| {
            if let Body::Ping(p) = body {
                pings += 1;
                // The first ping goes unanswered until the second arrives:
                // its late pong must be dropped, not taken for the second's.
                if pings == 2 {
                    server.send(
                        id - 1,
                        Body::Pong(Pong {
                            nonce: 0,
                            server_time_ms: 0,
                        }),
                    );
                    server.send(
                        id,
                        Body::Pong(Pong {
                            nonce: p.nonce,
                            server_time_ms: 0,
                        }),
                    );
                }
            }
        });
        let mut conn = Connection::connect(addr, &options(None)).unwrap();
        conn.set_timeout(Duration::from_millis(200));
        assert!(matches!(conn.ping(), Err(ClientError::Timeout)));
        assert!(conn.is_open());
        conn.set_timeout(Duration::from_secs(5));
        conn.ping().unwrap();
    }

    #[test]
    fn idle_connections_send_heartbeat_pings() {
        let config = FakeConfig {
            heartbeat_interval_ms: 50,
            ..FakeConfig::default()
        };
        let (addr, seen) = serve_with(config, |server, id, body| {
            if let Body::Ping(p) = body {
                server.send(
                    id,
                    Body::Pong(Pong {
                        nonce: p.nonce,
                        server_time_ms: 0,
                    }),
                );
            }
        });
        let mut conn = Connection::connect(addr, &options(None)).unwrap();
        assert_eq!(conn.next_event(Duration::from_millis(400)).unwrap(), None);
        let pings = seen
            .try_iter()
            .filter(|(_, b)| matches!(b, Body::Ping(_)))
            .count();
        assert!((3..=9).contains(&pings), "{pings} pings");
    }
}
