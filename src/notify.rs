//! Telling the other server processes: signals and the notifier thread that
//! sends them with PostgreSQL NOTIFY (`listen.rs` hears them).
//!
//! NOTIFY is never sent inside a message's transaction: it takes a
//! cluster-wide lock at commit that defeats group commit. After a change
//! commits, its signal goes to one notifier thread, which batches whatever is
//! pending into one NOTIFY of at most `MAX_PAYLOAD` bytes. Events travel as
//! `(chat_id, seq)` only; a receiver reads them from the table. Typing, read
//! and presence travel whole, since they are not stored.
//!
//! A payload is the sender's process id on the first line, then one signal a line:
//! `e <chat> <seq> [<added user>]`, `t <chat> <user>`, `r <chat> <user> <seq>`, `p <user> <0|1>`,
//! `s <session> <ticket>`, `c <process> <ticket> <session>` (confirming a session end to
//! the process that asked; `confirm.rs`), and `x` when the sender lost signals and everyone
//! must catch up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};

use crate::db::Db;
use crate::log::Log;
use crate::metrics::Metrics;
use crate::model::{ChatId, Live, SessionId, UserId};
use crate::store;
use crate::watch::Watch;

/// PostgreSQL refuses payloads of 8000 bytes or more.
const MAX_PAYLOAD: usize = 7900;
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
        chat_id: ChatId,
        seq: i64,
        added: Option<UserId>,
    },
    Typing {
        chat_id: ChatId,
        user_id: UserId,
    },
    Read {
        chat_id: ChatId,
        user_id: UserId,
        seq: i64,
    },
    Presence {
        user_id: UserId,
        online: bool,
    },
    /// A session ended; `ticket` (unless 0) asks every listener to confirm
    /// once it forgot the session.
    SessionEnded {
        session_id: SessionId,
        ticket: u64,
    },
    /// Tells process `to` that the sender forgot `session_id`, of `ticket`.
    Confirmed {
        to: i64,
        ticket: u64,
        session_id: SessionId,
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
            Signal::SessionEnded { session_id, ticket } => format!("s {session_id} {ticket}"),
            Signal::Confirmed { to, ticket, session_id } => format!("c {to} {ticket} {session_id}"),
            Signal::Resync => "x".to_string(),
        }
    }

    fn decode(line: &str) -> Option<Signal> {
        let parts: Vec<&str> = line.split(' ').collect();
        let n = |idx: usize| parts.get(idx).and_then(|p| p.parse::<i64>().ok());
        let (chat, user) = (|idx| n(idx).map(ChatId), |idx| n(idx).map(UserId));
        Some(match (parts.first().copied(), parts.len()) {
            (Some("e"), 3) => Signal::Event { chat_id: chat(1)?, seq: n(2)?, added: None },
            (Some("e"), 4) => Signal::Event { chat_id: chat(1)?, seq: n(2)?, added: Some(user(3)?) },
            (Some("t"), 3) => Signal::Typing { chat_id: chat(1)?, user_id: user(2)? },
            (Some("r"), 4) => Signal::Read { chat_id: chat(1)?, user_id: user(2)?, seq: n(3)? },
            (Some("p"), 3) => Signal::Presence { user_id: user(1)?, online: n(2)? == 1 },
            // Without a ticket: from a process of the release before tickets.
            (Some("s"), 2) => Signal::SessionEnded { session_id: SessionId(n(1)?), ticket: 0 },
            (Some("s"), 3) => Signal::SessionEnded { session_id: SessionId(n(1)?), ticket: parts[2].parse().ok()? },
            (Some("c"), 4) => {
                Signal::Confirmed { to: n(1)?, ticket: parts[2].parse().ok()?, session_id: SessionId(n(3)?) }
            }
            (Some("x"), 1) => Signal::Resync,
            _ => return None,
        })
    }
}

/// `signals` from `process_id` as NOTIFY payloads, each under `MAX_PAYLOAD`:
/// for a caller that sends them itself, inside its own transaction.
pub fn payloads(process_id: i64, signals: &[Signal]) -> Vec<String> {
    let mut payloads: Vec<String> = Vec::new();
    for line in signals.iter().map(Signal::encode) {
        match payloads.last_mut() {
            Some(payload) if payload.len() + 1 + line.len() < MAX_PAYLOAD => {
                payload.push('\n');
                payload.push_str(&line);
            }
            _ => payloads.push(format!("{process_id}\n{line}")),
        }
    }
    payloads
}

/// Splits a payload into its sender and signals; malformed lines are skipped.
pub fn decode_payload(payload: &str) -> Option<(i64, Vec<Signal>)> {
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
    /// Starts the watched thread that sends this process's signals. A
    /// `silent` notifier (the test-only `MESSAGING_FAULT=silent-notifier`)
    /// drops every signal, as a process killed between commit and NOTIFY would.
    pub fn start(
        database_url: &str,
        process_id: i64,
        log: Log,
        metrics: &Arc<Metrics>,
        watch: &Watch,
        silent: bool,
    ) -> Result<Notifier, String> {
        let (queue, signals) = bounded(QUEUE);
        let overflowed = Arc::new(AtomicBool::new(false));
        let db = Db::new(database_url, metrics)?;
        let lost = overflowed.clone();
        watch.spawn("notifier", move || match silent {
            false => send_batches(db, process_id, &signals, &lost, log),
            true => signals.iter().for_each(drop),
        })?;
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

fn send_batches(mut db: Db, process_id: i64, signals: &Receiver<Signal>, overflowed: &AtomicBool, log: Log) {
    let mut lost_batches: usize = 0;
    loop {
        let lost = lost_batches > 0;
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
        let overflow = overflowed.swap(false, Ordering::SeqCst);
        if overflow {
            log.warn(
                "signal queue was full; signals were dropped, other processes will resync",
                &[("thread", &"notifier")],
            );
        }
        if lost || overflow {
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
        // their sockets with 4008 so clients catch up from the log. An outage
        // is logged when it starts and when it ends, not once per batch.
        let mut failure = None;
        for pause in RETRY_PAUSES {
            match db.sql().and_then(|mut sql| store::notify(&mut sql, &payload)) {
                Ok(()) => {
                    failure = None;
                    break;
                }
                Err(error) => failure = Some(error),
            }
            db.disconnect();
            std::thread::sleep(pause);
        }
        match (&failure, lost_batches) {
            (Some(error), 0) => log
                .error("NOTIFY failed; batches are lost until it works", &[("thread", &"notifier"), ("error", error)]),
            (None, n) if n > 0 => log.info(
                "NOTIFY works again; other processes were told to resync",
                &[("thread", &"notifier"), ("lost_batches", &n)],
            ),
            _ => {}
        }
        lost_batches = if failure.is_some() { lost_batches + 1 } else { 0 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_survive_a_round_trip() {
        let signals = [
            Signal::Event { chat_id: ChatId(1), seq: 2, added: None },
            Signal::Event { chat_id: ChatId(1), seq: 3, added: Some(UserId(4)) },
            Signal::Typing { chat_id: ChatId(3), user_id: UserId(4) },
            Signal::Read { chat_id: ChatId(5), user_id: UserId(6), seq: 7 },
            Signal::Presence { user_id: UserId(8), online: true },
            Signal::Presence { user_id: UserId(9), online: false },
            Signal::SessionEnded { session_id: SessionId(10), ticket: 11 },
            Signal::Confirmed { to: 12, ticket: u64::MAX, session_id: SessionId(13) },
            Signal::Resync,
        ];
        let payload = format!("42\n{}", signals.iter().map(Signal::encode).collect::<Vec<_>>().join("\n"));
        assert_eq!(decode_payload(&payload), Some((42, signals.to_vec())));
    }

    #[test]
    fn many_signals_split_into_payloads_under_the_limit_in_order() {
        let signals: Vec<Signal> =
            (0..2000).map(|n| Signal::SessionEnded { session_id: SessionId(n), ticket: u64::MAX }).collect();
        let payloads = payloads(42, &signals);
        assert!(payloads.len() > 1 && payloads.iter().all(|payload| payload.len() < MAX_PAYLOAD));
        let decoded: Vec<Signal> = payloads.iter().flat_map(|payload| decode_payload(payload).unwrap().1).collect();
        assert_eq!(decoded, signals);
        assert_eq!(
            decode_payload("7\ns 5"),
            Some((7, vec![Signal::SessionEnded { session_id: SessionId(5), ticket: 0 }]))
        );
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let (origin, signals) = decode_payload("7\nx 1\ne 1\ne 1 2\ne a b\n").unwrap();
        assert_eq!((origin, signals), (7, vec![Signal::Event { chat_id: ChatId(1), seq: 2, added: None }]));
        assert_eq!(decode_payload("not a number\ne 1 2"), None);
    }
}
