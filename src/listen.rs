//! Hearing the other server processes: one listener thread with its own
//! connection, LISTENing on the channel `notify.rs` sends on, feeding the
//! hub and skipping this process's own notifications.
//!
//! When that connection is lost, it is opened again and LISTEN re-issued;
//! notifications sent meanwhile are lost, so the hub then closes every
//! WebSocket with 4008 and clients catch up from `/events`, and the session
//! cache forgets everything. The cache is used only while this thread keeps
//! finishing rounds (`session_cache.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;

use crate::confirm::Confirmations;
use crate::db::Db;
use crate::error::ApiError;
use crate::hub::Hub;
use crate::log::Log;
use crate::model::Live;
use crate::notify::{decode_payload, Notifier, Signal};
use crate::session_cache::SessionCache;
use crate::store;
use crate::watch::{Stop, Watch};

/// Where what the listener hears goes.
pub struct Recipients {
    pub hub: Hub,
    /// For confirming session ends to the process that asked.
    pub notifier: Notifier,
    pub sessions: Arc<SessionCache>,
    pub confirmations: Arc<Confirmations>,
}

/// How long the listener waits for a notification before it checks the stop
/// flag and that its connection still lives; well under
/// `session_cache::HEARD_WITHIN`, which a round must finish within.
const WAIT: Duration = Duration::from_millis(500);
/// How long the round trip that ends a round may take.
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(5);
/// The least time between two rounds that end with a round trip: under
/// steady traffic a round is short, and a round trip for each would cost
/// PostgreSQL as much as the notifications themselves.
const ROUND_TRIP_EVERY: Duration = Duration::from_millis(100);

/// Starts the watched listener thread; it ends when the server stops.
pub fn start(db: Db, process_id: i64, to: Recipients, stop: Stop, log: Log, watch: &Watch) -> Result<(), String> {
    watch.spawn("listener", move || run(db, process_id, &to, &stop, log)).map(drop)
}

fn run(mut db: Db, process_id: i64, to: &Recipients, stop: &Stop, log: Log) {
    let mut backoff = Duration::from_millis(100);
    // Whether the connection is known lost, so that an outage is logged once.
    let mut lost = false;
    let mut listened_before = false;
    while !stop.is_set() {
        if let Err(error) = db.sql().and_then(|mut sql| store::listen(&mut sql)) {
            if !lost {
                log.warn("cannot LISTEN; retrying", &[("thread", &"listener"), ("error", &error)]);
            }
            lost = true;
            db.disconnect();
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(2));
            continue;
        }
        backoff = Duration::from_millis(100);
        to.sessions.forget_all();
        if listened_before {
            log.info("LISTEN is back; every WebSocket resyncs", &[("thread", &"listener")]);
            to.hub.resync();
        }
        listened_before = true;
        lost = false;
        let mut last_round_trip: Option<Instant> = None;
        while !stop.is_set() {
            let started = Instant::now();
            let round_trip = last_round_trip.is_none_or(|at| started.duration_since(at) >= ROUND_TRIP_EVERY);
            if let Err(error) = relay(&mut db, process_id, to, round_trip) {
                log.warn("lost the LISTEN connection", &[("thread", &"listener"), ("error", &error)]);
                lost = true;
                break;
            }
            if round_trip {
                last_round_trip = Some(started);
                to.sessions.heard(started);
            }
        }
        to.sessions.forget_all();
        db.disconnect();
    }
}

/// One round: waits up to `WAIT` for a notification, makes a round trip if
/// `round_trip`, and hands on everything that arrived (before its answer);
/// an error when the connection is gone. PostgreSQL sends a listener the
/// notifications committed before a query ahead of that query's answer, so
/// when a round with a round trip ends, everything committed before it began
/// has been handled: what the session cache's `heard` relies on.
fn relay(db: &mut Db, process_id: i64, to: &Recipients, round_trip: bool) -> Result<(), ApiError> {
    let mut sql = db.sql()?;
    let mut payloads = Vec::new();
    // Wait for the first; `timeout_iter` restarts its timer on every
    // notification and would never return under steady traffic.
    if let Some(first) = sql.client().notifications().timeout_iter(WAIT).next()? {
        payloads.push(first.payload().to_string());
    }
    if round_trip {
        sql.client().is_valid(ROUND_TRIP_TIMEOUT)?;
    }
    let mut notifications = sql.client().notifications();
    let mut arrived = notifications.iter();
    while let Some(notification) = arrived.next()? {
        payloads.push(notification.payload().to_string());
    }
    for (origin, signals) in payloads.iter().filter_map(|p| decode_payload(p)) {
        if origin == process_id {
            continue;
        }
        let hub = &to.hub;
        for signal in signals {
            match signal {
                Signal::Event { chat_id, seq, added } => hub.remote_event(chat_id, seq, added),
                Signal::Typing { chat_id, user_id } => hub.live(Live::Typing { chat_id, user_id }),
                Signal::Read { chat_id, user_id, seq } => hub.live(Live::Read { chat_id, user_id, seq }),
                Signal::Presence { user_id, online } => hub.remote_presence(user_id, online),
                Signal::SessionEnded { session_id, ticket } => {
                    to.sessions.forget(&[session_id]);
                    hub.sessions_ended(vec![session_id]);
                    if ticket != 0 {
                        to.notifier.signal(Signal::Confirmed { to: origin, ticket, session_id });
                    }
                }
                Signal::Confirmed { to: asker, ticket, session_id } if asker == process_id => {
                    to.confirmations.confirm(ticket, origin, session_id.0)
                }
                Signal::Confirmed { .. } => {}
                Signal::Resync => hub.resync(),
            }
        }
    }
    Ok(())
}
