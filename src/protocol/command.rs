//! The command table: code, name, direction and body type of every command.
//!
//! This macro invocation is the single list the codec, the server's dispatch
//! and protocol.md's command index are checked against.

use bytes::BytesMut;

use super::body::*;
use super::body_codec::{self, BodyError};

/// Who may send a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    ClientToServer,
    ServerToClient,
}

macro_rules! commands {
    ($( $code:literal $variant:ident($ty:ty) $name:literal $dir:ident; )*) => {
        /// A command code (frame header bytes 4..6).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u16)]
        pub enum Command { $($variant = $code,)* }

        impl Command {
            pub const ALL: &'static [Command] = &[$(Command::$variant,)*];

            pub fn from_u16(code: u16) -> Option<Command> {
                match code {
                    $($code => Some(Command::$variant),)*
                    _ => None,
                }
            }

            /// The snake_case name used in protocol.md and logs.
            pub fn name(self) -> &'static str {
                match self { $(Command::$variant => $name,)* }
            }

            pub fn direction(self) -> Direction {
                match self { $(Command::$variant => Direction::$dir,)* }
            }
        }

        /// A decoded body, tagged by its command.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Body { $($variant($ty),)* }

        impl Body {
            pub fn command(&self) -> Command {
                match self { $(Body::$variant(_) => Command::$variant,)* }
            }

            /// Appends the encoded body to `out`.
            pub fn encode_into(&self, out: &mut BytesMut) -> Result<(), BodyError> {
                match self { $(Body::$variant(body) => body_codec::encode(body, out),)* }
            }

            /// Decodes `payload` (plaintext) as the body of `command`. The whole
            /// payload must be consumed.
            pub fn decode(command: Command, payload: &[u8]) -> Result<Body, BodyError> {
                match command {
                    $(Command::$variant => body_codec::decode::<$ty>(payload).map(Body::$variant),)*
                }
            }
        }
    };
}

commands! {
    // session
    0x0001 Hello(Hello) "hello" ClientToServer;
    0x0002 HelloAck(HelloAck) "hello_ack" ServerToClient;
    0x0003 Register(Register) "register" ClientToServer;
    0x0004 Registered(Registered) "registered" ServerToClient;
    0x0005 Login(Login) "login" ClientToServer;
    0x0006 Resume(Resume) "resume" ClientToServer;
    0x0007 LoggedIn(LoggedIn) "logged_in" ServerToClient;
    0x0008 Logout(Logout) "logout" ClientToServer;
    0x0009 Ping(Ping) "ping" ClientToServer;
    0x000A Pong(Pong) "pong" ServerToClient;
    0x000B GoingAway(GoingAway) "going_away" ServerToClient;
    0x000C Error(ErrorReply) "error" ServerToClient;
    0x000D Ok(OkReply) "ok" ServerToClient;
    // messages
    0x0101 Send(Send) "send" ClientToServer;
    0x0102 SendAck(SendAck) "send_ack" ServerToClient;
    0x0103 Deliver(Deliver) "deliver" ServerToClient;
    0x0104 DeliveryAck(DeliveryAck) "delivery_ack" ClientToServer;
    0x0105 ReadAck(ReadAck) "read_ack" ClientToServer;
    0x0106 Receipt(Receipt) "receipt" ServerToClient;
    0x0107 Recall(Recall) "recall" ClientToServer;
    0x0108 Typing(Typing) "typing" ClientToServer;
    0x0109 TypingEvent(TypingEvent) "typing_event" ServerToClient;
    // sync and history
    0x0201 Sync(Sync) "sync" ClientToServer;
    0x0202 SyncPage(SyncPage) "sync_page" ServerToClient;
    0x0203 SyncEnd(SyncEnd) "sync_end" ServerToClient;
    0x0204 History(History) "history" ClientToServer;
    0x0205 HistoryPage(HistoryPage) "history_page" ServerToClient;
    // conversations
    0x0301 ConversationList(ConversationList) "conversation_list" ClientToServer;
    0x0302 ConversationListPage(ConversationListPage) "conversation_list_page" ServerToClient;
    0x0303 MarkRead(MarkRead) "mark_read" ClientToServer;
    0x0304 SetPinned(SetPinned) "set_pinned" ClientToServer;
    0x0305 SetMuted(SetMuted) "set_muted" ClientToServer;
    0x0306 HideConversation(HideConversation) "hide_conversation" ClientToServer;
    // groups
    0x0401 GroupCreate(GroupCreate) "group_create" ClientToServer;
    0x0402 GroupJoin(GroupRef) "group_join" ClientToServer;
    0x0403 GroupQuit(GroupRef) "group_quit" ClientToServer;
    0x0404 GroupKick(GroupMember) "group_kick" ClientToServer;
    0x0405 GroupDissolve(GroupRef) "group_dissolve" ClientToServer;
    0x0406 GroupTransfer(GroupMember) "group_transfer" ClientToServer;
    0x0407 GroupInfoQuery(GroupRef) "group_info_query" ClientToServer;
    0x0408 GroupInfo(GroupInfo) "group_info" ServerToClient;
    0x0409 GroupMembers(GroupMembers) "group_members" ClientToServer;
    0x040A GroupMembersPage(GroupMembersPage) "group_members_page" ServerToClient;
    // users and presence
    0x0501 UserLookup(UserLookup) "user_lookup" ClientToServer;
    0x0502 UserList(UserList) "user_list" ServerToClient;
    0x0503 PresenceSubscribe(PresenceSubscribe) "presence_subscribe" ClientToServer;
    0x0504 PresenceEvent(PresenceEvent) "presence_event" ServerToClient;
}
