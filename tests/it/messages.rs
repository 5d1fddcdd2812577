//! Messages (contract section 4): sending with idempotent `client_id`s,
//! history with cursors, editing, deleting to a tombstone, read markers and
//! unread counts, and outsiders who must get 404 and write nothing.
//!
//! `send`, `history` and `page_back` are shared with `events` and `legacy`.

use std::collections::HashSet;
use std::sync::Barrier;

use serde_json::{json, Value};

use crate::chats::{create_direct, create_group, get_chat, id_of, repeat, NO_SUCH_CHAT};
use crate::events::all_events;
use crate::support::{
    assert_keys, assert_utc_timestamp, check_error, random_hex, spawn_app, spawn_app_with, Resp, TestApp, TestUser,
};

/// Every key of a Message, and nothing else.
pub const MESSAGE_KEYS: &[&str] = &[
    "id",
    "chat_id",
    "seq",
    "sender_id",
    "content",
    "client_id",
    "created_at",
    "edited_at",
    "deleted",
    "reply_to_seq",
    "reactions",
];

/// `POST /api/chats/{id}/messages` with any body.
pub fn post_message(app: &TestApp, user: &TestUser, chat_id: i64, body: Value) -> Resp {
    app.post(&format!("/api/chats/{chat_id}/messages"), Some(&user.token), body)
}

/// Sends `content` as `user`, asserting `201`, and returns the Message.
pub fn send(app: &TestApp, user: &TestUser, chat_id: i64, content: &str) -> Value {
    let resp = post_message(app, user, chat_id, json!({ "content": content }));
    resp.assert_status(201, &format!("{} sends {content:?} to chat {chat_id}", user.username));
    resp.json()
}

/// One page of history for `query` (e.g. `"before=9&limit=3"`), asserting `200`.
pub fn history(app: &TestApp, user: &TestUser, chat_id: i64, query: &str) -> (Vec<Value>, bool) {
    let resp = app.get(&format!("/api/chats/{chat_id}/messages?{query}"), Some(&user.token));
    resp.assert_status(200, &format!("history of chat {chat_id} with {query:?}"));
    let body = resp.json();
    assert_keys(&body, &["messages", "has_more"], "a history page");
    let has_more = body["has_more"].as_bool().unwrap_or_else(|| panic!("has_more not a boolean: {body}"));
    let messages = body["messages"].as_array().unwrap_or_else(|| panic!("messages: {body}")).clone();
    let seqs = seqs_of(&messages);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{query:?}: seqs not ascending: {seqs:?}");
    (messages, has_more)
}

/// Every message of the chat, paged from the newest with `before`, in ascending seq.
///
/// Panics when a message comes twice, or a page is out of order.
pub fn page_back(app: &TestApp, user: &TestUser, chat_id: i64, limit: usize) -> Vec<Value> {
    let mut pages: Vec<Vec<Value>> = Vec::new();
    let mut query = format!("limit={limit}");
    loop {
        let (page, has_more) = history(app, user, chat_id, &query);
        assert!(page.len() <= limit, "{query:?}: {} messages over the limit", page.len());
        if has_more {
            assert_eq!(page.len(), limit, "{query:?}: a short page claims has_more");
        }
        let Some(oldest) = page.first().map(|m| m["seq"].as_i64().unwrap()) else {
            assert!(!has_more, "{query:?}: an empty page claims has_more");
            break;
        };
        pages.push(page);
        if !has_more {
            break;
        }
        query = format!("before={oldest}&limit={limit}");
        assert!(pages.len() < 100_000, "paging never ends");
    }
    let all: Vec<Value> = pages.into_iter().rev().flatten().collect();
    let seqs = seqs_of(&all);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "paging back repeated or reordered seqs");
    let ids: HashSet<i64> = all.iter().map(id_of).collect();
    assert_eq!(ids.len(), all.len(), "paging back returned a message twice");
    all
}

/// The `seq`s of `messages`, in the order given.
pub fn seqs_of(messages: &[Value]) -> Vec<i64> {
    messages.iter().map(|m| m["seq"].as_i64().unwrap_or_else(|| panic!("no seq in {m}"))).collect()
}

/// How many rows `messages` holds (each test has its own database).
pub fn message_rows(app: &TestApp) -> i64 {
    app.db().query_one("SELECT count(*) FROM messages", &[]).expect("count messages").get(0)
}

/// Asserts the Message shape: exact keys, types and timestamps.
pub fn assert_message_shape(message: &Value, what: &str) {
    assert_keys(message, MESSAGE_KEYS, what);
    for key in ["id", "chat_id", "seq", "sender_id"] {
        assert!(message[key].as_i64().is_some_and(|n| n > 0), "{what}: {key}: {message}");
    }
    assert!(message["content"].is_string(), "{what}: content: {message}");
    assert!(message["client_id"].is_string() || message["client_id"].is_null(), "{what}: client_id: {message}");
    assert_utc_timestamp(&message["created_at"], &format!("{what}: created_at"));
    if !message["edited_at"].is_null() {
        assert_utc_timestamp(&message["edited_at"], &format!("{what}: edited_at"));
    }
    assert!(message["deleted"].is_boolean(), "{what}: deleted: {message}");
    assert!(
        message["reply_to_seq"].is_null() || message["reply_to_seq"].as_i64().is_some_and(|n| n > 0),
        "{what}: reply_to_seq: {message}"
    );
    let reactions = message["reactions"].as_array().unwrap_or_else(|| panic!("{what}: reactions: {message}"));
    for reaction in reactions {
        assert_keys(reaction, &["emoji", "user_ids"], &format!("{what}: a reaction"));
        assert!(reaction["emoji"].is_string(), "{what}: emoji: {message}");
        let users = reaction["user_ids"].as_array().unwrap_or_else(|| panic!("{what}: user_ids: {message}"));
        assert!(!users.is_empty() && users.iter().all(|u| u.as_i64().is_some_and(|n| n > 0)), "{what}: {message}");
    }
    if message["deleted"] == json!(true) {
        assert_eq!(message["reactions"], json!([]), "{what}: a deleted message keeps no reactions: {message}");
    }
}

/// A group of `owner` and `members`, returning its id.
fn group(app: &TestApp, owner: &TestUser, members: &[&TestUser]) -> i64 {
    id_of(&create_group(app, owner, "Talk", members))
}

/// The events of `chat_id` whose type is `kind` and whose message id is `message_id`.
fn message_events(app: &TestApp, user: &TestUser, chat_id: i64, kind: &str, message_id: i64) -> Vec<Value> {
    all_events(app, user, chat_id)
        .into_iter()
        .filter(|e| e["type"] == json!(kind) && e["message"]["id"] == json!(message_id))
        .collect()
}

#[test]
fn sending_a_message_answers_201_with_the_stored_message() {
    let app = spawn_app();
    let (alice, bob) = (app.create_user(), app.create_user());
    let chat_id = group(&app, &alice, &[&bob]);
    let before = get_chat(&app, &alice, chat_id)["last_seq"].as_i64().unwrap();

    let resp = post_message(&app, &alice, chat_id, json!({ "content": "Hello, Bob" }));

    resp.assert_status(201, "sending");
    let message = resp.json();
    assert_message_shape(&message, "the sent message");
    assert_eq!(message["chat_id"], json!(chat_id), "{message}");
    assert_eq!(message["sender_id"], json!(alice.id), "{message}");
    assert_eq!(message["content"], json!("Hello, Bob"), "{message}");
    assert_eq!(message["client_id"], Value::Null, "{message}");
    assert_eq!(message["edited_at"], Value::Null, "{message}");
    assert_eq!(message["deleted"], json!(false), "{message}");
    assert_eq!(message["seq"], json!(before + 1), "the next seq of the chat's log");
    let chat = get_chat(&app, &bob, chat_id);
    assert_eq!(chat["last_seq"], message["seq"], "{chat}");
    assert_eq!(chat["last_message"], message, "bob's chat shows it as the last message");
    let (page, _) = history(&app, &bob, chat_id, "");
    assert_eq!(page, vec![message], "the history holds exactly it");
}

#[test]
fn content_must_be_1_to_4000_characters_and_not_only_white_space() {
    let app = spawn_app();
    let alice = app.create_user();
    let chat_id = group(&app, &alice, &[]);
    let cases: Vec<(&str, Value, bool)> = vec![
        ("4000 two-byte characters", json!(repeat("é", 4000)), true),
        ("4000 four-byte characters", json!(repeat("😀", 4000)), true),
        ("4000 ASCII characters", json!(repeat("a", 4000)), true),
        ("one character", json!("x"), true),
        ("text padded with white space", json!("  hi \n"), true),
        ("4001 two-byte characters", json!(repeat("é", 4001)), false),
        ("4001 four-byte characters", json!(repeat("😀", 4001)), false),
        ("4001 ASCII characters", json!(repeat("a", 4001)), false),
        ("an empty string", json!(""), false),
        ("spaces, tabs and newlines only", json!(" \t\r\n  "), false),
        ("Unicode spaces only", json!("\u{00a0}\u{2003}\u{3000}"), false),
        ("a NUL between letters", json!("a\u{0}b"), false),
        ("a NUL alone", json!("\u{0}"), false),
        ("a number", json!(42), false),
        ("null", Value::Null, false),
        ("an array", json!(["hi"]), false),
    ];
    let mut accepted = 0;

    for (description, content, ok) in cases {
        let resp = post_message(&app, &alice, chat_id, json!({ "content": content }));
        if ok {
            assert_eq!(resp.status, 201, "content {description}: expected 201:\n{}", resp.describe());
            assert_eq!(resp.json()["content"], content, "content {description} comes back unchanged");
            accepted += 1;
        } else {
            assert_eq!(resp.status, 400, "content {description}: expected 400:\n{}", resp.describe());
            check_error(&resp, 400, "invalid_request", Some("content"));
        }
    }
    let missing = post_message(&app, &alice, chat_id, json!({ "client_id": "no-content" }));
    check_error(&missing, 400, "invalid_request", Some("content"));

    assert_eq!(message_rows(&app), accepted, "only the accepted messages were stored");
    assert_eq!(page_back(&app, &alice, chat_id, 200).len() as i64, accepted);
}

#[test]
fn client_id_must_be_1_to_64_characters() {
    let app = spawn_app();
    let alice = app.create_user();
    let chat_id = group(&app, &alice, &[]);
    let cases: Vec<(&str, Value, bool)> = vec![
        ("64 ASCII characters", json!(repeat("k", 64)), true),
        ("64 two-byte characters", json!(repeat("é", 64)), true),
        ("one character", json!("1"), true),
        ("65 ASCII characters", json!(repeat("k", 65)), false),
        ("65 two-byte characters", json!(repeat("é", 65)), false),
        ("an empty string", json!(""), false),
        ("a number", json!(5), false),
        ("a NUL", json!("a\u{0}"), false),
    ];
    let mut accepted = 0;

    for (description, client_id, ok) in cases {
        let resp = post_message(&app, &alice, chat_id, json!({ "content": "hi", "client_id": client_id }));
        if ok {
            assert_eq!(resp.status, 201, "client_id {description}: expected 201:\n{}", resp.describe());
            assert_eq!(resp.json()["client_id"], client_id, "client_id {description} comes back");
            accepted += 1;
        } else {
            assert_eq!(resp.status, 400, "client_id {description}: expected 400:\n{}", resp.describe());
            check_error(&resp, 400, "invalid_request", Some("client_id"));
        }
    }
    let null = post_message(&app, &alice, chat_id, json!({ "content": "hi", "client_id": null }));
    null.assert_status(201, "client_id null is the same as none");
    assert_eq!(message_rows(&app), accepted + 1, "only the accepted messages were stored");
}

#[test]
fn resending_a_client_id_returns_the_stored_message_and_creates_nothing() {
    let app = spawn_app();
    let (alice, bob) = (app.create_user(), app.create_user());
    let chat_id = group(&app, &alice, &[&bob]);
    let other_chat = group(&app, &alice, &[]);
    let body = json!({ "content": "once", "client_id": "retry-1" });

    let first = post_message(&app, &alice, chat_id, body.clone());
    let second = post_message(&app, &alice, chat_id, body.clone());

    first.assert_status(201, "the first send");
    second.assert_status(200, "the retry");
    assert_message_shape(&second.json(), "the retried message");
    assert_eq!(first.json(), second.json(), "the retry returns the stored message");
    let message_id = id_of(&first.json());
    assert_eq!(message_rows(&app), 1, "one row");
    assert_eq!(message_events(&app, &alice, chat_id, "message.created", message_id).len(), 1, "one event");
    let last_seq = get_chat(&app, &alice, chat_id)["last_seq"].clone();
    assert_eq!(last_seq, first.json()["seq"], "the retry added nothing to the log");

    // The key is per sender and per chat.
    let from_bob = post_message(&app, &bob, chat_id, body.clone());
    from_bob.assert_status(201, "bob with alice's client_id");
    let elsewhere = post_message(&app, &alice, other_chat, body.clone());
    elsewhere.assert_status(201, "alice's client_id in another chat");
    assert_ne!(id_of(&from_bob.json()), message_id);
    assert_ne!(id_of(&elsewhere.json()), message_id);
    assert_eq!(message_rows(&app), 3, "three distinct messages");
}

#[test]
fn a_removed_member_retrying_a_client_id_gets_404_not_the_old_message() {
    let app = spawn_app();
    let (alice, bob) = (app.create_user(), app.create_user());
    let chat_id = group(&app, &alice, &[&bob]);
    let body = json!({ "content": "before leaving", "client_id": "retry-after-leaving" });
    post_message(&app, &bob, chat_id, body.clone()).assert_status(201, "bob's first send");
    app.delete(&format!("/api/chats/{chat_id}/members/{}", bob.id), Some(&alice.token))
        .assert_status(204, "bob removed");

    let retry = post_message(&app, &bob, chat_id, body);

    check_error(&retry, 404, "not_found", None);
    assert_eq!(message_rows(&app), 1, "nothing new was stored");
}

#[test]
fn the_same_client_id_sent_from_several_threads_at_once_makes_one_message() {
    let app = spawn_app();
    let (alice, bob) = (app.create_user(), app.create_user());
    let chat_id = group(&app, &alice, &[&bob]);
    let rounds = 6;

    for round in 0..rounds {
        let n_threads = 2 + round % 3;
        let client_id = format!("race-{round}-{}", random_hex(4));
        let barrier = Barrier::new(n_threads);
        let resps: Vec<Resp> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..n_threads)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        post_message(&app, &alice, chat_id, json!({ "content": "race", "client_id": client_id }))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });

        let created = resps.iter().filter(|r| r.status == 201).count();
        for resp in &resps {
            assert!(
                matches!(resp.status, 200 | 201),
                "round {round}, {n_threads} threads: every answer is 200 or 201:\n{}",
                resp.describe()
            );
        }
        assert_eq!(created, 1, "round {round}: exactly one 201 among {resps:?}");
        let ids: HashSet<i64> = resps.iter().map(|r| id_of(&r.json())).collect();
        assert_eq!(ids.len(), 1, "round {round}: every answer carries the same message: {resps:?}");
        let message_id = *ids.iter().next().unwrap();
        let events = message_events(&app, &bob, chat_id, "message.created", message_id);
        assert_eq!(events.len(), 1, "round {round}: one message.created event");
    }
    assert_eq!(message_rows(&app), rounds as i64, "one row per round");
    assert_eq!(page_back(&app, &bob, chat_id, 50).len(), rounds, "one message per round in history");
}

#[test]
fn history_without_cursors_is_the_newest_50_in_ascending_order() {
    let app = spawn_app();
    let alice = app.create_user();
    let chat_id = group(&app, &alice, &[]);
    let sent: Vec<Value> = (0..60).map(|i| send(&app, &alice, chat_id, &format!("m{i}"))).collect();

    let (page, has_more) = history(&app, &alice, chat_id, "");

    assert_eq!(page.len(), 50, "the default limit");
    assert!(has_more, "ten older messages remain");
    assert_eq!(page, sent[10..].to_vec(), "the newest fifty, oldest first");
    for message in &page {
        assert_message_shape(message, "a history message");
    }
    let (page, has_more) = history(&app, &alice, chat_id, "limit=200");
    assert_eq!(page, sent, "all sixty with limit=200");
    assert!(!has_more, "nothing older remains");
    let (page, has_more) = history(&app, &alice, chat_id, "limit=1");
    assert_eq!(page, sent[59..].to_vec(), "limit=1 is the newest");
    assert!(has_more);
}

#[test]
fn history_cursors_page_in_the_direction_of_travel() {
    let app = spawn_app();
    let alice = app.create_user();
    let chat_id = group(&app, &alice, &[]);
    let sent: Vec<Value> = (0..10).map(|i| send(&app, &alice, chat_id, &format!("m{i}"))).collect();
    let seq = |i: usize| sent[i]["seq"].as_i64().unwrap();
    let first_seq = seq(0);
    let cases: Vec<(&str, String, std::ops::Range<usize>, bool)> = vec![
        ("before the sixth, 3", format!("before={}&limit=3", seq(5)), 2..5, true),
        ("before the third, 3", format!("before={}&limit=3", seq(2)), 0..2, false),
        ("before the first", format!("before={}", seq(0)), 0..0, false),
        ("before past the end", format!("before={}&limit=4", seq(9) + 100), 6..10, true),
        ("after the sixth, 3", format!("after={}&limit=3", seq(5)), 6..9, true),
        ("after the seventh, 3", format!("after={}&limit=3", seq(6)), 7..10, false),
        ("after the last", format!("after={}", seq(9)), 10..10, false),
        ("after 0, 4", "after=0&limit=4".to_string(), 0..4, true),
        ("after 0, all", "after=0&limit=10".to_string(), 0..10, false),
        ("after the one before the first", format!("after={}&limit=200", first_seq - 1), 0..10, false),
    ];

    for (description, query, range, more) in cases {
        let (page, has_more) = history(&app, &alice, chat_id, &query);
        assert_eq!(seqs_of(&page), seqs_of(&sent[range.clone()]), "{description} ({query})");
        assert_eq!(has_more, more, "{description} ({query}): has_more");
    }
}

#[test]
fn history_query_parameters_are_checked() {
    let app = spawn_app();
    let alice = app.create_user();
    let chat_id = group(&app, &alice, &[]);
    send(&app, &alice, chat_id, "one");
    let cases: Vec<(&str, &str)> = vec![
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=abc", "limit"),
        ("limit=-1", "limit"),
        ("limit=", "limit"),
        ("limit=1.5", "limit"),
        ("before=-1", "before"),
        ("before=abc", "before"),
        ("after=-1", "after"),
        ("after=x", "after"),
    ];

    for (query, field) in cases {
        let resp = app.get(&format!("/api/chats/{chat_id}/messages?{query}"), Some(&alice.token));
        assert_eq!(resp.status, 400, "{query}: expected 400:\n{}", resp.describe());
        check_error(&resp, 400, "invalid_request", Some(field));
    }
    for query in ["limit=1", "limit=200", "before=1", "after=0", "unknown=1"] {
        history(&app, &alice, chat_id, query);
    }
}

#[test]
fn paging_back_from_the_newest_reaches_every_message_once() {
    let app = spawn_app();
    let (alice, bob) = (app.create_user(), app.create_user());
    let chat_id = group(&app, &alice, &[&bob]);
    let mut sent: Vec<Value> = Vec::new();
    for i in 0..75 {
        let sender = if i % 3 == 0 { &bob } else { &alice };
        sent.push(send(&app, sender, chat_id, &format!("m{i}")));
        if i % 10 == 4 {
            // Other events between messages leave gaps in the messages' seqs.
            let path = format!("/api/chats/{chat_id}/messages/{}", id_of(&sent[i]));
            app.patch(&path, Some(&sender.token), json!({ "content": "edited" })).assert_status(200, "edit");
        }
    }

    for limit in [1, 7, 50, 200] {
        let all = page_back(&app, &bob, chat_id, limit);
        let want: Vec<i64> = sent.iter().map(id_of).collect();
        let got: Vec<i64> = all.iter().map(id_of).collect();
        assert_eq!(got, want, "paging back with limit {limit}");
    }
}

#[test]
fn the_sender_edits_a_message() {
    let app = spawn_app();
    let (alice, bob) = (app.create_user(), app.create_user());
    let chat_id = group(&app, &alice, &[&bob]);
    let original = send(&app, &bob, chat_id, "helo");
    let path = format!("/api/chats/{chat_id}/messages/{}", id_of(&original));

    let resp = app.patch(&path, Some(&bob.token), json!({ "content": "hello" }));

    resp.assert_status(200, "the sender edits");
    let edited = resp.json();
    assert_message_shape(&edited, "the edited message");
    assert_eq!(edited["content"], json!("hello"), "{edited}");
    assert_utc_timestamp(&edited["edited_at"], "edited_at is set");
    for key in ["id", "seq", "chat_id", "sender_id", "created_at", "client_id", "deleted"] {
        assert_eq!(edited[key], original[key], "editing keeps {key}");
    }
    let (page, _) = history(&app, &alice, chat_id, "");
    assert_eq!(page, vec![edited.clone()], "the history shows the edit");
    let updates = message_events(&app, &alice, chat_id, "message.updated", id_of(&edited));
    assert_eq!(updates.len(), 1, "one message.updated event");
    assert_eq!(updates[0]["message"], edited, "the event carries the edited message");

    for (description, content) in [
        ("empty", json!("")),
        ("white space", json!("   ")),
        ("4001 characters", json!(repeat("é", 4001))),
        ("a NUL", json!("x\u{0}")),
        ("a number", json!(1)),
    ] {
        let resp = app.patch(&path, Some(&bob.token), json!({ "content": content }));
        assert_eq!(resp.status, 400, "editing to {description}:\n{}", resp.describe());
        check_error(&resp, 400, "invalid_request", Some("content"));
    }
    assert_eq!(history(&app, &alice, chat_id, "").0, vec![edited], "bad edits changed nothing");
}

#[test]
fn only_the_sender_edits_a_message() {
    let app = spawn_app();
    let (alice, bob) = (app.create_user(), app.create_user());
    let chat_id = group(&app, &alice, &[&bob]);
    let message = send(&app, &bob, chat_id, "mine");
    let path = format!("/api/chats/{chat_id}/messages/{}", id_of(&message));

    let by_owner = app.patch(&path, Some(&alice.token), json!({ "content": "the owner's words" }));

    check_error(&by_owner, 403, "forbidden", None);
    assert_eq!(history(&app, &bob, chat_id, "").0, vec![message], "unchanged");
}

#[test]
fn editing_a_deleted_message_is_a_conflict() {
    let app = spawn_app();
    let alice = app.create_user();
    let chat_id = group(&app, &alice, &[]);
    let message = send(&app, &alice, chat_id, "regret");
    let path = format!("/api/chats/{chat_id}/messages/{}", id_of(&message));
    app.delete(&path, Some(&alice.token)).assert_status(204, "deleting");

    let resp = app.patch(&path, Some(&alice.token), json!({ "content": "unregret" }));

    check_error(&resp, 409, "conflict", None);
    let (page, _) = history(&app, &alice, chat_id, "");
    assert_eq!(page[0]["content"], json!(""), "still a tombstone");
    assert_eq!(page[0]["deleted"], json!(true));
}

#[test]
fn a_message_id_from_another_chat_or_none_at_all_is_not_found() {
    let app = spawn_app();
    let alice = app.create_user();
    let chat_id = group(&app, &alice, &[]);
    let other_chat = group(&app, &alice, &[]);
    let elsewhere = send(&app, &alice, other_chat, "elsewhere");
    send(&app, &alice, chat_id, "here");

    for (description, message_id) in [("another chat's message", id_of(&elsewhere)), ("no message", NO_SUCH_CHAT)] {
        let path = format!("/api/chats/{chat_id}/messages/{message_id}");
        let edit = app.patch(&path, Some(&alice.token), json!({ "content": "x" }));
        assert_eq!(edit.status, 404, "editing {description}:\n{}", edit.describe());
        check_error(&edit, 404, "not_found", None);
        let delete = app.delete(&path, Some(&alice.token));
        assert_eq!(delete.status, 404, "deleting {description}:\n{}", delete.describe());
        check_error(&delete, 404, "not_found", None);
    }
    assert_eq!(history(&app, &alice, other_chat, "").0, vec![elsewhere], "untouched");
}

#[test]
fn the_sender_deletes_a_message_and_leaves_a_tombstone() {
    let app = spawn_app();
    let (alice, bob) = (app.create_user(), app.create_user());
    let chat_id = group(&app, &alice, &[&bob]);
    let before = send(&app, &bob, chat_id, "before");
    let message = send(&app, &bob, chat_id, "oops");
    let after = send(&app, &alice, chat_id, "after");
    let path = format!("/api/chats/{chat_id}/messages/{}", id_of(&message));

    let resp = app.delete(&path, Some(&bob.token));

    resp.assert_status(204, "the sender deletes");
    assert!(resp.body.is_empty(), "204 without a body: {resp:?}");
    let (page, _) = history(&app, &alice, chat_id, "");
    assert_eq!(seqs_of(&page), seqs_of(&[before, message.clone(), after]), "the tombstone keeps its place");
    let tombstone = &page[1];
    assert_message_shape(tombstone, "the tombstone");
    assert_eq!(tombstone["deleted"], json!(true), "{tombstone}");
    assert_eq!(tombstone["content"], json!(""), "{tombstone}");
    assert_eq!(tombstone["id"], message["id"]);
    let deletions = message_events(&app, &alice, chat_id, "message.deleted", id_of(&message));
    assert_eq!(deletions.len(), 1, "one message.deleted event");
    assert_eq!(&deletions[0]["message"], tombstone, "the event carries the tombstone");
}

#[test]
fn the_group_owner_deletes_anyones_message_and_members_only_their_own() {
    let app = spawn_app();
    let (alice, bob, carol) = (app.create_user(), app.create_user(), app.create_user());
    let chat_id = group(&app, &alice, &[&bob, &carol]);
    let from_bob = send(&app, &bob, chat_id, "bob's");
    let from_carol = send(&app, &carol, chat_id, "carol's");
    let from_alice = send(&app, &alice, chat_id, "alice's");
    let path = |m: &Value| format!("/api/chats/{chat_id}/messages/{}", id_of(m));

    check_error(&app.delete(&path(&from_carol), Some(&bob.token)), 403, "forbidden", None);
    check_error(&app.delete(&path(&from_alice), Some(&bob.token)), 403, "forbidden", None);
    app.delete(&path(&from_bob), Some(&alice.token)).assert_status(204, "the owner deletes bob's");

    let (page, _) = history(&app, &carol, chat_id, "");
    let deleted: Vec<bool> = page.iter().map(|m| m["deleted"].as_bool().unwrap()).collect();
    assert_eq!(deleted, vec![true, false, false], "only bob's is deleted: {page:?}");
    assert_eq!(page[1], from_carol);
    assert_eq!(page[2], from_alice);
}

#[test]
fn in_a_direct_chat_only_the_sender_deletes() {
    let app = spawn_app();
    let (alice, bob) = (app.create_user(), app.create_user());
    let direct = create_direct(&app, &alice, &bob);
    direct.assert_status(201, "the direct chat");
    let chat_id = id_of(&direct.json());
    let message = send(&app, &bob, chat_id, "bob's");
    let path = format!("/api/chats/{chat_id}/messages/{}", id_of(&message));

    check_error(&app.delete(&path, Some(&alice.token)), 403, "forbidden", None);
    assert_eq!(history(&app, &alice, chat_id, "").0, vec![message]);
}

/// `POST /api/chats/{id}/read` as `user`.
fn mark_read(app: &TestApp, user: &TestUser, chat_id: i64, seq: i64) -> Resp {
    app.post(&format!("/api/chats/{chat_id}/read"), Some(&user.token), json!({ "seq": seq }))
}

/// `(last_read_seq, unread_count)` of the chat as `user` sees it, in both the
/// chat and the chat list, which must agree.
fn read_state(app: &TestApp, user: &TestUser, chat_id: i64) -> (i64, i64) {
    let chat = get_chat(app, user, chat_id);
    let state = (chat["last_read_seq"].as_i64().unwrap(), chat["unread_count"].as_i64().unwrap());
    let list = app.get("/api/chats", Some(&user.token)).json();
    let listed = list["chats"].as_array().unwrap().iter().find(|c| c["id"] == json!(chat_id)).cloned();
    let listed = listed.unwrap_or_else(|| panic!("chat {chat_id} not listed: {list}"));
    assert_eq!(
        (listed["last_read_seq"].as_i64().unwrap(), listed["unread_count"].as_i64().unwrap()),
        state,
        "the chat list and the chat agree"
    );
    state
}

#[test]
fn unread_count_counts_other_peoples_live_messages_after_the_read_marker() {
    let app = spawn_app();
    let (alice, bob) = (app.create_user(), app.create_user());
    let chat_id = group(&app, &alice, &[&bob]);
    let (_, unread) = read_state(&app, &alice, chat_id);
    assert_eq!(unread, 0, "a new chat has nothing unread");

    let from_bob: Vec<Value> = (0..4).map(|i| send(&app, &bob, chat_id, &format!("b{i}"))).collect();
    let (last_read, unread) = read_state(&app, &alice, chat_id);
    assert!(last_read < from_bob[0]["seq"].as_i64().unwrap(), "nothing read yet");
    assert_eq!(unread, 4, "bob's four messages");
    assert_eq!(read_state(&app, &bob, chat_id).1, 0, "bob's own messages are not unread for him");

    let from_alice: Vec<Value> = (0..2).map(|i| send(&app, &alice, chat_id, &format!("a{i}"))).collect();
    assert_eq!(read_state(&app, &alice, chat_id).1, 4, "alice's own sends are not unread");
    assert_eq!(read_state(&app, &bob, chat_id).1, 2, "bob has alice's two");

    let doomed = format!("/api/chats/{chat_id}/messages/{}", id_of(&from_bob[3]));
    app.delete(&doomed, Some(&bob.token)).assert_status(204, "bob deletes his last");
    assert_eq!(read_state(&app, &alice, chat_id).1, 3, "a deleted message is not unread");

    let second = from_bob[1]["seq"].as_i64().unwrap();
    let resp = mark_read(&app, &alice, chat_id, second);
    resp.assert_status(204, "marking read");
    assert!(resp.body.is_empty(), "204 without a body");
    assert_eq!(read_state(&app, &alice, chat_id), (second, 1), "only b2 is unread");

    mark_read(&app, &alice, chat_id, from_bob[0]["seq"].as_i64().unwrap()).assert_status(204, "marking back");
    assert_eq!(read_state(&app, &alice, chat_id), (second, 1), "the marker only moves forward");

    let last = from_alice[1]["seq"].as_i64().unwrap();
    mark_read(&app, &alice, chat_id, last).assert_status(204, "marking the newest");
    assert_eq!(read_state(&app, &alice, chat_id), (last, 0), "all read");
    assert_eq!(read_state(&app, &bob, chat_id).1, 2, "alice's marker is hers alone");
}

// The unread count is a subtraction of ordinals (sql/0007_count_messages.up.sql):
// random sends, deletes and read markers by three members, each count
// checked against the definition, counted row by row in the database.
#[test]
fn unread_counts_match_their_definition_through_random_sends_deletes_and_read_markers() {
    let app = spawn_app_with(&[("RATE_LIMITS", "off")]);
    let users = [app.create_user(), app.create_user(), app.create_user()];
    let chat_id = group(&app, &users[0], &[&users[1], &users[2]]);
    let mut db = crate::support::pg::connect(&app.db_url);
    let mut sent: Vec<(usize, Value)> = Vec::new();
    // A small linear congruential generator: the same steps on every run.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |below: usize| {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as usize % below
    };

    for step in 0..120 {
        let who = next(3);
        match next(10) {
            0..=5 => sent.push((who, send(&app, &users[who], chat_id, &format!("m{step}")))),
            6 if !sent.is_empty() => {
                let (sender, message) = &sent[next(sent.len())];
                let path = format!("/api/chats/{chat_id}/messages/{}", id_of(message));
                let status = app.delete(&path, Some(&users[*sender].token)).status;
                assert!(status == 204 || status == 409, "step {step}: delete answered {status}");
            }
            _ if !sent.is_empty() => {
                let seq = sent[next(sent.len())].1["seq"].as_i64().unwrap();
                mark_read(&app, &users[who], chat_id, seq).assert_status(204, &format!("step {step}: mark read"));
            }
            _ => {}
        }
        for user in &users {
            let (last_read, unread) = read_state(&app, user, chat_id);
            let counted: i64 = db
                .query_one(
                    "SELECT count(*) FROM messages
                      WHERE chat_id = $1 AND seq > $2 AND NOT deleted AND sender_id <> $3",
                    &[&chat_id, &last_read, &user.id],
                )
                .expect("count unread messages")
                .get(0);
            assert_eq!(unread, counted, "step {step}: {}'s unread count", user.username);
        }
    }
}

#[test]
fn a_read_marker_past_the_end_does_not_hide_later_messages() {
    let app = spawn_app();
    let (alice, bob) = (app.create_user(), app.create_user());
    let chat_id = group(&app, &alice, &[&bob]);
    let first = send(&app, &bob, chat_id, "first");
    let far_ahead = first["seq"].as_i64().unwrap() + 1000;

    // The contract is silent on a seq past the end: refusing it or clamping it are both fair,
    // but a marker stored past the end would count the next messages as read before they exist.
    let resp = mark_read(&app, &alice, chat_id, far_ahead);
    match resp.status {
        204 => {}
        400 => check_error(&resp, 400, "invalid_request", Some("seq")),
        _ => panic!("marking read past the end:\n{}", resp.describe()),
    }
    send(&app, &bob, chat_id, "second");
    let (last_read, unread) = read_state(&app, &alice, chat_id);
    assert_eq!(unread, if resp.status == 204 { 1 } else { 2 }, "the message sent afterwards is unread");
    assert!(last_read < far_ahead, "the marker is not past the end: {last_read}");
}

#[test]
fn the_read_marker_body_is_checked() {
    let app = spawn_app();
    let alice = app.create_user();
    let chat_id = group(&app, &alice, &[]);
    send(&app, &alice, chat_id, "x");
    let path = format!("/api/chats/{chat_id}/read");

    for (description, body) in [
        ("no seq", json!({})),
        ("a string", json!({ "seq": "3" })),
        ("a negative seq", json!({ "seq": -1 })),
        ("a fraction", json!({ "seq": 1.5 })),
    ] {
        let resp = app.post(&path, Some(&alice.token), body);
        assert_eq!(resp.status, 400, "{description}:\n{}", resp.describe());
        check_error(&resp, 400, "invalid_request", Some("seq"));
    }
}

#[test]
fn outsiders_cannot_send_page_mark_edit_or_delete_and_nothing_is_written() {
    let app = spawn_app();
    let (alice, bob, mallory) = (app.create_user(), app.create_user(), app.create_user());
    let chat_id = group(&app, &alice, &[&bob]);
    let message = send(&app, &alice, chat_id, "members only");
    // Bob was a member; once removed he is an outsider like any other.
    app.delete(&format!("/api/chats/{chat_id}/members/{}", bob.id), Some(&alice.token))
        .assert_status(204, "removing bob");
    let chat_before = get_chat(&app, &alice, chat_id);
    let rows_before = message_rows(&app);

    for outsider in [&mallory, &bob] {
        let attempts = |chat_id: i64| {
            let token = Some(outsider.token.as_str());
            let message_path = format!("/api/chats/{chat_id}/messages/{}", id_of(&message));
            vec![
                (
                    "send",
                    app.post(
                        &format!("/api/chats/{chat_id}/messages"),
                        token,
                        json!({ "content": "hi", "client_id": "c1" }),
                    ),
                ),
                ("page", app.get(&format!("/api/chats/{chat_id}/messages"), token)),
                ("page after", app.get(&format!("/api/chats/{chat_id}/messages?after=0"), token)),
                ("mark read", app.post(&format!("/api/chats/{chat_id}/read"), token, json!({ "seq": 1 }))),
                ("edit", app.patch(&message_path, token, json!({ "content": "pwned" }))),
                ("delete", app.delete(&message_path, token)),
                ("events", app.get(&format!("/api/chats/{chat_id}/events"), token)),
            ]
        };
        let theirs = attempts(chat_id);
        let missing = attempts(NO_SUCH_CHAT);
        for ((what, resp), (_, missing)) in theirs.iter().zip(&missing) {
            assert_eq!(resp.status, 404, "{} tries to {what}:\n{}", outsider.username, resp.describe());
            check_error(resp, 404, "not_found", None);
            assert_eq!(resp.json(), missing.json(), "{what}: the chat is indistinguishable from none");
        }
    }

    assert_eq!(message_rows(&app), rows_before, "no row was added to messages");
    let chat_after = get_chat(&app, &alice, chat_id);
    assert_eq!(chat_after["last_seq"], chat_before["last_seq"], "no event was added");
    assert_eq!(history(&app, &alice, chat_id, "").0, vec![message], "the message is untouched");
}
