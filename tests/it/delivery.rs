//! Real-time delivery under races (issue 12): several server processes on
//! one database, concurrent REST and WebSocket senders, reconnecting
//! receivers, membership changes, logouts and a killed process.
//!
//! The contract under test: after a `ready` frame listing each chat's
//! `last_seq`, a connection gets exactly the events after that `last_seq` of
//! every chat it is a member of, in seq order, each exactly once, and
//! `/events?after=N` fills in whatever came before. `Received` checks one
//! connection against that promise; `Follower` is a client that follows the
//! catching-up recipe across reconnections, so that a whole run can be
//! compared with the log.
//!
//! Some tests force a race with locks the test holds in the database: a
//! lock stalls one statement of the server (a presence write, a `send`
//! frame's insert, a member's addition, the seed socket's membership check)
//! until the test lets it go, so the interleaving the bug needs happens on
//! most runs instead of now and then. Each such step waits for the stall to
//! show in `pg_stat_activity`; if it never shows (the server changed), the
//! test goes on without forcing the race, and says so on stderr.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::Message;

use crate::binary::serve_in;
use crate::chats::{create_group, id_of, NO_SUCH_CHAT};
use crate::events::all_events;
use crate::messages::send;
use crate::realtime::{bearer, connect_ready, seq_of, SOON};
use crate::support::ws::{try_connect, Incoming, Refused, WsClient};
use crate::support::{fresh_database, random_hex, spawn_app, spawn_app_on, try_request, wait_for, TestApp, TestUser};

/// How long another process may take to deliver an event whose own
/// process never told anyone: the anti-entropy bound issue 12 asks for.
const ANTI_ENTROPY: Duration = Duration::from_secs(5);

/// How long a socket may stay open after its session was logged out.
const LOGOUT_CLOSE: Duration = Duration::from_secs(3);

/// The longest a whole traffic run may take before its followers stop.
const GIVE_UP: Duration = Duration::from_secs(180);

/// How long a step of a lock choreography may take to show up.
const SETTLE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// What a connection received, and whether the contract allows it.

/// Whether `event` makes `user_id` a member of its chat: its own
/// `member.added`, or the `chat.created` of a chat it created.
fn joins(event: &Value, user_id: i64) -> bool {
    (event["type"] == "member.added" && event["member"]["id"] == json!(user_id))
        || (event["type"] == "chat.created" && event["actor_id"] == json!(user_id))
}

/// Whether `event` is `user_id`'s own `member.removed`.
fn leaves(event: &Value, user_id: i64) -> bool {
    event["type"] == "member.removed" && event["member"]["id"] == json!(user_id)
}

fn chat_of(event: &Value) -> i64 {
    event["chat_id"].as_i64().unwrap_or_else(|| panic!("an event without an integer chat_id: {event}"))
}

/// What identifies an event whichever way it was read: its type and the
/// message, member or title it is about (a message's content may change).
fn identity(event: &Value) -> String {
    let about = match event["type"].as_str().unwrap_or("") {
        "member.added" | "member.removed" => event["member"]["id"].to_string(),
        "chat.created" | "chat.updated" => event["chat"]["title"].to_string(),
        _ => event["message"]["id"].to_string(),
    };
    format!("{} {about}", event["type"].as_str().unwrap_or("?"))
}

/// Seqs in the order given, consecutive runs folded: `1..=57, 59, 58`.
fn runs(seqs: &[i64]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut idx = 0;
    while idx < seqs.len() {
        let mut end = idx;
        while end + 1 < seqs.len() && seqs[end + 1] == seqs[end] + 1 {
            end += 1;
        }
        parts.push(match end - idx {
            0 => seqs[idx].to_string(),
            _ => format!("{}..={}", seqs[idx], seqs[end]),
        });
        idx = end + 1;
    }
    match parts.is_empty() {
        true => "nothing".into(),
        false => parts.join(", "),
    }
}

/// One connection: its `ready` frame and every event frame after it.
struct Received {
    what: String,
    user_id: i64,
    /// `last_seq` of each chat `ready` listed.
    ready: BTreeMap<i64, i64>,
    /// Every event frame's event, in arrival order.
    events: Vec<Value>,
    /// How the connection ended, once it has.
    ended: Option<String>,
}

impl Received {
    fn new(what: &str, user_id: i64, ready: &Value) -> Received {
        assert_eq!(ready["type"], "ready", "{what}: the first frame must be ready: {ready}");
        let listed = ready["chats"].as_array().unwrap_or_else(|| panic!("{what}: ready.chats: {ready}"));
        let ready = listed
            .iter()
            .map(|chat| {
                let (chat_id, last_seq) = (chat["chat_id"].as_i64(), chat["last_seq"].as_i64());
                chat_id.zip(last_seq).unwrap_or_else(|| panic!("{what}: an entry of ready.chats: {chat}"))
            })
            .collect();
        Received { what: what.to_string(), user_id, ready, events: Vec::new(), ended: None }
    }

    /// Reads one frame, waiting at most `timeout`; `false` once the connection has ended.
    fn read(&mut self, ws: &mut WsClient, timeout: Duration) -> bool {
        if self.ended.is_some() {
            return false;
        }
        match ws.next(timeout) {
            Incoming::Text(text) => {
                let frame: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{}: a frame is not JSON ({e}): {text}", self.what));
                if frame["type"] == "event" {
                    self.events.push(frame["event"].clone());
                }
            }
            Incoming::Timeout => {}
            Incoming::Binary(len) => self.ended = Some(format!("a binary frame of {len} bytes")),
            Incoming::Close(code) => self.ended = Some(format!("a Close frame with code {code:?}")),
            Incoming::Ended(why) => self.ended = Some(why),
        }
        self.ended.is_none()
    }

    /// Reads until `done` holds or `timeout` has passed; whether `done` holds.
    fn read_until(&mut self, ws: &mut WsClient, timeout: Duration, done: impl Fn(&Received) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.read(ws, left.min(Duration::from_millis(100))) {
                return done(self);
            }
        }
        true
    }

    /// The seqs of `chat_id`'s events, in arrival order.
    fn seqs(&self, chat_id: i64) -> Vec<i64> {
        self.events.iter().filter(|event| chat_of(event) == chat_id).map(seq_of).collect()
    }

    fn has(&self, chat_id: i64, seq: i64) -> bool {
        self.events.iter().any(|event| chat_of(event) == chat_id && seq_of(event) == seq)
    }

    /// Every way the events break the contract, one sentence per chat and kind.
    fn problems(&self) -> Vec<String> {
        let chats: BTreeSet<i64> = self.events.iter().map(chat_of).collect();
        let mut problems = Vec::new();
        for chat_id in chats {
            let (mut again, mut skipped, mut strays) = (Vec::new(), Vec::new(), Vec::new());
            // The seq this connection must get next, or `None` while it is not a member.
            let mut next = self.ready.get(&chat_id).map(|last_seq| last_seq + 1);
            for event in self.events.iter().filter(|event| chat_of(event) == chat_id) {
                let seq = seq_of(event);
                match next {
                    None if !joins(event, self.user_id) => strays.push(seq),
                    Some(want) if seq < want => {
                        again.push(seq);
                        continue;
                    }
                    Some(want) => skipped.extend(want..seq),
                    None => {}
                }
                next = (!leaves(event, self.user_id)).then_some(seq + 1);
            }
            let ready = self.ready.get(&chat_id).map_or(String::new(), |seq| format!(", ready said last_seq {seq}"));
            if !again.is_empty() {
                problems.push(format!("chat {chat_id}: got {} again or out of order{ready}", runs(&again)));
            }
            if !skipped.is_empty() {
                problems.push(format!("chat {chat_id}: skipped {}{ready}", runs(&skipped)));
            }
            if !strays.is_empty() {
                problems.push(format!(
                    "chat {chat_id}: got {} while not a member (not in ready, no own member.added before)",
                    runs(&strays)
                ));
            }
        }
        problems
    }

    /// The ready frame's seqs (just their number when there are many), then
    /// each chat's seqs as they came, for failure messages.
    fn describe(&self) -> String {
        let mut out = format!("{}: ", self.what);
        match self.ready.len() {
            0..=10 => {
                let ready: Vec<String> = self.ready.iter().map(|(chat, seq)| format!("{chat}: {seq}")).collect();
                out.push_str(&format!("ready {{{}}}", ready.join(", ")));
            }
            n => out.push_str(&format!("ready lists {n} chats")),
        }
        let chats: BTreeSet<i64> = self.events.iter().map(chat_of).collect();
        for chat_id in chats {
            let listed = self.ready.get(&chat_id).map_or("not in ready".into(), |seq| format!("ready {seq}"));
            out.push_str(&format!("; chat {chat_id} ({listed}) got {}", runs(&self.seqs(chat_id))));
        }
        if let Some(ended) = &self.ended {
            out.push_str(&format!("; ended: {ended}"));
        }
        out
    }
}

/// One entry per connection that broke the contract: what it got, then why.
fn connection_problems<'a>(received: impl Iterator<Item = &'a Received>) -> Vec<String> {
    received
        .filter_map(|r| {
            let problems = r.problems();
            (!problems.is_empty()).then(|| format!("{}\n    {}", r.describe(), problems.join("\n    ")))
        })
        .collect()
}

/// Asserts that every connection kept the contract, listing each that did not.
fn assert_no_problems(received: &[&Received], what: &str) {
    let failures = connection_problems(received.iter().copied());
    assert!(
        failures.is_empty(),
        "{what}: {} of {} connections broke the contract:\n  {}",
        failures.len(),
        received.len(),
        failures.join("\n  ")
    );
}

// ---------------------------------------------------------------------------
// Forcing an interleaving with locks held by the test.

/// A transaction on the test's own connection, holding the locks its
/// statement took until `release` (or until dropped, which rolls it back).
struct Held {
    client: postgres::Client,
}

impl Held {
    fn take(app: &TestApp, statement: &str) -> Held {
        let mut client = app.db();
        client.batch_execute(&format!("BEGIN; {statement}")).unwrap_or_else(|e| panic!("{statement}: {e}"));
        Held { client }
    }

    fn release(mut self) {
        self.client.batch_execute("COMMIT").expect("commit the test's locking transaction");
    }
}

/// The statements of this database's sessions waiting for a lock.
fn lock_waiters(db: &mut postgres::Client) -> Vec<String> {
    db.query("SELECT query FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'", &[])
        .expect("read pg_stat_activity")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Waits for a step of a choreography to show, and fails the test when it
/// does not within `SETTLE`: a race that was not forced proves nothing.
fn settle(what: &str, mut reached: impl FnMut() -> bool) {
    let deadline = Instant::now() + SETTLE;
    while !reached() {
        assert!(Instant::now() < deadline, "{what} did not happen within {SETTLE:?}: the race was not forced");
        thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until at least `n` statements of this database wait for a lock.
fn settle_waiters(db: &mut postgres::Client, n: usize, what: &str) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let waiting = lock_waiters(db);
        if waiting.len() >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {n} statements should wait for a lock within {SETTLE:?}, but these did: {waiting:?}"
        );
        thread::sleep(Duration::from_millis(2));
    }
}

/// A random whole number below `bound`.
fn random_below(bound: u64) -> u64 {
    u64::from_str_radix(&random_hex(7), 16).expect("hex") % bound.max(1)
}

/// Joins a scoped thread, passing its panic on.
fn join<T>(handle: thread::ScopedJoinHandle<'_, T>) -> T {
    handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Busy-waits `offset`: a deliberate gap between two releases, not a wait for a condition.
fn spin(offset: Duration) {
    let until = Instant::now() + offset;
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

// ---------------------------------------------------------------------------
// Race 1: a process that commits and never notifies.

#[test]
fn an_event_whose_process_never_notified_reaches_the_other_processes_within_5_seconds() {
    // See: issue 12, race 1 (a process killed between commit and NOTIFY).
    let db_url = fresh_database();
    let silent = spawn_app_on(&db_url, &[("MESSAGING_FAULT", "silent-notifier")]);
    let b = spawn_app_on(&db_url, &[]);
    let alice = silent.create_user();
    let bob = silent.create_user();
    let dave = silent.create_user();
    let chat_id = id_of(&create_group(&silent, &alice, "Told nobody", &[&bob]));
    let (mut bob_ws, ready) = connect_ready(&b, &bob, "bob on B");
    let mut bob_got = Received::new("bob on B", bob.id, &ready);
    let (mut dave_ws, ready) = connect_ready(&b, &dave, "dave on B");
    let mut dave_got = Received::new("dave on B", dave.id, &ready);
    let (mut alice_ws, _) = connect_ready(&silent, &alice, "alice on the silent process");

    // Typing travels only by NOTIFY and is never stored, so it shows whether the switch works.
    alice_ws.send_json(&json!({ "type": "typing", "chat_id": chat_id }));
    bob_ws.assert_quiet(
        Duration::from_secs(1),
        "MESSAGING_FAULT=silent-notifier must keep every signal of its process from the others, \
         but a typing frame from it reached bob on B (is the switch implemented?)",
        |frame| frame["type"] == "typing",
    );

    // The chat's last event went through the silent process: no later seq reveals the gap.
    let first = send(&silent, &alice, chat_id, "through the silent process");
    let seq = seq_of(&first);
    let arrived = bob_got.read_until(&mut bob_ws, ANTI_ENTROPY, |r| r.has(chat_id, seq));
    assert!(arrived, "bob on B never got seq {seq}, sent through the silent process:\n{}", bob_got.describe());

    // The same after an event that other processes did hear of.
    send(&b, &alice, chat_id, "through B");
    let last = send(&silent, &alice, chat_id, "through the silent process again");
    let seq = seq_of(&last);
    let arrived = bob_got.read_until(&mut bob_ws, ANTI_ENTROPY, |r| r.has(chat_id, seq));
    assert!(arrived, "bob on B never got seq {seq}, the last one, through the silent process:\n{}", bob_got.describe());

    // A member added through the silent process, connected to B, which follows nothing of the chat for it.
    add_member(&silent, &alice, chat_id, &dave);
    let added = seq + 1;
    let arrived = dave_got.read_until(&mut dave_ws, ANTI_ENTROPY, |r| r.has(chat_id, added));
    assert!(arrived, "dave on B never got his member.added (seq {added}):\n{}", dave_got.describe());
    let welcome = send(&silent, &alice, chat_id, "welcome, through the silent process");
    let seq = seq_of(&welcome);
    for (ws, got) in [(&mut dave_ws, &mut dave_got), (&mut bob_ws, &mut bob_got)] {
        let arrived = got.read_until(ws, ANTI_ENTROPY, |r| r.has(chat_id, seq));
        assert!(arrived, "seq {seq}, through the silent process, never arrived:\n{}", got.describe());
    }
    assert_no_problems(&[&bob_got, &dave_got], "receivers on B of a silent process");
}

// ---------------------------------------------------------------------------
// Races 2 and 3: a member added through another process.

/// A `send` frame.
fn send_frame(chat_id: i64, content: &str, client_id: &str) -> Value {
    json!({ "type": "send", "chat_id": chat_id, "content": content, "client_id": client_id })
}

/// `POST /api/chats/{id}/members` as the owner, asserting `200`.
fn add_member(app: &TestApp, owner: &TestUser, chat_id: i64, user: &TestUser) {
    let resp = app.post(&format!("/api/chats/{chat_id}/members"), Some(&owner.token), json!({ "user_id": user.id }));
    resp.assert_status(200, &format!("{} adds {} to chat {chat_id}", owner.username, user.username));
}

/// `DELETE /api/chats/{id}/members/{user_id}` as the owner, asserting `204`.
fn remove_member(app: &TestApp, owner: &TestUser, chat_id: i64, user: &TestUser) {
    let resp = app.delete(&format!("/api/chats/{chat_id}/members/{}", user.id), Some(&owner.token));
    resp.assert_status(204, &format!("{} removes {} from chat {chat_id}", owner.username, user.username));
}

/// Waits until the hub has `ws`'s subscription: it
/// answers a typing frame for a chat the user is not in only after that.
fn settle_subscribed(ws: &mut WsClient, what: &str) {
    ws.send_json(&json!({ "type": "typing", "chat_id": NO_SUCH_CHAT }));
    settle(&format!("the hub to answer {what}'s typing probe"), || match ws.next(Duration::from_millis(50)) {
        Incoming::Text(text) => serde_json::from_str::<Value>(&text).is_ok_and(|frame| frame["type"] == "error"),
        _ => false,
    })
}

#[test]
fn a_member_added_through_another_process_gets_its_join_even_if_another_member_subscribes_there_meanwhile() {
    // See: issue 12, race 2 (`subscribe` resets a chat nobody follows to the subscriber's snapshot).
    //
    // B runs two job threads (WORKERS=4). Carol's connection holds one, waiting
    // for her user row; a send frame into a locked chat holds the other, and a
    // second one queues. Dave's join commits through A, so B's read of it
    // queues behind that send; carol's snapshot, taken after the join, then
    // subscribes her while the join is still unread.
    const TRIALS: usize = 3;
    let a = spawn_app();
    let b = spawn_app_on(&a.db_url, &[("WORKERS", "4")]);
    let alice = a.create_user();
    let dave = a.create_user();
    let blockers = [a.create_user(), a.create_user()];
    let held_chats: Vec<i64> = blockers.iter().map(|user| id_of(&create_group(&a, user, "Held", &[]))).collect();
    let (mut dave_ws, ready) = connect_ready(&b, &dave, "dave on B");
    let mut dave_got = Received::new("dave on B", dave.id, &ready);
    let mut blocker_ws: Vec<WsClient> =
        blockers.iter().map(|user| connect_ready(&b, user, &format!("{}, a blocker on B", user.username)).0).collect();
    let mut probe = a.db();

    for trial in 1..=TRIALS {
        let carol = a.create_user();
        let chat_id = id_of(&create_group(&a, &alice, &format!("Race 2, trial {trial}"), &[&carol]));
        let carol_row = Held::take(&a, &format!("SELECT id FROM users WHERE id = {} FOR NO KEY UPDATE", carol.id));
        let held = Held::take(
            &a,
            &format!("SELECT id FROM chats WHERE id IN ({}, {}) FOR UPDATE", held_chats[0], held_chats[1]),
        );

        let carol_ws = thread::scope(|scope| {
            let connecting = scope.spawn(|| connect_ready(&b, &carol, "carol on B"));
            settle_waiters(&mut probe, 1, "carol's connection to wait for her user row");
            blocker_ws[0].send_json(&send_frame(held_chats[0], "hold", &format!("hold-{trial}-0")));
            settle_waiters(&mut probe, 2, "a send frame to hold B's other job thread");
            blocker_ws[1].send_json(&send_frame(held_chats[1], "hold", &format!("hold-{trial}-1")));
            add_member(&a, &alice, chat_id, &dave);
            carol_row.release();
            let (mut carol_ws, _) = join(connecting);
            settle_waiters(&mut probe, 2, "the queued send to take the job thread carol's snapshot freed");
            settle_subscribed(&mut carol_ws, "carol");
            carol_ws
        });
        held.release();
        for ws in &mut blocker_ws {
            ws.recv_until(SOON, "the ack of the held send frame", |frame| frame["type"] == "ack");
        }

        let later = send(&a, &alice, chat_id, &format!("after dave joined, trial {trial}"));
        let seq = seq_of(&later);
        let arrived = dave_got.read_until(&mut dave_ws, ANTI_ENTROPY, |r| r.has(chat_id, seq));
        assert!(
            arrived,
            "trial {trial}: dave, connected to B and added to chat {chat_id} through A while carol subscribed \
             on B, never got his member.added (seq {}) nor the message after it (seq {seq}):\n{}",
            seq - 1,
            dave_got.describe()
        );
        assert_no_problems(&[&dave_got], &format!("dave on B, trial {trial}"));
        carol_ws.close();
    }
}

#[test]
fn a_member_added_through_another_process_while_its_connection_is_pending_gets_its_join() {
    // See: issue 12, race 3 (while a connection is pending, a later event creates the chat's entry ahead of the join).
    //
    // Each trial stalls three statements on locks the test holds: dave's
    // addition through A, a message through B queued behind it on the chat's
    // row, and dave's connection to B on his user row. Letting go of dave's
    // row and then, a random moment later, of the chat's row puts his
    // snapshot just before the join's commit, and B's own message right after
    // it, ahead of A's notification of the join.
    const TRIALS: usize = 20;
    const MAX_OFFSET_MICROS: u64 = 1500;
    const FILLER_CHATS: usize = 3000;
    let a = spawn_app();
    let b = spawn_app_on(&a.db_url, &[]);
    let alice = a.create_user();
    let dave = a.create_user();
    let mut probe = a.db();
    // Thousands of chats of dave's own, written straight to the tables (only
    // their number matters): reading, sending and subscribing a snapshot that
    // long keeps his connection pending for milliseconds after the snapshot
    // was taken, as load would, so A's notification of the join lands meanwhile.
    probe
        .execute(
            "WITH filler AS (INSERT INTO chats (is_group, title) SELECT true, 'filler ' || n \
             FROM generate_series(1, $1::int) n RETURNING id) \
             INSERT INTO chat_members (chat_id, user_id, role) SELECT id, $2, 'owner' FROM filler",
            &[&(FILLER_CHATS as i32), &dave.id],
        )
        .expect("give dave filler chats");
    let mut before_the_join = 0;

    for trial in 1..=TRIALS {
        let chat_id = id_of(&create_group(&a, &alice, &format!("Race 3, trial {trial}"), &[]));
        let chat_row = Held::take(&a, &format!("SELECT id FROM chats WHERE id = {chat_id} FOR UPDATE"));
        let dave_row = Held::take(&a, &format!("SELECT id FROM users WHERE id = {} FOR NO KEY UPDATE", dave.id));
        let offset = Duration::from_micros(random_below(MAX_OFFSET_MICROS));
        let what = format!("dave on B, trial {trial} (rows released {offset:?} apart)");

        let (mut dave_ws, mut got, through_b) = thread::scope(|scope| {
            let adding = scope.spawn(|| add_member(&a, &alice, chat_id, &dave));
            settle_waiters(&mut probe, 1, "dave's addition to wait for the chat's row");
            let sending = scope.spawn(|| send(&b, &alice, chat_id, "through B, right after the join"));
            settle_waiters(&mut probe, 2, "a message through B to queue behind it");
            let connecting = scope.spawn(|| connect_ready(&b, &dave, &what));
            settle_waiters(&mut probe, 3, "dave's connection to wait for his user row");
            dave_row.release();
            spin(offset);
            chat_row.release();
            join(adding);
            let through_b = join(sending);
            let (ws, ready) = join(connecting);
            (ws, Received::new(&what, dave.id, &ready), through_b)
        });
        if !got.ready.contains_key(&chat_id) {
            before_the_join += 1;
        }

        let last = send(&a, &alice, chat_id, "through A, last");
        let seq = seq_of(&last);
        let arrived = got.read_until(&mut dave_ws, ANTI_ENTROPY, |r| r.has(chat_id, seq));
        assert!(
            arrived,
            "trial {trial}: dave's connection to B, pending while he was added to chat {chat_id} through A and B \
             committed seq {} after his member.added, never got the chat's last seq {seq} \
             ({before_the_join} of {trial} snapshots so far came before the join):\n{}",
            seq_of(&through_b),
            got.describe()
        );
        assert_no_problems(&[&got], &format!("trial {trial}"));
        dave_ws.close();
    }
    eprintln!("race 3: dave's snapshot came before his join in {before_the_join} of {TRIALS} trials");
}

// ---------------------------------------------------------------------------
// Race 4: duplicates after `ready`.

/// Reads `ws` into `got` for `duration`, or until the connection ends.
fn read_for(got: &mut Received, ws: &mut WsClient, duration: Duration) {
    let until = Instant::now() + duration;
    while got.read(ws, until.saturating_duration_since(Instant::now())) && Instant::now() < until {}
}

#[test]
fn connections_opened_during_a_burst_never_get_an_event_at_or_below_their_ready_last_seq() {
    // See: issue 12, race 4 (a followed chat whose hub is behind the database delivers the snapshot's seqs live too).
    const CONNECTIONS: usize = 40;
    const SENDERS: usize = 4;
    let a = spawn_app();
    let b = spawn_app_on(&a.db_url, &[]);
    let alice = a.create_user();
    let carol = a.create_user();
    let bob = a.create_user();
    let senders: Vec<TestUser> = (0..SENDERS).map(|_| a.create_user()).collect();
    let members: Vec<&TestUser> = [&carol, &bob].into_iter().chain(&senders).collect();
    let chats: Vec<i64> = (0..2).map(|k| id_of(&create_group(&a, &alice, &format!("Burst {k}"), &members))).collect();
    let stop = AtomicBool::new(false);
    let sent = AtomicUsize::new(0);

    let (carol_got, bob_got) = thread::scope(|scope| {
        // Carol keeps both chats followed on B the whole time, reading everything.
        let following = scope.spawn(|| {
            let (mut ws, ready) = connect_ready(&b, &carol, "carol on B");
            let mut got = Received::new("carol on B, following", carol.id, &ready);
            loop {
                if stop.load(Ordering::SeqCst) || !got.read(&mut ws, Duration::from_millis(100)) {
                    return got;
                }
            }
        });
        let sending: Vec<_> = senders
            .iter()
            .enumerate()
            .map(|(idx, user)| {
                let (a, b, chats, stop, sent) = (&a, &b, &chats, &stop, &sent);
                scope.spawn(move || {
                    // Most go through A, so B's hub hears of them late; one sender uses B itself.
                    let app = if idx == 0 { b } else { a };
                    let mut i = 0;
                    while !stop.load(Ordering::SeqCst) && i < 5000 {
                        send(app, user, chats[i % chats.len()], &format!("burst {idx}-{i}"));
                        sent.fetch_add(1, Ordering::SeqCst);
                        i += 1;
                    }
                })
            })
            .collect();
        wait_for("the burst to be under way", SOON, || (sent.load(Ordering::SeqCst) >= 40).then_some(()));
        let mut bob_got = Vec::new();
        for k in 1..=CONNECTIONS {
            let what = format!("bob's short-lived connection {k} on B");
            let (mut ws, ready) = connect_ready(&b, &bob, &what);
            let mut got = Received::new(&what, bob.id, &ready);
            read_for(&mut got, &mut ws, Duration::from_millis(150));
            bob_got.push(got);
        }
        stop.store(true, Ordering::SeqCst);
        sending.into_iter().for_each(join);
        (join(following), bob_got)
    });

    let mut all: Vec<&Received> = bob_got.iter().collect();
    all.push(&carol_got);
    assert_no_problems(&all, "connections on B during a burst sent mostly through A");
}

// ---------------------------------------------------------------------------
// Race 5: a socket that races a logout.

/// Why a socket whose session logged out at `logged_out_at` breaks the
/// contract, if it does: it is still open `LOGOUT_CLOSE` later, or it was
/// closed with a code other than 4001 (a connection that just ends is fine).
fn outlived_logout(ws: &mut WsClient, logged_out_at: Instant) -> Option<String> {
    let deadline = logged_out_at + LOGOUT_CLOSE;
    let mut frames = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        match ws.next(left) {
            Incoming::Text(_) | Incoming::Binary(_) => frames += 1,
            Incoming::Close(None | Some(4001)) | Incoming::Ended(_) => return None,
            Incoming::Close(code) => return Some(format!("closed with {code:?}, not 4001")),
            Incoming::Timeout => {
                return Some(format!(
                    "still open {LOGOUT_CLOSE:?} after the logout, {frames} frames read:\n{}",
                    ws.recent()
                ))
            }
        }
    }
}

/// The socket of a handshake that raced its session's logout, or `None` if
/// it was refused with 401, as it may be.
fn opened_unless_refused(result: Result<WsClient, Refused>, what: &str) -> Option<WsClient> {
    match result {
        Ok(ws) => Some(ws.named(what)),
        Err(refused) if refused.status == Some(401) => None,
        Err(refused) => panic!("{what}: the handshake failed otherwise than with 401: {refused:?}"),
    }
}

#[test]
fn a_socket_opened_while_its_session_logs_out_is_closed_with_4001_within_3_seconds() {
    // See: issue 12, race 5 (the session is read before the connection registers with the hub).
    const THREADS: usize = 2;
    const ATTEMPTS: usize = 100;
    const MAX_OFFSET_MICROS: u64 = 1500;
    let app = spawn_app();
    let eve = app.create_user();
    let chat_id = id_of(&create_group(&app, &eve, "Eve's", &[]));
    let mut failures: Vec<String> = Vec::new();

    // Unforced: a `/ws` handshake and the logout of its session, started a random moment apart.
    let opened: Mutex<Vec<(WsClient, Instant, String)>> = Mutex::new(Vec::new());
    thread::scope(|scope| {
        for t in 0..THREADS {
            let (app, eve, opened) = (&app, &eve, &opened);
            scope.spawn(move || {
                for i in 0..ATTEMPTS {
                    let token = app.login_token(&eve.username, &eve.password);
                    let offset = Duration::from_micros(random_below(MAX_OFFSET_MICROS));
                    let logout_first = random_below(2) == 0;
                    let what = format!(
                        "attempt {t}-{i} (logout {} by {offset:?})",
                        if logout_first { "first" } else { "second" }
                    );
                    let (result, logged_out_at) = thread::scope(|inner| {
                        let connecting = inner.spawn(|| {
                            if logout_first {
                                spin(offset);
                            }
                            try_connect(app.ws_addr, "/ws", &[("Authorization", &bearer(&token))])
                        });
                        if !logout_first {
                            spin(offset);
                        }
                        app.delete("/api/sessions/current", Some(&token)).assert_status(204, &what);
                        let logged_out_at = Instant::now();
                        (connecting.join().expect("the connecting thread"), logged_out_at)
                    });
                    if let Some(ws) = opened_unless_refused(result, &what) {
                        opened.lock().expect("the list of opened sockets").push((ws, logged_out_at, what));
                    }
                }
            });
        }
    });
    let opened = opened.into_inner().expect("the list of opened sockets");
    let n_opened = opened.len();
    for (mut ws, logged_out_at, what) in opened {
        failures.extend(outlived_logout(&mut ws, logged_out_at).map(|problem| format!("{what}: {problem}")));
    }
    let unforced = failures.len();

    // Forced: the seed's socket reads the session, then waits for `chat_members`
    // (locked here) before it registers; the logout happens in between.
    let token = app.login_token(&eve.username, &eve.password);
    let mut probe = app.db();
    let members = Held::take(&app, "LOCK TABLE chat_members IN ACCESS EXCLUSIVE MODE");
    let path = format!("/ws?chat_id={chat_id}");
    let (result, logged_out_at) = thread::scope(|scope| {
        let connecting = scope.spawn(|| try_connect(app.ws_addr, &path, &[("Authorization", &bearer(&token))]));
        settle_waiters(&mut probe, 1, "the seed socket's handshake to wait for chat_members");
        app.delete("/api/sessions/current", Some(&token)).assert_status(204, "the forced attempt's logout");
        let logged_out_at = Instant::now();
        members.release();
        (connecting.join().expect("the connecting thread"), logged_out_at)
    });
    if let Some(mut ws) = opened_unless_refused(result, "the forced seed socket") {
        let problem = outlived_logout(&mut ws, logged_out_at);
        failures.extend(problem.map(|problem| format!("the forced seed socket: {problem}")));
    }

    let forced = if failures.len() > unforced { "outlived it" } else { "was closed" };
    assert!(
        failures.is_empty(),
        "sockets whose session logged out while they opened were not closed with 4001 within {LOGOUT_CLOSE:?}: \
         {unforced} of the {n_opened} unforced /ws sockets that opened (of {} attempts), and the forced seed socket \
         {forced} (the first 20 shown):\n{}",
        THREADS * ATTEMPTS,
        failures[..failures.len().min(20)].join("\n")
    );
}

// ---------------------------------------------------------------------------
// Whole runs: followers, senders, and the comparison with the log.

/// Each user's last seq per chat: where a follower must get to.
type Targets = HashMap<i64, BTreeMap<i64, i64>>;

/// Where followers stop once traffic is over: their targets, and the
/// moment by which they must hold them.
struct Finish {
    targets: Mutex<Option<(Targets, Instant)>>,
    /// When followers stop whatever happened (a sender stuck, a panic in
    /// another thread), so the test fails with what they saw instead of hanging.
    give_up: Instant,
}

impl Default for Finish {
    fn default() -> Finish {
        Finish { targets: Mutex::new(None), give_up: Instant::now() + GIVE_UP }
    }
}

impl Finish {
    fn set(&self, targets: Targets, deadline: Instant) {
        *self.targets.lock().unwrap_or_else(PoisonError::into_inner) = Some((targets, deadline));
    }

    /// Whether `follower` is done: it holds every target, or time is up.
    fn reached(&self, follower: &Follower) -> bool {
        if Instant::now() >= self.give_up {
            return true;
        }
        let guard = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((targets, deadline)) = guard.as_ref() else { return false };
        Instant::now() >= *deadline
            || targets.get(&follower.user.id).is_none_or(|chats| {
                chats.iter().all(|(chat_id, seq)| follower.last(*chat_id).is_some_and(|last| last >= *seq))
            })
    }
}

/// A client that follows the contract's catching-up recipe across
/// reconnections: on `ready`, `/events?after=` up to each chat's
/// `last_seq`, then live frames (a gap is filled from `/events` too). It
/// keeps every event it applied, and every connection for `Received`'s check.
struct Follower {
    name: String,
    user: TestUser,
    /// The chats it belongs to for the whole run: it must end with each of
    /// their whole logs. Of the others it must hold the seqs of its membership.
    whole_run: BTreeSet<i64>,
    log: BTreeMap<i64, BTreeMap<i64, Value>>,
    connections: Vec<Received>,
    notes: Vec<String>,
}

impl Follower {
    fn new(name: &str, user: &TestUser, whole_run: &[i64]) -> Follower {
        let whole_run = whole_run.iter().copied().collect();
        let (log, connections, notes) = (BTreeMap::new(), Vec::new(), Vec::new());
        Follower { name: name.to_string(), user: user.clone(), whole_run, log, connections, notes }
    }

    fn last(&self, chat_id: i64) -> Option<i64> {
        self.log.get(&chat_id).and_then(|log| log.last_key_value()).map(|(seq, _)| *seq)
    }

    /// Follows on `app` until `finish` says so, each connection lasting
    /// `slice` if given; counts its first `ready` in `connected`.
    fn follow(&mut self, app: &TestApp, slice: Option<Duration>, connected: &AtomicUsize, finish: &Finish) {
        while !finish.reached(self) {
            let what = format!("{} connection {}", self.name, self.connections.len() + 1);
            let mut ws = match try_connect(app.ws_addr, "/ws", &[("Authorization", &bearer(&self.user.token))]) {
                Ok(ws) => ws.named(&what),
                Err(refused) => {
                    self.notes.push(format!("{what}: handshake refused: {refused:?}"));
                    // A client's backoff before it tries again, not a wait for a condition.
                    thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let ready = match ws.next(SOON) {
                Incoming::Text(text) => serde_json::from_str::<Value>(&text)
                    .unwrap_or_else(|e| panic!("{what}: the first frame is not JSON ({e}): {text}")),
                other => {
                    self.notes.push(format!("{what}: no ready frame: {other:?}"));
                    continue;
                }
            };
            let mut received = Received::new(&what, self.user.id, &ready);
            if self.connections.is_empty() {
                connected.fetch_add(1, Ordering::SeqCst);
            }
            let listed: Vec<(i64, i64)> = received.ready.iter().map(|(chat, seq)| (*chat, *seq)).collect();
            for (chat_id, last_seq) in listed {
                self.catch_up(app, chat_id, last_seq);
            }
            let started = Instant::now();
            let mut applied = 0;
            loop {
                let open = received.read(&mut ws, Duration::from_millis(50));
                while applied < received.events.len() {
                    let event = received.events[applied].clone();
                    applied += 1;
                    self.apply_live(app, event);
                }
                if !open || finish.reached(self) || slice.is_some_and(|slice| started.elapsed() >= slice) {
                    break;
                }
            }
            self.connections.push(received);
        }
    }

    fn apply_live(&mut self, app: &TestApp, event: Value) {
        let (chat_id, seq) = (chat_of(&event), seq_of(&event));
        if let Some(last) = self.last(chat_id) {
            if seq > last + 1 && !joins(&event, self.user.id) {
                self.catch_up(app, chat_id, seq - 1);
            }
        }
        self.apply(event, "live");
    }

    fn apply(&mut self, event: Value, how: &str) {
        let (chat_id, seq) = (chat_of(&event), seq_of(&event));
        let held = self.log.entry(chat_id).or_default().entry(seq).or_insert_with(|| event.clone());
        if identity(held) != identity(&event) {
            let note = format!("chat {chat_id} seq {seq}: {how} {} but held {}", identity(&event), identity(held));
            self.notes.push(note);
        }
    }

    /// Reads `/events?after=` from the last seq held (or the start) up to `upto`.
    fn catch_up(&mut self, app: &TestApp, chat_id: i64, upto: i64) {
        loop {
            let after = self.last(chat_id).unwrap_or(0);
            if after >= upto {
                return;
            }
            let resp =
                app.get(&format!("/api/chats/{chat_id}/events?after={after}&limit=1000"), Some(&self.user.token));
            if resp.status != 200 {
                self.notes.push(format!("catching up chat {chat_id} after {after}: HTTP {}", resp.status));
                return;
            }
            let events = resp.json()["events"].as_array().cloned().unwrap_or_default();
            if events.is_empty() {
                self.notes.push(format!("catching up chat {chat_id} after {after}: no events, up to {upto} expected"));
                return;
            }
            for event in events.into_iter().filter(|event| seq_of(event) <= upto) {
                self.apply(event, "caught up");
            }
        }
    }
}

/// A message acknowledged to its sender (`201` or `ack`).
struct Acked {
    chat_id: i64,
    seq: i64,
    id: i64,
    sender: String,
}

/// How a sender sends.
#[derive(Clone, Copy, Debug)]
enum Via {
    Rest,
    Ws,
}

/// One sender's work: as `user` through `app`, `n` messages (fewer if
/// `stop` is set) round-robin over `chats`. With `may_die`, a server that
/// stops answering ends the sender quietly: the test is killing it.
struct Sender<'a> {
    app: &'a TestApp,
    user: &'a TestUser,
    via: Via,
    chats: Vec<i64>,
    n: usize,
    name: String,
    may_die: bool,
    /// Called after each acknowledged message.
    after_ack: Option<&'a (dyn Fn() + Sync)>,
}

/// What all senders share: the acknowledged messages, counted, and the stop flag.
#[derive(Default)]
struct Sent {
    acked: Mutex<Vec<Acked>>,
    count: AtomicUsize,
    stop: AtomicBool,
}

impl Sent {
    /// Waits until `percent` of `total` messages have been acknowledged.
    fn wait_for_share(&self, percent: usize, total: usize) {
        let what = format!("{percent}% of {total} messages to be acknowledged");
        wait_for(&what, Duration::from_secs(120), || {
            (self.count.load(Ordering::SeqCst) * 100 >= percent * total).then_some(())
        });
    }
}

impl Sender<'_> {
    fn run(&self, sent: &Sent) {
        let mut ws = match self.via {
            Via::Ws => Some(connect_ready(self.app, self.user, &self.name).0),
            Via::Rest => None,
        };
        for i in 0..self.n {
            if sent.stop.load(Ordering::SeqCst) {
                return;
            }
            let chat_id = self.chats[i % self.chats.len()];
            let content = format!("{} {i}", self.name);
            let outcome = match &mut ws {
                None => self.post(chat_id, &content),
                Some(ws) => self.send_frame(ws, chat_id, &content, &format!("{}-{i}", self.name.replace(' ', "-"))),
            };
            let message = match outcome {
                Ok(message) => message,
                Err(_) if self.may_die => return,
                Err(problem) => panic!("{}: {problem}", self.name),
            };
            let (seq, id) = (seq_of(&message), id_of(&message));
            sent.acked.lock().expect("the acked list").push(Acked { chat_id, seq, id, sender: self.name.clone() });
            sent.count.fetch_add(1, Ordering::SeqCst);
            if let Some(after_ack) = self.after_ack {
                after_ack();
            }
        }
    }

    fn post(&self, chat_id: i64, content: &str) -> Result<Value, String> {
        let (path, authorization) = (format!("/api/chats/{chat_id}/messages"), bearer(&self.user.token));
        let headers = [("Authorization", authorization.as_str()), ("Content-Type", "application/json")];
        let body = json!({ "content": content }).to_string();
        let resp = try_request(self.app.http_addr, "POST", &path, &headers, body.as_bytes())?;
        match resp.status {
            201 => Ok(resp.json()),
            _ => Err(format!("sending {content:?} to chat {chat_id}:\n{}", resp.describe())),
        }
    }

    fn send_frame(&self, ws: &mut WsClient, chat_id: i64, content: &str, client_id: &str) -> Result<Value, String> {
        ws.send(Message::text(send_frame(chat_id, content, client_id).to_string())).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + SOON;
        loop {
            match ws.next(deadline.saturating_duration_since(Instant::now())) {
                Incoming::Text(text) => {
                    let frame: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
                    match (frame["client_id"] == client_id, frame["type"] == "ack") {
                        (true, true) => return Ok(frame["message"].clone()),
                        (true, false) => return Err(format!("send frame {client_id} was answered {frame}")),
                        _ => {}
                    }
                }
                Incoming::Timeout => return Err(format!("no ack for {client_id} within {SOON:?}")),
                other => return Err(format!("waiting for the ack of {client_id}: {other:?}")),
            }
        }
    }
}

/// The seqs `user_id` must hold of a chat's `log`: all of them for a member
/// of the whole run, else those from each of its joins to its removal.
fn expected_seqs(log: &[Value], user_id: i64, whole_run: bool) -> BTreeSet<i64> {
    let mut seqs = BTreeSet::new();
    let mut member = whole_run;
    for event in log {
        member |= joins(event, user_id);
        if member {
            seqs.insert(seq_of(event));
        }
        member &= whole_run || !leaves(event, user_id);
    }
    seqs
}

/// Each chat's whole log, read at the end by `owner`.
fn final_logs(app: &TestApp, owner: &TestUser, chats: &[i64]) -> BTreeMap<i64, Vec<Value>> {
    chats.iter().map(|chat_id| (*chat_id, all_events(app, owner, *chat_id))).collect()
}

/// The seqs `user_id` must hold of each chat's log, given the chats it
/// belongs to for the whole run.
fn expected_of(
    logs: &BTreeMap<i64, Vec<Value>>,
    user_id: i64,
    whole_run: &BTreeSet<i64>,
) -> BTreeMap<i64, BTreeSet<i64>> {
    let expected =
        |(chat_id, log): (&i64, &Vec<Value>)| (*chat_id, expected_seqs(log, user_id, whole_run.contains(chat_id)));
    logs.iter().map(expected).collect()
}

/// Each follower's user and whole-run chats, for `targets` while the followers are busy.
fn users_of<'a, T: 'a>(followers: impl Iterator<Item = &'a (Follower, T)>) -> Vec<(i64, BTreeSet<i64>)> {
    followers.map(|(follower, _)| (follower.user.id, follower.whole_run.clone())).collect()
}

/// What each user must end with: its last expected seq per chat.
fn targets(logs: &BTreeMap<i64, Vec<Value>>, users: &[(i64, BTreeSet<i64>)]) -> Targets {
    let last = |user_id: i64, whole_run: &BTreeSet<i64>| -> BTreeMap<i64, i64> {
        let expected = expected_of(logs, user_id, whole_run);
        expected.into_iter().filter_map(|(chat_id, seqs)| seqs.last().map(|seq| (chat_id, *seq))).collect()
    };
    users.iter().map(|(user_id, whole_run)| (*user_id, last(*user_id, whole_run))).collect()
}

/// Compares a run with the log: every follower's events per chat, every
/// connection's contract, every acknowledged message. One line per problem.
fn check_run(
    logs: &BTreeMap<i64, Vec<Value>>,
    followers: &[Follower],
    short_lived: &[Received],
    acked: &[Acked],
) -> Vec<String> {
    let mut problems = Vec::new();
    for acked in acked {
        let log = &logs[&acked.chat_id];
        let created: Vec<i64> = log
            .iter()
            .filter(|e| e["type"] == "message.created" && e["message"]["id"] == json!(acked.id))
            .map(seq_of)
            .collect();
        if created != [acked.seq] {
            problems.push(format!(
                "message {} (acknowledged to {} with seq {} of chat {}) is in the log at seqs {created:?}",
                acked.id, acked.sender, acked.seq, acked.chat_id
            ));
        }
    }
    for follower in followers {
        for (chat_id, expected) in expected_of(logs, follower.user.id, &follower.whole_run) {
            let log = &logs[&chat_id];
            let held = follower.log.get(&chat_id).cloned().unwrap_or_default();
            let missing: Vec<i64> = expected.iter().filter(|seq| !held.contains_key(seq)).copied().collect();
            let extra: Vec<i64> = held.keys().filter(|seq| !expected.contains(seq)).copied().collect();
            let wrong: Vec<i64> = held
                .iter()
                .filter(|(seq, event)| log.get(**seq as usize - 1).is_some_and(|e| identity(e) != identity(event)))
                .map(|(seq, _)| *seq)
                .collect();
            let missed_acks: Vec<i64> = acked
                .iter()
                .filter(|a| a.chat_id == chat_id && expected.contains(&a.seq) && !held.contains_key(&a.seq))
                .map(|a| a.seq)
                .collect();
            if !(missing.is_empty() && extra.is_empty() && wrong.is_empty()) {
                problems.push(format!(
                    "{}: chat {chat_id} of {} events: missing {} (acknowledged among them: {}), extra {}, \
                     different from the log {}",
                    follower.name,
                    log.len(),
                    runs(&missing),
                    runs(&missed_acks),
                    runs(&extra),
                    runs(&wrong)
                ));
            }
        }
        problems.extend(follower.notes.iter().map(|note| format!("{}: {note}", follower.name)));
    }
    let connections = followers.iter().flat_map(|f| &f.connections).chain(short_lived);
    problems.extend(connection_problems(connections));
    problems
}

/// Fails with the run's problems, the first ones in full.
fn assert_run(problems: &[String], what: &str) {
    const SHOWN: usize = 40;
    assert!(
        problems.is_empty(),
        "{what}: {} problems (the first {}):\n  {}",
        problems.len(),
        problems.len().min(SHOWN),
        problems[..problems.len().min(SHOWN)].join("\n  ")
    );
}

#[test]
fn three_processes_deliver_every_event_exactly_once_through_traffic_reconnects_and_membership_changes() {
    // See: issue 12 (the five races, as they meet under load).
    //
    // Three group chats carry everyone's traffic; each process has a steady
    // receiver, one that reconnects every 250 ms, and a joiner whose
    // membership of one group chat and of one side chat (followed by nobody
    // on its process but the joiner) changes through the other processes.
    // A visitor, member of everything, opens short-lived connections all along.
    const PER_SENDER: usize = 200;
    const NAMES: [&str; 3] = ["A", "B", "C"];
    let db_url = fresh_database();
    // Delivery is under test here, not the per-address and per-user limits.
    let procs: Vec<TestApp> = NAMES.iter().map(|_| spawn_app_on(&db_url, &[("RATE_LIMITS", "off")])).collect();
    let n = procs.len();
    let other = |p: usize, k: usize| &procs[(p + k) % n];
    let owner = procs[0].create_user();
    let one_each = || -> Vec<TestUser> { procs.iter().map(|app| app.create_user()).collect() };
    let (rest_senders, ws_senders, steady, reconnecting, joiners) =
        (one_each(), one_each(), one_each(), one_each(), one_each());
    let visitor = procs[1].create_user();
    let members: Vec<&TestUser> =
        rest_senders.iter().chain(&ws_senders).chain(&steady).chain(&reconnecting).chain([&visitor]).collect();
    let groups: Vec<i64> =
        (0..n).map(|p| id_of(&create_group(&procs[p], &owner, &format!("Group {}", NAMES[p]), &members))).collect();
    // Side chat p: the REST sender of the next process writes to it; on process p, only joiner p follows it.
    let sides: Vec<i64> = (0..n)
        .map(|p| {
            let members = [&rest_senders[(p + 1) % n], &visitor];
            id_of(&create_group(other(p, 1), &owner, &format!("Side {}", NAMES[p]), &members))
        })
        .collect();
    let all_chats: Vec<i64> = groups.iter().chain(&sides).copied().collect();
    let total = 2 * n * PER_SENDER;
    let (sent, finish, connected, sending_done) =
        (Sent::default(), Finish::default(), AtomicUsize::new(0), AtomicBool::new(false));

    // (follower, (its process, how long each of its connections lasts))
    let mut followers: Vec<(Follower, (usize, Option<Duration>))> = Vec::new();
    for p in 0..n {
        let (name, every) = (NAMES[p], Some(Duration::from_millis(250)));
        followers.push((Follower::new(&format!("steady receiver on {name}"), &steady[p], &groups), (p, None)));
        let reconnecting = Follower::new(&format!("reconnecting receiver on {name}"), &reconnecting[p], &groups);
        followers.push((reconnecting, (p, every)));
        followers.push((Follower::new(&format!("joiner on {name}"), &joiners[p], &[]), (p, None)));
    }
    let (n_followers, users) = (followers.len(), users_of(followers.iter()));

    let (followers, short_lived, logs) = thread::scope(|scope| {
        let (procs, sent, finish, connected, sending_done) = (&procs, &sent, &finish, &connected, &sending_done);
        let following: Vec<_> = followers
            .into_iter()
            .map(|(mut follower, (p, slice))| {
                scope.spawn(move || {
                    follower.follow(&procs[p], slice, connected, finish);
                    follower
                })
            })
            .collect();
        let what = "every follower's first ready";
        wait_for(what, SOON, || (connected.load(Ordering::SeqCst) >= n_followers).then_some(()));
        let senders: Vec<Sender> = (0..n)
            .flat_map(|p| {
                let rotated: Vec<i64> = groups.iter().cycle().skip(p).take(n).copied().collect();
                let with_side: Vec<i64> = rotated.iter().copied().chain([sides[(p + n - 1) % n]]).collect();
                [(p, Via::Rest, &rest_senders[p], with_side), (p, Via::Ws, &ws_senders[p], rotated)]
            })
            .map(|(p, via, user, chats)| Sender {
                app: &procs[p],
                user,
                via,
                chats,
                n: PER_SENDER,
                name: format!("{via:?} sender on {}", NAMES[p]),
                may_die: false,
                after_ack: None,
            })
            .collect();
        let sending: Vec<_> = senders.into_iter().map(|sender| scope.spawn(move || sender.run(sent))).collect();
        // Joiner p is connected to process p; its memberships change through the two others, in turns.
        let changing = scope.spawn(|| {
            for step in 0..6 {
                sent.wait_for_share(10 + 12 * step, total);
                for p in 0..n {
                    let through = other(p, 1 + step % 2);
                    match step {
                        0 | 4 => add_member(through, &owner, groups[p], &joiners[p]),
                        2 => remove_member(through, &owner, groups[p], &joiners[p]),
                        _ => {}
                    }
                    match step % 2 {
                        0 => add_member(through, &owner, sides[p], &joiners[p]),
                        _ => remove_member(through, &owner, sides[p], &joiners[p]),
                    }
                }
            }
        });
        let visiting = scope.spawn(|| {
            sent.wait_for_share(5, total);
            let mut visits = Vec::new();
            while !sending_done.load(Ordering::SeqCst) {
                let p = visits.len() % n;
                let what = format!("the visitor's short-lived connection {} on {}", visits.len() + 1, NAMES[p]);
                let (mut ws, ready) = connect_ready(&procs[p], &visitor, &what);
                let mut got = Received::new(&what, visitor.id, &ready);
                read_for(&mut got, &mut ws, Duration::from_millis(80));
                visits.push(got);
            }
            visits
        });
        sending.into_iter().for_each(join);
        sending_done.store(true, Ordering::SeqCst);
        join(changing);
        let logs = final_logs(&procs[0], &owner, &all_chats);
        finish.set(targets(&logs, &users), Instant::now() + ANTI_ENTROPY);
        let followers: Vec<Follower> = following.into_iter().map(join).collect();
        (followers, join(visiting), logs)
    });

    let acked = sent.acked.into_inner().expect("the acked list");
    assert_eq!(acked.len(), total, "every message was acknowledged");
    assert_run(&check_run(&logs, &followers, &short_lived, &acked), "three processes under load");
}

#[test]
fn receivers_on_the_survivor_get_every_message_once_in_order_after_the_other_binary_is_sigkilled_mid_traffic() {
    // See: issue 12, race 1 (a real process dying between its commits and their NOTIFY).
    //
    // Each REST sender on the victim writes to a chat only the victim writes
    // to, so no later seq reveals a missing one; the first of them to get an
    // answer past KILL_AFTER messages kills the victim at once, before its
    // notifier is likely to have sent that message's NOTIFY.
    const VICTIM_CHATS: usize = 4;
    const KILL_AFTER: usize = 300;
    const MANY: usize = 100_000;
    let db_url = fresh_database();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (victim_process, http, ws) = serve_in(root, &db_url, &[("RATE_LIMITS", "off")]);
    let victim = TestApp::attach(http, ws, &db_url);
    let (_survivor_process, http, ws) = serve_in(root, &db_url, &[("RATE_LIMITS", "off")]);
    let survivor = TestApp::attach(http, ws, &db_url);
    let owner = survivor.create_user();
    let victim_rest: Vec<TestUser> = (0..VICTIM_CHATS).map(|_| survivor.create_user()).collect();
    let (victim_ws, survivor_rest, survivor_ws) =
        (survivor.create_user(), survivor.create_user(), survivor.create_user());
    let receivers: Vec<TestUser> = (0..3).map(|_| survivor.create_user()).collect();
    let members: Vec<&TestUser> =
        victim_rest.iter().chain([&victim_ws, &survivor_rest, &survivor_ws]).chain(&receivers).collect();
    let chats: Vec<i64> =
        (0..=VICTIM_CHATS).map(|k| id_of(&create_group(&survivor, &owner, &format!("Kill {k}"), &members))).collect();
    let (victim_chats, shared) = (&chats[..VICTIM_CHATS], chats[VICTIM_CHATS]);
    let (sent, finish, connected) = (Sent::default(), Finish::default(), AtomicUsize::new(0));
    let victim_process = Mutex::new(Some(victim_process));
    let kill = || {
        if sent.count.load(Ordering::SeqCst) >= KILL_AFTER {
            if let Some(mut process) = victim_process.lock().expect("the victim").take() {
                process.kill();
            }
        }
    };
    let followers: Vec<(Follower, Option<Duration>)> = vec![
        (Follower::new("first steady receiver on the survivor", &receivers[0], &chats), None),
        (Follower::new("second steady receiver on the survivor", &receivers[1], &chats), None),
        (
            Follower::new("reconnecting receiver on the survivor", &receivers[2], &chats),
            Some(Duration::from_millis(300)),
        ),
    ];
    let users = users_of(followers.iter());

    let (followers, logs) = thread::scope(|scope| {
        let (survivor, sent, finish, connected) = (&survivor, &sent, &finish, &connected);
        let following: Vec<_> = followers
            .into_iter()
            .map(|(mut follower, slice)| {
                scope.spawn(move || {
                    follower.follow(survivor, slice, connected, finish);
                    follower
                })
            })
            .collect();
        wait_for("every receiver's first ready", SOON, || (connected.load(Ordering::SeqCst) >= 3).then_some(()));
        let mut senders: Vec<Sender> = victim_rest
            .iter()
            .zip(victim_chats)
            .map(|(user, chat_id)| Sender {
                app: &victim,
                user,
                via: Via::Rest,
                chats: vec![*chat_id],
                n: MANY,
                name: format!("REST sender on the victim, chat {chat_id}"),
                may_die: true,
                after_ack: Some(&kill),
            })
            .collect();
        let name = "WebSocket sender on the victim".to_string();
        let (user, all) = (&victim_ws, chats.clone());
        let via = Via::Ws;
        senders.push(Sender { app: &victim, user, via, chats: all, n: MANY, name, may_die: true, after_ack: None });
        for (user, via) in [(&survivor_rest, Via::Rest), (&survivor_ws, Via::Ws)] {
            let name = format!("{via:?} sender on the survivor");
            let chats = vec![shared];
            senders.push(Sender { app: survivor, user, via, chats, n: MANY, name, may_die: false, after_ack: None });
        }
        let sending: Vec<_> = senders.into_iter().map(|sender| scope.spawn(move || sender.run(sent))).collect();
        wait_for("the victim to be killed", Duration::from_secs(60), || {
            victim_process.lock().expect("the victim").is_none().then_some(())
        });
        let at_kill = sent.count.load(Ordering::SeqCst);
        wait_for("the survivor's senders to go on for 50 more", Duration::from_secs(60), || {
            (sent.count.load(Ordering::SeqCst) >= at_kill + 50).then_some(())
        });
        sent.stop.store(true, Ordering::SeqCst);
        sending.into_iter().for_each(join);
        let logs = final_logs(survivor, &owner, &chats);
        finish.set(targets(&logs, &users), Instant::now() + ANTI_ENTROPY);
        (following.into_iter().map(join).collect::<Vec<_>>(), logs)
    });

    let acked = sent.acked.into_inner().expect("the acked list");
    let by_victim = acked.iter().filter(|a| a.sender.contains("victim")).count();
    let what = format!(
        "receivers on the survivor after a SIGKILL of the other process ({} messages acknowledged, {by_victim} by \
         the victim)",
        acked.len()
    );
    assert!(by_victim > 0, "{what}: the victim acknowledged nothing");
    assert_run(&check_run(&logs, &followers, &[], &acked), &what);
}
