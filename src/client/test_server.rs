//! A scripted fake gust server for the client's unit tests.
//!
//! Built from the same sans-I/O codec, it plays the server's half of the
//! hello and cipher, then hands each client frame to a test's script. It
//! checks nothing beyond the hello: the tests assert on what it recorded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;

use bytes::BytesMut;

use crate::protocol::cipher::{self, CONNECTION_NONCE_LEN};
use crate::protocol::*;

/// How the fake server behaves at the transport level.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FakeConfig {
    pub psk: Option<[u8; 32]>,
    /// Write frames one byte at a time, to exercise reassembly.
    pub dribble: bool,
    pub heartbeat_interval_ms: u32,
}

/// The server end of one test connection.
pub(crate) struct FakeServer {
    pub stream: TcpStream,
    /// 0 for the first accepted connection, 1 for the next, ...
    pub connection: usize,
    buf: BytesMut,
    decoder: FrameDecoder,
    cipher: Box<dyn PayloadCipher>,
    dribble: bool,
}

impl FakeServer {
    fn read(&mut self) -> Option<(u32, Body)> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(mut frame) = self.decoder.decode(&mut self.buf).unwrap() {
                let command = Command::from_u16(frame.header.command).unwrap();
                let request_id = frame.header.request_id;
                let plaintext = frame.open(self.cipher.as_mut()).unwrap();
                return Some((request_id, Body::decode(command, plaintext).unwrap()));
            }
            let n = self.stream.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub fn send(&mut self, request_id: u32, body: Body) {
        let mut out = BytesMut::new();
        encode_frame(
            &mut out,
            1,
            request_id,
            &body,
            self.cipher.as_mut(),
            1 << 20,
        )
        .unwrap();
        // The client may have gone; the test decides whether that matters.
        if self.dribble {
            for byte in out.iter() {
                if self.stream.write_all(&[*byte]).is_err() {
                    return;
                }
            }
        } else {
            let _ = self.stream.write_all(&out);
        }
    }

    /// Closes the connection abruptly.
    pub fn hang_up(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// Accepts connections one after another, answers each hello, then hands every
/// later frame to `script`. Each frame is also sent on the returned channel,
/// tagged with its connection number.
pub(crate) fn serve_with(
    config: FakeConfig,
    mut script: impl FnMut(&mut FakeServer, u32, Body) + std::marker::Send + 'static,
) -> (SocketAddr, mpsc::Receiver<(usize, Body)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for (connection, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { return };
            let mut server = FakeServer {
                stream,
                connection,
                buf: BytesMut::new(),
                decoder: FrameDecoder::new(1 << 20),
                cipher: Box::new(NoCipher),
                dribble: config.dribble,
            };
            let Some((id, Body::Hello(hello))) = server.read() else {
                continue;
            };
            assert_ne!(id, 0);
            assert_eq!(hello.client_nonce.len(), CONNECTION_NONCE_LEN);
            assert!(hello.agent.starts_with("gust/"));
            let server_nonce = vec![9u8; CONNECTION_NONCE_LEN];
            server.send(
                id,
                Body::HelloAck(HelloAck {
                    version: 1,
                    server_version_min: 1,
                    server_version_max: 1,
                    cipher: hello.cipher,
                    server_nonce: server_nonce.clone(),
                    heartbeat_interval_ms: config.heartbeat_interval_ms,
                    payload_len_max: 1 << 20,
                    server: "fake".into(),
                }),
            );
            server.cipher = cipher::negotiate(
                hello.cipher,
                config.psk.as_ref(),
                &hello.client_nonce,
                &server_nonce,
                Role::Server,
            )
            .unwrap();
            server.decoder.require_version(1);
            while let Some((id, body)) = server.read() {
                if tx.send((connection, body.clone())).is_err() {
                    return;
                }
                script(&mut server, id, body);
            }
        }
    });
    (addr, rx)
}

/// [`serve_with`] for one connection's frames, without connection numbers.
pub(crate) fn serve(
    psk: Option<[u8; 32]>,
    dribble: bool,
    script: impl FnMut(&mut FakeServer, u32, Body) + std::marker::Send + 'static,
) -> (SocketAddr, mpsc::Receiver<Body>) {
    let (addr, tagged) = serve_with(
        FakeConfig {
            psk,
            dribble,
            heartbeat_interval_ms: 0,
        },
        script,
    );
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for (_, body) in tagged {
            if tx.send(body).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

/// A text message from user 2.
pub(crate) fn text_message(conversation_id: ConversationId, seq: Seq, text: &str) -> Message {
    Message {
        conversation_id,
        seq,
        message_id: seq * 100,
        sender_id: 2,
        client_message_id: 0,
        server_time_ms: 0,
        content: Content::Text { text: text.into() },
        extras: std::collections::BTreeMap::new(),
    }
}

pub(crate) fn logged_in(token: &[u8]) -> Body {
    Body::LoggedIn(LoggedIn {
        user_id: 1,
        username: "alice".into(),
        device_id: "d".into(),
        session_token: token.to_vec(),
        server_time_ms: 0,
    })
}
