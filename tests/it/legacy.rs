//! The seed's chat routes (contract section 8): `POST /chat/message`,
//! `GET /chat/user` and `GET /chat/messages/{id}`, with string ids and the
//! seed's exact key sets, over the same storage and membership rules as `/api`.

use serde_json::{json, Value};

use crate::chats::{create_direct, create_group, get_chat, id_of, role_of, NO_SUCH_CHAT};
use crate::messages::send;
use crate::support::{assert_keys, check_error, spawn_app, Resp, TestApp, TestUser};

/// `POST /chat/message` as `user`.
fn legacy_create(app: &TestApp, user: &TestUser, title: &str, others: &[&TestUser], is_group: bool) -> Resp {
    let user_ids: Vec<String> = others.iter().map(|u| u.id.to_string()).collect();
    app.post("/chat/message", Some(&user.token), json!({ "title": title, "user_ids": user_ids, "is_group": is_group }))
}

/// A JSON string holding a positive integer, as the seed sends ids.
fn string_id(value: &Value, what: &str) -> i64 {
    value
        .as_str()
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|id| *id > 0)
        .unwrap_or_else(|| panic!("{what}: expected an id as a JSON string, got {value}"))
}

/// The ids in a `user_ids` array, sorted.
fn user_ids(chat: &Value) -> Vec<i64> {
    let mut ids: Vec<i64> = chat["user_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("user_ids is not an array: {chat}"))
        .iter()
        .map(|id| string_id(id, "a user id"))
        .collect();
    ids.sort_unstable();
    ids
}

fn sorted(mut ids: Vec<i64>) -> Vec<i64> {
    ids.sort_unstable();
    ids
}

#[test]
fn legacy_create_chat_answers_the_seeds_shape_with_string_ids() {
    let app = spawn_app();
    let (alice, bob) = (app.create_user(), app.create_user());

    let resp = legacy_create(&app, &alice, "Old school", &[&bob], true);

    resp.assert_status(200, "POST /chat/message");
    let chat = resp.json();
    assert_keys(&chat, &["id", "title", "user_ids", "is_group"], "the seed's chat");
    let chat_id = string_id(&chat["id"], "the chat id");
    assert_eq!(chat["title"], json!("Old school"), "{chat}");
    assert_eq!(chat["is_group"], json!(true), "{chat}");
    assert_eq!(user_ids(&chat), sorted(vec![alice.id, bob.id]), "the caller is a member: {chat}");

    let same = get_chat(&app, &bob, chat_id);
    assert_eq!(same["title"], json!("Old school"), "the /api view of it: {same}");
    assert_eq!(role_of(&same, &alice).as_deref(), Some("owner"), "{same}");
    assert_eq!(role_of(&same, &bob).as_deref(), Some("member"), "{same}");
}

#[test]
fn legacy_create_chat_requires_a_title_and_existing_users() {
    let app = spawn_app();
    let (alice, bob) = (app.create_user(), app.create_user());
    let cases: Vec<(&str, Value, &str)> = vec![
        ("an empty title", json!({ "title": "", "user_ids": [bob.id.to_string()], "is_group": true }), "title"),
        ("no title", json!({ "user_ids": [bob.id.to_string()], "is_group": true }), "title"),
        (
            "an unknown user",
            json!({ "title": "t", "user_ids": [NO_SUCH_CHAT.to_string()], "is_group": true }),
            "user_ids",
        ),
        ("a user id that is no number", json!({ "title": "t", "user_ids": ["bob"], "is_group": true }), "user_ids"),
        // Found while writing docs/openapi.json: Rust's integer parser took a leading sign.
        (
            "a user id with a sign",
            json!({ "title": "t", "user_ids": [format!("+{}", bob.id)], "is_group": true }),
            "user_ids",
        ),
        ("a user id of zero", json!({ "title": "t", "user_ids": ["0"], "is_group": true }), "user_ids"),
    ];

    for (description, body, field) in cases {
        let resp = app.post("/chat/message", Some(&alice.token), body);
        assert_eq!(resp.status, 400, "{description}: expected 400:\n{}", resp.describe());
        check_error(&resp, 400, "invalid_request", Some(field));
    }
    let list = app.get("/chat/user", Some(&alice.token));
    assert_eq!(list.json()["count"], json!(0), "nothing was created: {list:?}");
}

#[test]
fn a_legacy_direct_chat_is_deduplicated_with_the_api_one() {
    let app = spawn_app();
    let (alice, bob) = (app.create_user(), app.create_user());

    let first = legacy_create(&app, &alice, "Us", &[&bob], false);
    let second = legacy_create(&app, &alice, "Us again", &[&bob], false);
    let from_bob = legacy_create(&app, &bob, "Us", &[&alice], false);

    first.assert_status(200, "the first legacy direct chat");
    second.assert_status(200, "the same pair again");
    from_bob.assert_status(200, "the same pair from bob");
    let chat_id = string_id(&first.json()["id"], "the chat id");
    assert_eq!(first.json()["is_group"], json!(false), "{first:?}");
    assert_eq!(string_id(&second.json()["id"], "again"), chat_id, "one direct chat per pair");
    assert_eq!(string_id(&from_bob.json()["id"], "from bob"), chat_id, "one direct chat per pair");
    let api = create_direct(&app, &bob, &alice);
    api.assert_status(200, "the /api direct chat already exists");
    assert_eq!(id_of(&api.json()), chat_id, "the same chat through /api");
}

#[test]
fn legacy_chat_list_shows_the_callers_chats_with_string_ids() {
    let app = spawn_app();
    let (alice, bob, carol) = (app.create_user(), app.create_user(), app.create_user());
    let group = id_of(&create_group(&app, &alice, "Through api", &[&bob]));
    let legacy = legacy_create(&app, &bob, "Through seed", &[&alice, &carol], true);
    legacy.assert_status(200, "the legacy group");
    let legacy = string_id(&legacy.json()["id"], "the legacy chat id");
    create_group(&app, &bob, "Without alice", &[&carol]);

    let resp = app.get("/chat/user", Some(&alice.token));

    resp.assert_status(200, "GET /chat/user");
    let body = resp.json();
    assert_keys(&body, &["chats", "count"], "GET /chat/user");
    let chats = body["chats"].as_array().unwrap_or_else(|| panic!("chats: {body}"));
    assert_eq!(body["count"], json!(chats.len()), "count is the number of chats: {body}");
    for chat in chats {
        assert_keys(chat, &["id", "title", "user_ids", "is_group"], "a listed seed chat");
        assert_eq!(chat["is_group"], json!(true), "{chat}");
    }
    let mut listed: Vec<(i64, String, Vec<i64>)> = chats
        .iter()
        .map(|c| (string_id(&c["id"], "a chat id"), c["title"].as_str().unwrap().to_string(), user_ids(c)))
        .collect();
    listed.sort();
    let mut want = vec![
        (group, "Through api".to_string(), sorted(vec![alice.id, bob.id])),
        (legacy, "Through seed".to_string(), sorted(vec![alice.id, bob.id, carol.id])),
    ];
    want.sort();
    assert_eq!(listed, want, "alice's two chats and not bob's other one");
}

#[test]
fn legacy_messages_list_oldest_first_with_string_ids() {
    let app = spawn_app();
    let (alice, bob) = (app.create_user(), app.create_user());
    let chat_id = id_of(&create_group(&app, &alice, "Mixed", &[&bob]));
    let sent = vec![
        send(&app, &alice, chat_id, "first"),
        send(&app, &bob, chat_id, "second"),
        send(&app, &alice, chat_id, "third, with é and 😀"),
    ];

    let resp = app.get(&format!("/chat/messages/{chat_id}"), Some(&bob.token));

    resp.assert_status(200, "GET /chat/messages/{id}");
    let body = resp.json();
    assert_keys(&body, &["messages", "count"], "GET /chat/messages");
    let messages = body["messages"].as_array().unwrap_or_else(|| panic!("messages: {body}"));
    assert_eq!(body["count"], json!(3), "{body}");
    assert_eq!(messages.len(), 3, "{body}");
    for (message, original) in messages.iter().zip(&sent) {
        assert_keys(message, &["id", "chat_id", "user_id", "content", "created_at", "updated_at"], "a seed message");
        assert_eq!(string_id(&message["id"], "id"), id_of(original), "oldest first: {body}");
        assert_eq!(string_id(&message["chat_id"], "chat_id"), chat_id, "{message}");
        assert_eq!(string_id(&message["user_id"], "user_id"), original["sender_id"].as_i64().unwrap());
        assert_eq!(message["content"], original["content"], "{message}");
        assert!(message["created_at"].is_string(), "{message}");
        assert!(message["updated_at"].is_string(), "{message}");
    }
}

#[test]
fn legacy_messages_of_someone_elses_chat_are_not_found() {
    let app = spawn_app();
    let (alice, mallory) = (app.create_user(), app.create_user());
    let chat_id = id_of(&create_group(&app, &alice, "Private", &[]));
    send(&app, &alice, chat_id, "secret");

    let theirs = app.get(&format!("/chat/messages/{chat_id}"), Some(&mallory.token));
    let missing = app.get(&format!("/chat/messages/{NO_SUCH_CHAT}"), Some(&mallory.token));

    check_error(&theirs, 404, "not_found", None);
    check_error(&missing, 404, "not_found", None);
    assert_eq!(theirs.json(), missing.json(), "someone else's chat and no chat look alike");
    let list = app.get("/chat/user", Some(&mallory.token));
    assert_eq!(list.json(), json!({ "chats": [], "count": 0 }), "mallory has no chats");
}

#[test]
fn legacy_chat_routes_require_a_token() {
    let app = spawn_app();
    let alice = app.create_user();
    let chat_id = id_of(&create_group(&app, &alice, "Locked", &[]));

    for (description, resp) in [
        (
            "POST /chat/message",
            app.post("/chat/message", None, json!({ "title": "t", "user_ids": [], "is_group": true })),
        ),
        ("GET /chat/user", app.get("/chat/user", None)),
        ("GET /chat/messages/{id}", app.get(&format!("/chat/messages/{chat_id}"), None)),
        ("GET /chat/user, bad token", app.get("/chat/user", Some("nope"))),
    ] {
        assert_eq!(resp.status, 401, "{description}:\n{}", resp.describe());
        check_error(&resp, 401, "unauthorized", None);
    }
}
