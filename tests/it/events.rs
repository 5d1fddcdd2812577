//! The chat event log (contract section 5): every change is one event
//! numbered 1, 2, 3, … per chat, readable with `/events?after=&limit=`, and
//! a reader polling with `after` during heavy concurrent writing sees every
//! event exactly once, in order, with no gap.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::chats::{create_group, get_chat, id_of, NO_SUCH_CHAT};
use crate::messages::{assert_message_shape, page_back, send};
use crate::support::{assert_keys, assert_utc_timestamp, check_error, spawn_app, spawn_app_with, TestApp, TestUser};

/// The payload key each event type carries.
fn payload_key(kind: &str) -> &'static str {
    match kind {
        "message.created" | "message.updated" | "message.deleted" => "message",
        "member.added" | "member.removed" => "member",
        "chat.created" | "chat.updated" => "chat",
        "reaction.added" | "reaction.removed" => "reaction",
        other => panic!("unknown event type {other:?}"),
    }
}

/// Asserts the Event shape: exact keys for its type, and the payload's shape.
pub fn assert_event_shape(event: &Value, chat_id: i64) {
    let kind = event["type"].as_str().unwrap_or_else(|| panic!("event without a type: {event}"));
    let payload = payload_key(kind);
    assert_keys(event, &["chat_id", "seq", "type", "created_at", "actor_id", payload], kind);
    assert_eq!(event["chat_id"], json!(chat_id), "{event}");
    assert!(event["seq"].as_i64().is_some_and(|n| n > 0), "seq: {event}");
    assert!(event["actor_id"].as_i64().is_some_and(|n| n > 0), "actor_id: {event}");
    assert_utc_timestamp(&event["created_at"], &format!("{kind}: created_at"));
    match payload {
        "message" => {
            assert_message_shape(&event["message"], kind);
            assert_eq!(event["message"]["chat_id"], json!(chat_id), "{event}");
        }
        "chat" => {
            assert_keys(&event["chat"], &["id", "is_group", "title"], kind);
            assert_eq!(event["chat"]["id"], json!(chat_id), "{event}");
        }
        "reaction" => {
            assert_keys(&event["reaction"], &["message_id", "emoji", "user_id"], kind);
            assert!(event["reaction"]["message_id"].as_i64().is_some_and(|n| n > 0), "message_id: {event}");
            assert!(event["reaction"]["emoji"].is_string(), "emoji: {event}");
            assert_eq!(event["reaction"]["user_id"], event["actor_id"], "the reacting user acts: {event}");
        }
        _ => {
            assert!(event["member"]["id"].as_i64().is_some_and(|n| n > 0), "member id: {event}");
        }
    }
}

/// One page of `/events` for `query`, asserting `200` and the page's shape.
pub fn events_page(app: &TestApp, user: &TestUser, chat_id: i64, query: &str) -> (Vec<Value>, bool) {
    let resp = app.get(&format!("/api/chats/{chat_id}/events?{query}"), Some(&user.token));
    resp.assert_status(200, &format!("events of chat {chat_id} with {query:?}"));
    let body = resp.json();
    assert_keys(&body, &["events", "has_more"], "an events page");
    let has_more = body["has_more"].as_bool().unwrap_or_else(|| panic!("has_more: {body}"));
    let events = body["events"].as_array().unwrap_or_else(|| panic!("events: {body}")).clone();
    for event in &events {
        assert_event_shape(event, chat_id);
    }
    (events, has_more)
}

/// The chat's whole log, asserting it is numbered 1..N without a gap.
pub fn all_events(app: &TestApp, user: &TestUser, chat_id: i64) -> Vec<Value> {
    let mut events: Vec<Value> = Vec::new();
    loop {
        let after = events.len();
        let (page, has_more) = events_page(app, user, chat_id, &format!("after={after}&limit=1000"));
        for event in page.iter() {
            assert_eq!(event["seq"], json!(events.len() + 1), "the log must be 1, 2, 3, …: {event}");
            events.push(event.clone());
        }
        if !has_more {
            return events;
        }
        assert!(!page.is_empty(), "an empty page after {after} claims has_more");
    }
}

/// The seqs of `events`.
fn seqs(events: &[Value]) -> Vec<i64> {
    events.iter().map(|e| e["seq"].as_i64().unwrap()).collect()
}

#[test]
fn every_change_to_a_chat_is_one_event_numbered_from_1_in_order() {
    let app = spawn_app();
    let (alice, bob, carol) = (app.create_user(), app.create_user(), app.create_user());
    let chat_id = id_of(&create_group(&app, &alice, "Plans", &[&bob]));
    let opening = all_events(&app, &alice, chat_id);
    assert!(!opening.is_empty(), "creating a chat is an event");
    assert_eq!(opening[0]["type"], json!("chat.created"), "the log opens with chat.created: {opening:?}");
    assert_eq!(opening[0]["chat"], json!({ "id": chat_id, "is_group": true, "title": "Plans" }));
    for event in &opening {
        assert_eq!(event["actor_id"], json!(alice.id), "alice did all of it: {event}");
    }
    for event in &opening[1..] {
        assert_eq!(event["type"], json!("member.added"), "then only members join: {opening:?}");
    }
    let joined: HashSet<i64> = opening[1..].iter().map(|e| e["member"]["id"].as_i64().unwrap()).collect();
    assert!(joined.contains(&bob.id), "bob's member.added is in the log: {opening:?}");
    assert!(joined.iter().all(|id| *id == alice.id || *id == bob.id), "{opening:?}");

    let add = app.post(&format!("/api/chats/{chat_id}/members"), Some(&alice.token), json!({ "user_id": carol.id }));
    add.assert_status(200, "adding carol");
    let message = send(&app, &bob, chat_id, "hi");
    let message_path = format!("/api/chats/{chat_id}/messages/{}", id_of(&message));
    let edited = app.patch(&message_path, Some(&bob.token), json!({ "content": "hi all" }));
    edited.assert_status(200, "editing");
    app.delete(&message_path, Some(&bob.token)).assert_status(204, "deleting");
    app.delete(&format!("/api/chats/{chat_id}/members/{}", carol.id), Some(&alice.token))
        .assert_status(204, "removing carol");
    app.patch(&format!("/api/chats/{chat_id}"), Some(&alice.token), json!({ "title": "Plans B" }))
        .assert_status(200, "renaming");
    app.delete(&format!("/api/chats/{chat_id}/members/{}", bob.id), Some(&bob.token)).assert_status(204, "bob leaves");

    let events = all_events(&app, &alice, chat_id);
    let chat = get_chat(&app, &alice, chat_id);
    assert_eq!(chat["last_seq"], json!(events.len()), "last_seq is the last event's seq");
    let tail = &events[opening.len()..];
    let expected: Vec<(&str, i64)> = vec![
        ("member.added", alice.id),
        ("message.created", bob.id),
        ("message.updated", bob.id),
        ("message.deleted", bob.id),
        ("member.removed", alice.id),
        ("chat.updated", alice.id),
        ("member.removed", bob.id),
    ];
    let got: Vec<(&str, i64)> =
        tail.iter().map(|e| (e["type"].as_str().unwrap(), e["actor_id"].as_i64().unwrap())).collect();
    assert_eq!(got, expected, "the changes after creation, in order, with their actors");
    assert_eq!(tail[0]["member"]["id"], json!(carol.id));
    assert_eq!(tail[0]["member"]["username"], json!(carol.username));
    assert_eq!(tail[1]["seq"], message["seq"], "a message's seq is its message.created seq");
    // The payload is the message's current state, so deleted text never lingers in the log.
    let (page, _) = crate::messages::history(&app, &alice, chat_id, "");
    assert_eq!(page.len(), 1, "{page:?}");
    let tombstone = &page[0];
    assert_eq!(tombstone["id"], message["id"]);
    assert_eq!(tombstone["deleted"], json!(true), "{tombstone}");
    assert_eq!(tombstone["content"], json!(""), "{tombstone}");
    for (kind, event) in ["message.created", "message.updated", "message.deleted"].iter().zip(&tail[1..4]) {
        assert_eq!(&event["message"], tombstone, "{kind} carries the message's current state");
    }
    assert_eq!(tail[4]["member"]["id"], json!(carol.id));
    assert_eq!(tail[5]["chat"], json!({ "id": chat_id, "is_group": true, "title": "Plans B" }));
    assert_eq!(tail[6]["member"]["id"], json!(bob.id));
    let times: Vec<time::OffsetDateTime> =
        events.iter().map(|e| assert_utc_timestamp(&e["created_at"], "created_at")).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "created_at never goes back: {events:?}");
}

#[test]
fn events_page_with_after_and_limit() {
    let app = spawn_app();
    let alice = app.create_user();
    let chat_id = id_of(&create_group(&app, &alice, "Paged", &[]));
    for i in 0..110 {
        send(&app, &alice, chat_id, &format!("m{i}"));
    }
    let n = get_chat(&app, &alice, chat_id)["last_seq"].as_i64().unwrap();
    assert!(n > 110, "{n} events");
    let cases: Vec<(&str, String, std::ops::RangeInclusive<i64>, bool)> = vec![
        ("the default limit", "after=0".to_string(), 1..=100, true),
        ("the first five", "after=0&limit=5".to_string(), 1..=5, true),
        ("the next five", "after=5&limit=5".to_string(), 6..=10, true),
        ("the last two", format!("after={}&limit=5", n - 2), n - 1..=n, false),
        ("exactly the last", format!("after={}&limit=1", n - 1), n..=n, false),
        ("everything", "after=0&limit=1000".to_string(), 1..=n, false),
        ("nothing after the last", format!("after={n}"), n + 1..=n, false),
        ("nothing after the future", format!("after={}", n + 50), n + 1..=n, false),
    ];

    for (description, query, range, more) in cases {
        let (page, has_more) = events_page(&app, &alice, chat_id, &query);
        assert_eq!(seqs(&page), range.collect::<Vec<i64>>(), "{description} ({query})");
        assert_eq!(has_more, more, "{description} ({query}): has_more");
    }
}

#[test]
fn events_query_parameters_are_checked() {
    let app = spawn_app();
    let alice = app.create_user();
    let chat_id = id_of(&create_group(&app, &alice, "Checked", &[]));

    for (query, field) in [
        ("after=0&limit=1001", "limit"),
        ("after=0&limit=0", "limit"),
        ("after=0&limit=abc", "limit"),
        ("after=0&limit=-1", "limit"),
        ("after=-1", "after"),
        ("after=abc", "after"),
        ("after=1.5", "after"),
    ] {
        let resp = app.get(&format!("/api/chats/{chat_id}/events?{query}"), Some(&alice.token));
        assert_eq!(resp.status, 400, "{query}: expected 400:\n{}", resp.describe());
        check_error(&resp, 400, "invalid_request", Some(field));
    }
    events_page(&app, &alice, chat_id, "after=0&limit=1000");
    events_page(&app, &alice, chat_id, "after=0&limit=1");
}

#[test]
fn someone_elses_chat_has_no_events_to_read() {
    let app = spawn_app();
    let (alice, bob, mallory) = (app.create_user(), app.create_user(), app.create_user());
    let chat_id = id_of(&create_group(&app, &alice, "Closed", &[&bob]));
    send(&app, &alice, chat_id, "secret");
    app.delete(&format!("/api/chats/{chat_id}/members/{}", bob.id), Some(&alice.token))
        .assert_status(204, "removing bob");

    for outsider in [&mallory, &bob] {
        let theirs = app.get(&format!("/api/chats/{chat_id}/events?after=0"), Some(&outsider.token));
        let missing = app.get(&format!("/api/chats/{NO_SUCH_CHAT}/events?after=0"), Some(&outsider.token));
        check_error(&theirs, 404, "not_found", None);
        check_error(&missing, 404, "not_found", None);
        assert_eq!(theirs.json(), missing.json(), "{}: the chat is indistinguishable from none", outsider.username);
    }
}

/// Sets the flag when dropped during a panic, so the other threads stop waiting.
struct AbortOnPanic<'a>(&'a AtomicBool);

impl Drop for AbortOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

#[test]
fn a_reader_polling_during_1600_concurrent_sends_sees_every_event_once_in_order() {
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 200;
    let app = spawn_app_with(&[("WORKERS", "8")]);
    let owner = app.create_user();
    let writers: Vec<TestUser> = (0..WRITERS).map(|_| app.create_user()).collect();
    let reader = app.create_user();
    let members: Vec<&TestUser> = writers.iter().chain([&reader]).collect();
    let chat_id = id_of(&create_group(&app, &owner, "Busy", &members));
    let before = get_chat(&app, &owner, chat_id)["last_seq"].as_i64().unwrap();
    let n = before + (WRITERS * PER_WRITER) as i64;
    let deadline = Instant::now() + Duration::from_secs(300);
    let aborted = AtomicBool::new(false);

    let (sent, (seen, polls)) = std::thread::scope(|scope| {
        let reader_thread = scope.spawn(|| {
            let _guard = AbortOnPanic(&aborted);
            let mut seen: Vec<Value> = Vec::new();
            let mut last = 0i64;
            let mut polls = 0usize;
            while last < n {
                if aborted.load(Ordering::SeqCst) {
                    panic!("a writer failed; the reader stops at {last} of {n}");
                }
                assert!(Instant::now() < deadline, "the reader saw only up to {last} of {n}");
                let (page, has_more) = events_page(&app, &reader, chat_id, &format!("after={last}&limit=1000"));
                polls += 1;
                for event in &page {
                    let seq = event["seq"].as_i64().unwrap();
                    assert_eq!(
                        seq,
                        last + 1,
                        "poll {polls} after={last}: expected seq {} next, got {seq} (a gap, repeat or reordering)",
                        last + 1
                    );
                    last = seq;
                    seen.push(event.clone());
                }
                if !has_more && page.is_empty() {
                    // Nothing new yet: poll again shortly, bounded by the deadline above.
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            (seen, polls)
        });
        let writer_threads: Vec<_> = writers
            .iter()
            .enumerate()
            .map(|(w, writer)| {
                let (app, aborted) = (&app, &aborted);
                scope.spawn(move || {
                    let _guard = AbortOnPanic(aborted);
                    let mut sent = Vec::with_capacity(PER_WRITER);
                    for i in 0..PER_WRITER {
                        if aborted.load(Ordering::SeqCst) {
                            panic!("another thread failed; writer {w} stops at {i}");
                        }
                        sent.push(send(app, writer, chat_id, &format!("w{w}-{i}")));
                    }
                    sent
                })
            })
            .collect();
        let sent: Vec<Vec<Value>> = writer_threads.into_iter().map(|t| t.join().expect("a writer failed")).collect();
        (sent, reader_thread.join().expect("the reader failed"))
    });

    // Each writer's own messages were committed one after another, so their seqs rise.
    for (w, messages) in sent.iter().enumerate() {
        let seqs: Vec<i64> = messages.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
        assert!(seqs.windows(2).all(|p| p[0] < p[1]), "writer {w}'s seqs do not rise: {seqs:?}");
    }
    let sent: Vec<Value> = sent.into_iter().flatten().collect();
    assert_eq!(seqs(&seen), (1..=n).collect::<Vec<i64>>(), "the reader saw exactly 1..{n} ({polls} polls)");
    let created: Vec<&Value> = seen[before as usize..].iter().collect();
    assert!(created.iter().all(|e| e["type"] == json!("message.created")), "only messages after the opening");
    for event in &created {
        assert_eq!(event["seq"], event["message"]["seq"], "a message's seq is its event's: {event}");
    }
    let mut by_seq: Vec<&Value> = sent.iter().collect();
    by_seq.sort_by_key(|m| m["seq"].as_i64().unwrap());
    let sent_ids: Vec<i64> = by_seq.iter().map(|m| id_of(m)).collect();
    let event_ids: Vec<i64> = created.iter().map(|e| id_of(&e["message"])).collect();
    assert_eq!(event_ids, sent_ids, "the events name every sent message once, in seq order");

    let history = page_back(&app, &reader, chat_id, 200);
    let history_ids: Vec<i64> = history.iter().map(id_of).collect();
    assert_eq!(history_ids, sent_ids, "paging back reaches every message exactly once");
    assert_eq!(get_chat(&app, &owner, chat_id)["last_seq"], json!(n));
}
