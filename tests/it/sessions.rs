//! Sessions and passwords (contract section 9): listing the caller's
//! sessions, ending one by id, and changing the password, which ends every
//! other session; each end is refused at once on every process and closes
//! its WebSockets with 4001 there. A wrong current password counts with
//! failed logins, per user and client address.
//!
//! The two-process tests run two servers on one database in this process:
//! each has its own session cache, listener and process id, as two
//! processes would.

use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::realtime::{connect_ready, PROMPTLY};
use crate::support::ws::WsClient;
use crate::support::{
    assert_keys, assert_utc_timestamp, check_error, check_limited, spawn_app, spawn_app_on, spawn_app_with, wait_for,
    Resp, TestApp, TestUser,
};

const NEW_PASSWORD: &str = "a brand new passphrase";

/// `GET /api/sessions` as `token`, asserting `200` and the shape of each session.
fn list_sessions(app: &TestApp, token: &str) -> Vec<Value> {
    let resp = app.get("/api/sessions", Some(token));
    resp.assert_status(200, "GET /api/sessions");
    let body = resp.json();
    assert_keys(&body, &["sessions"], "GET /api/sessions");
    let sessions = body["sessions"].as_array().unwrap_or_else(|| panic!("sessions is not an array: {body}")).clone();
    for session in &sessions {
        assert_keys(session, &["id", "created_at", "expires_at", "current"], "a listed session");
        assert!(session["id"].as_i64().is_some_and(|id| id > 0), "id is not a positive integer: {session}");
        assert_utc_timestamp(&session["created_at"], "a session's created_at");
        assert_utc_timestamp(&session["expires_at"], "a session's expires_at");
        assert!(session["current"].is_boolean(), "current is not a boolean: {session}");
    }
    sessions
}

fn ids(sessions: &[Value]) -> Vec<i64> {
    sessions.iter().map(|session| session["id"].as_i64().expect("an integer id")).collect()
}

/// The id of the session behind `token`: the one its listing marks current.
fn session_id(app: &TestApp, token: &str) -> i64 {
    let sessions = list_sessions(app, token);
    let current: Vec<&Value> = sessions.iter().filter(|session| session["current"] == json!(true)).collect();
    assert_eq!(current.len(), 1, "exactly one session is current: {sessions:?}");
    current[0]["id"].as_i64().expect("an integer id")
}

/// `PUT /api/users/me/password` as `token`.
fn change_password(app: &TestApp, token: &str, current_password: &str, new_password: &str) -> Resp {
    let body = json!({ "current_password": current_password, "new_password": new_password });
    app.put("/api/users/me/password", Some(token), body)
}

/// `user`, holding another of its sessions.
fn with_token(user: &TestUser, token: String) -> TestUser {
    TestUser { token, ..user.clone() }
}

/// Asserts that `token` answers `401 unauthorized` on each of `apps`.
fn assert_ended(apps: &[&TestApp], token: &str, what: &str) {
    for (idx, app) in apps.iter().enumerate() {
        let resp = app.get("/api/users/me", Some(token));
        assert_eq!(resp.status, 401, "{what}, on server {idx}:\n{}", resp.describe());
        check_error(&resp, 401, "unauthorized", None);
    }
}

/// Asserts that `token` still works on each of `apps`; asking twice leaves
/// the session in each server's cache, so a later end must reach the caches.
fn assert_live(apps: &[&TestApp], token: &str, what: &str) {
    for (idx, app) in apps.iter().enumerate() {
        for _ in 0..2 {
            app.get("/api/users/me", Some(token)).assert_status(200, &format!("{what}, on server {idx}"));
        }
    }
}

/// Waits until each of `apps` serves sessions from its cache, which it does
/// only once its listener has finished a round: until then a test's ends
/// would not have to reach any cache. The probe: a session verified on every
/// server, then deleted behind their backs, still works on every one.
fn wait_for_session_caches(apps: &[&TestApp], user: &TestUser) {
    wait_for("every server to cache verified sessions", Duration::from_secs(10), || {
        let probe = apps[0].login_token(&user.username, &user.password);
        let probe_id = session_id(apps[0], &probe);
        assert_live(apps, &probe, "a probe session");
        apps[0].db().execute("DELETE FROM sessions WHERE id = $1", &[&probe_id]).expect("delete the probe");
        apps.iter().all(|app| app.get("/api/users/me", Some(&probe)).status == 200).then_some(())
    });
}

/// Asserts a Close frame with 4001, as a logout sends it.
fn assert_closed_4001(ws: &mut WsClient, what: &str) {
    let closed = ws.expect_close(PROMPTLY, what);
    assert!(
        closed.close_frame && closed.code == Some(4001),
        "{what}: expected a Close frame with 4001, got {closed:?}"
    );
}

// ---- Listing ----------------------------------------------------------------

#[test]
fn listing_shows_the_callers_live_sessions_newest_first_marking_the_current_one() {
    let app = spawn_app();
    let alice = app.create_user();
    let by_email = app.login_token(&alice.email.to_uppercase(), &alice.password);
    let ended = app.login_token(&alice.username, &alice.password);
    let expired = app.login_token(&alice.username, &alice.password);
    let newest = app.login_token(&alice.username, &alice.password);
    let bob = app.create_user();
    let (ended_id, expired_id, bob_id) =
        (session_id(&app, &ended), session_id(&app, &expired), session_id(&app, &bob.token));
    app.delete("/api/sessions/current", Some(&ended)).assert_status(204, "logging one session out");
    let mut db = app.db();
    db.execute("UPDATE sessions SET expires_at = now() - interval '1 second' WHERE id = $1", &[&expired_id])
        .expect("expire a session");

    let sessions = list_sessions(&app, &by_email);

    let expected: Vec<i64> = [&newest, &by_email, &alice.token].iter().map(|token| session_id(&app, token)).collect();
    assert_eq!(ids(&sessions), expected, "alice's live sessions, newest first");
    for excluded in [ended_id, expired_id, bob_id] {
        assert!(!ids(&sessions).contains(&excluded), "session {excluded} is not listed: {sessions:?}");
    }
    let current: Vec<bool> = sessions.iter().map(|session| session["current"] == json!(true)).collect();
    assert_eq!(current, [false, true, false], "only the session asking is current");
    for session in &sessions {
        let created_at = assert_utc_timestamp(&session["created_at"], "created_at");
        let expires_at = assert_utc_timestamp(&session["expires_at"], "expires_at");
        assert_eq!(expires_at - created_at, time::Duration::days(30), "TOKEN_TTL_SECS after login: {session}");
    }
    assert_eq!(ids(&list_sessions(&app, &bob.token)), [bob_id], "bob sees only his own");
}

// ---- Authentication and routing ----------------------------------------------

#[test]
fn every_session_and_password_route_requires_a_token() {
    let app = spawn_app();
    let alice = app.create_user();
    let id = session_id(&app, &alice.token);
    let body = json!({ "current_password": alice.password, "new_password": NEW_PASSWORD });

    for token in [None, Some("not-a-token"), Some("A".repeat(43).as_str())] {
        let responses = [
            ("GET /api/sessions", app.get("/api/sessions", token)),
            ("DELETE /api/sessions/{id}", app.delete(&format!("/api/sessions/{id}"), token)),
            ("PUT /api/users/me/password", app.put("/api/users/me/password", token, body.clone())),
        ];
        for (what, resp) in &responses {
            assert_eq!(resp.status, 401, "{what} with {token:?}:\n{}", resp.describe());
            check_error(resp, 401, "unauthorized", None);
        }
    }
    app.get("/api/users/me", Some(&alice.token)).assert_status(200, "the session was not ended");
    app.login(&alice.username, &alice.password).assert_status(201, "the password was not changed");
}

#[test]
fn other_methods_on_the_new_paths_are_405_with_allow() {
    let app = spawn_app();
    let alice = app.create_user();
    let table = [
        ("PUT", "/api/sessions", "GET, POST, DELETE"),
        ("GET", "/api/sessions/1", "DELETE"),
        ("GET", "/api/sessions/current", "DELETE"),
        ("POST", "/api/users/me/password", "PUT"),
    ];
    for (method, path, allow) in table {
        let resp = app.raw(method, path, &[("Authorization", &format!("Bearer {}", alice.token))], b"");
        check_error(&resp, 405, "method_not_allowed", None);
        assert_eq!(resp.header("Allow"), Some(allow), "{method} {path}:\n{}", resp.describe());
    }
}

// ---- Ending one session -----------------------------------------------------

#[test]
fn ending_anyone_elses_an_ended_an_expired_or_an_unknown_session_is_the_same_404() {
    let app = spawn_app();
    let alice = app.create_user();
    let bob = app.create_user();
    let bob_id = session_id(&app, &bob.token);
    let ended = app.login_token(&alice.username, &alice.password);
    let ended_id = session_id(&app, &ended);
    app.delete(&format!("/api/sessions/{ended_id}"), Some(&alice.token)).assert_status(204, "ending it once");
    let expired = app.login_token(&alice.username, &alice.password);
    let expired_id = session_id(&app, &expired);
    app.db()
        .execute("UPDATE sessions SET expires_at = now() - interval '1 second' WHERE id = $1", &[&expired_id])
        .expect("expire a session");
    let unknown = bob_id.max(expired_id) + 1000;

    let mut bodies = Vec::new();
    for (what, path) in [
        ("bob's session", format!("/api/sessions/{bob_id}")),
        ("a session already ended", format!("/api/sessions/{ended_id}")),
        ("an expired session", format!("/api/sessions/{expired_id}")),
        ("an unknown id", format!("/api/sessions/{unknown}")),
        ("a non-integer id", "/api/sessions/abc".to_string()),
        ("a zero id", "/api/sessions/0".to_string()),
        ("a negative id", "/api/sessions/-1".to_string()),
        ("an id past 64 bits", "/api/sessions/99999999999999999999".to_string()),
    ] {
        let resp = app.delete(&path, Some(&alice.token));
        assert_eq!(resp.status, 404, "{what}:\n{}", resp.describe());
        check_error(&resp, 404, "not_found", None);
        bodies.push((what, resp.json()));
    }

    for (what, body) in &bodies {
        assert_eq!(body, &bodies[0].1, "{what} answers the same body as {}", bodies[0].0);
    }
    app.get("/api/users/me", Some(&bob.token)).assert_status(200, "bob's session still works");
    assert_eq!(ids(&list_sessions(&app, &bob.token)), [bob_id], "bob's session is still listed");
    app.get("/api/users/me", Some(&alice.token)).assert_status(200, "so does the caller's");
}

#[test]
fn ending_the_current_session_by_id_logs_it_out() {
    let app = spawn_app();
    let alice = app.create_user();
    let other = app.login_token(&alice.username, &alice.password);
    let id = session_id(&app, &alice.token);
    wait_for_session_caches(&[&app], &alice);
    assert_live(&[&app], &alice.token, "the session to end");

    let resp = app.delete(&format!("/api/sessions/{id}"), Some(&alice.token));

    resp.assert_status(204, "DELETE /api/sessions/{own id}");
    assert!(resp.body.is_empty(), "a 204 has no body:\n{}", resp.describe());
    assert_ended(&[&app], &alice.token, "the session ended by its own id");
    app.get("/api/users/me", Some(&other)).assert_status(200, "the user's other session");
}

#[test]
fn ending_ones_other_session_refuses_its_token_at_once_and_closes_its_sockets_with_4001_on_both_processes() {
    let a = spawn_app();
    let b = spawn_app_on(&a.db_url, &[]);
    let alice = a.create_user();
    let doomed = with_token(&alice, a.login_token(&alice.username, &alice.password));
    let doomed_id = session_id(&a, &doomed.token);
    wait_for_session_caches(&[&a, &b], &alice);
    assert_live(&[&a, &b], &doomed.token, "the session to end");
    assert_live(&[&a, &b], &alice.token, "the session that ends it");
    let (mut doomed_on_a, _) = connect_ready(&a, &doomed, "the ended session's socket on A");
    let (mut doomed_on_b, _) = connect_ready(&b, &doomed, "the ended session's socket on B");
    let (mut kept_on_b, _) = connect_ready(&b, &alice, "the caller's socket on B");

    let resp = a.delete(&format!("/api/sessions/{doomed_id}"), Some(&alice.token));

    resp.assert_status(204, "DELETE /api/sessions/{id} on A");
    assert!(resp.body.is_empty(), "a 204 has no body:\n{}", resp.describe());
    assert_ended(&[&a, &b], &doomed.token, "the ended session, at once");
    assert_live(&[&a, &b], &alice.token, "the caller's session");
    assert_closed_4001(&mut doomed_on_b, "the ended session's socket on the other process");
    assert_closed_4001(&mut doomed_on_a, "the ended session's socket on this process");
    kept_on_b.ping_pong(PROMPTLY, "the caller's socket stays open");
    assert!(!ids(&list_sessions(&b, &alice.token)).contains(&doomed_id), "the ended session is not listed");
    let again = b.delete(&format!("/api/sessions/{doomed_id}"), Some(&alice.token));
    check_error(&again, 404, "not_found", None);
}

// ---- Changing the password ----------------------------------------------------

#[test]
fn changing_the_password_ends_every_other_session_on_both_processes_and_keeps_this_one() {
    let a = spawn_app();
    let b = spawn_app_on(&a.db_url, &[]);
    let alice = a.create_user();
    let on_a = with_token(&alice, a.login_token(&alice.username, &alice.password));
    let on_b = with_token(&alice, b.login_token(&alice.email, &alice.password));
    let bob = a.create_user();
    wait_for_session_caches(&[&a, &b], &alice);
    for user in [&alice, &on_a, &on_b, &bob] {
        assert_live(&[&a, &b], &user.token, "before the change");
    }
    let (mut on_a_ws, _) = connect_ready(&b, &on_a, "another session's socket on B");
    let (mut on_b_ws, _) = connect_ready(&a, &on_b, "a third session's socket on A");
    let (mut current_ws, _) = connect_ready(&b, &alice, "the changing session's socket on B");
    let (mut bob_ws, _) = connect_ready(&b, &bob, "bob's socket on B");

    let resp = change_password(&a, &alice.token, &alice.password, NEW_PASSWORD);

    resp.assert_status(204, "PUT /api/users/me/password on A");
    assert!(resp.body.is_empty(), "a 204 has no body:\n{}", resp.describe());
    assert_ended(&[&a, &b], &on_a.token, "another session, at once");
    assert_ended(&[&a, &b], &on_b.token, "a session made on B, at once");
    assert_live(&[&a, &b], &alice.token, "the session that changed the password");
    assert_live(&[&a, &b], &bob.token, "another user's session");
    assert_closed_4001(&mut on_a_ws, "another session's socket on the other process");
    assert_closed_4001(&mut on_b_ws, "a third session's socket on this process");
    current_ws.ping_pong(PROMPTLY, "the changing session's socket stays open");
    bob_ws.ping_pong(PROMPTLY, "bob's socket stays open");
    let sessions = list_sessions(&b, &alice.token);
    assert_eq!(sessions.len(), 1, "only the current session is left: {sessions:?}");
    assert_eq!(sessions[0]["current"], json!(true));
    for (app, name) in [(&a, "A"), (&b, "B")] {
        for login in [&alice.username, &alice.email] {
            let old = app.login(login, &alice.password);
            check_error(&old, 401, "invalid_credentials", None);
            app.login(login, NEW_PASSWORD).assert_status(201, &format!("the new password as {login} on {name}"));
        }
    }
}

#[test]
fn the_new_password_is_stored_as_a_hash_with_the_configured_iterations() {
    let app = spawn_app_with(&[("PASSWORD_ITERATIONS", "1234")]);
    let alice = app.create_user();

    change_password(&app, &alice.token, &alice.password, NEW_PASSWORD).assert_status(204, "the change");

    let row = app.db().query_one("SELECT password_hash FROM users WHERE id = $1", &[&alice.id]).expect("read");
    let stored: String = row.get(0);
    assert!(stored.starts_with("pbkdf2-sha256$1234$"), "hashed like a sign-up: {stored}");
    assert!(!stored.contains(NEW_PASSWORD), "never in plain text: {stored}");
}

#[test]
fn a_wrong_current_password_is_401_invalid_credentials_and_changes_nothing() {
    let app = spawn_app();
    let alice = app.create_user();
    let other = app.login_token(&alice.username, &alice.password);

    let resp = change_password(&app, &alice.token, "not the password", NEW_PASSWORD);

    check_error(&resp, 401, "invalid_credentials", None);
    assert_live(&[&app], &alice.token, "the session asking");
    assert_live(&[&app], &other, "the other session");
    let new = app.login(&alice.username, NEW_PASSWORD);
    check_error(&new, 401, "invalid_credentials", None);
    app.login(&alice.username, &alice.password).assert_status(201, "the old password still works");
}

#[test]
fn invalid_password_change_bodies_are_400_naming_the_field_and_count_no_failure() {
    let app = spawn_app();
    let alice = app.create_user();
    let (pw, too_long) = (alice.password.as_str(), "x".repeat(1025));
    let table = [
        (json!({ "new_password": NEW_PASSWORD }), "current_password", "current_password missing"),
        (json!({ "current_password": 12345678, "new_password": NEW_PASSWORD }), "current_password", "a number"),
        (json!({ "current_password": null, "new_password": NEW_PASSWORD }), "current_password", "null"),
        (json!({ "current_password": pw }), "new_password", "new_password missing"),
        (json!({ "current_password": pw, "new_password": ["12345678"] }), "new_password", "an array"),
        (json!({ "current_password": pw, "new_password": "1234567" }), "new_password", "7 bytes"),
        (json!({ "current_password": pw, "new_password": "ééé1" }), "new_password", "7 bytes in 4 characters"),
        (json!({ "current_password": pw, "new_password": too_long }), "new_password", "1025 bytes"),
        (json!({ "current_password": pw, "new_password": "has a \u{0} NUL" }), "new_password", "a NUL"),
        // A wrong current password with a bad new one: the body is refused before the check.
        (json!({ "current_password": "wrong!!!", "new_password": "short" }), "new_password", "both wrong"),
    ];
    for (body, field, what) in &table {
        let resp = app.put("/api/users/me/password", Some(&alice.token), body.clone());
        assert_eq!(resp.status, 400, "{what}:\n{}", resp.describe());
        check_error(&resp, 400, "invalid_request", Some(field));
    }
    for _ in 0..10 {
        let body = json!({ "current_password": "wrong!!!", "new_password": "short" });
        let resp = app.put("/api/users/me/password", Some(&alice.token), body);
        check_error(&resp, 400, "invalid_request", Some("new_password"));
    }

    app.login(&alice.username, &alice.password).assert_status(201, "the password is unchanged");
    let (shortest, longest) = ("8 bytes!", "y".repeat(1024));
    change_password(&app, &alice.token, &alice.password, shortest).assert_status(204, "no failure counted: 8 bytes");
    app.login(&alice.username, shortest).assert_status(201, "logging in with 8 bytes");
    change_password(&app, &alice.token, shortest, &longest).assert_status(204, "1024 bytes");
    app.login(&alice.email, &longest).assert_status(201, "logging in with 1024 bytes");
}

// ---- Failures counted per user -----------------------------------------------

/// One way a client gets a password wrong, or right, for `alice`.
#[derive(Clone, Copy, Debug)]
enum Attempt {
    LoginByUsername,
    /// Her email in capitals: the same account.
    LoginByEmail,
    PasswordChange,
}

impl Attempt {
    const ALL: [Attempt; 3] = [Attempt::LoginByUsername, Attempt::LoginByEmail, Attempt::PasswordChange];

    fn send(self, app: &TestApp, client: &str, alice: &TestUser, password: &str) -> Resp {
        match self {
            Attempt::LoginByUsername => {
                let body = json!({ "login": alice.username, "password": password });
                app.send_via(client, "POST", "/api/sessions", None, Some(body))
            }
            Attempt::LoginByEmail => {
                let body = json!({ "login": alice.email.to_uppercase(), "password": password });
                app.send_via(client, "POST", "/api/sessions", None, Some(body))
            }
            Attempt::PasswordChange => {
                // The new password is the current one: a success changes nothing but the other sessions.
                let body = json!({ "current_password": password, "new_password": alice.password });
                app.send_via(client, "PUT", "/api/users/me/password", Some(&alice.token), Some(body))
            }
        }
    }
}

#[test]
fn wrong_current_passwords_lock_both_of_the_users_names_at_that_address() {
    let app = spawn_app_with(&[("TRUSTED_PROXIES", "127.0.0.1")]);
    let alice = app.create_user();
    let bob = app.create_user();
    let (attacker, home) = ("203.0.113.7", "198.51.100.7");

    for n in 1..=10 {
        let resp = Attempt::PasswordChange.send(&app, attacker, &alice, "a wrong guess");
        assert_eq!(resp.status, 401, "failure {n}: ten are allowed:\n{}", resp.describe());
        check_error(&resp, 401, "invalid_credentials", None);
    }

    for attempt in Attempt::ALL {
        check_limited(&attempt.send(&app, attacker, &alice, &alice.password), &format!("{attempt:?}, right password"));
    }
    let bobs = json!({ "login": bob.username, "password": bob.password });
    app.send_via(attacker, "POST", "/api/sessions", None, Some(bobs)).assert_status(201, "bob, from that address");
    for attempt in Attempt::ALL {
        let resp = attempt.send(&app, home, &alice, &alice.password);
        let expected = if matches!(attempt, Attempt::PasswordChange) { 204 } else { 201 };
        resp.assert_status(expected, &format!("{attempt:?} from another address"));
    }
}

#[test]
fn failed_logins_by_one_name_lock_that_name_and_password_changes_but_not_the_other_name() {
    let app = spawn_app_with(&[("TRUSTED_PROXIES", "127.0.0.1")]);
    let alice = app.create_user();
    // A login counts under the name it gave only (contract section 2: "that login"), so a
    // limit reached by one name says nothing about which email or username is the same account.
    for (idx, (failing, other)) in
        [(Attempt::LoginByUsername, Attempt::LoginByEmail), (Attempt::LoginByEmail, Attempt::LoginByUsername)]
            .into_iter()
            .enumerate()
    {
        let attacker = format!("203.0.113.{}", idx + 10);
        for n in 1..=10 {
            let resp = failing.send(&app, &attacker, &alice, "a wrong guess");
            assert_eq!(resp.status, 401, "{failing:?}: failure {n}:\n{}", resp.describe());
        }
        check_limited(&failing.send(&app, &attacker, &alice, &alice.password), &format!("{failing:?} again"));
        let change = Attempt::PasswordChange.send(&app, &attacker, &alice, &alice.password);
        check_limited(&change, &format!("a password change after ten failures by {failing:?}"));
        other.send(&app, &attacker, &alice, &alice.password).assert_status(201, &format!("{other:?}"));
    }
    Attempt::PasswordChange.send(&app, "198.51.100.7", &alice, &alice.password).assert_status(204, "from elsewhere");
}

#[test]
fn an_unknown_login_is_still_limited_by_its_text_without_regard_to_case() {
    let app = spawn_app_with(&[("TRUSTED_PROXIES", "127.0.0.1")]);
    let alice = app.create_user();
    let login = |client: &str, login: &str, password: &str| {
        app.send_via(client, "POST", "/api/sessions", None, Some(json!({ "login": login, "password": password })))
    };

    for n in 1..=10 {
        let resp = login("203.0.113.7", "ghost", "a wrong guess");
        assert_eq!(resp.status, 401, "failure {n} of an unknown login:\n{}", resp.describe());
    }

    check_limited(&login("203.0.113.7", "GHOST", "another guess"), "the unknown login, in other case");
    check_error(&login("198.51.100.7", "ghost", "a guess"), 401, "invalid_credentials", None);
    check_error(&login("203.0.113.7", "phantom", "a guess"), 401, "invalid_credentials", None);
    login("203.0.113.7", &alice.username, &alice.password).assert_status(201, "a real user from that address");
}

#[test]
fn a_session_ended_while_it_changes_the_password_changes_nothing() {
    // Slow hashing, so the other session's request lands while the change hashes.
    let app = spawn_app_with(&[("PASSWORD_ITERATIONS", "40000")]);
    let alice = app.create_user();
    let started = Instant::now();
    let other = app.login_token(&alice.username, &alice.password);
    let one_hash = started.elapsed();
    let sessions = app.get("/api/sessions", Some(&alice.token)).json();
    let changing = sessions["sessions"].as_array().unwrap().iter().find(|s| s["current"] == json!(true)).unwrap();
    let changing_id = changing["id"].as_i64().unwrap();

    let (change, end) = thread::scope(|s| {
        let change = s.spawn(|| {
            let body = json!({ "current_password": alice.password, "new_password": "a brand new password" });
            app.put("/api/users/me/password", Some(&alice.token), body)
        });
        // The change hashes twice (the current password, then the new one): end it midway.
        thread::sleep(one_hash);
        let end = app.delete(&format!("/api/sessions/{changing_id}"), Some(&other));
        (change.join().expect("the change"), end)
    });
    // One of the two requests ended the other's session first; the later one must change nothing.
    match (change.status, end.status) {
        (401, 204) => {
            check_error(&change, 401, "unauthorized", None);
            app.get("/api/users/me", Some(&other)).assert_status(200, "the session that ended the other");
            app.login(&alice.username, &alice.password).assert_status(201, "the password did not change");
        }
        (204, 401) => {
            app.get("/api/users/me", Some(&other)).assert_status(401, "ended by the change");
        }
        statuses => panic!("both requests went through, or neither: {statuses:?} (hash {one_hash:?})"),
    }
}
