//! Chats and members (contract section 3): creating groups and direct chats,
//! listing them by activity, renaming, adding and removing members.
//!
//! The helpers at the top (`create_group`, `get_chat`, the key sets) are the
//! client actions `messages`, `events` and `legacy` build their chats with.

use std::sync::Barrier;

use serde_json::{json, Value};

use crate::messages::send;
use crate::support::{assert_keys, assert_utc_timestamp, check_error, random_hex, spawn_app, TestApp, TestUser};

/// Every key of a Chat, and nothing else.
pub const CHAT_KEYS: &[&str] =
    &["id", "is_group", "title", "created_at", "members", "last_seq", "last_read_seq", "unread_count", "last_message"];

/// Every key of a Member.
pub const MEMBER_KEYS: &[&str] = &["id", "username", "role"];

/// A chat id no test database ever reaches.
pub const NO_SUCH_CHAT: i64 = 987_654_321;

/// Creates a group owned by `owner` with `members`, asserting `201`.
pub fn create_group(app: &TestApp, owner: &TestUser, title: &str, members: &[&TestUser]) -> Value {
    let member_ids: Vec<i64> = members.iter().map(|user| user.id).collect();
    let resp = app.post(
        "/api/chats",
        Some(&owner.token),
        json!({ "is_group": true, "title": title, "member_ids": member_ids }),
    );
    resp.assert_status(201, &format!("{} creates the group {title:?}", owner.username));
    resp.json()
}

/// `POST /api/chats` for the direct chat of `from` and `to`.
pub fn create_direct(app: &TestApp, from: &TestUser, to: &TestUser) -> crate::support::Resp {
    app.post("/api/chats", Some(&from.token), json!({ "is_group": false, "member_ids": [to.id] }))
}

/// `GET /api/chats/{id}` as `user`, asserting `200`.
pub fn get_chat(app: &TestApp, user: &TestUser, chat_id: i64) -> Value {
    let resp = app.get(&format!("/api/chats/{chat_id}"), Some(&user.token));
    resp.assert_status(200, &format!("{} reads chat {chat_id}", user.username));
    resp.json()
}

/// The chat ids `user` sees in `GET /api/chats`, in the order given.
pub fn listed_chat_ids(app: &TestApp, user: &TestUser) -> Vec<i64> {
    let resp = app.get("/api/chats", Some(&user.token));
    resp.assert_status(200, &format!("{} lists chats", user.username));
    let body = resp.json();
    assert_keys(&body, &["chats"], "GET /api/chats");
    body["chats"]
        .as_array()
        .unwrap_or_else(|| panic!("chats is not an array: {body}"))
        .iter()
        .map(|chat| chat["id"].as_i64().unwrap_or_else(|| panic!("chat without an id: {chat}")))
        .collect()
}

/// The chat's id, asserting it is a positive integer.
pub fn id_of(value: &Value) -> i64 {
    match value["id"].as_i64() {
        Some(id) if id > 0 => id,
        _ => panic!("expected a positive integer id in {value}"),
    }
}

/// The role of `user` in `chat`, or `None` when not listed; panics on a duplicate.
pub fn role_of(chat: &Value, user: &TestUser) -> Option<String> {
    let members = chat["members"].as_array().unwrap_or_else(|| panic!("no members array: {chat}"));
    let found: Vec<&Value> = members.iter().filter(|m| m["id"].as_i64() == Some(user.id)).collect();
    assert!(found.len() <= 1, "{} is listed {} times in {chat}", user.username, found.len());
    found.first().map(|m| m["role"].as_str().unwrap_or_else(|| panic!("role not a string: {m}")).to_string())
}

/// Asserts the Chat shape: exact keys, types, timestamps, member shapes.
pub fn assert_chat_shape(chat: &Value, what: &str) {
    assert_keys(chat, CHAT_KEYS, what);
    id_of(chat);
    assert!(chat["is_group"].is_boolean(), "{what}: is_group not a boolean: {chat}");
    assert!(chat["title"].is_string() || chat["title"].is_null(), "{what}: title: {chat}");
    assert_utc_timestamp(&chat["created_at"], &format!("{what}: created_at"));
    for key in ["last_seq", "last_read_seq", "unread_count"] {
        assert!(chat[key].as_i64().is_some_and(|n| n >= 0), "{what}: {key} not a count: {chat}");
    }
    assert!(
        chat["last_message"].is_null() || chat["last_message"].is_object(),
        "{what}: last_message neither null nor a Message: {chat}"
    );
    for member in chat["members"].as_array().unwrap_or_else(|| panic!("{what}: members: {chat}")) {
        assert_keys(member, MEMBER_KEYS, &format!("{what}: a member"));
        assert!(member["id"].as_i64().is_some_and(|id| id > 0), "{what}: member id: {member}");
        assert!(member["username"].is_string(), "{what}: member username: {member}");
        let role = member["role"].as_str().unwrap_or("");
        assert!(role == "owner" || role == "member", "{what}: role {role:?} in {member}");
    }
}

/// A string of `n` copies of `piece`.
pub fn repeat(piece: &str, n: usize) -> String {
    piece.repeat(n)
}

#[test]
fn creating_a_group_makes_the_creator_owner_and_lists_every_member() {
    let app = spawn_app();
    let (alice, bob, carol) = (app.create_user(), app.create_user(), app.create_user());

    let resp = app.post(
        "/api/chats",
        Some(&alice.token),
        json!({ "is_group": true, "title": "Hiking", "member_ids": [bob.id, carol.id] }),
    );

    resp.assert_status(201, "creating a group");
    let chat = resp.json();
    assert_chat_shape(&chat, "the created group");
    assert_eq!(chat["is_group"], json!(true), "{chat}");
    assert_eq!(chat["title"], json!("Hiking"), "{chat}");
    assert_eq!(chat["unread_count"], json!(0), "{chat}");
    assert_eq!(chat["last_message"], Value::Null, "{chat}");
    assert!(chat["last_seq"].as_i64().unwrap() >= 1, "creating a chat is an event: {chat}");
    let members = chat["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "creator and two members: {chat}");
    for (user, role) in [(&alice, "owner"), (&bob, "member"), (&carol, "member")] {
        assert_eq!(role_of(&chat, user).as_deref(), Some(role), "{}'s role in {chat}", user.username);
        let member = members.iter().find(|m| m["id"] == json!(user.id)).unwrap();
        assert_eq!(member["username"], json!(user.username), "{member}");
    }
    for user in [&alice, &bob, &carol] {
        let seen = get_chat(&app, user, id_of(&chat));
        assert_eq!(seen["id"], chat["id"], "{} sees the same chat", user.username);
        assert_eq!(seen["members"].as_array().unwrap().len(), 3, "{seen}");
    }
}

#[test]
fn a_group_with_no_other_members_is_allowed() {
    let app = spawn_app();
    let alice = app.create_user();

    let chat = create_group(&app, &alice, "Notes to self", &[]);

    assert_chat_shape(&chat, "a group of one");
    assert_eq!(role_of(&chat, &alice).as_deref(), Some("owner"), "{chat}");
    assert_eq!(chat["members"].as_array().unwrap().len(), 1, "{chat}");
}

#[test]
fn a_group_title_must_be_1_to_100_characters() {
    let app = spawn_app();
    let alice = app.create_user();
    let cases: Vec<(&str, Value, Option<u16>)> = vec![
        ("an empty title", json!(""), None),
        ("101 ASCII characters", json!(repeat("a", 101)), None),
        ("101 two-byte characters", json!(repeat("é", 101)), None),
        ("a missing title", Value::Null, None),
        ("a number", json!(42), None),
        ("100 ASCII characters", json!(repeat("a", 100)), Some(201)),
        ("100 two-byte characters", json!(repeat("é", 100)), Some(201)),
        ("100 four-byte characters", json!(repeat("😀", 100)), Some(201)),
        ("one character", json!("x"), Some(201)),
    ];

    for (description, title, accepted) in cases {
        let mut body = json!({ "is_group": true, "member_ids": [] });
        if !title.is_null() {
            body["title"] = title.clone();
        }
        let resp = app.post("/api/chats", Some(&alice.token), body);
        match accepted {
            Some(status) => {
                assert_eq!(resp.status, status, "{description}: expected {status}:\n{}", resp.describe());
                assert_eq!(resp.json()["title"], title, "{description}: the title comes back as sent");
            }
            None => {
                assert_eq!(resp.status, 400, "{description}: expected 400:\n{}", resp.describe());
                check_error(&resp, 400, "invalid_request", Some("title"));
            }
        }
    }
    assert_eq!(listed_chat_ids(&app, &alice).len(), 4, "only the four valid groups exist");
}

#[test]
fn group_member_ids_must_be_at_most_1000_existing_users() {
    let app = spawn_app();
    let (alice, bob) = (app.create_user(), app.create_user());
    let too_many: Vec<i64> = (0..1001).map(|i| NO_SUCH_CHAT + i).collect();
    let cases: Vec<(&str, Value)> = vec![
        ("an unknown id", json!([NO_SUCH_CHAT])),
        ("a known and an unknown id", json!([bob.id, NO_SUCH_CHAT])),
        ("a negative id", json!([-5])),
        ("1001 ids", json!(too_many)),
        ("ids as strings", json!([bob.id.to_string()])),
        ("not an array", json!(bob.id)),
    ];

    for (description, member_ids) in cases {
        let body = json!({ "is_group": true, "title": "Crew", "member_ids": member_ids });
        let resp = app.post("/api/chats", Some(&alice.token), body);
        assert_eq!(resp.status, 400, "member_ids {description}: expected 400:\n{}", resp.describe());
        check_error(&resp, 400, "invalid_request", Some("member_ids"));
    }
    assert!(listed_chat_ids(&app, &alice).is_empty(), "no rejected group was created");
    assert!(listed_chat_ids(&app, &bob).is_empty(), "bob was added to nothing");
}

#[test]
fn a_group_without_member_ids_is_refused() {
    let app = spawn_app();
    let alice = app.create_user();

    // `member_ids` is required (only `title?` is marked optional), and a missing
    // required field is `invalid_request` naming it (contract section 1).
    let resp = app.post("/api/chats", Some(&alice.token), json!({ "is_group": true, "title": "Crew" }));

    check_error(&resp, 400, "invalid_request", Some("member_ids"));
    assert!(listed_chat_ids(&app, &alice).is_empty(), "no group was created");
}

#[test]
fn a_group_takes_up_to_1000_members_besides_its_creator() {
    let app = spawn_app();
    let alice = app.create_user();
    // Signing up is enough to be addable; logging 1001 users in would only cost time.
    let ids: Vec<i64> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let app = &app;
                scope.spawn(move || {
                    (0..251)
                        .filter(|i| t * 251 + i < 1001)
                        .map(|_| {
                            let username = format!("m{}", random_hex(6));
                            let resp =
                                app.signup(&username, &format!("{username}@example.com"), "correct horse battery");
                            resp.assert_status(201, "signing up a member");
                            id_of(&resp.json())
                        })
                        .collect::<Vec<i64>>()
                })
            })
            .collect();
        threads.into_iter().flat_map(|t| t.join().unwrap()).collect()
    });
    assert_eq!(ids.len(), 1001);

    let too_many =
        app.post("/api/chats", Some(&alice.token), json!({ "is_group": true, "title": "Crowd", "member_ids": ids }));
    check_error(&too_many, 400, "invalid_request", Some("member_ids"));
    assert!(listed_chat_ids(&app, &alice).is_empty(), "1001 existing users are refused");

    let resp = app.post(
        "/api/chats",
        Some(&alice.token),
        json!({ "is_group": true, "title": "Crowd", "member_ids": ids[..1000] }),
    );
    resp.assert_status(201, "1000 existing users");
    let chat = resp.json();
    assert_chat_shape(&chat, "the crowd");
    assert_eq!(chat["members"].as_array().unwrap().len(), 1001, "the creator and 1000 members");
}

#[test]
fn malformed_ids_in_the_path_are_not_found() {
    let app = spawn_app();
    let alice = app.create_user();
    let chat_id = id_of(&create_group(&app, &alice, "Real", &[]));

    for bad in ["abc", "0", "-1", "1.5", "99999999999999999999", "%31"] {
        for path in [
            format!("/api/chats/{bad}"),
            format!("/api/chats/{bad}/messages"),
            format!("/api/chats/{bad}/events"),
            format!("/api/chats/{chat_id}/messages/{bad}"),
            format!("/chat/messages/{bad}"),
        ] {
            let resp = if path.starts_with(&format!("/api/chats/{chat_id}/")) {
                app.delete(&path, Some(&alice.token))
            } else {
                app.get(&path, Some(&alice.token))
            };
            assert_eq!(resp.status, 404, "{path}:\n{}", resp.describe());
            check_error(&resp, 404, "not_found", None);
        }
    }
}

#[test]
fn a_direct_chat_holds_the_two_users_and_has_no_title() {
    let app = spawn_app();
    let (alice, bob) = (app.create_user(), app.create_user());

    let resp = create_direct(&app, &alice, &bob);

    resp.assert_status(201, "creating a direct chat");
    let chat = resp.json();
    assert_chat_shape(&chat, "the direct chat");
    assert_eq!(chat["is_group"], json!(false), "{chat}");
    assert_eq!(chat["title"], Value::Null, "a direct chat without a title: {chat}");
    assert_eq!(chat["members"].as_array().unwrap().len(), 2, "{chat}");
    assert!(role_of(&chat, &alice).is_some() && role_of(&chat, &bob).is_some(), "{chat}");
    assert_eq!(get_chat(&app, &bob, id_of(&chat))["id"], chat["id"], "bob sees it too");
}

#[test]
fn the_same_direct_chat_from_either_side_answers_200_with_the_existing_chat() {
    let app = spawn_app();
    let (alice, bob) = (app.create_user(), app.create_user());
    let first = create_direct(&app, &alice, &bob);
    first.assert_status(201, "the first direct chat");
    let chat_id = id_of(&first.json());

    for (description, from, to) in [("alice again", &alice, &bob), ("bob towards alice", &bob, &alice)] {
        let resp = create_direct(&app, from, to);
        resp.assert_status(200, description);
        let chat = resp.json();
        assert_chat_shape(&chat, description);
        assert_eq!(id_of(&chat), chat_id, "{description}: the same chat");
    }
    assert_eq!(listed_chat_ids(&app, &alice), vec![chat_id], "alice has one chat");
    assert_eq!(listed_chat_ids(&app, &bob), vec![chat_id], "bob has one chat");
}

#[test]
fn a_direct_chat_may_carry_a_title() {
    let app = spawn_app();
    let (alice, bob) = (app.create_user(), app.create_user());

    let resp =
        app.post("/api/chats", Some(&alice.token), json!({ "is_group": false, "title": "Us", "member_ids": [bob.id] }));

    resp.assert_status(201, "a direct chat with a title");
    assert_eq!(resp.json()["title"], json!("Us"), "{resp:?}");
}

#[test]
fn a_direct_chat_needs_exactly_one_other_existing_user() {
    let app = spawn_app();
    let (alice, bob, carol) = (app.create_user(), app.create_user(), app.create_user());
    let cases: Vec<(&str, Value)> = vec![
        ("no ids", json!([])),
        ("two other users", json!([bob.id, carol.id])),
        ("the caller's own id", json!([alice.id])),
        ("an unknown id", json!([NO_SUCH_CHAT])),
        ("a string id", json!([bob.id.to_string()])),
        ("missing", Value::Null),
    ];

    for (description, member_ids) in cases {
        let mut body = json!({ "is_group": false });
        if !member_ids.is_null() {
            body["member_ids"] = member_ids;
        }
        let resp = app.post("/api/chats", Some(&alice.token), body);
        assert_eq!(resp.status, 400, "direct chat with {description}: expected 400:\n{}", resp.describe());
        check_error(&resp, 400, "invalid_request", Some("member_ids"));
    }
    assert!(listed_chat_ids(&app, &alice).is_empty(), "nothing was created");
}

#[test]
fn is_group_must_be_a_boolean() {
    let app = spawn_app();
    let (alice, bob) = (app.create_user(), app.create_user());

    for (description, body) in [
        ("missing", json!({ "title": "x", "member_ids": [bob.id] })),
        ("a string", json!({ "is_group": "true", "title": "x", "member_ids": [bob.id] })),
    ] {
        let resp = app.post("/api/chats", Some(&alice.token), body);
        assert_eq!(resp.status, 400, "is_group {description}:\n{}", resp.describe());
        check_error(&resp, 400, "invalid_request", Some("is_group"));
    }
}

#[test]
fn two_users_creating_their_direct_chat_at_the_same_moment_get_one_chat() {
    let app = spawn_app();

    for round in 0..6 {
        let (alice, bob) = (app.create_user(), app.create_user());
        let barrier = Barrier::new(2);
        let (from_alice, from_bob) = std::thread::scope(|scope| {
            let a = scope.spawn(|| {
                barrier.wait();
                create_direct(&app, &alice, &bob)
            });
            let b = scope.spawn(|| {
                barrier.wait();
                create_direct(&app, &bob, &alice)
            });
            (a.join().unwrap(), b.join().unwrap())
        });

        let mut statuses = [from_alice.status, from_bob.status];
        statuses.sort_unstable();
        assert_eq!(
            statuses,
            [200, 201],
            "round {round}: one creates, the other finds it:\n{}\n---\n{}",
            from_alice.describe(),
            from_bob.describe()
        );
        assert_eq!(id_of(&from_alice.json()), id_of(&from_bob.json()), "round {round}: one chat id");
        assert_eq!(listed_chat_ids(&app, &alice).len(), 1, "round {round}: alice has one chat");
        assert_eq!(listed_chat_ids(&app, &bob).len(), 1, "round {round}: bob has one chat");
    }
}

#[test]
fn chats_are_listed_with_the_most_recent_activity_first() {
    let app = spawn_app();
    let (alice, bob, carol) = (app.create_user(), app.create_user(), app.create_user());
    let older = id_of(&create_group(&app, &alice, "Older", &[&bob]));
    let newer = id_of(&create_group(&app, &alice, "Newer", &[&bob]));
    let direct = create_direct(&app, &alice, &carol);
    direct.assert_status(201, "the direct chat");
    let direct = id_of(&direct.json());
    let elsewhere = id_of(&create_group(&app, &bob, "Without alice", &[&carol]));
    assert_eq!(listed_chat_ids(&app, &alice), vec![direct, newer, older], "by creation at first");

    send(&app, &bob, older, "bump");
    assert_eq!(listed_chat_ids(&app, &alice), vec![older, direct, newer], "a message moves a chat first");

    send(&app, &carol, direct, "hello");
    assert_eq!(listed_chat_ids(&app, &alice), vec![direct, older, newer], "and again");
    assert_eq!(listed_chat_ids(&app, &bob), vec![older, elsewhere, newer], "bob's own list");

    let resp = app.get("/api/chats", Some(&alice.token));
    for chat in resp.json()["chats"].as_array().unwrap() {
        assert_chat_shape(chat, "a listed chat");
    }
}

/// Sends the requests an outsider could try on `chat_id`.
fn outsider_requests(
    app: &TestApp,
    outsider: &TestUser,
    chat_id: i64,
    some_member: i64,
) -> Vec<(String, crate::support::Resp)> {
    let token = Some(outsider.token.as_str());
    vec![
        ("GET chat".to_string(), app.get(&format!("/api/chats/{chat_id}"), token)),
        ("PATCH chat".to_string(), app.patch(&format!("/api/chats/{chat_id}"), token, json!({ "title": "Mine now" }))),
        (
            "POST members".to_string(),
            app.post(&format!("/api/chats/{chat_id}/members"), token, json!({ "user_id": outsider.id })),
        ),
        ("DELETE members".to_string(), app.delete(&format!("/api/chats/{chat_id}/members/{some_member}"), token)),
    ]
}

#[test]
fn someone_elses_chat_answers_exactly_like_a_chat_that_does_not_exist() {
    let app = spawn_app();
    let (alice, bob, mallory) = (app.create_user(), app.create_user(), app.create_user());
    let chat = create_group(&app, &alice, "Private", &[&bob]);
    let chat_id = id_of(&chat);

    let theirs = outsider_requests(&app, &mallory, chat_id, bob.id);
    let missing = outsider_requests(&app, &mallory, NO_SUCH_CHAT, bob.id);

    for ((what, resp), (_, missing)) in theirs.iter().zip(&missing) {
        check_error(resp, 404, "not_found", None);
        check_error(missing, 404, "not_found", None);
        assert_eq!(resp.json(), missing.json(), "{what}: someone else's chat and no chat differ");
    }
    let after = get_chat(&app, &alice, chat_id);
    assert_eq!(after["title"], json!("Private"), "the title is untouched");
    assert_eq!(after["members"], chat["members"], "the members are untouched");
}

#[test]
fn only_the_owner_renames_a_group() {
    let app = spawn_app();
    let (alice, bob) = (app.create_user(), app.create_user());
    let chat_id = id_of(&create_group(&app, &alice, "Before", &[&bob]));
    let path = format!("/api/chats/{chat_id}");

    let by_member = app.patch(&path, Some(&bob.token), json!({ "title": "By bob" }));
    check_error(&by_member, 403, "forbidden", None);

    let by_owner = app.patch(&path, Some(&alice.token), json!({ "title": "After" }));
    by_owner.assert_status(200, "the owner renames");
    let chat = by_owner.json();
    assert_chat_shape(&chat, "the renamed chat");
    assert_eq!(chat["title"], json!("After"), "{chat}");
    assert_eq!(get_chat(&app, &bob, chat_id)["title"], json!("After"), "bob sees the new title");
}

#[test]
fn a_new_title_is_checked_like_a_new_groups() {
    let app = spawn_app();
    let alice = app.create_user();
    let chat_id = id_of(&create_group(&app, &alice, "Kept", &[]));
    let path = format!("/api/chats/{chat_id}");

    for (description, body) in [
        ("an empty title", json!({ "title": "" })),
        ("101 characters", json!({ "title": repeat("é", 101) })),
        ("a number", json!({ "title": 7 })),
        ("a missing title", json!({})),
    ] {
        let resp = app.patch(&path, Some(&alice.token), body);
        assert_eq!(resp.status, 400, "{description}:\n{}", resp.describe());
        check_error(&resp, 400, "invalid_request", Some("title"));
    }
    assert_eq!(get_chat(&app, &alice, chat_id)["title"], json!("Kept"), "nothing changed");
    let resp = app.patch(&path, Some(&alice.token), json!({ "title": repeat("é", 100) }));
    resp.assert_status(200, "100 characters");
}

#[test]
fn a_direct_chat_cannot_be_renamed_or_given_members() {
    let app = spawn_app();
    let (alice, bob, carol) = (app.create_user(), app.create_user(), app.create_user());
    let direct = create_direct(&app, &alice, &bob);
    direct.assert_status(201, "the direct chat");
    let chat_id = id_of(&direct.json());

    // The contract says "group only" without naming the status: 400 or 403 are both fair.
    for user in [&alice, &bob] {
        let rename = app.patch(&format!("/api/chats/{chat_id}"), Some(&user.token), json!({ "title": "Ours" }));
        assert!(matches!(rename.status, 400 | 403), "{} renames a direct chat:\n{}", user.username, rename.describe());
        let code = if rename.status == 400 { "invalid_request" } else { "forbidden" };
        let body = rename.json();
        assert_eq!(body["error"]["code"], json!(code), "{body}");

        let add = app.post(&format!("/api/chats/{chat_id}/members"), Some(&user.token), json!({ "user_id": carol.id }));
        assert!(matches!(add.status, 400 | 403), "{} adds to a direct chat:\n{}", user.username, add.describe());
    }
    let chat = get_chat(&app, &alice, chat_id);
    assert_eq!(chat["title"], Value::Null, "{chat}");
    assert_eq!(chat["members"].as_array().unwrap().len(), 2, "{chat}");
    assert!(listed_chat_ids(&app, &carol).is_empty(), "carol was not added");
}

#[test]
fn only_the_owner_adds_members_and_adding_one_twice_changes_nothing() {
    let app = spawn_app();
    let (alice, bob, carol, dave) = (app.create_user(), app.create_user(), app.create_user(), app.create_user());
    let chat_id = id_of(&create_group(&app, &alice, "Team", &[&bob]));
    let path = format!("/api/chats/{chat_id}/members");

    let by_member = app.post(&path, Some(&bob.token), json!({ "user_id": dave.id }));
    check_error(&by_member, 403, "forbidden", None);
    check_error(&app.get(&format!("/api/chats/{chat_id}"), Some(&dave.token)), 404, "not_found", None);

    let added = app.post(&path, Some(&alice.token), json!({ "user_id": carol.id }));
    added.assert_status(200, "the owner adds carol");
    let chat = added.json();
    assert_chat_shape(&chat, "the chat after adding");
    assert_eq!(role_of(&chat, &carol).as_deref(), Some("member"), "{chat}");
    assert_eq!(get_chat(&app, &carol, chat_id)["id"], json!(chat_id), "carol now sees the chat");

    let again = app.post(&path, Some(&alice.token), json!({ "user_id": carol.id }));
    again.assert_status(200, "adding carol again");
    let chat = again.json();
    assert_eq!(chat["members"].as_array().unwrap().len(), 3, "carol is listed once: {chat}");
    assert_eq!(role_of(&chat, &carol).as_deref(), Some("member"), "{chat}");

    let owner_again = app.post(&path, Some(&alice.token), json!({ "user_id": alice.id }));
    owner_again.assert_status(200, "adding the owner, already a member");
    assert_eq!(role_of(&owner_again.json(), &alice).as_deref(), Some("owner"), "still the owner");

    for (description, body) in [
        ("an unknown user", json!({ "user_id": NO_SUCH_CHAT })),
        ("a string id", json!({ "user_id": dave.id.to_string() })),
        ("no user_id", json!({})),
    ] {
        let resp = app.post(&path, Some(&alice.token), body);
        assert_eq!(resp.status, 400, "adding {description}:\n{}", resp.describe());
        check_error(&resp, 400, "invalid_request", Some("user_id"));
    }
    assert_eq!(get_chat(&app, &alice, chat_id)["members"].as_array().unwrap().len(), 3);
}

#[test]
fn the_owner_removes_anyone_and_a_member_removes_only_itself() {
    let app = spawn_app();
    let (alice, bob, carol, dave) = (app.create_user(), app.create_user(), app.create_user(), app.create_user());
    let chat_id = id_of(&create_group(&app, &alice, "Shrinking", &[&bob, &carol, &dave]));
    let remove = |by: &TestUser, who: &TestUser| {
        app.delete(&format!("/api/chats/{chat_id}/members/{}", who.id), Some(&by.token))
    };

    check_error(&remove(&carol, &dave), 403, "forbidden", None);
    check_error(&remove(&carol, &alice), 403, "forbidden", None);

    let resp = remove(&alice, &bob);
    resp.assert_status(204, "the owner removes bob");
    assert!(resp.body.is_empty(), "a 204 has no body: {resp:?}");
    let resp = remove(&carol, &carol);
    resp.assert_status(204, "carol leaves");

    for gone in [&bob, &carol] {
        let resp = app.get(&format!("/api/chats/{chat_id}"), Some(&gone.token));
        check_error(&resp, 404, "not_found", None);
        assert!(listed_chat_ids(&app, gone).is_empty(), "{} no longer lists the chat", gone.username);
    }
    let chat = get_chat(&app, &dave, chat_id);
    let mut ids: Vec<i64> = chat["members"].as_array().unwrap().iter().map(|m| m["id"].as_i64().unwrap()).collect();
    ids.sort_unstable();
    let mut want = vec![alice.id, dave.id];
    want.sort_unstable();
    assert_eq!(ids, want, "alice and dave remain: {chat}");
}

#[test]
fn when_the_owner_leaves_the_longest_standing_member_becomes_owner() {
    let app = spawn_app();
    let (alice, bob, carol) = (app.create_user(), app.create_user(), app.create_user());
    // Carol joins before bob although bob's id is smaller: ownership follows seniority, not ids.
    let chat_id = id_of(&create_group(&app, &alice, "Handover", &[]));
    let add = |user: &TestUser| {
        app.post(&format!("/api/chats/{chat_id}/members"), Some(&alice.token), json!({ "user_id": user.id }))
            .assert_status(200, &format!("adding {}", user.username))
            .clone()
    };
    add(&carol);
    add(&bob);

    let resp = app.delete(&format!("/api/chats/{chat_id}/members/{}", alice.id), Some(&alice.token));
    resp.assert_status(204, "the owner leaves");

    check_error(&app.get(&format!("/api/chats/{chat_id}"), Some(&alice.token)), 404, "not_found", None);
    let chat = get_chat(&app, &bob, chat_id);
    assert_eq!(role_of(&chat, &carol).as_deref(), Some("owner"), "carol, the first added: {chat}");
    assert_eq!(role_of(&chat, &bob).as_deref(), Some("member"), "{chat}");
    assert_eq!(role_of(&chat, &alice), None, "{chat}");

    let by_bob = app.patch(&format!("/api/chats/{chat_id}"), Some(&bob.token), json!({ "title": "Bob's" }));
    check_error(&by_bob, 403, "forbidden", None);
    let by_carol = app.patch(&format!("/api/chats/{chat_id}"), Some(&carol.token), json!({ "title": "Carol's" }));
    by_carol.assert_status(200, "the new owner renames");
}

#[test]
fn chat_routes_require_a_valid_token() {
    let app = spawn_app();
    let alice = app.create_user();
    let chat_id = id_of(&create_group(&app, &alice, "Locked", &[]));
    let body = json!({ "title": "x", "is_group": true, "member_ids": [], "content": "x", "user_id": 1, "seq": 1 });
    let routes: Vec<(&str, String)> = vec![
        ("POST", "/api/chats".to_string()),
        ("GET", "/api/chats".to_string()),
        ("GET", format!("/api/chats/{chat_id}")),
        ("PATCH", format!("/api/chats/{chat_id}")),
        ("POST", format!("/api/chats/{chat_id}/members")),
        ("DELETE", format!("/api/chats/{chat_id}/members/{}", alice.id)),
        ("POST", format!("/api/chats/{chat_id}/messages")),
        ("GET", format!("/api/chats/{chat_id}/messages")),
        ("PATCH", format!("/api/chats/{chat_id}/messages/1")),
        ("DELETE", format!("/api/chats/{chat_id}/messages/1")),
        ("POST", format!("/api/chats/{chat_id}/read")),
        ("GET", format!("/api/chats/{chat_id}/events")),
    ];

    for (method, path) in &routes {
        for (description, token) in [("no token", None), ("a made-up token", Some("not-a-real-token"))] {
            let resp = match *method {
                "GET" => app.get(path, token),
                "DELETE" => app.delete(path, token),
                "PATCH" => app.patch(path, token, body.clone()),
                _ => app.post(path, token, body.clone()),
            };
            assert_eq!(resp.status, 401, "{method} {path} with {description}:\n{}", resp.describe());
            check_error(&resp, 401, "unauthorized", None);
        }
    }
    assert_eq!(get_chat(&app, &alice, chat_id)["title"], json!("Locked"), "nothing changed");
}

#[test]
fn a_member_removed_while_sending_never_posts_after_its_removal() {
    let app = spawn_app();
    let alice = app.create_user();
    for round in 0..8 {
        let bob = app.create_user();
        let chat_id = id_of(&create_group(&app, &alice, "Leaving", &[&bob]));
        let removed = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                // Bob keeps sending until his sends are refused.
                for i in 0..500 {
                    let resp =
                        crate::messages::post_message(&app, &bob, chat_id, json!({ "content": format!("m{i}") }));
                    if resp.status == 404 {
                        return;
                    }
                    assert_eq!(resp.status, 201, "round {round}: bob's send {i}:\n{}", resp.describe());
                    if removed.load(std::sync::atomic::Ordering::SeqCst) && i > 200 {
                        return;
                    }
                }
            });
            std::thread::sleep(std::time::Duration::from_millis(20 + round * 5));
            let resp = app.delete(&format!("/api/chats/{chat_id}/members/{}", bob.id), Some(&alice.token));
            resp.assert_status(204, "alice removes bob");
            removed.store(true, std::sync::atomic::Ordering::SeqCst);
        });

        let events = crate::events::all_events(&app, &alice, chat_id);
        let removal = events
            .iter()
            .find(|e| e["type"] == "member.removed" && e["member"]["id"] == json!(bob.id))
            .unwrap_or_else(|| panic!("round {round}: no member.removed for bob"))["seq"]
            .as_i64()
            .unwrap();
        let late: Vec<&Value> = events
            .iter()
            .filter(|e| {
                e["type"] == "message.created" && e["actor_id"] == json!(bob.id) && e["seq"].as_i64() > Some(removal)
            })
            .collect();
        assert!(late.is_empty(), "round {round}: bob posted after his removal at seq {removal}: {late:?}");
    }
}

#[test]
fn leaving_twice_at_once_removes_the_member_once() {
    let app = spawn_app();
    let alice = app.create_user();
    for round in 0..6 {
        let bob = app.create_user();
        let chat_id = id_of(&create_group(&app, &alice, "Double click", &[&bob]));
        let barrier = Barrier::new(2);
        let statuses: Vec<u16> = std::thread::scope(|scope| {
            let leaves: Vec<_> = (0..2)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        app.delete(&format!("/api/chats/{chat_id}/members/{}", bob.id), Some(&bob.token)).status
                    })
                })
                .collect();
            leaves.into_iter().map(|leave| leave.join().unwrap()).collect()
        });

        let mut sorted = statuses.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            vec![204, 404],
            "round {round}: one leave succeeds, the other finds no member: {statuses:?}"
        );
        let removals = crate::events::all_events(&app, &alice, chat_id)
            .iter()
            .filter(|e| e["type"] == "member.removed" && e["member"]["id"] == json!(bob.id))
            .count();
        assert_eq!(removals, 1, "round {round}: one member.removed event");
    }
}

#[test]
fn the_owner_and_its_heir_leaving_at_once_both_succeed() {
    let app = spawn_app();
    for round in 0..6 {
        let (owner, heir, third) = (app.create_user(), app.create_user(), app.create_user());
        let chat_id = id_of(&create_group(&app, &owner, "Exodus", &[&heir, &third]));
        let barrier = Barrier::new(2);
        let statuses: Vec<u16> = std::thread::scope(|scope| {
            let leaves: Vec<_> = [&owner, &heir]
                .into_iter()
                .map(|user| {
                    let barrier = &barrier;
                    let app = &app;
                    scope.spawn(move || {
                        barrier.wait();
                        app.delete(&format!("/api/chats/{chat_id}/members/{}", user.id), Some(&user.token)).status
                    })
                })
                .collect();
            leaves.into_iter().map(|leave| leave.join().unwrap()).collect()
        });

        assert_eq!(statuses, vec![204, 204], "round {round}: both leave, neither hits a deadlock");
        let chat = get_chat(&app, &third, chat_id);
        let members = chat["members"].as_array().unwrap();
        assert_eq!(members.len(), 1, "round {round}: only the third member is left: {chat}");
        assert_eq!(role_of(&chat, &third).as_deref(), Some("owner"), "round {round}: and owns the group: {chat}");
    }
}
