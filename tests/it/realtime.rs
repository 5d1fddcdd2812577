//! Real time over WebSocket (contract section 6, and the seed's `ws` row of
//! section 8): handshake auth and tickets, the `ready` snapshot, fan-out of
//! events, typing, read and presence across two server processes on one
//! database, catch-up without gaps, lagging clients (4008), logout, a
//! database restart, bad frames and the seed's `?chat_id=` socket.
//!
//! Every test uses real sockets through `support::ws` and waits with
//! deadlines. "Within a second" in the contract is checked as `PROMPTLY`.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use messaging::model::SessionId;
use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::{Data as OpData, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::Message;

use crate::chats::{create_group, id_of, NO_SUCH_CHAT};
use crate::events::{assert_event_shape, events_page};
use crate::messages::{assert_message_shape, history, post_message, send};
use crate::support::ws::{assert_refused, connect, connect_bearer, try_connect, Incoming, WsClient};
use crate::support::{
    assert_keys, assert_utc_timestamp, spawn_app, spawn_app_on, spawn_app_with, wait_for, PrivateCluster, TestApp,
    TestUser,
};

/// The contract's "within a second", with slack for a machine that runs
/// every test at once on two cores.
pub(crate) const PROMPTLY: Duration = Duration::from_secs(2);

/// For frames that follow a handshake or a burst of work.
pub(crate) const SOON: Duration = Duration::from_secs(10);

/// The same constant as `support/app.rs`'s `SECRET_KEY`, which is private
/// there; tests that sign their own tickets need it. If the two drift apart,
/// `a_ticket_signed_with_the_servers_key_but_expired_is_refused_with_401`
/// fails on its control ticket first, saying so.
const SECRET_KEY: &str = "test-secret-key-0123456789abcdef-0123456789abcdef-0123456789abcd";

/// Connects `user` to `app` with its bearer token and checks the `ready` frame.
pub(crate) fn connect_ready(app: &TestApp, user: &TestUser, name: &str) -> (WsClient, Value) {
    let mut ws = connect_bearer(app.ws_addr, &user.token).named(name);
    let ready = ws.recv(SOON, "the ready frame");
    assert_ready(&ready, user, name);
    (ws, ready)
}

/// Asserts the `ready` frame's shape and that it names `user`.
pub(crate) fn assert_ready(ready: &Value, user: &TestUser, what: &str) {
    assert_eq!(ready["type"], "ready", "{what}: the first frame must be ready: {ready}");
    assert_keys(ready, &["type", "user", "chats"], &format!("{what}: the ready frame"));
    assert_keys(&ready["user"], &["id", "username", "email", "created_at"], &format!("{what}: ready.user (Me)"));
    assert_eq!(ready["user"]["id"], json!(user.id), "{what}: ready.user is someone else: {ready}");
    assert_utc_timestamp(&ready["user"]["created_at"], &format!("{what}: ready.user.created_at"));
    let chats = ready["chats"].as_array().unwrap_or_else(|| panic!("{what}: ready.chats is not an array: {ready}"));
    for chat in chats {
        assert_keys(chat, &["chat_id", "last_seq"], &format!("{what}: an entry of ready.chats"));
        assert!(chat["chat_id"].as_i64().is_some_and(|id| id > 0), "{what}: chat_id: {chat}");
        assert!(chat["last_seq"].as_i64().is_some_and(|seq| seq >= 0), "{what}: last_seq: {chat}");
    }
}

/// `last_seq` of `chat_id` in a ready frame, or `None` when it is not listed.
pub(crate) fn last_seq_in(ready: &Value, chat_id: i64) -> Option<i64> {
    ready["chats"].as_array()?.iter().find(|chat| chat["chat_id"] == json!(chat_id))?["last_seq"].as_i64()
}

/// Whether `frame` carries an event of `chat_id` whose type is `kind`.
pub(crate) fn is_event(frame: &Value, chat_id: i64, kind: &str) -> bool {
    frame["type"] == "event" && frame["event"]["chat_id"] == json!(chat_id) && frame["event"]["type"] == kind
}

/// Whether `frame` is the `message.created` event of the message `message_id`.
pub(crate) fn is_created(frame: &Value, message_id: &Value) -> bool {
    frame["type"] == "event"
        && frame["event"]["type"] == "message.created"
        && &frame["event"]["message"]["id"] == message_id
}

/// Whether `frame` carries any event of `chat_id`.
pub(crate) fn is_any_event_of(frame: &Value, chat_id: i64) -> bool {
    frame["type"] == "event" && frame["event"]["chat_id"] == json!(chat_id)
}

/// Asserts an event frame's shape and returns its event.
pub(crate) fn event_of(frame: &Value, chat_id: i64) -> Value {
    assert_keys(frame, &["type", "event"], "an event frame");
    assert_event_shape(&frame["event"], chat_id);
    frame["event"].clone()
}

pub(crate) fn seq_of(value: &Value) -> i64 {
    value["seq"].as_i64().unwrap_or_else(|| panic!("no integer seq in {value}"))
}

fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is after 1970").as_secs() as i64
}

pub(crate) fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `GET /api/users/{id}`'s `online` as `viewer` sees it.
fn online(app: &TestApp, viewer: &TestUser, user: &TestUser) -> bool {
    let resp = app.get(&format!("/api/users/{}", user.id), Some(&viewer.token));
    resp.assert_status(200, &format!("GET /api/users/{}", user.id));
    resp.json()["online"].as_bool().unwrap_or_else(|| panic!("online is not a boolean:\n{}", resp.describe()))
}

/// `POST /api/ws-tickets` as `user`, asserting `201` and the body's shape.
fn create_ticket(app: &TestApp, user: &TestUser) -> Value {
    let resp = app.post("/api/ws-tickets", Some(&user.token), json!({}));
    resp.assert_status(201, &format!("{} asks for a WebSocket ticket", user.username));
    let body = resp.json();
    assert_keys(&body, &["ticket", "expires_at", "ws_url"], "a ticket");
    body
}

/// The id of `user`'s only session, straight from the database.
fn session_id(app: &TestApp, user: &TestUser) -> SessionId {
    let rows = app.db().query("SELECT id FROM sessions WHERE user_id = $1", &[&user.id]).expect("read sessions");
    assert_eq!(rows.len(), 1, "{} should have exactly one session", user.username);
    SessionId(rows[0].get(0))
}

/// Asserts that a connection was closed the way logout closes it: a Close
/// frame with 4001, or the connection simply ending, before `deadline`.
pub(crate) fn assert_logged_out(ws: &mut WsClient, deadline: Instant, what: &str) {
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let closed = ws.expect_close(left, what);
    assert!(
        !closed.close_frame || closed.code == Some(4001),
        "{what}: closed with code {:?}, expected 4001 (or the connection ending)",
        closed.code
    );
}

// ---------------------------------------------------------------------------
// Two processes on one database.

#[test]
fn every_kind_of_frame_crosses_between_two_server_processes() {
    let a = spawn_app();
    let b = spawn_app_on(&a.db_url, &[]);
    let alice = a.create_user();
    let bob = a.create_user();
    let carol = a.create_user();
    let chat_id = id_of(&create_group(&a, &alice, "Two processes", &[&bob, &carol]));
    let (mut alice_ws, _) = connect_ready(&a, &alice, "alice on A");
    let (mut bob_ws, _) = connect_ready(&b, &bob, "bob on B");
    let (mut bob_on_a, _) = connect_ready(&a, &bob, "bob's second connection, on A");

    // A message sent through B's REST API.
    let sent = send(&b, &bob, chat_id, "sent through B's REST API");
    let frame = alice_ws.recv_until(PROMPTLY, "the event of a message sent through B", |f| is_created(f, &sent["id"]));
    let event = event_of(&frame, chat_id);
    assert_eq!(event["seq"], sent["seq"], "the event's seq is the message's seq");
    assert_eq!(event["actor_id"], json!(bob.id), "{event}");
    assert_eq!(event["message"], sent, "the event carries the message as REST returned it");

    // A `send` frame on a socket connected to B.
    bob_ws
        .send_json(&json!({ "type": "send", "chat_id": chat_id, "content": "sent on B's socket", "client_id": "b-1" }));
    let ack = bob_ws.recv_until(PROMPTLY, "the ack of bob's send frame", |f| f["type"] == "ack");
    assert_keys(&ack, &["type", "client_id", "message"], "an ack");
    assert_eq!(ack["client_id"], "b-1", "{ack}");
    assert_message_shape(&ack["message"], "the ack's message");
    assert_eq!(ack["message"]["content"], "sent on B's socket", "{ack}");
    assert_eq!(ack["message"]["sender_id"], json!(bob.id), "{ack}");
    assert_eq!(ack["message"]["chat_id"], json!(chat_id), "{ack}");
    assert_eq!(ack["message"]["client_id"], "b-1", "{ack}");
    let frame =
        alice_ws.recv_until(PROMPTLY, "the event of bob's send frame", |f| is_created(f, &ack["message"]["id"]));
    let event = event_of(&frame, chat_id);
    assert_eq!(event["seq"], ack["message"]["seq"], "{event}");
    assert_eq!(seq_of(&ack["message"]), seq_of(&sent) + 1, "the two messages are consecutive in the log");
    bob_on_a.recv_until(PROMPTLY, "the event of bob's send frame, on his other connection", |f| {
        is_created(f, &ack["message"]["id"])
    });

    // Typing on B.
    bob_ws.send_json(&json!({ "type": "typing", "chat_id": chat_id }));
    let typing = alice_ws.recv_until(PROMPTLY, "bob's typing frame", |f| f["type"] == "typing");
    assert_eq!(typing, json!({ "type": "typing", "chat_id": chat_id, "user_id": bob.id }));

    // A read marker set through B's REST API, then one sent as a frame on B.
    let resp = b.post(&format!("/api/chats/{chat_id}/read"), Some(&bob.token), json!({ "seq": sent["seq"] }));
    resp.assert_status(204, "bob marks the first message read through B");
    let read = alice_ws.recv_until(PROMPTLY, "bob's read frame from REST", |f| f["type"] == "read");
    assert_eq!(read, json!({ "type": "read", "chat_id": chat_id, "user_id": bob.id, "seq": sent["seq"] }));
    bob_ws.send_json(&json!({ "type": "read", "chat_id": chat_id, "seq": ack["message"]["seq"] }));
    let read = alice_ws.recv_until(PROMPTLY, "bob's read frame from his socket", |f| f["type"] == "read");
    assert_eq!(read, json!({ "type": "read", "chat_id": chat_id, "user_id": bob.id, "seq": ack["message"]["seq"] }));
    wait_for("bob's read marker from the frame to be stored", PROMPTLY, || {
        let chat = a.get(&format!("/api/chats/{chat_id}"), Some(&bob.token)).json();
        (chat["last_read_seq"] == ack["message"]["seq"]).then_some(())
    });

    // Presence: carol, who shares the chat, connects to B only, then leaves.
    assert!(!online(&a, &alice, &carol), "carol is not connected yet");
    let (carol_ws, _) = connect_ready(&b, &carol, "carol on B");
    let presence = alice_ws.recv_until(PROMPTLY, "carol's presence (online)", |f| {
        f["type"] == "presence" && f["user_id"] == json!(carol.id)
    });
    assert_eq!(presence, json!({ "type": "presence", "user_id": carol.id, "online": true }));
    wait_for("A to report carol online while she is connected to B", PROMPTLY, || {
        online(&a, &alice, &carol).then_some(())
    });
    carol_ws.close();
    let presence = alice_ws.recv_until(PROMPTLY, "carol's presence (offline)", |f| {
        f["type"] == "presence" && f["user_id"] == json!(carol.id)
    });
    assert_eq!(presence, json!({ "type": "presence", "user_id": carol.id, "online": false }));
    wait_for("A to report carol offline", PROMPTLY, || (!online(&a, &alice, &carol)).then_some(()));
}

#[test]
fn presence_goes_offline_only_when_the_last_connection_on_any_process_ends() {
    let a = spawn_app();
    let b = spawn_app_on(&a.db_url, &[]);
    let alice = a.create_user();
    let carol = a.create_user();
    let stranger = a.create_user();
    id_of(&create_group(&a, &alice, "Presence", &[&carol]));
    let (mut alice_ws, _) = connect_ready(&a, &alice, "alice on A");
    let (mut stranger_ws, _) = connect_ready(&a, &stranger, "a user who shares no chat with carol");
    let is_carols = |f: &Value| f["type"] == "presence" && f["user_id"] == json!(carol.id);

    let (carol_on_a, _) = connect_ready(&a, &carol, "carol on A");
    let presence = alice_ws.recv_until(PROMPTLY, "carol's presence (online)", is_carols);
    assert_eq!(presence["online"], true, "{presence}");
    let (carol_on_b, _) = connect_ready(&b, &carol, "carol on B");
    carol_on_a.close();
    alice_ws.assert_quiet(Duration::from_secs(1), "carol is still connected to B", is_carols);
    assert!(online(&a, &alice, &carol), "carol is still connected to B");

    // The last connection just drops, without a Close frame.
    drop(carol_on_b);
    let presence = alice_ws.recv_until(PROMPTLY, "carol's presence (offline)", is_carols);
    assert_eq!(presence, json!({ "type": "presence", "user_id": carol.id, "online": false }));
    wait_for("A to report carol offline", PROMPTLY, || (!online(&a, &alice, &carol)).then_some(()));
    stranger_ws.assert_quiet(Duration::from_millis(200), "presence goes only to users who share a chat", |f| {
        f["type"] == "presence"
    });
}

// ---------------------------------------------------------------------------
// Catch-up and ordering.

#[test]
fn a_client_connecting_mid_stream_misses_no_event() {
    const WRITERS: usize = 4;
    const PER_WRITER: usize = 500;
    let app = spawn_app();
    let alice = app.create_user();
    let bob = app.create_user();
    let carol = app.create_user();
    let chat_id = id_of(&create_group(&app, &alice, "Firehose", &[&bob, &carol]));
    let sent = AtomicUsize::new(0);

    let (ready, pushed, last) = thread::scope(|scope| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let (app, sent) = (&app, &sent);
                let user = if writer % 2 == 0 { &alice } else { &carol };
                scope.spawn(move || {
                    for i in 0..PER_WRITER {
                        send(app, user, chat_id, &format!("writer {writer} message {i}"));
                        sent.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        wait_for("the writers to be under way", SOON, || {
            (sent.load(Ordering::SeqCst) >= WRITERS * PER_WRITER / 5).then_some(())
        });
        let (mut ws, ready) = connect_ready(&app, &bob, "bob, connecting mid-stream");
        let reader = scope.spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(180);
            let mut pushed: Vec<Value> = Vec::new();
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let frame = ws.recv(left, "events while four writers write");
                if is_any_event_of(&frame, chat_id) {
                    let done = frame["event"]["message"]["content"] == "the last message";
                    pushed.push(event_of(&frame, chat_id));
                    if done {
                        return pushed;
                    }
                }
            }
        });
        for writer in writers {
            writer.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        }
        let last = send(&app, &alice, chat_id, "the last message");
        let pushed = reader.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (ready, pushed, last)
    });

    let n = seq_of(&last);
    let l = last_seq_in(&ready, chat_id).unwrap_or_else(|| panic!("ready does not list chat {chat_id}: {ready}"));
    assert!(l < n, "bob connected mid-stream, so ready's last_seq {l} must be below the final seq {n}");

    let pushed_seqs: Vec<i64> = pushed.iter().map(seq_of).collect();
    if let Some(pair) = pushed_seqs.windows(2).find(|pair| pair[0] >= pair[1]) {
        panic!("pushed events must come in strictly increasing seq order, but {} came before {}", pair[0], pair[1]);
    }
    // The contract's promise: subscribed before the snapshot, so nothing after last_seq is missed.
    let pushed_set: HashSet<i64> = pushed_seqs.iter().copied().collect();
    let never_pushed: Vec<i64> = (l + 1..=n).filter(|seq| !pushed_set.contains(seq)).collect();
    assert!(
        never_pushed.is_empty(),
        "{} events after ready's last_seq {l} were never pushed (first ones: {:?})",
        never_pushed.len(),
        &never_pushed[..never_pushed.len().min(20)]
    );

    // What a client does: the log up to L it already had, `/events?after=L`, and the pushed events.
    let mut by_seq: BTreeMap<i64, (Value, &str)> = BTreeMap::new();
    let mut add = |event: Value, source: &'static str| {
        let seq = seq_of(&event);
        match by_seq.get(&seq) {
            None => {
                by_seq.insert(seq, (event, source));
            }
            Some((seen, seen_source)) => {
                let same = seen["type"] == event["type"] && seen["message"]["id"] == event["message"]["id"];
                assert!(same, "seq {seq} is {seen} in {seen_source} but {event} in {source}");
            }
        }
    };
    let mut after = 0;
    'before_l: loop {
        let (page, has_more) = events_page(&app, &bob, chat_id, &format!("after={after}&limit=1000"));
        for event in page {
            after = seq_of(&event);
            if after > l {
                break 'before_l;
            }
            add(event, "/events?after=0");
        }
        if !has_more {
            break;
        }
    }
    let mut after = l;
    loop {
        let (page, has_more) = events_page(&app, &bob, chat_id, &format!("after={after}&limit=1000"));
        for event in page {
            after = seq_of(&event);
            add(event, "/events?after=L");
        }
        if !has_more {
            break;
        }
    }
    for event in pushed {
        add(event, "pushed");
    }
    let seqs: Vec<i64> = by_seq.keys().copied().collect();
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "the union must cover 1..={n} exactly");
    let n_created = by_seq.values().filter(|(event, _)| event["type"] == "message.created").count();
    assert_eq!(n_created, WRITERS * PER_WRITER + 1, "every message sent has its event");
}

#[test]
fn a_client_that_stops_reading_is_closed_with_4008_while_others_get_every_event() {
    const SENDERS: usize = 4;
    const MESSAGES: usize = 3000;
    // With WS_QUEUE=16, a reader may never be 16 frames behind, and on a loaded machine the
    // server's writer thread for carol can be descheduled for longer than 16 messages take. So the
    // senders stay at most WINDOW messages ahead of what carol has read: she can never lag, while
    // bob, who reads nothing, falls behind without bound.
    const WINDOW: usize = 6;
    let app = spawn_app_with(&[("WS_QUEUE", "16")]);
    let alice = app.create_user();
    let bob = app.create_user();
    let carol = app.create_user();
    let chat_id = id_of(&create_group(&app, &alice, "Lag", &[&bob, &carol]));
    // Bob never reads until the end: the socket buffers (megabytes on loopback) fill, then his queue.
    let (mut bob_ws, _) = connect_ready(&app, &bob, "bob, who stops reading");
    let (mut carol_ws, carol_ready) = connect_ready(&app, &carol, "carol, who keeps reading");
    let carol_from = last_seq_in(&carol_ready, chat_id).expect("carol's ready lists the chat");
    let padding = "x".repeat(2990);
    let started = AtomicUsize::new(0);
    let carol_has = AtomicUsize::new(0);

    let (carol_seqs, last_arrived, last, last_sent_at) = thread::scope(|scope| {
        let carol_has = &carol_has;
        let reader = scope.spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(300);
            let mut seqs: Vec<i64> = Vec::new();
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let frame = carol_ws.recv(left, "every event, while bob lags");
                if is_event(&frame, chat_id, "message.created") {
                    seqs.push(seq_of(&frame["event"]));
                    carol_has.fetch_add(1, Ordering::SeqCst);
                    if frame["event"]["message"]["content"] == "the last message" {
                        return (seqs, Instant::now());
                    }
                }
            }
        });
        let senders: Vec<_> = (0..SENDERS)
            .map(|sender| {
                let (app, alice, padding, started) = (&app, &alice, &padding, &started);
                scope.spawn(move || {
                    for i in (sender..MESSAGES).step_by(SENDERS) {
                        let n_started = started.fetch_add(1, Ordering::SeqCst);
                        let deadline = Instant::now() + SOON;
                        while n_started >= carol_has.load(Ordering::SeqCst) + WINDOW {
                            assert!(Instant::now() < deadline, "carol read nothing for {SOON:?}");
                            thread::sleep(Duration::from_micros(200));
                        }
                        send(app, alice, chat_id, &format!("{i:05} {padding}"));
                    }
                })
            })
            .collect();
        for sender in senders {
            sender.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        }
        let last_sent_at = Instant::now();
        let last = send(&app, &alice, chat_id, "the last message");
        let (seqs, arrived) = reader.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (seqs, arrived, last, last_sent_at)
    });

    let n = seq_of(&last);
    let delay = last_arrived.duration_since(last_sent_at);
    assert!(delay <= Duration::from_secs(5), "carol got the last message {delay:?} after it was sent");
    assert_eq!(
        carol_seqs,
        (carol_from + 1..=n).collect::<Vec<_>>(),
        "carol, reading normally, must get every message event in order"
    );

    let closed = bob_ws.expect_close(Duration::from_secs(60), "bob, who fell behind");
    assert!(closed.close_frame, "bob's connection ended without a Close frame ({closed:?})");
    assert_eq!(closed.code, Some(4008), "bob must be closed as lagging ({closed:?})");
    assert!(closed.frames_before > 0, "bob's buffered frames come before the Close frame ({closed:?})");

    // Nothing is lost on the server side: reconnecting shows the whole log.
    let (_bob_again, ready) = connect_ready(&app, &bob, "bob, reconnecting");
    assert_eq!(last_seq_in(&ready, chat_id), Some(n), "bob's new ready frame: {ready}");
}

// ---------------------------------------------------------------------------
// Handshake: tickets, tokens, origins.

#[test]
fn a_ticket_opens_exactly_one_connection() {
    let app = spawn_app();
    let alice = app.create_user();
    let before = now_unix();
    let body = create_ticket(&app, &alice);
    assert_eq!(body["ws_url"], json!(format!("ws://{}/ws", app.ws_addr)), "{body}");
    let expires = assert_utc_timestamp(&body["expires_at"], "a ticket's expires_at").unix_timestamp();
    assert!(
        (before + 55..=now_unix() + 65).contains(&expires),
        "a ticket lives 60 seconds, but expires_at is {} s from now",
        expires - now_unix()
    );
    let ticket = body["ticket"].as_str().unwrap_or_else(|| panic!("ticket is not a string: {body}"));
    assert!(!ticket.contains(&alice.token), "the ticket must not carry the token");

    let mut ws = connect(app.ws_addr, &format!("/ws?ticket={ticket}"), &[]).named("alice by ticket");
    let ready = ws.recv(SOON, "the ready frame");
    assert_ready(&ready, &alice, "alice by ticket");

    let again = try_connect(app.ws_addr, &format!("/ws?ticket={ticket}"), &[]);
    assert_refused(again, "the same ticket a second time", &[401]);
    ws.ping_pong(PROMPTLY, "the first connection still works");
}

#[test]
fn a_ticket_signed_with_the_servers_key_but_expired_is_refused_with_401() {
    let app = spawn_app();
    let alice = app.create_user();
    let session = session_id(&app, &alice);
    let key = SECRET_KEY.as_bytes();

    // Control: a ticket signed here and still valid works, so the key is the server's.
    let fresh = messaging::auth::sign_ticket(key, session, now_unix() + 60);
    let result = try_connect(app.ws_addr, &format!("/ws?ticket={fresh}"), &[]);
    let mut ws = result.unwrap_or_else(|refused| {
        panic!("a valid self-signed ticket was refused ({refused:?}); is SECRET_KEY here still support/app.rs's?")
    });
    assert_ready(&ws.recv(SOON, "the ready frame"), &alice, "alice by a self-signed ticket");

    let expired = messaging::auth::sign_ticket(key, session, now_unix() - 5);
    let result = try_connect(app.ws_addr, &format!("/ws?ticket={expired}"), &[]);
    assert_refused(result, "an expired ticket", &[401]);

    let forged = messaging::auth::sign_ticket(b"another key, 32 characters or more!!", session, now_unix() + 60);
    let result = try_connect(app.ws_addr, &format!("/ws?ticket={forged}"), &[]);
    assert_refused(result, "a ticket signed with another key", &[401]);

    // Someone else's session id under a valid ticket's signature.
    let valid = messaging::auth::sign_ticket(key, session, now_unix() + 60);
    let (_, rest) = valid.split_once('.').expect("a ticket has dots");
    let tampered = format!("{}.{rest}", session.0 + 1);
    let result = try_connect(app.ws_addr, &format!("/ws?ticket={tampered}"), &[]);
    assert_refused(result, "a ticket whose session id was changed", &[401]);
}

#[test]
fn a_ticket_of_a_session_that_logged_out_is_refused_with_401() {
    let app = spawn_app();
    let alice = app.create_user();
    let ticket = create_ticket(&app, &alice)["ticket"].as_str().expect("a ticket string").to_string();
    app.delete("/api/sessions/current", Some(&alice.token)).assert_status(204, "alice logs out");
    let result = try_connect(app.ws_addr, &format!("/ws?ticket={ticket}"), &[]);
    assert_refused(result, "a ticket of a revoked session", &[401]);
}

#[test]
fn a_missing_or_bad_credential_is_refused_with_401() {
    let app = spawn_app();
    let alice = app.create_user();
    let gone = app.create_user();
    app.delete("/api/sessions/current", Some(&gone.token)).assert_status(204, "a user logs out");
    let token_in_url = format!("/ws?ticket={}", alice.token);
    // (description, path, Authorization header)
    let cases: Vec<(&str, &str, Option<String>)> = vec![
        ("no credential at all", "/ws", None),
        ("an unknown bearer token", "/ws", Some(bearer("not-a-real-token"))),
        ("a logged-out token", "/ws", Some(bearer(&gone.token))),
        ("the Basic scheme", "/ws", Some(format!("Basic {}", alice.token))),
        ("a bare token without a scheme", "/ws", Some(alice.token.clone())),
        ("a garbage ticket", "/ws?ticket=garbage", None),
        ("an empty ticket", "/ws?ticket=", None),
        ("a bearer token passed as a ticket", &token_in_url, None),
    ];
    for (description, path, authorization) in cases {
        let headers: Vec<(&str, &str)> = authorization.iter().map(|value| ("Authorization", value.as_str())).collect();
        let result = try_connect(app.ws_addr, path, &headers);
        assert_refused(result, description, &[401]);
    }
}

#[test]
fn an_origin_outside_ws_allowed_origins_is_refused_with_403() {
    let app = spawn_app_with(&[("WS_ALLOWED_ORIGINS", "https://good.example")]);
    let alice = app.create_user();
    let auth = bearer(&alice.token);

    let result = try_connect(app.ws_addr, "/ws", &[("Authorization", &auth), ("Origin", "https://evil.example")]);
    assert_refused(result, "a bearer handshake from https://evil.example", &[403]);
    let ticket = create_ticket(&app, &alice)["ticket"].as_str().expect("a ticket string").to_string();
    let result = try_connect(app.ws_addr, &format!("/ws?ticket={ticket}"), &[("Origin", "https://evil.example")]);
    assert_refused(result, "a ticket handshake from https://evil.example", &[403]);

    let mut ws = connect(app.ws_addr, "/ws", &[("Authorization", &auth), ("Origin", "https://good.example")])
        .named("alice from https://good.example");
    assert_ready(&ws.recv(SOON, "the ready frame"), &alice, "alice from the allowed origin");
}

// ---------------------------------------------------------------------------
// Membership changes while connected.

#[test]
fn a_removed_member_gets_its_removal_and_nothing_after_it() {
    let app = spawn_app();
    let alice = app.create_user();
    let bob = app.create_user();
    let carol = app.create_user();
    let chat_id = id_of(&create_group(&app, &alice, "Shrinking", &[&bob, &carol]));
    let (mut alice_ws, _) = connect_ready(&app, &alice, "alice, the owner");
    let (mut bob_ws, _) = connect_ready(&app, &bob, "bob, who is removed");
    let (mut carol_ws, _) = connect_ready(&app, &carol, "carol, who stays");

    let resp = app.delete(&format!("/api/chats/{chat_id}/members/{}", bob.id), Some(&alice.token));
    resp.assert_status(204, "alice removes bob");
    let frame =
        bob_ws.recv_until(PROMPTLY, "bob's own member.removed event", |f| is_event(f, chat_id, "member.removed"));
    let removal = event_of(&frame, chat_id);
    assert_eq!(removal["member"]["id"], json!(bob.id), "{removal}");

    let mut last = Value::Null;
    for i in 0..3 {
        last = send(&app, &alice, chat_id, &format!("after bob left {i}"));
    }
    alice_ws.send_json(&json!({ "type": "typing", "chat_id": chat_id }));
    carol_ws.recv_until(PROMPTLY, "the last message, for carol", |f| is_created(f, &last["id"]));
    carol_ws.recv_until(PROMPTLY, "alice's typing, for carol", |f| f["type"] == "typing");
    bob_ws.assert_quiet(Duration::from_secs(1), "bob, no longer a member, must hear nothing of the chat", |f| {
        f["chat_id"] == json!(chat_id) || is_any_event_of(f, chat_id)
    });
    bob_ws.ping_pong(PROMPTLY, "bob's connection itself stays open");
}

#[test]
fn a_member_added_while_connected_gets_its_addition_and_every_later_message() {
    let app = spawn_app();
    let alice = app.create_user();
    let carol = app.create_user();
    let dave = app.create_user();
    let chat_id = id_of(&create_group(&app, &alice, "Growing", &[&carol]));
    let (mut dave_ws, ready) = connect_ready(&app, &dave, "dave, added later");
    assert_eq!(last_seq_in(&ready, chat_id), None, "dave is not a member yet: {ready}");

    let resp = app.post(&format!("/api/chats/{chat_id}/members"), Some(&alice.token), json!({ "user_id": dave.id }));
    resp.assert_status(200, "alice adds dave");
    let frame = dave_ws.recv_until(PROMPTLY, "dave's own member.added event", |f| is_event(f, chat_id, "member.added"));
    let added = event_of(&frame, chat_id);
    assert_eq!(added["member"]["id"], json!(dave.id), "{added}");

    let sent: Vec<Value> = (0..3).map(|i| send(&app, &alice, chat_id, &format!("welcome {i}"))).collect();
    for (i, message) in sent.iter().enumerate() {
        let frame =
            dave_ws.recv_until(PROMPTLY, &format!("message {i} after joining"), |f| is_any_event_of(f, chat_id));
        let event = event_of(&frame, chat_id);
        assert_eq!(event["type"], "message.created", "the next event of the chat: {event}");
        assert_eq!(event["message"]["id"], message["id"], "message {i} after joining, in order: {event}");
        assert_eq!(seq_of(&event), seq_of(&added) + 1 + i as i64, "no gap after member.added: {event}");
    }
}

// ---------------------------------------------------------------------------
// Bad frames.

#[test]
fn a_bad_frame_gets_an_error_frame_and_the_connection_stays_open() {
    let app = spawn_app();
    let alice = app.create_user();
    let bob = app.create_user();
    let carol = app.create_user();
    let own = id_of(&create_group(&app, &alice, "Mine", &[]));
    let others = id_of(&create_group(&app, &bob, "Not alice's", &[&carol]));
    let (mut ws, _) = connect_ready(&app, &alice, "alice");
    let too_long = "y".repeat(4001);

    let cases: Vec<(&str, String, &str, Option<&str>)> = vec![
        ("text that is not JSON", "this is not json".into(), "invalid_request", None),
        ("a JSON array", "[1, 2]".into(), "invalid_request", None),
        ("no type", json!({ "chat_id": own }).to_string(), "invalid_request", None),
        ("an unknown type", json!({ "type": "dance" }).to_string(), "invalid_request", None),
        (
            "send with a string chat_id",
            json!({ "type": "send", "chat_id": "abc", "content": "hi" }).to_string(),
            "invalid_request",
            None,
        ),
        ("send without content", json!({ "type": "send", "chat_id": own }).to_string(), "invalid_request", None),
        (
            "send with 4001 characters",
            json!({ "type": "send", "chat_id": own, "content": too_long, "client_id": "long-1" }).to_string(),
            "invalid_request",
            Some("long-1"),
        ),
        (
            "send to a chat alice is not in",
            json!({ "type": "send", "chat_id": others, "content": "hi", "client_id": "lost-1" }).to_string(),
            "not_found",
            Some("lost-1"),
        ),
        (
            "send to a chat that does not exist",
            json!({ "type": "send", "chat_id": NO_SUCH_CHAT, "content": "hi", "client_id": "lost-2" }).to_string(),
            "not_found",
            Some("lost-2"),
        ),
        (
            "typing in a chat alice is not in",
            json!({ "type": "typing", "chat_id": others }).to_string(),
            "not_found",
            None,
        ),
        (
            "read in a chat alice is not in",
            json!({ "type": "read", "chat_id": others, "seq": 1 }).to_string(),
            "not_found",
            None,
        ),
    ];
    for (description, text, code, client_id) in cases {
        if let Err(e) = ws.send(Message::text(text)) {
            panic!("{description}: sending failed: {e}");
        }
        let error = ws.recv(PROMPTLY, &format!("the error frame for {description}"));
        let mut keys = vec!["type", "code", "message"];
        if client_id.is_some() || !error["client_id"].is_null() {
            keys.push("client_id");
        }
        // Like the HTTP error shape, an error frame may name the field at fault.
        if let Some(field) = error.get("field") {
            assert!(field.is_string(), "{description}: field is not a string: {error}");
            keys.push("field");
        }
        assert_keys(&error, &keys, description);
        assert_eq!(error["type"], "error", "{description}: {error}");
        assert_eq!(error["code"], code, "{description}: {error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.trim().is_empty()), "{description}: {error}");
        assert_eq!(error["client_id"], json!(client_id), "{description}: the client_id is echoed: {error}");
        ws.ping_pong(PROMPTLY, &format!("after {description}"));
    }

    let (messages, _) = history(&app, &bob, others, "");
    assert!(messages.is_empty(), "nothing reached the chat alice is not in: {messages:?}");
    ws.send_json(&json!({ "type": "send", "chat_id": own, "content": "still here", "client_id": "ok-1" }));
    let ack = ws.recv_until(PROMPTLY, "the ack after the bad frames", |f| f["type"] == "ack");
    assert_eq!(ack["message"]["content"], "still here", "{ack}");
}

#[test]
fn a_binary_frame_closes_the_connection_with_1003() {
    let app = spawn_app();
    let alice = app.create_user();
    let (mut ws, _) = connect_ready(&app, &alice, "alice");
    ws.send(Message::binary(vec![0x7b, 0x7d])).expect("send a binary frame");
    let closed = ws.expect_close(PROMPTLY, "after a binary frame");
    assert!(closed.close_frame && closed.code == Some(1003), "expected a Close frame with 1003, got {closed:?}");
}

#[test]
fn a_text_frame_of_invalid_utf8_closes_the_connection_with_1007() {
    let app = spawn_app();
    let alice = app.create_user();
    let (mut ws, _) = connect_ready(&app, &alice, "alice");

    let bytes = b"{\"type\": \"ping\", \"x\": \"\xff\xfe\"}".to_vec();
    let _ = ws.send(Message::Frame(Frame::message(bytes, OpCode::Data(OpData::Text), true)));

    let closed = ws.expect_close(SOON, "after a text frame of invalid UTF-8");
    assert!(closed.close_frame && closed.code == Some(1007), "expected a Close frame with 1007, got {closed:?}");
}

#[test]
fn a_frame_with_a_key_given_twice_is_refused_with_invalid_request() {
    let app = spawn_app();
    let alice = app.create_user();
    let chat_id = id_of(&create_group(&app, &alice, "Twice", &[]));
    let (mut ws, _) = connect_ready(&app, &alice, "alice");

    let frame = format!(r#"{{"type": "send", "chat_id": {chat_id}, "content": "seen", "content": "stored"}}"#);
    ws.send(Message::text(frame)).expect("send the frame");

    let error = ws.recv_until(SOON, "the answer to the frame", |f| f["type"] != "event");
    assert_eq!((&error["type"], &error["code"]), (&json!("error"), &json!("invalid_request")), "{error}");
    assert!(error.get("field").is_none(), "no one field is at fault: {error}");
    ws.ping_pong(SOON, "the connection stays open");
    let (messages, _) = history(&app, &alice, chat_id, "");
    assert!(messages.is_empty(), "nothing was stored: {messages:?}");
}

#[test]
fn a_text_message_over_64_kib_closes_the_connection_with_1009() {
    let app = spawn_app();
    let alice = app.create_user();
    let chat_id = id_of(&create_group(&app, &alice, "Big", &[]));

    // One frame of 65 KiB: a `send` frame, so only its size is wrong.
    let (mut ws, _) = connect_ready(&app, &alice, "alice, one big frame");
    let frame = json!({ "type": "send", "chat_id": chat_id, "content": "z".repeat(65 * 1024) }).to_string();
    // The server may close before reading it all; the Close frame is what matters.
    let _ = ws.send(Message::text(frame));
    let closed = ws.expect_close(SOON, "after a 65 KiB text frame");
    assert!(closed.close_frame && closed.code == Some(1009), "expected a Close frame with 1009, got {closed:?}");

    // Two frames of 40 KiB each: each frame is small, the message is not.
    let (mut ws, _) = connect_ready(&app, &alice, "alice, one big message in two frames");
    let half = "w".repeat(40 * 1024);
    let _ = ws.send(Message::Frame(Frame::message(half.clone().into_bytes(), OpCode::Data(OpData::Text), false)));
    let _ = ws.send(Message::Frame(Frame::message(half.into_bytes(), OpCode::Data(OpData::Continue), true)));
    let closed = ws.expect_close(SOON, "after an 80 KiB message in two frames");
    assert!(closed.close_frame && closed.code == Some(1009), "expected a Close frame with 1009, got {closed:?}");

    let (messages, _) = history(&app, &alice, chat_id, "");
    assert!(messages.is_empty(), "nothing was stored: {messages:?}");
}

// ---------------------------------------------------------------------------
// The seed's socket (contract section 8).

#[test]
fn seed_sockets_store_content_frames_and_receive_every_new_message_of_their_chat() {
    let app = spawn_app();
    let alice = app.create_user();
    let bob = app.create_user();
    let chat_id = id_of(&create_group(&app, &alice, "Seed", &[&bob]));
    let path = format!("/ws?chat_id={chat_id}");
    let mut alice_seed =
        connect(app.ws_addr, &path, &[("Authorization", &bearer(&alice.token))]).named("alice's seed socket");
    let mut bob_seed =
        connect(app.ws_addr, &path, &[("Authorization", &bearer(&bob.token))]).named("bob's seed socket");
    let (mut bob_ws, _) = connect_ready(&app, &bob, "bob's /ws socket");

    alice_seed.send_json(&json!({ "content": "hello from the seed" }));
    let expected = json!({ "content": "hello from the seed", "chat_id": chat_id });
    // The first frame on a seed socket is the message: there is no ready frame there.
    assert_eq!(alice_seed.recv(PROMPTLY, "alice's own seed message"), expected);
    assert_eq!(bob_seed.recv(PROMPTLY, "alice's seed message, for bob"), expected);

    let (messages, _) = history(&app, &bob, chat_id, "");
    let stored = messages
        .iter()
        .find(|m| m["content"] == "hello from the seed")
        .unwrap_or_else(|| panic!("the seed frame was not stored as a message: {messages:?}"));
    assert_eq!(stored["sender_id"], json!(alice.id), "{stored}");
    let frame = bob_ws.recv_until(PROMPTLY, "the event of the seed message", |f| is_created(f, &stored["id"]));
    event_of(&frame, chat_id);

    // A message from the REST API reaches the seed sockets too.
    send(&app, &bob, chat_id, "hello from REST");
    let expected = json!({ "content": "hello from REST", "chat_id": chat_id });
    assert_eq!(alice_seed.recv(PROMPTLY, "bob's REST message, on alice's seed socket"), expected);
    assert_eq!(bob_seed.recv(PROMPTLY, "bob's REST message, on his seed socket"), expected);
}

#[test]
fn a_seed_socket_for_a_chat_the_user_is_not_in_is_not_upgraded() {
    let app = spawn_app();
    let alice = app.create_user();
    let outsider = app.create_user();
    let chat_id = id_of(&create_group(&app, &alice, "Private", &[]));
    let cases = [
        ("an outsider's seed socket", format!("/ws?chat_id={chat_id}"), Some(bearer(&outsider.token))),
        (
            "a seed socket for a chat that does not exist",
            format!("/ws?chat_id={NO_SUCH_CHAT}"),
            Some(bearer(&alice.token)),
        ),
        ("a seed socket without a credential", format!("/ws?chat_id={chat_id}"), None),
    ];
    for (description, path, authorization) in cases {
        let headers: Vec<(&str, &str)> = authorization.iter().map(|value| ("Authorization", value.as_str())).collect();
        assert_refused(try_connect(app.ws_addr, &path, &headers), description, &[401, 403, 404]);
    }
}

// ---------------------------------------------------------------------------
// A database restart.

#[test]
fn after_the_database_comes_back_every_client_is_told_to_catch_up_with_4008() {
    let cluster = PrivateCluster::start();
    let app = spawn_app_on(cluster.url(), &[]);
    let alice = app.create_user();
    let bob = app.create_user();
    let chat_id = id_of(&create_group(&app, &alice, "Outage", &[&bob]));
    let (mut ws, _) = connect_ready(&app, &bob, "bob, connected through the outage");

    cluster.stop();
    // The outage itself, not a wait for a condition.
    thread::sleep(Duration::from_secs(3));
    cluster.start_again();

    let closed = ws.expect_close(Duration::from_secs(15), "bob, after the database came back");
    assert!(closed.close_frame && closed.code == Some(4008), "expected a Close frame with 4008, got {closed:?}");

    // Each of the server's database connections finds out about the restart on its next use, and
    // that use fails (db.rs: "the request that found it gets 503"), so the first few handshakes may
    // be refused with 503 or closed with 1011 before `ready`; a client retries, and so does this test.
    let (mut ws, ready) = wait_for("a new connection with a ready frame", Duration::from_secs(15), || {
        let mut ws = try_connect(app.ws_addr, "/ws", &[("Authorization", &bearer(&bob.token))]).ok()?;
        match ws.next(SOON) {
            Incoming::Text(text) => Some((ws.named("bob, reconnected"), serde_json::from_str::<Value>(&text).ok()?)),
            _ => None,
        }
    });
    assert_ready(&ready, &bob, "bob, reconnected");
    let message = wait_for("a message to be accepted after the restart", Duration::from_secs(15), || {
        let resp = post_message(&app, &alice, chat_id, json!({ "content": "after the outage" }));
        (resp.status == 201).then(|| resp.json())
    });
    ws.recv_until(PROMPTLY, "the message sent after the restart", |f| is_created(f, &message["id"]));
}

// ---------------------------------------------------------------------------
// Logout.

#[test]
fn logging_out_closes_that_tokens_sockets_on_every_process_and_no_other() {
    let a = spawn_app();
    let b = spawn_app_on(&a.db_url, &[]);
    let alice = a.create_user();
    let other_token = a.login_token(&alice.username, &alice.password);
    let other_session = TestUser { token: other_token, ..alice.clone() };
    let (mut on_a, _) = connect_ready(&a, &alice, "alice's token on A");
    let (mut on_b, _) = connect_ready(&b, &alice, "alice's token on B");
    let (mut other_ws, _) = connect_ready(&b, &other_session, "alice's other session on B");

    a.delete("/api/sessions/current", Some(&alice.token)).assert_status(204, "alice logs out on A");
    let deadline = Instant::now() + PROMPTLY;
    assert_logged_out(&mut on_a, deadline, "the logged-out token's socket on A");
    assert_logged_out(&mut on_b, deadline, "the logged-out token's socket on B");
    other_ws.ping_pong(PROMPTLY, "the other session's socket stays open");

    let result = try_connect(a.ws_addr, "/ws", &[("Authorization", &bearer(&alice.token))]);
    assert_refused(result, "the logged-out token", &[401]);
}

#[test]
fn logging_out_everywhere_closes_every_socket_of_the_user() {
    let a = spawn_app();
    let b = spawn_app_on(&a.db_url, &[]);
    let alice = a.create_user();
    let bob = a.create_user();
    let second = TestUser { token: a.login_token(&alice.username, &alice.password), ..alice.clone() };
    let (mut first_ws, _) = connect_ready(&a, &alice, "alice's first session on A");
    let (mut second_ws, _) = connect_ready(&b, &second, "alice's second session on B");
    let (mut bob_ws, _) = connect_ready(&b, &bob, "bob on B");

    b.delete("/api/sessions", Some(&second.token)).assert_status(204, "alice logs out everywhere, through B");
    let deadline = Instant::now() + PROMPTLY;
    assert_logged_out(&mut second_ws, deadline, "alice's second session on B");
    assert_logged_out(&mut first_ws, deadline, "alice's first session on A");
    bob_ws.ping_pong(PROMPTLY, "another user's socket stays open");
}

#[test]
fn a_socket_whose_session_expires_is_closed_by_the_periodic_session_check() {
    let app = spawn_app_with(&[("TOKEN_TTL_SECS", "2")]);
    let alice = app.create_user();
    let (mut ws, _) = connect_ready(&app, &alice, "alice, whose token lives 2 s");

    // The hub checks sessions every 30 s; the token expired long before that.
    let deadline = Instant::now() + Duration::from_secs(45);
    assert_logged_out(&mut ws, deadline, "the expired session's socket");
}

#[test]
fn connections_past_ws_max_connections_are_closed_at_once() {
    let app = spawn_app_with(&[("WS_MAX_CONNECTIONS", "2")]);
    let alice = app.create_user();
    let (first, _) = connect_ready(&app, &alice, "the first connection");
    let (_second, _) = connect_ready(&app, &alice, "the second connection");

    let third = try_connect(app.ws_addr, "/ws", &[("Authorization", &bearer(&alice.token))]);
    assert!(third.is_err(), "a third connection is refused while two are open");

    first.close();
    wait_for("a place to free up", SOON, || {
        try_connect(app.ws_addr, "/ws", &[("Authorization", &bearer(&alice.token))]).ok()
    });
}

#[test]
fn a_burst_of_typing_frames_reaches_the_others_thinned_out() {
    let app = spawn_app();
    let alice = app.create_user();
    let bob = app.create_user();
    let chat_id = id_of(&create_group(&app, &alice, "Typing", &[&bob]));
    let (mut alice_ws, _) = connect_ready(&app, &alice, "alice");
    let (mut bob_ws, _) = connect_ready(&app, &bob, "bob");
    alice_ws.recv_until(SOON, "bob's presence", |f| f["type"] == "presence");

    for _ in 0..20 {
        bob_ws.send_json(&json!({ "type": "typing", "chat_id": chat_id }));
    }
    bob_ws.ping_pong(SOON, "bob's frames were all read");

    let mut typing = 0;
    while let Incoming::Text(text) = alice_ws.next(Duration::from_millis(700)) {
        let frame: Value = serde_json::from_str(&text).unwrap();
        if frame["type"] == "typing" {
            assert_eq!(frame, json!({ "type": "typing", "chat_id": chat_id, "user_id": bob.id }));
            typing += 1;
        }
    }
    assert!((1..20).contains(&typing), "some of bob's 20 typing frames reach alice, not all: {typing}");
}

#[test]
fn stopping_the_server_closes_every_socket_with_1001() {
    let app = spawn_app();
    let alice = app.create_user();
    let (mut ws, _) = connect_ready(&app, &alice, "alice");

    drop(app);

    let closed = ws.expect_close(SOON, "the server stopping");
    assert_eq!(closed.code, Some(1001), "closed with 1001 (going away)");
}
