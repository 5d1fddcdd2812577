//! The server behind a real nginx configured by `docs/deploy/nginx.conf`
//! (issue 13, item 9): the hostile probes of `hostile.rs`, sent through nginx,
//! are each refused by nginx or answered safely, no request hidden in them
//! ever runs, stalled and greedy clients cost nginx and never the server, and
//! the server stays healthy; honest requests, the seed's routes, the web
//! client's files and WebSockets work through nginx; and the server's
//! per-address limits see the client that nginx names in `X-Forwarded-For`.
//!
//! Every test starts its own server (`TRUSTED_PROXIES=127.0.0.1`, nginx's
//! address) and its own nginx (`support/nginx.rs`), which must be installed:
//! without it these tests fail, saying how to install it. Clients at other
//! addresses than nginx's connect from 127.0.0.2 and up.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde_json::json;

use crate::chats::{create_group, id_of};
use crate::hostile::{
    ambiguous_framings, assert_healthy, assert_refused_alone, chunked_over_the_limit, get_declaring,
    keep_alive_clients_together, large_history, long_request_line, oversized_heads, send, send_regardless, trickle,
    unfinished_header_lines, Conn, Framing, ANSWER, CROWD, EXPECT_100_CONTINUE_FOR_10_MB, PAST_2_TO_THE_63, PETABYTE,
    POST_DECLARING_2000_BYTES, POST_WITH_CONNECTION_UPGRADE,
};
use crate::messages::send as send_message;
use crate::realtime::{connect_ready, SOON};
use crate::support::app::PASSWORD;
use crate::support::nginx::{Nginx, INDEX_HTML};
use crate::support::ws::{assert_refused, connect, try_connect_from};
use crate::support::{check_error, connect_from, request_from, spawn_app_with, wait_for, Resp, TestApp, TestUser};

/// How long nginx may take to close a connection it refused or gave up on:
/// its client timeouts (10 s) and its lingering close (5 s without data from
/// the client) are well inside it.
const NGINX_CLOSES: Duration = Duration::from_secs(30);

/// Clients at addresses of their own, as nginx sees them.
const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const VICTIM: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

/// A server that believes nginx's `X-Forwarded-For` (with `vars` besides),
/// nginx in front of it, and a client of the server through nginx. Bind them
/// in this order, so nginx stops before the server.
fn proxied(vars: &[(&str, &str)]) -> (TestApp, Nginx, TestApp) {
    let mut all = vec![("TRUSTED_PROXIES", "127.0.0.1")];
    all.extend_from_slice(vars);
    let app = spawn_app_with(&all);
    let nginx = Nginx::start(&app);
    let via = nginx.client(&app);
    (app, nginx, via)
}

/// Asserts that an honest `GET /healthz` is answered within a second both
/// through nginx and on the server's own port.
fn assert_both_healthy(app: &TestApp, via: &TestApp, after: &str) {
    assert_healthy(via, &format!("{after}, through nginx"));
    assert_healthy(app, &format!("{after}, on the server's port"));
}

/// Whether the server wrote `resp`: every answer of its routes carries an
/// `X-Request-Id`, and nginx's own never do.
fn from_the_server(resp: &Resp) -> bool {
    resp.header("X-Request-Id").is_some()
}

#[test]
fn honest_requests_websockets_and_the_web_client_work_through_nginx() {
    let (_app, nginx, via) = proxied(&[]);

    via.get("/healthz", None).assert_status(200, "GET /healthz through nginx");
    via.get("/readyz", None).assert_status(200, "GET /readyz through nginx");
    via.get("/openapi.json", None).assert_status(200, "GET /openapi.json through nginx");
    let traced = via.raw("GET", "/healthz", &[("X-Request-Id", "trace-42")], b"");
    assert_eq!(traced.header("X-Request-Id"), Some("trace-42"), "the client's request id:\n{}", traced.describe());
    // The API and the seed's routes, sign-up and logins included.
    let (alice, bob) = (via.create_user(), via.create_user());
    let seed_login = via.post("/user/login", None, json!({ "email": alice.email, "password": PASSWORD }));
    seed_login.assert_status(200, "POST /user/login through nginx");
    let chat_id = id_of(&create_group(&via, &alice, "through nginx", &[&bob]));
    via.get("/chat/user", Some(&bob.token)).assert_status(200, "GET /chat/user through nginx");
    let _kept_alive = keep_alive_clients_together(&via, 4 * CROWD);

    // WebSockets through /ws: with a bearer token, and with a ticket.
    let (mut bob_ws, _) = connect_ready(&via, &bob, "bob through nginx");
    let ticket = via.post("/api/ws-tickets", Some(&alice.token), json!({}));
    let ticket = ticket.assert_status(201, "a ticket through nginx").json()["ticket"].as_str().map(str::to_string);
    let ticket = ticket.expect("a ticket string");
    let mut alice_ws = connect(nginx.addr, &format!("/ws?ticket={ticket}"), &[]).named("alice through nginx");
    alice_ws.recv_until(SOON, "the ready frame", |frame| frame["type"] == "ready");
    let message = send_message(&via, &alice, chat_id, "hello through nginx");
    for ws in [&mut bob_ws, &mut alice_ws] {
        ws.recv_until(SOON, "the message sent through nginx", |frame| {
            frame["type"] == "event" && frame["event"]["message"]["id"] == message["id"]
        });
        ws.ping_pong(SOON, "through nginx");
    }

    // The web client at / from the server, other static files from nginx's root, and nothing else of the server's.
    let client = via.get("/", None);
    client.assert_status(200, "GET / through nginx");
    assert!(from_the_server(&client), "GET / through nginx is the server's web client:\n{}", client.describe());
    assert!(client.header("Content-Security-Policy").is_some(), "{}", client.describe());
    // The page's probe: behind nginx, GET /ws is the WebSocket listener's, never the HTTP port's 426.
    let probe = via.get("/ws", None);
    assert_ne!(probe.status, 426, "GET /ws through nginx reached the HTTP port:\n{}", probe.describe());
    let index = via.get("/index.html", None);
    index.assert_status(200, "GET /index.html through nginx");
    assert_eq!(index.text(), INDEX_HTML, "GET /index.html is the static root's");
    let metrics = via.get("/metrics", None);
    check_error(&metrics, 404, "not_found", None);
    assert!(!from_the_server(&metrics), "nginx passed /metrics to the server:\n{}", metrics.describe());
}

/// A sign-up of `username`, a request that runs when sent on its own; hidden
/// in a probe, it must never run.
fn sign_up(username: &str) -> String {
    let body = json!({ "username": username, "email": format!("{username}@example.com"), "password": PASSWORD });
    let body = body.to_string();
    format!(
        "POST /api/users HTTP/1.1\r\nHost: hidden\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Users whose names start with `prefix`.
fn users_named(app: &TestApp, prefix: &str) -> i64 {
    let pattern = format!("{prefix}%");
    app.db().query_one("SELECT count(*) FROM users WHERE username LIKE $1", &[&pattern]).expect("count users").get(0)
}

// See: hostile.rs's framing, length and Expect probes. nginx reads the
// framing itself, refuses what is in doubt with the server's 400 (and lengths
// over client_max_body_size with 413) before any byte reaches the server,
// and sends the server only bodies it has read whole, with a Content-Length.
#[test]
fn framing_that_could_smuggle_a_request_is_refused_by_nginx_and_the_hidden_request_never_runs() {
    let (app, _nginx, via) = proxied(&[]);
    let hidden = sign_up("smuggled");
    let mut probes: Vec<(String, String, u16, &str)> = ambiguous_framings(&hidden)
        .into_iter()
        .map(|Framing { what, request, .. }| (what.to_string(), request, 400, "invalid_request"))
        .collect();
    probes.push(("a chunked body over the limit".into(), chunked_over_the_limit(&hidden), 413, "payload_too_large"));
    probes.push(("a petabyte Content-Length".into(), get_declaring(PETABYTE), 413, "payload_too_large"));
    for length in PAST_2_TO_THE_63 {
        probes.push((format!("Content-Length: {length}"), get_declaring(length), 400, "invalid_request"));
    }
    probes.push(("a GET declaring 100,000 bytes".into(), get_declaring("100000"), 413, "payload_too_large"));
    // The first answer must be the 413, not a 100 Continue.
    let expect = "Expect: 100-continue for 10 MB";
    probes.push((expect.into(), EXPECT_100_CONTINUE_FOR_10_MB.into(), 413, "payload_too_large"));

    for (what, request, status, code) in probes {
        let mut conn = send_regardless(&via, request.as_bytes());

        let resp = assert_refused_alone(&mut conn, status, code, &what, NGINX_CLOSES);
        assert!(!from_the_server(&resp), "{what}: nginx passed it on and the server refused it:\n{}", resp.describe());
    }

    assert_eq!(users_named(&app, "smuggled"), 0, "a sign-up hidden in a refused request ran");
    let mut control = send(&via, &sign_up("smuggled"));
    let resp = control.response(ANSWER).unwrap_or_else(|e| panic!("the hidden sign-up on its own: {e}"));
    resp.assert_status(201, "the hidden sign-up, sent on its own");
    assert_both_healthy(&app, &via, "framing probes");
}

// See: hostile.rs's request line and header probes. Heads over nginx's
// buffers (8 KiB a line, 32 KiB in all) are refused there; nginx has no
// bound on the number of headers, so 101 small ones reach the server, which
// refuses them.
#[test]
fn heads_over_the_servers_limits_are_refused_by_nginx_or_by_the_server() {
    let (app, _nginx, via) = proxied(&[]);

    let mut conn = send_regardless(&via, long_request_line().as_bytes());
    assert_refused_alone(&mut conn, 414, "invalid_request", "a 100 KiB request line", NGINX_CLOSES);
    let mut reached_the_server = Vec::new();
    for (what, request) in oversized_heads() {
        let mut conn = send_regardless(&via, request.as_bytes());

        let resp = conn.response(ANSWER).unwrap_or_else(|e| panic!("{what}: {e}"));
        check_error(&resp, 431, "invalid_request", None);
        // nginx closes the connection after a refusal of its own; the
        // server's it passes on, keeping the client's connection.
        if resp.header("Connection").is_some_and(|value| value.eq_ignore_ascii_case("close")) {
            let after = conn.assert_closed(NGINX_CLOSES, what);
            assert!(after.is_empty(), "{what}: answered more:\n{}", String::from_utf8_lossy(&after));
        } else {
            reached_the_server.push(what);
        }
    }
    assert_eq!(reached_the_server, ["101 headers"], "the heads nginx passed on for the server to refuse");
    // nginx adds X-Forwarded-For: 99 header lines of the client's reach the server's 100.
    let ninety_nine: String = (1..99).map(|idx| format!("X-{idx}: {idx}\r\n")).collect();
    let mut conn = send(&via, &format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{ninety_nine}\r\n"));
    let resp = conn.response(ANSWER).unwrap_or_else(|e| panic!("99 header lines: {e}"));
    resp.assert_status(200, "99 header lines through nginx");
    for (idx, conn) in unfinished_header_lines(&via).iter_mut().enumerate() {
        let what = format!("unfinished 64 MiB header line #{idx}");
        assert_refused_alone(conn, 431, "invalid_request", &what, NGINX_CLOSES);
    }

    assert_both_healthy(&app, &via, "oversized heads");
}

// See: hostile.rs's stalled body, head and upgrade probes. The server takes
// four connections here: were nginx to pass on a request before it has the
// whole of it, the stalled ones alone would take them all, and honest
// requests would get 503. A head trickling in is closed at nginx's
// client_header_timeout, a deadline for the whole head.
#[test]
fn stalled_requests_cost_nginx_and_never_a_server_connection() {
    let (app, nginx, via) = proxied(&[("HTTP_MAX_CONNECTIONS", "4")]);

    let mut stalled: Vec<(String, Conn)> = Vec::new();
    for idx in 0..CROWD {
        stalled.push((format!("GET #{idx} declaring 2,000 bytes"), send(&via, &get_declaring("2000"))));
        stalled.push((format!("POST #{idx} declaring 2,000 bytes"), send(&via, POST_DECLARING_2000_BYTES)));
        stalled.push((format!("head #{idx} never finished"), send(&via, "GET /healthz HTTP/1.1\r\nHost: x\r\n")));
        let trickling = Conn::open(nginx.addr);
        trickle(&trickling, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"X-More: a\r\n");
        stalled.push((format!("head #{idx} trickling in"), trickling));
        stalled.push((format!("connection #{idx} sending nothing"), Conn::open(nginx.addr)));
    }
    let mut answered = Vec::new();
    for idx in 0..CROWD {
        let mut conn = send(&via, POST_WITH_CONNECTION_UPGRADE);
        let resp = conn.response(ANSWER).unwrap_or_else(|e| panic!("POST #{idx} with Connection: upgrade: {e}"));
        check_error(&resp, 400, "invalid_request", Some("login"));
        answered.push(conn);
    }

    assert_both_healthy(&app, &via, "stalled requests");
    // nginx gives up on each within its client timeouts, having answered none.
    for (what, conn) in &mut stalled {
        let got = conn.assert_closed(NGINX_CLOSES, what);
        assert!(!got.starts_with(b"HTTP/1.1 2"), "{what} was answered:\n{}", String::from_utf8_lossy(&got));
    }
}

// See: hostile.rs's pipelining probe. nginx takes each answer from the
// server whole (proxy_buffering) and keeps it for the client, so the only
// worker is free however slowly the client reads.
#[test]
fn a_client_pipelining_large_gets_through_nginx_and_never_reading_holds_no_worker() {
    let (app, _nginx, via) = proxied(&[("WORKERS", "1")]);
    let (request, _) = large_history(&app);

    let conn = send(&via, &request.repeat(300));

    wait_for("the first answers to arrive", ANSWER, || conn.stream.peek(&mut [0; 1]).ok().filter(|n| *n > 0));
    assert_both_healthy(&app, &via, "300 pipelined GETs whose answers are never read");
}

/// `POST /api/sessions` through nginx from `from`, with `headers` besides.
fn login_from(nginx: &Nginx, from: IpAddr, login: &str, password: &str, headers: &[(&str, &str)]) -> Resp {
    let body = json!({ "login": login, "password": password }).to_string();
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    request_from(from, nginx.addr, "POST", "/api/sessions", &all, body.as_bytes())
}

/// `/ws` through nginx as `user`, from `from`, once `ready`.
fn websocket_from(nginx: &Nginx, from: IpAddr, user: &TestUser) -> Result<crate::support::ws::WsClient, String> {
    let authorization = format!("Bearer {}", user.token);
    let mut ws = try_connect_from(from, nginx.addr, "/ws", &[("Authorization", &authorization)])
        .map_err(|refused| format!("{refused:?}"))?;
    ws.recv_until(SOON, "the ready frame", |frame| frame["type"] == "ready");
    Ok(ws)
}

// See: the hardening issue, the failed-login row: behind a reverse proxy every
// user shared one address, so one attacker locked everyone out. Without
// nginx's X-Forwarded-For (or with it ignored) both clients below would be
// nginx's 127.0.0.1 to the server, and the victim would be refused too.
#[test]
fn the_servers_per_address_limits_see_the_client_that_nginx_names() {
    let (app, nginx, _via) = proxied(&[("WS_MAX_PER_ADDRESS", "1")]);
    let victim = app.create_user();

    for attempt in 1..=10 {
        let resp = login_from(&nginx, ATTACKER, &victim.username, &format!("guess {attempt}"), &[]);
        assert_eq!(resp.status, 401, "the attacker's guess {attempt}:\n{}", resp.describe());
    }
    let refused = login_from(&nginx, ATTACKER, &victim.username, PASSWORD, &[]);
    check_error(&refused, 429, "rate_limited", None);
    assert!(from_the_server(&refused), "the server's login limit refused, not nginx:\n{}", refused.describe());
    // nginx replaces the client's own X-Forwarded-For: a forged one changes nothing.
    let forged = login_from(&nginx, ATTACKER, &victim.username, PASSWORD, &[("X-Forwarded-For", "198.51.100.7")]);
    check_error(&forged, 429, "rate_limited", None);
    login_from(&nginx, VICTIM, &victim.username, PASSWORD, &[]).assert_status(201, "the victim, elsewhere");

    // The same for WebSockets, through /ws (WS_MAX_PER_ADDRESS=1).
    let (first, second) = (app.create_user(), app.create_user());
    let _held = websocket_from(&nginx, ATTACKER, &first).expect("the first WebSocket from the attacker's address");
    let again =
        try_connect_from(ATTACKER, nginx.addr, "/ws", &[("Authorization", &format!("Bearer {}", second.token))]);
    assert_refused(again, "a second WebSocket from the attacker's address", &[429]);
    websocket_from(&nginx, VICTIM, &second).expect("a WebSocket from the victim's address");
}

// nginx's own per-address limits (limit_conn, limit_req), answered with the
// contract's 429. The numbers are read from the configuration.
#[test]
fn nginx_bounds_requests_in_progress_and_password_posts_per_address() {
    let (app, nginx, via) = proxied(&[]);
    let in_progress = nginx.number("limit_conn api_conn", "");
    let burst = nginx.number("limit_req zone=api_req", "burst");
    assert!(in_progress <= burst, "limit_conn api_conn ({in_progress}) must fit in api_req's burst ({burst})");
    let healthz_from = |from| request_from(from, nginx.addr, "GET", "/healthz", &[], b"");

    // Bodies that never arrive each hold a place while nginx waits for them.
    let held: Vec<Conn> = (0..in_progress)
        .map(|idx| {
            let stream = connect_from(ATTACKER, nginx.addr).unwrap_or_else(|e| panic!("stalled body #{idx}: {e}"));
            let mut conn = Conn::on(stream);
            conn.send(get_declaring("2000").as_bytes()).expect("send a head declaring a body");
            conn
        })
        .collect();
    let refused = wait_for("nginx to hold every stalled body", ANSWER, || {
        Some(healthz_from(ATTACKER)).filter(|resp| resp.status == 429)
    });
    check_error(&refused, 429, "rate_limited", None);
    assert!(!from_the_server(&refused), "nginx refused, not the server:\n{}", refused.describe());
    healthz_from(VICTIM).assert_status(200, "another address, meanwhile");
    drop(held);
    wait_for("the places to come free", ANSWER, || Some(healthz_from(ATTACKER)).filter(|resp| resp.status == 200));

    // Logins: a burst passes to the server (which answers 401), then nginx refuses.
    let auth_burst = nginx.number("limit_req zone=auth_req", "burst");
    for attempt in 0..=auth_burst {
        let resp = login_from(&nginx, VICTIM, &format!("nobody{attempt}"), "wrong password!", &[]);
        assert_eq!(resp.status, 401, "login {attempt} of a burst of {auth_burst}:\n{}", resp.describe());
    }
    let limited = (auth_burst + 1..auth_burst + 80)
        .map(|attempt| login_from(&nginx, VICTIM, &format!("nobody{attempt}"), "wrong password!", &[]))
        .find(|resp| resp.status != 401)
        .expect("nginx to refuse logins past the burst");
    check_error(&limited, 429, "rate_limited", None);
    assert!(!from_the_server(&limited), "nginx refused the login, not the server:\n{}", limited.describe());
    assert_both_healthy(&app, &via, "requests past nginx's limits");
}
