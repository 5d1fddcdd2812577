//! A blocking WebSocket client for tests, on tungstenite's client side.
//!
//! Every read takes a deadline (the socket's read timeout is set to what is
//! left of it), so a test never hangs on a server that stays silent. The
//! client keeps the last few frames it read, and every failure message
//! shows them: "timed out waiting for X" is useless without "and got Y".

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::client::{client_with_config, IntoClientRequest};
use tungstenite::handshake::HandshakeError;
use tungstenite::http::{HeaderName, HeaderValue};
use tungstenite::{Error, Message, WebSocket};

/// How long connecting and the opening handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many recent frames a failure message shows.
const RECENT_FRAMES: usize = 8;

/// A handshake the server did not upgrade.
#[derive(Debug)]
pub struct Refused {
    /// The HTTP status it answered, or `None` when it answered nothing usable.
    pub status: Option<u16>,
    /// The body, or what went wrong.
    pub detail: String,
}

/// What one read gave.
#[derive(Debug)]
#[allow(dead_code)] // The payloads are read through Debug, in failure messages.
pub enum Incoming {
    Text(String),
    /// A binary frame's length: the server never sends one.
    Binary(usize),
    /// A Close frame and its code (`None`: a Close frame without one).
    Close(Option<u16>),
    /// The connection ended without a Close frame (or after one), with the reason.
    Ended(String),
    Timeout,
}

/// How a connection ended, as `expect_close` saw it.
#[derive(Debug)]
pub struct Closed {
    /// The Close frame's code; `None` when the connection ended without a
    /// Close frame or the frame had no code.
    pub code: Option<u16>,
    /// Whether a Close frame arrived (as opposed to the connection just ending).
    pub close_frame: bool,
    /// How many text frames arrived before the end.
    pub frames_before: usize,
}

/// One client connection.
pub struct WsClient {
    socket: WebSocket<TcpStream>,
    /// Names the connection in failure messages.
    what: String,
    recent: VecDeque<String>,
}

/// Opens `ws://{addr}{path_and_query}` with extra `headers`, or says why the
/// server refused.
pub fn try_connect(addr: SocketAddr, path_and_query: &str, headers: &[(&str, &str)]) -> Result<WsClient, Refused> {
    let stream = TcpStream::connect_timeout(&addr, HANDSHAKE_TIMEOUT)
        .map_err(|e| Refused { status: None, detail: format!("cannot connect to {addr}: {e}") })?;
    try_handshake(stream, addr, path_and_query, headers)
}

/// `try_connect` from the local address `source` (another loopback address,
/// such as 127.0.0.2): a second client as a proxy in front sees it.
pub fn try_connect_from(
    source: IpAddr,
    addr: SocketAddr,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> Result<WsClient, Refused> {
    let stream = super::connect_from(source, addr)
        .map_err(|e| Refused { status: None, detail: format!("cannot connect to {addr} from {source}: {e}") })?;
    try_handshake(stream, addr, path_and_query, headers)
}

/// The opening handshake of `ws://{addr}{path_and_query}` on `stream`.
fn try_handshake(
    stream: TcpStream,
    addr: SocketAddr,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> Result<WsClient, Refused> {
    let url = format!("ws://{addr}{path_and_query}");
    let mut request = url.as_str().into_client_request().unwrap_or_else(|e| panic!("bad WebSocket URL {url}: {e}"));
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes()).unwrap_or_else(|e| panic!("header name {name:?}: {e}"));
        let value = HeaderValue::from_str(value).unwrap_or_else(|e| panic!("header value {value:?}: {e}"));
        request.headers_mut().append(name, value);
    }
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).expect("set a read timeout");
    stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT)).expect("set a write timeout");
    stream.set_nodelay(true).expect("set TCP_NODELAY");
    match client_with_config(request, stream, None) {
        Ok((socket, _response)) => Ok(WsClient { socket, what: format!("WebSocket {url}"), recent: VecDeque::new() }),
        Err(HandshakeError::Failure(Error::Http(response))) => {
            let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default().into_owned();
            Err(Refused { status: Some(response.status().as_u16()), detail: body })
        }
        Err(HandshakeError::Failure(e)) => Err(Refused { status: None, detail: format!("handshake failed: {e}") }),
        // A read timeout mid-handshake looks like a non-blocking stream's WouldBlock.
        Err(HandshakeError::Interrupted(_)) => {
            Err(Refused { status: None, detail: format!("no handshake answer within {HANDSHAKE_TIMEOUT:?}") })
        }
    }
}

/// Opens a connection that must be upgraded.
pub fn connect(addr: SocketAddr, path_and_query: &str, headers: &[(&str, &str)]) -> WsClient {
    try_connect(addr, path_and_query, headers)
        .unwrap_or_else(|refused| panic!("ws://{addr}{path_and_query} with {headers:?} was refused: {refused:?}"))
}

/// Opens `/ws` with `Authorization: Bearer <token>`.
pub fn connect_bearer(addr: SocketAddr, token: &str) -> WsClient {
    connect(addr, "/ws", &[("Authorization", &format!("Bearer {token}"))])
}

/// Asserts that a handshake was refused with one of `statuses` and returns the status.
pub fn assert_refused(result: Result<WsClient, Refused>, what: &str, statuses: &[u16]) -> u16 {
    match result {
        Ok(mut client) => {
            let first = client.next(Duration::from_millis(500));
            panic!("{what}: expected HTTP {statuses:?}, but the handshake was upgraded (first frame: {first:?})")
        }
        Err(Refused { status: Some(status), .. }) if statuses.contains(&status) => status,
        Err(refused) => {
            panic!("{what}: expected HTTP {statuses:?}, got status {:?}: {}", refused.status, refused.detail)
        }
    }
}

#[allow(dead_code)]
impl WsClient {
    /// Renames the connection in failure messages (e.g. "alice on A").
    pub fn named(mut self, what: &str) -> WsClient {
        self.what = what.to_string();
        self
    }

    /// The next frame, skipping pings and pongs, or `Timeout`.
    pub fn next(&mut self, timeout: Duration) -> Incoming {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Incoming::Timeout;
            }
            // A zero timeout would mean "block forever".
            let left = left.max(Duration::from_millis(1));
            if let Err(e) = self.socket.get_mut().set_read_timeout(Some(left)) {
                return Incoming::Ended(format!("set_read_timeout: {e}"));
            }
            let incoming = match self.socket.read() {
                Ok(Message::Text(text)) => Incoming::Text(text.as_str().to_string()),
                Ok(Message::Binary(bytes)) => Incoming::Binary(bytes.len()),
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                Ok(Message::Close(frame)) => Incoming::Close(frame.map(|frame| u16::from(frame.code))),
                Err(Error::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
                Err(Error::ConnectionClosed) => Incoming::Ended("closed after the close handshake".into()),
                Err(Error::AlreadyClosed) => Incoming::Ended("already closed".into()),
                Err(e) => Incoming::Ended(e.to_string()),
            };
            self.remember(&incoming);
            return incoming;
        }
    }

    fn remember(&mut self, incoming: &Incoming) {
        let line = match incoming {
            Incoming::Text(text) if text.chars().count() > 300 => {
                format!("{}… ({} bytes)", text.chars().take(300).collect::<String>(), text.len())
            }
            Incoming::Text(text) => text.clone(),
            other => format!("{other:?}"),
        };
        if self.recent.len() == RECENT_FRAMES {
            self.recent.pop_front();
        }
        self.recent.push_back(line);
    }

    /// The last frames read, one a line, for failure messages.
    pub fn recent(&self) -> String {
        if self.recent.is_empty() {
            return "  (nothing read yet)".into();
        }
        self.recent.iter().map(|line| format!("  {line}")).collect::<Vec<_>>().join("\n")
    }

    fn fail(&self, problem: &str) -> ! {
        panic!("{}: {problem}; the last frames read were:\n{}", self.what, self.recent())
    }

    /// The next text frame as JSON; panics on a timeout, a close or non-JSON.
    pub fn recv(&mut self, timeout: Duration, what: &str) -> Value {
        match self.next(timeout) {
            Incoming::Text(text) => serde_json::from_str(&text)
                .unwrap_or_else(|e| self.fail(&format!("waiting for {what}: a text frame is not JSON ({e})"))),
            Incoming::Timeout => self.fail(&format!("no frame within {timeout:?} while waiting for {what}")),
            other => self.fail(&format!("waiting for {what}, got {other:?}")),
        }
    }

    /// Reads until a JSON frame satisfies `wanted`, skipping the others.
    pub fn recv_until(&mut self, timeout: Duration, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.fail(&format!("no {what} within {timeout:?}"));
            }
            let frame = self.recv(left, what);
            if wanted(&frame) {
                return frame;
            }
        }
    }

    /// Reads, skipping text frames, until the connection closes; panics after `timeout`.
    pub fn expect_close(&mut self, timeout: Duration, what: &str) -> Closed {
        let deadline = Instant::now() + timeout;
        let mut frames_before = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Incoming::Text(_) | Incoming::Binary(_) => frames_before += 1,
                Incoming::Close(code) => return Closed { code, close_frame: true, frames_before },
                Incoming::Ended(_) => return Closed { code: None, close_frame: false, frames_before },
                Incoming::Timeout => self.fail(&format!(
                    "{what}: still open {timeout:?} later ({frames_before} text frames read meanwhile)"
                )),
            }
        }
    }

    /// Reads for `duration` and panics if a frame satisfies `unwanted`, or the connection ends.
    pub fn assert_quiet(&mut self, duration: Duration, what: &str, unwanted: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + duration;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.next(left) {
                Incoming::Timeout => return,
                Incoming::Text(text) => {
                    let frame: Value = serde_json::from_str(&text)
                        .unwrap_or_else(|e| self.fail(&format!("{what}: a text frame is not JSON ({e})")));
                    if unwanted(&frame) {
                        self.fail(&format!("{what}: got {frame}"));
                    }
                }
                other => self.fail(&format!("{what}: the connection should stay open, got {other:?}")),
            }
        }
    }

    /// Sends any message, reporting failure to the caller (the server may have closed).
    pub fn send(&mut self, message: Message) -> Result<(), Error> {
        self.socket.get_mut().set_write_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(Error::Io)?;
        self.socket.send(message)
    }

    /// Sends `value` as a text frame; panics when that fails.
    pub fn send_json(&mut self, value: &Value) {
        if let Err(e) = self.send(Message::text(value.to_string())) {
            self.fail(&format!("sending {value}: {e}"));
        }
    }

    /// Sends `{"type":"ping"}` and waits for `{"type":"pong"}`, skipping other frames.
    pub fn ping_pong(&mut self, timeout: Duration, what: &str) {
        self.send_json(&serde_json::json!({ "type": "ping" }));
        self.recv_until(timeout, &format!("a pong ({what})"), |frame| frame["type"] == "pong");
    }

    /// Sends a Close frame and waits (briefly) for the server to end the connection.
    pub fn close(mut self) {
        let _ = self.socket.close(None);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Incoming::Ended(_) = self.next(Duration::from_millis(200)) {
                return;
            }
        }
    }
}
