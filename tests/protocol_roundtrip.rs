//! Property tests: every body of every command survives encode_frame ->
//! FrameDecoder -> open -> Body::decode unchanged, with and without a cipher
//! and however the bytes are split; and no input makes the decoders panic.
//!
//! The strategies are written by hand, one per body type, so that every enum
//! variant, `None` and `Some`, and empty and non-empty collections all occur.
//! `body_strategy` matches on `Command` without a wildcard: a new command does
//! not compile until it has a strategy.

use std::collections::{BTreeMap, BTreeSet};
use std::mem::discriminant;

use bytes::BytesMut;
use gust::limits::PAYLOAD_LEN_DEFAULT;
use gust::protocol::cipher::{
    ChaChaCipher, NoCipher, PayloadCipher, Role, CONNECTION_NONCE_LEN, PSK_LEN,
};
use gust::protocol::frame::FRAME_OVERHEAD;
use gust::protocol::*;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};

// ---------------------------------------------------------------- leaves

/// Integers biased towards bincode's varint boundaries (250/251, 2^16, 2^32).
fn int64() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        0u64..300,
        65_530u64..65_540,
        (1u64 << 32) - 3..(1u64 << 32) + 3,
        Just(u64::MAX),
    ]
}

fn int32() -> impl Strategy<Value = u32> {
    prop_oneof![any::<u32>(), 0u32..300, 65_530u32..65_540, Just(u32::MAX)]
}

/// Arbitrary unicode (any `char`, NUL, newlines and astral planes included),
/// empty about one time in ten.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(String::new()),
        9 => vec(any::<char>(), 1..24).prop_map(String::from_iter),
    ]
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![1 => Just(Vec::new()), 9 => vec(any::<u8>(), 1..48)]
}

/// Any f64 but NaN (NaN != NaN would fail the comparison, not the codec).
fn finite_or_infinite_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>().prop_filter("NaN != NaN", |x| !x.is_nan()),
        Just(0.0),
        Just(-0.0),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(f64::MIN_POSITIVE),
        -90.0..90.0f64,
    ]
}

fn extras() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop_oneof![
        1 => Just(BTreeMap::new()),
        3 => btree_map(text(), text(), 1..5),
    ]
}

fn user_ids() -> impl Strategy<Value = Vec<UserId>> {
    prop_oneof![1 => Just(Vec::new()), 3 => vec(int64(), 1..8)]
}

// ---------------------------------------------------------------- enums

fn going_away_reason() -> impl Strategy<Value = GoingAwayReason> {
    prop_oneof![
        Just(GoingAwayReason::Shutdown),
        Just(GoingAwayReason::Idle),
        Just(GoingAwayReason::Replaced),
        Just(GoingAwayReason::Revoked),
    ]
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        int64().prop_map(Target::User),
        int64().prop_map(Target::Conversation)
    ]
}

fn group_event_kind() -> impl Strategy<Value = GroupEventKind> {
    prop_oneof![
        Just(GroupEventKind::Created),
        Just(GroupEventKind::Joined),
        Just(GroupEventKind::Quit),
        Just(GroupEventKind::Kicked),
        Just(GroupEventKind::Dissolved),
        Just(GroupEventKind::OwnerChanged),
    ]
}

fn content() -> impl Strategy<Value = Content> {
    prop_oneof![
        text().prop_map(|text| Content::Text { text }),
        (text(), int32(), int32(), int64()).prop_map(|(url, width, height, size_bytes)| {
            Content::Image {
                url,
                width,
                height,
                size_bytes,
            }
        }),
        (text(), int32(), int64()).prop_map(|(url, duration_ms, size_bytes)| Content::Voice {
            url,
            duration_ms,
            size_bytes,
        }),
        (text(), int32(), int32(), int32(), int64(), text()).prop_map(
            |(url, duration_ms, width, height, size_bytes, thumbnail_url)| Content::Video {
                url,
                duration_ms,
                width,
                height,
                size_bytes,
                thumbnail_url,
            }
        ),
        (text(), text(), int64(), text()).prop_map(|(url, name, size_bytes, mime_type)| {
            Content::File {
                url,
                name,
                size_bytes,
                mime_type,
            }
        }),
        (finite_or_infinite_f64(), finite_or_infinite_f64(), text()).prop_map(
            |(latitude, longitude, label)| Content::Location {
                latitude,
                longitude,
                label,
            }
        ),
        (text(), bytes()).prop_map(|(kind, data)| Content::Custom { kind, data }),
        int64().prop_map(|seq| Content::Recalled { seq }),
        (group_event_kind(), int64(), user_ids()).prop_map(|(event, actor, subjects)| {
            Content::GroupEvent {
                event,
                actor,
                subjects,
            }
        }),
    ]
}

fn receipt_kind() -> impl Strategy<Value = ReceiptKind> {
    prop_oneof![Just(ReceiptKind::Delivered), Just(ReceiptKind::Read)]
}

fn history_anchor() -> impl Strategy<Value = HistoryAnchor> {
    prop_oneof![
        int64().prop_map(HistoryAnchor::BeforeSeq),
        int64().prop_map(HistoryAnchor::AfterSeq),
        int64().prop_map(HistoryAnchor::BeforeTime),
        int64().prop_map(HistoryAnchor::AfterTime),
    ]
}

fn conversation_kind() -> impl Strategy<Value = ConversationKind> {
    prop_oneof![
        int64().prop_map(|peer_id| ConversationKind::Direct { peer_id }),
        Just(ConversationKind::Group),
    ]
}

fn user_key() -> impl Strategy<Value = UserKey> {
    prop_oneof![
        int64().prop_map(UserKey::Id),
        text().prop_map(UserKey::Name)
    ]
}

// ---------------------------------------------------------------- shared structs

prop_compose! {
    fn message()(
        conversation_id in int64(),
        seq in int64(),
        message_id in int64(),
        sender_id in int64(),
        client_message_id in int64(),
        server_time_ms in int64(),
        content in content(),
        extras in extras(),
    ) -> Message {
        Message {
            conversation_id,
            seq,
            message_id,
            sender_id,
            client_message_id,
            server_time_ms,
            content,
            extras,
        }
    }
}

fn messages() -> impl Strategy<Value = Vec<Message>> {
    prop_oneof![1 => Just(Vec::new()), 3 => vec(message(), 1..4)]
}

prop_compose! {
    fn sync_cursor()(conversation_id in int64(), seq in int64()) -> SyncCursor {
        SyncCursor { conversation_id, seq }
    }
}

fn sync_cursors() -> impl Strategy<Value = Vec<SyncCursor>> {
    prop_oneof![1 => Just(Vec::new()), 3 => vec(sync_cursor(), 1..6)]
}

prop_compose! {
    fn conversation_summary()(
        conversation_id in int64(),
        kind in conversation_kind(),
        last_seq in int64(),
        read_seq in int64(),
        unread_count in int64(),
        pinned in any::<bool>(),
        muted in any::<bool>(),
        last_message in proptest::option::of(message()),
    ) -> ConversationSummary {
        ConversationSummary {
            conversation_id,
            kind,
            last_seq,
            read_seq,
            unread_count,
            pinned,
            muted,
            last_message,
        }
    }
}

prop_compose! {
    fn user_info()(
        user_id in int64(),
        username in text(),
        online in any::<bool>(),
        last_seen_ms in int64(),
    ) -> UserInfo {
        UserInfo { user_id, username, online, last_seen_ms }
    }
}

// ---------------------------------------------------------------- bodies: session

prop_compose! {
    fn hello()(
        version_min in any::<u8>(),
        version_max in any::<u8>(),
        cipher in any::<u8>(),
        client_nonce in bytes(),
        agent in text(),
    ) -> Hello {
        Hello { version_min, version_max, cipher, client_nonce, agent }
    }
}

prop_compose! {
    fn hello_ack()(
        version in any::<u8>(),
        server_version_min in any::<u8>(),
        server_version_max in any::<u8>(),
        cipher in any::<u8>(),
        server_nonce in bytes(),
        heartbeat_interval_ms in int32(),
        payload_len_max in int32(),
        server in text(),
    ) -> HelloAck {
        HelloAck {
            version,
            server_version_min,
            server_version_max,
            cipher,
            server_nonce,
            heartbeat_interval_ms,
            payload_len_max,
            server,
        }
    }
}

prop_compose! {
    fn register()(username in text(), password in text()) -> Register {
        Register { username, password }
    }
}

prop_compose! {
    fn login()(username in text(), password in text(), device_id in text()) -> Login {
        Login { username, password, device_id }
    }
}

prop_compose! {
    fn resume()(session_token in bytes(), device_id in text()) -> Resume {
        Resume { session_token, device_id }
    }
}

prop_compose! {
    fn logged_in()(
        user_id in int64(),
        username in text(),
        device_id in text(),
        session_token in bytes(),
        server_time_ms in int64(),
    ) -> LoggedIn {
        LoggedIn { user_id, username, device_id, session_token, server_time_ms }
    }
}

prop_compose! {
    fn going_away()(reason in going_away_reason(), reconnect_after_ms in int32()) -> GoingAway {
        GoingAway { reason, reconnect_after_ms }
    }
}

prop_compose! {
    fn error_reply()(
        code in prop_oneof![any::<u16>(), select(StatusCode::ALL.to_vec()).prop_map(|c| c as u16)],
        closing in any::<bool>(),
        message in text(),
    ) -> ErrorReply {
        ErrorReply { code, closing, message }
    }
}

// ---------------------------------------------------------------- bodies: messages

prop_compose! {
    fn send()(
        client_message_id in int64(),
        to in target(),
        content in content(),
        extras in extras(),
    ) -> Send {
        Send { client_message_id, to, content, extras }
    }
}

prop_compose! {
    fn send_ack()(
        client_message_id in int64(),
        message_id in int64(),
        conversation_id in int64(),
        seq in int64(),
        server_time_ms in int64(),
    ) -> SendAck {
        SendAck { client_message_id, message_id, conversation_id, seq, server_time_ms }
    }
}

prop_compose! {
    fn receipt()(
        conversation_id in int64(),
        user_id in int64(),
        kind in receipt_kind(),
        seq in int64(),
    ) -> Receipt {
        Receipt { conversation_id, user_id, kind, seq }
    }
}

prop_compose! {
    fn recall()(client_message_id in int64(), conversation_id in int64(), seq in int64()) -> Recall {
        Recall { client_message_id, conversation_id, seq }
    }
}

prop_compose! {
    fn typing_event()(
        conversation_id in int64(),
        user_id in int64(),
        typing in any::<bool>(),
    ) -> TypingEvent {
        TypingEvent { conversation_id, user_id, typing }
    }
}

// ---------------------------------------------------------------- bodies: sync, history, lists

prop_compose! {
    fn history()(conversation_id in int64(), anchor in history_anchor(), limit in int32()) -> History {
        History { conversation_id, anchor, limit }
    }
}

prop_compose! {
    fn conversation_list_page()(
        conversations in prop_oneof![
            1 => Just(Vec::new()),
            3 => vec(conversation_summary(), 1..4),
        ],
        more in any::<bool>(),
    ) -> ConversationListPage {
        ConversationListPage { conversations, more }
    }
}

prop_compose! {
    fn group_info()(
        group_id in int64(),
        name in text(),
        owner_id in int64(),
        member_count in int32(),
        created_ms in int64(),
        dissolved in any::<bool>(),
    ) -> GroupInfo {
        GroupInfo { group_id, name, owner_id, member_count, created_ms, dissolved }
    }
}

prop_compose! {
    fn group_members()(group_id in int64(), after_user_id in int64(), limit in int32()) -> GroupMembers {
        GroupMembers { group_id, after_user_id, limit }
    }
}

prop_compose! {
    fn group_member()(group_id in int64(), user_id in int64()) -> GroupMember {
        GroupMember { group_id, user_id }
    }
}

fn group_ref() -> impl Strategy<Value = GroupRef> {
    int64().prop_map(|group_id| GroupRef { group_id })
}

// ---------------------------------------------------------------- any body

/// A strategy for the body of `command`. No wildcard arm: a command added to
/// the table does not compile until it has a strategy here.
fn body_strategy(command: Command) -> BoxedStrategy<Body> {
    match command {
        Command::Hello => hello().prop_map(Body::Hello).boxed(),
        Command::HelloAck => hello_ack().prop_map(Body::HelloAck).boxed(),
        Command::Register => register().prop_map(Body::Register).boxed(),
        Command::Registered => int64()
            .prop_map(|user_id| Body::Registered(Registered { user_id }))
            .boxed(),
        Command::Login => login().prop_map(Body::Login).boxed(),
        Command::Resume => resume().prop_map(Body::Resume).boxed(),
        Command::LoggedIn => logged_in().prop_map(Body::LoggedIn).boxed(),
        Command::Logout => Just(Body::Logout(Logout {})).boxed(),
        Command::Ping => int64().prop_map(|nonce| Body::Ping(Ping { nonce })).boxed(),
        Command::Pong => (int64(), int64())
            .prop_map(|(nonce, server_time_ms)| {
                Body::Pong(Pong {
                    nonce,
                    server_time_ms,
                })
            })
            .boxed(),
        Command::GoingAway => going_away().prop_map(Body::GoingAway).boxed(),
        Command::Error => error_reply().prop_map(Body::Error).boxed(),
        Command::Ok => Just(Body::Ok(OkReply {})).boxed(),
        Command::Send => send().prop_map(Body::Send).boxed(),
        Command::SendAck => send_ack().prop_map(Body::SendAck).boxed(),
        Command::Deliver => message()
            .prop_map(|message| Body::Deliver(Deliver { message }))
            .boxed(),
        Command::DeliveryAck => (int64(), int64())
            .prop_map(|(conversation_id, seq)| {
                Body::DeliveryAck(DeliveryAck {
                    conversation_id,
                    seq,
                })
            })
            .boxed(),
        Command::ReadAck => (int64(), int64())
            .prop_map(|(conversation_id, seq)| {
                Body::ReadAck(ReadAck {
                    conversation_id,
                    seq,
                })
            })
            .boxed(),
        Command::Receipt => receipt().prop_map(Body::Receipt).boxed(),
        Command::Recall => recall().prop_map(Body::Recall).boxed(),
        Command::Typing => (int64(), any::<bool>())
            .prop_map(|(conversation_id, typing)| {
                Body::Typing(Typing {
                    conversation_id,
                    typing,
                })
            })
            .boxed(),
        Command::TypingEvent => typing_event().prop_map(Body::TypingEvent).boxed(),
        Command::Sync => (sync_cursors(), int32())
            .prop_map(|(cursors, page_messages_max)| {
                Body::Sync(Sync {
                    cursors,
                    page_messages_max,
                })
            })
            .boxed(),
        Command::SyncPage => messages()
            .prop_map(|messages| Body::SyncPage(SyncPage { messages }))
            .boxed(),
        Command::SyncEnd => sync_cursors()
            .prop_map(|cursors| Body::SyncEnd(SyncEnd { cursors }))
            .boxed(),
        Command::History => history().prop_map(Body::History).boxed(),
        Command::HistoryPage => (messages(), any::<bool>())
            .prop_map(|(messages, more)| Body::HistoryPage(HistoryPage { messages, more }))
            .boxed(),
        Command::ConversationList => (int64(), int32())
            .prop_map(|(after_conversation_id, limit)| {
                Body::ConversationList(ConversationList {
                    after_conversation_id,
                    limit,
                })
            })
            .boxed(),
        Command::ConversationListPage => conversation_list_page()
            .prop_map(Body::ConversationListPage)
            .boxed(),
        Command::MarkRead => (int64(), int64())
            .prop_map(|(conversation_id, seq)| {
                Body::MarkRead(MarkRead {
                    conversation_id,
                    seq,
                })
            })
            .boxed(),
        Command::SetPinned => (int64(), any::<bool>())
            .prop_map(|(conversation_id, pinned)| {
                Body::SetPinned(SetPinned {
                    conversation_id,
                    pinned,
                })
            })
            .boxed(),
        Command::SetMuted => (int64(), any::<bool>())
            .prop_map(|(conversation_id, muted)| {
                Body::SetMuted(SetMuted {
                    conversation_id,
                    muted,
                })
            })
            .boxed(),
        Command::HideConversation => int64()
            .prop_map(|conversation_id| {
                Body::HideConversation(HideConversation { conversation_id })
            })
            .boxed(),
        Command::GroupCreate => (text(), user_ids())
            .prop_map(|(name, members)| Body::GroupCreate(GroupCreate { name, members }))
            .boxed(),
        Command::GroupJoin => group_ref().prop_map(Body::GroupJoin).boxed(),
        Command::GroupQuit => group_ref().prop_map(Body::GroupQuit).boxed(),
        Command::GroupKick => group_member().prop_map(Body::GroupKick).boxed(),
        Command::GroupDissolve => group_ref().prop_map(Body::GroupDissolve).boxed(),
        Command::GroupTransfer => group_member().prop_map(Body::GroupTransfer).boxed(),
        Command::GroupInfoQuery => group_ref().prop_map(Body::GroupInfoQuery).boxed(),
        Command::GroupInfo => group_info().prop_map(Body::GroupInfo).boxed(),
        Command::GroupMembers => group_members().prop_map(Body::GroupMembers).boxed(),
        Command::GroupMembersPage => (user_ids(), any::<bool>())
            .prop_map(|(members, more)| Body::GroupMembersPage(GroupMembersPage { members, more }))
            .boxed(),
        Command::UserLookup => prop_oneof![1 => Just(Vec::new()), 3 => vec(user_key(), 1..6)]
            .prop_map(|users| Body::UserLookup(UserLookup { users }))
            .boxed(),
        Command::UserList => prop_oneof![1 => Just(Vec::new()), 3 => vec(user_info(), 1..6)]
            .prop_map(|users| Body::UserList(UserList { users }))
            .boxed(),
        Command::PresenceSubscribe => user_ids()
            .prop_map(|users| Body::PresenceSubscribe(PresenceSubscribe { users }))
            .boxed(),
        Command::PresenceEvent => (int64(), any::<bool>(), int64())
            .prop_map(|(user_id, online, last_seen_ms)| {
                Body::PresenceEvent(PresenceEvent {
                    user_id,
                    online,
                    last_seen_ms,
                })
            })
            .boxed(),
    }
}

/// A body of any command in `Command::ALL`, commands equally likely.
fn any_body() -> impl Strategy<Value = Body> {
    select(Command::ALL.to_vec()).prop_flat_map(body_strategy)
}

/// A body and a request id for it.
fn request() -> impl Strategy<Value = (u32, Body)> {
    (int32(), any_body())
}

// ---------------------------------------------------------------- strategy coverage

/// Draws `n` values from `strategy` with a fixed seed.
fn sample<S: Strategy>(strategy: S, n: usize) -> Vec<S::Value> {
    let mut runner = TestRunner::deterministic();
    (0..n)
        .map(|_| strategy.new_tree(&mut runner).expect("strategy").current())
        .collect()
}

#[test]
fn strategies_cover_every_command() {
    for command in Command::ALL {
        for body in sample(body_strategy(*command), 8) {
            assert_eq!(body.command(), *command);
        }
    }
    let seen: BTreeSet<Command> = sample(any_body(), 5000).iter().map(Body::command).collect();
    let all: BTreeSet<Command> = Command::ALL.iter().copied().collect();
    assert_eq!(seen, all, "any_body() never produced some commands");
}

fn content_variant(content: &Content) -> &'static str {
    match content {
        Content::Text { .. } => "text",
        Content::Image { .. } => "image",
        Content::Voice { .. } => "voice",
        Content::Video { .. } => "video",
        Content::File { .. } => "file",
        Content::Location { .. } => "location",
        Content::Custom { .. } => "custom",
        Content::Recalled { .. } => "recalled",
        Content::GroupEvent { .. } => "group_event",
    }
}

/// How many distinct variants (by discriminant) `n` draws produce.
fn variants_seen<S>(strategy: S, n: usize) -> usize
where
    S: Strategy,
{
    let values = sample(strategy, n);
    let mut seen: Vec<std::mem::Discriminant<S::Value>> = Vec::new();
    for value in &values {
        let d = discriminant(value);
        if !seen.contains(&d) {
            seen.push(d);
        }
    }
    seen.len()
}

#[test]
fn strategies_cover_every_enum_variant() {
    let contents: BTreeSet<&str> = sample(content(), 2000)
        .iter()
        .map(content_variant)
        .collect();
    assert_eq!(
        contents,
        BTreeSet::from([
            "text",
            "image",
            "voice",
            "video",
            "file",
            "location",
            "custom",
            "recalled",
            "group_event"
        ])
    );
    assert_eq!(variants_seen(target(), 500), 2);
    assert_eq!(variants_seen(history_anchor(), 500), 4);
    assert_eq!(variants_seen(user_key(), 500), 2);
    assert_eq!(variants_seen(conversation_kind(), 500), 2);
    assert_eq!(variants_seen(going_away_reason(), 500), 4);
    assert_eq!(variants_seen(receipt_kind(), 500), 2);
    assert_eq!(variants_seen(group_event_kind(), 500), 6);

    let summaries = sample(conversation_summary(), 500);
    assert!(summaries.iter().any(|s| s.last_message.is_none()));
    assert!(summaries.iter().any(|s| s.last_message.is_some()));

    let maps = sample(extras(), 500);
    assert!(maps.iter().any(BTreeMap::is_empty));
    assert!(maps.iter().any(|m| !m.is_empty()));
    let lists = sample(messages(), 500);
    assert!(lists.iter().any(Vec::is_empty));
    assert!(lists.iter().any(|l| !l.is_empty()));
    let strings = sample(text(), 2000);
    assert!(strings.iter().any(String::is_empty));
    assert!(strings.iter().any(|s| !s.is_ascii()), "non-ASCII text");
    assert!(
        strings.iter().any(|s| s.chars().any(|c| c as u32 > 0xFFFF)),
        "astral plane"
    );
    let floats = sample(finite_or_infinite_f64(), 2000);
    assert!(floats.iter().all(|x| !x.is_nan()));
    assert!(floats.iter().any(|x| x.is_infinite()));
}

// ---------------------------------------------------------------- helpers

fn chacha_pair(
    psk: &[u8; PSK_LEN],
    client_nonce: &[u8],
    server_nonce: &[u8],
) -> (ChaChaCipher, ChaChaCipher) {
    (
        ChaChaCipher::derive(psk, client_nonce, server_nonce, Role::Client),
        ChaChaCipher::derive(psk, client_nonce, server_nonce, Role::Server),
    )
}

/// The two ends of one connection.
struct Ends {
    client: Box<dyn PayloadCipher>,
    server: Box<dyn PayloadCipher>,
}

impl Ends {
    fn plain() -> Ends {
        Ends {
            client: Box::new(NoCipher),
            server: Box::new(NoCipher),
        }
    }

    fn chacha(psk: &[u8; PSK_LEN], client_nonce: &[u8], server_nonce: &[u8]) -> Ends {
        let (client, server) = chacha_pair(psk, client_nonce, server_nonce);
        Ends {
            client: Box::new(client),
            server: Box::new(server),
        }
    }

    /// (sealing end, opening end) for a body, by the command's direction.
    fn for_body(&mut self, body: &Body) -> (&mut dyn PayloadCipher, &mut dyn PayloadCipher) {
        match body.command().direction() {
            Direction::ClientToServer => (self.client.as_mut(), self.server.as_mut()),
            Direction::ServerToClient => (self.server.as_mut(), self.client.as_mut()),
        }
    }
}

/// Encodes every request into one byte stream, each sealed by its sender.
fn encode_all(requests: &[(u32, Body)], senders: &mut Ends) -> Result<BytesMut, TestCaseError> {
    let mut wire = BytesMut::new();
    for (request_id, body) in requests {
        let (seal, _) = senders.for_body(body);
        let before = wire.len();
        encode_frame(&mut wire, 1, *request_id, body, seal, PAYLOAD_LEN_DEFAULT)
            .map_err(|e| TestCaseError::fail(format!("{body:?} does not encode: {e}")))?;
        prop_assert!(wire.len() - before >= FRAME_OVERHEAD + seal.overhead());
    }
    Ok(wire)
}

/// Decodes every whole frame in `buf`, opens and parses it.
fn decode_available(
    decoder: &mut FrameDecoder,
    buf: &mut BytesMut,
    receivers: &mut Ends,
    out: &mut Vec<(u32, Body)>,
) -> Result<(), TestCaseError> {
    while let Some(mut frame) = decoder
        .decode(buf)
        .map_err(|e| TestCaseError::fail(format!("frame error: {e}")))?
    {
        let command = Command::from_u16(frame.header.command)
            .ok_or_else(|| TestCaseError::fail("unknown command"))?;
        prop_assert_eq!(frame.header.version, 1);
        let request_id = frame.header.request_id;
        let opener = match command.direction() {
            Direction::ClientToServer => receivers.server.as_mut(),
            Direction::ServerToClient => receivers.client.as_mut(),
        };
        let plaintext = frame
            .open(opener)
            .map_err(|e| TestCaseError::fail(format!("cannot open {command:?}: {e}")))?;
        let body = Body::decode(command, plaintext)
            .map_err(|e| TestCaseError::fail(format!("{command:?} does not decode: {e}")))?;
        out.push((request_id, body));
    }
    Ok(())
}

fn config() -> Config {
    Config {
        cases: 256,
        // Never write proptest-regressions/ files into the source tree.
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------- properties

proptest! {
    #![proptest_config(config())]

    /// (1) encode_frame -> FrameDecoder::decode -> Body::decode is the
    /// identity, cipher none.
    #[test]
    fn round_trip_without_cipher(requests in vec(request(), 1..4)) {
        let mut ends = Ends::plain();
        let mut wire = encode_all(&requests, &mut ends)?;
        let mut decoder = FrameDecoder::new(PAYLOAD_LEN_DEFAULT);
        decoder.require_version(1);
        let mut decoded = Vec::new();
        decode_available(&mut decoder, &mut wire, &mut ends, &mut decoded)?;
        prop_assert!(wire.is_empty(), "{} bytes left", wire.len());
        prop_assert_eq!(decoded, requests);
    }

    /// (1) The same with ChaCha20-Poly1305: each body sealed by the end its
    /// command's direction says, counters advancing in both directions.
    #[test]
    fn round_trip_with_chacha(
        requests in vec(request(), 1..6),
        psk in any::<[u8; PSK_LEN]>(),
        client_nonce in any::<[u8; CONNECTION_NONCE_LEN]>(),
        server_nonce in any::<[u8; CONNECTION_NONCE_LEN]>(),
    ) {
        let mut senders = Ends::chacha(&psk, &client_nonce, &server_nonce);
        let mut receivers = Ends::chacha(&psk, &client_nonce, &server_nonce);
        let mut wire = encode_all(&requests, &mut senders)?;
        let mut decoder = FrameDecoder::new(PAYLOAD_LEN_DEFAULT);
        let mut decoded = Vec::new();
        decode_available(&mut decoder, &mut wire, &mut receivers, &mut decoded)?;
        prop_assert!(wire.is_empty(), "{} bytes left", wire.len());
        prop_assert_eq!(decoded, requests);
    }

    /// (2) The same stream fed to the decoder in chunks of random sizes.
    #[test]
    fn round_trip_in_random_chunks(
        requests in vec(request(), 1..5),
        chunk_sizes in vec(1usize..80, 1..16),
        encrypted in any::<bool>(),
        psk in any::<[u8; PSK_LEN]>(),
    ) {
        let nonce = [7u8; CONNECTION_NONCE_LEN];
        let ends = || if encrypted { Ends::chacha(&psk, &nonce, &nonce) } else { Ends::plain() };
        let (mut senders, mut receivers) = (ends(), ends());
        let stream = encode_all(&requests, &mut senders)?;

        let mut decoder = FrameDecoder::new(PAYLOAD_LEN_DEFAULT);
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        let mut at = 0;
        for size in chunk_sizes.iter().cycle() {
            if at == stream.len() {
                break;
            }
            let end = (at + size).min(stream.len());
            buf.extend_from_slice(&stream[at..end]);
            at = end;
            decode_available(&mut decoder, &mut buf, &mut receivers, &mut decoded)?;
        }
        prop_assert!(buf.is_empty(), "{} bytes left", buf.len());
        prop_assert_eq!(decoded, requests);
    }

    /// (3) Body::decode of arbitrary bytes never panics, for any command; what
    /// does decode re-encodes to a stable encoding.
    #[test]
    fn body_decode_of_arbitrary_bytes_never_panics(
        command in select(Command::ALL.to_vec()),
        payload in vec(any::<u8>(), 0..256),
    ) {
        if let Ok(body) = Body::decode(command, &payload) {
            prop_assert_eq!(body.command(), command);
            assert_reencodes(&body)?;
        }
    }

    /// (3) The same for near-valid input: a valid body with a few bytes changed,
    /// cut short or extended, which reaches deeper into the decoder.
    #[test]
    fn body_decode_of_mutated_valid_body_never_panics(
        body in any_body(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
        tail in vec(any::<u8>(), 0..4),
    ) {
        let mut payload = BytesMut::new();
        body.encode_into(&mut payload).unwrap();
        let mut payload = payload.to_vec();
        if !payload.is_empty() {
            for (index, value) in &edits {
                let i = index.index(payload.len());
                payload[i] = *value;
            }
            payload.truncate(cut.index(payload.len() + 1));
        }
        payload.extend_from_slice(&tail);
        if let Ok(decoded) = Body::decode(body.command(), &payload) {
            assert_reencodes(&decoded)?;
        }
    }

    /// The frame decoder on arbitrary bytes: never a panic, and a frame only
    /// when the bytes really hold one (magic, CRC).
    #[test]
    fn frame_decoder_on_arbitrary_bytes_never_panics(
        bytes in vec(any::<u8>(), 0..64),
        magic in any::<bool>(),
    ) {
        let mut input = if magic { vec![0xA7, 0x47] } else { Vec::new() };
        input.extend_from_slice(&bytes);
        let mut buf = BytesMut::from(&input[..]);
        let mut decoder = FrameDecoder::new(PAYLOAD_LEN_DEFAULT);
        if let Ok(Some(frame)) = decoder.decode(&mut buf) {
            let len = input.len() - buf.len();
            prop_assert_eq!(&input[..2], &[0xA7, 0x47]);
            let crc = crc32fast::hash(&input[..len - 4]).to_be_bytes();
            prop_assert_eq!(&input[len - 4..len], &crc);
            prop_assert_eq!(frame.payload().len(), frame.header.payload_len as usize);
        }
    }
}

/// A decoded body encodes, decodes again to the same bytes once more.
fn assert_reencodes(body: &Body) -> Result<(), TestCaseError> {
    let mut first = BytesMut::new();
    body.encode_into(&mut first)
        .map_err(|e| TestCaseError::fail(format!("decoded body does not encode: {e}")))?;
    let again = Body::decode(body.command(), &first)
        .map_err(|e| TestCaseError::fail(format!("re-encoded body does not decode: {e}")))?;
    let mut second = BytesMut::new();
    again.encode_into(&mut second).unwrap();
    prop_assert_eq!(first, second);
    Ok(())
}
