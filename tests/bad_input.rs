//! Every kind of bad input gets its typed error, on a real gustd: per-request
//! errors leave the connection usable, final ones close it after an error
//! frame, and deadlines close silent or stalled sockets.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use gust::protocol::cipher::NoCipher;
use gust::protocol::frame;
use gust::protocol::*;
use gust::store::records::{DeviceSession, SessionRecord};

/// A raw socket that speaks frames by hand.
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl Raw {
    fn connect(server: &TestServer) -> Raw {
        let stream = TcpStream::connect(server.addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        Raw {
            stream,
            buf: BytesMut::new(),
            decoder: FrameDecoder::new(gust::limits::PAYLOAD_LEN_CEILING),
        }
    }

    fn frame(request_id: u32, body: &Body) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_frame(&mut out, 1, request_id, body, &mut NoCipher, u32::MAX).expect("encode");
        out.to_vec()
    }

    fn send(&mut self, request_id: u32, body: &Body) {
        self.stream
            .write_all(&Self::frame(request_id, body))
            .expect("write");
    }

    fn hello(&mut self) {
        self.send(
            1,
            &Body::Hello(Hello {
                version_min: 1,
                version_max: 1,
                cipher: 0,
                client_nonce: vec![0; 16],
                agent: "raw-test".into(),
            }),
        );
        match self.next() {
            Some((1, Body::HelloAck(ack))) => assert_eq!(ack.version, 1),
            other => panic!("expected hello_ack, got {other:?}"),
        }
    }

    /// The next frame, or None once the server closed the connection.
    fn next(&mut self) -> Option<(u32, Body)> {
        loop {
            if let Some(mut frame) = self
                .decoder
                .decode(&mut self.buf)
                .expect("server frames are valid")
            {
                let command = Command::from_u16(frame.header.command).expect("known command");
                let payload = frame.open(&mut NoCipher).expect("plaintext").to_vec();
                return Some((
                    frame.header.request_id,
                    Body::decode(command, &payload).expect("body"),
                ));
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    fn expect_error(&mut self, request_id: u32, code: StatusCode, closing: bool) {
        match self.next() {
            Some((id, Body::Error(error))) => {
                assert_eq!(error.code, code as u16, "{}", error.message);
                assert_eq!(error.closing, closing, "{}", error.message);
                if !closing {
                    assert_eq!(id, request_id);
                }
            }
            other => panic!("expected error {code}, got {other:?}"),
        }
        if closing {
            assert!(
                self.next().is_none(),
                "the server closes after a final error"
            );
        }
    }

    fn ping_works(&mut self) {
        self.send(77, &Body::Ping(Ping { nonce: 5 }));
        self.expect_pong(77, 5);
    }

    fn expect_pong(&mut self, request_id: u32, nonce: u64) {
        match self.next() {
            Some((id, Body::Pong(pong))) if id == request_id => assert_eq!(pong.nonce, nonce),
            other => panic!("expected pong {nonce} to request {request_id}, got {other:?}"),
        }
    }
}

#[test]
fn the_first_frame_must_be_hello() {
    let server = TestServer::start();
    let mut raw = Raw::connect(&server);
    raw.send(1, &Body::Ping(Ping { nonce: 1 }));
    raw.expect_error(1, StatusCode::BadFrame, true);
    // An unknown command first is as final, and so is a server-to-client one.
    let mut raw = Raw::connect(&server);
    let mut out = BytesMut::new();
    frame::encode_raw_frame(&mut out, 1, 2, 0x7777, &[], &mut NoCipher, u32::MAX).expect("encode");
    raw.stream.write_all(&out).expect("write");
    raw.expect_error(2, StatusCode::BadFrame, true);
    let mut raw = Raw::connect(&server);
    raw.send(
        3,
        &Body::Pong(Pong {
            nonce: 1,
            server_time_ms: 0,
        }),
    );
    raw.expect_error(3, StatusCode::BadFrame, true);
    // Request id 0 is the server's, for pushes: final, first frame or later.
    let mut raw = Raw::connect(&server);
    raw.hello();
    raw.send(0, &Body::Ping(Ping { nonce: 1 }));
    raw.expect_error(0, StatusCode::BadFrame, true);
}

#[test]
fn commands_before_login_are_unauthenticated() {
    let server = TestServer::start();
    let mut raw = Raw::connect(&server);
    raw.hello();
    raw.send(
        2,
        &Body::Send(Send {
            client_message_id: 1,
            to: Target::User(1),
            content: Content::Text { text: "x".into() },
            extras: Default::default(),
        }),
    );
    raw.expect_error(2, StatusCode::Unauthenticated, false);
    raw.send(
        3,
        &Body::Sync(Sync {
            cursors: vec![],
            page_messages_max: 0,
        }),
    );
    raw.expect_error(3, StatusCode::Unauthenticated, false);
    raw.ping_works();
}

#[test]
fn unknown_commands_and_bad_bodies_are_per_request() {
    let server = TestServer::start();
    let mut raw = Raw::connect(&server);
    raw.hello();
    // Unknown command code 0x7777 with a valid frame around it.
    let mut frame = Raw::frame(5, &Body::Ping(Ping { nonce: 1 }));
    frame[4] = 0x77;
    frame[5] = 0x77;
    let crc_at = frame.len() - 4;
    let crc = crc32fast::hash(&frame[..crc_at]);
    frame[crc_at..].copy_from_slice(&crc.to_be_bytes());
    raw.stream.write_all(&frame).expect("write");
    raw.expect_error(5, StatusCode::UnknownCommand, false);
    // A server-to-client command from a client.
    raw.send(
        6,
        &Body::Pong(Pong {
            nonce: 1,
            server_time_ms: 0,
        }),
    );
    raw.expect_error(6, StatusCode::UnknownCommand, false);
    // A login whose body is garbage: a string length far past the payload.
    let mut frame = Raw::frame(
        7,
        &Body::Login(Login {
            username: "abc".into(),
            password: "abcdefgh".into(),
            device_id: "d".into(),
        }),
    );
    frame[14] = 0xFD; // varint tag: an 8-byte length follows
    let crc_at = frame.len() - 4;
    let crc = crc32fast::hash(&frame[..crc_at]);
    frame[crc_at..].copy_from_slice(&crc.to_be_bytes());
    raw.stream.write_all(&frame).expect("write");
    raw.expect_error(7, StatusCode::BadBody, false);
    // A second hello.
    raw.send(
        8,
        &Body::Hello(Hello {
            version_min: 1,
            version_max: 1,
            cipher: 0,
            client_nonce: vec![0; 16],
            agent: "again".into(),
        }),
    );
    raw.expect_error(8, StatusCode::BadBody, false);
    raw.ping_works();
}

#[test]
fn framing_errors_are_final() {
    let server = TestServer::start();
    // Bad magic (an HTTP request on the native port, for now).
    let mut raw = Raw::connect(&server);
    raw.stream
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .expect("write");
    raw.expect_error(0, StatusCode::BadFrame, true);

    // Bad checksum.
    let mut raw = Raw::connect(&server);
    raw.hello();
    let mut frame = Raw::frame(2, &Body::Ping(Ping { nonce: 1 }));
    let last = frame.len() - 1;
    frame[last] ^= 0xFF;
    raw.stream.write_all(&frame).expect("write");
    raw.expect_error(0, StatusCode::BadChecksum, true);

    // A version other than the negotiated one.
    let mut raw = Raw::connect(&server);
    raw.hello();
    let mut frame = Raw::frame(2, &Body::Ping(Ping { nonce: 1 }));
    frame[2] = 9;
    raw.stream.write_all(&frame).expect("write");
    raw.expect_error(0, StatusCode::UnsupportedVersion, true);

    // Hello asking only for versions the server does not speak.
    let mut raw = Raw::connect(&server);
    raw.send(
        1,
        &Body::Hello(Hello {
            version_min: 5,
            version_max: 9,
            cipher: 0,
            client_nonce: vec![0; 16],
            agent: "future".into(),
        }),
    );
    raw.expect_error(1, StatusCode::UnsupportedVersion, true);

    // A cipher the server has no key for.
    let mut raw = Raw::connect(&server);
    raw.send(
        1,
        &Body::Hello(Hello {
            version_min: 1,
            version_max: 1,
            cipher: 1,
            client_nonce: vec![0; 16],
            agent: "no key".into(),
        }),
    );
    raw.expect_error(1, StatusCode::BadCipher, true);
}

#[test]
fn an_oversized_frame_is_refused_before_allocation() {
    let server = TestServer::start_with(&["--payload-len-max", "65536"]);
    let mut raw = Raw::connect(&server);
    raw.hello();
    // Header only, claiming 3 GiB: refused from the header alone.
    let header = FrameHeader {
        version: 1,
        cipher_id: 0,
        command: Command::Send as u16,
        request_id: 9,
        payload_len: 3 << 30,
    };
    raw.stream.write_all(&header.to_bytes()).expect("write");
    raw.expect_error(0, StatusCode::TooLarge, true);
    // The server is fine afterwards.
    let (mut alice, _) = server.user("alice", "phone");
    alice.ping().expect("ping");
}

#[test]
fn an_overlong_text_is_too_large_per_request() {
    let server = TestServer::start();
    let (mut alice, _) = server.user("alice", "phone");
    let (_bob, bob_login) = server.user("bob", "phone");
    let text = "y".repeat(gust::limits::TEXT_BYTES_MAX + 1);
    let err = alice
        .send_text(Target::User(bob_login.user_id), &text)
        .expect_err("too long");
    assert_eq!(err.status(), Some(StatusCode::TooLarge));
    let err = alice
        .send_text(Target::User(bob_login.user_id), "")
        .expect_err("empty");
    assert_eq!(err.status(), Some(StatusCode::BadBody));
    alice
        .send_text(Target::User(bob_login.user_id), "fine")
        .expect("still usable");
}

#[test]
fn accounts_refuse_bad_names_duplicates_and_wrong_passwords() {
    let server = TestServer::start();
    let mut connection = server.connect();
    connection
        .register("alice", &password("alice"))
        .expect("register");
    let err = connection
        .register("alice", &password("alice"))
        .expect_err("duplicate");
    assert_eq!(err.status(), Some(StatusCode::Conflict));
    let err = connection
        .register("Bad Name", "long enough")
        .expect_err("bad name");
    assert_eq!(err.status(), Some(StatusCode::BadBody));
    let err = connection
        .register("shorty", "short")
        .expect_err("short password");
    assert_eq!(err.status(), Some(StatusCode::BadBody));
    // Login holds names and passwords to the register rules, before any
    // lookup or hash.
    for (username, password, code) in [
        ("Bad Name", "long enough", StatusCode::BadBody),
        ("al", "long enough", StatusCode::BadBody),
        (&*"a".repeat(33), "long enough", StatusCode::BadBody),
        ("alice", "short", StatusCode::BadBody),
        ("alice", &*"p".repeat(129), StatusCode::TooLarge),
    ] {
        let err = connection
            .login(username, password, "phone")
            .expect_err("breaks a register rule");
        assert_eq!(err.status(), Some(code), "{username:?} {password:?}");
    }
    let wrong = connection
        .login("alice", "wrong password", "phone")
        .expect_err("wrong password");
    let unknown = connection
        .login("nobody", "wrong password", "phone")
        .expect_err("unknown user");
    // Same code and same message: no hint whether the user exists.
    assert_eq!(wrong.status(), Some(StatusCode::Unauthorized));
    assert_eq!(wrong.to_string(), unknown.to_string());
    let err = connection
        .resume(&[0u8; 32], "phone")
        .expect_err("bogus token");
    assert_eq!(err.status(), Some(StatusCode::Unauthorized));
    // A token only resumes the device it was issued to.
    let mut phone = server.connect();
    let login = phone
        .login("alice", &password("alice"), "phone")
        .expect("login");
    let mut other = server.connect();
    let err = other
        .resume(&login.session_token, "tablet")
        .expect_err("other device");
    assert_eq!(err.status(), Some(StatusCode::Unauthorized));
    let resumed = other.resume(&login.session_token, "phone").expect("resume");
    assert_eq!(resumed.user_id, login.user_id);
    // Logout revokes the token.
    other.logout().expect("logout");
    let mut third = server.connect();
    let err = third
        .resume(&login.session_token, "phone")
        .expect_err("revoked");
    assert_eq!(err.status(), Some(StatusCode::Unauthorized));
}

#[test]
fn repeated_login_failures_are_throttled() {
    let server = TestServer::start_with(&["--login-failures-max", "3"]);
    let mut connection = server.connect();
    connection
        .register("carol", &password("carol"))
        .expect("register");
    for _ in 0..3 {
        let err = connection
            .login("carol", "not the password", "phone")
            .expect_err("wrong");
        assert_eq!(err.status(), Some(StatusCode::Unauthorized));
    }
    let err = connection
        .login("carol", &password("carol"), "phone")
        .expect_err("throttled");
    assert_eq!(err.status(), Some(StatusCode::RateLimited));
}

#[test]
fn a_silent_socket_is_closed_at_the_handshake_deadline() {
    let server = TestServer::start_with(&["--handshake-timeout-secs", "1"]);
    let mut raw = Raw::connect(&server);
    let started = Instant::now();
    raw.expect_error(0, StatusCode::Timeout, true);
    assert!(started.elapsed() >= Duration::from_millis(900));
    // Hello alone does not extend the deadline: login is part of it.
    let mut raw = Raw::connect(&server);
    raw.hello();
    raw.expect_error(0, StatusCode::Timeout, true);
}

#[test]
fn a_half_frame_is_closed_at_the_idle_deadline() {
    let server = TestServer::start_with(&["--idle-timeout-secs", "2"]);
    drop(server.user("dave", "phone"));
    let mut raw = Raw::logged_in(&server, "dave");
    let frame = Raw::frame(3, &Body::Ping(Ping { nonce: 1 }));
    raw.stream
        .write_all(&frame[..frame.len() / 2])
        .expect("write half");
    match raw.next() {
        Some((0, Body::GoingAway(going_away))) => {
            assert_eq!(going_away.reason, GoingAwayReason::Idle)
        }
        other => panic!("expected going_away, got {other:?}"),
    }
    assert!(raw.next().is_none(), "closed after going_away");
}

#[test]
fn a_reused_device_id_replaces_the_older_connection() {
    let server = TestServer::start();
    let (mut first, _) = server.user("erin", "phone");
    let (mut second, _) = server.device("erin", "phone");
    match first.next_event(WAIT) {
        Ok(Some(gust::client::Event::GoingAway(going_away))) => {
            assert_eq!(going_away.reason, GoingAwayReason::Replaced)
        }
        other => panic!("expected going_away(replaced), got {other:?}"),
    }
    second.ping().expect("the newer connection works");
}

#[test]
fn running_out_of_descriptors_pauses_accept_instead_of_spinning() {
    // Room for RocksDB, the polls and a few dozen sockets only.
    let server = TestServer::start_limited(&[], Some(96));
    let (mut alice, _) = server.user("alice", "phone");
    // Far more connections than descriptors: the kernel completes them into
    // the backlog, the server hits EMFILE when it tries to accept them.
    let crowd: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect(server.addr).ok())
        .collect();
    assert!(crowd.len() > 100, "the backlog took the connects");
    let deadline = Instant::now() + WAIT;
    while !server.log_contains("pausing accept") {
        assert!(
            Instant::now() < deadline,
            "the server never reported the descriptor limit"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // While at the limit, the loop sleeps: a spinning accept would burn a
    // whole core (2 s of CPU in 2 s).
    let before = server.cpu_time();
    std::thread::sleep(Duration::from_secs(2));
    let used = server.cpu_time() - before;
    assert!(
        used < Duration::from_millis(1000),
        "server used {used:?} of CPU in 2 s at the limit"
    );
    // Existing connections are still served...
    alice.ping().expect("an established connection still works");
    // ...and once descriptors free up, new ones are accepted again.
    drop(crowd);
    let deadline = Instant::now() + WAIT;
    loop {
        match gust::client::Connection::connect(server.addr, &options()) {
            Ok(mut connection) => {
                connection.ping().expect("ping");
                break;
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => panic!("the server did not recover: {e}"),
        }
    }
}

#[test]
fn a_panic_costs_one_connection_not_the_shard() {
    let server = TestServer::start_with_env(&["--shards", "1"], &[("GUSTD_TEST_PANIC", "1")]);
    let (mut alice, _) = server.user("alice", "phone");
    let bomb = gust::client::ClientOptions {
        agent: "gust-test-panic".into(),
        ..options()
    };
    let result = gust::client::Connection::connect(server.addr, &bomb);
    assert!(result.is_err(), "the panicking connection is closed");
    let deadline = Instant::now() + WAIT;
    while !server.log_contains("panic while serving connection") {
        assert!(Instant::now() < deadline, "the panic was not logged");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The same (only) shard keeps serving old and new connections.
    alice.ping().expect("an existing connection still works");
    let (mut bob, _) = server.user("bob", "phone");
    bob.ping().expect("a new connection works");
}

#[test]
fn connections_over_the_limit_get_server_busy() {
    let server = TestServer::start_with(&["--max-connections", "2", "--shards", "1"]);
    let (mut alice, _) = server.user("alice", "phone");
    let _second = Raw::connect(&server);
    std::thread::sleep(Duration::from_millis(200));
    let mut third = Raw::connect(&server);
    third.expect_error(0, StatusCode::ServerBusy, true);
    alice
        .ping()
        .expect("connections under the limit are served");
}

impl Raw {
    /// Hello and login of an existing account.
    fn logged_in(server: &TestServer, username: &str) -> Raw {
        let mut raw = Raw::connect(server);
        raw.hello();
        raw.send(
            2,
            &Body::Login(Login {
                username: username.into(),
                password: password(username),
                device_id: "raw".into(),
            }),
        );
        match raw.next() {
            Some((2, Body::LoggedIn(_))) => {}
            other => panic!("expected logged_in, got {other:?}"),
        }
        raw
    }
}

/// A client that sends and never reads its answers is not read either once
/// they pass its queue's bound: the server stops taking its requests
/// (its writes block) instead of queueing answers without end, and every
/// answer still arrives, in order, once it reads.
#[test]
fn a_client_that_never_reads_is_not_read_either() {
    let server = TestServer::start_with(&["--send-queue-bytes-max", "65536"]);
    drop(server.user("erin", "phone"));
    let mut raw = Raw::logged_in(&server, "erin");
    // Nonces of one varint length, so that every ping frame has one length.
    const NONCE_BASE: u64 = 100_000;
    let ping = |i: u64| {
        Raw::frame(
            0x1000,
            &Body::Ping(Ping {
                nonce: NONCE_BASE + i,
            }),
        )
    };
    let frame_len = ping(0).len();
    let chunk: Vec<u8> = (0..4096u64).flat_map(ping).collect();
    assert_eq!(chunk.len(), 4096 * frame_len);
    // With the bound, what goes in before the writes block is the two
    // sockets' buffers (at most this host's TCP maxima) and what the server
    // read before it stopped. Without it the server reads as fast as it
    // answers, and four times that goes in without blocking.
    let buffers = tcp_buffer_max("tcp_rmem") + tcp_buffer_max("tcp_wmem");
    let bounded = buffers + (8 << 20);
    let unbounded = 4 * bounded;
    raw.stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut written = 0usize;
    while written < unbounded {
        let at = written % chunk.len();
        match raw.stream.write(&chunk[at..]) {
            Ok(n) => written += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    assert!(
        written < bounded,
        "{written} bytes of pings taken from a client that reads nothing (bound {bounded})"
    );
    // Now read: every whole ping is answered, in order; the server reads on
    // as its answers leave.
    let pings = written / frame_len;
    for expected in 0..pings {
        raw.expect_pong(0x1000, NONCE_BASE + expected as u64 % 4096);
    }
    // The connection is still served: the rest of a ping cut short by the
    // blocked write completes it, and a last ping follows.
    let at = written % chunk.len();
    let rest = (frame_len - written % frame_len) % frame_len;
    raw.stream
        .write_all(&chunk[at..at + rest])
        .expect("write the rest");
    raw.send(0x2000, &Body::Ping(Ping { nonce: 77 }));
    if rest > 0 {
        raw.expect_pong(0x1000, NONCE_BASE + pings as u64 % 4096);
    }
    raw.expect_pong(0x2000, 77);
}

/// History, conversation-list and user-lookup requests pipelined past
/// `READS_IN_FLIGHT_MAX` are answered `server_busy`; answers, errors
/// included, free their places again.
#[test]
fn pipelined_reads_past_their_limit_are_server_busy() {
    let server = TestServer::start();
    drop(server.user("fay", "phone"));
    let mut raw = Raw::logged_in(&server, "fay");
    let limit = gust::limits::READS_IN_FLIGHT_MAX as usize;
    for round in 0..2 {
        let burst: Vec<u8> = (0..limit as u32 + 6)
            .flat_map(|i| {
                Raw::frame(
                    100 + i,
                    &Body::History(History {
                        conversation_id: 12345,
                        anchor: HistoryAnchor::AfterSeq(0),
                        limit: 0,
                    }),
                )
            })
            .collect();
        raw.stream.write_all(&burst).expect("write");
        let mut busy = 0;
        let mut not_found = 0;
        for _ in 0..limit + 6 {
            match raw.next() {
                Some((_, Body::Error(error))) if error.code == StatusCode::ServerBusy as u16 => {
                    busy += 1
                }
                Some((_, Body::Error(error))) if error.code == StatusCode::NotFound as u16 => {
                    not_found += 1
                }
                other => panic!("round {round}: {other:?}"),
            }
        }
        assert_eq!((not_found, busy), (limit, 6), "round {round}");
    }
}

/// What protocol.md says of requests at the wrong moment: anything but a
/// ping behind a login in progress is `server_busy`, logging in twice is
/// `conflict`, and a second sync while one runs is `server_busy`.
#[test]
fn requests_at_the_wrong_moment_get_their_codes() {
    let server = TestServer::start();
    drop(server.user("gil", "phone"));
    let login = |request_id: u32| {
        Raw::frame(
            request_id,
            &Body::Login(Login {
                username: "gil".into(),
                password: password("gil"),
                device_id: "raw".into(),
            }),
        )
    };
    let history = Raw::frame(
        3,
        &Body::History(History {
            conversation_id: 1,
            anchor: HistoryAnchor::AfterSeq(0),
            limit: 0,
        }),
    );
    let mut raw = Raw::connect(&server);
    raw.hello();
    raw.stream
        .write_all(&[login(2), history].concat())
        .expect("write");
    raw.expect_error(3, StatusCode::ServerBusy, false);
    match raw.next() {
        Some((2, Body::LoggedIn(_))) => {}
        other => panic!("expected logged_in, got {other:?}"),
    }
    raw.stream.write_all(&login(4)).expect("write");
    raw.expect_error(4, StatusCode::Conflict, false);
    let sync = |request_id: u32| {
        Raw::frame(
            request_id,
            &Body::Sync(Sync {
                cursors: Vec::new(),
                page_messages_max: 0,
            }),
        )
    };
    raw.stream
        .write_all(&[sync(5), sync(6)].concat())
        .expect("write");
    raw.expect_error(6, StatusCode::ServerBusy, false);
    match raw.next() {
        Some((5, Body::SyncEnd(_))) => {}
        other => panic!("expected sync_end, got {other:?}"),
    }
    raw.ping_works();
}

/// Sessions are per (user, device): a new login on a device revokes the
/// token of the one before (and the store drops its record), other devices
/// keep theirs, and logout leaves the device with none.
#[test]
fn a_new_login_on_a_device_revokes_its_previous_token() {
    let mut server = TestServer::start();
    let (_, first) = server.user("hal", "phone");
    let mut tokens = vec![first.session_token];
    for _ in 0..3 {
        let mut connection = server.connect();
        let login = connection
            .login("hal", &password("hal"), "phone")
            .expect("login");
        tokens.push(login.session_token);
    }
    let (_, tablet) = server.device("hal", "tablet");
    let newest = tokens.last().expect("tokens").clone();
    for old in &tokens[..tokens.len() - 1] {
        let err = server
            .connect()
            .resume(old, "phone")
            .expect_err("revoked by a later login");
        assert_eq!(err.status(), Some(StatusCode::Unauthorized));
    }
    let mut phone = server.connect();
    phone.resume(&newest, "phone").expect("the newest resumes");
    server
        .connect()
        .resume(&tablet.session_token, "tablet")
        .expect("another device keeps its session");
    phone.logout().expect("logout");
    let err = server
        .connect()
        .resume(&newest, "phone")
        .expect_err("logged out");
    assert_eq!(err.status(), Some(StatusCode::Unauthorized));
    let mut again = server.connect();
    let relogin = again
        .login("hal", &password("hal"), "phone")
        .expect("log in again after logout");

    // What the store keeps: the live sessions only.
    let user_id = first.user_id;
    server.terminate();
    let store = gust::store::Store::open(server.data_dir(), gust::store::Durability::Sync)
        .expect("open the stopped server's store");
    let hash = |token: &[u8]| -> [u8; 32] {
        let digest = ring::digest::digest(&ring::digest::SHA256, token);
        digest.as_ref().try_into().expect("32 bytes")
    };
    for old in &tokens {
        assert!(
            store.session(&hash(old)).expect("read").is_none(),
            "a replaced or logged-out session's record is gone"
        );
    }
    assert!(store
        .session(&hash(&relogin.session_token))
        .expect("read")
        .is_some());
    assert!(store
        .session(&hash(&tablet.session_token))
        .expect("read")
        .is_some());
    assert_eq!(
        store.device_session(user_id, "phone").expect("read"),
        Some(DeviceSession::Current(hash(&relogin.session_token)))
    );

    // Sessions from before devices recorded theirs (written here as a store
    // of that time held them): the first to resume becomes the device's,
    // the others go stale, and after a logout none resumes.
    let legacy = [[0x11u8; 32], [0x22u8; 32]];
    let mut batch = store.batch();
    for token in &legacy {
        let record = SessionRecord {
            user_id,
            device_id: "laptop".into(),
            created_ms: 1,
        };
        batch.put_session(&hash(token), &record).expect("put");
    }
    store.commit(batch).expect("commit");
    drop(store);
    server.restart();
    let mut laptop = server.connect();
    laptop
        .resume(&legacy[0], "laptop")
        .expect("an unrecorded device's session resumes");
    let stale = server
        .connect()
        .resume(&legacy[1], "laptop")
        .expect_err("another session of the device, now stale");
    assert_eq!(stale.status(), Some(StatusCode::Unauthorized));
    laptop.logout().expect("logout");
    for token in &legacy {
        let err = server
            .connect()
            .resume(token, "laptop")
            .expect_err("the device logged out");
        assert_eq!(err.status(), Some(StatusCode::Unauthorized));
    }
}

/// The largest buffer the kernel gives a TCP socket here
/// (`/proc/sys/net/ipv4/tcp_rmem` or `tcp_wmem`, third field).
fn tcp_buffer_max(name: &str) -> usize {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
        .ok()
        .and_then(|text| text.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(32 << 20)
}
