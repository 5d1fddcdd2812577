//! Waiting until the other server processes confirm they heard a signal.
//!
//! Ending a session must stop it on every process before the client hears
//! that it ended, or a token just logged out would still work for a moment
//! where a session cache (`session_cache.rs`) kept it. So the ending process
//! takes a ticket naming what it expects to hear: each live process (from the
//! heartbeat table) confirming each session; it sends the ticket with the
//! signals and waits. Each listener that hears a session end forgets the
//! session, then confirms that session of the ticket to its sender; the
//! sender's listener marks it here. Signals of one ticket may arrive in
//! separate batches, which is why each session is confirmed on its own. The wait is bounded:
//! a process that does not confirm is frozen or cut off from the database,
//! and its cache then misses on its own (`session_cache::HEARD_WITHIN`).

use std::collections::{HashMap, HashSet};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Instant;

/// Tickets waiting for confirmations, shared by the handlers that wait and
/// the listener that hears the confirmations.
#[derive(Default)]
pub struct Confirmations {
    pending: Mutex<Pending>,
    changed: Condvar,
}

#[derive(Default)]
struct Pending {
    next_ticket: u64,
    /// Each ticket's (process, item) pairs not confirmed yet.
    waiting: HashMap<u64, HashSet<(i64, i64)>>,
}

impl Confirmations {
    /// A new ticket awaiting every one of `processes` to confirm every one of
    /// `items`; its number is never 0, which means "no confirmation wanted"
    /// on the wire. Dropped without a wait (a transaction that failed, say),
    /// it is forgotten.
    pub fn ticket(&self, processes: &[i64], items: &[i64]) -> Ticket<'_> {
        let mut pending = self.lock();
        pending.next_ticket += 1;
        let number = pending.next_ticket;
        let expected = processes.iter().flat_map(|process| items.iter().map(move |item| (*process, *item)));
        pending.waiting.insert(number, expected.collect());
        Ticket { confirmations: self, number }
    }

    /// `process` confirmed `item` of `ticket`; unknown tickets are ignored.
    pub fn confirm(&self, ticket: u64, process: i64, item: i64) {
        if let Some(waiting) = self.lock().waiting.get_mut(&ticket) {
            waiting.remove(&(process, item));
        }
        self.changed.notify_all();
    }

    /// Waits until everything of `ticket` is confirmed or `deadline` passed,
    /// and returns the processes that left something unconfirmed; the ticket is done.
    fn wait(&self, ticket: u64, deadline: Instant) -> Vec<i64> {
        let mut pending = self.lock();
        loop {
            let waiting = pending.waiting.get(&ticket).map_or(0, HashSet::len);
            let left = deadline.saturating_duration_since(Instant::now());
            if waiting == 0 || left.is_zero() {
                let unconfirmed = pending.waiting.remove(&ticket).unwrap_or_default();
                let mut missing: Vec<i64> = unconfirmed.into_iter().map(|(process, _)| process).collect();
                missing.sort_unstable();
                missing.dedup();
                return missing;
            }
            pending = self.changed.wait_timeout(pending, left).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A ticket being waited for; forgotten when dropped.
pub struct Ticket<'a> {
    confirmations: &'a Confirmations,
    number: u64,
}

impl Ticket<'_> {
    /// The number the signals carry.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// Waits until everything is confirmed or `deadline` passed; returns the
    /// processes that left something unconfirmed.
    pub fn wait(self, deadline: Instant) -> Vec<i64> {
        self.confirmations.wait(self.number, deadline)
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.confirmations.lock().waiting.remove(&self.number);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_ticket_for_nobody_is_done_at_once() {
        let confirmations = Confirmations::default();
        let ticket = confirmations.ticket(&[], &[1]);
        assert_ne!(ticket.number(), 0);
        assert_eq!(ticket.wait(Instant::now() + Duration::from_secs(60)), Vec::<i64>::new());
    }

    #[test]
    fn the_wait_ends_when_the_last_process_confirms_the_last_item() {
        let confirmations = Arc::new(Confirmations::default());
        let ticket = confirmations.ticket(&[7, 8], &[1, 2]);
        let other = confirmations.ticket(&[7], &[1]);
        let (number, other_number) = (ticket.number(), other.number());
        let confirming = {
            let confirmations = confirmations.clone();
            let ticket = number;
            std::thread::spawn(move || {
                for (process, item) in [(7, 1), (7, 2), (8, 1)] {
                    confirmations.confirm(ticket, process, item);
                }
                confirmations.confirm(ticket + 100, 8, 2);
                confirmations.confirm(ticket, 8, 2);
            })
        };
        assert_eq!(ticket.wait(Instant::now() + Duration::from_secs(60)), Vec::<i64>::new());
        confirming.join().unwrap();
        let deadline = Instant::now() + Duration::from_millis(10);
        assert_eq!(other.wait(deadline), vec![7], "a ticket's confirmations are its own");
        assert_ne!(number, other_number);
    }

    #[test]
    fn the_wait_ends_at_the_deadline_naming_who_did_not_confirm() {
        let confirmations = Confirmations::default();
        let ticket = confirmations.ticket(&[3, 1, 2], &[5, 6]);
        let number = ticket.number();
        for (process, item) in [(2, 5), (2, 6), (1, 5)] {
            confirmations.confirm(number, process, item);
        }
        assert_eq!(ticket.wait(Instant::now() + Duration::from_millis(20)), vec![1, 3]);
        assert!(confirmations.lock().waiting.is_empty(), "a waited ticket is forgotten");
        confirmations.confirm(number, 1, 6);
        assert!(confirmations.lock().waiting.is_empty(), "a late confirmation leaves nothing behind");
    }

    #[test]
    fn a_ticket_dropped_without_a_wait_is_forgotten() {
        let confirmations = Confirmations::default();
        drop(confirmations.ticket(&[1], &[2]));
        assert!(confirmations.lock().waiting.is_empty());
    }
}
