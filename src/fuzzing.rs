//! What the fuzz targets in `fuzz/` call, and what `tests/it/fuzz.rs` calls
//! to replay their findings (`fuzz/regressions/`), so both run the same code.
//!
//! The modules the targets reach are private, so this one gives each target
//! a function of raw bytes that runs what the server runs on such bytes, up
//! to where the database would come in, and panics where the server would
//! misbehave. It is hidden from the documentation and is no API: it changes
//! with the targets.

use std::io::{self, Cursor, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

use crate::accounts::NewUser;
use crate::auth;
use crate::chats;
use crate::config::Config;
use crate::error::ApiError;
use crate::forwarded;
use crate::http::{self, Body, Query, Reply};
use crate::messages;
use crate::model::UserId;
use crate::router::{self, Route};
use crate::server;
use crate::words;
use crate::ws::{self, Command};

/// How long the loopback server may take to answer an input and close.
const ANSWER: Duration = Duration::from_secs(5);

/// Every body field a handler or a frame reads.
const FIELDS: [&str; 20] = [
    "username",
    "email",
    "password",
    "current_password",
    "new_password",
    "login",
    "title",
    "is_group",
    "member_ids",
    "user_ids",
    "user_id",
    "content",
    "client_id",
    "reply_to_seq",
    "seq",
    "type",
    "chat_id",
    "a",
    "",
    "\u{0}",
];

/// The configuration the harness's server runs with: the defaults, and
/// loopback as a trusted proxy so that `X-Forwarded-For` is parsed.
fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let lookup = |name: &str| match name {
            "DATABASE_URL" => Some("postgresql://fuzz@localhost/fuzz".to_string()),
            "SECRET_KEY" => Some("fuzzing only, never a real secret key".to_string()),
            "TRUSTED_PROXIES" => Some("127.0.0.0/8".to_string()),
            _ => None,
        };
        Config::from_lookup(lookup).expect("the defaults are a valid configuration")
    })
}

/// Target `http`: `input` as the bytes of one connection to a tiny_http
/// server on loopback (the vendored one, with the server's limits), started
/// once per process, whose worker routes each request, reads its query,
/// headers and body as the handlers would, and answers as `server::handle`
/// does. The connection's write side is shut after the input; returns every
/// byte answered until the server closed.
///
/// # Panics
/// When one of the server's threads panicked (in the fuzzer, libfuzzer's
/// panic hook has aborted the process by then), the server neither finishes
/// nor closes within 5 seconds, or it answers something that is not an HTTP
/// response, or a 500.
pub fn http(input: &[u8]) -> Vec<u8> {
    static SERVER: OnceLock<SocketAddr> = OnceLock::new();
    let addr = *SERVER.get_or_init(start_http);
    assert_eq!(SERVER_PANICS.load(Ordering::SeqCst), 0, "an earlier input made the harness's server panic");
    let stream = TcpStream::connect(addr).expect("connect to the harness's server");
    stream.set_write_timeout(Some(ANSWER)).expect("set a write timeout");
    let answer = std::thread::scope(|scope| {
        scope.spawn(|| {
            // The server may close before it has read it all (after a 414, say).
            let _ = (&stream).write_all(input);
            let _ = stream.shutdown(Shutdown::Write);
        });
        read_until_closed(&stream)
    });
    assert_eq!(SERVER_PANICS.load(Ordering::SeqCst), 0, "this input made the harness's server panic");
    let status_line = answer.split(|b| *b == b'\n').next().unwrap_or_default();
    if !answer.is_empty() {
        let status = status_line.get(9..12).and_then(|s| std::str::from_utf8(s).ok()?.parse::<u16>().ok());
        let well_formed = status_line.starts_with(b"HTTP/1.") && status_line.get(8) == Some(&b' ');
        assert!(
            well_formed && status.is_some_and(|s| (100..600).contains(&s)),
            "not an HTTP answer: {:?}",
            String::from_utf8_lossy(&answer)
        );
        assert_ne!(status, Some(500), "a 500: {:?}", String::from_utf8_lossy(&answer));
    }
    answer
}

/// Reads until the server closes; a reset counts as a close.
fn read_until_closed(mut stream: &TcpStream) -> Vec<u8> {
    let deadline = Instant::now() + ANSWER;
    let mut answer = Vec::new();
    let mut chunk = [0; 16384];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the server kept the connection open for {ANSWER:?} after the input ended");
        stream.set_read_timeout(Some(left)).expect("set a read timeout");
        match stream.read(&mut chunk) {
            Ok(0) => return answer,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return answer,
        }
    }
}

/// Panics in the threads of the harness's server: its worker and tiny_http's
/// threads, the only threads without a name (in a test process that runs
/// other servers too, which plain `cargo test` does, their tiny_http threads
/// count as well).
static SERVER_PANICS: AtomicUsize = AtomicUsize::new(0);

/// Starts the harness's server: the patched tiny_http with the server's
/// limits, and one worker (inputs come one connection at a time).
fn start_http() -> SocketAddr {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if matches!(std::thread::current().name(), None | Some("fuzz-http-worker")) {
            SERVER_PANICS.fetch_add(1, Ordering::SeqCst);
        }
        previous(info);
    }));
    let config = config();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a loopback port");
    let addr = listener.local_addr().expect("the listener's address");
    let server = tiny_http::Server::from_listener_with_limits(listener, None, config.http_limits.clone())
        .expect("start tiny_http");
    std::thread::Builder::new()
        .name("fuzz-http-worker".into())
        .spawn(move || loop {
            // An accept error is reported once per run, and the accept loop goes on.
            let Ok(mut request) = server.recv() else { continue };
            let request_id = server::request_id(http::header(&request, "X-Request-Id"));
            let reply = answer(&mut request, config).unwrap_or_else(|error| Reply::error(&error));
            let _ = request.respond(server::tiny_response(reply, &request_id));
        })
        .expect("start the harness's worker");
    addr
}

/// What the server does with a request before a handler needs the database.
fn answer(request: &mut tiny_http::Request, config: &Config) -> Result<Reply, ApiError> {
    let route = router::route(request.method().as_str(), request.url())?;
    query(&Query::parse(request.url()));
    let _ = auth::bearer_token(http::header(request, "Authorization"));
    let peer = request.remote_addr().map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |addr| addr.ip());
    let forwarded_for: Vec<&str> = (request.headers().iter())
        .filter(|h| h.field.as_str().as_str().eq_ignore_ascii_case("X-Forwarded-For"))
        .map(|h| h.value.as_str())
        .collect();
    let _ = forwarded::limit_key(config.trusted_proxies.client(peer, &forwarded_for));
    // Every POST and PATCH but these two reads a JSON body.
    let takes_body = matches!(request.method(), tiny_http::Method::Post | tiny_http::Method::Patch)
        && !matches!(route, Route::CreateWsTicket | Route::LegacyLogout);
    if takes_body {
        body(&http::read_json(request, config.max_body_bytes)?);
    }
    Ok(Reply::json(200, &serde_json::json!({ "route": route.name() })))
}

/// Target `route`: `METHOD URL` (a bare URL is a `GET`) through
/// `router::route` and `Query::parse`, and the query parameters through the
/// getters the handlers and the WebSocket handshake use.
///
/// # Panics
/// When a route's name disagrees with the method, a `405` allows the method
/// it refused or nothing, the router answers anything but 404 or 405, a
/// query getter returns a number out of its range, or a forged ticket passes.
pub fn route(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else { return };
    let (method, url) = text.split_once(' ').unwrap_or(("GET", text));
    match router::route(method, url) {
        Ok(route) => assert!(route.name().strip_prefix(method).is_some_and(|rest| rest.starts_with(" /")), "{route:?}"),
        Err(ApiError::NotFound) => {}
        Err(ApiError::MethodNotAllowed { allow }) => {
            assert!(!allow.is_empty() && allow.split(", ").all(|m| m != method), "{method} {url}: Allow: {allow}")
        }
        Err(other) => panic!("{method} {url}: {other:?}"),
    }
    query(&Query::parse(url));
}

/// The query parameters as the handlers and the WebSocket handshake read them.
fn query(query: &Query) {
    if let Ok(Some(text)) = query.text("q") {
        assert!(!text.contains('\0'));
        if let Some(tsquery) = words::tsquery(text) {
            assert!(tsquery.ends_with(":*") && !tsquery.contains('\0'), "{tsquery}");
        }
    }
    for (name, min, max) in
        [("limit", 1, 100), ("limit", 1, 200), ("limit", 1, 1000), ("before", 1, i64::MAX), ("after", 0, i64::MAX)]
    {
        if let Ok(Some(n)) = query.int(name, min, max) {
            assert!((min..=max).contains(&n), "{name}={n}");
        }
    }
    if let Some(ticket) = query.get("ticket") {
        assert!(auth::verify_ticket(&config().secret_key, ticket).is_none(), "a forged ticket passed: {ticket}");
    }
    let _ = query.get("chat_id").map(str::parse::<i64>);
}

/// Target `json`: bytes as a request body (`http::parse_body`) and as a
/// frame (`http::parse_frame`), then through every getter and check the
/// handlers and the WebSocket reader run on a body before the database.
///
/// # Panics
/// When the two parsers disagree, or disagree with serde_json on the same
/// bytes (same value when accepted; refused as not JSON only when serde_json
/// refuses it), or a getter contradicts the parsed fields.
pub fn json(input: &[u8]) {
    let parsed = http::parse_body(input);
    assert_eq!(parsed.is_ok(), http::parse_frame(input).is_ok(), "parse_body and parse_frame disagree");
    let plain = serde_json::from_slice::<Value>(input);
    match &parsed {
        Ok(fields) => assert_eq!(plain.as_ref().ok(), Some(&Value::Object(fields.fields().clone()))),
        Err(error) => match error.message().as_str() {
            "body is not valid JSON" => assert!(plain.is_err(), "serde_json accepts it: {plain:?}"),
            "body must be a JSON object" => assert!(plain.is_ok_and(|value| !value.is_object())),
            "body has a key more than once" => {}
            other => panic!("refused for an unknown reason: {other}"),
        },
    }
    if let Ok(parsed) = parsed {
        body(&parsed);
    }
    frame_text(input);
}

/// Every getter on every field, and the handlers' own checks of a body.
fn body(body: &Body) {
    let fields = body.fields();
    for field in FIELDS {
        let value = fields.get(field);
        let absent = matches!(value, None | Some(Value::Null));
        match body.opt_str(field) {
            Ok(Some(text)) => {
                assert!(!text.contains('\0') && value.and_then(Value::as_str) == Some(text));
                assert_eq!(body.str(field).ok(), Some(text));
            }
            Ok(None) => assert!(absent && body.str(field).is_err()),
            Err(_) => assert!(body.str(field).is_err()),
        }
        match body.opt_i64(field) {
            Ok(Some(n)) => assert_eq!((value.and_then(Value::as_i64), body.i64(field).ok()), (Some(n), Some(n))),
            Ok(None) => assert!(absent && body.i64(field).is_err()),
            Err(_) => assert!(body.i64(field).is_err()),
        }
        match body.opt_bool(field) {
            Ok(Some(b)) => assert_eq!(body.bool(field).ok(), Some(b)),
            Ok(None) => assert!(absent),
            Err(_) => {}
        }
        if let Ok(Some(items)) = body.opt_array(field) {
            assert_eq!(value.and_then(Value::as_array), Some(items));
        }
    }
    let _ = NewUser::parse(body);
    let title = body.opt_str("title").ok().flatten();
    if let Some(title) = title {
        let _ = chats::parse_title(title);
    }
    let members = body.opt_array("member_ids").ok().flatten().map_or(&[][..], Vec::as_slice);
    let member_ids = members.iter().filter_map(Value::as_i64).map(UserId).collect();
    let is_group = body.opt_bool("is_group").ok().flatten().unwrap_or(false);
    if let Ok(chat) = chats::parse_new_chat(UserId(1), is_group, title, member_ids) {
        assert!(chat.member_ids.len() < chats::MAX_MEMBERS && !chat.member_ids.contains(&UserId(1)));
    }
    if let Ok(draft) = messages::Draft::parse(body) {
        assert!(draft.reply_to_seq.is_none_or(|seq| seq > 0));
    }
}

/// Target `ws`: bytes from a WebSocket client after the handshake, read by
/// tungstenite in the server's role with the server's configuration, on a
/// thread with the connection threads' stack; each text message then goes
/// where `ws::read` sends it: the frame budget's `client_id`, the current
/// protocol's command, the seed's content.
///
/// # Panics
/// When tungstenite hands out a message over the configured limit, or a
/// command passes with a field its checks refuse.
pub fn ws(input: &[u8]) {
    std::thread::scope(|scope| {
        let reader = std::thread::Builder::new()
            .name("fuzz-ws-read".into())
            .stack_size(ws::STACK_SIZE)
            .spawn_scoped(scope, || read_frames(input))
            .expect("start a thread like a connection's");
        if let Err(panic) = reader.join() {
            std::panic::resume_unwind(panic);
        }
    });
}

/// `ws::read`'s loop over bytes: it stops where the server closes.
fn read_frames(input: &[u8]) {
    let config = ws::config();
    let limit = config.max_message_size.expect("the server limits messages");
    let mut socket = WebSocket::from_raw_socket(Duplex(Cursor::new(input)), Role::Server, Some(config));
    loop {
        match socket.read() {
            Ok(Message::Text(text)) => {
                assert!(text.len() <= limit, "a message of {} bytes", text.len());
                frame_text(text.as_bytes());
            }
            Ok(Message::Binary(_)) => return,
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// A text frame as `ws::read` handles it, without the database.
fn frame_text(frame: &[u8]) {
    // Over the frame budget: only the client_id is read, for the error frame.
    let body = http::parse_body(frame).ok();
    let client_id = body.as_ref().and_then(|body| body.opt_str("client_id").ok().flatten());
    let _ = ApiError::RateLimited { retry_after_secs: 1 }.to_frame(client_id).to_string();
    // The current protocol, as `ws::answer` reads it.
    match http::parse_frame(frame) {
        Ok(body) => {
            let client_id = body.opt_str("client_id").ok().flatten();
            match ws::parse_command(&body) {
                Ok(Command::Read { seq, .. }) => assert!(seq >= 0),
                Ok(Command::Send { draft, .. }) => {
                    assert!(messages::parse_content(&draft.content).is_ok());
                    assert!(draft.client_id.is_none_or(|id| (1..=64).contains(&id.chars().count())));
                    assert!(draft.reply_to_seq.is_none_or(|seq| seq > 0));
                }
                Ok(Command::Ping | Command::Typing { .. }) => {}
                Err(error) => drop(error.to_frame(client_id).to_string()),
            }
        }
        Err(error) => drop(error.to_frame(None).to_string()),
    }
    // The seed's socket, as `ws::answer_seed` reads it.
    let _ = http::parse_body(frame).and_then(|body| messages::Draft::text(body.str("content")?));
}

/// A client's bytes in; tungstenite's replies (pongs, the close) go nowhere.
struct Duplex<'a>(Cursor<&'a [u8]>);

impl Read for Duplex<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Duplex<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
