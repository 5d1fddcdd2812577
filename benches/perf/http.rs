//! A small HTTP/1.1 client over one kept-alive connection: the setups' requests and the senders of the
//! fan-out scenarios, which send one request at a time and read its whole answer before the next.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use crate::BenchResult;

/// The longest one request may take, connect included.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Resp {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> BenchResult<Value> {
        serde_json::from_slice(&self.body).map_err(|e| format!("response is not JSON ({e})"))
    }
}

/// One kept-alive connection.
pub struct Conn {
    stream: TcpStream,
    addr: SocketAddr,
    /// Bytes read past the end of the previous response (none, as nothing is pipelined, but kept honest).
    pending: Vec<u8>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> BenchResult<Conn> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| format!("connect to {addr}: {e}"))?;
        stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
        stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Conn { stream, addr, pending: Vec::new() })
    }

    /// Sends one request and returns once its whole response has arrived.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> BenchResult<Resp> {
        let what = format!("{method} {path}");
        let body = body.map(|body| body.to_string().into_bytes());
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        if let Some(token) = token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        if let Some(body) = &body {
            head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.as_deref().unwrap_or_default());
        self.stream.write_all(&bytes).map_err(|e| format!("{what}: {e}"))?;

        let mut raw = std::mem::take(&mut self.pending);
        let mut chunk = [0u8; 16384];
        loop {
            if let Some((resp, used)) = parse_response(&raw) {
                self.pending = raw.split_off(used);
                return Ok(resp);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(format!("{what}: the server closed the connection mid-response")),
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("{what}: {e}")),
            }
        }
    }

    /// Sends `body` and insists on `status`, returning the JSON answer.
    pub fn call(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        status: u16,
    ) -> BenchResult<Value> {
        let resp = self.request(method, path, token, body)?;
        if resp.status != status {
            let text = String::from_utf8_lossy(&resp.body);
            return Err(format!("{method} {path}: expected {status}, got {}: {text}", resp.status));
        }
        resp.json()
    }
}

/// The status of a `GET` on a connection of its own, or `None` when there is no answer (not listening yet).
pub fn get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    Conn::open(addr).ok()?.request("GET", path, None, None).ok().map(|resp| resp.status)
}

/// A complete response at the start of `raw` and how many bytes it took, or `None` until it has all arrived.
/// The server frames every response by `Content-Length` or chunked encoding.
fn parse_response(raw: &[u8]) -> Option<(Resp, usize)> {
    let head_end = raw.windows(4).position(|window| window == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let status = head.split_whitespace().nth(1)?.parse::<u16>().ok()?;
    let header = |name: &str| {
        head.lines()
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .find_map(|(n, v)| n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_ascii_lowercase()))
    };
    let rest = &raw[head_end..];
    if status == 204 || status == 304 {
        return Some((Resp { status, body: Vec::new() }, head_end));
    }
    if header("Transfer-Encoding").is_some_and(|v| v.contains("chunked")) {
        let (body, used) = decode_chunked(rest)?;
        return Some((Resp { status, body }, head_end + used));
    }
    let length = header("Content-Length").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
    let body = rest.get(..length)?.to_vec();
    Some((Resp { status, body }, head_end + length))
}

/// A chunked body and the bytes it took, or `None` until its last chunk has arrived.
fn decode_chunked(raw: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let line_end = at + raw[at..].windows(2).position(|window| window == b"\r\n")?;
        let size = String::from_utf8_lossy(&raw[at..line_end]);
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // No trailers: the body ends with one more CRLF.
            return (raw.len() >= at + 2).then_some((body, at + 2));
        }
        body.extend_from_slice(raw.get(at..at + size)?);
        at += size + 2;
        if raw.len() < at {
            return None;
        }
    }
}
