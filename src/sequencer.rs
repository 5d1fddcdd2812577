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
    /// The highest seq another process announced: its event never arrives by
    /// itself, so a gap below it is read at once rather than after `HOLD`.
    announced: i64,
    /// When the open gap is to be read.
    read_at: Option<Instant>,
    fetching: bool,
}

impl Sequencer {
    /// A stream that hands on events from `next` on.
    pub fn new(next: i64) -> Sequencer {
        Sequencer { next, held: BTreeMap::new(), known: next - 1, announced: 0, read_at: None, fetching: false }
    }

    /// A stream from `next` that must read up to `last` from the table first:
    /// a connection behind the chat's stream.
    pub fn behind(next: i64, last: i64, now: Instant) -> Sequencer {
        let mut stream = Sequencer::new(next);
        stream.announce(last, now);
        stream
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

    /// Another process committed `seq`: only a read brings its event.
    pub fn announce(&mut self, seq: i64, now: Instant) {
        self.announced = self.announced.max(seq);
        self.expect(seq, now);
    }

    /// `seq` exists (a snapshot or the table says so), and its event may
    /// still be on its way here: a gap is read after `HOLD`.
    pub fn expect(&mut self, seq: i64, now: Instant) {
        self.known = self.known.max(seq);
        self.schedule(now, false);
    }

    /// A read of the table answered with the events after the seq it asked
    /// for, ascending, or failed (`None`); returns the events now in order.
    pub fn fetched(&mut self, events: Option<Vec<Arc<Event>>>, now: Instant) -> Vec<Arc<Event>> {
        self.fetching = false;
        let before = self.next;
        for event in events.iter().flatten() {
            self.known = self.known.max(event.seq);
            if event.seq >= self.next {
                self.held.insert(event.seq, event.clone());
            }
        }
        let ready = self.drain(now);
        if self.gap() {
            // More pages are read at once; a read that failed or found nothing waits.
            self.read_at = Some(if self.next > before { now } else { now + RETRY });
        }
        ready
    }

    /// When the gap's read is due, marks it in flight and returns the seq to
    /// read after.
    pub fn due_fetch(&mut self, now: Instant) -> Option<i64> {
        if self.deadline().is_none_or(|at| at > now) {
            return None;
        }
        self.fetching = true;
        self.read_at = None;
        Some(self.next - 1)
    }

    /// When `due_fetch` will next have something to do.
    pub fn deadline(&self) -> Option<Instant> {
        self.read_at.filter(|_| !self.fetching)
    }

    /// Nothing held, nothing known beyond what was handed on, no read in flight.
    pub fn idle(&self) -> bool {
        self.held.is_empty() && self.known < self.next && !self.fetching
    }

    fn drain(&mut self, now: Instant) -> Vec<Arc<Event>> {
        let before = self.next;
        let mut ready = Vec::new();
        while let Some(event) = self.held.remove(&self.next) {
            self.next += 1;
            ready.push(event);
        }
        self.schedule(now, self.next > before);
        ready
    }

    /// A seq known to exist has not been handed on.
    fn gap(&self) -> bool {
        self.known >= self.next
    }

    /// Sets when the gap, if any, is read: at once when the missing seq was
    /// announced by another process, else after `HOLD`, counted afresh when
    /// the stream moved on.
    fn schedule(&mut self, now: Instant, moved: bool) {
        if !self.gap() {
            self.read_at = None;
            return;
        }
        let at = if self.announced >= self.next { now } else { now + HOLD };
        self.read_at = match self.read_at {
            Some(old) if !moved => Some(old.min(at)),
            _ => Some(at),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ChatId, ChatInfo, EventKind, Payload, UserId};
    use time::OffsetDateTime;

    /// A `chat.updated` event with this seq: the payload does not matter here.
    fn event(chat: i64, seq: i64) -> Arc<Event> {
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
        let ready = stream.fetched(Some(vec![event(1, 1), event(1, 2)]), start + HOLD * 2);
        assert_eq!(seqs(&ready), [1, 2]);
        assert!(stream.idle());
    }

    #[test]
    fn the_hold_time_starts_again_when_the_stream_moves_on() {
        let start = Instant::now();
        let mut stream = Sequencer::new(1);
        stream.receive(event(1, 2), start);
        stream.receive(event(1, 4), start);
        let later = start + HOLD / 2;
        assert_eq!(seqs(&stream.receive(event(1, 1), later)), [1, 2]);
        assert_eq!(stream.deadline(), Some(later + HOLD), "3 gets its own hold time");
    }

    #[test]
    fn duplicates_and_seqs_already_passed_are_dropped() {
        let now = Instant::now();
        let mut stream = Sequencer::new(1);
        stream.receive(event(1, 1), now);
        assert!(stream.receive(event(1, 1), now).is_empty());
        stream.receive(event(1, 3), now);
        assert!(stream.receive(event(1, 3), now).is_empty());
        assert_eq!(seqs(&stream.fetched(Some(vec![event(1, 1), event(1, 2), event(1, 3)]), now)), [2, 3]);
    }

    #[test]
    fn a_seq_announced_by_another_process_is_read_at_once() {
        let now = Instant::now();
        let mut stream = Sequencer::new(5);
        stream.announce(6, now);
        assert_eq!(stream.due_fetch(now), Some(4), "its event never comes by itself");
        assert_eq!(seqs(&stream.fetched(Some(vec![event(1, 5), event(1, 6)]), now)), [5, 6]);
        assert!(stream.idle());
    }

    #[test]
    fn a_seq_expected_from_a_snapshot_or_the_table_waits_the_hold_time() {
        let now = Instant::now();
        let mut stream = Sequencer::new(5);
        stream.expect(5, now);
        assert_eq!(stream.due_fetch(now), None, "its event may still be on its way");
        assert_eq!(seqs(&stream.receive(event(1, 5), now + HOLD / 2)), [5]);
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
        assert_eq!(stream.due_fetch(start), Some(0));
        stream.fetched(None, start);
        assert_eq!(stream.deadline(), Some(start + RETRY));
        assert_eq!(stream.due_fetch(start + RETRY), Some(0));
        assert!(stream.fetched(Some(Vec::new()), start + RETRY).is_empty());
        assert_eq!(stream.deadline(), Some(start + RETRY * 2), "nothing new: wait before the next read");
    }

    #[test]
    fn a_read_that_stops_short_reads_the_rest_at_once() {
        let start = Instant::now();
        let mut stream = Sequencer::new(1);
        stream.announce(3, start);
        assert_eq!(stream.due_fetch(start), Some(0));
        assert_eq!(seqs(&stream.fetched(Some(vec![event(1, 1)]), start)), [1], "a page of one");
        assert_eq!(stream.due_fetch(start), Some(1), "the next page at once");
    }

    #[test]
    fn a_connection_behind_reads_up_to_where_the_stream_is() {
        let now = Instant::now();
        let mut own = Sequencer::behind(3, 5, now);
        assert_eq!(own.due_fetch(now), Some(2));
        assert_eq!(seqs(&own.receive(event(1, 6), now)), Vec::<i64>::new(), "the stream's next event waits");
        assert_eq!(seqs(&own.fetched(Some(vec![event(1, 3), event(1, 4), event(1, 5)]), now)), [3, 4, 5, 6]);
        assert!(own.idle());
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
