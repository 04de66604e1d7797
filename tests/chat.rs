//! 1:1 chat end to end against a real gustd: delivery both ways, offline
//! sync, roaming to other devices, dedupe of retries, history, slow consumers.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use gust::client::Event;
use gust::protocol::*;

#[test]
fn two_users_chat_both_ways() {
    let server = TestServer::start();
    let (mut alice, alice_login) = server.user("alice", "phone");
    let (mut bob, bob_login) = server.user("bob", "laptop");

    let ack = alice
        .send_text(Target::User(bob_login.user_id), "hi bob")
        .expect("send");
    assert_eq!(ack.seq, 1);
    let received = next_message(&mut bob);
    assert_eq!(text_of(&received), "hi bob");
    assert_eq!(received.sender_id, alice_login.user_id);
    assert_eq!(received.conversation_id, ack.conversation_id);
    assert_eq!(received.seq, 1);
    assert_eq!(received.message_id, ack.message_id);

    // Bob answers in the same conversation, by user and by conversation id.
    let reply = bob
        .send_text(Target::User(alice_login.user_id), "hello alice")
        .expect("reply");
    assert_eq!(reply.conversation_id, ack.conversation_id);
    assert_eq!(reply.seq, 2);
    let again = bob
        .send_text(Target::Conversation(ack.conversation_id), "again")
        .expect("send by conversation");
    assert_eq!(again.seq, 3);
    let first = next_message(&mut alice);
    let second = next_message(&mut alice);
    assert_eq!((text_of(&first), first.seq), ("hello alice", 2));
    assert_eq!((text_of(&second), second.seq), ("again", 3));
    assert!(second.message_id > first.message_id);
}

#[test]
fn offline_messages_arrive_by_sync_in_order() {
    let server = TestServer::start();
    let (mut alice, _) = server.user("alice", "phone");
    let (bob, bob_login) = server.user("bob", "phone");
    drop(bob);

    for i in 0..25 {
        alice
            .send_text(Target::User(bob_login.user_id), &format!("offline {i}"))
            .expect("send");
    }
    let (mut bob, _) = server.device("bob", "phone");
    let missed = bob.sync(Vec::new()).expect("sync");
    let texts: Vec<&str> = missed.iter().map(text_of).collect();
    let expected: Vec<String> = (0..25).map(|i| format!("offline {i}")).collect();
    assert_eq!(
        texts,
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
    let seqs: Vec<u64> = missed.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=25).collect::<Vec<_>>());

    // The sync acked them (delivered cursor): a new device of bob's starting
    // from the delivered cursor gets nothing more...
    std::thread::sleep(Duration::from_millis(200));
    let (mut tablet, _) = server.device("bob", "tablet");
    assert!(tablet.sync(Vec::new()).expect("sync").is_empty());
    // ...but can still ask for everything with an explicit cursor.
    let all = tablet
        .sync(vec![SyncCursor {
            conversation_id: missed[0].conversation_id,
            seq: 0,
        }])
        .expect("sync from 0");
    assert_eq!(all.len(), 25);
}

#[test]
fn sync_pages_a_long_backlog() {
    let server = TestServer::start();
    let (mut alice, _) = server.user("alice", "phone");
    let (bob, bob_login) = server.user("bob", "phone");
    drop(bob);
    // More than one page (200) and more than one reader job (16 pages) would
    // take long here; 450 messages is three pages.
    for i in 0..450 {
        alice
            .send_text(Target::User(bob_login.user_id), &format!("m{i}"))
            .expect("send");
    }
    let (mut bob, _) = server.device("bob", "phone");
    let missed = bob.sync(Vec::new()).expect("sync");
    assert_eq!(missed.len(), 450);
    assert!(missed.windows(2).all(|w| w[1].seq == w[0].seq + 1));
}

#[test]
fn roaming_copies_reach_every_other_device() {
    let server = TestServer::start();
    let (mut alice_phone, alice_login) = server.user("alice", "phone");
    let (mut alice_laptop, _) = server.device("alice", "laptop");
    let (mut bob_phone, bob_login) = server.user("bob", "phone");
    let (mut bob_tablet, _) = server.device("bob", "tablet");
    let (mut bob_desktop, _) = server.device("bob", "desktop");

    let ack = alice_phone
        .send_text(Target::User(bob_login.user_id), "to all of bob")
        .expect("send");
    for device in [
        &mut bob_phone,
        &mut bob_tablet,
        &mut bob_desktop,
        &mut alice_laptop,
    ] {
        let message = next_message(device);
        assert_eq!(message.seq, ack.seq);
        assert_eq!(message.sender_id, alice_login.user_id);
        assert_eq!(text_of(&message), "to all of bob");
    }
    // The sending device gets its ack (and receipts), not a copy.
    while let Some(event) = alice_phone
        .next_event(Duration::from_millis(300))
        .expect("events")
    {
        assert!(
            !matches!(event, Event::Message(_)),
            "the sender got a copy: {event:?}"
        );
    }
}

#[test]
fn a_retried_send_is_stored_once() {
    let server = TestServer::start();
    let (mut alice, _) = server.user("alice", "phone");
    let (mut bob, bob_login) = server.user("bob", "phone");
    let content = Content::Text {
        text: "once".into(),
    };
    let first = alice
        .send_with_id(
            777,
            Target::User(bob_login.user_id),
            content.clone(),
            BTreeMap::new(),
        )
        .expect("send");
    let retry = alice
        .send_with_id(
            777,
            Target::User(bob_login.user_id),
            content.clone(),
            BTreeMap::new(),
        )
        .expect("retry");
    assert_eq!(first, retry);
    // Also after reconnecting.
    drop(alice);
    let (mut alice, _) = server.device("alice", "phone");
    let later = alice
        .send_with_id(
            777,
            Target::User(bob_login.user_id),
            content,
            BTreeMap::new(),
        )
        .expect("retry after reconnect");
    assert_eq!(first, later);
    let page = bob
        .history(first.conversation_id, HistoryAnchor::AfterSeq(0), 50)
        .expect("history");
    assert_eq!(page.messages.len(), 1);
    assert_eq!(next_message(&mut bob).seq, 1);
    assert!(bob
        .next_event(Duration::from_millis(300))
        .expect("events")
        .is_none());
}

#[test]
fn history_pages_by_seq_and_time() {
    let server = TestServer::start();
    let (mut alice, _) = server.user("alice", "phone");
    let (_bob, bob_login) = server.user("bob", "phone");
    let mut acks = Vec::new();
    for i in 0..30 {
        acks.push(
            alice
                .send_text(Target::User(bob_login.user_id), &format!("h{i}"))
                .expect("send"),
        );
    }
    let conversation = acks[0].conversation_id;
    let newest = alice
        .history(conversation, HistoryAnchor::BeforeSeq(u64::MAX), 10)
        .expect("newest page");
    assert_eq!(
        newest.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (21..=30).collect::<Vec<_>>()
    );
    assert!(newest.more);
    let older = alice
        .history(conversation, HistoryAnchor::BeforeSeq(21), 10)
        .expect("older page");
    assert_eq!(older.messages.first().map(|m| m.seq), Some(11));
    let oldest = alice
        .history(conversation, HistoryAnchor::BeforeSeq(11), 10)
        .expect("oldest");
    assert_eq!(oldest.messages.len(), 10);
    assert!(!oldest.more);
    let forward = alice
        .history(conversation, HistoryAnchor::AfterSeq(25), 10)
        .expect("forward");
    assert_eq!(
        forward.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![26, 27, 28, 29, 30]
    );
    assert!(!forward.more);

    let t = acks[14].server_time_ms;
    let after_time = alice
        .history(conversation, HistoryAnchor::AfterTime(t), 200)
        .expect("after time");
    assert!(after_time.messages.iter().all(|m| m.server_time_ms >= t));
    assert!(after_time.messages.iter().any(|m| m.seq == 15));
    let before_time = alice
        .history(conversation, HistoryAnchor::BeforeTime(t), 200)
        .expect("before time");
    assert!(before_time.messages.iter().all(|m| m.server_time_ms < t));
    assert_eq!(after_time.messages.len() + before_time.messages.len(), 30);
}

#[test]
fn strangers_cannot_read_a_conversation() {
    let server = TestServer::start();
    let (mut alice, _) = server.user("alice", "phone");
    let (_bob, bob_login) = server.user("bob", "phone");
    let (mut eve, _) = server.user("eve", "phone");
    let ack = alice
        .send_text(Target::User(bob_login.user_id), "secret")
        .expect("send");
    let err = eve
        .history(ack.conversation_id, HistoryAnchor::AfterSeq(0), 10)
        .expect_err("eve is not a member");
    assert_eq!(err.status(), Some(StatusCode::Forbidden));
    let err = eve
        .send_text(Target::Conversation(ack.conversation_id), "let me in")
        .expect_err("eve cannot post");
    assert_eq!(err.status(), Some(StatusCode::Forbidden));
    let err = eve
        .history(999_999, HistoryAnchor::AfterSeq(0), 10)
        .expect_err("no such conversation");
    assert_eq!(err.status(), Some(StatusCode::NotFound));
    let err = alice
        .send_text(Target::User(424_242), "anyone?")
        .expect_err("no such user");
    assert_eq!(err.status(), Some(StatusCode::NotFound));
    // Eve still works after those refusals.
    eve.ping().expect("ping");
}

#[test]
fn messages_sent_during_a_sync_are_neither_lost_nor_duplicated() {
    let server = TestServer::start();
    let (mut alice, _) = server.user("alice", "phone");
    let (bob, bob_login) = server.user("bob", "phone");
    drop(bob);
    for i in 0..300 {
        alice
            .send_text(Target::User(bob_login.user_id), &format!("before {i}"))
            .expect("send");
    }
    let (mut bob, _) = server.device("bob", "phone");
    let sender = std::thread::spawn(move || {
        for i in 0..200 {
            alice
                .send_text(Target::User(bob_login.user_id), &format!("during {i}"))
                .expect("send");
        }
        alice
    });
    let mut seqs: Vec<u64> = bob
        .sync(Vec::new())
        .expect("sync")
        .iter()
        .map(|m| m.seq)
        .collect();
    let _alice = sender.join().expect("sender");
    while seqs.len() < 500 {
        seqs.push(next_message(&mut bob).seq);
    }
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        sorted,
        (1..=500).collect::<Vec<_>>(),
        "every seq exactly once"
    );
    assert!(bob
        .next_event(Duration::from_millis(300))
        .expect("events")
        .is_none());
}

#[test]
fn a_slow_reader_catches_up_without_loss() {
    // A small queue bound makes the reader fall behind quickly.
    let server = TestServer::start_with(&["--send-queue-bytes-max", "65536"]);
    let (mut alice, _) = server.user("alice", "phone");
    let (mut bob, bob_login) = server.user("bob", "phone");
    // Bob does not read while 3,000 messages of 4 KB arrive (12 MB: far
    // more than his queue plus the loopback socket buffers hold).
    let text = "x".repeat(4000);
    for _ in 0..3000 {
        alice
            .send_text(Target::User(bob_login.user_id), &text)
            .expect("send");
    }
    let mut seen = Vec::new();
    while seen.len() < 3000 {
        let message = next_message(&mut bob);
        seen.push(message.seq);
    }
    assert_eq!(
        seen,
        (1..=3000).collect::<Vec<_>>(),
        "in order, none lost, none twice"
    );
}

#[test]
fn receipts_reach_the_sender() {
    let server = TestServer::start();
    let (mut alice, _) = server.user("alice", "phone");
    let (mut bob, bob_login) = server.user("bob", "phone");
    let ack = alice
        .send_text(Target::User(bob_login.user_id), "read me")
        .expect("send");
    let message = next_message(&mut bob); // auto-acks delivery
    bob.read_ack(message.conversation_id, message.seq)
        .expect("read ack");
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        match alice.next_event(WAIT).expect("event") {
            Some(Event::Receipt(receipt)) => {
                assert_eq!(receipt.conversation_id, ack.conversation_id);
                assert_eq!(receipt.user_id, bob_login.user_id);
                assert_eq!(receipt.seq, ack.seq);
                kinds.push(receipt.kind);
            }
            Some(_) => {}
            None => panic!("no receipt"),
        }
    }
    assert_eq!(kinds, vec![ReceiptKind::Delivered, ReceiptKind::Read]);
}

#[test]
fn encrypted_connections_chat_with_plain_ones() {
    let psk_dir = tempfile::tempdir().expect("temp");
    let psk_path = psk_dir.path().join("psk");
    std::fs::write(
        &psk_path,
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
    )
    .expect("psk");
    let server = TestServer::start_with(&["--psk-file", psk_path.to_str().expect("utf-8 path")]);
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = [
            0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff,
        ][i % 16];
    }
    let secure = gust::client::ClientOptions {
        psk: Some(key),
        ..options()
    };
    let mut alice =
        gust::client::Connection::connect(server.addr, &secure).expect("encrypted hello");
    assert_eq!(alice.hello_ack().cipher, 1);
    alice
        .register("alice", &password("alice"))
        .expect("register");
    let alice_login = alice
        .login("alice", &password("alice"), "phone")
        .expect("login");
    let (mut bob, bob_login) = server.user("bob", "phone");
    alice
        .send_text(Target::User(bob_login.user_id), "sealed")
        .expect("send");
    assert_eq!(text_of(&next_message(&mut bob)), "sealed");
    bob.send_text(Target::User(alice_login.user_id), "plain")
        .expect("reply");
    assert_eq!(text_of(&next_message(&mut alice)), "plain");

    // A client with the wrong key fails at its first sealed frame.
    let wrong = gust::client::ClientOptions {
        psk: Some([7u8; 32]),
        ..options()
    };
    let mut mallory =
        gust::client::Connection::connect(server.addr, &wrong).expect("hello is plaintext");
    let err = mallory
        .register("mallory", &password("mallory"))
        .expect_err("tag fails");
    assert!(
        matches!(err.status(), Some(StatusCode::BadCipher))
            || matches!(
                err,
                gust::client::ClientError::Closed | gust::client::ClientError::Cipher(_)
            ),
        "unexpected {err:?}"
    );
}

#[test]
fn mark_read_is_answered_and_sends_no_receipt() {
    let server = TestServer::start();
    let (mut alice, _) = server.user("alice", "phone");
    let (mut bob, bob_login) = server.user("bob", "phone");
    let mut last = None;
    for i in 0..3 {
        last = Some(
            alice
                .send_text(Target::User(bob_login.user_id), &format!("m{i}"))
                .expect("send"),
        );
    }
    let last = last.expect("three sends");
    for _ in 0..3 {
        next_message(&mut bob); // auto-acks delivery: alice gets Delivered receipts
    }
    bob.mark_read(last.conversation_id, 2)
        .expect("mark_read is answered ok");
    let listed = |bob: &mut gust::client::Connection| {
        bob.conversation_list(0, 50)
            .expect("list")
            .conversations
            .into_iter()
            .find(|c| c.conversation_id == last.conversation_id)
            .map(|c| c.unread_count)
    };
    assert_eq!(listed(&mut bob), Some(1));
    // Again, at a seq the cursor already passed: still answered.
    bob.mark_read(last.conversation_id, 1).expect("answered");
    assert_eq!(listed(&mut bob), Some(1));
    // A seq past the newest message stops at it.
    bob.mark_read(last.conversation_id, 99).expect("answered");
    assert_eq!(listed(&mut bob), Some(0));
    // Not a member: forbidden; no such conversation: not_found.
    let (mut carol, _) = server.user("carol", "phone");
    let err = carol
        .mark_read(last.conversation_id, 1)
        .expect_err("not a member");
    assert_eq!(err.status(), Some(StatusCode::Forbidden));
    let err = bob
        .mark_read(u64::MAX, 1)
        .expect_err("no such conversation");
    assert_eq!(err.status(), Some(StatusCode::NotFound));
    // Alice saw Delivered receipts only, never a Read one.
    alice.ping().expect("ping");
    while let Some(event) = alice.next_event(Duration::from_millis(300)).expect("event") {
        if let Event::Receipt(receipt) = event {
            assert_eq!(receipt.kind, ReceiptKind::Delivered, "{receipt:?}");
        }
    }
}

#[test]
fn the_conversation_list_shows_unread_counts_and_flags() {
    let server = TestServer::start();
    let (mut alice, alice_login) = server.user("alice", "phone");
    let (mut bob, bob_login) = server.user("bob", "phone");
    let (mut carol, _) = server.user("carol", "phone");
    for i in 0..3 {
        alice
            .send_text(Target::User(bob_login.user_id), &format!("a{i}"))
            .expect("send");
    }
    let carol_ack = carol
        .send_text(Target::User(bob_login.user_id), "c")
        .expect("send");
    let page = bob.conversation_list(0, 50).expect("list");
    assert_eq!(page.conversations.len(), 2);
    assert!(!page.more);
    let with_alice = page
        .conversations
        .iter()
        .find(|c| {
            c.kind
                == ConversationKind::Direct {
                    peer_id: alice_login.user_id,
                }
        })
        .expect("the conversation with alice");
    assert_eq!(with_alice.unread_count, 3);
    assert_eq!(with_alice.last_seq, 3);
    assert_eq!(with_alice.last_message.as_ref().map(text_of), Some("a2"));

    // Reading moves the unread count; pin and mute are per user.
    bob.read_ack(with_alice.conversation_id, 2).expect("read");
    bob.request(Body::SetPinned(SetPinned {
        conversation_id: with_alice.conversation_id,
        pinned: true,
    }))
    .expect("pin");
    bob.request(Body::SetMuted(SetMuted {
        conversation_id: carol_ack.conversation_id,
        muted: true,
    }))
    .expect("mute");
    let page = bob.conversation_list(0, 50).expect("list");
    let with_alice = page
        .conversations
        .iter()
        .find(|c| c.conversation_id == with_alice.conversation_id)
        .expect("alice");
    let with_carol = page
        .conversations
        .iter()
        .find(|c| c.conversation_id == carol_ack.conversation_id)
        .expect("carol");
    assert_eq!(
        (with_alice.unread_count, with_alice.pinned, with_alice.muted),
        (1, true, false)
    );
    assert_eq!(
        (with_carol.unread_count, with_carol.pinned, with_carol.muted),
        (1, false, true)
    );
    // Alice's view is her own.
    let alice_view = alice.conversation_list(0, 50).expect("alice's list");
    assert_eq!(alice_view.conversations.len(), 1);
    assert!(!alice_view.conversations[0].pinned);

    // Hidden until the next message.
    bob.request(Body::HideConversation(HideConversation {
        conversation_id: carol_ack.conversation_id,
    }))
    .expect("hide");
    let page = bob.conversation_list(0, 50).expect("list");
    assert_eq!(page.conversations.len(), 1, "{page:?}");
    carol
        .send_text(Target::User(bob_login.user_id), "back")
        .expect("send");
    let page = bob.conversation_list(0, 50).expect("list");
    assert_eq!(page.conversations.len(), 2);

    // Paging by conversation id.
    let first = bob.conversation_list(0, 1).expect("first page");
    assert_eq!(first.conversations.len(), 1);
    assert!(first.more);
    let second = bob
        .conversation_list(first.conversations[0].conversation_id, 1)
        .expect("second page");
    assert_eq!(second.conversations.len(), 1);
    assert!(!second.more);
    // Strangers cannot flag someone else's conversation.
    let err = carol
        .request(Body::SetPinned(SetPinned {
            conversation_id: with_alice.conversation_id,
            pinned: true,
        }))
        .expect_err("not a member");
    assert_eq!(err.status(), Some(StatusCode::Forbidden));
}

#[test]
fn a_single_acceptor_hands_connections_to_every_shard() {
    let server = TestServer::start_with(&["--accept-mode", "single", "--shards", "3"]);
    let (mut alice, _) = server.user("alice", "phone");
    let (_bob, bob_login) = server.user("bob", "phone");
    // Six more devices land on all three shards in turn; each gets the push.
    let mut devices: Vec<_> = (0..6)
        .map(|i| server.device("bob", &format!("d{i}")).0)
        .collect();
    alice
        .send_text(Target::User(bob_login.user_id), "everywhere")
        .expect("send");
    for device in &mut devices {
        assert_eq!(text_of(&next_message(device)), "everywhere");
    }
}

/// With a small payload limit every frame a client receives still fits it
/// (the real client's decoder refuses anything longer, ending the
/// connection): sends are held to what a delivery can carry, and sync,
/// history and conversation-list pages close by bytes as well as by count.
#[test]
fn every_frame_fits_a_small_payload_limit() {
    const LIMIT: usize = 4096;
    let server = TestServer::start_with(&["--payload-len-max", "4096"]);
    let (mut alice, _) = server.user("alice", "phone");
    let (mut bob, bob_login) = server.user("bob", "phone");
    assert_eq!(bob.hello_ack().payload_len_max as usize, LIMIT);
    bob.close();
    // The largest text that fits leaves the framing of a delivery free.
    let room = LIMIT - gust::limits::MESSAGE_FRAMING_BYTES_MAX;
    let err = alice
        .send_text(Target::User(bob_login.user_id), &"x".repeat(room))
        .expect_err("a text whose send has no room for the delivery's framing");
    assert_eq!(err.status(), Some(StatusCode::TooLarge));
    assert!(alice.is_open(), "too_large for a send is per request");
    // Texts that fill a frame alone, and texts under half of one, which a
    // sync page takes more of until a large one would overflow it.
    let big = |i: usize| format!("{i:02}{}", "y".repeat(room - 40));
    let text = |i: usize| match i % 2 {
        0 => big(i),
        _ => format!("{i:02}{}", "m".repeat(LIMIT / 2 - 200)),
    };
    let mut conversation_id = 0;
    for i in 0..5 {
        conversation_id = alice
            .send_text(Target::User(bob_login.user_id), &text(i))
            .expect("a text that fits")
            .conversation_id;
    }
    let (mut bob, _) = server.device("bob", "phone");
    let synced = bob.sync(Vec::new()).expect("sync");
    let texts: Vec<&str> = synced.iter().map(text_of).collect();
    assert_eq!(texts, (0..5).map(text).collect::<Vec<_>>());
    // History asked for 200 at a time pages by bytes, `more` set while it does.
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let page = bob
            .history(conversation_id, HistoryAnchor::AfterSeq(after), 0)
            .expect("history page within the limit");
        assert!(!page.messages.is_empty());
        seen.extend(page.messages.iter().map(|m| text_of(m).to_string()));
        after = page.messages.last().map(|m| m.seq).unwrap_or(after);
        if !page.more {
            break;
        }
    }
    assert_eq!(seen, (0..5).map(text).collect::<Vec<_>>());
    let page = bob
        .history(conversation_id, HistoryAnchor::BeforeSeq(u64::MAX), 0)
        .expect("history backwards");
    assert_eq!(page.messages.len(), 1, "one message per page at this size");
    assert_eq!(page.messages.first().map(text_of), Some(big(4).as_str()));
    assert!(page.more);
    // Conversations whose newest messages are this large list one per page.
    let (mut carol, _) = server.user("carol", "phone");
    carol
        .send_text(Target::User(bob_login.user_id), &big(7))
        .expect("send");
    let mut listed = Vec::new();
    let mut after_conversation = 0;
    loop {
        let page = bob
            .conversation_list(after_conversation, 50)
            .expect("list page within the limit");
        assert!(!page.conversations.is_empty());
        listed.extend(page.conversations.iter().map(|c| c.conversation_id));
        after_conversation = *listed.last().expect("one");
        if !page.more {
            break;
        }
    }
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(bob.is_open());
}

/// `user_lookup` by id and by name, in request order, with presence; keys
/// that match no user are left out, and more than `QUERY_USERS_MAX` keys
/// are `too_large`.
#[test]
fn user_lookup_finds_users_by_id_and_name_with_presence() {
    let server = TestServer::start();
    let (mut alice, _) = server.user("alice", "phone");
    let (_bob, bob_login) = server.user("bob", "phone");
    let (carol, carol_login) = server.user("carol", "phone");
    let found = alice
        .lookup_users(vec![
            UserKey::Name("carol".into()),
            UserKey::Id(bob_login.user_id),
            UserKey::Name("nobody".into()),
            UserKey::Id(999_999),
        ])
        .expect("lookup");
    let summary: Vec<(UserId, &str, bool)> = found
        .iter()
        .map(|u| (u.user_id, u.username.as_str(), u.online))
        .collect();
    assert_eq!(
        summary,
        vec![
            (carol_login.user_id, "carol", true),
            (bob_login.user_id, "bob", true)
        ]
    );
    // Carol goes: offline (once the server has seen the close), with the
    // time she was last seen.
    drop(carol);
    let deadline = std::time::Instant::now() + WAIT;
    let carol_info = loop {
        let info = alice
            .lookup_user_by_id(carol_login.user_id)
            .expect("lookup")
            .expect("carol");
        if !info.online || std::time::Instant::now() > deadline {
            break info;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!carol_info.online, "{carol_info:?}");
    assert!(carol_info.last_seen_ms > 0, "{carol_info:?}");
    let err = alice
        .lookup_users(vec![UserKey::Id(1); gust::limits::QUERY_USERS_MAX + 1])
        .expect_err("too many keys");
    assert_eq!(err.status(), Some(StatusCode::TooLarge));
    assert!(alice.ping().is_ok(), "too_large is per request");
}
