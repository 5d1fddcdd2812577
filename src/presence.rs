//! Presence across processes: a user is online while at least one of its
//! WebSocket connections is open on any live process.
//!
//! One thread per process owns this: it keeps the process's heartbeat row
//! fresh, records which users have a connection here, and, when a user's
//! first connection here opens or its last closes and no other live process
//! has one, announces the change to users who share a chat (through the hub
//! here and a NOTIFY for the others). One thread, so changes for a user are
//! applied in the order they happened. A process that dies stops beating;
//! after `STALE` its users count as offline, and a minute later its rows go.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::db::Db;
use crate::hub::{Hub, PresenceChange};
use crate::notify::{Notifier, Signal};
use crate::store;

const HEARTBEAT: Duration = Duration::from_secs(5);
const CLEANUP: Duration = Duration::from_secs(30);

/// Starts the presence thread; `changes` carries the hub's first-open and last-close.
pub fn start(
    database_url: &str,
    process_id: i64,
    notifier: Notifier,
    hub: Hub,
    changes: Receiver<PresenceChange>,
) -> Result<(), String> {
    let presence =
        Presence { db: Db::new(database_url)?, process_id, notifier, online_here: HashSet::new(), synced: false };
    std::thread::Builder::new()
        .name("presence".into())
        .spawn(move || presence.run(changes, hub))
        .map_err(|e| format!("cannot start the presence thread: {e}"))?;
    Ok(())
}

struct Presence {
    db: Db,
    process_id: i64,
    notifier: Notifier,
    /// Users with a connection on this process: what the presence rows should say.
    online_here: HashSet<i64>,
    /// Whether the database has this process's rows since the last (re)connect.
    synced: bool,
}

impl Presence {
    fn run(mut self, changes: Receiver<PresenceChange>, hub: Hub) {
        self.beat();
        let mut last_cleanup = Instant::now();
        loop {
            match changes.recv_timeout(HEARTBEAT) {
                Ok((user_id, online)) => self.change(user_id, online, &hub),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => self.beat(),
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            }
            if last_cleanup.elapsed() >= CLEANUP {
                last_cleanup = Instant::now();
                self.beat();
                let _ = self.db.sql().and_then(|mut sql| store::delete_dead_processes(&mut sql));
            }
        }
    }

    /// Refreshes the heartbeat; after a lost connection, writes every row again.
    fn beat(&mut self) {
        let process_id = self.process_id;
        let online_here: Vec<i64> = self.online_here.iter().copied().collect();
        let synced = self.synced;
        let result = self.db.sql().and_then(|mut sql| {
            store::beat_process(&mut sql, process_id)?;
            if !synced {
                for user_id in online_here {
                    store::set_presence(&mut sql, process_id, user_id, true)?;
                }
            }
            Ok(())
        });
        self.synced = result.is_ok();
        if result.is_err() {
            self.db.disconnect();
        }
    }

    fn change(&mut self, user_id: i64, online: bool, hub: &Hub) {
        if online {
            self.online_here.insert(user_id);
        } else {
            self.online_here.remove(&user_id);
        }
        if !self.synced {
            self.beat();
        }
        let process_id = self.process_id;
        let result = self.db.sql().and_then(|mut sql| {
            let elsewhere = store::set_presence(&mut sql, process_id, user_id, online)?;
            let chat_ids = if elsewhere { Vec::new() } else { store::list_chat_ids(&mut sql, user_id)? };
            Ok((elsewhere, chat_ids))
        });
        match result {
            Ok((false, chat_ids)) => {
                hub.presence(user_id, online, chat_ids);
                self.notifier.signal(Signal::Presence { user_id, online });
            }
            Ok((true, _)) => {}
            Err(_) => {
                self.synced = false;
                self.db.disconnect();
            }
        }
    }
}

/// Removes a process's rows, so its users go offline at once.
pub fn forget_process(database_url: &str, process_id: i64) {
    if let Ok(mut db) = Db::new(database_url) {
        let _ = db.sql().and_then(|mut sql| store::delete_process(&mut sql, process_id));
    }
}
