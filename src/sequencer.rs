//! One stream of a chat's events, put back in seq order.
//!
//! Events reach a process out of order (several workers commit at once;
//! other processes announce only `(chat, seq)`) and some never reach it (a
//! NOTIFY lost with a killed process). A `Sequencer` takes what arrives and
//! what is known to exist, hands back exactly the events from `next` on, in
//! order and each once, and says when the table must be read to fill a gap.
//! It is pure: no threads, channels or database; time is a parameter.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::model::Event;

/// How long a later seq waits for an earlier one before the table is read.
pub const HOLD: Duration = Duration::from_millis(20);
/// How long to wait before reading again after a read that failed or found
/// nothing new.
pub const RETRY: Duration = Duration::from_millis(200);
/// The most events held out of order; past it, later ones are left to the
/// read that fills the gap, which finds them in the table.
pub const MAX_HELD: usize = 4096;

#[derive(Debug)]
pub struct Sequencer {
    /// The next seq to hand on.
    next: i64,
    /// Events from `next + 1` on, waiting for the ones before them.
    held: BTreeMap<i64, Arc<Event>>,
    /// The highest seq known to exist.
    known: i64,
    /// Since when a gap (a known seq not yet handed on and `next` missing) has been open.
    gap_since: Option<Instant>,
    fetching: bool,
    /// No read before this, after one failed or found nothing.
    retry_at: Option<Instant>,
}

impl Sequencer {
    /// A stream that hands on events from `next` on.
    pub fn new(next: i64) -> Sequencer {
        Sequencer { next, held: BTreeMap::new(), known: next - 1, gap_since: None, fetching: false, retry_at: None }
    }

    /// The next seq to hand on: every seq before it has been.
    pub fn next(&self) -> i64 {
        self.next
    }

    /// An event arrived; returns the events now in order, if any.
    pub fn receive(&mut self, event: Arc<Event>, now: Instant) -> Vec<Arc<Event>> {
        self.known = self.known.max(event.seq);
        if event.seq >= self.next && (self.held.len() < MAX_HELD || event.seq == self.next) {
            self.held.insert(event.seq, event);
        }
        self.drain(now)
    }

    /// `seq` exists, though its event has not arrived (another process
    /// committed it, or the table says the chat has reached it).
    pub fn announce(&mut self, seq: i64, now: Instant) {
        self.known = self.known.max(seq);
        self.note_gap(now);
    }

    /// A read of the table answered with the events after the seq it asked
    /// for, ascending; returns the events now in order.
    pub fn fetched(&mut self, events: Vec<Arc<Event>>, now: Instant) -> Vec<Arc<Event>> {
        self.fetching = false;
        let before = self.next;
        for event in events {
            self.known = self.known.max(event.seq);
            if event.seq >= self.next {
                self.held.insert(event.seq, event);
            }
        }
        let ready = self.drain(now);
        if self.next == before && self.gap_since.is_some() {
            self.retry_at = Some(now + RETRY);
        }
        ready
    }

    /// A read of the table failed: try again later.
    pub fn fetch_failed(&mut self, now: Instant) {
        self.fetching = false;
        self.retry_at = Some(now + RETRY);
    }

    /// When a gap has waited `HOLD`, marks a read in flight and returns the
    /// seq to read after.
    pub fn due_fetch(&mut self, now: Instant) -> Option<i64> {
        let due = self.deadline().is_some_and(|at| at <= now);
        if !due {
            return None;
        }
        self.fetching = true;
        self.retry_at = None;
        Some(self.next - 1)
    }

    /// When `due_fetch` will next have something to do.
    pub fn deadline(&self) -> Option<Instant> {
        if self.fetching {
            return None;
        }
        let since = self.gap_since?;
        Some(self.retry_at.map_or(since + HOLD, |retry| retry.max(since + HOLD)))
    }

    /// Nothing held, nothing known beyond what was handed on, no read in flight.
    pub fn idle(&self) -> bool {
        self.held.is_empty() && self.known < self.next && !self.fetching
    }

    fn drain(&mut self, now: Instant) -> Vec<Arc<Event>> {
        let mut ready = Vec::new();
        while let Some(event) = self.held.remove(&self.next) {
            self.next += 1;
            ready.push(event);
        }
        self.note_gap(now);
        ready
    }

    fn note_gap(&mut self, now: Instant) {
        if self.known < self.next {
            self.gap_since = None;
            self.retry_at = None;
        } else if self.gap_since.is_none() {
            self.gap_since = Some(now);
        }
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::model::{ChatId, ChatInfo, EventKind, Payload, UserId};
    use time::OffsetDateTime;

    /// A `chat.updated` event of chat 1 with this seq: the payload does not matter here.
    pub fn event(chat: i64, seq: i64) -> Arc<Event> {
        Arc::new(Event {
            chat_id: ChatId(chat),
            seq,
            kind: EventKind::ChatUpdated,
            created_at: OffsetDateTime::UNIX_EPOCH,
            actor_id: UserId(1),
            payload: Payload::Chat(ChatInfo { id: ChatId(chat), is_group: true, title: None }),
        })
    }

    fn seqs(events: &[Arc<Event>]) -> Vec<i64> {
        events.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn events_in_order_pass_at_once() {
        let now = Instant::now();
        let mut stream = Sequencer::new(1);
        assert_eq!(seqs(&stream.receive(event(1, 1), now)), [1]);
        assert_eq!(seqs(&stream.receive(event(1, 2), now)), [2]);
        assert!(stream.idle());
        assert_eq!(stream.deadline(), None);
    }

    #[test]
    fn a_later_seq_waits_for_the_earlier_one() {
        let now = Instant::now();
        let mut stream = Sequencer::new(1);
        assert!(stream.receive(event(1, 3), now).is_empty());
        assert!(stream.receive(event(1, 2), now).is_empty());
        assert_eq!(seqs(&stream.receive(event(1, 1), now)), [1, 2, 3]);
        assert!(stream.idle());
    }

    #[test]
    fn a_gap_is_read_from_the_table_after_the_hold_time() {
        let start = Instant::now();
        let mut stream = Sequencer::new(1);
        stream.receive(event(1, 2), start);
        assert_eq!(stream.deadline(), Some(start + HOLD));
        assert_eq!(stream.due_fetch(start + HOLD / 2), None, "not before the hold time");
        assert_eq!(stream.due_fetch(start + HOLD), Some(0), "read after seq 0");
        assert_eq!(stream.deadline(), None, "one read at a time");
        let ready = stream.fetched(vec![event(1, 1), event(1, 2)], start + HOLD * 2);
        assert_eq!(seqs(&ready), [1, 2]);
        assert!(stream.idle());
    }

    #[test]
    fn duplicates_and_seqs_already_passed_are_dropped() {
        let now = Instant::now();
        let mut stream = Sequencer::new(1);
        stream.receive(event(1, 1), now);
        assert!(stream.receive(event(1, 1), now).is_empty());
        stream.receive(event(1, 3), now);
        assert!(stream.receive(event(1, 3), now).is_empty());
        assert_eq!(seqs(&stream.fetched(vec![event(1, 1), event(1, 2), event(1, 3)], now)), [2, 3]);
    }

    #[test]
    fn an_announced_seq_never_seen_is_read_from_the_table() {
        let now = Instant::now();
        let mut stream = Sequencer::new(5);
        stream.announce(6, now);
        assert_eq!(stream.due_fetch(now + HOLD), Some(4));
        assert_eq!(seqs(&stream.fetched(vec![event(1, 5), event(1, 6)], now + HOLD)), [5, 6]);
        assert!(stream.idle());
    }

    #[test]
    fn an_announcement_of_what_was_passed_is_no_gap() {
        let now = Instant::now();
        let mut stream = Sequencer::new(1);
        stream.receive(event(1, 1), now);
        stream.announce(1, now);
        assert!(stream.idle());
        assert_eq!(stream.deadline(), None);
    }

    #[test]
    fn a_failed_read_or_one_that_found_nothing_is_retried_later() {
        let start = Instant::now();
        let mut stream = Sequencer::new(1);
        stream.announce(1, start);
        assert_eq!(stream.due_fetch(start + HOLD), Some(0));
        stream.fetch_failed(start + HOLD);
        assert_eq!(stream.deadline(), Some(start + HOLD + RETRY));
        assert_eq!(stream.due_fetch(start + HOLD + RETRY), Some(0));
        assert!(stream.fetched(Vec::new(), start + HOLD + RETRY).is_empty());
        assert_eq!(stream.deadline(), Some(start + HOLD + RETRY * 2), "nothing new: wait before the next read");
    }

    #[test]
    fn a_read_that_stops_short_reads_the_rest_at_once() {
        let start = Instant::now();
        let mut stream = Sequencer::new(1);
        stream.announce(3, start);
        assert_eq!(stream.due_fetch(start + HOLD), Some(0));
        assert_eq!(seqs(&stream.fetched(vec![event(1, 1)], start + HOLD)), [1], "a page of one");
        assert_eq!(stream.due_fetch(start + HOLD), Some(1), "the next page at once");
    }

    #[test]
    fn held_events_are_bounded_and_the_rest_comes_from_the_table() {
        let now = Instant::now();
        let mut stream = Sequencer::new(1);
        for seq in 2..(MAX_HELD as i64 + 100) {
            stream.receive(event(1, seq), now);
        }
        assert_eq!(stream.held.len(), MAX_HELD);
        let ready = stream.receive(event(1, 1), now);
        assert_eq!(seqs(&ready), (1..=MAX_HELD as i64 + 1).collect::<Vec<_>>());
        assert_eq!(stream.due_fetch(now + HOLD), Some(MAX_HELD as i64 + 1), "the dropped ones are read");
    }
}
