//! `messaging client ...`, the compiled binary run against a test server as a
//! person at a terminal would: the password on stdin, the token in a 0600
//! file, chats, send, search, and `tail` printing messages sent meanwhile by
//! someone else; a failure is one line on stderr and a non-zero exit.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::json;

use crate::support::app::PASSWORD;
use crate::support::{fresh_database, spawn_app, spawn_app_on, spawn_app_on_listeners, wait_for, TempDir, TestApp};

/// How long a `tail` may take to print its next line before the test gives
/// up (a guard against a hang, not a measurement).
const LINE_DEADLINE: Duration = Duration::from_secs(60);

/// The client's environment: the server and a token file of its own, and
/// nothing else from the test's environment.
struct Terminal {
    api: String,
    token_file: PathBuf,
    _dir: TempDir,
}

impl Terminal {
    fn new(app: &TestApp) -> Terminal {
        let dir = TempDir::new("client");
        let token_file = dir.path().join("config").join("token");
        Terminal { api: format!("http://{}", app.http_addr), token_file, _dir: dir }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_messaging"));
        command
            .arg("client")
            .args(args)
            .env_clear()
            .env("MESSAGING_API", &self.api)
            .env("MESSAGING_TOKEN_FILE", &self.token_file);
        command
    }

    /// Runs `messaging client <args>` to its end with `stdin` as its input.
    fn run(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the client");
        child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
        child.wait_with_output().expect("wait for the client")
    }

    /// Runs a command that must succeed; its stdout.
    fn ok(&self, args: &[&str], stdin: &str) -> String {
        let output = self.run(args, stdin);
        let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "client {args:?} failed ({}):\n{stdout}\n{stderr}", output.status);
        stdout.into_owned()
    }
}

/// A running `tail`, killed when dropped; its stdout lines arrive on a channel.
struct Tailing {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Tailing {
    fn start(terminal: &Terminal, args: &[&str]) -> Tailing {
        let mut child = terminal
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tail");
        let stdout = child.stdout.take().expect("stdout");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Tailing { child, lines }
    }

    /// Reads the history `tail` prints first, up to its `-- live` line.
    fn history(&self) -> Vec<String> {
        let mut shown = Vec::new();
        while let Some(line) = self.next_line("the history and the live marker") {
            if line.starts_with("-- live") {
                return shown;
            }
            shown.push(line);
        }
        panic!("tail ended before going live, after {shown:?}")
    }

    fn next_line(&self, what: &str) -> Option<String> {
        match self.lines.recv_timeout(LINE_DEADLINE) {
            Ok(line) => Some(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("tail printed no line within {LINE_DEADLINE:?}: {what}"),
        }
    }
}

impl Drop for Tailing {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_terminal_session_logs_in_lists_sends_searches_and_tails() {
    let app = spawn_app();
    let alice = app.create_user();
    let bob = app.create_user();
    let chat = app.post("/api/chats", Some(&bob.token), json!({ "is_group": false, "member_ids": [alice.id] }));
    let chat_id = chat.assert_status(201, "direct chat").json()["id"].as_i64().expect("chat id");
    let send = |content: &str| {
        let sent = app.post(&format!("/api/chats/{chat_id}/messages"), Some(&bob.token), json!({ "content": content }));
        sent.assert_status(201, content).json()["seq"].as_i64().expect("seq")
    };
    let hello = send("hello from bob");
    let terminal = Terminal::new(&app);

    let login = terminal.ok(&["login", &alice.username], &format!("{PASSWORD}\n"));
    assert_eq!(login.trim(), format!("logged in as {} (id {})", alice.username, alice.id));
    let mode = std::fs::metadata(&terminal.token_file).expect("the token file").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the token file is the owner's only");
    let token = std::fs::read_to_string(&terminal.token_file).expect("read the token");
    app.get("/api/users/me", Some(&token)).assert_status(200, "the stored token works");

    let chats = terminal.ok(&["chats"], "");
    assert_eq!(
        chats.trim(),
        format!("{chat_id}\t{}\t1 unread\t[{hello}] {}: hello from bob", bob.username, bob.username)
    );

    let sent = terminal.ok(&["send", &chat_id.to_string(), "ships", "at", "dawn"], "");
    let ships = hello + 1;
    assert_eq!(sent.trim(), format!("sent seq {ships}"));
    let history = app.get(&format!("/api/chats/{chat_id}/messages"), Some(&bob.token)).json();
    assert_eq!(history["messages"][1]["content"], "ships at dawn", "the words are joined by spaces");
    assert_eq!(history["messages"][1]["sender_id"], alice.id);

    let found = terminal.ok(&["search", "ship"], "");
    assert_eq!(found.trim(), format!("chat {chat_id} [{ships}] {}: ships at dawn", alice.username));

    let tail = Tailing::start(&terminal, &["tail", &chat_id.to_string(), "--count", "2"]);
    assert_eq!(
        tail.history(),
        [format!("[{hello}] {}: hello from bob", bob.username), format!("[{ships}] {}: ships at dawn", alice.username)]
    );
    let (first, second) = (send("first live"), send("second live"));
    let live: Vec<String> = std::iter::from_fn(|| tail.next_line("the live messages")).collect();
    assert_eq!(
        live,
        [format!("[{first}] {}: first live", bob.username), format!("[{second}] {}: second live", bob.username)],
        "each message once, then tail ends on --count 2"
    );
}

#[test]
fn tail_reconnects_after_its_server_restarts_and_catches_up_without_repeats() {
    // Ports below the kernel's ephemeral range, so no client socket of a test
    // beside this one takes them while the server is down (binary::free_addr).
    let bind = || TcpListener::bind(crate::binary::free_addr()).expect("bind a port below the ephemeral range");
    let first = spawn_app_on_listeners(&fresh_database(), &[], bind(), bind());
    let (http_addr, ws_addr, db_url) = (first.http_addr, first.ws_addr, first.db_url.clone());
    let other = spawn_app_on(&db_url, &[]);
    let alice = other.create_user();
    let bob = other.create_user();
    let chat = other.post("/api/chats", Some(&bob.token), json!({ "is_group": false, "member_ids": [alice.id] }));
    let chat_id = chat.assert_status(201, "direct chat").json()["id"].as_i64().expect("chat id");
    let send = |content: &str| {
        let sent =
            other.post(&format!("/api/chats/{chat_id}/messages"), Some(&bob.token), json!({ "content": content }));
        sent.assert_status(201, content).json()["seq"].as_i64().expect("seq")
    };
    let terminal = Terminal::new(&first);
    terminal.ok(&["login", &alice.username], &format!("{PASSWORD}\n"));
    let tail = Tailing::start(&terminal, &["tail", &chat_id.to_string(), "--count", "2"]);
    assert!(tail.history().is_empty(), "no messages yet");

    // The server tail talks to stops, so its WebSocket closes; a message is
    // sent through the other process while it is down, and tail can learn
    // of it only from the event log once the server is back.
    drop(first);
    let while_down = send("sent while the server was down");
    let (http, ws) = wait_for("the stopped server's ports to be free again", Duration::from_secs(30), || {
        Some((TcpListener::bind(http_addr).ok()?, TcpListener::bind(ws_addr).ok()?))
    });
    let _restarted = spawn_app_on_listeners(&db_url, &[], http, ws);
    let after = send("sent after the restart");

    let lines: Vec<String> = std::iter::from_fn(|| tail.next_line("the messages after the restart")).collect();
    assert_eq!(
        lines,
        [
            format!("[{while_down}] {}: sent while the server was down", bob.username),
            format!("[{after}] {}: sent after the restart", bob.username),
        ],
        "each message once, in order, then tail ends on --count 2"
    );
}

#[test]
fn a_wrong_password_is_one_line_with_the_code_and_a_failure() {
    let app = spawn_app();
    let alice = app.create_user();
    let terminal = Terminal::new(&app);
    let output = terminal.run(&["login", &alice.username], "not the password\n");
    assert!(!output.status.success(), "a refused login fails");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("messaging: ") && stderr.contains("(invalid_credentials)"), "{stderr}");
    assert!(!terminal.token_file.exists(), "no token is written");
}

#[test]
fn without_a_command_or_a_token_the_client_says_what_to_do() {
    let app = spawn_app();
    let terminal = Terminal::new(&app);
    let usage = terminal.run(&[], "");
    assert!(!usage.status.success());
    assert!(String::from_utf8_lossy(&usage.stderr).starts_with("messaging: usage: messaging client login"));
    let chats = terminal.run(&["chats"], "");
    assert!(!chats.status.success());
    assert!(String::from_utf8_lossy(&chats.stderr).contains("run messaging client login first"));
}
