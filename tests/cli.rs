//! The `gust` command line, driven as a person would: register and log in,
//! listen in one process, send from another.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn gust(server: &TestServer, session: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gust"));
    command
        .arg("--server")
        .arg(server.addr.to_string())
        .arg("--session-file")
        .arg(session);
    command
}

fn run_ok(mut command: Command, stdin: &str) -> String {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("run gust");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("stdin");
    let output = child.wait_with_output().expect("wait");
    assert!(
        output.status.success(),
        "gust failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn register_login_send_and_listen() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().expect("temp");
    let alice_session = dir.path().join("alice");
    let bob_session = dir.path().join("bob");

    let mut register = gust(&server, &alice_session);
    register.args(["register", "alice"]);
    run_ok(register, "alice-secret-1\n");
    let mut register = gust(&server, &bob_session);
    register.args(["register", "bob", "--password", "bob-secret-1"]);
    run_ok(register, "");

    let mut login = gust(&server, &alice_session);
    login.args(["login", "alice"]);
    run_ok(login, "alice-secret-1\n");
    let mut login = gust(&server, &bob_session);
    login.args([
        "login",
        "bob",
        "--password",
        "bob-secret-1",
        "--device",
        "terminal",
    ]);
    run_ok(login, "");
    assert!(bob_session.exists(), "the session file is kept");

    // Bob listens in another process.
    let mut listen = gust(&server, &bob_session);
    listen
        .args(["listen", "--count", "2", "--timeout-secs", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut listener = listen.spawn().expect("listen");
    let stdout = listener.stdout.take().expect("stdout");
    let (line_tx, line_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = line_tx.send(line);
        }
    });
    // Give the listener time to connect, then send twice.
    std::thread::sleep(Duration::from_millis(500));
    let mut send = gust(&server, &alice_session);
    send.args(["send", "bob", "hello", "from", "the", "terminal"]);
    let out = run_ok(send, "");
    assert!(out.contains("seq=1"), "send prints the ack: {out}");
    let mut send = gust(&server, &alice_session);
    send.args(["send", "bob", "second"]);
    run_ok(send, "");

    let deadline = Instant::now() + WAIT;
    let mut lines = Vec::new();
    while lines.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match line_rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => panic!("listener printed {lines:?}"),
        }
    }
    assert!(
        lines[0].contains("alice") && lines[0].contains("hello from the terminal"),
        "{}",
        lines[0]
    );
    assert!(lines[1].contains("second"), "{}", lines[1]);
    let status = listener.wait().expect("listener exits after --count");
    assert!(status.success());

    // History shows both, oldest first.
    let mut history = gust(&server, &bob_session);
    history.args(["history", "alice"]);
    let out = run_ok(history, "");
    let first = out
        .find("hello from the terminal")
        .expect("first in history");
    let second = out.find("second").expect("second in history");
    assert!(first < second);
}

#[test]
fn failures_exit_non_zero_with_a_readable_message() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().expect("temp");
    let session = dir.path().join("session");
    let mut login = gust(&server, &session);
    login.args(["login", "ghost", "--password", "whatever-pass"]);
    let output = login.stdin(Stdio::null()).output().expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("gust: "), "{stderr}");
    // Sending without a session says so.
    let mut send = gust(&server, &session);
    send.args(["send", "bob", "hi"]);
    let output = send.stdin(Stdio::null()).output().expect("run");
    assert!(!output.status.success());
}
