//! A minimal HTTP/1.1 client and the assertions that read its answers.
//!
//! Each request opens its own TCP connection and sends `Connection: close`,
//! so there is no shared state and a `TestApp` can be used from many threads.
//! The client writes exactly what the test asked for (plus `Host`,
//! `Content-Length` and `Connection` when missing), which lets tests send
//! malformed or unusual requests that a full client library would refuse.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

/// How long a test waits for one response before failing.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A user that signed up and holds a session token.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: i64,
    pub username: String,
    pub email: String,
    pub password: String,
    pub token: String,
}

/// A response as it arrived: status, headers in order, and the decoded body.
#[derive(Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[allow(dead_code)]
impl Resp {
    /// The body as JSON; panics with the whole response when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}):\n{}", self.describe()))
    }

    /// The first header called `name`, ignoring case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as text, with invalid UTF-8 replaced.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Status, headers and (the start of) the body, for failure messages.
    pub fn describe(&self) -> String {
        let mut out = format!("HTTP {}\n", self.status);
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\n"));
        }
        let text = self.text();
        if text.chars().count() > 2000 {
            let start: String = text.chars().take(2000).collect();
            out.push_str(&format!("\n{start}… ({} bytes)", self.body.len()));
        } else {
            out.push_str(&format!("\n{text}"));
        }
        out
    }

    /// Asserts the status, with the whole response in the failure message.
    pub fn assert_status(&self, status: u16, what: &str) -> &Resp {
        assert_eq!(self.status, status, "{what}: expected HTTP {status}, got:\n{}", self.describe());
        self
    }
}

impl std::fmt::Debug for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Sends one request on a new connection and reads the whole response.
///
/// Adds `Host`, `Content-Length` (when there is a body, or the method usually
/// has one) and `Connection: close` unless `headers` already has them.
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    try_request(addr, method, path, headers, body).unwrap_or_else(|problem| panic!("{problem}"))
}

/// `request`, but a server that cannot be reached, or that ends the
/// connection without a complete response, is an `Err` saying so rather
/// than a panic: for servers a test kills on purpose.
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Resp, String> {
    let head = request_head(addr, method, path, headers, body);
    let what = format!("{method} {path} to {addr}");
    let stream = TcpStream::connect(addr).map_err(|e| format!("{what}: cannot connect: {e}"))?;
    exchange(stream, &what, method, head, body)
}

/// The request line and headers `request` sends: `headers`, plus `Host`,
/// `Content-Length` and `Connection: close` when missing.
fn request_head(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> String {
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !has("Host") {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let usually_has_body = matches!(method, "POST" | "PUT" | "PATCH");
    if !has("Content-Length") && !has("Transfer-Encoding") && (!body.is_empty() || usually_has_body) {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    if !has("Connection") {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    head
}

/// `request` from the local address `source` (another loopback address, such
/// as 127.0.0.2): a second client as a proxy in front sees it.
pub fn request_from(
    source: IpAddr,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let stream = connect_from(source, addr).unwrap_or_else(|e| panic!("connect to {addr} from {source}: {e}"));
    let head = request_head(addr, method, path, headers, body);
    exchange(stream, &format!("{method} {path} to {addr} from {source}"), method, head, body)
        .unwrap_or_else(|problem| panic!("{problem}"))
}

/// A TCP connection to `addr` from the local address `source`.
pub fn connect_from(source: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(&addr.into(), READ_TIMEOUT)?;
    Ok(socket.into())
}

/// Writes `head` and `body` on `stream` and reads the whole response.
fn exchange(mut stream: TcpStream, what: &str, method: &str, head: String, body: &[u8]) -> Result<Resp, String> {
    stream.set_read_timeout(Some(READ_TIMEOUT)).expect("set a read timeout");
    stream.set_write_timeout(Some(READ_TIMEOUT)).expect("set a write timeout");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    // A server may answer early (413) and close; the answer is still worth reading.
    let written = stream.write_all(&bytes).and_then(|()| stream.flush());
    let head_only = method.eq_ignore_ascii_case("HEAD");
    let raw = read_response(&mut stream, what, head_only)?;
    match parse_response(&raw, head_only) {
        Some(Ok(resp)) => Ok(resp),
        Some(Err(problem)) => Err(format!("{what}: bad response ({problem}):\n{}", String::from_utf8_lossy(&raw))),
        None => Err(format!(
            "{what}: connection closed before a complete response (write: {written:?}); got {} bytes:\n{}",
            raw.len(),
            String::from_utf8_lossy(&raw)
        )),
    }
}

/// Reads until the response is complete or the server closes the connection.
fn read_response(stream: &mut TcpStream, what: &str, head_only: bool) -> Result<Vec<u8>, String> {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if response_is_complete(&raw, head_only) {
            return Ok(raw);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(raw),
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(format!(
                    "{what}: no complete response within {READ_TIMEOUT:?}; got {} bytes:\n{}",
                    raw.len(),
                    String::from_utf8_lossy(&raw)
                ))
            }
            // A reset after the server wrote its answer (it closed with our body unread).
            Err(_) => return Ok(raw),
        }
    }
}

/// Whether `raw` holds a response whose length is known and fully arrived.
/// `head_only`: the answer to a HEAD request, which never has a body.
fn response_is_complete(raw: &[u8], head_only: bool) -> bool {
    let Some(head_end) = find(raw, b"\r\n\r\n") else { return false };
    if head_only {
        return true;
    }
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse::<u16>().ok()).unwrap_or(0);
    if status == 204 || status == 304 || (100..200).contains(&status) {
        return true;
    }
    let headers = parse_headers(&head);
    let header = |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
    let body = &raw[head_end + 4..];
    if header("Transfer-Encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        return decode_chunked(body).is_some();
    }
    match header("Content-Length").and_then(|v| v.trim().parse::<usize>().ok()) {
        Some(length) => body.len() >= length,
        None => false, // Delimited by the end of the connection.
    }
}

/// Parses what has arrived; `None` while the head is incomplete.
fn parse_response(raw: &[u8], head_only: bool) -> Option<Result<Resp, String>> {
    let head_end = find(raw, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let status_line = head.lines().next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Some(Err(format!("status line {status_line:?}")));
    }
    let status = match parts.next().and_then(|s| s.parse::<u16>().ok()) {
        Some(status) => status,
        None => return Some(Err(format!("status line {status_line:?}"))),
    };
    let headers = parse_headers(&head);
    let rest = &raw[head_end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("Transfer-Encoding") && v.to_ascii_lowercase().contains("chunked"));
    let length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("Content-Length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok());
    let body = if head_only || status == 204 || status == 304 {
        Vec::new()
    } else if chunked {
        match decode_chunked(rest) {
            Some(body) => body,
            None => return Some(Err("incomplete chunked body".into())),
        }
    } else if let Some(length) = length {
        if rest.len() < length {
            return Some(Err(format!("body has {} of {length} bytes", rest.len())));
        }
        rest[..length].to_vec()
    } else {
        rest.to_vec()
    };
    Some(Ok(Resp { status, headers, body }))
}

fn parse_headers(head: &str) -> Vec<(String, String)> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .collect()
}

/// Decodes a chunked body; `None` until the last chunk has arrived.
fn decode_chunked(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = find(raw, b"\r\n")?;
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim().to_string();
        let size = usize::from_str_radix(&size_text, 16).ok()?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        if raw.len() < size + 2 {
            return None;
        }
        body.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// Asserts that `resp` is the contract's error: status, exact shape, code,
/// field (`None`: no field), and the headers some codes require.
pub fn check_error(resp: &Resp, status: u16, code: &str, field: Option<&str>) {
    let expected = match field {
        Some(field) => format!("HTTP {status} {code} on field {field:?}"),
        None => format!("HTTP {status} {code} without a field"),
    };
    let fail =
        |problem: &str| -> ! { panic!("expected {expected}, but {problem}; the response was:\n{}", resp.describe()) };
    if resp.status != status {
        fail(&format!("the status is {}", resp.status));
    }
    let Ok(body) = serde_json::from_slice::<Value>(&resp.body) else { fail("the body is not JSON") };
    let Some(top) = body.as_object() else { fail("the body is not a JSON object") };
    if top.keys().collect::<Vec<_>>() != ["error"] {
        fail("the body has keys other than \"error\"");
    }
    let Some(error) = top["error"].as_object() else { fail("\"error\" is not an object") };
    if let Some(extra) = error.keys().find(|k| !matches!(k.as_str(), "code" | "message" | "field")) {
        fail(&format!("the error has an unexpected key {extra:?}"));
    }
    if error.get("code").and_then(Value::as_str) != Some(code) {
        fail("the code differs");
    }
    if error.get("message").and_then(Value::as_str).is_none_or(|m| m.trim().is_empty()) {
        fail("the message is missing or empty");
    }
    match (field, error.get("field")) {
        (None, None) => {}
        (Some(want), Some(Value::String(got))) if got == want => {}
        (None, Some(_)) => fail("the error names a field"),
        (Some(_), _) => fail("the field differs"),
    }
    let content_type = resp.header("Content-Type").unwrap_or("");
    if !content_type.to_ascii_lowercase().starts_with("application/json") {
        fail("the Content-Type is not application/json");
    }
    match code {
        "unauthorized" => {
            let challenge = resp.header("WWW-Authenticate").unwrap_or("");
            if !challenge.to_ascii_lowercase().starts_with("bearer") {
                fail("WWW-Authenticate: Bearer is missing");
            }
        }
        "method_not_allowed" if resp.header("Allow").is_none_or(|a| a.trim().is_empty()) => {
            fail("the Allow header is missing")
        }
        "rate_limited" => {
            let retry_after = resp.header("Retry-After").unwrap_or("");
            if retry_after.trim().parse::<u64>().is_err() {
                fail("Retry-After is missing or not a whole number of seconds");
            }
        }
        _ => {}
    }
}

/// Asserts a `429 rate_limited` whose `Retry-After` is within the login
/// limits' 5-minute window.
pub fn check_limited(resp: &Resp, what: &str) {
    assert_eq!(resp.status, 429, "{what}:\n{}", resp.describe());
    check_error(resp, 429, "rate_limited", None);
    let retry_after: u64 = resp.header("Retry-After").unwrap_or("").trim().parse().unwrap_or(0);
    assert!((1..=300).contains(&retry_after), "{what}: Retry-After {retry_after} is outside 1..=300 s");
}

/// Asserts that `value` is an object with exactly the keys `keys`.
pub fn assert_keys(value: &Value, keys: &[&str], what: &str) {
    let Some(object) = value.as_object() else { panic!("{what}: expected an object with keys {keys:?}, got {value}") };
    let mut got: Vec<&str> = object.keys().map(String::as_str).collect();
    let mut want: Vec<&str> = keys.to_vec();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want, "{what}: keys differ in {value}");
}

/// Asserts that `value` is an RFC 3339 timestamp in UTC with a `Z` suffix,
/// and returns it parsed.
pub fn assert_utc_timestamp(value: &Value, what: &str) -> time::OffsetDateTime {
    let Some(text) = value.as_str() else { panic!("{what}: expected a timestamp string, got {value}") };
    assert!(text.ends_with('Z'), "{what}: {text:?} does not end with Z");
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{what}: {text:?} is not RFC 3339: {e}"))
}

/// `n` random bytes as lowercase hex (2n characters), for unique names.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_chunked_and_close_delimited_bodies() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";
        assert!(response_is_complete(raw, false));
        assert_eq!(parse_response(raw, false).unwrap().unwrap().body, b"hi");
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n3;x=y\r\n!!!\r\n0\r\n\r\n";
        assert!(response_is_complete(raw, false));
        assert_eq!(parse_response(raw, false).unwrap().unwrap().body, b"hi!!!");
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n";
        assert!(!response_is_complete(raw, false));
        let raw = b"HTTP/1.1 200 OK\r\n\r\nuntil eof";
        assert!(!response_is_complete(raw, false));
        assert_eq!(parse_response(raw, false).unwrap().unwrap().body, b"until eof");
        let raw = b"HTTP/1.1 204 No Content\r\nX: y\r\n\r\n";
        assert!(response_is_complete(raw, false));
        assert_eq!(parse_response(raw, false).unwrap().unwrap().header("x"), Some("y"));
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        assert!(response_is_complete(raw, true));
        assert!(parse_response(raw, true).unwrap().unwrap().body.is_empty());
    }

    fn error_resp(status: u16, headers: &[(&str, &str)], body: &str) -> Resp {
        let mut all = vec![("Content-Type".to_string(), "application/json".to_string())];
        all.extend(headers.iter().map(|(n, v)| (n.to_string(), v.to_string())));
        Resp { status, headers: all, body: body.as_bytes().to_vec() }
    }

    fn rejects(resp: &Resp, status: u16, code: &str, field: Option<&str>) -> bool {
        std::panic::catch_unwind(|| check_error(resp, status, code, field)).is_err()
    }

    #[test]
    fn check_error_accepts_the_contract_shape_only() {
        let good = error_resp(400, &[], r#"{"error":{"code":"invalid_request","message":"m","field":"f"}}"#);
        check_error(&good, 400, "invalid_request", Some("f"));
        assert!(rejects(&good, 400, "invalid_request", None), "an unexpected field");
        assert!(rejects(&good, 400, "invalid_request", Some("g")), "another field");
        assert!(rejects(&good, 409, "invalid_request", Some("f")), "another status");
        assert!(rejects(&good, 400, "conflict", Some("f")), "another code");
        let extra = error_resp(404, &[], r#"{"error":{"code":"not_found","message":"m"},"x":1}"#);
        assert!(rejects(&extra, 404, "not_found", None), "an extra top-level key");
        let no_message = error_resp(404, &[], r#"{"error":{"code":"not_found"}}"#);
        assert!(rejects(&no_message, 404, "not_found", None), "no message");
        let body = r#"{"error":{"code":"unauthorized","message":"m"}}"#;
        assert!(rejects(&error_resp(401, &[], body), 401, "unauthorized", None), "no challenge");
        check_error(&error_resp(401, &[("WWW-Authenticate", "Bearer")], body), 401, "unauthorized", None);
        let body = r#"{"error":{"code":"rate_limited","message":"m"}}"#;
        assert!(rejects(&error_resp(429, &[("Retry-After", "soon")], body), 429, "rate_limited", None));
        check_error(&error_resp(429, &[("Retry-After", "60")], body), 429, "rate_limited", None);
    }
}
