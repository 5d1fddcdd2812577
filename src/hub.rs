//! The hub: one thread that knows every WebSocket connection of this process,
//! which chats each connected user is in, and fans events out to them.
//!
//! Everything reaches the hub as a message on one channel, so its state needs
//! no lock and its decisions happen in one order. Events arrive from several
//! workers and processes, so possibly out of order; the hub delivers each
//! chat's events strictly by seq, holding a later one until the earlier
//! arrives, and asks the database for a missing one after `HOLD` (which also
//! covers a process that died between its commit and its notification).
//!
//! A connection registers before its `ready` snapshot is read and is
//! "pending" until it subscribes with that snapshot; the events received
//! meanwhile are kept and replayed past the snapshot's seqs, so nothing falls
//! between the snapshot and the subscription.
//!
//! The hub never blocks on a connection: each has a bounded queue, and one
//! that is full is closed with 4008 (`lagging`); the client catches up with
//! `/events`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};
use serde_json::json;

use crate::error::ApiError;
use crate::jobs::Jobs;
use crate::log::Log;
use crate::model::{ChatId, Event, EventKind, Live, Payload, SessionId, UserId};
use crate::notify::Notifier;
use crate::store;
use crate::watch::Watch;

/// How long a later seq waits for an earlier one before the hub reads it from the table.
const HOLD: Duration = Duration::from_millis(20);
/// How often the hub checks that every connection's session is still live:
/// this closes the sockets of sessions that expired, or whose logout
/// notification from another process was lost.
const SESSION_CHECK: Duration = Duration::from_secs(30);
/// The most events a pending connection keeps before it is told to catch up.
const MAX_PENDING: usize = 10_000;

/// Close codes the server sends.
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_LAGGING: u16 = 4008;
pub const CLOSE_LOGGED_OUT: u16 = 4001;
pub const CLOSE_IDLE: u16 = 4000;

pub type ConnId = u64;

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
}

impl Queue {
    pub fn new(limit: usize) -> (Queue, Receiver<Out>) {
        let (sender, receiver) = unbounded();
        (Queue { sender, limit }, receiver)
    }

    /// Queues a frame unless `limit` frames wait already; `false` means the
    /// connection is lagging.
    pub fn offer(&self, frame: Arc<[u8]>) -> bool {
        self.sender.len() < self.limit && self.sender.send(Out::Frame(frame)).is_ok()
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
    Fetched { chat_id: ChatId, events: Result<Vec<Event>, ApiError> },
    Live(Live),
    Presence { user_id: UserId, online: bool, chat_ids: Vec<ChatId> },
    Register(Registration, Sender<()>),
    Subscribe { conn: ConnId, chats: Vec<(ChatId, i64)> },
    Unregister(ConnId),
    Typing { conn: ConnId, chat_id: ChatId },
    SessionsEnded(Vec<SessionId>),
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
    pub fn start(jobs: Jobs, notifier: Notifier, log: Log, watch: &Watch) -> Result<Hub, String> {
        let (inbox, messages) = unbounded();
        let hub = Hub { inbox };
        let state = State {
            hub: hub.clone(),
            jobs,
            notifier,
            log,
            conns: HashMap::new(),
            n_pending: 0,
            users: HashMap::new(),
            chats: HashMap::new(),
            last_session_check: Instant::now(),
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

    /// The cross-process feed had a gap: every client must catch up.
    pub fn resync(&self) {
        self.send(Msg::Resync);
    }

    /// Closes every connection with 1001 and stops the hub.
    pub fn shutdown(&self) {
        self.send(Msg::Shutdown);
    }
}

struct Conn {
    user_id: UserId,
    session_id: SessionId,
    protocol: Protocol,
    queue: Queue,
    shared: Arc<ConnShared>,
    /// Every event the hub received while the connection waited for its
    /// snapshot, in arrival order (before ordering, so none is missed).
    pending: Option<Vec<Arc<Event>>>,
}

/// Ordering state of one chat that someone here cares about.
#[derive(Default)]
struct ChatState {
    /// The next seq to deliver.
    next: i64,
    held: BTreeMap<i64, Arc<Event>>,
    /// The highest seq another process announced.
    announced: i64,
    fetching: bool,
    deadline: Option<Instant>,
    /// Users with a subscribed connection here who are members.
    users: HashSet<UserId>,
}

struct State {
    hub: Hub,
    jobs: Jobs,
    /// Typing frames, checked here, go on to other processes from here.
    notifier: Notifier,
    log: Log,
    conns: HashMap<ConnId, Conn>,
    /// How many connections are waiting for their snapshot.
    n_pending: usize,
    /// For each user with a subscribed connection: its connections and chats.
    users: HashMap<UserId, (Vec<ConnId>, HashSet<ChatId>)>,
    chats: HashMap<ChatId, ChatState>,
    last_session_check: Instant,
}

impl State {
    fn run(mut self, messages: Receiver<Msg>) {
        loop {
            let wait =
                self.next_deadline().map_or(Duration::from_secs(1), |at| at.saturating_duration_since(Instant::now()));
            match messages.recv_timeout(wait) {
                Ok(Msg::Shutdown) => {
                    self.close_all(CLOSE_GOING_AWAY);
                    return;
                }
                Ok(msg) => self.handle(msg),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            }
            self.fetch_overdue();
            if self.last_session_check.elapsed() >= SESSION_CHECK {
                self.last_session_check = Instant::now();
                self.check_sessions();
            }
        }
    }

    /// Asks the database which sessions of open connections still live, on a
    /// job thread; the answer comes back as `SessionsEnded`.
    fn check_sessions(&self) {
        let mut session_ids: Vec<SessionId> = self.conns.values().map(|c| c.session_id).collect();
        session_ids.sort_unstable();
        session_ids.dedup();
        if session_ids.is_empty() {
            return;
        }
        let (hub, log) = (self.hub.clone(), self.log);
        self.jobs.spawn(move |db| {
            match db.sql().and_then(|mut sql| store::find_live_sessions(&mut sql, &session_ids)) {
                Ok(live) => hub.sessions_ended(session_ids.into_iter().filter(|id| !live.contains(id)).collect()),
                Err(error) => {
                    log.warn("cannot check the sessions of open WebSockets", &[("thread", &"hub"), ("error", &error)])
                }
            }
        });
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Event(event) => self.accept(event),
            Msg::RemoteEvent { chat_id, seq, added } => self.announced(chat_id, seq, added),
            Msg::Fetched { chat_id, events } => self.fetched(chat_id, events),
            Msg::Live(live) => self.live(live),
            Msg::Presence { user_id, online, chat_ids } => self.presence(user_id, online, &chat_ids),
            Msg::Register(registration, done) => {
                self.register(registration);
                let _ = done.send(());
            }
            Msg::Subscribe { conn, chats } => self.subscribe(conn, chats),
            Msg::Unregister(conn) => self.unregister(conn),
            Msg::Typing { conn, chat_id } => self.typing(conn, chat_id),
            Msg::SessionsEnded(session_ids) => {
                let ended: Vec<ConnId> =
                    self.conns.iter().filter(|(_, c)| session_ids.contains(&c.session_id)).map(|(id, _)| *id).collect();
                for conn in ended {
                    self.close(conn, CLOSE_LOGGED_OUT);
                }
            }
            Msg::Resync => {
                let fields: [crate::log::Field; 2] = [("thread", &"hub"), ("connections", &self.conns.len())];
                self.log.info("resync: closing every WebSocket so its client catches up", &fields);
                self.close_all(CLOSE_LAGGING);
            }
            Msg::Shutdown => unreachable!("handled in run"),
        }
    }

    /// Whether anyone here could want this chat's events: a member with a
    /// subscribed connection, a connected user the event adds, or a
    /// connection still waiting for its snapshot.
    fn wanted(&self, chat_id: ChatId, added: Option<UserId>) -> bool {
        self.chats.contains_key(&chat_id) || added.is_some_and(|u| self.users.contains_key(&u)) || self.n_pending > 0
    }

    /// Keeps received events for the connections waiting for their snapshot.
    fn remember_pending(&mut self, events: &[Arc<Event>]) {
        if self.n_pending == 0 {
            return;
        }
        let mut overflowing = Vec::new();
        for (conn_id, conn) in self.conns.iter_mut() {
            if let Some(pending) = &mut conn.pending {
                pending.extend(events.iter().cloned());
                if pending.len() > MAX_PENDING {
                    overflowing.push(*conn_id);
                }
            }
        }
        for conn_id in overflowing {
            self.close_lagging(conn_id);
        }
    }

    fn accept(&mut self, event: Arc<Event>) {
        self.remember_pending(std::slice::from_ref(&event));
        if !self.wanted(event.chat_id, event.joins()) {
            return;
        }
        let joins_here = self.joins_unfollowed(event.chat_id, event.joins());
        let chat =
            self.chats.entry(event.chat_id).or_insert_with(|| ChatState { next: event.seq, ..ChatState::default() });
        if joins_here {
            rewind(chat, event.seq);
        }
        if event.seq >= chat.next {
            chat.held.insert(event.seq, event.clone());
        }
        self.drain(event.chat_id);
        if joins_here {
            // Later events of this chat may have arrived, and been skipped, before
            // this one: read them from the table once.
            if let Some(chat) = self.chats.get_mut(&event.chat_id) {
                chat.deadline = chat.deadline.or(Some(Instant::now() + HOLD));
            }
        }
    }

    fn announced(&mut self, chat_id: ChatId, seq: i64, added: Option<UserId>) {
        if !self.wanted(chat_id, added) {
            return;
        }
        let joins_here = self.joins_unfollowed(chat_id, added);
        let chat = self.chats.entry(chat_id).or_insert_with(|| ChatState { next: seq, ..ChatState::default() });
        if joins_here {
            rewind(chat, seq);
        }
        chat.announced = chat.announced.max(seq);
        if seq >= chat.next && !chat.held.contains_key(&seq) {
            self.fetch(chat_id);
        }
    }

    /// Whether an event makes a user connected here a member of a chat that
    /// nobody here follows yet. Such a chat's ordering state, if any, was
    /// started by whatever event came first and delivered to nobody, so it
    /// may be past this event: it is rewound to it.
    fn joins_unfollowed(&self, chat_id: ChatId, joins: Option<UserId>) -> bool {
        let followed = self.chats.get(&chat_id).is_some_and(|chat| !chat.users.is_empty());
        !followed && joins.is_some_and(|user_id| self.users.contains_key(&user_id))
    }

    fn fetched(&mut self, chat_id: ChatId, events: Result<Vec<Event>, ApiError>) {
        let events: Option<Vec<Arc<Event>>> = match events {
            Ok(events) => Some(events.into_iter().map(Arc::new).collect()),
            Err(error) => {
                let fields: [crate::log::Field; 3] = [("thread", &"hub"), ("chat", &chat_id), ("error", &error)];
                self.log.warn("cannot read a chat's missing events; retrying", &fields);
                None
            }
        };
        if let Some(events) = &events {
            self.remember_pending(events);
        }
        let Some(chat) = self.chats.get_mut(&chat_id) else { return };
        chat.fetching = false;
        match events {
            Some(events) => {
                for event in events {
                    if event.seq >= chat.next {
                        chat.held.insert(event.seq, event);
                    }
                }
                self.drain(chat_id);
            }
            None => chat.deadline = Some(Instant::now() + HOLD * 10),
        }
    }

    /// Delivers held events from `next` on; sets a deadline if a gap remains.
    fn drain(&mut self, chat_id: ChatId) {
        let mut ready = Vec::new();
        let Some(chat) = self.chats.get_mut(&chat_id) else { return };
        while let Some(event) = chat.held.remove(&chat.next) {
            chat.next += 1;
            ready.push(event);
        }
        let gap = !chat.held.is_empty() || chat.announced >= chat.next;
        chat.deadline = match (gap, chat.deadline) {
            (false, _) => None,
            (true, Some(at)) => Some(at),
            (true, None) => Some(Instant::now() + HOLD),
        };
        for event in ready {
            self.deliver(event);
        }
        self.forget_if_unwanted(chat_id);
    }

    fn forget_if_unwanted(&mut self, chat_id: ChatId) {
        let idle = self.chats.get(&chat_id).is_some_and(|c| c.users.is_empty() && c.deadline.is_none() && !c.fetching);
        if idle && self.n_pending == 0 {
            self.chats.remove(&chat_id);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.chats.values().filter(|c| !c.fetching).filter_map(|c| c.deadline).min()
    }

    fn fetch_overdue(&mut self) {
        let now = Instant::now();
        let overdue: Vec<ChatId> = self
            .chats
            .iter()
            .filter(|(_, c)| !c.fetching && c.deadline.is_some_and(|at| at <= now))
            .map(|(id, _)| *id)
            .collect();
        for chat_id in overdue {
            self.fetch(chat_id);
        }
    }

    /// Reads the chat's events from `next` on, on a job thread.
    fn fetch(&mut self, chat_id: ChatId) {
        let Some(chat) = self.chats.get_mut(&chat_id) else { return };
        if chat.fetching {
            return;
        }
        chat.fetching = true;
        chat.deadline = None;
        let (after, hub) = (chat.next - 1, self.hub.clone());
        let queued = self.jobs.spawn(move |db| {
            let events = db.sql().and_then(|mut sql| store::list_events(&mut sql, chat_id, after, 1000));
            hub.send(Msg::Fetched { chat_id, events });
        });
        if !queued {
            chat.fetching = false;
            chat.deadline = Some(Instant::now() + HOLD * 10);
        }
    }

    /// Sends one in-order event to every connection that should have it.
    fn deliver(&mut self, event: Arc<Event>) {
        if let Some(user_id) = event.joins() {
            self.join(user_id, event.chat_id);
        }
        let encoded = Encoded::new(&event);
        let mut overflowing = Vec::new();
        let users: Vec<UserId> =
            self.chats.get(&event.chat_id).map(|c| c.users.iter().copied().collect()).unwrap_or_default();
        for user_id in users {
            for conn_id in self.users.get(&user_id).map(|(conns, _)| conns.as_slice()).unwrap_or_default() {
                let Some(conn) = self.conns.get(conn_id) else { continue };
                if let Some(frame) = encoded.for_protocol(conn.protocol) {
                    if !offer(conn, frame) {
                        overflowing.push(*conn_id);
                    }
                }
            }
        }
        if let Some(user_id) = event.leaves() {
            self.leave(user_id, event.chat_id);
        }
        for conn_id in overflowing {
            self.close_lagging(conn_id);
        }
    }

    fn join(&mut self, user_id: UserId, chat_id: ChatId) {
        if let Some((_, chats)) = self.users.get_mut(&user_id) {
            chats.insert(chat_id);
            self.chats.entry(chat_id).or_default().users.insert(user_id);
        }
    }

    fn leave(&mut self, user_id: UserId, chat_id: ChatId) {
        if let Some((_, chats)) = self.users.get_mut(&user_id) {
            chats.remove(&chat_id);
        }
        if let Some(chat) = self.chats.get_mut(&chat_id) {
            chat.users.remove(&user_id);
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
        let users: Vec<UserId> =
            self.chats.get(&chat_id).map(|c| c.users.iter().copied().collect()).unwrap_or_default();
        self.send_to_users(users.into_iter().filter(|u| echo || *u != user_id), &frame);
    }

    fn presence(&mut self, user_id: UserId, online: bool, chat_ids: &[ChatId]) {
        let frame = text_frame(&json!({ "type": "presence", "user_id": user_id, "online": online }).to_string());
        let mut users = HashSet::new();
        for chat_id in chat_ids {
            if let Some(chat) = self.chats.get(chat_id) {
                users.extend(chat.users.iter().copied().filter(|u| *u != user_id));
            }
        }
        self.send_to_users(users.into_iter(), &frame);
    }

    /// Sends a live frame to every current-protocol connection of these users.
    fn send_to_users(&mut self, users: impl Iterator<Item = UserId>, frame: &Arc<[u8]>) {
        let mut overflowing = Vec::new();
        for user_id in users {
            for conn_id in self.users.get(&user_id).map(|(conns, _)| conns.as_slice()).unwrap_or_default() {
                if let Some(conn) = self.conns.get(conn_id).filter(|c| c.protocol == Protocol::Current) {
                    if !offer(conn, frame) {
                        overflowing.push(*conn_id);
                    }
                }
            }
        }
        for conn_id in overflowing {
            self.close_lagging(conn_id);
        }
    }

    fn register(&mut self, registration: Registration) {
        let conn = Conn {
            user_id: registration.user_id,
            session_id: registration.session_id,
            protocol: registration.protocol,
            queue: registration.queue,
            shared: registration.shared,
            pending: Some(Vec::new()),
        };
        self.conns.insert(registration.conn, conn);
        self.n_pending += 1;
    }

    /// Ends the pending state. For each of the user's chats (the snapshot's,
    /// and any it joined meanwhile), the events past the snapshot's seq that
    /// arrived while pending go to the connection in seq order; later ones
    /// reach it through normal delivery.
    fn subscribe(&mut self, conn_id: ConnId, snapshot: Vec<(ChatId, i64)>) {
        let Some(conn) = self.conns.get_mut(&conn_id) else { return };
        let Some(mut pending) = conn.pending.take() else { return };
        self.n_pending -= 1;
        let (user_id, protocol) = (conn.user_id, conn.protocol);
        pending.sort_by_key(|event| (event.chat_id, event.seq));
        pending.dedup_by_key(|event| (event.chat_id, event.seq));

        // Each chat's seq already covered by the snapshot, and where membership ended.
        let mut covered: HashMap<ChatId, i64> = snapshot.into_iter().collect();
        let mut left: HashMap<ChatId, i64> = HashMap::new();
        for event in &pending {
            if event.joins() == Some(user_id) {
                covered.entry(event.chat_id).or_insert(event.seq - 1);
                left.remove(&event.chat_id);
            }
            if event.leaves() == Some(user_id) {
                left.insert(event.chat_id, event.seq);
            }
        }

        let joined: HashSet<ChatId> = covered.keys().filter(|chat_id| !left.contains_key(chat_id)).copied().collect();
        // The chats this user already follows here, through another connection.
        let following: HashSet<ChatId> = self.users.get(&user_id).map(|(_, chats)| chats.clone()).unwrap_or_default();
        let entry = self.users.entry(user_id).or_default();
        entry.0.push(conn_id);
        entry.1.extend(joined.iter().copied());

        let mut replay: Vec<Arc<Event>> = Vec::new();
        let mut restarted = Vec::new();
        for (chat_id, seq) in &covered {
            let events = pending.iter().filter(|e| e.chat_id == *chat_id && e.seq > *seq);
            match left.get(chat_id) {
                // Removed while pending, and not followed here otherwise: everything
                // up to its own removal, from what was kept.
                Some(until) if !following.contains(chat_id) => {
                    replay.extend(events.filter(|e| e.seq <= *until).cloned());
                    continue;
                }
                _ => {}
            }
            match self.chats.get_mut(chat_id) {
                // Someone here is subscribed: the chat's order is settled up to `next`.
                Some(chat) if !chat.users.is_empty() => replay.extend(events.filter(|e| e.seq < chat.next).cloned()),
                // Nobody is: order this chat from the snapshot on.
                _ => {
                    let chat = self.chats.entry(*chat_id).or_default();
                    chat.next = seq + 1;
                    chat.held.retain(|held_seq, _| *held_seq > *seq);
                    for event in events {
                        chat.held.insert(event.seq, event.clone());
                    }
                    restarted.push(*chat_id);
                }
            }
        }
        for chat_id in &joined {
            self.chats.entry(*chat_id).or_default().users.insert(user_id);
        }
        if let Some(conn) = self.conns.get(&conn_id) {
            for event in &replay {
                if let Some(frame) = Encoded::new(event).for_protocol(protocol) {
                    if !offer(conn, frame) {
                        self.close_lagging(conn_id);
                        break;
                    }
                }
            }
        }
        for chat_id in restarted {
            self.drain(chat_id);
        }
        if self.n_pending == 0 {
            // Chats kept only for connections that were waiting can go now.
            let all: Vec<ChatId> = self.chats.keys().copied().collect();
            for chat_id in all {
                self.forget_if_unwanted(chat_id);
            }
        }
    }

    fn unregister(&mut self, conn_id: ConnId) {
        let Some(conn) = self.conns.remove(&conn_id) else { return };
        if conn.pending.is_some() {
            self.n_pending -= 1;
        }
        let Some((conns, chats)) = self.users.get_mut(&conn.user_id) else { return };
        conns.retain(|c| *c != conn_id);
        if !conns.is_empty() {
            return;
        }
        let chats: Vec<ChatId> = chats.iter().copied().collect();
        self.users.remove(&conn.user_id);
        for chat_id in chats {
            if let Some(chat) = self.chats.get_mut(&chat_id) {
                chat.users.remove(&conn.user_id);
            }
            self.forget_if_unwanted(chat_id);
        }
    }

    fn typing(&mut self, conn_id: ConnId, chat_id: ChatId) {
        let Some(conn) = self.conns.get(&conn_id) else { return };
        let user_id = conn.user_id;
        let member = self.users.get(&user_id).is_some_and(|(_, chats)| chats.contains(&chat_id));
        if !member {
            if !offer(conn, &text_frame(&ApiError::NotFound.to_frame(None).to_string())) {
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
            let fields: [crate::log::Field; 4] =
                [("thread", &"hub"), ("conn", &conn_id), ("user", &conn.user_id), ("code", &CLOSE_LAGGING)];
            self.log.warn("WebSocket queue full; closing", &fields);
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
        let current = text_frame(&json!({ "type": "event", "event": event }).to_string());
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

/// Restarts a chat that nobody here follows at `seq`: what it delivered past
/// that went to nobody, and is read again from the table.
fn rewind(chat: &mut ChatState, seq: i64) {
    if seq < chat.next {
        chat.next = seq;
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
