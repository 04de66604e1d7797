//! The `gust` command: register, log in, send, listen, sync, history, log out.
//!
//! `src/bin/gust.rs` only calls [`main_with_args`]; the logic lives in the
//! library so it builds without the `server` feature. Results go to stdout,
//! one line each, flushed as they happen (a parent process may be reading);
//! errors go to stderr as `gust: <message>` with exit code 1. A login is kept
//! in a session file (see `session_file.rs`) and later commands resume it.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use argh::FromArgs;

use super::format::message_line;
use super::session_file::{hex_decode, SessionFile};
use super::{ClientError, ClientOptions, Connection, Event, Session};
use crate::limits;
use crate::protocol::{
    ConversationId, ConversationKind, HistoryAnchor, Message, StatusCode, Target, UserId, UserKey,
};

const SERVER_DEFAULT: &str = "127.0.0.1:7700";
const DEVICE_DEFAULT: &str = "cli";
const HISTORY_LIMIT_DEFAULT: u32 = 20;

#[derive(FromArgs, Debug)]
/// Command-line client for a gust instant-messaging server.
struct Cli {
    /// server address as host:port (default: the logged-in server, else 127.0.0.1:7700)
    #[argh(option)]
    server: Option<String>,
    /// where the login is kept (default: $GUST_SESSION, else $HOME/.config/gust/session)
    #[argh(option)]
    session_file: Option<PathBuf>,
    /// pre-shared key as 64 hex digits, to encrypt the connection (default: $GUST_PSK)
    #[argh(option)]
    psk: Option<String>,
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum Command {
    Register(RegisterArgs),
    Login(LoginArgs),
    Send(SendArgs),
    Listen(ListenArgs),
    Sync(SyncArgs),
    History(HistoryArgs),
    Logout(LogoutArgs),
}

#[derive(FromArgs, Debug)]
/// Create an account.
#[argh(subcommand, name = "register")]
struct RegisterArgs {
    /// the new account's name
    #[argh(positional)]
    username: String,
    /// the password (default: read one line from stdin)
    #[argh(option)]
    password: Option<String>,
}

#[derive(FromArgs, Debug)]
/// Log in and keep the session for later commands.
#[argh(subcommand, name = "login")]
struct LoginArgs {
    /// the account's name
    #[argh(positional)]
    username: String,
    /// the password (default: read one line from stdin)
    #[argh(option)]
    password: Option<String>,
    /// this install's device id (default: cli)
    #[argh(option, default = "String::from(DEVICE_DEFAULT)")]
    device: String,
}

#[derive(FromArgs, Debug)]
/// Send a text message: gust send <username> <text...>, or gust send --conversation <id> <text...>.
#[argh(subcommand, name = "send")]
struct SendArgs {
    /// send to this conversation instead of a user
    #[argh(option)]
    conversation: Option<ConversationId>,
    /// the recipient's username (unless --conversation), then the text
    #[argh(positional)]
    words: Vec<String>,
}

#[derive(FromArgs, Debug)]
/// Print incoming messages as they arrive.
#[argh(subcommand, name = "listen")]
struct ListenArgs {
    /// exit after this many messages
    #[argh(option)]
    count: Option<u64>,
    /// exit after this many seconds without a message
    #[argh(option)]
    timeout_secs: Option<u64>,
}

#[derive(FromArgs, Debug)]
/// Print the messages missed since the last sync or listen.
#[argh(subcommand, name = "sync")]
struct SyncArgs {}

#[derive(FromArgs, Debug)]
/// Print a conversation's messages, oldest first.
#[argh(subcommand, name = "history")]
struct HistoryArgs {
    /// the 1:1 conversation with this user (unless --conversation)
    #[argh(positional)]
    username: Option<String>,
    /// the conversation's id
    #[argh(option)]
    conversation: Option<ConversationId>,
    /// how many messages (default 20)
    #[argh(option, default = "HISTORY_LIMIT_DEFAULT")]
    limit: u32,
    /// only messages before this seq (default: the newest)
    #[argh(option)]
    before_seq: Option<u64>,
}

#[derive(FromArgs, Debug)]
/// End the session and forget it.
#[argh(subcommand, name = "logout")]
struct LogoutArgs {}

/// Why a command failed: the text after `gust: `.
#[derive(Debug)]
struct CliError(String);

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> CliError {
        CliError(e.to_string())
    }
}

impl From<io::Error> for CliError {
    fn from(e: io::Error) -> CliError {
        CliError(e.to_string())
    }
}

impl From<String> for CliError {
    fn from(message: String) -> CliError {
        CliError(message)
    }
}

type CliResult<T = ()> = Result<T, CliError>;

/// Runs `gust` with the process's arguments; returns the exit code.
pub fn main_with_args() -> i32 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    run(&args)
}

/// Runs `gust` with `args` (without the program name); returns the exit code.
pub fn run(args: &[String]) -> i32 {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cli = match Cli::from_args(&["gust"], &args) {
        Ok(cli) => cli,
        Err(early) => {
            return match early.status {
                // --help
                Ok(()) => {
                    println!("{}", early.output.trim_end());
                    0
                }
                Err(()) => {
                    eprintln!("gust: {}", early.output.trim_end());
                    1
                }
            };
        }
    };
    match execute(cli) {
        Ok(()) => 0,
        Err(CliError(message)) => {
            eprintln!("gust: {message}");
            1
        }
    }
}

fn execute(cli: Cli) -> CliResult {
    let context = Context::new(&cli)?;
    match cli.command {
        Command::Register(args) => register(&context, args),
        Command::Login(args) => login(&context, args),
        Command::Send(args) => send(&context, args),
        Command::Listen(args) => listen(&context, args),
        Command::Sync(_) => sync(&context),
        Command::History(args) => history(&context, args),
        Command::Logout(_) => logout(&context),
    }
}

/// What every command needs from the global flags and the environment.
struct Context {
    server_flag: Option<String>,
    session_path: Option<PathBuf>,
    options: ClientOptions,
}

impl Context {
    fn new(cli: &Cli) -> CliResult<Context> {
        let psk = match cli.psk.clone().or_else(|| std::env::var("GUST_PSK").ok()) {
            Some(hex) => Some(parse_psk(&hex)?),
            None => None,
        };
        let session_path = cli.session_file.clone().or_else(default_session_path);
        Ok(Context {
            server_flag: cli.server.clone(),
            session_path,
            options: ClientOptions {
                psk,
                ..ClientOptions::default()
            },
        })
    }

    fn session_path(&self) -> CliResult<&PathBuf> {
        self.session_path.as_ref().ok_or_else(|| {
            CliError("no session file: set --session-file, $GUST_SESSION or $HOME".into())
        })
    }

    /// The server for commands that start a session.
    fn server_for_login(&self) -> &str {
        self.server_flag.as_deref().unwrap_or(SERVER_DEFAULT)
    }

    fn load_session(&self) -> CliResult<SessionFile> {
        let path = self.session_path()?;
        SessionFile::load(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => CliError(format!(
                "not logged in (no session file at {}); run gust login first",
                path.display()
            )),
            _ => CliError(format!("cannot read the session file: {e}")),
        })
    }

    /// The server of a saved session, unless `--server` overrides it.
    fn server_for<'a>(&'a self, saved: &'a SessionFile) -> &'a str {
        self.server_flag.as_deref().unwrap_or(&saved.server)
    }

    /// A resumed connection (no retries: for one-shot reads).
    fn resume_connection(&self, saved: &SessionFile) -> CliResult<Connection> {
        let mut conn = Connection::connect(self.server_for(saved), &self.options)?;
        conn.resume(&saved.token, &saved.device_id)
            .map_err(session_error)?;
        Ok(conn)
    }

    fn resume_session(&self, saved: &SessionFile) -> CliResult<Session> {
        Session::resume(
            self.server_for(saved),
            &self.options,
            &saved.token,
            &saved.device_id,
        )
        .map_err(session_error)
    }
}

/// A refused resume gets a hint instead of a bare status.
fn session_error(e: ClientError) -> CliError {
    match e.status() {
        Some(StatusCode::Unauthorized) => {
            CliError(format!("{e} (the session has ended; run gust login again)"))
        }
        _ => e.into(),
    }
}

fn default_session_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("GUST_SESSION").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let home = std::env::var_os("HOME").filter(|p| !p.is_empty())?;
    Some(PathBuf::from(home).join(".config/gust/session"))
}

fn parse_psk(hex: &str) -> CliResult<[u8; 32]> {
    hex_decode(hex.trim())
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or_else(|| CliError("the pre-shared key must be 64 hex digits".into()))
}

/// The password from the flag, else one line from stdin.
fn password_or_prompt(flag: Option<String>) -> CliResult<String> {
    if let Some(password) = flag {
        return Ok(password);
    }
    eprint!("password: ");
    io::stderr().flush()?;
    let mut line = String::new();
    io::stdin().lock().read_line(&mut line)?;
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        return Err(CliError("no password given".into()));
    }
    Ok(password)
}

/// Prints one line and flushes, so a reader on a pipe sees it at once.
fn emit(line: &str) -> CliResult {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

// ---------------------------------------------------------------- commands

fn register(context: &Context, args: RegisterArgs) -> CliResult {
    let password = password_or_prompt(args.password)?;
    let mut conn = Connection::connect(context.server_for_login(), &context.options)?;
    let user_id = conn.register(&args.username, &password)?;
    emit(&format!("registered {} (user {user_id})", args.username))
}

fn login(context: &Context, args: LoginArgs) -> CliResult {
    // The session file is line-based; a device id must stay on its line.
    if args.device.is_empty()
        || args
            .device
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(CliError(
            "the device id must be non-empty, without spaces or control characters".into(),
        ));
    }
    let path = context.session_path()?.clone();
    let password = password_or_prompt(args.password)?;
    let server = context.server_for_login().to_string();
    let mut conn = Connection::connect(server.as_str(), &context.options)?;
    let info = conn.login(&args.username, &password, &args.device)?;
    let saved = SessionFile {
        server,
        user_id: info.user_id,
        username: info.username.clone(),
        device_id: info.device_id.clone(),
        token: info.session_token,
    };
    saved
        .store(&path)
        .map_err(|e| CliError(format!("cannot write {}: {e}", path.display())))?;
    emit(&format!(
        "logged in as {} (user {}, device {})",
        info.username, info.user_id, info.device_id
    ))
}

fn send(context: &Context, args: SendArgs) -> CliResult {
    let saved = context.load_session()?;
    let mut words = args.words.into_iter();
    let recipient = match args.conversation {
        Some(_) => None,
        None => Some(
            words
                .next()
                .ok_or_else(|| CliError("usage: gust send <username> <text...>".into()))?,
        ),
    };
    let text = words.collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        return Err(CliError("nothing to send".into()));
    }
    let mut session = context.resume_session(&saved)?;
    let to = match (args.conversation, recipient) {
        (Some(conversation_id), _) => Target::Conversation(conversation_id),
        (None, Some(username)) => Target::User(resolve_user(session.connection(), &username)?),
        (None, None) => return Err(CliError("no recipient".into())),
    };
    let ack = session.send_text(to, &text)?;
    emit(&format!(
        "sent seq={} conversation={} message={}",
        ack.seq, ack.conversation_id, ack.message_id
    ))
}

fn listen(context: &Context, args: ListenArgs) -> CliResult {
    let saved = context.load_session()?;
    let mut session = context.resume_session(&saved)?;
    let mut names = UserNames::default();
    names.insert(saved.user_id, saved.username.clone());
    let idle = args.timeout_secs.map(Duration::from_secs);
    let mut received = 0u64;
    while args.count.is_none_or(|count| received < count) {
        // Without --timeout-secs, wait in long slices forever.
        let wait = idle.unwrap_or(Duration::from_secs(3600));
        match session.next_event(wait)? {
            None if idle.is_some() => break,
            None => {}
            Some(Event::Message(message)) => {
                names.resolve(session.connection(), [message.sender_id]);
                emit(&message_line(&message, &names.display(message.sender_id)))?;
                received += 1;
            }
            Some(other) => log::debug!("ignoring {other:?}"),
        }
    }
    settle(session.connection());
    Ok(())
}

fn sync(context: &Context) -> CliResult {
    let saved = context.load_session()?;
    let mut conn = context.resume_connection(&saved)?;
    let messages = conn.sync(Vec::new())?;
    let mut names = UserNames::default();
    names.insert(saved.user_id, saved.username.clone());
    print_messages(&mut conn, &mut names, &messages)?;
    settle(&mut conn);
    emit(&format!("synced {} messages", messages.len()))
}

fn history(context: &Context, args: HistoryArgs) -> CliResult {
    let saved = context.load_session()?;
    let mut conn = context.resume_connection(&saved)?;
    let conversation_id = match (args.conversation, &args.username) {
        (Some(id), None) => id,
        (None, Some(username)) => {
            let peer = resolve_user(&mut conn, username)?;
            direct_conversation(&mut conn, peer)?
                .ok_or_else(|| CliError(format!("no conversation with {username}")))?
        }
        (Some(_), Some(_)) => {
            return Err(CliError(
                "give a username or --conversation, not both".into(),
            ))
        }
        (None, None) => {
            return Err(CliError(
                "usage: gust history <username> or gust history --conversation <id>".into(),
            ))
        }
    };
    let anchor = HistoryAnchor::BeforeSeq(args.before_seq.unwrap_or(u64::MAX));
    let mut page = conn.history(conversation_id, anchor, args.limit)?;
    page.messages.sort_by_key(|m| m.seq);
    let mut names = UserNames::default();
    names.insert(saved.user_id, saved.username.clone());
    print_messages(&mut conn, &mut names, &page.messages)
}

fn logout(context: &Context) -> CliResult {
    let saved = context.load_session()?;
    let path = context.session_path()?;
    let result = context
        .resume_connection(&saved)
        .and_then(|mut conn| conn.logout().map_err(CliError::from));
    let note = match result {
        Ok(()) => "",
        // The token is dead already; forgetting it is all that is left to do.
        Err(CliError(m)) if m.contains(StatusCode::Unauthorized.name()) => {
            " (the session had already ended)"
        }
        Err(e) => return Err(e),
    };
    std::fs::remove_file(path)
        .map_err(|e| CliError(format!("cannot remove {}: {e}", path.display())))?;
    emit(&format!("logged out{note}"))
}

// ---------------------------------------------------------------- helpers

/// Waits for one round trip so that the acks just sent are processed before
/// the process exits and closes the socket. Failure changes nothing for the
/// user: unacked messages come again with the next sync.
fn settle(conn: &mut Connection) {
    if let Err(e) = conn.ping() {
        log::debug!("final ping failed: {e}");
    }
}

fn resolve_user(conn: &mut Connection, username: &str) -> CliResult<UserId> {
    conn.lookup_user_by_name(username)?
        .map(|user| user.user_id)
        .ok_or_else(|| CliError(format!("no user named {username}")))
}

/// The 1:1 conversation with `peer`, found by walking the conversation list.
fn direct_conversation(conn: &mut Connection, peer: UserId) -> CliResult<Option<ConversationId>> {
    const PAGE: u32 = 100;
    let mut after = 0;
    loop {
        let page = conn.conversation_list(after, PAGE)?;
        if let Some(found) = page
            .conversations
            .iter()
            .find(|c| matches!(c.kind, ConversationKind::Direct { peer_id } if peer_id == peer))
        {
            return Ok(Some(found.conversation_id));
        }
        match page.conversations.last() {
            // Stop unless the cursor moves, whatever `more` claims.
            Some(last) if page.more && last.conversation_id > after => {
                after = last.conversation_id;
            }
            _ => return Ok(None),
        }
    }
}

fn print_messages(conn: &mut Connection, names: &mut UserNames, messages: &[Message]) -> CliResult {
    names.resolve(conn, messages.iter().map(|m| m.sender_id));
    for message in messages {
        emit(&message_line(message, &names.display(message.sender_id)))?;
    }
    Ok(())
}

/// Usernames by id, looked up in batches and remembered.
#[derive(Debug, Default)]
struct UserNames {
    /// `None`: looked up, no such user (shown as `#id`, not asked again).
    names: HashMap<UserId, Option<String>>,
}

impl UserNames {
    fn insert(&mut self, user_id: UserId, username: String) {
        self.names.insert(user_id, Some(username));
    }

    /// Looks up the ids not known yet. A failed lookup is not fatal: the
    /// sender is shown as `#id` and asked again next time.
    fn resolve(&mut self, conn: &mut Connection, ids: impl IntoIterator<Item = UserId>) {
        let mut unknown: Vec<UserId> = ids
            .into_iter()
            .filter(|id| !self.names.contains_key(id))
            .collect();
        unknown.sort_unstable();
        unknown.dedup();
        for chunk in unknown.chunks(limits::QUERY_USERS_MAX) {
            let keys = chunk.iter().map(|id| UserKey::Id(*id)).collect();
            match conn.lookup_users(keys) {
                Ok(users) => {
                    let found: BTreeMap<UserId, String> =
                        users.into_iter().map(|u| (u.user_id, u.username)).collect();
                    for id in chunk {
                        self.names.insert(*id, found.get(id).cloned());
                    }
                }
                Err(e) => log::debug!("user lookup failed: {e}"),
            }
        }
    }

    /// The username, or `#id` when unknown.
    fn display(&self, user_id: UserId) -> String {
        match self.names.get(&user_id) {
            Some(Some(name)) => name.clone(),
            _ => format!("#{user_id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, argh::EarlyExit> {
        Cli::from_args(&["gust"], args)
    }

    #[test]
    fn parses_the_documented_commands() {
        let cli = parse(&["send", "bob", "hello", "there"]).unwrap();
        let Command::Send(send) = cli.command else {
            panic!("{cli:?}")
        };
        assert_eq!(send.words, ["bob", "hello", "there"]);
        assert_eq!(send.conversation, None);

        let cli = parse(&[
            "--server",
            "10.0.0.1:1",
            "send",
            "--conversation",
            "7",
            "hi",
        ])
        .unwrap();
        assert_eq!(cli.server.as_deref(), Some("10.0.0.1:1"));
        let Command::Send(send) = cli.command else {
            panic!()
        };
        assert_eq!(send.conversation, Some(7));

        let cli = parse(&["listen", "--count", "3", "--timeout-secs", "5"]).unwrap();
        let Command::Listen(listen) = cli.command else {
            panic!()
        };
        assert_eq!((listen.count, listen.timeout_secs), (Some(3), Some(5)));

        let cli = parse(&["login", "alice", "--password", "pw"]).unwrap();
        let Command::Login(login) = cli.command else {
            panic!()
        };
        assert_eq!(login.device, "cli");

        let cli = parse(&["history", "bob", "--limit", "5", "--before-seq", "9"]).unwrap();
        let Command::History(history) = cli.command else {
            panic!()
        };
        assert_eq!(
            (
                history.username.as_deref(),
                history.limit,
                history.before_seq
            ),
            (Some("bob"), 5, Some(9))
        );
        assert!(parse(&["sync"]).is_ok());
        assert!(parse(&["logout"]).is_ok());
        assert!(parse(&["register"]).is_err());
        assert!(parse(&["frobnicate"]).is_err());
    }

    #[test]
    fn psk_must_be_32_bytes_of_hex() {
        let hex = "00".repeat(32);
        assert_eq!(parse_psk(&hex).unwrap(), [0u8; 32]);
        assert!(parse_psk("00").is_err());
        assert!(parse_psk(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn unknown_users_show_as_ids() {
        let mut names = UserNames::default();
        names.insert(1, "alice".into());
        names.names.insert(2, None);
        assert_eq!(names.display(1), "alice");
        assert_eq!(names.display(2), "#2");
        assert_eq!(names.display(3), "#3");
    }

    #[test]
    fn usage_errors_exit_1_and_help_exits_0() {
        assert_eq!(run(&["bogus".to_string()]), 1);
        assert_eq!(run(&["--help".to_string()]), 0);
    }

    /// Every command against the fake server, checking what reached it.
    #[test]
    fn commands_end_to_end_against_a_fake_server() {
        use super::super::test_server::{logged_in, serve_with, text_message, FakeConfig};
        use crate::protocol::*;

        let (addr, seen) = serve_with(FakeConfig::default(), |server, id, body| {
            let reply = match body {
                Body::Login(_) => logged_in(&[0xab; 4]),
                Body::Resume(r) if r.session_token == [0xab; 4] => {
                    let reply = logged_in(&r.session_token);
                    server.send(id, reply);
                    server.send(
                        0,
                        Body::Deliver(Deliver {
                            message: text_message(3, 9, "pushed"),
                        }),
                    );
                    return;
                }
                Body::Resume(_) => Body::Error(ErrorReply {
                    code: StatusCode::Unauthorized as u16,
                    closing: false,
                    message: "bad token".into(),
                }),
                Body::UserLookup(_) => Body::UserList(UserList {
                    users: vec![UserInfo {
                        user_id: 2,
                        username: "bob".into(),
                        online: true,
                        last_seen_ms: 0,
                    }],
                }),
                Body::Send(send) => Body::SendAck(SendAck {
                    client_message_id: send.client_message_id,
                    message_id: 900,
                    conversation_id: 3,
                    seq: 10,
                    server_time_ms: 0,
                }),
                Body::Sync(_) => {
                    server.send(
                        id,
                        Body::SyncPage(SyncPage {
                            messages: vec![text_message(3, 1, "one")],
                        }),
                    );
                    Body::SyncEnd(SyncEnd { cursors: vec![] })
                }
                Body::ConversationList(_) => Body::ConversationListPage(ConversationListPage {
                    conversations: vec![ConversationSummary {
                        conversation_id: 3,
                        kind: ConversationKind::Direct { peer_id: 2 },
                        last_seq: 10,
                        read_seq: 0,
                        unread_count: 0,
                        pinned: false,
                        muted: false,
                        last_message: None,
                    }],
                    more: false,
                }),
                Body::History(_) => Body::HistoryPage(HistoryPage {
                    messages: vec![text_message(3, 2, "b"), text_message(3, 1, "a")],
                    more: false,
                }),
                Body::Ping(p) => Body::Pong(Pong {
                    nonce: p.nonce,
                    server_time_ms: 0,
                }),
                Body::Logout(_) => Body::Ok(OkReply {}),
                _ => return,
            };
            server.send(id, reply);
        });
        let dir = tempfile::tempdir().unwrap();
        let session_path = dir.path().join("gust/session");
        let gust = |args: &[&str]| {
            let mut all = vec![
                "--server".to_string(),
                addr.to_string(),
                "--session-file".to_string(),
                session_path.display().to_string(),
            ];
            all.extend(args.iter().map(|a| a.to_string()));
            run(&all)
        };
        let frames = || seen.try_iter().map(|(_, body)| body).collect::<Vec<_>>();

        assert_eq!(gust(&["send", "bob", "hi"]), 1, "not logged in yet");
        assert_eq!(
            gust(&["login", "alice", "--password", "pw", "--device", "laptop"]),
            0
        );
        let saved = SessionFile::load(&session_path).unwrap();
        assert_eq!(saved.token, [0xab; 4]);
        assert_eq!(saved.server, addr.to_string());
        assert!(matches!(&frames()[..], [Body::Login(l)] if l.device_id == "laptop"));

        assert_eq!(gust(&["send", "bob", "hello", "there"]), 0);
        let sent = frames();
        assert!(
            sent.iter().any(|b| matches!(b, Body::Send(s)
                if s.to == Target::User(2)
                    && s.content == Content::Text { text: "hello there".into() })),
            "{sent:?}"
        );

        assert_eq!(gust(&["listen", "--count", "1"]), 0);
        assert!(frames().contains(&Body::DeliveryAck(DeliveryAck {
            conversation_id: 3,
            seq: 9
        })));

        assert_eq!(gust(&["sync"]), 0);
        assert!(frames().contains(&Body::DeliveryAck(DeliveryAck {
            conversation_id: 3,
            seq: 1
        })));

        assert_eq!(gust(&["history", "bob", "--before-seq", "5"]), 0);
        assert!(frames().iter().any(|b| matches!(b, Body::History(h)
            if h.conversation_id == 3 && h.anchor == HistoryAnchor::BeforeSeq(5))));

        assert_eq!(gust(&["logout"]), 0);
        assert!(!session_path.exists());
        assert!(frames().contains(&Body::Logout(Logout {})));
    }
}
