//! Hearing the other server processes: one listener thread with its own
//! connection, LISTENing on the channel `notify.rs` sends on, feeding the
//! hub and skipping this process's own notifications.
//!
//! When that connection is lost, it is opened again and LISTEN re-issued;
//! notifications sent meanwhile are lost, so the hub then closes every
//! WebSocket with 4008 and clients catch up from `/events`.

use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;

use crate::db::Db;
use crate::error::ApiError;
use crate::hub::Hub;
use crate::log::Log;
use crate::model::Live;
use crate::notify::{decode_payload, Signal};
use crate::store;
use crate::watch::{Stop, Watch};

/// The most notifications the listener hands on at once.
const MAX_BATCH: usize = 256;
/// How long the listener waits for a notification before it checks the stop
/// flag and that its connection still lives.
const WAIT: Duration = Duration::from_secs(1);

/// Starts the watched listener thread; it ends when the server stops.
pub fn start(db: Db, process_id: i64, hub: Hub, stop: Stop, log: Log, watch: &Watch) -> Result<(), String> {
    watch.spawn("listener", move || run(db, process_id, &hub, &stop, log)).map(drop)
}

fn run(mut db: Db, process_id: i64, hub: &Hub, stop: &Stop, log: Log) {
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
        if listened_before {
            log.info("LISTEN is back; every WebSocket resyncs", &[("thread", &"listener")]);
            hub.resync();
        }
        listened_before = true;
        lost = false;
        while !stop.is_set() {
            if let Err(error) = relay(&mut db, process_id, hub) {
                log.warn("lost the LISTEN connection", &[("thread", &"listener"), ("error", &error)]);
                lost = true;
                break;
            }
        }
        db.disconnect();
    }
}

/// Waits up to `WAIT` for notifications and hands them to the hub; an error
/// when the connection is gone.
fn relay(db: &mut Db, process_id: i64, hub: &Hub) -> Result<(), ApiError> {
    let mut sql = db.sql()?;
    let mut payloads = Vec::new();
    {
        let mut notifications = sql.client().notifications();
        // Wait for the first; then take only what has already arrived, since
        // `timeout_iter` restarts its timer on every notification and would
        // never return under steady traffic.
        if let Some(first) = notifications.timeout_iter(WAIT).next()? {
            payloads.push(first.payload().to_string());
        }
        let mut arrived = notifications.iter();
        while payloads.len() < MAX_BATCH {
            match arrived.next()? {
                Some(notification) => payloads.push(notification.payload().to_string()),
                None => break,
            }
        }
    }
    if payloads.is_empty() {
        sql.client().is_valid(Duration::from_secs(5))?;
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
                Signal::Presence { user_id, online } => hub.remote_presence(user_id, online),
                Signal::SessionEnded { session_id } => hub.sessions_ended(vec![session_id]),
                Signal::Resync => hub.resync(),
            }
        }
    }
    Ok(())
}
