//! Replies (contract section 9): `reply_to_seq` on REST and WebSocket sends,
//! checked by the send itself (a seq that is not a message of this chat is
//! `400` naming the field, and nothing is stored), and returned on every
//! Message: the reply, history, the log and the frames. The seed's routes
//! keep their shapes.

use serde_json::{json, Value};

use crate::chats::{create_group, get_chat, id_of};
use crate::events::all_events;
use crate::messages::{history, post_message, send};
use crate::realtime::{connect_ready, event_of, is_event, SOON};
use crate::support::{assert_keys, check_error, spawn_app, TestApp, TestUser};

/// Sends `content` as a reply to `reply_to_seq`, asserting `201`.
fn reply(app: &TestApp, user: &TestUser, chat_id: i64, content: &str, reply_to_seq: Value) -> Value {
    let resp = post_message(app, user, chat_id, json!({ "content": content, "reply_to_seq": reply_to_seq }));
    resp.assert_status(201, &format!("a reply to {reply_to_seq}"));
    resp.json()
}

#[test]
fn a_reply_names_its_message_in_the_reply_history_events_and_frames() {
    let app = spawn_app();
    let (ann, bob) = (app.create_user(), app.create_user());
    let chat_id = id_of(&create_group(&app, &ann, "replies", &[&bob]));
    let (mut bob_ws, _) = connect_ready(&app, &bob, "bob");
    let first = send(&app, &ann, chat_id, "question?");
    assert_eq!(first["reply_to_seq"], Value::Null, "a message that is no reply: {first}");

    let answer = reply(&app, &bob, chat_id, "answer", first["seq"].clone());
    assert_eq!(answer["reply_to_seq"], first["seq"], "{answer}");
    let explicit_null = reply(&app, &bob, chat_id, "no reply", Value::Null);
    assert_eq!(explicit_null["reply_to_seq"], Value::Null, "null means not a reply: {explicit_null}");

    let (page, _) = history(&app, &ann, chat_id, "limit=10");
    let replies: Vec<&Value> = page.iter().map(|m| &m["reply_to_seq"]).collect();
    assert_eq!(replies, [&Value::Null, &first["seq"], &Value::Null], "history: {page:?}");
    let created = all_events(&app, &ann, chat_id).into_iter().find(|e| e["message"]["id"] == answer["id"]);
    assert_eq!(created.expect("the reply's event")["message"]["reply_to_seq"], first["seq"]);
    let frame = bob_ws.recv_until(SOON, "the reply's event", |f| {
        is_event(f, chat_id, "message.created") && event_of(f, chat_id)["message"]["id"] == answer["id"]
    });
    assert_eq!(frame["event"]["message"]["reply_to_seq"], first["seq"], "{frame}");
    assert_eq!(get_chat(&app, &ann, chat_id)["last_message"]["reply_to_seq"], Value::Null);
}

#[test]
fn a_deleted_message_can_be_replied_to() {
    let app = spawn_app();
    let ann = app.create_user();
    let chat_id = id_of(&create_group(&app, &ann, "tombstones", &[]));
    let gone = send(&app, &ann, chat_id, "soon gone");
    app.delete(&format!("/api/chats/{chat_id}/messages/{}", id_of(&gone)), Some(&ann.token))
        .assert_status(204, "delete");
    let answer = reply(&app, &ann, chat_id, "to a tombstone", gone["seq"].clone());
    assert_eq!(answer["reply_to_seq"], gone["seq"]);
}

#[test]
fn a_reply_to_anything_but_a_message_of_the_chat_is_400_and_stores_nothing() {
    let app = spawn_app();
    let (ann, bob) = (app.create_user(), app.create_user());
    let chat_id = id_of(&create_group(&app, &ann, "strict", &[&bob]));
    let other_id = id_of(&create_group(&app, &ann, "elsewhere", &[]));
    // Seqs 1 to 3 are the chat's creation and its two members joining: events, not messages.
    let message = send(&app, &ann, chat_id, "the only message");
    assert_eq!(message["seq"], json!(4));
    // Over there seqs 1 and 2 are events and 3 to 5 messages: 5 is a message, but not of this chat.
    for _ in 0..3 {
        send(&app, &ann, other_id, "a message elsewhere");
    }
    let last_seq = get_chat(&app, &ann, chat_id)["last_seq"].clone();
    for bad in [json!(1), json!(2), json!(3), json!(5), json!(0), json!(-3), json!(i64::MAX)] {
        let resp = post_message(&app, &ann, chat_id, json!({ "content": "x", "reply_to_seq": bad }));
        check_error(&resp, 400, "invalid_request", Some("reply_to_seq"));
    }
    for bad in [json!("3"), json!(3.5), json!(true), json!([3]), json!({"seq": 3}), json!(1e30)] {
        let resp = post_message(&app, &ann, chat_id, json!({ "content": "x", "reply_to_seq": bad }));
        check_error(&resp, 400, "invalid_request", Some("reply_to_seq"));
    }
    assert_eq!(get_chat(&app, &ann, chat_id)["last_seq"], last_seq, "a refused reply takes no seq");
    assert_eq!(all_events(&app, &ann, chat_id).len() as i64, last_seq.as_i64().unwrap());
    let (page, _) = history(&app, &ann, chat_id, "limit=10");
    assert_eq!(page.len(), 1, "nothing stored: {page:?}");

    // A retry of a stored reply answers with it, whatever it names now.
    let body = json!({ "content": "once", "client_id": "r-1", "reply_to_seq": 4 });
    post_message(&app, &ann, chat_id, body.clone()).assert_status(201, "the reply");
    let retried = post_message(&app, &ann, chat_id, body);
    retried.assert_status(200, "the retry");
    assert_eq!(retried.json()["reply_to_seq"], json!(4));
}

#[test]
fn an_outsiders_reply_is_404_whatever_it_names() {
    let app = spawn_app();
    let (ann, eve) = (app.create_user(), app.create_user());
    let chat_id = id_of(&create_group(&app, &ann, "private", &[]));
    let message = send(&app, &ann, chat_id, "hello");
    for reply_to_seq in [message["seq"].clone(), json!(1), json!(999)] {
        let resp = post_message(&app, &eve, chat_id, json!({ "content": "x", "reply_to_seq": reply_to_seq }));
        check_error(&resp, 404, "not_found", None);
    }
}

#[test]
fn a_websocket_send_takes_reply_to_seq_and_a_bad_one_gets_an_error_frame() {
    let app = spawn_app();
    let ann = app.create_user();
    let chat_id = id_of(&create_group(&app, &ann, "frames", &[]));
    let first = send(&app, &ann, chat_id, "first");
    let (mut ws, _) = connect_ready(&app, &ann, "ann");
    ws.send_json(&json!({ "type": "send", "chat_id": chat_id, "content": "re", "client_id": "c1",
                          "reply_to_seq": first["seq"] }));
    let ack = ws.recv_until(SOON, "the ack", |f| f["type"] == "ack");
    assert_eq!(ack["message"]["reply_to_seq"], first["seq"], "{ack}");

    for bad in [json!(1), json!("2"), json!(0)] {
        ws.send_json(&json!({ "type": "send", "chat_id": chat_id, "content": "x", "client_id": "c2",
                              "reply_to_seq": bad }));
        let error = ws.recv_until(SOON, "the error frame", |f| f["type"] == "error");
        assert_eq!(
            (&error["code"], &error["field"], &error["client_id"]),
            (&json!("invalid_request"), &json!("reply_to_seq"), &json!("c2")),
            "{error}"
        );
    }
    ws.ping_pong(SOON, "the connection stays open");
    let (page, _) = history(&app, &ann, chat_id, "limit=10");
    assert_eq!(page.len(), 2, "only the good reply was stored: {page:?}");
}

#[test]
fn the_seeds_routes_keep_their_shapes_beside_replies() {
    let app = spawn_app();
    let ann = app.create_user();
    let chat_id = id_of(&create_group(&app, &ann, "seed", &[]));
    let first = send(&app, &ann, chat_id, "first");
    reply(&app, &ann, chat_id, "second", first["seq"].clone());
    let resp = app.get(&format!("/chat/messages/{chat_id}"), Some(&ann.token));
    resp.assert_status(200, "the seed's history");
    let messages = resp.json()["messages"].as_array().cloned().unwrap_or_default();
    assert_eq!(messages.len(), 2);
    for message in &messages {
        assert_keys(message, &["id", "chat_id", "user_id", "content", "created_at", "updated_at"], "a seed message");
    }
}
