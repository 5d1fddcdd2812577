//! Presence across processes: a user is online while at least one of its
//! WebSockets is open on a live process.
//!
//! Each open WebSocket has a row in `presence`, written before its `ready`
//! frame and deleted when it closes, under a lock on the user's row, so the
//! changes of one user happen one at a time whichever process makes them.
//! The change that makes the first row announces "online" and the one that
//! deletes the last announces "offline", to users who share a chat (through
//! the hub here and a NOTIFY for the other processes). Each process beats in
//! `server_processes` every few seconds; rows of a process silent for 15
//! seconds do not count, and a minute later another process deletes them and
//! announces "offline" for users left with no connection.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::db::Db;
use crate::error::ApiError;
use crate::hub::{ConnId, Hub};
use crate::log::Log;
use crate::metrics::Metrics;
use crate::model::{ChatId, UserId};
use crate::notify::{Notifier, Signal};
use crate::store;
use crate::watch::{Stop, Watch};

const HEARTBEAT: Duration = Duration::from_secs(5);
const CLEANUP: Duration = Duration::from_secs(30);

/// This process's side of presence.
pub struct Presence {
    process_id: i64,
    hub: Hub,
    notifier: Notifier,
    log: Log,
    /// Closed connections whose row could not be deleted (database down): retried on each heartbeat.
    undeleted: Mutex<Vec<(ConnId, UserId)>>,
}

impl Presence {
    pub fn new(process_id: i64, hub: Hub, notifier: Notifier, log: Log) -> Presence {
        Presence { process_id, hub, notifier, log, undeleted: Mutex::new(Vec::new()) }
    }

    /// Records an open connection; `true` if it is the user's only one anywhere.
    pub fn connected(&self, db: &mut Db, conn: ConnId, user_id: UserId) -> Result<bool, ApiError> {
        let process_id = self.process_id;
        db.transaction(|tx| {
            store::lock_user(tx, user_id)?;
            store::insert_presence(tx, process_id, conn as i64, user_id)?;
            Ok(store::count_presence(tx, user_id)? == 1)
        })
    }

    /// Forgets a closed connection and announces "offline" if it was the
    /// user's last one anywhere.
    pub fn disconnected(&self, db: &mut Db, conn: ConnId, user_id: UserId) {
        let process_id = self.process_id;
        let last = db.transaction(|tx| {
            store::lock_user(tx, user_id)?;
            // No row (a connection that never opened, or one forgotten already): nothing to announce.
            if !store::delete_presence(tx, process_id, conn as i64)? || store::count_presence(tx, user_id)? > 0 {
                return Ok(None);
            }
            store::list_chat_ids(tx, user_id).map(Some)
        });
        match last {
            Ok(Some(chat_ids)) => self.announce(user_id, false, chat_ids),
            Ok(None) => {}
            Err(error) => {
                self.log.warn("cannot delete a presence row; retrying later", &[("user", &user_id), ("error", &error)]);
                self.forget_later(conn, user_id);
            }
        }
    }

    /// Leaves a closed connection's row to the heartbeat, which deletes it
    /// (and announces "offline" if it was the last) once the database answers.
    pub fn forget_later(&self, conn: ConnId, user_id: UserId) {
        self.undeleted.lock().unwrap_or_else(PoisonError::into_inner).push((conn, user_id));
    }

    /// Tells users who share a chat with `user_id`, on every process.
    pub fn announce(&self, user_id: UserId, online: bool, chat_ids: Vec<ChatId>) {
        self.notifier.signal(Signal::Presence { user_id, online });
        self.hub.presence(user_id, online, chat_ids);
    }

    /// Keeps this process alive in the table and retries failed deletions;
    /// `Err` when the database did not answer.
    fn beat(&self, db: &mut Db) -> Result<(), ApiError> {
        if let Err(error) = db.sql().and_then(|mut sql| store::beat_process(&mut sql, self.process_id)) {
            db.disconnect();
            return Err(error);
        }
        let undeleted = std::mem::take(&mut *self.undeleted.lock().unwrap_or_else(PoisonError::into_inner));
        for (conn, user_id) in undeleted {
            self.disconnected(db, conn, user_id);
        }
        Ok(())
    }

    /// Deletes the rows of processes that died without cleaning up, and
    /// announces "offline" for their users who have no connection left.
    fn bury_dead_processes(&self, db: &mut Db) -> Result<(), ApiError> {
        let (processes, users) = store::delete_dead_processes(&mut db.sql()?)?;
        if processes > 0 {
            let fields: [crate::log::Field; 3] =
                [("thread", &"presence"), ("processes", &processes), ("users", &users.len())];
            self.log.info("buried dead processes", &fields);
            // Their last signals may never have been sent.
            self.hub.process_died();
        }
        for user_id in users {
            // Under the user's lock, like every other presence change.
            let offline = db.transaction(|tx| {
                store::lock_user(tx, user_id)?;
                match store::count_presence(tx, user_id)? {
                    0 => store::list_chat_ids(tx, user_id).map(Some),
                    _ => Ok(None),
                }
            })?;
            if let Some(chat_ids) = offline {
                self.announce(user_id, false, chat_ids);
            }
        }
        Ok(())
    }
}

/// Starts the watched heartbeat thread; it ends when the server stops.
pub fn start(presence: Arc<Presence>, mut db: Db, stop: Stop, watch: &Watch) -> Result<(), String> {
    watch
        .spawn("presence", move || {
            let log = presence.log;
            let mut last_cleanup = Instant::now();
            let mut failing = false;
            while !stop.is_set() {
                let mut outcome = presence.beat(&mut db);
                if outcome.is_ok() && last_cleanup.elapsed() >= CLEANUP {
                    last_cleanup = Instant::now();
                    outcome = presence.bury_dead_processes(&mut db);
                }
                match outcome {
                    Err(error) if !failing => {
                        log.warn("heartbeat failed", &[("thread", &"presence"), ("error", &error)]);
                        failing = true;
                    }
                    Ok(()) if failing => {
                        log.info("heartbeat works again", &[("thread", &"presence")]);
                        failing = false;
                    }
                    _ => {}
                }
                std::thread::sleep(HEARTBEAT);
            }
        })
        .map(drop)
}

/// Registers a process before it serves, so its first presence rows count.
pub fn register_process(database_url: &str, process_id: i64, metrics: &Arc<Metrics>) -> Result<(), String> {
    let mut db = Db::new(database_url, metrics)?;
    db.sql()
        .and_then(|mut sql| store::beat_process(&mut sql, process_id))
        .map_err(|error| format!("cannot record this process in server_processes: {error}"))
}

/// Removes a process's rows, so its users go offline at once.
pub fn forget_process(database_url: &str, process_id: i64, metrics: &Arc<Metrics>) {
    if let Ok(mut db) = Db::new(database_url, metrics) {
        let _ = db.sql().and_then(|mut sql| store::delete_process(&mut sql, process_id));
    }
}
