//! Acknowledged means durable: restarts and SIGKILL in the middle of a send
//! loop lose nothing that was acked, store nothing twice, leave no seq gap.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use gust::protocol::*;

#[test]
fn history_survives_a_graceful_restart() {
    let mut server = TestServer::start();
    let (mut alice, _) = server.user("alice", "phone");
    let (_bob, bob_login) = server.user("bob", "phone");
    let mut conversation = 0;
    for i in 0..20 {
        conversation = alice
            .send_text(Target::User(bob_login.user_id), &format!("kept {i}"))
            .expect("send")
            .conversation_id;
    }
    let status = server.terminate();
    assert!(status.success(), "SIGTERM exits 0, got {status:?}");
    assert!(server.log_contains("stopped"));
    server.restart();
    let (mut bob, _) = server.device("bob", "phone");
    let page = bob
        .history(conversation, HistoryAnchor::AfterSeq(0), 100)
        .expect("history after restart");
    let texts: Vec<&str> = page.messages.iter().map(text_of).collect();
    let expected: Vec<String> = (0..20).map(|i| format!("kept {i}")).collect();
    assert_eq!(
        texts,
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
    // Counters survived too: the next message continues the sequence.
    let ack = bob
        .send_text(Target::Conversation(conversation), "after restart")
        .expect("send");
    assert_eq!(ack.seq, 21);
}

#[test]
fn graceful_shutdown_says_going_away() {
    let mut server = TestServer::start();
    let (mut alice, _) = server.user("alice", "phone");
    let status = server.terminate();
    assert!(status.success());
    let event = alice.next_event(WAIT);
    match event {
        Ok(Some(gust::client::Event::GoingAway(going_away))) => {
            assert_eq!(going_away.reason, GoingAwayReason::Shutdown)
        }
        other => panic!("expected going_away, got {other:?}"),
    }
}

/// Sends from several threads until the server dies; returns the acks.
fn send_until_killed(server: &mut TestServer, durability: &str) {
    let _ = durability;
    let (_bob, bob_login) = server.user("bob", "phone");
    let acked = Arc::new(Mutex::new(Vec::<(u64, SendAck)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for t in 0..4u64 {
        let name = format!("sender{t}");
        let (mut connection, _) = server.user(&name, "phone");
        let acked = acked.clone();
        let stop = stop.clone();
        senders.push(std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let client_message_id = (t << 32) | i;
                let content = Content::Text {
                    text: format!("{t}/{i}"),
                };
                match connection.send_with_id(
                    client_message_id,
                    Target::User(bob_login.user_id),
                    content,
                    Default::default(),
                ) {
                    Ok(ack) => acked.lock().expect("acks").push((t, ack)),
                    Err(_) => return,
                }
                i += 1;
            }
        }));
    }
    // Let a thousand sends through, then kill mid-stream.
    let deadline = std::time::Instant::now() + WAIT;
    while acked.lock().expect("acks").len() < 1000 {
        assert!(std::time::Instant::now() < deadline, "sends too slow");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill9();
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.join().expect("sender thread");
    }
    let acked = acked.lock().expect("acks").clone();
    eprintln!("{} sends acked before SIGKILL", acked.len());
    server.restart();
    check_acked_are_stored(server, &acked);
}

/// After a restart: every message in `acked` (sender thread, ack) is stored
/// at the seq its ack named, seqs are gapless, nothing is stored twice, and
/// new message ids continue past the acked ones.
fn check_acked_are_stored(server: &TestServer, acked: &[(u64, SendAck)]) {
    let (mut bob, _) = server.device("bob", "phone");
    for t in 0..4u64 {
        let mine: Vec<&SendAck> = acked
            .iter()
            .filter(|(s, _)| *s == t)
            .map(|(_, a)| a)
            .collect();
        let Some(first) = mine.first() else { continue };
        let conversation = first.conversation_id;
        let mut stored = Vec::new();
        let mut after = 0;
        loop {
            let page = bob
                .history(conversation, HistoryAnchor::AfterSeq(after), 200)
                .expect("history");
            if let Some(last) = page.messages.last() {
                after = last.seq;
            }
            stored.extend(page.messages);
            if !page.more {
                break;
            }
        }
        // Gapless seqs from 1, each stored message once.
        let seqs: Vec<u64> = stored.iter().map(|m| m.seq).collect();
        assert_eq!(
            seqs,
            (1..=stored.len() as u64).collect::<Vec<_>>(),
            "gapless seqs"
        );
        let mut ids: Vec<u64> = stored.iter().map(|m| m.client_message_id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), stored.len(), "no client message stored twice");
        // Every acked message is there, at the seq its ack named.
        for ack in &mine {
            let message = stored
                .iter()
                .find(|m| m.seq == ack.seq)
                .unwrap_or_else(|| panic!("acked seq {} lost", ack.seq));
            assert_eq!(message.client_message_id, ack.client_message_id);
            assert_eq!(message.message_id, ack.message_id);
        }
        // Unacked-but-stored is allowed (the ack was in flight), at most a
        // batch per sender.
        assert!(stored.len() >= mine.len());
    }
    // Message ids stay unique after the restart.
    let (mut sender0, _) = server.device("sender0", "phone");
    let ack = sender0
        .send_text(Target::User(bob.user_id().expect("logged in")), "after")
        .expect("send");
    assert!(acked.iter().all(|(_, a)| a.message_id < ack.message_id));
}

#[test]
fn a_store_that_cannot_grow_refuses_sends_and_loses_nothing_acked() {
    // Every file gustd writes is limited to 2 MiB: the write-ahead log
    // reaches it first, and its appends fail from then on. (EFBIG is an
    // error RocksDB does not retry, so the store stays failed until it is
    // reopened; a full disk's ENOSPC it retries on its own. Either way the
    // commit in hand fails, which is what this test covers.)
    let mut server = TestServer::start_with_file_size_max(&["--durability", "sync"], 2 << 20);
    let (_bob, bob_login) = server.user("bob", "phone");
    let acked = Arc::new(Mutex::new(Vec::<(u64, SendAck)>::new()));
    let refused = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    for t in 0..4u64 {
        let name = format!("sender{t}");
        let (mut connection, _) = server.user(&name, "phone");
        let (acked, refused) = (acked.clone(), refused.clone());
        senders.push(std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + 3 * WAIT;
            // Keeps sending a while after the first refusal: the store
            // stays unwritable, and every later send must say so too.
            // Texts of 4 KiB fill the log in a few hundred sends.
            let mut refusals = 0;
            let mut i = 0u64;
            while refusals < 20 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the store never filled"
                );
                let content = Content::Text {
                    text: format!("{t}/{i}/{}", "x".repeat(4096)),
                };
                match connection.send_with_id(
                    (t << 32) | i,
                    Target::User(bob_login.user_id),
                    content,
                    Default::default(),
                ) {
                    Ok(ack) => {
                        assert_eq!(refusals, 0, "acked after a refusal");
                        acked.lock().expect("acks").push((t, ack));
                    }
                    Err(e) => {
                        assert_eq!(
                            e.status(),
                            Some(StatusCode::StorageUnavailable),
                            "a send the store could not take: {e}"
                        );
                        refusals += 1;
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += 1;
            }
        }));
    }
    for sender in senders {
        sender.join().expect("sender thread");
    }
    let acked = acked.lock().expect("acks").clone();
    eprintln!(
        "{} sends acked, {} refused",
        acked.len(),
        refused.load(Ordering::Relaxed)
    );
    assert!(
        acked.len() >= 50,
        "{} acked before the store filled",
        acked.len()
    );
    assert!(server.log_contains("commit failed"));
    // SIGTERM still ends it (`terminate` fails the test after `WAIT`), its
    // last flush refused by the failed store rather than waited for.
    server.terminate();
    assert!(server.log_contains("flushing the store failed"));
    // Room again: the restart replays the log up to its last whole record.
    server.file_size_max = None;
    server.restart();
    check_acked_are_stored(&server, &acked);
}

#[test]
fn sigkill_loses_no_acked_message_with_sync_durability() {
    let mut server = TestServer::start_with(&["--durability", "sync"]);
    send_until_killed(&mut server, "sync");
}

#[test]
fn sigkill_loses_no_acked_message_with_buffered_durability() {
    let mut server = TestServer::start_with(&["--durability", "buffered"]);
    send_until_killed(&mut server, "buffered");
}
