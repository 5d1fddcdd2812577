//! Hostile clients on the HTTP port: the raw bytes that once broke the server
//! (the hardening issue's probes), each refused or answered with the right
//! status while the process and its workers live on.
//!
//! Every test writes its bytes on a plain `TcpStream` and ends by checking
//! that an honest `GET /healthz` is still answered within a second. The fixes
//! are patches to the vendored tiny_http; `vendor/tiny_http/PATCHES.md` names
//! the test that fails without each one.
//!
//! `proxy.rs` sends the same probes through nginx, with the helpers and the
//! probe builders marked `pub(crate)` here.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::support::{check_error, spawn_app, spawn_app_with, wait_for, Resp, TestApp};

/// How long an honest request may take while hostile ones are in the server.
pub(crate) const HONEST: Duration = Duration::from_secs(1);
/// How long a test waits for an answer or a close it expects.
pub(crate) const ANSWER: Duration = Duration::from_secs(5);
/// How many hostile connections a probe opens: twice the harness's `WORKERS`.
pub(crate) const CROWD: usize = 8;

/// One raw connection: exactly the bytes a test writes, and its answers read
/// one at a time, each before a deadline.
pub(crate) struct Conn {
    pub(crate) stream: TcpStream,
    /// Bytes received and not yet parsed into a response.
    pending: Vec<u8>,
}

impl Conn {
    pub(crate) fn open(addr: SocketAddr) -> Conn {
        Conn::on(TcpStream::connect_timeout(&addr, ANSWER).unwrap_or_else(|e| panic!("connect to {addr}: {e}")))
    }

    /// A connection the caller made (from a chosen local address, say).
    pub(crate) fn on(stream: TcpStream) -> Conn {
        stream.set_write_timeout(Some(ANSWER)).expect("set a write timeout");
        Conn { stream, pending: Vec::new() }
    }

    pub(crate) fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads what has arrived, waiting until `deadline` at most: `Ok(0)` at the end of the stream.
    fn fill(&mut self, deadline: Instant) -> std::io::Result<usize> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut chunk = [0u8; 16384];
        let n = self.stream.read(&mut chunk)?;
        self.pending.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// The next response, or why none came within `within`.
    pub(crate) fn response(&mut self, within: Duration) -> Result<Resp, String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some((resp, used)) = parse(&self.pending)? {
                self.pending.drain(..used);
                return Ok(resp);
            }
            match self.fill(deadline) {
                Ok(0) => return Err(format!("the connection closed ({} bytes unparsed)", self.pending.len())),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(format!("no complete answer within {within:?} ({} bytes so far)", self.pending.len()))
                }
                Err(e) => return Err(format!("the connection failed: {e}")),
            }
        }
    }

    /// Asserts that the server closes this connection within `within`, and
    /// returns the bytes that arrived before the close.
    pub(crate) fn assert_closed(&mut self, within: Duration, what: &str) -> Vec<u8> {
        let deadline = Instant::now() + within;
        loop {
            match self.fill(deadline) {
                Ok(0) => return std::mem::take(&mut self.pending),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("{what}: the server kept the connection open for {within:?}")
                }
                // A reset: the server closed with bytes of ours unread.
                Err(_) => return std::mem::take(&mut self.pending),
            }
        }
    }
}

/// Parses one response from the start of `raw`: `None` until it is complete,
/// else the response and the number of bytes it took.
fn parse(raw: &[u8]) -> Result<Option<(Resp, usize)>, String> {
    let Some(head_end) = find(raw, b"\r\n\r\n") else { return Ok(None) };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = match status_line.split(' ').collect::<Vec<_>>()[..] {
        [version, status, ..] if version.starts_with("HTTP/1.") => {
            status.parse::<u16>().map_err(|_| format!("a bad status line {status_line:?}"))?
        }
        _ => return Err(format!("a bad status line {status_line:?}")),
    };
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .collect();
    let header = |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
    let rest = &raw[head_end + 4..];
    let (body, used) = if (100..200).contains(&status) || status == 204 || status == 304 {
        (Vec::new(), 0)
    } else if header("Transfer-Encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
        match decode_chunked(rest)? {
            Some(decoded) => decoded,
            None => return Ok(None),
        }
    } else if let Some(length) = header("Content-Length") {
        let length: usize = length.parse().map_err(|_| format!("a bad Content-Length {length:?}"))?;
        if rest.len() < length {
            return Ok(None);
        }
        (rest[..length].to_vec(), length)
    } else {
        return Err(format!("a response without a length:\n{head}"));
    };
    Ok(Some((Resp { status, headers, body }, head_end + 4 + used)))
}

/// Decodes a chunked body at the start of `raw`: `None` until its last chunk
/// has arrived, else the body and the number of bytes it took.
fn decode_chunked(raw: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let (mut body, mut at) = (Vec::new(), 0);
    loop {
        let Some(line_end) = find(&raw[at..], b"\r\n") else { return Ok(None) };
        let size_text = String::from_utf8_lossy(&raw[at..at + line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("a bad chunk size {size_text:?}"))?;
        at += line_end + 2;
        if raw.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&raw[at..at + size]);
        at += size + 2;
        if size == 0 {
            return Ok(Some((body, at)));
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// Asserts that an honest `GET /healthz` on a new connection is answered
/// `200` within `HONEST`: the process and at least one worker are alive.
pub(crate) fn assert_healthy(app: &TestApp, after: &str) {
    let mut conn = Conn::open(app.http_addr);
    conn.send(b"GET /healthz HTTP/1.1\r\nHost: honest\r\nConnection: close\r\n\r\n")
        .unwrap_or_else(|e| panic!("after {after}: cannot send GET /healthz: {e}"));
    let resp = conn.response(HONEST).unwrap_or_else(|e| panic!("after {after}: GET /healthz: {e}"));
    resp.assert_status(200, &format!("GET /healthz after {after}"));
}

/// Opens a connection and sends `request` on it.
pub(crate) fn send(app: &TestApp, request: &str) -> Conn {
    let mut conn = Conn::open(app.http_addr);
    conn.send(request.as_bytes()).unwrap_or_else(|e| panic!("cannot send {request:?}: {e}"));
    conn
}

/// `GET /healthz` declaring a body of `length` bytes it never sends.
pub(crate) fn get_declaring(length: &str) -> String {
    format!("GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n")
}

/// A petabyte, and lengths of 2^64 - 1 and 2^63, which once overflowed an allocation.
pub(crate) const PETABYTE: &str = "1000000000000000";
pub(crate) const PAST_2_TO_THE_63: [&str; 2] = ["18446744073709551615", "9223372036854775808"];

// See: the hardening issue, probe 1. tiny_http discarded an unread body by
// allocating all of its declared length, so this aborted the process.
#[test]
fn a_petabyte_content_length_is_answered_without_allocating_it() {
    let app = spawn_app();

    let mut conn = send(&app, &get_declaring(PETABYTE));

    let resp = conn.response(ANSWER).unwrap_or_else(|e| panic!("GET /healthz declaring a petabyte body: {e}"));
    resp.assert_status(200, "GET /healthz declaring a petabyte body");
    conn.assert_closed(ANSWER, "a petabyte left unread");
    assert_healthy(&app, "a petabyte Content-Length");
}

// See: the hardening issue, probe 2. A length of 2^63 or more overflowed the
// allocation's capacity: a panic outside catch_unwind that killed the worker.
#[test]
fn content_lengths_of_2_to_the_63_and_more_kill_no_worker() {
    let app = spawn_app();

    for length in PAST_2_TO_THE_63.repeat(5) {
        let mut conn = send(&app, &get_declaring(length));

        let what = format!("GET /healthz declaring {length} bytes");
        conn.response(ANSWER).unwrap_or_else(|e| panic!("{what}: {e}")).assert_status(200, &what);
        conn.assert_closed(ANSWER, &what);
    }

    assert_healthy(&app, "ten Content-Lengths of 2^63 and more");
}

// See: the hardening issue, probe 3. The unread body was discarded on the
// worker, which waited for bytes the client never sent.
#[test]
fn gets_declaring_bodies_they_never_send_hold_no_worker() {
    let app = spawn_app();

    let mut held = Vec::new();
    for idx in 0..CROWD {
        let mut conn = send(&app, &get_declaring("100000"));
        let what = format!("GET /healthz #{idx} declaring a body it never sends");
        conn.response(ANSWER).unwrap_or_else(|e| panic!("{what}: {e}")).assert_status(200, &what);
        held.push(conn);
    }

    assert_healthy(&app, "GETs declaring bodies they never send");
}

/// A sign-up that waits for `100 Continue` before sending its 10 MB body.
pub(crate) const EXPECT_100_CONTINUE_FOR_10_MB: &str = "POST /api/users HTTP/1.1\r\nHost: x\r\n\
    Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 10000000\r\n\r\n";

// See: the hardening issue, probe 3. The handler refused the body from its
// declared length, then the worker waited for the body the client held back.
#[test]
fn expect_100_continue_with_a_body_over_the_limit_gets_413_and_no_100_continue() {
    let app = spawn_app();

    for idx in 0..CROWD {
        let mut conn = send(&app, EXPECT_100_CONTINUE_FOR_10_MB);

        let what = format!("POST #{idx} expecting 100-continue for 10 MB");
        let resp = conn.response(ANSWER).unwrap_or_else(|e| panic!("{what}: {e}"));
        check_error(&resp, 413, "payload_too_large", None);
        conn.assert_closed(ANSWER, &what);
    }

    assert_healthy(&app, "bodies over the limit behind Expect: 100-continue");
}

/// A request that a proxy in front could take for part of the body before it.
const HIDDEN: &str = "GET /healthz HTTP/1.1\r\nHost: hidden\r\n\r\n";

/// Asserts that `conn` got `status` with the contract's error `code`, then
/// was closed without answering anything else (no hidden request ran), each
/// within `within`; returns the refusal.
pub(crate) fn assert_refused_alone(conn: &mut Conn, status: u16, code: &str, what: &str, within: Duration) -> Resp {
    let resp = conn.response(within).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(resp.status, status, "{what}: expected {status}, got:\n{}", resp.describe());
    check_error(&resp, status, code, None);
    let after = conn.assert_closed(within, what);
    assert!(after.is_empty(), "{what}: answered more after the refusal:\n{}", String::from_utf8_lossy(&after));
    resp
}

/// A request whose body's length is in doubt, with a request hidden where a
/// proxy in front could take it for the body, and the server's refusal.
pub(crate) struct Framing {
    pub(crate) what: &'static str,
    /// The request: `GET /healthz` with these framing headers and this body.
    pub(crate) request: String,
    pub(crate) status: u16,
    pub(crate) code: &'static str,
}

/// The rows of `ambiguous_framing_is_refused_and_the_hidden_request_never_runs`,
/// each hiding `hidden`.
pub(crate) fn ambiguous_framings(hidden: &str) -> Vec<Framing> {
    let row = |what, headers: &[(&str, &str)], body: &str, status, code| {
        let headers: String = headers.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
        Framing { what, request: format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{headers}\r\n{body}"), status, code }
    };
    let invalid = |what, headers: &[(&str, &str)], body: &str| row(what, headers, body, 400, "invalid_request");
    vec![
        invalid(
            "two Content-Lengths",
            &[("Content-Length", "0"), ("Content-Length", &hidden.len().to_string())],
            hidden,
        ),
        invalid("two equal Content-Lengths", &[("Content-Length", "0"), ("Content-Length", "0")], hidden),
        invalid(
            "Content-Length with Transfer-Encoding",
            &[("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
            hidden,
        ),
        invalid("Content-Length: 5x", &[("Content-Length", "5x")], hidden),
        invalid("Content-Length: -1", &[("Content-Length", "-1")], hidden),
        invalid("Content-Length: +2", &[("Content-Length", "+2")], &format!("{{}}{hidden}")),
        invalid("an empty Content-Length", &[("Content-Length", "")], hidden),
        invalid("Content-Length: 0, 0", &[("Content-Length", "0, 0")], hidden),
        invalid("Transfer-Encoding: gzip", &[("Transfer-Encoding", "gzip")], hidden),
        invalid(
            "two Transfer-Encodings",
            &[("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")],
            hidden,
        ),
        row(
            "a Content-Length past 2^64",
            &[("Content-Length", "99999999999999999999999")],
            hidden,
            413,
            "payload_too_large",
        ),
    ]
}

// See: the hardening issue, probe 5 (request smuggling). Each row hides a
// request in bytes that a proxy in front could take for the body; tiny_http
// ran it (it read `+2` as 2, ignored `-1` and `5x`, and decoded `gzip` as
// chunked, leaving an unread chunked body to be parsed as the next request).
#[test]
fn ambiguous_framing_is_refused_and_the_hidden_request_never_runs() {
    let app = spawn_app();

    for Framing { what, request, status, code } in ambiguous_framings(HIDDEN) {
        let mut conn = send(&app, &request);

        assert_refused_alone(&mut conn, status, code, what, ANSWER);
    }

    assert_healthy(&app, "ambiguous framing");
}

/// A `POST` whose one chunk is a byte over the default `MAX_BODY_BYTES`,
/// followed by `hidden` in the same chunk.
pub(crate) fn chunked_over_the_limit(hidden: &str) -> String {
    let chunk = format!("{}{hidden}", "a".repeat(65536 + 1));
    format!(
        "POST /api/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    )
}

// See: the hardening issue, probe 5. The handler stopped reading a chunked
// body one byte past the limit; tiny_http parsed the rest of the chunk as the
// next request.
#[test]
fn a_chunked_body_over_the_limit_ends_its_connection() {
    let app = spawn_app();

    let mut conn = send(&app, &chunked_over_the_limit(HIDDEN));

    assert_refused_alone(&mut conn, 413, "payload_too_large", "a chunked body over the limit", ANSWER);
    assert_healthy(&app, "a chunked body over the limit");
}

/// A login with an empty body (so `400` naming `login`) that asks to upgrade.
pub(crate) const POST_WITH_CONNECTION_UPGRADE: &str = "POST /api/sessions HTTP/1.1\r\nHost: x\r\n\
    Connection: upgrade\r\nUpgrade: websocket\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";

// See: the hardening issue, probe 3. With `Connection: upgrade`, tiny_http
// handed the handler the raw socket as the body, so reading the body waited
// for the client to hang up.
#[test]
fn a_post_with_connection_upgrade_is_framed_by_its_content_length() {
    let app = spawn_app();

    let mut held = Vec::new();
    for idx in 0..CROWD {
        let mut conn = send(&app, POST_WITH_CONNECTION_UPGRADE);

        let what = format!("POST #{idx} with Connection: upgrade");
        let resp = conn.response(ANSWER).unwrap_or_else(|e| panic!("{what}: {e}"));
        check_error(&resp, 400, "invalid_request", Some("login"));
        held.push(conn);
    }

    assert_healthy(&app, "POSTs with Connection: upgrade");
}

/// Sends `request` on a new connection without minding a write that fails
/// (the server may refuse and close before it has read everything), and
/// returns the connection to read the answer from.
pub(crate) fn send_regardless(app: &TestApp, request: &[u8]) -> Conn {
    let mut conn = Conn::open(app.http_addr);
    let _ = conn.send(request);
    conn
}

/// `GET` with a 100 KiB path.
pub(crate) fn long_request_line() -> String {
    format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(100 * 1024))
}

// See: the hardening issue, probe 6. tiny_http read request lines and
// headers of any size into memory.
#[test]
fn a_request_line_over_8_kib_is_414() {
    let app = spawn_app();

    let mut conn = send_regardless(&app, long_request_line().as_bytes());

    assert_refused_alone(&mut conn, 414, "invalid_request", "a 100 KiB request line", ANSWER);
    assert_healthy(&app, "a 100 KiB request line");
}

/// `GET /healthz` requests whose headers are over 32 KiB, or over 100 lines
/// (the last), each with what it is.
pub(crate) fn oversized_heads() -> [(&'static str, String); 4] {
    let many_small: String = (0..10_000).map(|idx| format!("X-{idx}: {idx}\r\n")).collect();
    let forty_of_1_kib: String = (0..40).map(|idx| format!("X-{idx}: {}\r\n", "b".repeat(1024))).collect();
    [
        ("a 1 MiB header", format!("X-Big: {}\r\n", "b".repeat(1024 * 1024))),
        ("forty 1 KiB headers", forty_of_1_kib),
        ("10,000 headers", many_small),
        ("101 headers", (0..100).map(|idx| format!("X-{idx}: {idx}\r\n")).collect()),
    ]
    .map(|(what, headers)| (what, format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{headers}\r\n")))
}

// See: the hardening issue, probe 6.
#[test]
fn headers_over_32_kib_or_100_lines_are_431() {
    let app = spawn_app();

    for (what, request) in oversized_heads() {
        let mut conn = send_regardless(&app, request.as_bytes());

        assert_refused_alone(&mut conn, 431, "invalid_request", what, ANSWER);
    }

    let hundred: String = (0..99).map(|idx| format!("X-{idx}: {idx}\r\n")).collect();
    let mut conn = send(&app, &format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{hundred}\r\n"));
    let resp = conn.response(ANSWER).unwrap_or_else(|e| panic!("100 headers: {e}"));
    resp.assert_status(200, "exactly 100 headers are allowed");
    assert_healthy(&app, "oversized headers");
}

/// Four connections, each writing a header line of 64 MiB that never ends,
/// from a thread of its own that stops when the connection closes.
pub(crate) fn unfinished_header_lines(app: &TestApp) -> Vec<Conn> {
    let chunk = vec![b'c'; 64 * 1024];
    let mut conns = Vec::new();
    for _ in 0..4 {
        let mut conn = Conn::open(app.http_addr);
        conn.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Unfinished: ").expect("send the start of a header");
        let mut writer = conn.stream.try_clone().expect("clone the stream");
        let chunk = chunk.clone();
        // Writes until 64 MiB are out or the server closes; never the end of the line.
        std::thread::spawn(move || (0..1024).try_for_each(|_| writer.write_all(&chunk)));
        conns.push(conn);
    }
    conns
}

// See: the hardening issue, probe 6: four unfinished 64 MiB header lines
// took the server from 7.5 to 270 MB.
#[test]
fn unfinished_64_mib_header_lines_are_refused_without_reading_them() {
    let app = spawn_app();

    let mut conns = unfinished_header_lines(&app);

    for (idx, conn) in conns.iter_mut().enumerate() {
        assert_refused_alone(conn, 431, "invalid_request", &format!("unfinished header line #{idx}"), ANSWER);
    }
    assert_healthy(&app, "four unfinished 64 MiB header lines");
}

// See: the hardening issue, probe 4. tiny_http parsed a client's pipelined
// requests while answering the first, so every worker took one of them and
// waited to write after the one before, which waited for a client that never
// read; an honest request queued behind the rest.
#[test]
fn a_client_pipelining_large_gets_and_never_reading_holds_one_worker_at_most() {
    let app = spawn_app();
    let (request, _) = large_history(&app);

    let conn = send(&app, &request.repeat(300));

    wait_for("the first answers to arrive", ANSWER, || conn.stream.peek(&mut [0; 1]).ok().filter(|n| *n > 0));
    assert_healthy(&app, "300 pipelined GETs whose answers are never read");
}

/// A chat with 100 messages of 4000 characters, and a request that reads all
/// of them (400 KB), on a connection kept alive.
pub(crate) fn large_history(app: &TestApp) -> (String, i64) {
    let user = app.create_user();
    let chat_id = crate::chats::create_group(app, &user, "long", &[])["id"].as_i64().expect("a chat id");
    let content = "x".repeat(4000);
    for _ in 0..100 {
        crate::messages::send(app, &user, chat_id, &content);
    }
    let request = format!(
        "GET /api/chats/{chat_id}/messages?limit=100 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        user.token
    );
    (request, chat_id)
}

// See: the hardening issue, probe 8. tiny_http's task pool handed a new
// connection to an idle thread it still counted as idle after waking it, so
// of connections arriving together some waited for a thread until another
// connection ended, which keep-alive clients never do.
#[test]
fn keep_alive_clients_starting_together_are_all_answered() {
    let app = spawn_app();

    // Eight clients lost the race in four runs out of five; more clients, and
    // rounds that start with the threads the last round left idle, lose it
    // every time.
    for round in 1..=3 {
        keep_alive_clients_together(&app, round * 4 * CROWD);
    }
    assert_healthy(&app, "keep-alive clients starting together");
}

/// Opens `together` connections, sends `GET /healthz` on each, keeping them
/// alive, and asserts that every one is answered.
pub(crate) fn keep_alive_clients_together(app: &TestApp, together: usize) -> Vec<Conn> {
    let mut conns: Vec<Conn> = (0..together).map(|_| Conn::open(app.http_addr)).collect();
    for conn in &mut conns {
        conn.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").expect("send GET /healthz");
    }

    for (idx, conn) in conns.iter_mut().enumerate() {
        let what = format!("keep-alive client #{idx} of {together} starting together");
        conn.response(ANSWER).unwrap_or_else(|e| panic!("{what}: {e}")).assert_status(200, &what);
    }
    conns
}

/// Writes `first`, then `then` every 100 ms for up to ten seconds, from a
/// thread of its own that stops at the first failed write: a slow client.
pub(crate) fn trickle(conn: &Conn, first: &'static [u8], then: &'static [u8]) {
    let mut writer = conn.stream.try_clone().expect("clone the stream");
    std::thread::spawn(move || {
        writer.write_all(first)?;
        for _ in 0..100 {
            std::thread::sleep(Duration::from_millis(100));
            writer.write_all(then)?;
        }
        Ok::<(), std::io::Error>(())
    });
}

// See: the hardening issue, probe 7. Nothing bounded how long a head could
// take, so a client trickling one header line at a time held its connection
// (and its thread) for as long as it liked.
#[test]
fn a_head_that_trickles_in_is_cut_at_the_head_deadline_with_408() {
    let app = spawn_app_with(&[("HTTP_HEAD_TIMEOUT_SECS", "1")]);
    let conn = Conn::open(app.http_addr);

    trickle(&conn, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"X-More: a\r\n");

    let mut conn = conn;
    let resp = conn.response(ANSWER).unwrap_or_else(|e| panic!("a trickling head: {e}"));
    resp.assert_status(408, "a head still arriving after HTTP_HEAD_TIMEOUT_SECS");
    conn.assert_closed(ANSWER, "a trickling head");
    assert_healthy(&app, "a trickling head");
}

// See: the hardening issue, probe 7: ~10,100 idle connections, each with a
// thread, exhausted the descriptors.
#[test]
fn a_connection_that_never_sends_a_request_is_closed_quietly_at_the_head_deadline() {
    let app = spawn_app_with(&[("HTTP_HEAD_TIMEOUT_SECS", "1")]);
    let mut conn = Conn::open(app.http_addr);

    let got = conn.assert_closed(ANSWER, "a connection that sends nothing");

    assert!(got.is_empty(), "a connection that never began a request got:\n{}", String::from_utf8_lossy(&got));
    assert_healthy(&app, "a connection that sends nothing");
}

// See: the hardening issue, probe 7.
#[test]
fn an_idle_keep_alive_connection_is_closed_quietly_after_the_idle_timeout() {
    let app = spawn_app_with(&[("HTTP_IDLE_TIMEOUT_SECS", "1")]);
    let mut conn = send(&app, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    conn.response(ANSWER).unwrap_or_else(|e| panic!("GET /healthz: {e}")).assert_status(200, "GET /healthz");

    let got = conn.assert_closed(ANSWER, "an idle keep-alive connection");

    assert!(got.is_empty(), "an idle connection got:\n{}", String::from_utf8_lossy(&got));
    assert_healthy(&app, "an idle keep-alive connection");
}

// See: the hardening issue, probe 3: a body declared and never sent held its
// reader until the client hung up.
#[test]
fn a_body_that_never_arrives_is_cut_at_the_body_deadline() {
    let app = spawn_app_with(&[("HTTP_BODY_TIMEOUT_SECS", "1"), ("MAX_BODY_BYTES", "200000")]);
    let post = |length: usize| {
        format!(
            "POST /api/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n{{"
        )
    };

    // A small body is read before the request reaches a worker: tiny_http answers 408.
    let mut small = send(&app, &post(1000));
    let resp = small.response(ANSWER).unwrap_or_else(|e| panic!("a small body never sent: {e}"));
    resp.assert_status(408, "a small body still missing after HTTP_BODY_TIMEOUT_SECS");
    small.assert_closed(ANSWER, "a small body never sent");

    // A large one is read by the handler, which cannot read it: 400, then the connection closes.
    let mut large = send(&app, &post(150_000));
    let resp = large.response(ANSWER).unwrap_or_else(|e| panic!("a large body never sent: {e}"));
    check_error(&resp, 400, "invalid_request", None);
    large.assert_closed(ANSWER, "a large body never sent");

    assert_healthy(&app, "bodies that never arrive");
}

// See: the hardening issue, probe 4: a client that never reads its answers
// held the worker writing to it for ever.
#[test]
fn a_client_that_never_reads_loses_its_connection_and_frees_its_worker_after_the_write_timeout() {
    let app = spawn_app_with(&[("HTTP_WRITE_TIMEOUT_SECS", "2"), ("WORKERS", "1")]);
    let (request, _) = large_history(&app);
    let honest_answer = || {
        let mut honest = send(&app, "GET /healthz HTTP/1.1\r\nHost: honest\r\nConnection: close\r\n\r\n");
        honest.response(HONEST).is_ok_and(|resp| resp.status == 200)
    };

    let mut conn = send(&app, &request.repeat(300));

    // 120 MB of answers fill every buffer on the way: the only worker blocks
    // writing, and an honest request waits...
    wait_for("the only worker to block writing", 4 * ANSWER, || (!honest_answer()).then_some(()));
    // ...until the worker gives up on the client.
    wait_for("the only worker to give up on a client that never reads", 2 * ANSWER, || honest_answer().then_some(()));
    let got = conn.assert_closed(ANSWER, "a client that never reads");
    let answers = got.windows(b"HTTP/1.1 200".len()).filter(|w| w == b"HTTP/1.1 200").count();
    assert!(answers < 300, "the server wrote all {answers} answers to a client that stopped reading");
}

/// The server's end of `conn`, found among this process's descriptors (the
/// server runs in the test process) and read through a duplicate of it.
fn server_end(conn: &Conn) -> TcpStream {
    use std::os::fd::{BorrowedFd, RawFd};

    let (ours, theirs) = (conn.stream.local_addr().expect("our address"), conn.stream.peer_addr().expect("theirs"));
    for entry in std::fs::read_dir("/proc/self/fd").expect("list this process's descriptors") {
        let Some(fd) = entry.ok().and_then(|e| e.file_name().to_str()?.parse::<RawFd>().ok()) else { continue };
        // SAFETY: the descriptor is borrowed only to duplicate it at once. If
        // another thread closed it since the listing, the duplication fails or
        // copies whatever reused the number, which the address check rejects.
        let Ok(owned) = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned() else { continue };
        let stream = TcpStream::from(owned);
        if stream.local_addr().ok() == Some(theirs) && stream.peer_addr().ok() == Some(ours) {
            return stream;
        }
    }
    panic!("no socket in this process is the server's end of {ours} -> {theirs}");
}

// See: the hardening issue ("TCP_NODELAY on every accepted socket"): an
// answer written in pieces could wait for the client's delayed ACK.
#[test]
fn accepted_sockets_have_tcp_nodelay() {
    let app = spawn_app();
    let mut conn = send(&app, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    conn.response(ANSWER).unwrap_or_else(|e| panic!("GET /healthz: {e}")).assert_status(200, "GET /healthz");

    let nodelay = server_end(&conn).nodelay().expect("read TCP_NODELAY");

    assert!(nodelay, "the server's end of an HTTP connection has TCP_NODELAY off");
    assert_healthy(&app, "checking TCP_NODELAY");
}

// See: the hardening issue, probe 7: tiny_http started a thread for every
// connection, with no bound.
#[test]
fn connections_past_the_bound_get_503_until_one_ends() {
    let app = spawn_app_with(&[("HTTP_MAX_CONNECTIONS", "4")]);
    let mut held: Vec<Conn> = (0..4).map(|_| Conn::open(app.http_addr)).collect();

    let mut refused = Conn::open(app.http_addr);

    let resp = refused.response(ANSWER).unwrap_or_else(|e| panic!("a fifth connection: {e}"));
    check_error(&resp, 503, "unavailable", None);
    refused.assert_closed(ANSWER, "a connection past the bound");
    held.pop();
    wait_for("a place to come free", ANSWER, || {
        let mut honest = send(&app, "GET /healthz HTTP/1.1\r\nHost: honest\r\nConnection: close\r\n\r\n");
        honest.response(HONEST).ok().filter(|resp| resp.status == 200)
    });
}

// Found by the fuzz target `http` (fuzz/regressions/http): tiny_http answered
// a request line of a version above 1.1 through a second response writer,
// which waits for the request's own, held by the same thread; that thread,
// the connection's descriptors and its place were taken for good.
#[test]
fn request_lines_of_http_2_get_505_and_their_connections_end() {
    let app = spawn_app_with(&[("HTTP_MAX_CONNECTIONS", "4")]);

    for (idx, version) in ["HTTP/2.0", "HTTP/3.0"].repeat(4).into_iter().enumerate() {
        let mut conn = send(&app, &format!("GET /healthz {version}\r\nHost: x\r\n\r\n"));

        let what = format!("GET /healthz {version}, connection #{idx}");
        conn.response(ANSWER).unwrap_or_else(|e| panic!("{what}: {e}")).assert_status(505, &what);
        conn.assert_closed(ANSWER, &what);
    }

    assert_healthy(&app, "eight request lines of HTTP/2.0 and 3.0");
}

// Found by the fuzz target `http` (fuzz/regressions/http): tiny_http wrote the
// request line's version into its answer's status line, so a request claiming
// HTTP/2.0 with a malformed header got `HTTP/2.0 400`, a version this server
// does not speak (RFC 9110, section 6.2: a sender must not send one).
#[test]
fn answers_name_http_1_0_or_1_1_whatever_the_request_line_claims() {
    let app = spawn_app();
    // (request, the start of the answer)
    let cases = [
        ("GET /healthz HTTP/2.0\r\nHost: x\r\nno colon\r\n\r\n", "HTTP/1.1 400 "),
        ("GET /healthz HTTP/3.0\r\nHost: x\r\nExpect: a-miracle\r\n\r\n", "HTTP/1.1 417 "),
        ("GET /healthz HTTP/0.9\r\nHost: x\r\nConnection: close\r\n\r\n", "HTTP/1.0 200 "),
    ];

    for (request, expected) in cases {
        let mut conn = send(&app, request);

        let answer = conn.assert_closed(ANSWER, request);
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with(expected), "{request:?} got:\n{answer}");
    }

    assert_healthy(&app, "request lines of HTTP/2.0, 3.0 and 0.9");
}

/// The compiled server, on a migrated database, once it accepts connections,
/// with its open files limit then lowered to NOFILE (`prlimit --pid`); with
/// its HTTP address. It starts with room to spare, since `serve` refuses a
/// limit its connection bounds do not fit in: running out of descriptors
/// then takes something the bounds do not count, such as a lowered limit.
fn serve_with_descriptors(nofile: u32) -> (crate::binary::Running, SocketAddr, SocketAddr) {
    use crate::binary::{free_addr, Running, SECRET_KEY, VARIABLES};

    let db_url = crate::support::fresh_database();
    let (http_addr, ws_addr) = (free_addr(), free_addr());
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_messaging"));
    command.arg("serve");
    for name in VARIABLES {
        command.env_remove(name);
    }
    command.envs([
        ("DATABASE_URL", db_url.as_str()),
        ("SECRET_KEY", SECRET_KEY),
        ("HTTP_ADDR", &http_addr.to_string()),
        ("WS_ADDR", &ws_addr.to_string()),
        ("WORKERS", "2"),
        // Info: the WebSocket listener says when it accepts again.
        ("LOG", "info"),
        // Room for the bounds in the limit the test inherits, before it is lowered.
        ("WS_MAX_CONNECTIONS", "1000"),
    ]);
    let mut server = Running::start(command, format!("messaging serve, its open files limit then lowered to {nofile}"));
    // Started, not just listening: the connections made while it starts are its own.
    wait_for("the server to start", 2 * ANSWER, || {
        if let Some(status) = server.exited() {
            panic!("serve exited early ({status}):\n{}", server.stderr());
        }
        healthz_answers(http_addr).then_some(())
    });
    let lowered = std::process::Command::new("prlimit")
        .args([format!("--pid={}", server.pid()), format!("--nofile={nofile}:{nofile}")])
        .status()
        .expect("run prlimit --pid");
    assert!(lowered.success(), "prlimit --pid could not lower the server's open files limit to {nofile}");
    (server, http_addr, ws_addr)
}

/// Opens up to `n` connections to `addr`, stopping at the first that does not
/// connect within 200 ms: the server is out of descriptors and its backlog full.
fn open_many(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n).map_while(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()).collect()
}

/// Whether `GET /healthz` on `addr` is answered `200` within `HONEST`.
fn healthz_answers(addr: SocketAddr) -> bool {
    let Ok(mut conn) = TcpStream::connect_timeout(&addr, HONEST) else { return false };
    let request = b"GET /healthz HTTP/1.1\r\nHost: honest\r\nConnection: close\r\n\r\n";
    if conn.set_read_timeout(Some(HONEST)).and_then(|()| conn.write_all(request)).is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    answer.starts_with(b"HTTP/1.1 200")
}

/// Whether a WebSocket handshake without a credential on `addr` is answered
/// `401` within `HONEST`: the WebSocket listener accepts.
fn ws_handshake_answers(addr: SocketAddr) -> bool {
    let Ok(mut conn) = TcpStream::connect_timeout(&addr, HONEST) else { return false };
    let request = "GET /ws HTTP/1.1\r\nHost: honest\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    if conn.set_read_timeout(Some(HONEST)).and_then(|()| conn.write_all(request.as_bytes())).is_err() {
        return false;
    }
    let mut answer = [0; 12];
    conn.read_exact(&mut answer).is_ok() && answer.starts_with(b"HTTP/1.1 401")
}

// See: the hardening issue, probe 7: 400 connections under
// `prlimit --nofile=256` made accept fail with EMFILE, which ended tiny_http's
// accept thread, and with it the listener, for good. Both listeners must
// accept again once descriptors are free, and log a run of failures once.
#[test]
fn running_out_of_descriptors_stops_accepting_only_until_some_are_free() {
    let (mut server, http_addr, ws_addr) = serve_with_descriptors(256);

    let crowd = open_many(http_addr, 400);
    wait_for("the server to run out of descriptors", ANSWER, || {
        server.stderr().contains("Too many open files").then_some(())
    });
    // Waiting in the WebSocket listener's backlog while descriptors are out: its
    // accept fails again every 100 ms for as long as this lasts.
    let waiting = open_many(ws_addr, 4);
    wait_for("the WebSocket listener to run out of descriptors", ANSWER, || {
        server.stderr().contains("WebSocket accept failed").then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    drop((crowd, waiting));

    let deadline = Instant::now() + ANSWER;
    while !(healthz_answers(http_addr) && ws_handshake_answers(ws_addr)) {
        assert!(Instant::now() < deadline, "a listener does not accept once the crowd has left:\n{}", server.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(server.exited().is_none(), "the server exited:\n{}", server.stderr());
    let stderr = server.stderr();
    let lines = |msg: &str| stderr.lines().filter(|line| line.contains(msg)).count();
    let (failed, recovered) = (lines("msg=\"WebSocket accept failed\""), lines("msg=\"WebSocket accept works again\""));
    assert!(
        recovered >= 1 && failed <= recovered,
        "one line per run of failures, {failed} for {recovered} runs:\n{stderr}"
    );
}

/// A login declaring a 2,000-byte body and sending its first byte only.
pub(crate) const POST_DECLARING_2000_BYTES: &str =
    "POST /api/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2000\r\n\r\n{";

// See: the hardening issue, probe 3: handlers read bodies over 1 KiB from the
// socket, so bodies declared and never sent held a worker each.
#[test]
fn posts_declaring_bodies_they_never_send_hold_no_worker() {
    let app = spawn_app();

    let held: Vec<Conn> = (0..CROWD).map(|_| send(&app, POST_DECLARING_2000_BYTES)).collect();

    assert_healthy(&app, "POSTs declaring bodies they never send");
    drop(held);
}

// See: the review of the hardening work. Patch 13 read only small
// Content-Length bodies on the connection's thread: a chunked body, or one
// behind `Expect: 100-continue`, that never arrived still held a worker until
// the body deadline.
#[test]
fn chunked_and_100_continue_bodies_held_back_hold_no_worker() {
    let app = spawn_app();
    let head = "POST /api/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n";
    let chunked = format!("{head}Transfer-Encoding: chunked\r\n\r\n10\r\n{{");
    let expecting = format!("{head}Expect: 100-continue\r\nContent-Length: 2000\r\n\r\n");

    let held: Vec<Conn> = (0..CROWD).flat_map(|_| [send(&app, &chunked), send(&app, &expecting)]).collect();

    assert_healthy(&app, "chunked and 100-continue bodies held back");
    drop(held);
}

#[test]
fn a_small_body_behind_expect_100_continue_gets_100_continue_then_its_answer() {
    let app = spawn_app();
    let body = r#"{"login":"nobody","password":"wrong password"}"#;
    let mut conn = send(
        &app,
        &format!(
            "POST /api/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        ),
    );

    let interim = conn.response(ANSWER).unwrap_or_else(|e| panic!("100 Continue: {e}"));
    interim.assert_status(100, "the interim answer to Expect: 100-continue");
    conn.send(body.as_bytes()).expect("send the body");
    let resp = conn.response(ANSWER).unwrap_or_else(|e| panic!("the answer to the login: {e}"));
    check_error(&resp, 401, "invalid_credentials", None);
}

// Found by review of patch 14: a chunked body that cannot be decoded got no
// answer at all, and a chunk's size line was read without a bound.
#[test]
fn a_malformed_or_endless_chunked_body_gets_400_and_ends_its_connection() {
    let app = spawn_app();
    let head = "POST /api/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";

    let mut malformed = send(&app, &format!("{head}ZZ\r\n{{}}\r\n0\r\n\r\n"));
    assert_refused_alone(&mut malformed, 400, "invalid_request", "a chunk size that is not hex", ANSWER);

    // A size line of 2 MiB of zeros: past the 1 MiB the wire may carry.
    let mut endless = send(&app, head);
    let zeros = vec![b'0'; 64 * 1024];
    for _ in 0..32 {
        if endless.send(&zeros).is_err() {
            break;
        }
    }
    assert_refused_alone(&mut endless, 400, "invalid_request", "a chunk size line of 2 MiB", ANSWER);
    assert_healthy(&app, "malformed and endless chunked bodies");
}

// See: the hardening issue, probe 7, at full size: ~10,100 idle connections
// (no timeout, a thread each) exhausted the descriptors and the accept
// thread died. Slow, so it runs only with SOAK=1 (`make soak`).
#[test]
fn soak_ten_thousand_idle_connections() {
    if std::env::var_os("SOAK").is_none() {
        eprintln!("skipped: set SOAK=1 (make soak) to open 10,100 connections");
        return;
    }
    let (mut server, http_addr, _) = serve_with_descriptors(20_000);

    // Eight threads, each connection given time for a dropped SYN to be sent
    // again: past 1024, each is answered 503 and closed, but it is made.
    let crowd: Vec<TcpStream> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    (0..10_100 / 8 + 1)
                        .filter_map(|_| TcpStream::connect_timeout(&http_addr, 4 * HONEST).ok())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads.into_iter().flat_map(|thread| thread.join().expect("a connecting thread")).collect()
    });

    assert!(crowd.len() > 10_000, "only {} of 10,100 connections opened", crowd.len());
    // Past HTTP_MAX_CONNECTIONS (1024) the rest got 503; the idle ones that
    // got in are closed at the head deadline (10 s), and room comes back.
    wait_for("GET /healthz with 10,100 connections open", 4 * ANSWER, || healthz_answers(http_addr).then_some(()));
    drop(crowd);
    let deadline = Instant::now() + ANSWER;
    while !healthz_answers(http_addr) {
        assert!(Instant::now() < deadline, "no GET /healthz once the crowd has left:\n{}", server.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(server.exited().is_none(), "the server exited:\n{}", server.stderr());
}
