//! Fuzzes the promise that the body decoder never refuses a valid body that
//! fits in a frame, by growing decoded bodies to sizes a 4 KiB fuzz input
//! cannot reach.
//!
//! Input layout:
//!
//! ```text
//! bytes 0..2  big-endian index into Command::ALL (modulo its length)
//! bytes 2..4  big-endian element count n for every list in the body
//! bytes 4..   the payload handed to Body::decode
//! ```
//!
//! When the payload decodes, every list the body holds (sync cursors, pages of
//! messages and conversations, member and user lists, extras maps, group event
//! subjects, custom data) is grown to n elements by repeating its own elements
//! (map keys get a numeric suffix). If the grown body encodes into a frame
//! within the default payload limit (1 MiB), decoding that frame must give
//! back an equal body: a `BodyError` here means the server would answer
//! `bad_body` to a request every other check allows.
#![no_main]

use std::collections::BTreeMap;

use bytes::BytesMut;
use gust::limits::PAYLOAD_LEN_DEFAULT;
use gust::protocol::body_codec::encode_to_vec;
use gust::protocol::cipher::NoCipher;
use gust::protocol::frame::{encode_frame, EncodeError, FrameDecoder};
use gust::protocol::{Body, Command, Content, Message};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;

/// Grown bodies stay near the frame limit: a list stops growing once its
/// encoding would pass it (so memory stays bounded whatever n is).
const BUDGET: usize = PAYLOAD_LEN_DEFAULT as usize + 1024;

fn grow<T: Clone + Serialize>(list: &mut Vec<T>, n: usize) {
    if list.is_empty() || list.len() >= n {
        return;
    }
    let each = list
        .iter()
        .map(|x| encode_to_vec(x).map(|v| v.len()).unwrap_or(1))
        .min()
        .unwrap_or(1)
        .max(1);
    let n = n.min(BUDGET / each + 1);
    let mut i = 0;
    while list.len() < n {
        list.push(list[i].clone());
        i += 1;
    }
}

fn grow_map(map: &mut BTreeMap<String, String>, n: usize) {
    let Some((key, value)) = map.iter().next().map(|(k, v)| (k.clone(), v.clone())) else {
        return;
    };
    let n = n.min(BUDGET / (key.len() + value.len() + 2) + 1);
    let mut i = 0usize;
    while map.len() < n {
        map.insert(format!("{key}{i}"), value.clone());
        i += 1;
    }
}

fn grow_content(content: &mut Content, n: usize) {
    match content {
        Content::GroupEvent { subjects, .. } => grow(subjects, n),
        Content::Custom { data, .. } => grow(data, n),
        _ => {}
    }
}

fn grow_message(message: &mut Message, n: usize) {
    grow_content(&mut message.content, n);
    grow_map(&mut message.extras, n);
}

fn grow_body(body: &mut Body, n: usize) {
    match body {
        Body::Send(b) => {
            grow_content(&mut b.content, n);
            grow_map(&mut b.extras, n);
        }
        Body::Deliver(b) => grow_message(&mut b.message, n),
        Body::Sync(b) => grow(&mut b.cursors, n),
        Body::SyncEnd(b) => grow(&mut b.cursors, n),
        Body::SyncPage(b) => grow(&mut b.messages, n),
        Body::HistoryPage(b) => grow(&mut b.messages, n),
        Body::ConversationListPage(b) => grow(&mut b.conversations, n),
        Body::GroupCreate(b) => grow(&mut b.members, n),
        Body::GroupMembersPage(b) => grow(&mut b.members, n),
        Body::UserLookup(b) => grow(&mut b.users, n),
        Body::UserList(b) => grow(&mut b.users, n),
        Body::PresenceSubscribe(b) => grow(&mut b.users, n),
        Body::Hello(b) => grow(&mut b.client_nonce, n),
        Body::HelloAck(b) => grow(&mut b.server_nonce, n),
        Body::Resume(b) => grow(&mut b.session_token, n),
        Body::LoggedIn(b) => grow(&mut b.session_token, n),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let command = Command::ALL[u16::from_be_bytes([data[0], data[1]]) as usize % Command::ALL.len()];
    let n = u16::from_be_bytes([data[2], data[3]]) as usize;
    let Ok(mut body) = Body::decode(command, &data[4..]) else {
        return;
    };
    grow_body(&mut body, n);

    let mut wire = BytesMut::new();
    match encode_frame(&mut wire, 1, 1, &body, &mut NoCipher, PAYLOAD_LEN_DEFAULT) {
        Ok(()) => {}
        Err(EncodeError::TooLarge { .. }) => return,
        Err(e) => panic!("grown body does not encode: {e:?}"),
    }
    let mut frame = FrameDecoder::new(PAYLOAD_LEN_DEFAULT)
        .decode(&mut wire)
        .expect("own frame decodes")
        .expect("own frame is whole");
    let payload_len = frame.header.payload_len;
    let plaintext = frame.open(&mut NoCipher).expect("NoCipher opens");
    let again = Body::decode(command, plaintext).unwrap_or_else(|e| {
        panic!("valid {} body of {payload_len} bytes (lists grown to {n}) refused: {e:?}", command.name())
    });
    if !format!("{body:?}").contains("NaN") {
        assert!(again == body, "round trip changed the grown body");
    }
});
