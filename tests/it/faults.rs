//! Database faults as the server meets them: its connections ended by
//! `pg_terminate_backend`, a restart, and a database that stops answering
//! (every process of a private cluster stopped with SIGSTOP). SECURITY.md,
//! "Faults", states the bounds these tests hold the server to.
//!
//! `soak_…` runs only with `SOAK=1` (`make soak`): it holds a freeze for 20 s.

use std::time::{Duration, Instant};

use crate::support::ws::{connect_bearer, try_connect, Incoming};
use crate::support::{check_error, spawn_app, spawn_app_on, wait_for, PrivateCluster, Resp, TestApp, TestUser};

/// `/readyz` gives up after 2 s (to connect, or for an answer); the slack
/// covers a machine running every test at once.
const READYZ_BOUND: Duration = Duration::from_secs(4);
/// A request gives up after 2 s waiting for its check, or 5 s to connect.
const REQUEST_BOUND: Duration = Duration::from_secs(7);
const RECOVERY: Duration = Duration::from_secs(30);
const SOON: Duration = Duration::from_secs(10);

/// Uses every worker's and job thread's connection once, so each holds one
/// for the fault to break.
fn warm_up(app: &TestApp, user: &TestUser) {
    for idx in 0..8 {
        app.get("/api/users/me", Some(&user.token)).assert_status(200, &format!("warm-up request {idx}"));
    }
    let mut ws = connect_bearer(app.ws_addr, &user.token);
    ws.recv_until(SOON, "ready", |frame| frame["type"] == "ready");
    ws.close();
}

/// Eight requests and three handshakes, each of which must succeed at once.
fn assert_all_succeed(app: &TestApp, user: &TestUser, after: &str) {
    for idx in 0..8 {
        app.get("/api/users/me", Some(&user.token)).assert_status(200, &format!("GET {idx} after {after}"));
    }
    for idx in 0..3 {
        let authorization = format!("Bearer {}", user.token);
        let what = format!("handshake {idx} after {after}");
        let mut ws = try_connect(app.ws_addr, "/ws", &[("Authorization", &authorization)])
            .unwrap_or_else(|refused| panic!("{what}: refused: {refused:?}"));
        match ws.next(SOON) {
            Incoming::Text(text) if text.contains(r#""type":"ready""#) => {}
            // The listener lost its connection too; when it is back, every
            // socket is told to catch up (docs/api.md, close code 4008).
            Incoming::Close(Some(4008)) => {}
            other => panic!("{what}: expected ready (or 4008), got {other:?}"),
        }
    }
    let chat = app.post(
        "/api/chats",
        Some(&user.token),
        serde_json::json!({ "is_group": true, "title": "t", "member_ids": [] }),
    );
    chat.assert_status(201, &format!("a write after {after}"));
}

#[test]
fn requests_and_handshakes_after_pg_terminate_backend_succeed_without_503() {
    let app = spawn_app();
    let alice = app.create_user();
    warm_up(&app, &alice);

    let mut db = app.db();
    let killed: i64 = db
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE application_name = 'messaging' AND datname = current_database()",
            &[],
        )
        .expect("terminate the server's connections")
        .get(0);

    assert!(killed >= 6, "the workers' and job threads' connections were ended: {killed}");
    assert_all_succeed(&app, &alice, "pg_terminate_backend");
}

#[test]
fn requests_and_handshakes_after_a_database_restart_succeed_without_503() {
    let cluster = PrivateCluster::start();
    let app = spawn_app_on(cluster.url(), &[]);
    let alice = app.create_user();
    warm_up(&app, &alice);

    cluster.stop();
    cluster.start_again();

    assert_all_succeed(&app, &alice, "a restart");
}

/// `GET path`, asserting `503 unavailable` within `bound`.
fn assert_unavailable_within(app: &TestApp, path: &str, token: Option<&str>, bound: Duration) -> Resp {
    let started = Instant::now();
    let resp = app.get(path, token);
    let took = started.elapsed();
    check_error(&resp, 503, "unavailable", None);
    assert!(took <= bound, "GET {path} with the database frozen took {took:?}, over {bound:?}");
    resp
}

#[test]
fn a_frozen_database_gives_503_within_bounds_and_the_server_recovers_when_it_thaws() {
    let cluster = PrivateCluster::start();
    let app = spawn_app_on(cluster.url(), &[]);
    let alice = app.create_user();
    warm_up(&app, &alice);

    let frozen = cluster.freeze();

    assert_unavailable_within(&app, "/readyz", None, READYZ_BOUND);
    assert_unavailable_within(&app, "/api/users/me", Some(&alice.token), REQUEST_BOUND);
    assert_unavailable_within(&app, "/readyz", None, READYZ_BOUND);
    app.get("/healthz", None).assert_status(200, "healthz does not ask the database");
    drop(frozen);
    wait_for("readyz to answer 200 after the thaw", RECOVERY, || {
        (app.get("/readyz", None).status == 200).then_some(())
    });
    wait_for("requests to succeed after the thaw", RECOVERY, || {
        (app.get("/api/users/me", Some(&alice.token)).status == 200).then_some(())
    });
}

#[test]
fn soak_a_database_frozen_for_20_seconds_answers_every_request_within_bounds() {
    if std::env::var_os("SOAK").is_none() {
        return;
    }
    let cluster = PrivateCluster::start();
    let app = spawn_app_on(cluster.url(), &[]);
    let alice = app.create_user();
    warm_up(&app, &alice);

    let frozen = cluster.freeze();
    let until = Instant::now() + Duration::from_secs(20);
    let answered: usize = std::thread::scope(|scope| {
        // As many clients as workers (the harness's 4): more would queue behind each other.
        let clients: Vec<_> = (0..4)
            .map(|idx| {
                let (app, alice) = (&app, &alice);
                scope.spawn(move || {
                    let mut answered = 0;
                    while Instant::now() < until {
                        match idx % 2 {
                            0 => assert_unavailable_within(app, "/readyz", None, READYZ_BOUND),
                            _ => assert_unavailable_within(app, "/api/users/me", Some(&alice.token), REQUEST_BOUND),
                        };
                        answered += 1;
                    }
                    answered
                })
            })
            .collect();
        clients.into_iter().map(|client| client.join().expect("a client thread")).sum()
    });
    drop(frozen);

    assert!(answered >= 20, "{answered} requests answered in 20 s of freeze");
    wait_for("readyz to answer 200 after the thaw", RECOVERY, || {
        (app.get("/readyz", None).status == 200).then_some(())
    });
    wait_for("requests to succeed after the thaw", RECOVERY, || {
        (app.get("/api/users/me", Some(&alice.token)).status == 200).then_some(())
    });
    assert_all_succeed(&app, &alice, "a 20-second freeze");
}
