//! The limits kept per client address and per user (docs/api.md, "Limits"):
//! open WebSockets per user and per address, handshakes in flight per
//! address, frames per connection, one message budget per user shared by
//! REST and WebSocket sends, and sign-ups per address.
//!
//! Each test sets the limit it checks low, on a server of its own, and
//! simulates client addresses with `X-Forwarded-For` behind
//! `TRUSTED_PROXIES=127.0.0.1`.

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value};
use tungstenite::Message;

use crate::support::ws::{assert_refused, connect_bearer, try_connect, Incoming, WsClient};
use crate::support::{check_error, request, spawn_app_with, wait_for, Resp, TestApp, TestUser};

const SOON: Duration = Duration::from_secs(10);
const PASSWORD: &str = "correct horse battery";

/// Opens `/ws` as `user`, from `client` as a trusted proxy says, and waits for `ready`.
fn connect_from(app: &TestApp, user: &TestUser, client: &str) -> Result<WsClient, crate::support::ws::Refused> {
    let authorization = format!("Bearer {}", user.token);
    let mut ws = try_connect(app.ws_addr, "/ws", &[("Authorization", &authorization), ("X-Forwarded-For", client)])?;
    ws.recv_until(SOON, "ready", |frame| frame["type"] == "ready");
    Ok(ws)
}

/// Asserts a handshake refused with `429 rate_limited` and a `Retry-After`.
fn assert_no_place(result: Result<WsClient, crate::support::ws::Refused>, what: &str) {
    assert_refused(result, what, &[429]);
}

#[test]
fn websockets_past_ws_max_per_user_are_refused_with_429() {
    let app = spawn_app_with(&[("WS_MAX_PER_USER", "2"), ("TRUSTED_PROXIES", "127.0.0.1")]);
    let (alice, bob) = (app.create_user(), app.create_user());
    let first = connect_from(&app, &alice, "198.51.100.1").expect("alice's first socket");
    let _second = connect_from(&app, &alice, "198.51.100.2").expect("alice's second socket");

    assert_no_place(connect_from(&app, &alice, "198.51.100.3"), "alice's third socket, from a third address");
    let _bob = connect_from(&app, &bob, "198.51.100.1").expect("bob has places of his own");
    first.close();
    wait_for("alice's closed socket to give its place back", SOON, || connect_from(&app, &alice, "198.51.100.3").ok());
}

#[test]
fn websockets_past_ws_max_per_address_are_refused_with_429() {
    let app = spawn_app_with(&[("WS_MAX_PER_ADDRESS", "2"), ("TRUSTED_PROXIES", "127.0.0.1")]);
    let users: Vec<TestUser> = (0..4).map(|_| app.create_user()).collect();
    let _first = connect_from(&app, &users[0], "203.0.113.5").expect("the first socket from the address");
    let _second = connect_from(&app, &users[1], "203.0.113.5").expect("the second socket from the address");

    assert_no_place(connect_from(&app, &users[2], "203.0.113.5"), "a third socket from one address");
    connect_from(&app, &users[2], "203.0.113.6").expect("the same user from another address");
}

#[test]
fn handshakes_in_flight_past_the_per_address_limit_are_closed_at_once() {
    let app = spawn_app_with(&[("WS_HANDSHAKES_PER_ADDRESS", "2")]);
    let user = app.create_user();
    // Two connections that never finish their handshake hold both places.
    let silent: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(app.ws_addr).expect("connect")).collect();
    wait_for("the silent connections to be accepted", SOON, || {
        // A third connection is closed without an answer while they wait.
        let mut third = TcpStream::connect(app.ws_addr).ok()?;
        third.set_read_timeout(Some(Duration::from_secs(2))).expect("a read timeout");
        let mut byte = [0u8; 1];
        let closed = match third.read(&mut byte) {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        };
        closed.then_some(())
    });

    drop(silent);

    wait_for("a handshake to go through once the silent ones are gone", SOON, || {
        try_connect(app.ws_addr, "/ws", &[("Authorization", &format!("Bearer {}", user.token))]).ok()
    });
}

#[test]
fn frames_past_a_connections_rate_get_rate_limited_error_frames() {
    let app = spawn_app_with(&[("WS_FRAME_RATE", "1"), ("WS_FRAME_BURST", "5")]);
    let user = app.create_user();
    let mut ws = connect_bearer(app.ws_addr, &user.token);
    ws.recv_until(SOON, "ready", |frame| frame["type"] == "ready");

    for idx in 0..10 {
        ws.send_json(&json!({ "type": "ping", "client_id": format!("p{idx}") }));
    }

    let (mut pongs, mut limited) = (0, 0);
    while pongs + limited < 10 {
        let frame = ws.recv(SOON, "an answer to each of the 10 pings");
        match (frame["type"].as_str(), frame["code"].as_str()) {
            (Some("pong"), _) => pongs += 1,
            (Some("error"), Some("rate_limited")) => {
                // The refused frame's client_id comes back, so a client knows which one it was.
                assert!(frame["client_id"].as_str().is_some_and(|id| id.starts_with('p')), "{frame}");
                limited += 1
            }
            _ => panic!("unexpected frame {frame}"),
        }
    }
    assert!((5..=6).contains(&pongs), "the burst of 5 (and maybe one refilled) are answered: {pongs} pongs");
    assert_eq!(limited, 10 - pongs, "the rest get rate_limited");
    wait_for("a token to refill", SOON, || {
        ws.send_json(&json!({ "type": "ping" }));
        (ws.recv(SOON, "the answer to one more ping")["type"] == "pong").then_some(())
    });
}

#[test]
fn pings_past_a_connections_rate_close_it_with_1008() {
    let app = spawn_app_with(&[("WS_FRAME_RATE", "1"), ("WS_FRAME_BURST", "5")]);
    let user = app.create_user();
    let mut ws = connect_bearer(app.ws_addr, &user.token);
    ws.recv_until(SOON, "ready", |frame| frame["type"] == "ready");
    // Pongs are not counted: they answer the server's own pings.
    for _ in 0..20 {
        ws.send(Message::Pong(b"unasked".to_vec().into())).expect("send a pong");
    }
    ws.send_json(&json!({ "type": "ping" }));
    assert_eq!(ws.recv(SOON, "the answer to a ping frame after 20 pongs")["type"], "pong");

    for _ in 0..20 {
        if ws.send(Message::Ping(b"flood".to_vec().into())).is_err() {
            break;
        }
    }

    let closed = ws.expect_close(SOON, "a flood of WebSocket pings");
    assert_eq!(closed.code, Some(1008), "closed as a policy violation: {closed:?}");
}

/// `POST /api/chats/{chat_id}/messages` as `user`.
fn post_message(app: &TestApp, user: &TestUser, chat_id: i64, content: &str) -> Resp {
    app.post(&format!("/api/chats/{chat_id}/messages"), Some(&user.token), json!({ "content": content }))
}

#[test]
fn rest_and_websocket_sends_share_one_budget_per_user() {
    let app = spawn_app_with(&[("MESSAGE_RATE", "1"), ("MESSAGE_BURST", "3")]);
    let (alice, bob) = (app.create_user(), app.create_user());
    let chat =
        app.post("/api/chats", Some(&alice.token), json!({ "is_group": true, "title": "t", "member_ids": [bob.id] }));
    let chat_id = chat.assert_status(201, "create a chat").json()["id"].as_i64().unwrap();
    let mut ws = connect_bearer(app.ws_addr, &alice.token);
    ws.recv_until(SOON, "ready", |frame| frame["type"] == "ready");

    post_message(&app, &alice, chat_id, "one").assert_status(201, "the first send, over REST");
    post_message(&app, &alice, chat_id, "two").assert_status(201, "the second send, over REST");
    ws.send_json(&json!({ "type": "send", "chat_id": chat_id, "content": "three", "client_id": "c3" }));
    let ack = ws.recv_until(SOON, "the third send's answer", |f| f["type"] == "ack" || f["type"] == "error");
    assert_eq!(ack["type"], "ack", "the third send, over WebSocket, is within the burst: {ack}");

    let resp = post_message(&app, &alice, chat_id, "four");
    check_error(&resp, 429, "rate_limited", None);
    // A retry of a stored message spends nothing: it is answered with that message.
    let retry = app.post(
        &format!("/api/chats/{chat_id}/messages"),
        Some(&alice.token),
        json!({ "content": "three", "client_id": "c3" }),
    );
    assert_eq!(retry.assert_status(200, "a retry with the budget spent").json()["content"], "three");
    ws.send_json(&json!({ "type": "send", "chat_id": chat_id, "content": "five", "client_id": "c5" }));
    let refused = ws.recv_until(SOON, "the fifth send's answer", |f| f["type"] == "ack" || f["type"] == "error");
    let want = json!({ "type": "error", "code": "rate_limited", "client_id": "c5" });
    assert_eq!(
        (&refused["type"], &refused["code"], &refused["client_id"]),
        (&want["type"], &want["code"], &want["client_id"]),
        "{refused}"
    );
    post_message(&app, &bob, chat_id, "bob's own budget").assert_status(201, "another user");
    let stored = app.get(&format!("/api/chats/{chat_id}/messages"), Some(&bob.token)).json();
    let contents: Vec<&Value> = stored["messages"].as_array().unwrap().iter().map(|m| &m["content"]).collect();
    assert_eq!(contents, [&json!("one"), &json!("two"), &json!("three"), &json!("bob's own budget")]);
}

/// `POST /api/users` as a client at `client`, through a trusted proxy.
fn signup_from(app: &TestApp, client: &str, username: &str) -> Resp {
    let body = json!({ "username": username, "email": format!("{username}@example.com"), "password": PASSWORD });
    let headers = [("Content-Type", "application/json"), ("X-Forwarded-For", client)];
    request(app.http_addr, "POST", "/api/users", &headers, body.to_string().as_bytes())
}

#[test]
fn sign_ups_past_the_hourly_rate_from_one_address_get_429() {
    let app = spawn_app_with(&[("SIGNUP_RATE", "3"), ("TRUSTED_PROXIES", "127.0.0.1")]);

    for idx in 0..3 {
        signup_from(&app, "203.0.113.1", &format!("user{idx}")).assert_status(201, &format!("sign-up {idx}"));
    }
    let resp = signup_from(&app, "203.0.113.1", "user3");

    check_error(&resp, 429, "rate_limited", None);
    let retry_after: u64 = resp.header("Retry-After").unwrap().parse().unwrap();
    assert!((1..=1200).contains(&retry_after), "a twentieth of an hour at 3 an hour: {retry_after}");
    signup_from(&app, "203.0.113.2", "user3").assert_status(201, "a sign-up from another address");
    let seed = request(
        app.http_addr,
        "POST",
        "/user/signup",
        &[("Content-Type", "application/json"), ("X-Forwarded-For", "203.0.113.1")],
        json!({ "username": "seeduser", "email": "seed@example.com", "password": PASSWORD }).to_string().as_bytes(),
    );
    check_error(&seed, 429, "rate_limited", None);
}

#[test]
fn rate_limits_off_lifts_every_per_address_and_per_user_limit() {
    let app = spawn_app_with(&[
        ("RATE_LIMITS", "off"),
        ("WS_MAX_PER_USER", "1"),
        ("WS_MAX_PER_ADDRESS", "1"),
        ("WS_FRAME_RATE", "1"),
        ("WS_FRAME_BURST", "1"),
        ("MESSAGE_RATE", "1"),
        ("MESSAGE_BURST", "1"),
        ("SIGNUP_RATE", "1"),
    ]);
    let alice = app.create_user();
    let _bob = app.create_user();
    let chat = app.post("/api/chats", Some(&alice.token), json!({ "is_group": true, "title": "t", "member_ids": [] }));
    let chat_id = chat.json()["id"].as_i64().unwrap();

    let mut sockets: Vec<WsClient> = (0..3).map(|_| connect_bearer(app.ws_addr, &alice.token)).collect();
    for idx in 0..3 {
        post_message(&app, &alice, chat_id, &format!("m{idx}")).assert_status(201, &format!("send {idx}"));
    }
    let ws = &mut sockets[0];
    ws.recv_until(SOON, "ready", |frame| frame["type"] == "ready");
    for _ in 0..3 {
        ws.send(Message::text(json!({ "type": "ping" }).to_string())).expect("send a ping");
    }
    for idx in 0..3 {
        let frame = ws.recv_until(SOON, "a pong", |f| f["type"] != "event");
        assert_eq!(frame["type"], "pong", "ping {idx}: {frame}");
    }
    assert!(!matches!(ws.next(Duration::from_millis(100)), Incoming::Close(_)));
}
