//! Frame and body codec throughput: encode and decode frames (plaintext and
//! chacha20-poly1305), and bodies per command family.
//!
//! `cargo bench --bench codec`

use std::collections::BTreeMap;

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use gust::protocol::cipher::{ChaChaCipher, NoCipher, Role};
use gust::protocol::*;

fn message(text_len: usize) -> Message {
    Message {
        conversation_id: 7,
        seq: 123_456,
        message_id: 9_876_543,
        sender_id: 42,
        client_message_id: 0xDEAD_BEEF,
        server_time_ms: 1_700_000_000_000,
        content: Content::Text {
            text: "x".repeat(text_len),
        },
        extras: BTreeMap::new(),
    }
}

fn frames(c: &mut Criterion) {
    let body = Body::Deliver(Deliver {
        message: message(100),
    });
    let mut one = BytesMut::new();
    encode_frame(&mut one, 1, 0, &body, &mut NoCipher, 1 << 20).expect("encode");
    let frame_len = one.len();
    let mut group = c.benchmark_group("frame");
    group.throughput(Throughput::Bytes(frame_len as u64));
    group.bench_function("encode deliver 100 B text", |b| {
        let mut out = BytesMut::with_capacity(1 << 20);
        b.iter(|| {
            if out.len() > (1 << 19) {
                out.clear();
            }
            encode_frame(&mut out, 1, 0, black_box(&body), &mut NoCipher, 1 << 20).expect("encode");
        })
    });
    group.bench_function("encode deliver 100 B text, chacha20-poly1305", |b| {
        let mut cipher = ChaChaCipher::from_key(&[7u8; 32], Role::Server);
        let mut out = BytesMut::with_capacity(1 << 20);
        b.iter(|| {
            if out.len() > (1 << 19) {
                out.clear();
            }
            encode_frame(&mut out, 1, 0, black_box(&body), &mut cipher, 1 << 20).expect("encode");
        })
    });
    // 1,000 frames back to back, split and decoded as the server does.
    let mut stream = BytesMut::new();
    for _ in 0..1000 {
        stream.extend_from_slice(&one);
    }
    group.throughput(Throughput::Elements(1000));
    group.bench_function("split and decode 1000 deliver frames", |b| {
        let decoder = FrameDecoder::new(1 << 20);
        b.iter(|| {
            let mut at = 0;
            let mut decoded = 0;
            while let Some((header, len)) = decoder.split(&stream[at..]).expect("valid") {
                let payload = &stream[at + frame::HEADER_LEN..at + len - frame::CRC_LEN];
                let command = Command::from_u16(header.command).expect("known");
                black_box(Body::decode(command, payload).expect("decodes"));
                at += len;
                decoded += 1;
            }
            assert_eq!(decoded, 1000);
        })
    });
    group.finish();
}

fn bodies(c: &mut Criterion) {
    let samples = vec![
        (
            "session: login",
            Body::Login(Login {
                username: "alice".into(),
                password: "correct horse battery".into(),
                device_id: "phone-7f3a".into(),
            }),
        ),
        (
            "messages: send 100 B text",
            Body::Send(Send {
                client_message_id: 99,
                to: Target::User(2),
                content: Content::Text {
                    text: "y".repeat(100),
                },
                extras: BTreeMap::new(),
            }),
        ),
        (
            "messages: send_ack",
            Body::SendAck(SendAck {
                client_message_id: 99,
                message_id: 1001,
                conversation_id: 7,
                seq: 42,
                server_time_ms: 1_700_000_000_000,
            }),
        ),
        (
            "sync: page of 200 messages",
            Body::SyncPage(SyncPage {
                messages: (0..200).map(|_| message(100)).collect(),
            }),
        ),
        (
            "users: lookup of 16",
            Body::UserLookup(UserLookup {
                users: (0..16).map(UserKey::Id).collect(),
            }),
        ),
    ];
    let mut group = c.benchmark_group("body");
    for (name, body) in &samples {
        let mut encoded = BytesMut::new();
        body.encode_into(&mut encoded).expect("encode");
        group.throughput(Throughput::Bytes(encoded.len() as u64));
        group.bench_function(format!("encode {name}"), |b| {
            b.iter_batched_ref(
                || BytesMut::with_capacity(encoded.len()),
                |out| body.encode_into(out).expect("encode"),
                BatchSize::SmallInput,
            )
        });
        let command = body.command();
        group.bench_function(format!("decode {name}"), |b| {
            b.iter(|| black_box(Body::decode(command, black_box(&encoded)).expect("decode")))
        });
    }
    group.finish();
}

criterion_group!(benches, frames, bodies);
criterion_main!(benches);
