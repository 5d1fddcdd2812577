//! The WebSocket listener: handshake and credentials, then two threads per
//! connection.
//!
//! Blocking tungstenite has no read/write split, so each side gets its own
//! handle of the `TcpStream` and exactly one thread writes: the writer, which
//! writes whole pre-encoded frames from its queue (`hub::Queue`, at most
//! `WS_QUEUE` frames). The reader's
//! tungstenite `WebSocket` puts its automatic pong and close replies into that
//! same queue instead of onto the socket, so bytes of two frames never
//! interleave. Threads get small stacks and tungstenite small buffers, so an
//! idle connection costs little memory.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde_json::json;
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::{CloseFrame, Frame};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Error as WsError, Message, WebSocket};

use crate::app::App;
use crate::auth;
use crate::error::ApiError;
use crate::forwarded;
use crate::http::{self, Body, Query};
use crate::hub::{self, ConnShared, Out, Protocol, Queue, Registration};
use crate::log::{self, Level};
use crate::messages::{self, Draft, Sent};
use crate::metrics::{Metrics, WsEnd};
use crate::model::{ChatId, Session, UserId};
use crate::ratelimit::{Held, TokenBucket};
use crate::store;
use crate::watch::Watch;

/// The largest frame or message a client may send.
const MAX_MESSAGE: usize = 64 * 1024;
/// A connection thread's stack.
pub const STACK_SIZE: usize = 256 * 1024;
const PING_EVERY: Duration = Duration::from_secs(30);
const SILENCE_LIMIT: Duration = Duration::from_secs(75);
/// How often the reader wakes to check the silence limit and the close flag.
const READ_TICK: Duration = Duration::from_secs(1);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A writer blocked this long on a client that does not read gives up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection's typing frames for one chat are passed on at most this often.
const TYPING_EVERY: Duration = Duration::from_millis(300);
/// Close code meaning "the close handshake is done; just end the socket".
const CLOSE_QUIETLY: u16 = 1;
/// The `Retry-After` of a handshake refused because a user or an address
/// holds as many WebSockets as it may: a guess, since only a close frees one.
const PLACES_RETRY_AFTER_SECS: u64 = 10;

/// Starts the watched thread that accepts WebSocket connections.
pub fn listen(app: Arc<App>, listener: TcpListener, watch: &Watch) -> Result<Sockets, String> {
    let endpoint = Arc::new(Endpoint { app, next_conn: AtomicU64::new(1), open: AtomicUsize::new(0) });
    let sockets = Sockets(endpoint.clone());
    watch
        .spawn("ws-accept", move || {
            let log = endpoint.app.log;
            // Accept errors come in bursts (out of descriptors, say): logged once each.
            let mut failing = false;
            for stream in listener.incoming() {
                if endpoint.app.stop.is_set() {
                    return;
                }
                match stream {
                    Ok(stream) => {
                        if std::mem::take(&mut failing) {
                            log.info("WebSocket accept works again", &[("thread", &"ws-accept")]);
                        }
                        // Dropping the stream closes it: the client may try again later.
                        let Some(slot) = Slot::take(&endpoint) else { continue };
                        let Ok(handshaking) = handshake_place(&endpoint.app, &stream) else { continue };
                        let spawned = std::thread::Builder::new()
                            .name("ws-read".into())
                            .stack_size(STACK_SIZE)
                            .spawn(move || serve(Arc::new(slot), stream, handshaking));
                        if let Err(error) = spawned {
                            log.error(
                                "cannot start a WebSocket thread",
                                &[("thread", &"ws-accept"), ("error", &error)],
                            );
                        }
                    }
                    Err(error) => {
                        if !std::mem::replace(&mut failing, true) {
                            log.error("WebSocket accept failed", &[("thread", &"ws-accept"), ("error", &error)]);
                        }
                        // Back off instead of spinning until descriptors come free.
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
        .map(|_| sockets)
}

/// A place among the handshakes in flight from the stream's peer, held
/// until its handshake ends; `Ok(None)` for a trusted proxy, which carries
/// many clients and is not limited here; `Err` when the peer has no place left.
fn handshake_place(app: &App, stream: &TcpStream) -> Result<Option<Held<String>>, ()> {
    match stream.peer_addr().map(|addr| addr.ip()) {
        Ok(peer) if !app.config.trusted_proxies.contains(peer) => {
            app.limits.ws_handshakes.enter(forwarded::limit_key(peer)).map(Some).ok_or(())
        }
        _ => Ok(None),
    }
}

/// What stopping needs to know of the endpoint: whether connections are still open.
pub struct Sockets(Arc<Endpoint>);

impl Sockets {
    /// Connections not yet fully closed, handshakes included.
    pub fn open(&self) -> usize {
        self.0.open.load(Ordering::SeqCst)
    }
}

/// What the accept thread shares with the connections it starts.
struct Endpoint {
    app: Arc<App>,
    /// Numbers connections within this process (the hub's and presence's key).
    next_conn: AtomicU64,
    /// WebSockets open now, against `WS_MAX_CONNECTIONS`.
    open: AtomicUsize,
}

/// One of the `WS_MAX_CONNECTIONS` places, held by a connection's reader
/// and writer threads and given back when both have ended, however they end.
struct Slot {
    endpoint: Arc<Endpoint>,
}

impl Slot {
    fn take(endpoint: &Arc<Endpoint>) -> Option<Slot> {
        let limit = endpoint.app.config.ws_max_connections;
        let taken =
            endpoint.open.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |open| (open < limit).then_some(open + 1));
        taken.is_ok().then(|| Slot { endpoint: endpoint.clone() })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.endpoint.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Who connected, and how they want events.
struct Authorized {
    session: Session,
    protocol: Protocol,
    places: Places,
}

/// The connection's places among its address's and its user's WebSockets,
/// held until it closes.
#[derive(Default)]
struct Places {
    _address: Option<Held<String>>,
    _user: Option<Held<UserId>>,
}

/// A connection the hub knows, with its presence recorded and its `ready`
/// snapshot read, all before the handshake's answer: whatever commits after
/// the client sees the upgrade reaches it, also on the seed's socket, which
/// has no `ready` frame to catch up from.
struct Opened {
    session: Session,
    protocol: Protocol,
    /// Each chat's `(chat_id, last_seq)`.
    chats: Vec<(ChatId, i64)>,
    /// Whether this is the user's only connection anywhere.
    first: bool,
    places: Places,
}

/// One connection, on its reader thread, from handshake to close.
///
/// Reader and writer share one `TcpStream` (`&TcpStream` reads and writes)
/// rather than a `try_clone`, so a connection costs one descriptor, which
/// is what the start-up check of the open-files limit counts.
fn serve(slot: Arc<Slot>, stream: TcpStream, handshaking: Option<Held<String>>) {
    let app = &slot.endpoint.app;
    let stream = Arc::new(stream);
    let write_half = stream.clone();
    let conn = slot.endpoint.next_conn.fetch_add(1, Ordering::SeqCst);
    let (queue, frames) = Queue::new(app.config.ws_queue, app.metrics.clone());
    let shared = Arc::new(ConnShared::default());
    let (socket, opened) = handshake(app, stream, conn, &queue, &shared);
    drop(handshaking);
    let Some(mut opened) = opened else { return };
    let _places = std::mem::take(&mut opened.places);
    let (user_id, protocol) = (opened.session.user.id, opened.protocol);
    if let Some(mut socket) = socket {
        app.metrics.ws_opened();
        socket.get_mut().replies = Some(queue.clone());
        let writer = {
            let (shared, slot, metrics) = (shared.clone(), slot.clone(), app.metrics.clone());
            std::thread::Builder::new().name("ws-write".into()).stack_size(STACK_SIZE).spawn(move || {
                write(write_half, &frames, &shared, &metrics);
                drop(slot);
            })
        };
        let mut client_closed = false;
        if writer.is_ok() {
            subscribe(app, conn, opened, &queue);
            client_closed = read(app, &mut socket, conn, user_id, protocol, &queue, &shared);
        }
        app.metrics.ws_closed(WsEnd::of(shared.close_code(), client_closed));
    }
    close(app, conn, user_id, &queue, &shared);
}

/// Runs tungstenite's handshake; inside it, checks the credential and opens
/// the connection. Returns the socket if the upgrade went through, and the
/// opened connection if it was opened (which `close` must then undo).
fn handshake(
    app: &Arc<App>,
    stream: Arc<TcpStream>,
    conn: hub::ConnId,
    queue: &Queue,
    shared: &Arc<ConnShared>,
) -> (Option<WebSocket<ReadSide>>, Option<Opened>) {
    let peer = stream.peer_addr().ok().map(|addr| addr.ip());
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT));
    let side = ReadSide { stream, replies: None, handshake_deadline: Some(Instant::now() + HANDSHAKE_TIMEOUT) };
    let mut opened = None;
    // tungstenite's callback type fixes the large `ErrorResponse`.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| match authorize(app, request, peer)
        .and_then(|who| open(app, conn, who, queue, shared))
    {
        Ok(connection) => {
            opened = Some(connection);
            Ok(response)
        }
        Err(error) => {
            log_failure(app, "WebSocket handshake refused", conn, &error);
            Err(reject(&error))
        }
    };
    let mut socket = tungstenite::accept_hdr_with_config(side, callback, Some(config())).ok();
    if let Some(socket) = &mut socket {
        socket.get_mut().handshake_deadline = None;
        let _ = socket.get_ref().stream.set_read_timeout(Some(READ_TICK));
        let _ = socket.get_ref().stream.set_write_timeout(Some(WRITE_TIMEOUT));
    }
    (socket, opened)
}

/// tungstenite's settings for every connection: small buffers, and frames and
/// messages of at most `MAX_MESSAGE`.
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_MESSAGE * 2)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// Registers the connection with the hub, records its presence and reads
/// its snapshot; undoes what it did if any of it fails (`503`).
fn open(
    app: &Arc<App>,
    conn: hub::ConnId,
    authorized: Authorized,
    queue: &Queue,
    shared: &Arc<ConnShared>,
) -> Result<Opened, ApiError> {
    let Authorized { session, protocol, places } = authorized;
    let user_id = session.user.id;
    let registration =
        Registration { conn, user_id, session_id: session.id, protocol, queue: queue.clone(), shared: shared.clone() };
    if !app.hub.register(registration) {
        app.hub.unregister(conn);
        return Err(ApiError::unavailable("the hub did not register the connection in time"));
    }
    let presence = app.presence.clone();
    let session_id = session.id;
    let snapshot = app.jobs.run(move |db| {
        // The session was read before the hub knew this connection: a logout
        // in between closed nothing here, so it is read again now. A logout
        // after this read finds the connection registered and closes it.
        if store::find_session_by_id(&mut db.sql()?, session_id)?.is_none() {
            return Ok(None);
        }
        let first = presence.connected(db, conn, user_id)?;
        Ok(Some((first, store::list_chat_seqs(&mut db.sql()?, user_id)?)))
    });
    match snapshot {
        Ok(Some((first, chats))) => Ok(Opened { session, protocol, chats, first, places }),
        // Its session ended while it was opening: like every socket of an
        // ended session, it is closed with 4001, right after the upgrade.
        Ok(None) => {
            shared.close(hub::CLOSE_LOGGED_OUT);
            Ok(Opened { session, protocol, chats: Vec::new(), first: false, places })
        }
        Err(error) => {
            app.hub.unregister(conn);
            // The row may still be written by a job that ran late; the heartbeat deletes it.
            app.presence.forget_later(conn, user_id);
            Err(error)
        }
    }
}

/// Sends the `ready` frame, then lets the hub route the user's chats to the
/// connection, and announces the user if it just came online.
fn subscribe(app: &Arc<App>, conn: hub::ConnId, opened: Opened, queue: &Queue) {
    let Opened { session, protocol, chats, first, .. } = opened;
    app.log.debug("WebSocket open", &[("conn", &conn), ("user", &session.user.id), ("chats", &chats.len())]);
    if protocol == Protocol::Current {
        let listed: Vec<_> =
            chats.iter().map(|(chat_id, last_seq)| json!({ "chat_id": chat_id, "last_seq": last_seq })).collect();
        let ready = json!({ "type": "ready", "user": session.user, "chats": listed });
        queue.offer(hub::text_frame(&ready.to_string()));
    }
    let chat_ids = chats.iter().map(|(chat_id, _)| *chat_id).collect();
    app.hub.subscribe(conn, chats);
    if first {
        app.presence.announce(session.user.id, true, chat_ids);
    }
}

/// Takes the connection out of the hub, lets the writer finish, and forgets its presence.
fn close(app: &Arc<App>, conn: hub::ConnId, user_id: UserId, queue: &Queue, shared: &ConnShared) {
    let code = log::OrDash(shared.close_code());
    app.log.debug("WebSocket closed", &[("conn", &conn), ("user", &user_id), ("code", &code)]);
    app.hub.unregister(conn);
    shared.close(CLOSE_QUIETLY);
    queue.wake();
    let presence = app.presence.clone();
    let forgotten = app.jobs.run(move |db| {
        presence.disconnected(db, conn, user_id);
        Ok(())
    });
    if forgotten.is_err() {
        app.presence.forget_later(conn, user_id);
    }
}

/// Checks the path, origin and credential inside the handshake, and takes
/// the connection's places among its address's and its user's WebSockets.
fn authorize(app: &Arc<App>, request: &Request, peer: Option<IpAddr>) -> Result<Authorized, ApiError> {
    if app.stop.is_set() {
        return Err(ApiError::unavailable("the server is stopping"));
    }
    if request.uri().path() != "/ws" {
        return Err(ApiError::NotFound);
    }
    let allowed = &app.config.ws_allowed_origins;
    let origin = request.headers().get("Origin").and_then(|o| o.to_str().ok());
    if !allowed.is_empty() && !origin.is_some_and(|origin| allowed.iter().any(|a| a == origin)) {
        return Err(ApiError::Forbidden("origin not allowed"));
    }
    let no_place = ApiError::RateLimited { retry_after_secs: PLACES_RETRY_AFTER_SECS };
    let address_place = match peer {
        Some(peer) => {
            let forwarded_for: Vec<&str> =
                request.headers().get_all("X-Forwarded-For").iter().filter_map(|v| v.to_str().ok()).collect();
            let client = app.config.trusted_proxies.client(peer, &forwarded_for);
            Some(app.limits.ws_per_address.enter(forwarded::limit_key(client)).ok_or(no_place)?)
        }
        None => None,
    };
    let query = Query::parse(&request.uri().to_string());
    let authorization = request.headers().get("Authorization").and_then(|h| h.to_str().ok());
    let session = match (auth::bearer_token(authorization), query.get("ticket")) {
        (Some(token), _) => {
            let hash = auth::token_hash(token);
            app.jobs.run(move |db| store::find_session(&mut db.sql()?, &hash))?
        }
        (None, Some(ticket)) => {
            let ticket = auth::verify_ticket(&app.config.secret_key, ticket).ok_or(ApiError::Unauthorized)?;
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
            if ticket.expires_unix <= now {
                return Err(ApiError::Unauthorized);
            }
            app.jobs.run(move |db| {
                let sql = &mut db.sql()?;
                match store::use_ticket_nonce(sql, &ticket.nonce, ticket.expires_unix)? {
                    true => store::find_session_by_id(sql, ticket.session_id),
                    false => Ok(None),
                }
            })?
        }
        (None, None) => None,
    };
    let session = session.ok_or(ApiError::Unauthorized)?;
    let user_place = app
        .limits
        .ws_per_user
        .enter(session.user.id)
        .ok_or(ApiError::RateLimited { retry_after_secs: PLACES_RETRY_AFTER_SECS })?;
    let protocol = match query.get("chat_id") {
        None => Protocol::Current,
        Some(chat_id) => {
            let chat_id = ChatId(chat_id.parse().map_err(|_| ApiError::NotFound)?);
            let user_id = session.user.id;
            app.jobs.run(move |db| store::find_role(&mut db.sql()?, chat_id, user_id))?.ok_or(ApiError::NotFound)?;
            Protocol::Seed(chat_id)
        }
    };
    Ok(Authorized { session, protocol, places: Places { _address: address_place, _user: Some(user_place) } })
}

/// The handshake's refusal: the contract's error body with its status.
fn reject(error: &ApiError) -> ErrorResponse {
    let mut builder =
        tungstenite::http::Response::builder().status(error.status()).header("Content-Type", "application/json");
    for (name, value) in error.headers() {
        builder = builder.header(name, value);
    }
    builder.body(Some(error.to_json().to_string())).unwrap_or_else(|_| ErrorResponse::new(None))
}

/// The reader's loop: client frames in, answers queued for the writer.
/// Returns whether the client sent a close frame.
fn read(
    app: &Arc<App>,
    socket: &mut WebSocket<ReadSide>,
    conn: hub::ConnId,
    user_id: UserId,
    protocol: Protocol,
    queue: &Queue,
    shared: &ConnShared,
) -> bool {
    let mut client_closed = false;
    let mut last_heard = Instant::now();
    let mut last_typing = HashMap::new();
    let mut frame_budget = app.limits.ws_frames.map(|rate| (rate, TokenBucket::full(rate, last_heard)));
    while shared.close_code().is_none() {
        match socket.read() {
            Ok(Message::Text(text)) => {
                last_heard = Instant::now();
                let over_budget = frame_budget.as_mut().and_then(|(rate, bucket)| bucket.take(*rate, last_heard).err());
                let answer = match (over_budget, protocol) {
                    (Some(wait), _) => {
                        let retry_after_secs = wait.as_secs_f64().ceil().max(1.0) as u64;
                        // The frame's client_id, when it has one, so the client knows which send failed.
                        let body = http::parse_body(text.as_bytes()).ok();
                        let client_id = body.as_ref().and_then(|body| body.opt_str("client_id").ok().flatten());
                        Some(ApiError::RateLimited { retry_after_secs }.to_frame(client_id))
                    }
                    (None, Protocol::Current) => answer(app, conn, user_id, text.as_bytes(), &mut last_typing),
                    (None, Protocol::Seed(chat_id)) => answer_seed(app, conn, user_id, chat_id, text.as_bytes()),
                };
                if let Some(answer) = answer {
                    if !queue.offer(hub::text_frame(&answer.to_string())) {
                        shared.close(hub::CLOSE_LAGGING);
                    }
                }
            }
            Ok(Message::Binary(_)) => shared.close(u16::from(CloseCode::Unsupported)),
            Ok(Message::Ping(_)) => {
                // Each ping costs a pong, which cannot carry an error frame, so
                // pings past the budget close the connection instead. Pongs cost
                // nothing and answer the server's own pings: they are not counted.
                last_heard = Instant::now();
                if frame_budget.as_mut().is_some_and(|(rate, bucket)| bucket.take(*rate, last_heard).is_err()) {
                    shared.close(u16::from(CloseCode::Policy));
                }
            }
            Ok(Message::Close(_)) => client_closed = true,
            Ok(_) => last_heard = Instant::now(),
            Err(WsError::Io(error)) if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if last_heard.elapsed() > SILENCE_LIMIT {
                    shared.close(hub::CLOSE_IDLE);
                }
            }
            Err(WsError::Capacity(_)) => shared.close(u16::from(CloseCode::Size)),
            Err(WsError::Utf8(_)) => shared.close(u16::from(CloseCode::Invalid)),
            Err(WsError::Protocol(_)) => shared.close(u16::from(CloseCode::Protocol)),
            Err(_) => break,
        }
    }
    client_closed
}

/// Answers one frame of the current protocol; `None` when nothing is owed.
fn answer(
    app: &Arc<App>,
    conn: hub::ConnId,
    user_id: UserId,
    frame: &[u8],
    last_typing: &mut HashMap<ChatId, Instant>,
) -> Option<serde_json::Value> {
    let body = match http::parse_frame(frame) {
        Ok(body) => body,
        Err(error) => return Some(error.to_frame(None)),
    };
    let client_id = body.opt_str("client_id").ok().flatten().map(String::from);
    let outcome = parse_command(&body).and_then(|command| match command {
        Command::Ping => Ok(Some(json!({ "type": "pong" }))),
        Command::Typing { chat_id } => {
            // More typing frames for a chat than this say nothing new; they are dropped.
            last_typing.retain(|_, at: &mut Instant| at.elapsed() < TYPING_EVERY);
            if let std::collections::hash_map::Entry::Vacant(slot) = last_typing.entry(chat_id) {
                slot.insert(Instant::now());
                app.hub.typing(conn, chat_id);
            }
            Ok(None)
        }
        Command::Read { chat_id, seq } => {
            let app = app.clone();
            app.jobs.clone().run(move |db| messages::mark_read_up_to(&app, db, user_id, chat_id, seq))?;
            Ok(None)
        }
        Command::Send { chat_id, draft } => {
            let app = app.clone();
            let sent = app.jobs.clone().run(move |db| messages::send(&app, db, user_id, chat_id, &draft))?;
            let (Sent::New(message) | Sent::Retried(message)) = sent;
            Ok(Some(json!({ "type": "ack", "client_id": message.client_id, "message": message })))
        }
    });
    outcome.unwrap_or_else(|error| {
        log_failure(app, "WebSocket frame failed", conn, &error);
        Some(error.to_frame(client_id.as_deref()))
    })
}

/// What a frame of the current protocol asks for, its fields checked.
pub enum Command {
    Ping,
    Typing { chat_id: ChatId },
    Read { chat_id: ChatId, seq: i64 },
    Send { chat_id: ChatId, draft: Draft },
}

/// Reads a frame's `type` and the fields that type needs, in the order their
/// errors are reported; nothing here touches the database.
pub fn parse_command(body: &Body) -> Result<Command, ApiError> {
    match body.str("type")? {
        "ping" => Ok(Command::Ping),
        "typing" => Ok(Command::Typing { chat_id: ChatId(body.i64("chat_id")?) }),
        "read" => {
            let (chat_id, seq) = (ChatId(body.i64("chat_id")?), body.i64("seq")?);
            if seq < 0 {
                return Err(ApiError::invalid("seq", "seq must not be negative"));
            }
            Ok(Command::Read { chat_id, seq })
        }
        "send" => {
            let chat_id = ChatId(body.i64("chat_id")?);
            Ok(Command::Send { chat_id, draft: Draft::parse(body)? })
        }
        _ => Err(ApiError::invalid("type", "type must be send, typing, read or ping")),
    }
}

/// Logs a failure whose cause an operator must see (a `500` or `503`); a
/// client's own mistakes are answered, not logged.
fn log_failure(app: &App, what: &str, conn: hub::ConnId, error: &ApiError) {
    let level = error.log_level();
    if level < Level::Info {
        app.log.write(level, what, &[("conn", &conn), ("error", error)]);
    }
}

/// The seed's socket: each `{"content"}` frame is a message in its chat.
fn answer_seed(
    app: &Arc<App>,
    conn: hub::ConnId,
    user_id: UserId,
    chat_id: ChatId,
    frame: &[u8],
) -> Option<serde_json::Value> {
    let stored = http::parse_body(frame).and_then(|body| {
        let draft = Draft::text(body.str("content")?)?;
        let app = app.clone();
        app.jobs.clone().run(move |db| messages::send(&app, db, user_id, chat_id, &draft))
    });
    stored.err().map(|error| {
        log_failure(app, "WebSocket frame failed", conn, &error);
        error.to_frame(None)
    })
}

/// The writer's loop: whole frames out (each counted as delivered), a ping
/// every `PING_EVERY`, and the close frame when asked.
fn write(socket: Arc<TcpStream>, frames: &Receiver<Out>, shared: &ConnShared, metrics: &Metrics) {
    let mut stream = &*socket;
    let mut last_ping = Instant::now();
    loop {
        match shared.close_code() {
            Some(CLOSE_QUIETLY) => {
                // The reader is done; what it queued (a close reply, say) still
                // goes out, unless the client has stopped taking it.
                while let Ok(out) = frames.try_recv() {
                    if let Out::Frame(bytes) = out {
                        if stream.write_all(&bytes).is_err() {
                            break;
                        }
                        metrics.ws_frames_delivered.inc();
                    }
                }
                break;
            }
            Some(code) => {
                let _ = stream.write_all(&close_frame(code));
                break;
            }
            None => {}
        }
        let wait = PING_EVERY.saturating_sub(last_ping.elapsed());
        let written = match frames.recv_timeout(wait) {
            Ok(Out::Frame(bytes)) => stream.write_all(&bytes).map(|()| metrics.ws_frames_delivered.inc()),
            Ok(Out::Wake) => Ok(()),
            Err(RecvTimeoutError::Timeout) => {
                last_ping = Instant::now();
                stream.write_all(&control_frame(Frame::ping(Vec::new())))
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if written.is_err() {
            break;
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

fn close_frame(code: u16) -> Vec<u8> {
    let reason = match code {
        hub::CLOSE_LAGGING => "lagging",
        hub::CLOSE_LOGGED_OUT => "logged out",
        hub::CLOSE_GOING_AWAY => "server shutting down",
        hub::CLOSE_IDLE => "idle",
        _ => "",
    };
    control_frame(Frame::close(Some(CloseFrame { code: CloseCode::from(code), reason: reason.into() })))
}

fn control_frame(frame: Frame) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(64);
    frame.format(&mut bytes).expect("writing to a Vec cannot fail");
    bytes
}

/// The reader's side of the socket: reads from the stream; writes (the
/// handshake's reply, then tungstenite's automatic pongs and close replies)
/// go to the stream until the writer's queue exists, then to the queue.
struct ReadSide {
    stream: Arc<TcpStream>,
    replies: Option<Queue>,
    /// The whole handshake must be done by then, however slowly the client
    /// trickles its bytes in (the socket's timeout bounds only each read).
    handshake_deadline: Option<Instant>,
}

impl Read for ReadSide {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.handshake_deadline.is_some_and(|deadline| Instant::now() > deadline) {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "handshake took too long"));
        }
        (&*self.stream).read(buf)
    }
}

impl Write for ReadSide {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &self.replies {
            None => (&*self.stream).write(buf),
            Some(queue) => {
                // A full queue means the connection is being closed as lagging; the reply can go.
                queue.offer(buf.to_vec().into());
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &self.replies {
            None => (&*self.stream).flush(),
            Some(_) => Ok(()),
        }
    }
}
