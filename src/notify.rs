//! The bridge between server processes: PostgreSQL LISTEN/NOTIFY.
//!
//! NOTIFY is never sent inside a message's transaction: it takes a
//! cluster-wide lock at commit that defeats group commit. After a change
//! commits, its signal goes to one notifier thread, which batches whatever is
//! pending into one NOTIFY of at most `MAX_PAYLOAD` bytes. Events travel as
//! `(chat_id, seq)` only; a receiver reads them from the table. Typing, read
//! and presence travel whole, since they are not stored.
//!
//! Each process has one listener connection that feeds its hub and skips its
//! own notifications. When that connection is lost, it is opened again and
//! LISTEN re-issued; notifications sent meanwhile are lost, so the hub then
//! closes every WebSocket with 4008 and clients catch up from `/events`.
//!
//! A payload is the sender's process id on the first line, then one signal a line:
//! `e <chat> <seq> [<added user>]`, `t <chat> <user>`, `r <chat> <user> <seq>`, `p <user> <0|1>`,
//! `s <session>`, and `x` when the sender lost signals and everyone must catch up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};

use crate::db::Db;
use crate::hub::{Hub, Live};
use crate::server::App;
use crate::store;

/// PostgreSQL refuses payloads of 8000 bytes or more.
const MAX_PAYLOAD: usize = 7900;
/// The most notifications the listener hands on at once.
const MAX_BATCH: usize = 256;
/// How long the notifier waits before each new try of a failed NOTIFY.
const RETRY_PAUSES: [Duration; 3] = [Duration::from_millis(50), Duration::from_millis(250), Duration::ZERO];
/// Signals waiting for the notifier; past this they are dropped (clients see the gap by seq).
const QUEUE: usize = 65_536;

/// Something other processes must hear of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signal {
    /// `added` names the user the event makes a member (`Event::joins`): a
    /// process where that user is connected must start following the chat.
    Event {
        chat_id: i64,
        seq: i64,
        added: Option<i64>,
    },
    Typing {
        chat_id: i64,
        user_id: i64,
    },
    Read {
        chat_id: i64,
        user_id: i64,
        seq: i64,
    },
    Presence {
        user_id: i64,
        online: bool,
    },
    SessionEnded {
        session_id: i64,
    },
    /// This process lost signals it should have sent: everyone must catch up.
    Resync,
}

impl From<Live> for Signal {
    fn from(live: Live) -> Signal {
        match live {
            Live::Typing { chat_id, user_id } => Signal::Typing { chat_id, user_id },
            Live::Read { chat_id, user_id, seq } => Signal::Read { chat_id, user_id, seq },
        }
    }
}

impl Signal {
    fn encode(&self) -> String {
        match self {
            Signal::Event { chat_id, seq, added: None } => format!("e {chat_id} {seq}"),
            Signal::Event { chat_id, seq, added: Some(user_id) } => format!("e {chat_id} {seq} {user_id}"),
            Signal::Typing { chat_id, user_id } => format!("t {chat_id} {user_id}"),
            Signal::Read { chat_id, user_id, seq } => format!("r {chat_id} {user_id} {seq}"),
            Signal::Presence { user_id, online } => format!("p {user_id} {}", u8::from(*online)),
            Signal::SessionEnded { session_id } => format!("s {session_id}"),
            Signal::Resync => "x".to_string(),
        }
    }

    fn decode(line: &str) -> Option<Signal> {
        let parts: Vec<&str> = line.split(' ').collect();
        let n = |idx: usize| parts.get(idx).and_then(|p| p.parse::<i64>().ok());
        Some(match (parts.first().copied(), parts.len()) {
            (Some("e"), 3) => Signal::Event { chat_id: n(1)?, seq: n(2)?, added: None },
            (Some("e"), 4) => Signal::Event { chat_id: n(1)?, seq: n(2)?, added: Some(n(3)?) },
            (Some("t"), 3) => Signal::Typing { chat_id: n(1)?, user_id: n(2)? },
            (Some("r"), 4) => Signal::Read { chat_id: n(1)?, user_id: n(2)?, seq: n(3)? },
            (Some("p"), 3) => Signal::Presence { user_id: n(1)?, online: n(2)? == 1 },
            (Some("s"), 2) => Signal::SessionEnded { session_id: n(1)? },
            (Some("x"), 1) => Signal::Resync,
            _ => return None,
        })
    }
}

/// Splits a payload into its sender and signals; malformed lines are skipped.
fn decode_payload(payload: &str) -> Option<(i64, Vec<Signal>)> {
    let mut lines = payload.lines();
    let origin = lines.next()?.parse().ok()?;
    Some((origin, lines.filter_map(Signal::decode).collect()))
}

/// A handle to the notifier thread.
#[derive(Clone)]
pub struct Notifier {
    queue: Sender<Signal>,
    /// Set when a signal could not even be queued; the next batch then says resync.
    overflowed: Arc<AtomicBool>,
}

impl Notifier {
    /// Starts the thread that sends this process's signals.
    pub fn start(database_url: &str, process_id: i64) -> Result<Notifier, String> {
        let (queue, signals) = bounded(QUEUE);
        let overflowed = Arc::new(AtomicBool::new(false));
        let db = Db::new(database_url)?;
        let lost = overflowed.clone();
        std::thread::Builder::new()
            .name("notifier".into())
            .spawn(move || send_batches(db, process_id, &signals, &lost))
            .map_err(|e| format!("cannot start the notifier thread: {e}"))?;
        Ok(Notifier { queue, overflowed })
    }

    /// Queues a signal for other processes; never blocks. Typing gives way
    /// first: past half the queue it is dropped, leaving room for the rest.
    /// Anything else that finds the queue full is lost, and the next batch
    /// tells the other processes to resync.
    pub fn signal(&self, signal: Signal) {
        if matches!(signal, Signal::Typing { .. }) && self.queue.len() > QUEUE / 2 {
            return;
        }
        if self.queue.try_send(signal).is_err() {
            self.overflowed.store(true, Ordering::SeqCst);
        }
    }
}

fn send_batches(mut db: Db, process_id: i64, signals: &Receiver<Signal>, overflowed: &AtomicBool) {
    let mut lost = false;
    loop {
        // After a loss, the resync goes out within a second even if nothing else does.
        let first = match lost {
            false => signals.recv().map_err(|_| RecvTimeoutError::Disconnected),
            true => signals.recv_timeout(Duration::from_secs(1)),
        };
        let mut lines = match first {
            Ok(signal) => vec![signal.encode()],
            Err(RecvTimeoutError::Timeout) => Vec::new(),
            Err(RecvTimeoutError::Disconnected) => return,
        };
        if lost || overflowed.swap(false, Ordering::SeqCst) {
            lines.insert(0, Signal::Resync.encode());
        }
        let mut payload = format!("{process_id}\n{}", lines.join("\n"));
        while payload.len() < MAX_PAYLOAD - 64 {
            let Ok(next) = signals.try_recv() else { break };
            payload.push('\n');
            payload.push_str(&next.encode());
        }
        // A batch that still fails after the retries is lost; the next batch
        // that gets through tells every other process to resync, which closes
        // their sockets with 4008 so clients catch up from the log.
        lost = true;
        for pause in RETRY_PAUSES {
            if db.sql().and_then(|mut sql| store::notify(&mut sql, &payload)).is_ok() {
                lost = false;
                break;
            }
            db.disconnect();
            std::thread::sleep(pause);
        }
    }
}

/// Starts the listener thread, which feeds other processes' signals to the hub
/// until the server stops.
pub fn listen(app: Arc<App>) -> Result<(), String> {
    let db = Db::new(&app.config.database_url)?;
    std::thread::Builder::new()
        .name("listener".into())
        .spawn(move || run_listener(db, &app))
        .map_err(|e| format!("cannot start the listener thread: {e}"))?;
    Ok(())
}

fn run_listener(mut db: Db, app: &App) {
    let (process_id, hub) = (app.process_id, &app.hub);
    let mut backoff = Duration::from_millis(100);
    let mut reconnecting = false;
    while !app.stopping.load(Ordering::SeqCst) {
        let listening = db.sql().and_then(|mut sql| store::listen(&mut sql));
        if listening.is_err() {
            db.disconnect();
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(2));
            continue;
        }
        backoff = Duration::from_millis(100);
        if reconnecting {
            hub.resync();
        }
        reconnecting = true;
        // `relay` blocks up to a second waiting for notifications, so this loop does not spin.
        while !app.stopping.load(Ordering::SeqCst) {
            if !relay(&mut db, process_id, hub) {
                break;
            }
        }
        db.disconnect();
    }
}

/// Waits up to a second for notifications and hands them to the hub;
/// `false` when the connection is gone.
fn relay(db: &mut Db, process_id: i64, hub: &Hub) -> bool {
    let Ok(mut sql) = db.sql() else { return false };
    let mut payloads = Vec::new();
    {
        use postgres::fallible_iterator::FallibleIterator;
        let mut notifications = sql.client().notifications();
        // Wait for the first; then take only what has already arrived, since
        // `timeout_iter` restarts its timer on every notification and would
        // never return under steady traffic.
        match notifications.timeout_iter(Duration::from_secs(1)).next() {
            Ok(Some(first)) => payloads.push(first.payload().to_string()),
            Ok(None) => {}
            Err(_) => return false,
        }
        let mut arrived = notifications.iter();
        while payloads.len() < MAX_BATCH {
            match arrived.next() {
                Ok(Some(notification)) => payloads.push(notification.payload().to_string()),
                Ok(None) => break,
                Err(_) => return false,
            }
        }
    }
    if payloads.is_empty() && sql.client().is_valid(Duration::from_secs(5)).is_err() {
        return false;
    }
    for (origin, signals) in payloads.iter().filter_map(|p| decode_payload(p)) {
        if origin == process_id {
            continue;
        }
        for signal in signals {
            match signal {
                Signal::Event { chat_id, seq, added } => hub.remote_event(chat_id, seq, added),
                Signal::Typing { chat_id, user_id } => hub.live(Live::Typing { chat_id, user_id }),
                Signal::Read { chat_id, user_id, seq } => hub.live(Live::Read { chat_id, user_id, seq }),
                Signal::Presence { user_id, online } => match store::list_chat_ids(&mut sql, user_id) {
                    Ok(chat_ids) => hub.presence(user_id, online, chat_ids),
                    Err(_) => return false,
                },
                Signal::SessionEnded { session_id } => hub.sessions_ended(vec![session_id]),
                Signal::Resync => hub.resync(),
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_survive_a_round_trip() {
        let signals = [
            Signal::Event { chat_id: 1, seq: 2, added: None },
            Signal::Event { chat_id: 1, seq: 3, added: Some(4) },
            Signal::Typing { chat_id: 3, user_id: 4 },
            Signal::Read { chat_id: 5, user_id: 6, seq: 7 },
            Signal::Presence { user_id: 8, online: true },
            Signal::Presence { user_id: 9, online: false },
            Signal::SessionEnded { session_id: 10 },
            Signal::Resync,
        ];
        let payload = format!("42\n{}", signals.iter().map(Signal::encode).collect::<Vec<_>>().join("\n"));
        assert_eq!(decode_payload(&payload), Some((42, signals.to_vec())));
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let (origin, signals) = decode_payload("7\nx 1\ne 1\ne 1 2\ne a b\n").unwrap();
        assert_eq!((origin, signals), (7, vec![Signal::Event { chat_id: 1, seq: 2, added: None }]));
        assert_eq!(decode_payload("not a number\ne 1 2"), None);
    }
}
