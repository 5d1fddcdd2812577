//! WebSocket clients: connecting with a bearer header up to the `ready` frame, and readers that take the
//! frames of many connections on a few threads.
//!
//! The readers wait on epoll rather than one thread per connection: with 1,000 connections on a 2-core
//! machine, a thread woken per frame would take CPU from the server it measures. The bare-loop baseline of P5
//! is read by the same readers, so both sides of that ratio pay the same client costs.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};
use serde_json::Value;
use tungstenite::client::{client_with_config, IntoClientRequest};
use tungstenite::http::HeaderValue;
use tungstenite::{Error as WsError, Message, WebSocket};

use crate::BenchResult;

/// The longest a handshake or the wait for `ready` may take.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a reader looks at its stop flag while nothing arrives.
const WAIT_TICK_MS: i32 = 50;

/// Opens `/ws` with a bearer header and waits for the `ready` frame, so the connection is subscribed.
/// Also returns how long that took from the start of the TCP connect.
pub fn connect_ready(ws: SocketAddr, token: &str) -> BenchResult<(WebSocket<TcpStream>, Duration)> {
    let started = Instant::now();
    let mut request = format!("ws://{ws}/ws").into_client_request().map_err(|e| e.to_string())?;
    let authorization = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| e.to_string())?;
    request.headers_mut().insert("Authorization", authorization);
    let stream = TcpStream::connect_timeout(&ws, IO_TIMEOUT).map_err(|e| format!("connect to {ws}: {e}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut socket, _) = client_with_config(request, stream, None).map_err(|e| format!("handshake: {e}"))?;
    loop {
        match socket.read() {
            Ok(Message::Text(text)) => {
                let frame: Value =
                    serde_json::from_str(text.as_str()).map_err(|e| format!("frame is not JSON: {e}"))?;
                if frame["type"] != "ready" {
                    return Err(format!("the first frame was not ready: {text}"));
                }
                return Ok((socket, started.elapsed()));
            }
            Ok(Message::Close(frame)) => return Err(format!("closed before ready: {frame:?}")),
            Ok(_) => {}
            Err(e) => return Err(format!("no ready frame: {e}")),
        }
    }
}

/// Connects each `(address, token)` on `threads` threads at once; the sockets come back in the same order,
/// each with its time to `ready`.
pub fn connect_many(
    targets: &[(SocketAddr, &str)],
    threads: usize,
) -> BenchResult<Vec<(WebSocket<TcpStream>, Duration)>> {
    let per_thread = targets.len().div_ceil(threads.max(1)).max(1);
    thread::scope(|scope| {
        let workers: Vec<_> = targets
            .chunks(per_thread)
            .enumerate()
            .map(|(chunk_idx, chunk)| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .enumerate()
                        .map(|(i, (addr, token))| {
                            connect_ready(*addr, token)
                                .map_err(|e| format!("connection {}: {e}", chunk_idx * per_thread + i))
                        })
                        .collect::<BenchResult<Vec<_>>>()
                })
            })
            .collect();
        let mut sockets = Vec::with_capacity(targets.len());
        for worker in workers {
            sockets.extend(worker.join().map_err(|_| "a connecting thread panicked".to_string())??);
        }
        Ok(sockets)
    })
}

/// The `client_id` a sender gives a measured message: the round and the message's index in it.
pub fn tag(round: usize, index: usize) -> String {
    format!("r{round}-{index}")
}

/// A `message.created` frame for a tagged message: which connection got it, and when.
pub struct Delivery {
    pub conn: usize,
    pub round: usize,
    pub index: usize,
    pub at: Instant,
}

/// What the reader threads share with the scenario.
struct Shared {
    stop: AtomicBool,
    /// Every `message.created` frame so far, on every connection.
    delivered: AtomicU64,
    /// Whether tagged frames are sent to `deliveries` (the latency scenarios) or only counted.
    recording: AtomicBool,
    /// Connections that ended, with why.
    ended: Mutex<Vec<String>>,
    /// The text of one `message.created` frame, for the bare-loop baseline to send.
    sample: OnceLock<String>,
}

/// Reader threads over a set of connections; dropping them stops the threads and closes the sockets.
pub struct Readers {
    shared: Arc<Shared>,
    deliveries: Receiver<Delivery>,
    threads: Vec<JoinHandle<()>>,
}

impl Readers {
    /// Connection `i` of `sockets` is `conn` `i` in deliveries. `threads` readers share them round-robin.
    pub fn start(sockets: Vec<WebSocket<TcpStream>>, threads: usize) -> BenchResult<Readers> {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            delivered: AtomicU64::new(0),
            recording: AtomicBool::new(false),
            ended: Mutex::new(Vec::new()),
            sample: OnceLock::new(),
        });
        let (sender, deliveries) = unbounded();
        let mut groups: Vec<Vec<(usize, WebSocket<TcpStream>)>> = (0..threads.max(1)).map(|_| Vec::new()).collect();
        let group_count = groups.len();
        for (conn, socket) in sockets.into_iter().enumerate() {
            socket.get_ref().set_nonblocking(true).map_err(|e| format!("set_nonblocking: {e}"))?;
            groups[conn % group_count].push((conn, socket));
        }
        let mut handles = Vec::new();
        for group in groups {
            let (shared, sender) = (shared.clone(), sender.clone());
            let handle = thread::Builder::new()
                .name("ws-reader".into())
                .spawn(move || read_until_stopped(group, &shared, &sender))
                .map_err(|e| format!("cannot start a reader thread: {e}"))?;
            handles.push(handle);
        }
        Ok(Readers { shared, deliveries, threads: handles })
    }

    /// `message.created` frames received so far on all connections.
    pub fn delivered(&self) -> u64 {
        self.shared.delivered.load(Ordering::Acquire)
    }

    pub fn set_recording(&self, on: bool) {
        self.shared.recording.store(on, Ordering::Release);
    }

    /// The tagged deliveries recorded since the last call.
    pub fn take_deliveries(&self) -> Vec<Delivery> {
        self.deliveries.try_iter().collect()
    }

    /// Waits until `count` frames in all have been delivered; `false` if `within` passed first.
    pub fn wait_for(&self, count: u64, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.delivered() < count {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// The connections that ended, with why.
    pub fn ended(&self) -> Vec<String> {
        self.shared.ended.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    pub fn sample(&self) -> Option<String> {
        self.shared.sample.get().cloned()
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

/// One reader thread: waits on epoll for any of its sockets and reads every frame that has arrived.
fn read_until_stopped(mut sockets: Vec<(usize, WebSocket<TcpStream>)>, shared: &Shared, deliveries: &Sender<Delivery>) {
    let end = |why: String| shared.ended.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(why);
    // SAFETY: epoll_create1 has no memory arguments; the descriptor is closed below.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll < 0 {
        end(format!("epoll_create1: {}", std::io::Error::last_os_error()));
        return;
    }
    for (slot, (_, socket)) in sockets.iter().enumerate() {
        let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: slot as u64 };
        // SAFETY: `event` is a valid epoll_event for the duration of the call; the socket outlives the epoll set.
        if unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, socket.get_ref().as_raw_fd(), &mut event) } < 0 {
            end(format!("epoll_ctl: {}", std::io::Error::last_os_error()));
        }
    }
    let mut open = vec![true; sockets.len()];
    let mut ready = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    while !shared.stop.load(Ordering::Acquire) {
        // SAFETY: `ready` has room for the number of events passed as its length.
        let count = unsafe { libc::epoll_wait(epoll, ready.as_mut_ptr(), ready.len() as i32, WAIT_TICK_MS) };
        if count < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == ErrorKind::Interrupted {
                continue;
            }
            end(format!("epoll_wait: {error}"));
            break;
        }
        for event in &ready[..count as usize] {
            let slot = { event.u64 } as usize;
            if !open[slot] {
                continue;
            }
            let (conn, socket) = &mut sockets[slot];
            if let Err(why) = read_available(*conn, socket, shared, deliveries) {
                open[slot] = false;
                end(format!("connection {conn}: {why}"));
                // SAFETY: removing a registered descriptor; the event argument is ignored for EPOLL_CTL_DEL.
                unsafe {
                    libc::epoll_ctl(epoll, libc::EPOLL_CTL_DEL, socket.get_ref().as_raw_fd(), std::ptr::null_mut())
                };
            }
        }
    }
    // SAFETY: `epoll` is the descriptor created above, closed once.
    unsafe { libc::close(epoll) };
}

/// Reads every complete frame the socket holds; an error says why the connection ended.
fn read_available(
    conn: usize,
    socket: &mut WebSocket<TcpStream>,
    shared: &Shared,
    deliveries: &Sender<Delivery>,
) -> Result<(), String> {
    loop {
        match socket.read() {
            Ok(Message::Text(text)) => {
                let at = Instant::now();
                let text = text.as_str();
                if !text.contains(r#""type":"message.created""#) {
                    continue;
                }
                shared.delivered.fetch_add(1, Ordering::AcqRel);
                if shared.recording.load(Ordering::Acquire) {
                    if let Some((round, index)) = tagged(text) {
                        let _ = deliveries.send(Delivery { conn, round, index, at });
                    }
                }
                if shared.sample.get().is_none() {
                    let _ = shared.sample.set(text.to_string());
                }
            }
            Ok(Message::Close(frame)) => return Err(format!("closed by the server: {frame:?}")),
            Ok(_) => {}
            Err(WsError::Io(e)) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(WsError::Io(e)) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read failed: {e}")),
        }
    }
}

/// The round and index of a frame's message when its `client_id` is one of `tag`'s.
fn tagged(text: &str) -> Option<(usize, usize)> {
    let start = text.find(r#""client_id":"r"#)? + r#""client_id":"r"#.len();
    let rest = &text[start..];
    let (round, rest) = rest.split_once('-')?;
    let index = &rest[..rest.find('"')?];
    Some((round.parse().ok()?, index.parse().ok()?))
}
