//! Reactions (contract section 9): `PUT` and `DELETE
//! /api/chats/{id}/messages/{message_id}/reactions/{emoji}`, idempotent;
//! `reactions: [{emoji, user_ids}]` on every Message in first-use and
//! reaction order; the emoji rules and the 20-emoji limit; `409` on a deleted
//! message, whose reactions go with it; `reaction.added` / `reaction.removed`
//! in the gapless log and over WebSocket; outsiders get `404`; and the log
//! stays gapless while reactions from two processes race sends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::thread;

use serde_json::{json, Value};

use crate::chats::{create_group, get_chat, id_of};
use crate::events::{all_events, events_page};
use crate::messages::{history, post_message, send};
use crate::realtime::{connect_ready, is_event, SOON};
use crate::support::{check_error, spawn_app, spawn_app_on, spawn_app_with, Resp, TestApp, TestUser};

const THUMBS: &str = "%F0%9F%91%8D";
const PARTY: &str = "%F0%9F%8E%89";

fn reaction_path(chat_id: i64, message_id: i64, emoji: &str) -> String {
    format!("/api/chats/{chat_id}/messages/{message_id}/reactions/{emoji}")
}

/// `PUT` a reaction as a client does: no body.
fn put(app: &TestApp, user: &TestUser, chat_id: i64, message_id: i64, emoji: &str) -> Resp {
    let authorization = format!("Bearer {}", user.token);
    app.raw("PUT", &reaction_path(chat_id, message_id, emoji), &[("Authorization", &authorization)], b"")
}

fn delete(app: &TestApp, user: &TestUser, chat_id: i64, message_id: i64, emoji: &str) -> Resp {
    app.delete(&reaction_path(chat_id, message_id, emoji), Some(&user.token))
}

/// The message as history shows it now.
fn message_now(app: &TestApp, user: &TestUser, chat_id: i64, message_id: i64) -> Value {
    let (page, _) = history(app, user, chat_id, "limit=200");
    page.into_iter().find(|m| id_of(m) == message_id).unwrap_or_else(|| panic!("message {message_id} not in history"))
}

/// A message's reactions as `(emoji, [user id])`, in the order given.
fn reactions_of(message: &Value) -> Vec<(String, Vec<i64>)> {
    let list = message["reactions"].as_array().unwrap_or_else(|| panic!("no reactions in {message}"));
    list.iter()
        .map(|r| {
            let users = r["user_ids"].as_array().unwrap().iter().map(|u| u.as_i64().unwrap()).collect();
            (r["emoji"].as_str().unwrap().to_string(), users)
        })
        .collect()
}

fn last_seq(app: &TestApp, user: &TestUser, chat_id: i64) -> i64 {
    get_chat(app, user, chat_id)["last_seq"].as_i64().unwrap()
}

/// A chat of ann and bob with one message of ann's: `(chat_id, message_id)`.
fn chat_with_a_message(app: &TestApp, ann: &TestUser, bob: &TestUser) -> (i64, i64) {
    let chat_id = id_of(&create_group(app, ann, "reactions", &[bob]));
    (chat_id, id_of(&send(app, ann, chat_id, "react to me")))
}

#[test]
fn reactions_show_on_the_message_by_first_use_and_reaction_order() {
    let app = spawn_app();
    let (ann, bob) = (app.create_user(), app.create_user());
    let (chat_id, message_id) = chat_with_a_message(&app, &ann, &bob);
    assert_eq!(reactions_of(&message_now(&app, &ann, chat_id, message_id)), []);

    put(&app, &bob, chat_id, message_id, THUMBS).assert_status(204, "bob 👍");
    put(&app, &ann, chat_id, message_id, PARTY).assert_status(204, "ann 🎉");
    put(&app, &ann, chat_id, message_id, THUMBS).assert_status(204, "ann 👍");
    let expected = vec![("👍".to_string(), vec![bob.id, ann.id]), ("🎉".to_string(), vec![ann.id])];
    assert_eq!(reactions_of(&message_now(&app, &ann, chat_id, message_id)), expected, "history");
    assert_eq!(reactions_of(&get_chat(&app, &bob, chat_id)["last_message"]), expected, "the chat's last message");
    let created = all_events(&app, &ann, chat_id).into_iter().find(|e| e["type"] == "message.created").unwrap();
    assert_eq!(reactions_of(&created["message"]), expected, "a message event shows the message as it is now");

    // Everyone takes 👍 back: it leaves, and its next use counts from there.
    delete(&app, &bob, chat_id, message_id, THUMBS).assert_status(204, "bob takes 👍 back");
    delete(&app, &ann, chat_id, message_id, THUMBS).assert_status(204, "ann takes 👍 back");
    put(&app, &bob, chat_id, message_id, THUMBS).assert_status(204, "bob 👍 again");
    assert_eq!(
        reactions_of(&message_now(&app, &ann, chat_id, message_id)),
        [("🎉".to_string(), vec![ann.id]), ("👍".to_string(), vec![bob.id])]
    );
}

#[test]
fn reacting_twice_or_removing_what_is_not_there_is_204_and_changes_nothing() {
    let app = spawn_app();
    let (ann, bob) = (app.create_user(), app.create_user());
    let (chat_id, message_id) = chat_with_a_message(&app, &ann, &bob);
    put(&app, &ann, chat_id, message_id, THUMBS).assert_status(204, "👍");
    let before = last_seq(&app, &ann, chat_id);
    put(&app, &ann, chat_id, message_id, THUMBS).assert_status(204, "👍 again");
    delete(&app, &ann, chat_id, message_id, PARTY).assert_status(204, "no 🎉 to remove");
    delete(&app, &bob, chat_id, message_id, THUMBS).assert_status(204, "bob never reacted");
    assert_eq!(last_seq(&app, &ann, chat_id), before, "nothing new in the log");
    assert_eq!(reactions_of(&message_now(&app, &ann, chat_id, message_id)), [("👍".to_string(), vec![ann.id])]);
}

#[test]
fn each_change_is_an_event_in_the_log_and_a_frame_to_every_member() {
    let app = spawn_app();
    let (ann, bob) = (app.create_user(), app.create_user());
    let (chat_id, message_id) = chat_with_a_message(&app, &ann, &bob);
    let (mut bob_ws, _) = connect_ready(&app, &bob, "bob");
    let before = last_seq(&app, &ann, chat_id);
    put(&app, &ann, chat_id, message_id, THUMBS).assert_status(204, "👍");
    delete(&app, &ann, chat_id, message_id, THUMBS).assert_status(204, "no 👍");

    let (events, _) = events_page(&app, &bob, chat_id, &format!("after={before}"));
    let changes: Vec<(&Value, &Value, &Value)> =
        events.iter().map(|e| (&e["seq"], &e["type"], &e["reaction"])).collect();
    let reaction = json!({ "message_id": message_id, "emoji": "👍", "user_id": ann.id });
    assert_eq!(
        changes,
        [
            (&json!(before + 1), &json!("reaction.added"), &reaction),
            (&json!(before + 2), &json!("reaction.removed"), &reaction)
        ]
    );
    for (seq, kind) in [(before + 1, "reaction.added"), (before + 2, "reaction.removed")] {
        let frame = bob_ws.recv_until(SOON, kind, |f| is_event(f, chat_id, kind));
        assert_eq!(frame["event"]["seq"], json!(seq), "in seq order: {frame}");
        assert_eq!(frame["event"]["reaction"], reaction, "{frame}");
    }
}

#[test]
fn an_emoji_is_one_to_thirty_two_bytes_without_white_space_or_control_characters() {
    let app = spawn_app();
    let (ann, bob) = (app.create_user(), app.create_user());
    let (chat_id, message_id) = chat_with_a_message(&app, &ann, &bob);
    let before = last_seq(&app, &ann, chat_id);
    let too_long = format!("{}a", THUMBS.repeat(8));
    for bad in ["", "%20", "a%20b", "%E2%80%83", "%09", "%07", "%7F", "%00", "%ZZ", "%F0%9F", "%FF", &too_long] {
        check_error(&put(&app, &ann, chat_id, message_id, bad), 400, "invalid_request", Some("emoji"));
        check_error(&delete(&app, &ann, chat_id, message_id, bad), 400, "invalid_request", Some("emoji"));
    }
    assert_eq!(last_seq(&app, &ann, chat_id), before, "refused emoji write nothing");
    for good in [THUMBS.repeat(8).as_str(), "%2B1", "+1", ":tada:", "%E2%9D%A4%EF%B8%8F"] {
        put(&app, &ann, chat_id, message_id, good).assert_status(204, good);
    }
    let emoji: Vec<String> =
        reactions_of(&message_now(&app, &ann, chat_id, message_id)).into_iter().map(|(e, _)| e).collect();
    assert_eq!(emoji, ["👍".repeat(8), "+1".into(), ":tada:".into(), "❤️".into()], "%2B1 and +1 are one emoji");
}

#[test]
fn a_message_carries_at_most_twenty_distinct_emoji() {
    let app = spawn_app();
    let (ann, bob) = (app.create_user(), app.create_user());
    let (chat_id, message_id) = chat_with_a_message(&app, &ann, &bob);
    for n in 0..20 {
        put(&app, &ann, chat_id, message_id, &format!("e{n}")).assert_status(204, &format!("emoji {n}"));
    }
    let before = last_seq(&app, &ann, chat_id);
    check_error(&put(&app, &bob, chat_id, message_id, "e20"), 409, "conflict", None);
    assert_eq!(last_seq(&app, &ann, chat_id), before, "a refused 21st writes nothing");
    put(&app, &bob, chat_id, message_id, "e7").assert_status(204, "one of the twenty, by someone else");
    put(&app, &ann, chat_id, message_id, "e7").assert_status(204, "one of the twenty, again");
    let reactions = reactions_of(&message_now(&app, &ann, chat_id, message_id));
    assert_eq!(reactions.len(), 20);
    assert_eq!(reactions[7], ("e7".to_string(), vec![ann.id, bob.id]));
    delete(&app, &ann, chat_id, message_id, "e0").assert_status(204, "one leaves");
    put(&app, &bob, chat_id, message_id, "e20").assert_status(204, "and room is made");
}

#[test]
fn a_deleted_message_takes_its_reactions_and_refuses_new_ones() {
    let app = spawn_app();
    let (ann, bob) = (app.create_user(), app.create_user());
    let (chat_id, message_id) = chat_with_a_message(&app, &ann, &bob);
    put(&app, &ann, chat_id, message_id, THUMBS).assert_status(204, "👍");
    put(&app, &bob, chat_id, message_id, PARTY).assert_status(204, "🎉");
    let before = last_seq(&app, &ann, chat_id);
    app.delete(&format!("/api/chats/{chat_id}/messages/{message_id}"), Some(&ann.token))
        .assert_status(204, "delete the message");

    let (events, _) = events_page(&app, &ann, chat_id, &format!("after={before}"));
    let kinds: Vec<&Value> = events.iter().map(|e| &e["type"]).collect();
    assert_eq!(kinds, [&json!("message.deleted")], "one event, none per reaction");
    assert_eq!(events[0]["message"]["reactions"], json!([]));
    assert_eq!(reactions_of(&message_now(&app, &ann, chat_id, message_id)), []);

    check_error(&put(&app, &bob, chat_id, message_id, THUMBS), 409, "conflict", None);
    delete(&app, &bob, chat_id, message_id, PARTY).assert_status(204, "nothing is left to remove");
    assert_eq!(last_seq(&app, &ann, chat_id), before + 1, "neither wrote anything");
}

#[test]
fn outsiders_and_other_chats_messages_get_404_and_no_token_401() {
    let app = spawn_app();
    let (ann, bob, eve) = (app.create_user(), app.create_user(), app.create_user());
    let (chat_id, message_id) = chat_with_a_message(&app, &ann, &bob);
    let eves_chat = id_of(&create_group(&app, &eve, "eve's", &[]));
    let eves_message = id_of(&send(&app, &eve, eves_chat, "mine"));
    let before = last_seq(&app, &ann, chat_id);
    for (user, chat, message) in [
        (&eve, chat_id, message_id),
        (&ann, chat_id, eves_message),
        (&ann, eves_chat, eves_message),
        (&ann, chat_id, 999_999),
        (&ann, 999_999, message_id),
    ] {
        check_error(&put(&app, user, chat, message, THUMBS), 404, "not_found", None);
        check_error(&delete(&app, user, chat, message, THUMBS), 404, "not_found", None);
    }
    check_error(&put(&app, &eve, chat_id, message_id, "%20"), 400, "invalid_request", Some("emoji"));
    let path = reaction_path(chat_id, message_id, THUMBS);
    check_error(&app.raw("PUT", &path, &[], b""), 401, "unauthorized", None);
    check_error(&app.delete(&path, None), 401, "unauthorized", None);
    let wrong_method = app.get(&path, Some(&ann.token));
    check_error(&wrong_method, 405, "method_not_allowed", None);
    assert_eq!(wrong_method.header("allow"), Some("PUT, DELETE"));
    assert_eq!(last_seq(&app, &ann, chat_id), before);
    assert_eq!(reactions_of(&message_now(&app, &eve, eves_chat, eves_message)), []);
}

#[test]
fn reaction_changes_spend_the_senders_message_budget() {
    let app = spawn_app_with(&[("MESSAGE_RATE", "1"), ("MESSAGE_BURST", "3")]);
    let (ann, bob) = (app.create_user(), app.create_user());
    let (chat_id, message_id) = chat_with_a_message(&app, &ann, &bob);
    put(&app, &ann, chat_id, message_id, "a").assert_status(204, "a");
    put(&app, &ann, chat_id, message_id, "b").assert_status(204, "b");
    let limited = put(&app, &ann, chat_id, message_id, "c");
    check_error(&limited, 429, "rate_limited", None);
    assert!(limited.header("retry-after").is_some());
    put(&app, &ann, chat_id, message_id, "a").assert_status(204, "a reaction already there spends nothing");
    put(&app, &bob, chat_id, message_id, "c").assert_status(204, "bob has a budget of his own");
}

#[test]
fn concurrent_puts_from_two_processes_add_each_reaction_once() {
    let a = spawn_app();
    let b = spawn_app_on(&a.db_url, &[]);
    let users: Vec<TestUser> = (0..4).map(|_| a.create_user()).collect();
    let members: Vec<&TestUser> = users[1..].iter().collect();
    let chat_id = id_of(&create_group(&a, &users[0], "race", &members));
    let message_id = id_of(&send(&a, &users[0], chat_id, "race on me"));
    let before = last_seq(&a, &users[0], chat_id);
    // Every user puts 👍 four times at once, half through each process.
    let barrier = Barrier::new(users.len() * 4);
    thread::scope(|s| {
        for user in &users {
            for n in 0..4 {
                let (app, barrier) = (if n % 2 == 0 { &a } else { &b }, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    put(app, user, chat_id, message_id, THUMBS).assert_status(204, "a racing 👍");
                });
            }
        }
    });
    let reactions = reactions_of(&message_now(&a, &users[0], chat_id, message_id));
    assert_eq!(reactions.len(), 1, "{reactions:?}");
    let mut reacted = reactions[0].1.clone();
    reacted.sort_unstable();
    assert_eq!(reacted, users.iter().map(|u| u.id).collect::<Vec<i64>>(), "each user once");
    let (events, _) = events_page(&a, &users[0], chat_id, &format!("after={before}"));
    assert_eq!(events.len(), users.len(), "one reaction.added per user: {events:?}");
    let order: Vec<&Value> = events.iter().map(|e| &e["reaction"]["user_id"]).collect();
    let listed: Vec<Value> = reactions[0].1.iter().map(|id| json!(id)).collect();
    assert_eq!(order, listed.iter().collect::<Vec<_>>(), "user_ids in the order of their events");
}

#[test]
fn the_log_stays_gapless_while_reactions_from_two_processes_race_sends() {
    let a = spawn_app();
    let b = spawn_app_on(&a.db_url, &[]);
    let users: Vec<TestUser> = (0..4).map(|_| a.create_user()).collect();
    let members: Vec<&TestUser> = users[1..].iter().collect();
    let chat_id = id_of(&create_group(&a, &users[0], "busy", &members));
    let targets: Vec<Value> = (0..3).map(|n| send(&a, &users[0], chat_id, &format!("target {n}"))).collect();
    let done = AtomicBool::new(false);

    let seen = thread::scope(|s| {
        let reader = s.spawn(|| {
            // Polls the log as a client catching up does: every event after the last one seen.
            let mut seen: Vec<Value> = Vec::new();
            loop {
                let finished = done.load(Ordering::SeqCst);
                let (page, _) = events_page(&b, &users[0], chat_id, &format!("after={}&limit=1000", seen.len()));
                for event in page {
                    assert_eq!(event["seq"], json!(seen.len() + 1), "the poller saw a gap or a repeat: {event}");
                    seen.push(event);
                }
                if finished {
                    return seen;
                }
            }
        });
        let writers: Vec<_> = users
            .iter()
            .enumerate()
            .map(|(w, user)| {
                let (app, targets) = (if w % 2 == 0 { &a } else { &b }, &targets);
                s.spawn(move || {
                    for i in 0..30 {
                        let target = &targets[i % targets.len()];
                        if w % 2 == 0 {
                            // A reply to the message being reacted to: its foreign key check
                            // shares the message row the reactions lock.
                            let body = json!({ "content": format!("w{w}-{i}"), "reply_to_seq": target["seq"] });
                            post_message(app, user, chat_id, body).assert_status(201, "a racing reply");
                        }
                        let (message_id, emoji) = (id_of(target), ["x", "y", "z"][(i / 3 + w) % 3]);
                        let resp = match (i + w) % 2 {
                            0 => put(app, user, chat_id, message_id, emoji),
                            _ => delete(app, user, chat_id, message_id, emoji),
                        };
                        resp.assert_status(204, &format!("writer {w}'s change {i}"));
                    }
                })
            })
            .collect();
        // The reader stops once every writer has, failed or not; then a failure is reported.
        let failed = writers.into_iter().map(|writer| writer.join()).filter(Result::is_err).count();
        done.store(true, Ordering::SeqCst);
        let seen = reader.join().expect("the reader failed");
        assert_eq!(failed, 0, "writers failed (their panics are above)");
        seen
    });

    let log = all_events(&a, &users[0], chat_id);
    assert_eq!(seen.len(), log.len(), "the poller saw the whole log");
    // Replaying the reaction events from none gives each message's reactions as stored.
    let mut replayed: HashMap<i64, Vec<(String, Vec<i64>)>> = HashMap::new();
    for event in log.iter().filter(|e| e["type"].as_str().unwrap().starts_with("reaction.")) {
        let r = &event["reaction"];
        let list = replayed.entry(r["message_id"].as_i64().unwrap()).or_default();
        let (emoji, user) = (r["emoji"].as_str().unwrap().to_string(), r["user_id"].as_i64().unwrap());
        let slot = list.iter().position(|(e, _)| *e == emoji);
        match (event["type"].as_str().unwrap(), slot) {
            ("reaction.added", Some(idx)) => list[idx].1.push(user),
            ("reaction.added", None) => list.push((emoji, vec![user])),
            (_, Some(idx)) => {
                list[idx].1.retain(|u| *u != user);
                if list[idx].1.is_empty() {
                    list.remove(idx);
                }
            }
            (_, None) => panic!("a removal of a reaction nobody added: {event}"),
        }
    }
    for message_id in targets.iter().map(id_of) {
        let stored = reactions_of(&message_now(&a, &users[0], chat_id, message_id));
        assert_eq!(replayed.remove(&message_id).unwrap_or_default(), stored, "message {message_id}");
    }
    let sent = log.iter().filter(|e| e["type"] == "message.created").count();
    assert_eq!(sent, 3 + 2 * 30, "every send is in the log once");
}
