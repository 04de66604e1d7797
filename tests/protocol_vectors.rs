//! protocol.md's hex test vectors, checked byte for byte in both directions:
//! the encoder must produce exactly the documented bytes, and the decoder must
//! turn those bytes back into the same body.
//!
//! To print the vectors as protocol.md shows them (after a deliberate protocol
//! change): `GUST_PRINT_VECTORS=1 cargo test --test protocol_vectors -- --nocapture`.

use std::collections::BTreeMap;

use bytes::BytesMut;
use gust::protocol::cipher::{ChaChaCipher, NoCipher, PayloadCipher, Role};
use gust::protocol::*;

struct Vector {
    name: &'static str,
    request_id: u32,
    body: Body,
    /// Encrypted vectors use ChaCha20-Poly1305 with this connection key and
    /// counter 0, sealed by this role.
    chacha: Option<([u8; 32], Role)>,
}

fn vectors() -> Vec<Vector> {
    let mut extras = BTreeMap::new();
    extras.insert("lang".to_string(), "en".to_string());
    let message = Message {
        conversation_id: 7,
        seq: 42,
        message_id: 1001,
        sender_id: 1,
        client_message_id: 99,
        server_time_ms: 1_700_000_000_000,
        content: Content::Text {
            text: "hi".to_string(),
        },
        extras: BTreeMap::new(),
    };
    let mut key = [0u8; 32];
    for (i, b) in key.iter_mut().enumerate() {
        *b = i as u8;
    }
    vec![
        Vector {
            name: "hello",
            request_id: 1,
            body: Body::Hello(Hello {
                version_min: 1,
                version_max: 1,
                cipher: 0,
                client_nonce: vec![0x11; 16],
                agent: "gust/0.1".to_string(),
            }),
            chacha: None,
        },
        Vector {
            name: "hello_ack",
            request_id: 1,
            body: Body::HelloAck(HelloAck {
                version: 1,
                server_version_min: 1,
                server_version_max: 1,
                cipher: 0,
                server_nonce: vec![0x22; 16],
                heartbeat_interval_ms: 30_000,
                payload_len_max: 1_048_576,
                server: "gustd/0.1".to_string(),
            }),
            chacha: None,
        },
        Vector {
            name: "login",
            request_id: 2,
            body: Body::Login(Login {
                username: "alice".to_string(),
                password: "correct horse".to_string(),
                device_id: "phone".to_string(),
            }),
            chacha: None,
        },
        Vector {
            name: "logged_in",
            request_id: 2,
            body: Body::LoggedIn(LoggedIn {
                user_id: 1,
                username: "alice".to_string(),
                device_id: "phone".to_string(),
                session_token: vec![0xAB; 32],
                server_time_ms: 1_700_000_000_000,
            }),
            chacha: None,
        },
        Vector {
            name: "send",
            request_id: 3,
            body: Body::Send(Send {
                client_message_id: 99,
                to: Target::User(2),
                content: Content::Text {
                    text: "hi".to_string(),
                },
                extras,
            }),
            chacha: None,
        },
        Vector {
            name: "send_ack",
            request_id: 3,
            body: Body::SendAck(SendAck {
                client_message_id: 99,
                message_id: 1001,
                conversation_id: 7,
                seq: 42,
                server_time_ms: 1_700_000_000_000,
            }),
            chacha: None,
        },
        Vector {
            name: "deliver",
            request_id: 0,
            body: Body::Deliver(Deliver { message }),
            chacha: None,
        },
        Vector {
            name: "delivery_ack",
            request_id: 4,
            body: Body::DeliveryAck(DeliveryAck {
                conversation_id: 7,
                seq: 42,
            }),
            chacha: None,
        },
        Vector {
            name: "sync",
            request_id: 5,
            body: Body::Sync(Sync {
                cursors: vec![SyncCursor {
                    conversation_id: 7,
                    seq: 40,
                }],
                page_messages_max: 100,
            }),
            chacha: None,
        },
        Vector {
            name: "error",
            request_id: 6,
            body: Body::Error(ErrorReply {
                code: StatusCode::NotFound as u16,
                closing: false,
                message: "no such user".to_string(),
            }),
            chacha: None,
        },
        Vector {
            name: "ping_chacha20_poly1305",
            request_id: 7,
            body: Body::Ping(Ping { nonce: 5 }),
            chacha: Some((key, Role::Client)),
        },
    ]
}

fn sealer(vector: &Vector) -> Box<dyn PayloadCipher> {
    match vector.chacha {
        Some((key, role)) => Box::new(ChaChaCipher::from_key(&key, role)),
        None => Box::new(NoCipher),
    }
}

fn opener(vector: &Vector) -> Box<dyn PayloadCipher> {
    match vector.chacha {
        Some((key, Role::Client)) => Box::new(ChaChaCipher::from_key(&key, Role::Server)),
        Some((key, Role::Server)) => Box::new(ChaChaCipher::from_key(&key, Role::Client)),
        None => Box::new(NoCipher),
    }
}

fn encode(vector: &Vector) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame(
        &mut out,
        1,
        vector.request_id,
        &vector.body,
        sealer(vector).as_mut(),
        gust::limits::PAYLOAD_LEN_DEFAULT,
    )
    .expect("vector encodes");
    out.to_vec()
}

fn to_hex(bytes: &[u8]) -> String {
    let mut lines = Vec::new();
    for chunk in bytes.chunks(16) {
        let line: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        lines.push(line.join(" "));
    }
    lines.join("\n")
}

fn from_hex(text: &str) -> Vec<u8> {
    let digits: String = text.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    assert!(digits.len() % 2 == 0, "odd number of hex digits");
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// The hex block that follows `<!-- vector: NAME -->` in protocol.md.
fn documented(doc: &str, name: &str) -> Vec<u8> {
    let marker = format!("<!-- vector: {name} -->");
    let at = doc
        .find(&marker)
        .unwrap_or_else(|| panic!("protocol.md has no vector {name}"));
    let rest = &doc[at + marker.len()..];
    let open = rest.find("```hex").expect("hex block after the marker") + "```hex".len();
    let close = rest[open..].find("```").expect("closed hex block") + open;
    from_hex(&rest[open..close])
}

fn protocol_md() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/protocol.md"))
        .expect("read protocol.md")
}

#[test]
fn print_vectors_on_request() {
    if std::env::var_os("GUST_PRINT_VECTORS").is_none() {
        return;
    }
    for vector in vectors() {
        println!(
            "<!-- vector: {} -->\n```hex\n{}\n```\n",
            vector.name,
            to_hex(&encode(&vector))
        );
    }
}

#[test]
fn encoder_produces_documented_bytes() {
    let doc = protocol_md();
    let all = vectors();
    assert!(all.len() >= 8);
    for vector in &all {
        let expected = documented(&doc, vector.name);
        assert_eq!(
            to_hex(&encode(vector)),
            to_hex(&expected),
            "vector {} differs from protocol.md",
            vector.name
        );
    }
}

#[test]
fn decoder_reads_documented_bytes() {
    let doc = protocol_md();
    for vector in vectors() {
        let mut buf = BytesMut::from(&documented(&doc, vector.name)[..]);
        let mut decoder = FrameDecoder::new(gust::limits::PAYLOAD_LEN_DEFAULT);
        let mut frame = decoder
            .decode(&mut buf)
            .expect("frame")
            .expect("whole frame");
        assert!(buf.is_empty(), "vector {} has trailing bytes", vector.name);
        assert_eq!(frame.header.request_id, vector.request_id);
        let command = Command::from_u16(frame.header.command).expect("known command");
        let mut cipher = opener(&vector);
        let plaintext = frame.open(cipher.as_mut()).expect("opens").to_vec();
        let body = Body::decode(command, &plaintext).expect("body decodes");
        assert_eq!(body, vector.body, "vector {}", vector.name);
    }
}

#[test]
fn tampered_encrypted_vector_is_refused() {
    let doc = protocol_md();
    let vector = vectors()
        .into_iter()
        .find(|v| v.chacha.is_some())
        .expect("an encrypted vector");
    let mut bytes = documented(&doc, vector.name);
    // Flip one ciphertext bit and fix the CRC so only the AEAD can notice.
    let payload_at = gust::protocol::frame::HEADER_LEN;
    bytes[payload_at] ^= 0x01;
    let crc_at = bytes.len() - 4;
    let crc = crc32fast::hash(&bytes[..crc_at]);
    bytes[crc_at..].copy_from_slice(&crc.to_be_bytes());
    let mut buf = BytesMut::from(&bytes[..]);
    let mut frame = FrameDecoder::new(1 << 20)
        .decode(&mut buf)
        .expect("frame ok")
        .expect("whole");
    let mut cipher = opener(&vector);
    assert_eq!(
        frame.open(cipher.as_mut()).err(),
        Some(CipherError::Authentication)
    );
}

#[test]
fn every_command_is_documented() {
    let doc = protocol_md();
    for command in Command::ALL {
        let code = format!("0x{:04X}", *command as u16);
        assert!(
            doc.contains(&code),
            "protocol.md does not list {} ({code})",
            command.name()
        );
        assert!(
            doc.contains(&format!("`{}`", command.name())),
            "protocol.md does not name `{}`",
            command.name()
        );
    }
    for status in StatusCode::ALL {
        assert!(
            doc.contains(&format!("`{}`", status.name())),
            "protocol.md does not name status `{}`",
            status.name()
        );
    }
}
