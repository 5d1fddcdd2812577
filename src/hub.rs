//! The hub: one thread that knows every WebSocket connection of this
//! process and fans each chat's events out to them, in seq order, once.
//!
//! Everything reaches the hub as a message on one channel, so its state needs
//! no lock and its decisions happen in one order. Who gets which event is
//! decided by the pure `Directory` (and its `Sequencer`s); this thread only
//! carries out what it decides: frames into the connections' queues, reads
//! of the table on job threads, and the periodic checks: every
//! `LAST_SEQ_CHECK`, each followed chat's last seq is read, so an event whose
//! signal never came (its process died between commit and NOTIFY) arrives
//! within that bound plus one read; every `SESSION_CHECK`, the sessions of
//! open connections are read, so an expired or lost logout closes them.
//!
//! The hub never blocks on a connection: each has a bounded queue, and one
//! that is full is closed with 4008 (`lagging`); the client catches up with
//! `/events`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};
use serde_json::json;

use crate::directory::{Action, Directory, Reader};
use crate::error::ApiError;
use crate::jobs::Jobs;
use crate::log::{Field, Log};
use crate::metrics::Metrics;
use crate::model::{ChatId, Event, EventFrame, EventKind, Live, Payload, SessionId, UserId};
use crate::notify::Notifier;
use crate::store;
use crate::watch::Watch;

pub use crate::directory::ConnId;

/// How often the last seq of every followed chat is read (anti-entropy).
pub const LAST_SEQ_CHECK: Duration = Duration::from_secs(1);
/// How often the hub checks that every connection's session is still live:
/// this closes the sockets of sessions that expired, or whose logout
/// notification from another process was lost.
const SESSION_CHECK: Duration = Duration::from_secs(30);
/// The most events one read of the table returns.
const READ_PAGE: i64 = 1000;

/// Close codes the server sends.
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_LAGGING: u16 = 4008;
pub const CLOSE_LOGGED_OUT: u16 = 4001;
pub const CLOSE_IDLE: u16 = 4000;

/// What a connection's writer thread is handed: whole frames, encoded once.
pub enum Out {
    Frame(Arc<[u8]>),
    /// Nothing to write; look at the connection's close flag.
    Wake,
}

/// A connection's frames waiting for its writer, at most `limit` of them.
///
/// The channel underneath is unbounded and the limit is checked here:
/// crossbeam's bounded channel allocates every slot up front, which at the
/// default `WS_QUEUE` would cost an idle connection 32 KiB.
#[derive(Clone)]
pub struct Queue {
    sender: Sender<Out>,
    limit: usize,
    /// Where a frame refused for a full queue is counted.
    metrics: Arc<Metrics>,
}

impl Queue {
    pub fn new(limit: usize, metrics: Arc<Metrics>) -> (Queue, Receiver<Out>) {
        let (sender, receiver) = unbounded();
        (Queue { sender, limit, metrics }, receiver)
    }

    /// Queues a frame unless `limit` frames wait already (counted as
    /// dropped); `false` means the connection is lagging.
    pub fn offer(&self, frame: Arc<[u8]>) -> bool {
        if self.sender.len() >= self.limit {
            self.metrics.ws_frames_dropped.inc();
            return false;
        }
        self.sender.send(Out::Frame(frame)).is_ok()
    }

    /// Makes the writer look at its connection's close flag.
    pub fn wake(&self) {
        let _ = self.sender.send(Out::Wake);
    }
}

/// What the hub and a connection's threads share about it.
#[derive(Default)]
pub struct ConnShared {
    close_code: AtomicU16,
}

impl ConnShared {
    /// Asks the connection to close with `code`; the first request wins.
    pub fn close(&self, code: u16) {
        let _ = self.close_code.compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// The requested close code, if any.
    pub fn close_code(&self) -> Option<u16> {
        Some(self.close_code.load(Ordering::SeqCst)).filter(|code| *code != 0)
    }
}

/// How a connection wants events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Contract section 6: every event of every chat, typing, read, presence.
    Current,
    /// The seed's `?chat_id=` socket: `{"content", "chat_id"}` for new messages of one chat.
    Seed(ChatId),
}

/// A connection as the hub knows it.
pub struct Registration {
    pub conn: ConnId,
    pub user_id: UserId,
    pub session_id: SessionId,
    pub protocol: Protocol,
    pub queue: Queue,
    pub shared: Arc<ConnShared>,
}

enum Msg {
    Event(Arc<Event>),
    RemoteEvent { chat_id: ChatId, seq: i64, added: Option<UserId> },
    Fetched { reader: Reader, chat_id: ChatId, events: Result<Vec<Event>, ApiError> },
    LastSeqs(Result<Vec<(ChatId, i64)>, ApiError>),
    Memberships(Result<Vec<(UserId, ChatId)>, ApiError>),
    Live(Live),
    Presence { user_id: UserId, online: bool, chat_ids: Vec<ChatId> },
    RemotePresence { user_id: UserId, online: bool },
    Register(Registration, Sender<()>),
    Subscribe { conn: ConnId, chats: Vec<(ChatId, i64)> },
    Unregister(ConnId),
    Typing { conn: ConnId, chat_id: ChatId },
    SessionsEnded(Vec<SessionId>),
    ProcessDied,
    Resync,
    Shutdown,
}

/// A handle to the hub thread; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inbox: Sender<Msg>,
}

impl Hub {
    /// Starts the watched hub thread.
    pub fn start(
        jobs: Jobs,
        notifier: Notifier,
        log: Log,
        metrics: Arc<Metrics>,
        watch: &Watch,
    ) -> Result<Hub, String> {
        let (inbox, messages) = unbounded();
        let hub = Hub { inbox };
        let now = Instant::now();
        let state = State {
            hub: hub.clone(),
            jobs,
            notifier,
            log,
            metrics,
            directory: Directory::default(),
            conns: HashMap::new(),
            next_last_seq_check: now + LAST_SEQ_CHECK,
            checking_last_seqs: false,
            next_session_check: now + SESSION_CHECK,
            reads_failing: false,
        };
        watch.spawn("hub", move || state.run(messages))?;
        Ok(hub)
    }

    fn send(&self, msg: Msg) {
        let _ = self.inbox.send(msg);
    }

    /// A committed event of this process.
    pub fn event(&self, event: Event) {
        self.send(Msg::Event(Arc::new(event)));
    }

    /// Another process committed `(chat_id, seq)`; the hub reads it from the table.
    /// `added`: the user a `member.added` event adds, if it is one.
    pub fn remote_event(&self, chat_id: ChatId, seq: i64, added: Option<UserId>) {
        self.send(Msg::RemoteEvent { chat_id, seq, added });
    }

    pub fn live(&self, live: Live) {
        self.send(Msg::Live(live));
    }

    /// A user came online or went offline; frames go to users who share one of `chat_ids`.
    pub fn presence(&self, user_id: UserId, online: bool, chat_ids: Vec<ChatId>) {
        self.send(Msg::Presence { user_id, online, chat_ids });
    }

    /// A user came online or went offline on another process; the hub reads its chats.
    pub fn remote_presence(&self, user_id: UserId, online: bool) {
        self.send(Msg::RemotePresence { user_id, online });
    }

    /// Registers a connection and waits until the hub has it, so that every
    /// event the hub handles from then on reaches it; `false` if the hub does
    /// not answer in time.
    pub fn register(&self, registration: Registration) -> bool {
        let (done, registered) = crossbeam_channel::bounded(1);
        self.send(Msg::Register(registration, done));
        registered.recv_timeout(Duration::from_secs(5)).is_ok()
    }

    /// Ends a connection's pending state with its `ready` snapshot: `(chat_id, last_seq)`.
    pub fn subscribe(&self, conn: ConnId, chats: Vec<(ChatId, i64)>) {
        self.send(Msg::Subscribe { conn, chats });
    }

    pub fn unregister(&self, conn: ConnId) {
        self.send(Msg::Unregister(conn));
    }

    /// A typing frame from a connection; the hub checks membership.
    pub fn typing(&self, conn: ConnId, chat_id: ChatId) {
        self.send(Msg::Typing { conn, chat_id });
    }

    /// Closes every connection opened with one of these sessions.
    pub fn sessions_ended(&self, session_ids: Vec<SessionId>) {
        self.send(Msg::SessionsEnded(session_ids));
    }

    /// Another process died, maybe with signals unsent: check the followed
    /// chats and the connected users' memberships now.
    pub fn process_died(&self) {
        self.send(Msg::ProcessDied);
    }

    /// The cross-process feed had a gap: every client must catch up.
    pub fn resync(&self) {
        self.send(Msg::Resync);
    }

    /// Closes every connection with 1001 and stops the hub.
    pub fn shutdown(&self) {
        self.send(Msg::Shutdown);
    }
}

/// What the hub holds of a connection besides what the directory knows.
struct Conn {
    user_id: UserId,
    protocol: Protocol,
    queue: Queue,
    shared: Arc<ConnShared>,
}

struct State {
    hub: Hub,
    jobs: Jobs,
    /// Typing frames, checked here, go on to other processes from here.
    notifier: Notifier,
    log: Log,
    /// Counts events read from the table and last seq checks.
    metrics: Arc<Metrics>,
    directory: Directory,
    conns: HashMap<ConnId, Conn>,
    next_last_seq_check: Instant,
    checking_last_seqs: bool,
    next_session_check: Instant,
    /// Whether the last read of the database failed, so an outage is logged once.
    reads_failing: bool,
}

impl State {
    fn run(mut self, messages: Receiver<Msg>) {
        loop {
            let wake = [self.directory.deadline(), Some(self.next_last_seq_check), Some(self.next_session_check)];
            let wait = wake
                .into_iter()
                .flatten()
                .min()
                .map_or(LAST_SEQ_CHECK, |at| at.saturating_duration_since(Instant::now()));
            match messages.recv_timeout(wait) {
                Ok(Msg::Shutdown) => {
                    self.close_all(CLOSE_GOING_AWAY);
                    return;
                }
                Ok(msg) => self.handle(msg),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            }
            let now = Instant::now();
            let actions = self.directory.due(now);
            self.carry_out(actions);
            if now >= self.next_last_seq_check {
                self.next_last_seq_check = now + LAST_SEQ_CHECK;
                self.check_last_seqs();
            }
            if now >= self.next_session_check {
                self.next_session_check = now + SESSION_CHECK;
                self.check_sessions();
            }
        }
    }

    fn handle(&mut self, msg: Msg) {
        let now = Instant::now();
        let actions = match msg {
            Msg::Event(event) => self.directory.event(event, now),
            Msg::RemoteEvent { chat_id, seq, added } => self.directory.announce(chat_id, seq, added, now),
            Msg::Fetched { reader, chat_id, events } => {
                let events = self.read_outcome("a chat's events", events);
                self.metrics.events_fetched.add(events.as_ref().map_or(0, |events| events.len() as u64));
                self.directory.fetched(reader, chat_id, events.map(|e| e.into_iter().map(Arc::new).collect()), now)
            }
            Msg::LastSeqs(last_seqs) => {
                self.checking_last_seqs = false;
                match self.read_outcome("the last seqs of followed chats", last_seqs) {
                    Some(last_seqs) => self.directory.last_seqs(last_seqs, now),
                    None => Vec::new(),
                }
            }
            Msg::Memberships(memberships) => {
                self.close_unfollowed_memberships(memberships);
                Vec::new()
            }
            Msg::Live(live) => {
                self.live(live);
                Vec::new()
            }
            Msg::Presence { user_id, online, chat_ids } => {
                self.presence(user_id, online, &chat_ids);
                Vec::new()
            }
            Msg::RemotePresence { user_id, online } => {
                let hub = self.hub.clone();
                self.jobs.spawn_then(
                    move |db| store::list_chat_ids(&mut db.sql()?, user_id),
                    move |chat_ids| {
                        // A presence frame is live only: one that cannot be routed is dropped.
                        if let Ok(chat_ids) = chat_ids {
                            hub.presence(user_id, online, chat_ids);
                        }
                    },
                );
                Vec::new()
            }
            Msg::Register(registration, done) => {
                self.register(registration);
                let _ = done.send(());
                Vec::new()
            }
            Msg::Subscribe { conn, chats } => self.directory.subscribe(conn, chats, now),
            Msg::Unregister(conn) => {
                self.conns.remove(&conn);
                self.directory.unregister(conn);
                Vec::new()
            }
            Msg::Typing { conn, chat_id } => {
                self.typing(conn, chat_id);
                Vec::new()
            }
            Msg::SessionsEnded(session_ids) => {
                for conn in self.directory.conns_of_sessions(&session_ids) {
                    self.close(conn, CLOSE_LOGGED_OUT);
                }
                Vec::new()
            }
            Msg::ProcessDied => {
                self.next_last_seq_check = now;
                self.check_memberships();
                Vec::new()
            }
            Msg::Resync => {
                let fields: [Field; 2] = [("thread", &"hub"), ("connections", &self.conns.len())];
                self.log.info("resync: closing every WebSocket so its client catches up", &fields);
                self.close_all(CLOSE_LAGGING);
                Vec::new()
            }
            Msg::Shutdown => unreachable!("handled in run"),
        };
        self.carry_out(actions);
    }

    /// The rows a read found, or `None`; a failure is logged once until reads
    /// work again, which is logged too.
    fn read_outcome<T>(&mut self, what: &str, outcome: Result<T, ApiError>) -> Option<T> {
        match outcome {
            Ok(rows) => {
                if std::mem::take(&mut self.reads_failing) {
                    self.log.info("database reads work again", &[("thread", &"hub")]);
                }
                Some(rows)
            }
            Err(error) => {
                if !std::mem::replace(&mut self.reads_failing, true) {
                    self.log.warn(
                        "cannot read from the database; retrying",
                        &[("thread", &"hub"), ("read", &what), ("error", &error)],
                    );
                }
                None
            }
        }
    }

    /// Does what the directory decided: frames out, reads of the table started.
    fn carry_out(&mut self, actions: Vec<Action>) {
        let mut encoded: Option<(Arc<Event>, Encoded)> = None;
        let mut lagging = Vec::new();
        for action in actions {
            match action {
                Action::Deliver(conn_id, event) => {
                    let Some(conn) = self.conns.get(&conn_id) else { continue };
                    if !encoded.as_ref().is_some_and(|(last, _)| Arc::ptr_eq(last, &event)) {
                        encoded = Some((event.clone(), Encoded::new(&event)));
                    }
                    let frames = &encoded.as_ref().expect("encoded just above").1;
                    if let Some(frame) = frames.for_protocol(conn.protocol) {
                        if !offer(conn, frame) {
                            lagging.push(conn_id);
                        }
                    }
                }
                Action::Fetch(reader, chat_id, after) => {
                    let hub = self.hub.clone();
                    let queued = self.jobs.spawn_then(
                        move |db| store::list_events(&mut db.sql()?, chat_id, after, READ_PAGE),
                        move |events| hub.send(Msg::Fetched { reader, chat_id, events }),
                    );
                    if !queued {
                        let actions = self.directory.fetched(reader, chat_id, None, Instant::now());
                        self.carry_out(actions);
                    }
                }
            }
        }
        for conn_id in lagging {
            self.close_lagging(conn_id);
        }
    }

    /// Reads the last seq of every followed chat on a job thread; the answer
    /// comes back as `LastSeqs`.
    fn check_last_seqs(&mut self) {
        let followed = self.directory.followed();
        if followed.is_empty() || self.checking_last_seqs {
            return;
        }
        let hub = self.hub.clone();
        self.checking_last_seqs = self.jobs.spawn_then(
            move |db| store::list_last_seqs(&mut db.sql()?, &followed),
            move |last_seqs| hub.send(Msg::LastSeqs(last_seqs)),
        );
        if self.checking_last_seqs {
            self.metrics.last_seq_checks.inc();
        }
    }

    /// Asks the database which sessions of open connections still live, on a
    /// job thread; the answer comes back as `SessionsEnded`.
    fn check_sessions(&self) {
        let session_ids = self.directory.sessions();
        if session_ids.is_empty() {
            return;
        }
        let (hub, log) = (self.hub.clone(), self.log);
        let asked = session_ids.clone();
        self.jobs.spawn_then(
            move |db| store::find_live_sessions(&mut db.sql()?, &asked),
            move |live| match live {
                Ok(live) => hub.sessions_ended(session_ids.into_iter().filter(|id| !live.contains(id)).collect()),
                Err(error) => {
                    log.warn("cannot check the sessions of open WebSockets", &[("thread", &"hub"), ("error", &error)])
                }
            },
        );
    }

    /// Reads the chats of every connected user, on a job thread; the answer
    /// comes back as `Memberships`.
    fn check_memberships(&self) {
        let users: Vec<UserId> =
            self.conns.values().map(|conn| conn.user_id).collect::<HashSet<_>>().into_iter().collect();
        if users.is_empty() {
            return;
        }
        let hub = self.hub.clone();
        self.jobs.spawn_then(
            move |db| store::list_memberships(&mut db.sql()?, &users),
            move |memberships| hub.send(Msg::Memberships(memberships)),
        );
    }

    /// A connection whose user is a member of a chat it does not follow
    /// missed the join (its signal died with its process): it is told to
    /// catch up with 4008.
    fn close_unfollowed_memberships(&mut self, memberships: Result<Vec<(UserId, ChatId)>, ApiError>) {
        let memberships = match memberships {
            Ok(memberships) => memberships,
            Err(error) => {
                self.log.warn("cannot read the chats of connected users", &[("thread", &"hub"), ("error", &error)]);
                return;
            }
        };
        let mut conns_of: HashMap<UserId, Vec<ConnId>> = HashMap::new();
        for (conn_id, conn) in &self.conns {
            conns_of.entry(conn.user_id).or_default().push(*conn_id);
        }
        let mut stale = HashSet::new();
        for (user_id, chat_id) in memberships {
            for conn_id in conns_of.get(&user_id).map(Vec::as_slice).unwrap_or_default() {
                if self.directory.subscribed(*conn_id) && !self.directory.follows(*conn_id, chat_id) {
                    stale.insert(*conn_id);
                }
            }
        }
        for conn_id in stale {
            self.log
                .info("a connection missed a join; closing it to catch up", &[("thread", &"hub"), ("conn", &conn_id)]);
            self.close(conn_id, CLOSE_LAGGING);
        }
    }

    fn live(&mut self, live: Live) {
        let (chat_id, user_id, message, echo) = match live {
            Live::Typing { chat_id, user_id } => {
                (chat_id, user_id, json!({ "type": "typing", "chat_id": chat_id, "user_id": user_id }), false)
            }
            Live::Read { chat_id, user_id, seq } => {
                (chat_id, user_id, json!({ "type": "read", "chat_id": chat_id, "user_id": user_id, "seq": seq }), true)
            }
        };
        // A read marker also goes to the reader's other connections; typing does not come back.
        let frame = text_frame(&message.to_string());
        let conns = self.directory.followers(chat_id).into_iter().filter(|(_, user)| echo || *user != user_id);
        let conns: Vec<ConnId> = conns.map(|(conn, _)| conn).collect();
        self.send_live(conns, &frame);
    }

    fn presence(&mut self, user_id: UserId, online: bool, chat_ids: &[ChatId]) {
        let frame = text_frame(&json!({ "type": "presence", "user_id": user_id, "online": online }).to_string());
        let mut conns = HashSet::new();
        for chat_id in chat_ids {
            let others = self.directory.followers(*chat_id).into_iter().filter(|(_, user)| *user != user_id);
            conns.extend(others.map(|(conn, _)| conn));
        }
        self.send_live(conns.into_iter().collect(), &frame);
    }

    /// Sends a live frame to these connections, those of the current protocol.
    fn send_live(&mut self, conns: Vec<ConnId>, frame: &Arc<[u8]>) {
        let mut lagging = Vec::new();
        for conn_id in conns {
            if let Some(conn) = self.conns.get(&conn_id).filter(|c| c.protocol == Protocol::Current) {
                if !offer(conn, frame) {
                    lagging.push(conn_id);
                }
            }
        }
        for conn_id in lagging {
            self.close_lagging(conn_id);
        }
    }

    fn register(&mut self, registration: Registration) {
        let Registration { conn, user_id, session_id, protocol, queue, shared } = registration;
        self.directory.register(conn, user_id, session_id);
        self.conns.insert(conn, Conn { user_id, protocol, queue, shared });
    }

    fn typing(&mut self, conn_id: ConnId, chat_id: ChatId) {
        let Some(user_id) = self.conns.get(&conn_id).map(|conn| conn.user_id) else { return };
        if !self.directory.follows(conn_id, chat_id) {
            let frame = text_frame(&ApiError::NotFound.to_frame(None).to_string());
            if self.conns.get(&conn_id).is_some_and(|conn| !offer(conn, &frame)) {
                self.close_lagging(conn_id);
            }
            return;
        }
        self.notifier.signal(Live::Typing { chat_id, user_id }.into());
        self.live(Live::Typing { chat_id, user_id });
    }

    /// Closes a connection whose queue is full: the client catches up from `/events`.
    fn close_lagging(&mut self, conn_id: ConnId) {
        if let Some(conn) = self.conns.get(&conn_id).filter(|conn| conn.shared.close_code().is_none()) {
            let fields: [Field; 4] =
                [("thread", &"hub"), ("conn", &conn_id), ("user", &conn.user_id), ("code", &CLOSE_LAGGING)];
            self.log.warn("WebSocket queue full or its writer gone; closing", &fields);
        }
        self.close(conn_id, CLOSE_LAGGING);
    }

    /// Asks a connection to close; the writer sends the close frame.
    fn close(&mut self, conn_id: ConnId, code: u16) {
        if let Some(conn) = self.conns.get(&conn_id) {
            conn.shared.close(code);
            conn.queue.wake();
        }
    }

    fn close_all(&mut self, code: u16) {
        let all: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn_id in all {
            self.close(conn_id, code);
        }
    }
}

/// An event's frames, encoded once for every recipient.
struct Encoded {
    current: Arc<[u8]>,
    /// The seed's `{"content", "chat_id"}`, for a new message only.
    seed: Option<(ChatId, Arc<[u8]>)>,
}

impl Encoded {
    fn new(event: &Event) -> Encoded {
        let encoded = serde_json::to_string(&EventFrame { kind: "event", event }).expect("events serialize");
        let current = text_frame(&encoded);
        let seed = match &event.payload {
            Payload::Message(message) if event.kind == EventKind::MessageCreated => {
                let frame = json!({ "content": message.content, "chat_id": message.chat_id });
                Some((message.chat_id, text_frame(&frame.to_string())))
            }
            _ => None,
        };
        Encoded { current, seed }
    }

    /// The frame a connection of this protocol gets, if any.
    fn for_protocol(&self, protocol: Protocol) -> Option<&Arc<[u8]>> {
        match (protocol, &self.seed) {
            (Protocol::Current, _) => Some(&self.current),
            (Protocol::Seed(chat), Some((chat_id, frame))) if chat == *chat_id => Some(frame),
            (Protocol::Seed(_), _) => None,
        }
    }
}

/// Queues a frame for a connection without waiting; `false` if its queue is full.
fn offer(conn: &Conn, frame: &Arc<[u8]>) -> bool {
    conn.shared.close_code().is_some() || conn.queue.offer(frame.clone())
}

/// Encodes a server text frame (unmasked) once, to be shared by every recipient.
pub fn text_frame(text: &str) -> Arc<[u8]> {
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    use tungstenite::protocol::frame::Frame;
    let mut bytes = Vec::with_capacity(text.len() + 10);
    Frame::message(text.as_bytes().to_vec(), OpCode::Data(Data::Text), true)
        .format(&mut bytes)
        .expect("writing to a Vec cannot fail");
    bytes.into()
}
