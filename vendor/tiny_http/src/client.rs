use ascii::AsciiString;

use std::io::Error as IoError;
use std::io::Result as IoResult;
use std::io::{BufReader, BufWriter, Cursor, ErrorKind, Read};

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::mpsc::Receiver;

use crate::common::{HTTPVersion, Header, Method};
use crate::util::{Deadline, RefinedTcpStream};
use crate::util::{SequentialReader, SequentialReaderBuilder, SequentialWriterBuilder};
use crate::{Limits, Request, Response};

/// A ClientConnection is an object that will store a socket to a client
/// and return Request objects.
pub struct ClientConnection {
    // address of the client
    remote_addr: IoResult<Option<SocketAddr>>,

    // sequence of Readers to the stream, so that the data is not read in
    //  the wrong order
    source: SequentialReaderBuilder<BufReader<RefinedTcpStream>>,

    // sequence of Writers to the stream, to avoid writing response #2 before
    //  response #1
    sink: SequentialWriterBuilder<BufWriter<RefinedTcpStream>>,

    // Reader to read the next header from
    next_header_source: SequentialReader<BufReader<RefinedTcpStream>>,

    // set to true if we know that the previous request is the last one
    no_more_requests: bool,

    // true if the connection goes through SSL
    secure: bool,

    // the previous request's body: how much of it is left unread once its reader is dropped,
    // and whether its client waits for `100 Continue` before sending it (project patch 1)
    unread_body: Option<(Receiver<usize>, bool)>,

    // the deadline every read of this connection obeys, the limits that set it, whether a
    // request was read before, and whether the current one is yet to begin (project patch 8)
    deadline: Deadline,
    limits: Limits,
    kept_alive: bool,
    awaiting_request: bool,
}

/// The most of a body left unread that is discarded to keep its connection; more closes
/// the connection instead (project patch 1).
const MAX_DISCARD: usize = 64 * 1024;

/// The longest request line, the most bytes of header lines and the most headers a request
/// may have; more is refused with 414 or 431 and the connection closed (project patch 5).
const MAX_REQUEST_LINE: usize = 8 * 1024;
const MAX_HEADER_BYTES: usize = 32 * 1024;
const MAX_HEADERS: usize = 100;

/// Error that can happen when reading a request.
#[derive(Debug)]
enum ReadError {
    WrongRequestLine,
    WrongHeader(HTTPVersion),
    /// the client sent an unrecognized `Expect` header
    ExpectationFailed(HTTPVersion),
    ReadIoError(IoError),
    /// refused with this status and message, then closed (project patch 2)
    Refused(u16, &'static str),
}

impl From<IoError> for ReadError {
    fn from(err: IoError) -> ReadError {
        ReadError::ReadIoError(err) // (project patch 5)
    }
}

impl ClientConnection {
    /// Creates a new `ClientConnection` that takes ownership of the `TcpStream`.
    pub fn new(
        mut write_socket: RefinedTcpStream,
        mut read_socket: RefinedTcpStream,
        limits: Limits,
    ) -> ClientConnection {
        write_socket.set_write_timeout(limits.write_timeout); // (project patch 9)
        let remote_addr = read_socket.peer_addr();
        let secure = read_socket.secure();
        let deadline = read_socket.deadline();

        let mut source = SequentialReaderBuilder::new(BufReader::with_capacity(1024, read_socket));
        let first_header = source.next().unwrap();

        ClientConnection {
            source,
            sink: SequentialWriterBuilder::new(BufWriter::with_capacity(1024, write_socket)),
            remote_addr,
            next_header_source: first_header,
            no_more_requests: false,
            secure,
            unread_body: None,
            deadline,
            limits,
            kept_alive: false,
            awaiting_request: false,
        }
    }

    /// true if the connection is HTTPS
    #[allow(dead_code)] // every connection is run alike since project patch 6
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Reads the next line from self.next_header_source.
    ///
    /// Reads until `CRLF` is reached. The next read will start
    ///  at the first byte of the new line.
    /// A line longer than `limit` is refused with `too_long`: memory is never spent
    ///  on more (project patch 5).
    fn read_next_line(&mut self, limit: usize, too_long: ReadError) -> Result<AsciiString, ReadError> {
        let mut buf = Vec::new();
        let mut prev_byte_was_cr = false;

        loop {
            let byte = self.next_header_source.by_ref().bytes().next();

            let byte = match byte {
                Some(b) => b?,
                None => return Err(IoError::new(ErrorKind::ConnectionAborted, "Unexpected EOF").into()),
            };

            // the request began: on a kept-alive connection, its head gets head_timeout from
            // now (a new connection's first head has it from the connection's start) (project patch 8)
            if self.awaiting_request {
                self.awaiting_request = false;
                if self.kept_alive {
                    self.deadline.set(self.limits.head_timeout);
                }
            }

            if byte == b'\n' && prev_byte_was_cr {
                buf.pop(); // removing the '\r'
                return AsciiString::from_ascii(buf)
                    .map_err(|_| IoError::new(ErrorKind::InvalidInput, "Header is not in ASCII").into());
            }

            if buf.len() > limit {
                return Err(too_long); // (project patch 5)
            }

            prev_byte_was_cr = byte == b'\r';

            buf.push(byte);
        }
    }

    /// Reads a request from the stream.
    /// Blocks until the header has been read.
    fn read(&mut self) -> Result<Request, ReadError> {
        // what the previous request's handler left of its body is discarded here, a few KiB at
        // a time, or the connection is closed: when that is over MAX_DISCARD, when the client
        // may be holding it back until `100 Continue`, or when it does not arrive (project patch 1)
        if let Some((unread, expects_continue)) = self.unread_body.take() {
            let closed = || ReadError::ReadIoError(IoError::new(ErrorKind::ConnectionAborted, "body left unread"));
            let mut remaining = unread.recv().map_err(|_| closed())?;
            if remaining > 0 && (expects_continue || remaining > MAX_DISCARD) {
                return Err(closed());
            }
            self.deadline.set(self.limits.body_timeout); // (project patch 8)
            let mut buf = [0; 4096];
            while remaining > 0 {
                let len = remaining.min(buf.len());
                match self.next_header_source.read(&mut buf[..len]) {
                    Ok(0) | Err(_) => return Err(closed()),
                    Ok(read) => remaining -= read,
                }
            }
        }

        // waiting for the next request: idle_timeout on a kept-alive connection, and the whole
        // head of a new connection's first request within head_timeout (project patch 8)
        self.deadline.set(if self.kept_alive {
            self.limits.idle_timeout
        } else {
            self.limits.head_timeout
        });
        self.awaiting_request = true;

        let (method, path, version, headers) = {
            // reading the request line
            let (method, path, version) = {
                let line = self.read_next_line(
                    MAX_REQUEST_LINE,
                    ReadError::Refused(414, "the request line is longer than 8192 bytes"),
                )?;

                parse_request_line(
                    line.as_str().trim(), // TODO: remove this conversion
                )?
            };

            // getting all headers
            let headers = {
                let mut headers = Vec::new();
                // what the header lines may still take, their CRLFs included (project patch 5)
                let mut header_bytes_left = MAX_HEADER_BYTES;
                loop {
                    let line = self.read_next_line(
                        header_bytes_left,
                        ReadError::Refused(431, "the headers are larger than 32768 bytes"),
                    )?;

                    if line.is_empty() {
                        break;
                    };
                    header_bytes_left = header_bytes_left.saturating_sub(line.len() + 2);
                    if headers.len() == MAX_HEADERS {
                        return Err(ReadError::Refused(431, "a request must not have more than 100 headers"));
                    }
                    headers.push(match FromStr::from_str(line.as_str().trim()) {
                        // TODO: remove this conversion
                        Ok(h) => h,
                        _ => return Err(ReadError::WrongHeader(version)),
                    });
                }

                headers
            };

            (method, path, version, headers)
        };

        // a body's length must be beyond doubt, or a proxy in front and this server could
        // disagree on where the next request starts (project patch 2)
        check_framing(&headers)?;

        // the body, read here when small or by the handler, has body_timeout (project patch 8)
        self.deadline.set(self.limits.body_timeout);
        self.kept_alive = true;

        // building the writer for the request
        let writer = self.sink.next().unwrap();

        // follow-up for next potential request
        let mut data_source = self.source.next().unwrap();
        std::mem::swap(&mut self.next_header_source, &mut data_source);

        // building the next reader
        let mut request = crate::request::new_request(
            self.secure,
            method,
            path,
            version.clone(),
            headers,
            *self.remote_addr.as_ref().unwrap(),
            data_source,
            writer,
        )
        .map_err(|e| {
            use crate::request;
            match e {
                request::RequestCreationError::CreationIoError(e) => ReadError::ReadIoError(e),
                request::RequestCreationError::ExpectationFailed => {
                    ReadError::ExpectationFailed(version)
                }
            }
        })?;
        self.unread_body = request.unread_body.take(); // (project patch 1)

        // return the request
        Ok(request)
    }
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        use crate::{Response, StatusCode};

        // the client sent a "connection: close" header in this previous request
        //  or is using HTTP 1.0, meaning that no new request will come
        if self.no_more_requests {
            return None;
        }

        loop {
            let rq = match self.read() {
                Err(ReadError::WrongRequestLine) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(400));
                    response
                        .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                        .ok();
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                Err(ReadError::WrongHeader(ver)) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(400));
                    response.raw_print(writer, ver, &[], false, None).ok();
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                // a connection whose request never began is closed quietly (project patch 8)
                Err(ReadError::ReadIoError(ref err))
                    if err.kind() == ErrorKind::TimedOut && !self.awaiting_request =>
                {
                    // request timeout
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(408));
                    response
                        .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                        .ok();
                    return None; // closing the connection
                }

                Err(ReadError::ExpectationFailed(ver)) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(417));
                    response.raw_print(writer, ver, &[], true, None).ok();
                    return None; // TODO: should be recoverable, but needs handling in case of body
                }

                // a chunked body that cannot be decoded, or is too long on the wire (project patch 14)
                Err(ReadError::ReadIoError(ref err)) if err.kind() == ErrorKind::InvalidInput => {
                    let writer = self.sink.next().unwrap();
                    let response = refusal(400, "the chunked body is malformed or too long");
                    response
                        .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                        .ok();
                    return None;
                }

                Err(ReadError::ReadIoError(_)) => return None,

                Err(ReadError::Refused(status, message)) => {
                    let writer = self.sink.next().unwrap();
                    let response = refusal(status, message);
                    response
                        .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                        .ok();
                    return None; // (project patch 2)
                }

                Ok(rq) => rq,
            };

            // checking HTTP version
            if *rq.http_version() > (1, 1) {
                // the request's own writer: a second one would wait for it for ever; and the
                // connection ends, as after the other refusals (project patch 15)
                let writer = rq.into_writer();
                let response = Response::from_string(
                    "This server only supports HTTP versions 1.0 and 1.1".to_owned(),
                )
                .with_status_code(StatusCode(505));
                response
                    .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                    .ok();
                return None;
            }

            // updating the status of the connection
            let connection_header = rq
                .headers()
                .iter()
                .find(|h| h.field.equiv("Connection"))
                .map(|h| h.value.as_str());

            let lowercase = connection_header.map(|h| h.to_ascii_lowercase());

            match lowercase {
                Some(ref val) if val.contains("close") => self.no_more_requests = true,
                Some(ref val) if val.contains("upgrade") => self.no_more_requests = true,
                Some(ref val)
                    if !val.contains("keep-alive") && *rq.http_version() == HTTPVersion(1, 0) =>
                {
                    self.no_more_requests = true
                }
                None if *rq.http_version() == HTTPVersion(1, 0) => self.no_more_requests = true,
                _ => (),
            };

            // a chunked body is never discarded: what its handler left unread could hold
            // anything, so it ends the connection (project patch 3)
            if rq.headers().iter().any(|h| h.field.equiv("Transfer-Encoding")) {
                self.no_more_requests = true;
            }

            // returning the request
            return Some(rq);
        }
    }
}

/// Refuses a request whose body's length is in doubt: more than one `Content-Length`, one
/// that is not plain decimal digits, one beside a `Transfer-Encoding`, or a `Transfer-Encoding`
/// other than a single `chunked` (project patch 2).
fn check_framing(headers: &[Header]) -> Result<(), ReadError> {
    let values = |name| -> Vec<&str> {
        headers
            .iter()
            .filter(|h| h.field.equiv(name))
            .map(|h| h.value.as_str())
            .collect()
    };
    let refuse = |message| Err(ReadError::Refused(400, message));
    match (&values("Content-Length")[..], &values("Transfer-Encoding")[..]) {
        ([], []) => Ok(()),
        ([length], []) if length.is_empty() || !length.bytes().all(|b| b.is_ascii_digit()) => {
            refuse("Content-Length must be plain decimal digits")
        }
        ([length], []) if length.parse::<usize>().is_err() => {
            Err(ReadError::Refused(413, "Content-Length is too large"))
        }
        ([_], []) => Ok(()),
        ([], [encoding]) if encoding.eq_ignore_ascii_case("chunked") => Ok(()),
        ([], [_]) => refuse("Transfer-Encoding must be chunked"),
        (_, []) => refuse("a request must not have more than one Content-Length"),
        ([], _) => refuse("a request must not have more than one Transfer-Encoding"),
        (_, _) => refuse("a request must not have both Content-Length and Transfer-Encoding"),
    }
}

/// A refusal of the project's own: the status, and the application's error body
/// `{"error":{"code":...,"message":...}}`, so that clients read every error one way
/// (project patch 2).
pub(crate) fn refusal(status: u16, message: &str) -> Response<Cursor<Vec<u8>>> {
    let code = match status {
        413 => "payload_too_large",
        503 => "unavailable",
        _ => "invalid_request",
    };
    let body = format!(
        "{{\"error\":{{\"code\":\"{}\",\"message\":\"{}\"}}}}",
        code, message
    );
    Response::from_data(body)
        .with_status_code(status)
        .with_header(Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]).unwrap())
}

/// Parses a "HTTP/1.1" string.
fn parse_http_version(version: &str) -> Result<HTTPVersion, ReadError> {
    let (major, minor) = match version {
        "HTTP/0.9" => (0, 9),
        "HTTP/1.0" => (1, 0),
        "HTTP/1.1" => (1, 1),
        "HTTP/2.0" => (2, 0),
        "HTTP/3.0" => (3, 0),
        _ => return Err(ReadError::WrongRequestLine),
    };

    Ok(HTTPVersion(major, minor))
}

/// Parses the request line of the request.
/// eg. GET / HTTP/1.1
fn parse_request_line(line: &str) -> Result<(Method, String, HTTPVersion), ReadError> {
    let mut parts = line.split(' ');

    let method = parts.next().and_then(|w| w.parse().ok());
    let path = parts.next().map(ToOwned::to_owned);
    let version = parts.next().and_then(|w| parse_http_version(w).ok());

    method
        .and_then(|method| Some((method, path?, version?)))
        .ok_or(ReadError::WrongRequestLine)
}

#[cfg(test)]
mod test {
    #[test]
    fn test_parse_request_line() {
        let (method, path, ver) = super::parse_request_line("GET /hello HTTP/1.1").unwrap();

        assert!(method == crate::Method::Get);
        assert!(path == "/hello");
        assert!(ver == crate::common::HTTPVersion(1, 1));

        assert!(super::parse_request_line("GET /hello").is_err());
        assert!(super::parse_request_line("qsd qsd qsd").is_err());
    }
}
