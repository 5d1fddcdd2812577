//! `messaging client ...`: a small terminal client of the public API, so the
//! API can be tried without curl. It speaks to the server only as any other
//! client would, over HTTP/1.1 (one `Connection: close` request per call) and
//! the WebSocket, and imports nothing of the server's: what it relies on is
//! the contract (docs/api.md), not the code behind it.
//!
//! The token lives in a file of mode 0600 (`MESSAGING_TOKEN_FILE`, else
//! `$XDG_CONFIG_HOME/messaging/token`, else `~/.config/messaging/token`), and
//! the password is read from stdin, never from argv, where `ps` would show it.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use tungstenite::Message as Frame;

pub const USAGE: &str = "usage: messaging client login <login> | chats | send <chat_id> <text...> \
| tail <chat_id> [--count N] | search <text...>";

/// The server when `MESSAGING_API` is not set: `make run`'s address.
const DEFAULT_API: &str = "http://127.0.0.1:8080";

/// How many messages `tail` shows before it goes live.
const TAIL_HISTORY: u32 = 20;

/// A page of `/events` while `tail` catches up (the contract's maximum).
const EVENTS_PAGE: u32 = 1000;

/// Connect, read and write timeouts of one HTTP request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest answer read: far above any page the server gives (1,000
/// events of 4,000 characters), far below what would hurt a terminal's host.
const MAX_ANSWER_BYTES: u64 = 64 << 20;

/// How long `tail` waits for a frame before it takes the WebSocket for dead
/// and reconnects: the server pings every 30 seconds (contract section 6).
const WS_SILENCE: Duration = Duration::from_secs(90);

/// The pause before `tail` reconnects a dropped WebSocket.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// Why a command failed: `Api` (the server said no, or the answer made no
/// sense) ends the command; `Io` (the connection failed) may be retried.
#[derive(Debug, PartialEq)]
enum Failure {
    Api(String),
    Io(String),
}

impl Failure {
    fn into_line(self) -> String {
        match self {
            Failure::Api(line) | Failure::Io(line) => line,
        }
    }
}

/// Runs `messaging client <args>`; the error is the one line to print.
pub fn run(args: &[&str]) -> Result<(), String> {
    let env = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    let server = Server::parse(&env("MESSAGING_API").unwrap_or_else(|| DEFAULT_API.to_string()))?;
    let token_file = token_path(env)?;
    let outcome = match args {
        ["login", login] => login_with_stdin(&server, &token_file, login),
        ["chats"] => Session::open(server, &token_file).and_then(|s| s.chats()),
        ["send", chat, text @ ..] if !text.is_empty() => {
            Session::open(server, &token_file).and_then(|s| s.send(parse_id(chat)?, &text.join(" ")))
        }
        ["tail", chat] => Session::open(server, &token_file).and_then(|s| s.tail(parse_id(chat)?, None)),
        ["tail", chat, "--count", n] => match n.parse::<u64>().ok().filter(|n| *n > 0) {
            Some(count) => Session::open(server, &token_file).and_then(|s| s.tail(parse_id(chat)?, Some(count))),
            None => Err(Failure::Api(USAGE.to_string())),
        },
        ["search", text @ ..] if !text.is_empty() => {
            Session::open(server, &token_file).and_then(|s| s.search(&text.join(" ")))
        }
        _ => Err(Failure::Api(USAGE.to_string())),
    };
    outcome.map_err(Failure::into_line)
}

fn parse_id(text: &str) -> Result<i64, Failure> {
    text.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| Failure::Api(format!("not a chat id: {text:?}")))
}

/// Where the token is kept, from the environment as `lookup` reads it.
fn token_path(lookup: impl Fn(&str) -> Option<String>) -> Result<PathBuf, String> {
    if let Some(file) = lookup("MESSAGING_TOKEN_FILE") {
        return Ok(PathBuf::from(file));
    }
    let config = match (lookup("XDG_CONFIG_HOME"), lookup("HOME")) {
        (Some(config), _) => PathBuf::from(config),
        (None, Some(home)) => PathBuf::from(home).join(".config"),
        (None, None) => return Err("set MESSAGING_TOKEN_FILE, XDG_CONFIG_HOME or HOME for the token file".to_string()),
    };
    Ok(config.join("messaging").join("token"))
}

/// The server's address, from an `http://host:port` URL.
#[derive(Debug, PartialEq)]
struct Server {
    /// `host:port`, to connect to and to send as `Host`.
    authority: String,
}

impl Server {
    fn parse(url: &str) -> Result<Server, String> {
        let bad = || format!("MESSAGING_API must look like http://host:port, not {url:?}");
        let rest = url.strip_prefix("http://").ok_or_else(bad)?.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') || rest.contains('@') {
            return Err(bad());
        }
        let authority = if rest.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok()) {
            rest.to_string()
        } else {
            format!("{rest}:80")
        };
        Ok(Server { authority })
    }

    /// One request; a 2xx answer's JSON body (`null` when empty), or the
    /// server's error as one line.
    fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> Result<Value, Failure> {
        let io = |e: std::io::Error| Failure::Io(format!("cannot reach {}: {e}", self.authority));
        let mut stream = TcpStream::connect(&self.authority).map_err(io)?;
        stream.set_read_timeout(Some(HTTP_TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(HTTP_TIMEOUT)).map_err(io)?;
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", self.authority);
        if let Some(token) = token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        if !body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body.as_bytes())).map_err(io)?;
        let mut answer = Vec::new();
        (&mut stream).take(MAX_ANSWER_BYTES + 1).read_to_end(&mut answer).map_err(io)?;
        if answer.len() as u64 > MAX_ANSWER_BYTES {
            return Err(Failure::Io(format!("the server's answer is over {MAX_ANSWER_BYTES} bytes")));
        }
        let (status, body) = parse_response(&answer)?;
        let body = body.as_slice();
        if !(200..300).contains(&status) {
            return Err(Failure::Api(error_line(status, body)));
        }
        if body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(body).map_err(|e| Failure::Api(format!("the server's answer is not JSON: {e}")))
    }
}

/// The status and body of a whole HTTP/1.1 response read to its end (the
/// request said `Connection: close`, so the end of the stream ends the body),
/// its chunks joined when it came chunked (tiny_http chunks 32 KiB and more).
fn parse_response(answer: &[u8]) -> Result<(u16, Vec<u8>), Failure> {
    let garbled = || Failure::Io("the server's answer is not an HTTP response".to_string());
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(garbled)?;
    let status_line = answer[..split].split(|b| *b == b'\r').next().unwrap_or_default();
    let status = std::str::from_utf8(status_line)
        .ok()
        .and_then(|line| line.strip_prefix("HTTP/1.1 ").or(line.strip_prefix("HTTP/1.0 ")))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(garbled)?;
    let head = String::from_utf8_lossy(&answer[..split]).to_ascii_lowercase();
    let body = &answer[split + 4..];
    let chunked = head.lines().any(|line| line.starts_with("transfer-encoding:") && line.contains("chunked"));
    match chunked {
        true => dechunk(body).ok_or_else(garbled).map(|body| (status, body)),
        false => Ok((status, body.to_vec())),
    }
}

/// A chunked body's chunks, joined; `None` when the framing is broken.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut joined = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(joined);
        }
        joined.extend_from_slice(body.get(..size)?);
        body = body.get(size..)?.strip_prefix(b"\r\n")?;
    }
}

/// The contract's error body as one line: its message and code.
fn error_line(status: u16, body: &[u8]) -> String {
    let body = serde_json::from_slice::<Value>(body).unwrap_or_default();
    let error = &body["error"];
    match error["message"].as_str().zip(error["code"].as_str()) {
        Some((message, code)) => format!("{} ({})", printable(message), printable(code)),
        None => format!("the server answered {status}"),
    }
}

/// Reads the password from stdin, logs in and keeps the token.
fn login_with_stdin(server: &Server, token_file: &PathBuf, login: &str) -> Result<(), Failure> {
    let mut password = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut password)
        .map_err(|e| Failure::Api(format!("cannot read the password from stdin: {e}")))?;
    let password = password.trim_end_matches(['\r', '\n']);
    let session = server.call("POST", "/api/sessions", None, Some(&json!({"login": login, "password": password})))?;
    let token = session["token"].as_str().ok_or_else(|| Failure::Api("the session has no token".to_string()))?;
    save_token(token_file, token).map_err(|e| Failure::Api(format!("cannot write {}: {e}", token_file.display())))?;
    let user = &session["user"];
    println!("logged in as {} (id {})", user["username"].as_str().unwrap_or("?"), user["id"]);
    Ok(())
}

/// Writes the token to a file only its owner may read, whatever mode an
/// older file had.
fn save_token(path: &PathBuf, token: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    let mut file = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(token.as_bytes())
}

/// A logged-in client: the server and the token from the token file.
struct Session {
    server: Server,
    token: String,
}

impl Session {
    fn open(server: Server, token_file: &PathBuf) -> Result<Session, Failure> {
        let token = fs::read_to_string(token_file).map_err(|e| {
            Failure::Api(format!("no token in {} ({e}): run messaging client login first", token_file.display()))
        })?;
        Ok(Session { server, token: token.trim().to_string() })
    }

    fn get(&self, path: &str) -> Result<Value, Failure> {
        self.server.call("GET", path, Some(&self.token), None)
    }

    fn post(&self, path: &str, body: Option<&Value>) -> Result<Value, Failure> {
        self.server.call("POST", path, Some(&self.token), body)
    }

    /// The caller's chats, most recent activity first.
    fn chats(&self) -> Result<(), Failure> {
        let me = self.get("/api/users/me")?;
        let chats = self.get("/api/chats")?;
        for chat in chats["chats"].as_array().into_iter().flatten() {
            println!("{}", chat_line(chat, me["id"].as_i64().unwrap_or_default()));
        }
        Ok(())
    }

    /// Sends one message. The client_id makes a retry after a failed
    /// connection safe: the server stores the message once.
    fn send(&self, chat: i64, content: &str) -> Result<(), Failure> {
        let body = json!({"content": content, "client_id": random_client_id()?});
        let path = format!("/api/chats/{chat}/messages");
        let message = match self.post(&path, Some(&body)) {
            Err(Failure::Io(_)) => self.post(&path, Some(&body))?,
            outcome => outcome?,
        };
        println!("sent seq {}", message["seq"]);
        Ok(())
    }

    /// Messages whose words match `text`, newest first.
    fn search(&self, text: &str) -> Result<(), Failure> {
        let names = self.names()?;
        let found = self.get(&format!("/api/search?q={}", percent_encode(text)))?;
        for message in found["messages"].as_array().into_iter().flatten() {
            println!("chat {} {}", message["chat_id"], message_line(message, &names));
        }
        Ok(())
    }

    /// Usernames of everyone in the caller's chats, by id.
    fn names(&self) -> Result<HashMap<i64, String>, Failure> {
        let chats = self.get("/api/chats")?;
        Ok(chats["chats"].as_array().into_iter().flatten().flat_map(member_names).collect())
    }

    /// The last messages of a chat, then each new one as it arrives, until
    /// `count` new ones have (or for ever). A dropped WebSocket is opened
    /// again, and `/events?after=` fills the gap: a message is printed once.
    fn tail(&self, chat: i64, count: Option<u64>) -> Result<(), Failure> {
        let names: HashMap<i64, String> = member_names(&self.get(&format!("/api/chats/{chat}"))?).collect();
        let history = self.get(&format!("/api/chats/{chat}/messages?limit={TAIL_HISTORY}"))?;
        let mut tail = Tail { chat, seen: 0, left: count, names };
        for message in history["messages"].as_array().into_iter().flatten() {
            println!("{}", message_line(message, &tail.names));
            tail.seen = tail.seen.max(message["seq"].as_i64().unwrap_or_default());
        }
        println!("-- live: new messages of chat {chat} follow");
        loop {
            match self.follow(&mut tail) {
                Ok(()) => return Ok(()),
                Err(Failure::Io(cause)) => {
                    eprintln!("messaging: {cause}; reconnecting");
                    std::thread::sleep(RECONNECT_PAUSE);
                }
                Err(api) => return Err(api),
            }
        }
    }

    /// One WebSocket connection's worth of `tail`: subscribe, catch up from
    /// the log, then read events; `Ok` once `tail.left` reaches zero.
    fn follow(&self, tail: &mut Tail) -> Result<(), Failure> {
        let ticket = self.post("/api/ws-tickets", None)?;
        let (Some(url), Some(ticket)) = (ticket["ws_url"].as_str(), ticket["ticket"].as_str()) else {
            return Err(Failure::Api("the ticket has no ws_url or ticket".to_string()));
        };
        let (mut socket, _) = tungstenite::connect(format!("{url}?ticket={}", percent_encode(ticket)))
            .map_err(|e| Failure::Io(format!("cannot open the WebSocket {url}: {e}")))?;
        let io = |e: tungstenite::Error| Failure::Io(format!("the WebSocket failed: {e}"));
        if let tungstenite::stream::MaybeTlsStream::Plain(stream) = socket.get_ref() {
            stream.set_read_timeout(Some(WS_SILENCE)).map_err(|e| io(tungstenite::Error::Io(e)))?;
        }
        // The socket is subscribed once it says ready; events after that come
        // over it, and those before come from the log.
        loop {
            if let Frame::Text(text) = socket.read().map_err(io)? {
                if serde_json::from_str::<Value>(&text).is_ok_and(|frame| frame["type"] == "ready") {
                    break;
                }
            }
        }
        loop {
            let before = tail.seen;
            let page = self.get(&format!("/api/chats/{}/events?after={}&limit={EVENTS_PAGE}", tail.chat, tail.seen))?;
            for event in page["events"].as_array().into_iter().flatten() {
                if tail.take(event) {
                    return Ok(());
                }
            }
            // A page that moved nothing on cannot be followed by one that does.
            if page["has_more"] != true || tail.seen == before {
                break;
            }
        }
        loop {
            match socket.read().map_err(io)? {
                Frame::Text(text) => {
                    let frame: Value = serde_json::from_str(&text).unwrap_or_default();
                    if frame["type"] == "event" && tail.take(&frame["event"]) {
                        let _ = socket.close(None);
                        return Ok(());
                    }
                }
                Frame::Close(_) => return Err(Failure::Io("the server closed the WebSocket".to_string())),
                _ => {}
            }
        }
    }
}

/// What `tail` has shown: the chat, the last seq seen, and how many more
/// messages to show (`None`: no end).
struct Tail {
    chat: i64,
    seen: i64,
    left: Option<u64>,
    names: HashMap<i64, String>,
}

impl Tail {
    /// Takes one event from the log or the WebSocket: prints it when it is a
    /// new message of this chat, skips what was seen; true when done.
    fn take(&mut self, event: &Value) -> bool {
        let seq = event["seq"].as_i64().unwrap_or_default();
        if event["chat_id"].as_i64() != Some(self.chat) || seq <= self.seen {
            return false;
        }
        self.seen = seq;
        if event["type"] != "message.created" {
            return false;
        }
        println!("{}", message_line(&event["message"], &self.names));
        if let Some(left) = self.left.as_mut() {
            *left -= 1;
            return *left == 0;
        }
        false
    }
}

/// `(id, username)` of each member of a chat.
fn member_names(chat: &Value) -> impl Iterator<Item = (i64, String)> + '_ {
    chat["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|member| Some((member["id"].as_i64()?, member["username"].as_str()?.to_string())))
}

/// One line of `chats`: id, name (the title, or the other members), unread
/// count, and the last message.
fn chat_line(chat: &Value, me: i64) -> String {
    let names: HashMap<i64, String> = member_names(chat).collect();
    let title = match chat["title"].as_str() {
        Some(title) => printable(title),
        None => {
            let others: Vec<String> = member_names(chat).filter(|(id, _)| *id != me).map(|(_, name)| name).collect();
            others.join(", ")
        }
    };
    let last = match &chat["last_message"] {
        Value::Null => "(no messages)".to_string(),
        message => message_line(message, &names),
    };
    format!("{}\t{title}\t{} unread\t{last}", chat["id"], chat["unread_count"])
}

/// One message as `[seq] sender: content`.
fn message_line(message: &Value, names: &HashMap<i64, String>) -> String {
    let sender = message["sender_id"].as_i64().unwrap_or_default();
    let name = names.get(&sender).cloned().unwrap_or_else(|| format!("user {sender}"));
    let content = if message["deleted"] == true { "(deleted)" } else { message["content"].as_str().unwrap_or("") };
    format!("[{}] {name}: {}", message["seq"], printable(content))
}

/// Other people's text for a terminal: a control character (an escape
/// sequence's start, a line break, …) is written as `\u{..}`, so a message
/// can neither move the cursor nor rewrite what is on the screen.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() && c != '\t' { format!("\\u{{{:x}}}", c as u32) } else { c.to_string() })
        .collect()
}

/// `text` as a URL query value: unreserved bytes as they are, every other
/// byte of its UTF-8 as `%XX`.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// 16 random bytes in hex: a client_id no other send repeats.
fn random_client_id() -> Result<String, Failure> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| Failure::Api(format!("no random bytes for a client_id: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn the_token_file_is_the_variable_then_xdg_then_home() {
        let all = [("MESSAGING_TOKEN_FILE", "/t/token"), ("XDG_CONFIG_HOME", "/x"), ("HOME", "/h")];
        assert_eq!(token_path(env(&all)), Ok(PathBuf::from("/t/token")));
        assert_eq!(token_path(env(&all[1..])), Ok(PathBuf::from("/x/messaging/token")));
        assert_eq!(token_path(env(&all[2..])), Ok(PathBuf::from("/h/.config/messaging/token")));
        assert!(token_path(env(&[])).is_err());
    }

    #[test]
    fn the_server_is_an_http_url_with_an_optional_port() {
        let authority = |url: &str| Server::parse(url).map(|s| s.authority);
        assert_eq!(authority("http://127.0.0.1:8080"), Ok("127.0.0.1:8080".to_string()));
        assert_eq!(authority("http://localhost:9000/"), Ok("localhost:9000".to_string()));
        assert_eq!(authority("http://example.com"), Ok("example.com:80".to_string()));
        assert_eq!(authority("http://[::1]:8080"), Ok("[::1]:8080".to_string()));
        for bad in ["https://example.com", "127.0.0.1:8080", "http://", "http://a/api", "http://u@h:1"] {
            assert!(Server::parse(bad).is_err(), "{bad} is refused");
        }
    }

    #[test]
    fn other_peoples_text_cannot_steer_the_terminal() {
        assert_eq!(printable("hi\u{1b}[2J\tthere\n"), "hi\\u{1b}[2J\tthere\\u{a}");
        assert_eq!(printable("héllo 👍"), "héllo 👍");
    }

    #[test]
    fn a_response_gives_its_status_and_body() {
        let answer = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_response(answer), Ok((201, b"{}".to_vec())));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4;x=y\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Ok((200, br#"{"a":1}"#.to_vec())), "chunks joined");
        let broken = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nshort\r\n";
        assert!(parse_response(broken).is_err(), "a chunk shorter than its size");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err(), "no end of head");
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_err(), "not HTTP");
    }

    #[test]
    fn an_error_is_its_message_and_code() {
        let body = br#"{"error":{"code":"invalid_credentials","message":"wrong login or password"}}"#;
        assert_eq!(error_line(401, body), "wrong login or password (invalid_credentials)");
        assert_eq!(error_line(502, b"<html>bad gateway</html>"), "the server answered 502");
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(percent_encode("a-Z_0.~"), "a-Z_0.~");
        assert_eq!(percent_encode("hi there&x=1"), "hi%20there%26x%3D1");
        assert_eq!(percent_encode("é"), "%C3%A9");
    }

    #[test]
    fn ids_are_positive_integers() {
        assert_eq!(parse_id("42"), Ok(42));
        for bad in ["0", "-1", "x", ""] {
            assert!(parse_id(bad).is_err(), "{bad:?} is refused");
        }
    }

    #[test]
    fn lines_name_the_sender_and_the_chat() {
        let chat = json!({
            "id": 7, "title": null, "unread_count": 2,
            "members": [{"id": 1, "username": "alice"}, {"id": 2, "username": "bob"}],
            "last_message": {"seq": 3, "sender_id": 2, "content": "hi", "deleted": false},
        });
        assert_eq!(chat_line(&chat, 1), "7\tbob\t2 unread\t[3] bob: hi");
        let group = json!({"id": 8, "title": "team", "unread_count": 0, "members": [], "last_message": null});
        assert_eq!(chat_line(&group, 1), "8\tteam\t0 unread\t(no messages)");
        let deleted = json!({"seq": 4, "sender_id": 9, "content": "", "deleted": true});
        assert_eq!(message_line(&deleted, &HashMap::new()), "[4] user 9: (deleted)");
    }

    #[test]
    fn tail_prints_each_new_message_of_its_chat_once_and_counts_them() {
        let mut tail = Tail { chat: 1, seen: 2, left: Some(2), names: HashMap::new() };
        let event = |chat: i64, seq: i64, kind: &str| json!({"chat_id": chat, "seq": seq, "type": kind, "message": {"seq": seq, "sender_id": 1, "content": "x"}});
        assert!(!tail.take(&event(1, 2, "message.created")), "seen already");
        assert!(!tail.take(&event(2, 5, "message.created")), "another chat");
        assert!(!tail.take(&event(1, 3, "reaction.added")), "not a new message, but seen");
        assert_eq!((tail.seen, tail.left), (3, Some(2)));
        assert!(!tail.take(&event(1, 4, "message.created")));
        assert!(!tail.take(&event(1, 4, "message.created")), "a repeat is skipped");
        assert_eq!(tail.left, Some(1));
        assert!(tail.take(&event(1, 5, "message.created")), "the last one wanted ends it");
    }
}
