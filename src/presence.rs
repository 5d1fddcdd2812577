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

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::db::Db;
use crate::error::ApiError;
use crate::hub::ConnId;
use crate::notify::Signal;
use crate::server::App;
use crate::store;

const HEARTBEAT: Duration = Duration::from_secs(5);
const CLEANUP: Duration = Duration::from_secs(30);

/// This process's side of presence.
pub struct Presence {
    process_id: i64,
    /// Closed connections whose row could not be deleted (database down): retried on each heartbeat.
    undeleted: Mutex<Vec<(ConnId, i64)>>,
}

impl Presence {
    pub fn new(process_id: i64) -> Presence {
        Presence { process_id, undeleted: Mutex::new(Vec::new()) }
    }

    /// Records an open connection; `true` if it is the user's only one anywhere.
    pub fn connected(&self, db: &mut Db, conn: ConnId, user_id: i64) -> Result<bool, ApiError> {
        let process_id = self.process_id;
        db.transaction(|tx| {
            store::lock_user(tx, user_id)?;
            store::insert_presence(tx, process_id, conn as i64, user_id)?;
            Ok(store::count_presence(tx, user_id)? == 1)
        })
    }

    /// Forgets a closed connection and announces "offline" if it was the
    /// user's last one anywhere.
    pub fn disconnected(&self, app: &App, db: &mut Db, conn: ConnId, user_id: i64) {
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
            Ok(Some(chat_ids)) => announce(app, user_id, false, chat_ids),
            Ok(None) => {}
            Err(_) => self.forget_later(conn, user_id),
        }
    }

    /// Leaves a closed connection's row to the heartbeat, which deletes it
    /// (and announces "offline" if it was the last) once the database answers.
    pub fn forget_later(&self, conn: ConnId, user_id: i64) {
        self.undeleted.lock().unwrap_or_else(PoisonError::into_inner).push((conn, user_id));
    }

    /// Keeps this process alive in the table and retries failed deletions.
    fn beat(&self, app: &App, db: &mut Db) {
        if db.sql().and_then(|mut sql| store::beat_process(&mut sql, self.process_id)).is_err() {
            db.disconnect();
            return;
        }
        let undeleted = std::mem::take(&mut *self.undeleted.lock().unwrap_or_else(PoisonError::into_inner));
        for (conn, user_id) in undeleted {
            self.disconnected(app, db, conn, user_id);
        }
    }
}

/// Tells users who share a chat with `user_id`, on every process.
pub fn announce(app: &App, user_id: i64, online: bool, chat_ids: Vec<i64>) {
    app.notifier.signal(Signal::Presence { user_id, online });
    app.hub.presence(user_id, online, chat_ids);
}

/// Starts the heartbeat thread; it ends when the server stops.
pub fn start_heartbeat(app: Arc<App>) -> Result<(), String> {
    let mut db = Db::new(&app.config.database_url)?;
    std::thread::Builder::new()
        .name("presence".into())
        .spawn(move || {
            let mut last_cleanup = Instant::now();
            while !app.stopping.load(Ordering::SeqCst) {
                app.presence.beat(&app, &mut db);
                if last_cleanup.elapsed() >= CLEANUP {
                    last_cleanup = Instant::now();
                    bury_dead_processes(&app, &mut db);
                }
                std::thread::sleep(HEARTBEAT);
            }
        })
        .map_err(|e| format!("cannot start the presence thread: {e}"))?;
    Ok(())
}

/// Deletes the rows of processes that died without cleaning up, and
/// announces "offline" for their users who have no connection left.
fn bury_dead_processes(app: &App, db: &mut Db) {
    let Ok(users) = db.sql().and_then(|mut sql| store::delete_dead_processes(&mut sql)) else { return };
    for user_id in users {
        // Under the user's lock, like every other presence change.
        let offline = db.transaction(|tx| {
            store::lock_user(tx, user_id)?;
            match store::count_presence(tx, user_id)? {
                0 => store::list_chat_ids(tx, user_id).map(Some),
                _ => Ok(None),
            }
        });
        if let Ok(Some(chat_ids)) = offline {
            announce(app, user_id, false, chat_ids);
        }
    }
}

/// Registers a process before it serves, so its first presence rows count.
pub fn register_process(database_url: &str, process_id: i64) -> Result<(), String> {
    let mut db = Db::new(database_url)?;
    db.sql()
        .and_then(|mut sql| store::beat_process(&mut sql, process_id))
        .map_err(|_| "cannot record this process in server_processes".to_string())
}

/// Removes a process's rows, so its users go offline at once.
pub fn forget_process(database_url: &str, process_id: i64) {
    if let Ok(mut db) = Db::new(database_url) {
        let _ = db.sql().and_then(|mut sql| store::delete_process(&mut sql, process_id));
    }
}
