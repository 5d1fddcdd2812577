//! Accounts and sessions (contract section 2) and the seed's account routes
//! (section 8: `/user/signup`, `/user/login`, `/user/logout`).
//!
//! Every test starts its own server and database, so fixed usernames such as
//! `alice` never collide. Rate limits are per server process, which is why
//! the rate-limit tests each have an app of their own.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::support::{
    assert_keys, assert_utc_timestamp, check_error, check_limited, fresh_database, request, spawn_app, spawn_app_on,
    spawn_app_on_listeners, spawn_app_with, wait_for, Resp, TestApp,
};

const PASSWORD: &str = "correct horse battery";

fn signup_json(username: &str, email: &str, password: &str) -> Value {
    json!({ "username": username, "email": email, "password": password })
}

/// Asserts the Me shape `{id, username, email, created_at}` and returns the id.
fn assert_me(me: &Value, username: &str, email: &str, what: &str) -> i64 {
    assert_keys(me, &["id", "username", "email", "created_at"], what);
    let id = me["id"].as_i64().unwrap_or_else(|| panic!("{what}: id is not an integer: {me}"));
    assert!(id > 0, "{what}: id {id} is not positive");
    assert_eq!(me["username"], json!(username), "{what}: username as registered");
    assert_eq!(me["email"], json!(email), "{what}: email");
    let created_at = assert_utc_timestamp(&me["created_at"], &format!("{what}: created_at"));
    let skew = (OffsetDateTime::now_utc() - created_at).abs();
    assert!(skew < time::Duration::minutes(5), "{what}: created_at {created_at} is not about now");
    id
}

/// Asserts the User shape `{id, username, online}`.
fn assert_user(user: &Value, id: i64, username: &str, what: &str) {
    assert_keys(user, &["id", "username", "online"], what);
    assert_eq!(user["id"], json!(id), "{what}: id");
    assert_eq!(user["username"], json!(username), "{what}: username");
    assert!(user["online"].is_boolean(), "{what}: online is not a boolean: {user}");
}

/// A server whose HTTP listener accepts both 127.0.0.1 and ::1, so one test
/// can act from two client addresses; `None` where IPv6 loopback is missing.
/// Its `http_addr` is the IPv4 one; [`v6`] gives the other.
pub fn spawn_dual_stack_app(vars: &[(&str, &str)]) -> Option<TestApp> {
    let dual_stack = std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only").is_ok_and(|value| value.trim() == "0");
    if !dual_stack || TcpListener::bind("[::1]:0").is_err() {
        return None;
    }
    let http = TcpListener::bind("[::]:0").ok()?;
    let port = http.local_addr().expect("a bound address").port();
    let ws = TcpListener::bind("127.0.0.1:0").expect("bind a WS port");
    let mut app = spawn_app_on_listeners(&fresh_database(), vars, http, ws);
    app.http_addr = SocketAddr::from(([127, 0, 0, 1], port));
    Some(app)
}

/// The app's HTTP port on the IPv6 loopback address.
fn v6(app: &TestApp) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], app.http_addr.port()))
}

/// `POST /api/sessions` from a chosen client address.
fn login_from(addr: SocketAddr, login: &str, password: &str) -> Resp {
    let body = serde_json::to_vec(&json!({ "login": login, "password": password })).unwrap();
    request(addr, "POST", "/api/sessions", &[("Content-Type", "application/json")], &body)
}

// ---- Signing up -------------------------------------------------------------

#[test]
fn signup_answers_201_with_me_and_me_matches_it() {
    let app = spawn_app();

    let resp = app.post("/api/users", None, signup_json("Alice_1", "Alice@Example.com", PASSWORD));

    resp.assert_status(201, "signup");
    let me = resp.json();
    assert_me(&me, "Alice_1", "Alice@Example.com", "signup body");
    let token = app.login_token("Alice_1", PASSWORD);
    let resp = app.get("/api/users/me", Some(&token));
    resp.assert_status(200, "GET /api/users/me");
    assert_eq!(resp.json(), me, "GET /api/users/me should equal the signup body");
}

#[test]
fn usernames_of_3_and_32_allowed_characters_are_accepted_as_registered() {
    let app = spawn_app();
    let names = ["abc", "A.b-c_D9", "Zz_0123456789.abcdefghij-KLMNOPQ"];
    assert_eq!(names[2].len(), 32);

    for (idx, name) in names.iter().enumerate() {
        let email = format!("user{idx}@example.com");
        let resp = app.post("/api/users", None, signup_json(name, &email, PASSWORD));
        resp.assert_status(201, &format!("username {name:?}"));
        assert_me(&resp.json(), name, &email, &format!("username {name:?}"));
    }
}

#[test]
fn usernames_outside_the_rules_are_400_on_username() {
    let app = spawn_app();
    let cases = [
        ("2 characters", "ab".to_string()),
        ("33 characters", "a".repeat(33)),
        ("empty", String::new()),
        ("a space", "with space".to_string()),
        ("a tab", "with\ttab".to_string()),
        ("an @", "ab@cd".to_string()),
        ("a slash", "ab/cd".to_string()),
        ("a non-ASCII letter", "héllo".to_string()),
    ];

    for (idx, (why, name)) in cases.iter().enumerate() {
        let email = format!("user{idx}@example.com");
        let resp = app.post("/api/users", None, signup_json(name, &email, PASSWORD));
        assert_eq!(resp.status, 400, "username with {why} ({name:?}):\n{}", resp.describe());
        check_error(&resp, 400, "invalid_request", Some("username"));
    }
}

#[test]
fn a_username_taken_in_another_case_is_409_on_username() {
    let app = spawn_app();
    app.post("/api/users", None, signup_json("Alice_1", "one@example.com", PASSWORD))
        .assert_status(201, "first signup");

    let resp = app.post("/api/users", None, signup_json("aLICE_1", "two@example.com", PASSWORD));

    check_error(&resp, 409, "conflict", Some("username"));
    let resp = app.post("/api/users", None, signup_json("Alice_1", "three@example.com", PASSWORD));
    check_error(&resp, 409, "conflict", Some("username"));
    app.post("/api/users", None, signup_json("bob", "two@example.com", PASSWORD))
        .assert_status(201, "the rejected signup's email is still free");
}

#[test]
fn an_email_taken_in_another_case_is_409_on_email() {
    let app = spawn_app();
    app.post("/api/users", None, signup_json("alice", "Alice@Example.com", PASSWORD))
        .assert_status(201, "first signup");

    let resp = app.post("/api/users", None, signup_json("bob", "aLICE@example.COM", PASSWORD));

    check_error(&resp, 409, "conflict", Some("email"));
    app.post("/api/users", None, signup_json("bob", "bob@example.com", PASSWORD))
        .assert_status(201, "the rejected signup's username is still free");
}

#[test]
fn emails_outside_the_rules_are_400_on_email_and_254_characters_are_accepted() {
    let app = spawn_app();
    let domain = "@example.com";
    let long_local = |total: usize| format!("{}{domain}", "x".repeat(total - domain.len()));
    let cases = [
        ("empty", String::new()),
        ("no @", "alice.example.com".to_string()),
        ("nothing before @", "@example.com".to_string()),
        ("nothing after @", "alice@".to_string()),
        ("two @", "alice@bob@example.com".to_string()),
        ("255 characters", long_local(255)),
    ];

    for (idx, (why, email)) in cases.iter().enumerate() {
        let resp = app.post("/api/users", None, signup_json(&format!("user{idx}"), email, PASSWORD));
        assert_eq!(resp.status, 400, "email with {why} ({email:?}):\n{}", resp.describe());
        check_error(&resp, 400, "invalid_request", Some("email"));
    }
    let email = long_local(254);
    let resp = app.post("/api/users", None, signup_json("longmail", &email, PASSWORD));
    resp.assert_status(201, "an email of 254 characters");
    assert_me(&resp.json(), "longmail", &email, "254-character email");
}

#[test]
fn passwords_of_7_or_over_1024_bytes_are_400_on_password() {
    let app = spawn_app();
    let cases = [
        ("7 bytes", "abcdefg".to_string()),
        ("empty", String::new()),
        ("1025 bytes", "a".repeat(1025)),
        ("1026 bytes in 513 characters", "é".repeat(513)),
    ];

    for (idx, (why, password)) in cases.iter().enumerate() {
        let username = format!("user{idx}");
        let resp = app.post("/api/users", None, signup_json(&username, &format!("{username}@example.com"), password));
        assert_eq!(resp.status, 400, "password of {why}:\n{}", resp.describe());
        check_error(&resp, 400, "invalid_request", Some("password"));
    }
}

#[test]
fn passwords_of_8_to_1024_bytes_are_accepted_and_work_for_login() {
    let app = spawn_app();
    let cases = [
        ("8 bytes", "abcdefgh".to_string()),
        ("8 bytes in 4 characters", "éééé".to_string()),
        ("1024 bytes", "a".repeat(1024)),
        ("1024 bytes in 512 characters", "é".repeat(512)),
    ];

    for (idx, (why, password)) in cases.iter().enumerate() {
        let username = format!("user{idx}");
        let resp = app.post("/api/users", None, signup_json(&username, &format!("{username}@example.com"), password));
        resp.assert_status(201, &format!("password of {why}"));
        app.login(&username, password).assert_status(201, &format!("login with a password of {why}"));
    }
}

#[test]
fn a_nul_character_in_any_signup_field_is_400_on_that_field() {
    let app = spawn_app();
    let cases = [
        ("username", signup_json("ab\u{0}cd", "a@example.com", PASSWORD)),
        ("email", signup_json("alice", "al\u{0}ice@example.com", PASSWORD)),
        ("password", signup_json("alice", "alice@example.com", "correct\u{0}horse")),
    ];

    for (field, body) in cases {
        let resp = app.post("/api/users", None, body);
        check_error(&resp, 400, "invalid_request", Some(field));
    }
}

#[test]
fn a_nul_character_in_a_login_field_is_400_on_that_field() {
    let app = spawn_app();
    let user = app.create_user();

    let resp = app.login(&format!("{}\u{0}", user.username), PASSWORD);
    check_error(&resp, 400, "invalid_request", Some("login"));
    let resp = app.login(&user.username, "correct\u{0}horse");
    check_error(&resp, 400, "invalid_request", Some("password"));
}

#[test]
fn a_missing_signup_field_is_400_naming_it() {
    let app = spawn_app();

    for field in ["username", "email", "password"] {
        let mut body = signup_json("alice", "alice@example.com", PASSWORD);
        body.as_object_mut().unwrap().remove(field);
        let resp = app.post("/api/users", None, body);
        check_error(&resp, 400, "invalid_request", Some(field));
    }
}

#[test]
fn a_signup_field_of_the_wrong_type_is_400_naming_it() {
    let app = spawn_app();
    let wrong_values = [json!(5), json!(true), json!(["alice"]), json!({ "a": 1 }), Value::Null];

    for field in ["username", "email", "password"] {
        for wrong in &wrong_values {
            let mut body = signup_json("alice", "alice@example.com", PASSWORD);
            body[field] = wrong.clone();
            let resp = app.post("/api/users", None, body);
            assert_eq!(resp.status, 400, "{field} = {wrong}:\n{}", resp.describe());
            check_error(&resp, 400, "invalid_request", Some(field));
        }
    }
}

#[test]
fn a_missing_or_mistyped_login_field_is_400_naming_it() {
    let app = spawn_app();

    let resp = app.post("/api/sessions", None, json!({ "password": PASSWORD }));
    check_error(&resp, 400, "invalid_request", Some("login"));
    let resp = app.post("/api/sessions", None, json!({ "login": "alice" }));
    check_error(&resp, 400, "invalid_request", Some("password"));
    let resp = app.post("/api/sessions", None, json!({ "login": 42, "password": PASSWORD }));
    check_error(&resp, 400, "invalid_request", Some("login"));
    let resp = app.post("/api/sessions", None, json!({ "login": "alice", "password": false }));
    check_error(&resp, 400, "invalid_request", Some("password"));
}

#[test]
fn unknown_fields_in_a_request_are_ignored() {
    let app = spawn_app();
    let mut body = signup_json("alice", "alice@example.com", PASSWORD);
    body["id"] = json!(999_999);
    body["admin"] = json!(true);
    body["created_at"] = json!("2000-01-01T00:00:00Z");

    let resp = app.post("/api/users", None, body);

    resp.assert_status(201, "signup with unknown fields");
    let me = resp.json();
    assert_me(&me, "alice", "alice@example.com", "signup with unknown fields");
    assert_ne!(me["id"], json!(999_999), "the client chose its own id");
    let resp = app.post(
        "/api/sessions",
        None,
        json!({ "login": "alice", "password": PASSWORD, "remember_me": true, "ttl": 1 }),
    );
    resp.assert_status(201, "login with unknown fields");
}

// ---- Sessions ---------------------------------------------------------------

/// Asserts the session shape and returns the token.
fn assert_session(resp: &Resp, me: &Value, ttl_secs: i64, what: &str) -> String {
    resp.assert_status(201, what);
    let session = resp.json();
    assert_keys(&session, &["token", "expires_at", "user"], what);
    assert_eq!(&session["user"], me, "{what}: user should be Me");
    let token = session["token"].as_str().unwrap_or_else(|| panic!("{what}: token: {session}"));
    // 32 random bytes: 43 characters of base64url or 64 of hex.
    assert!(token.len() >= 43, "{what}: token {token:?} is too short for 32 bytes");
    assert!(
        token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{what}: token {token:?} is not base64url or hex"
    );
    let expires_at = assert_utc_timestamp(&session["expires_at"], &format!("{what}: expires_at"));
    let expected = OffsetDateTime::now_utc() + time::Duration::seconds(ttl_secs);
    assert!(
        (expires_at - expected).abs() < time::Duration::minutes(2),
        "{what}: expires_at {expires_at} is not about now + {ttl_secs} s"
    );
    token.to_string()
}

#[test]
fn login_by_username_or_email_answers_201_with_a_session() {
    let app = spawn_app();
    let resp = app.post("/api/users", None, signup_json("Alice_1", "Alice@Example.com", PASSWORD));
    resp.assert_status(201, "signup");
    let me = resp.json();

    let by_username = app.login("Alice_1", PASSWORD);
    let by_email = app.login("Alice@Example.com", PASSWORD);

    let token_a = assert_session(&by_username, &me, 2_592_000, "login by username");
    let token_b = assert_session(&by_email, &me, 2_592_000, "login by email");
    assert_ne!(token_a, token_b, "two logins share a token");
    for token in [&token_a, &token_b] {
        let resp = app.get("/api/users/me", Some(token));
        resp.assert_status(200, "GET /api/users/me with a new token");
        assert_eq!(resp.json(), me);
    }
}

#[test]
fn session_expiry_follows_token_ttl_secs() {
    let app = spawn_app_with(&[("TOKEN_TTL_SECS", "3600")]);
    let resp = app.post("/api/users", None, signup_json("alice", "alice@example.com", PASSWORD));
    let me = resp.json();

    let resp = app.login("alice", PASSWORD);

    assert_session(&resp, &me, 3600, "login with TOKEN_TTL_SECS=3600");
}

#[test]
fn wrong_password_and_unknown_user_get_identical_bodies() {
    let app = spawn_app();
    let user = app.create_user();

    let wrong_password = app.login(&user.username, "wrong password!");
    let wrong_password_by_email = app.login(&user.email, "wrong password!");
    let unknown_user = app.login("nobody_here", "wrong password!");
    let unknown_email = app.login("nobody@example.com", PASSWORD);

    for resp in [&wrong_password, &wrong_password_by_email, &unknown_user, &unknown_email] {
        check_error(resp, 401, "invalid_credentials", None);
    }
    assert_eq!(wrong_password.body, unknown_user.body, "wrong password vs unknown user");
    assert_eq!(wrong_password.body, unknown_email.body, "wrong password vs unknown email");
    assert_eq!(wrong_password.body, wrong_password_by_email.body);
}

#[test]
fn a_missing_or_malformed_authorization_header_is_401_unauthorized() {
    let app = spawn_app();
    let user = app.create_user();
    let cases = [
        "Bearer".to_string(),
        "Bearer ".to_string(),
        "Bearer not-a-real-token".to_string(),
        format!("Bearer {}x", user.token),
        format!("Bearer {}", &user.token[..user.token.len() - 1]),
        format!("Basic {}", user.token),
        format!("Token {}", user.token),
        user.token.clone(),
        "Basic dXNlcjpwYXNz".to_string(),
    ];

    let resp = app.get("/api/users/me", None);
    check_error(&resp, 401, "unauthorized", None);
    for authorization in &cases {
        let resp = app.raw("GET", "/api/users/me", &[("Authorization", authorization)], b"");
        assert_eq!(resp.status, 401, "Authorization: {authorization:?}\n{}", resp.describe());
        check_error(&resp, 401, "unauthorized", None);
    }
    app.get("/api/users/me", Some(&user.token)).assert_status(200, "the real token still works");
}

#[test]
fn every_authenticated_account_route_requires_a_token() {
    let app = spawn_app();
    let user = app.create_user();

    let responses = [
        app.get("/api/users/me", None),
        app.delete("/api/sessions/current", None),
        app.delete("/api/sessions", None),
        app.get("/api/users?q=u", None),
        app.get(&format!("/api/users/{}", user.id), None),
        app.raw("POST", "/user/logout", &[], b""),
    ];

    for resp in &responses {
        check_error(resp, 401, "unauthorized", None);
    }
}

#[test]
fn logout_ends_this_token_at_once_and_no_other() {
    let app = spawn_app();
    let user = app.create_user();
    let other_token = app.login_token(&user.username, PASSWORD);

    let resp = app.delete("/api/sessions/current", Some(&user.token));

    resp.assert_status(204, "DELETE /api/sessions/current");
    assert!(resp.body.is_empty(), "a 204 has no body:\n{}", resp.describe());
    let resp = app.get("/api/users/me", Some(&user.token));
    check_error(&resp, 401, "unauthorized", None);
    let resp = app.delete("/api/sessions/current", Some(&user.token));
    check_error(&resp, 401, "unauthorized", None);
    app.get("/api/users/me", Some(&other_token)).assert_status(200, "the user's other session");
}

#[test]
fn logout_everywhere_ends_every_session_of_the_user_only() {
    let app = spawn_app();
    let user = app.create_user();
    let second_token = app.login_token(&user.email, PASSWORD);
    let bystander = app.create_user();

    let resp = app.delete("/api/sessions", Some(&user.token));

    resp.assert_status(204, "DELETE /api/sessions");
    assert!(resp.body.is_empty(), "a 204 has no body:\n{}", resp.describe());
    for token in [&user.token, &second_token] {
        let resp = app.get("/api/users/me", Some(token));
        check_error(&resp, 401, "unauthorized", None);
    }
    app.get("/api/users/me", Some(&bystander.token)).assert_status(200, "another user's session");
    let fresh = app.login_token(&user.username, PASSWORD);
    app.get("/api/users/me", Some(&fresh)).assert_status(200, "a login after logging out everywhere");
}

#[test]
fn a_token_revoked_through_one_server_is_rejected_by_another() {
    let first = spawn_app();
    let second = spawn_app_on(&first.db_url, &[]);
    let user = first.create_user();
    second.get("/api/users/me", Some(&user.token)).assert_status(200, "the token on the second server");

    second.delete("/api/sessions/current", Some(&user.token)).assert_status(204, "logout on the second server");

    let resp = first.get("/api/users/me", Some(&user.token));
    check_error(&resp, 401, "unauthorized", None);
}

#[test]
fn an_expired_token_is_401_unauthorized() {
    let app = spawn_app_with(&[("TOKEN_TTL_SECS", "1")]);
    let user = app.create_user();

    let resp = wait_for("the 1-second token to expire", Duration::from_secs(15), || {
        let resp = app.get("/api/users/me", Some(&user.token));
        match resp.status {
            200 => None,
            _ => Some(resp),
        }
    });

    check_error(&resp, 401, "unauthorized", None);
    // Expiry ends a session, not the account.
    app.login_token(&user.username, PASSWORD);
}

#[test]
fn tokens_and_passwords_are_never_stored_in_plain_text() {
    let app = spawn_app();
    let user = app.create_user();
    let mut needles = vec![user.token.clone(), user.password.clone()];
    // The raw token bytes, as PostgreSQL prints a bytea.
    use base64::Engine;
    let decoded =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&user.token).ok().or_else(|| hex_decode(&user.token));
    if let Some(bytes) = decoded {
        needles.push(bytes.iter().map(|b| format!("{b:02x}")).collect());
    }
    let mut db = app.db();
    let columns = db
        .query(
            "SELECT table_schema, table_name, column_name FROM information_schema.columns
             WHERE table_schema NOT IN ('pg_catalog', 'information_schema')
               AND data_type IN ('text', 'character varying', 'character', 'bytea', 'json', 'jsonb')",
            &[],
        )
        .expect("list text columns");
    assert!(!columns.is_empty(), "no text columns found: is the schema migrated?");

    for column in &columns {
        let (schema, table, name): (String, String, String) = (column.get(0), column.get(1), column.get(2));
        for needle in &needles {
            let sql = format!(
                "SELECT count(*) FROM \"{schema}\".\"{table}\" WHERE position($1::text in \"{name}\"::text) > 0"
            );
            let found: i64 = db.query_one(&sql, &[needle]).expect("search a column").get(0);
            assert_eq!(found, 0, "{schema}.{table}.{name} holds a secret in plain text");
        }
    }
}

#[test]
fn a_password_hashed_with_fewer_iterations_still_works_after_raising_them() {
    // The hash format is self-describing: a server configured with more
    // iterations still verifies hashes made with fewer.
    let before = spawn_app_with(&[("PASSWORD_ITERATIONS", "1000")]);
    let user = before.create_user();

    let after = spawn_app_on(&before.db_url, &[("PASSWORD_ITERATIONS", "2000")]);

    after.login(&user.username, PASSWORD).assert_status(201, "login with a 1000-iteration hash at 2000");
    let resp = after.login(&user.username, "wrong password!");
    check_error(&resp, 401, "invalid_credentials", None);
    let newer = after.create_user();
    before.login(&newer.username, PASSWORD).assert_status(201, "login with a 2000-iteration hash at 1000");
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect()
}

// ---- Login rate limits ------------------------------------------------------

/// `POST /api/sessions` through a proxy that says the client is `client`.
fn login_via(app: &TestApp, client: &str, login: &str, password: &str) -> Resp {
    app.send_via(client, "POST", "/api/sessions", None, Some(json!({ "login": login, "password": password })))
}

#[test]
fn the_eleventh_failed_login_for_one_login_from_one_address_is_rate_limited_there_only() {
    let dual = spawn_dual_stack_app(&[]);
    let has_v6 = dual.is_some();
    let app = dual.unwrap_or_else(spawn_app);
    let user = app.create_user();
    app.post("/api/users", None, signup_json("other", "other@example.com", PASSWORD))
        .assert_status(201, "signup of another user");

    for attempt in 1..=10 {
        let resp = app.login(&user.username, "wrong password!");
        assert_eq!(resp.status, 401, "failed login {attempt}:\n{}", resp.describe());
        check_error(&resp, 401, "invalid_credentials", None);
    }
    let resp = app.login(&user.username, "wrong password!");

    check_limited(&resp, "the eleventh failure of one login from one address");
    check_limited(&app.login(&user.username, PASSWORD), "the right password from that address");
    check_limited(&app.login(&user.username.to_uppercase(), PASSWORD), "the login in other case");
    app.login("other", PASSWORD).assert_status(201, "another login from the same address");
    if has_v6 {
        login_from(v6(&app), &user.username, PASSWORD).assert_status(201, "the same login from another address");
    }
}

#[test]
fn the_hundred_and_first_failed_login_from_one_address_is_rate_limited() {
    let app = spawn_app_with(&[("TRUSTED_PROXIES", "127.0.0.1")]);
    let user = app.create_user();

    for attempt in 1..=100 {
        let resp = login_via(&app, "203.0.113.9", &format!("nobody{attempt}"), "wrong password!");
        assert_eq!(resp.status, 401, "failed login {attempt} of 100 from one address:\n{}", resp.describe());
    }
    let resp = login_via(&app, "203.0.113.9", "nobody101", "wrong password!");

    check_limited(&resp, "the 101st failure from one address");
    check_limited(&login_via(&app, "203.0.113.9", &user.username, PASSWORD), "a right password from that address");
    login_via(&app, "198.51.100.2", &user.username, PASSWORD).assert_status(201, "the user from another address");
}

#[test]
fn a_victim_logs_in_with_the_right_password_while_an_attacker_elsewhere_is_rate_limited() {
    let app = spawn_app_with(&[("TRUSTED_PROXIES", "127.0.0.1")]);
    let victim = app.create_user();
    let (attacker, home) = ("203.0.113.66", "198.51.100.20");

    for attempt in 1..=10 {
        let resp = login_via(&app, attacker, &victim.username, &format!("guess {attempt}"));
        assert_eq!(resp.status, 401, "the attacker's guess {attempt}:\n{}", resp.describe());
    }
    check_limited(&login_via(&app, attacker, &victim.username, "guess 11"), "the attacker's eleventh guess");
    check_limited(&login_via(&app, attacker, &victim.username, PASSWORD), "even the right password, from there");

    login_via(&app, home, &victim.username, PASSWORD).assert_status(201, "the victim from home");
    login_via(&app, home, &victim.email, PASSWORD).assert_status(201, "the victim from home, by email");
    // The attacker spreads guesses over many addresses: no address reaches its
    // limit, and the login alone is never locked.
    for idx in 0..30 {
        let resp = login_via(&app, &format!("192.0.2.{idx}"), &victim.username, "a guess");
        assert_eq!(resp.status, 401, "a guess from 192.0.2.{idx}:\n{}", resp.describe());
    }
    login_via(&app, home, &victim.username, PASSWORD).assert_status(201, "the victim after 30 more guesses");
}

#[test]
fn an_untrusted_peers_x_forwarded_for_is_ignored() {
    for trusted in ["", "10.0.0.1"] {
        let app = spawn_app_with(&[("TRUSTED_PROXIES", trusted)]);
        let user = app.create_user();

        for attempt in 1..=10 {
            // A new forged address each time: were it believed, no pair would reach 10.
            let resp = login_via(&app, &format!("198.51.100.{attempt}"), &user.username, "wrong password!");
            assert_eq!(resp.status, 401, "TRUSTED_PROXIES={trusted:?}: failure {attempt}:\n{}", resp.describe());
        }
        let resp = login_via(&app, "198.51.100.99", &user.username, PASSWORD);

        check_limited(&resp, &format!("TRUSTED_PROXIES={trusted:?}: the forged addresses all count as the peer's"));
    }
}

#[test]
fn rate_limits_off_never_throttles_logins() {
    let app = spawn_app_with(&[("RATE_LIMITS", "off")]);
    let user = app.create_user();

    for attempt in 1..=15 {
        let resp = app.login(&user.username, "wrong password!");
        assert_eq!(resp.status, 401, "failed login {attempt} with RATE_LIMITS=off:\n{}", resp.describe());
    }

    app.login(&user.username, PASSWORD).assert_status(201, "login after 15 failures with RATE_LIMITS=off");
}

// ---- Finding users ----------------------------------------------------------

#[test]
fn search_finds_usernames_by_prefix_ignoring_case_and_never_shows_emails() {
    let app = spawn_app();
    let searcher = app.create_user();
    for (name, email) in [
        ("carol1", "c1@example.com"),
        ("CAROLINE", "caro.secret@example.com"),
        ("carl", "carl@example.com"),
        ("xcarol", "x@example.com"),
        ("dave", "carol.dave@example.com"),
    ] {
        app.post("/api/users", None, signup_json(name, email, PASSWORD)).assert_status(201, name);
    }

    let resp = app.get("/api/users?q=CaRo", Some(&searcher.token));

    resp.assert_status(200, "search for CaRo");
    let body = resp.json();
    assert_keys(&body, &["users"], "search body");
    let users = body["users"].as_array().expect("users is an array");
    let mut names: Vec<&str> = users.iter().map(|u| u["username"].as_str().unwrap_or("?")).collect();
    names.sort_unstable();
    assert_eq!(names, ["CAROLINE", "carol1"], "search for CaRo: {body}");
    for user in users {
        assert_keys(user, &["id", "username", "online"], "a search result");
        assert_eq!(user["online"], json!(false), "nobody is connected: {user}");
    }
    assert!(!resp.text().contains('@'), "a search result shows an email: {}", resp.text());
}

#[test]
fn search_takes_the_prefix_literally() {
    let app = spawn_app();
    let searcher = app.create_user();
    for name in ["_under", "plain", "u_nder"] {
        app.post("/api/users", None, signup_json(name, &format!("{name}@example.com"), PASSWORD))
            .assert_status(201, name);
    }

    let underscore = app.get("/api/users?q=_", Some(&searcher.token));
    let percent = app.get("/api/users?q=%25", Some(&searcher.token));

    underscore.assert_status(200, "search for _");
    let names: Vec<Value> =
        underscore.json()["users"].as_array().unwrap().iter().map(|u| u["username"].clone()).collect();
    assert_eq!(names, [json!("_under")], "q=_ matches only names starting with _");
    percent.assert_status(200, "search for %");
    assert_eq!(percent.json()["users"], json!([]), "q=% matches nothing");
}

#[test]
fn search_returns_20_by_default_and_at_most_limit() {
    let app = spawn_app();
    let searcher = app.create_user();
    for idx in 0..25 {
        let name = format!("lim_{idx:02}");
        app.post("/api/users", None, signup_json(&name, &format!("{name}@example.com"), PASSWORD))
            .assert_status(201, &name);
    }
    let count = |query: &str| -> usize {
        let resp = app.get(&format!("/api/users?{query}"), Some(&searcher.token));
        resp.assert_status(200, query);
        resp.json()["users"].as_array().unwrap_or_else(|| panic!("{query}: {resp:?}")).len()
    };

    assert_eq!(count("q=lim_"), 20, "default limit");
    assert_eq!(count("q=LIM_&limit=5"), 5, "limit=5");
    assert_eq!(count("q=lim_&limit=1"), 1, "limit=1");
    assert_eq!(count("q=lim_&limit=100"), 25, "limit=100");
    assert_eq!(count("q=lim_0&limit=100"), 10, "prefix lim_0");
}

#[test]
fn search_limits_outside_1_to_100_are_400_on_limit() {
    let app = spawn_app();
    let searcher = app.create_user();

    for limit in ["0", "101", "abc", "-1", "1.5", ""] {
        let resp = app.get(&format!("/api/users?q=u&limit={limit}"), Some(&searcher.token));
        assert_eq!(resp.status, 400, "limit={limit:?}:\n{}", resp.describe());
        check_error(&resp, 400, "invalid_request", Some("limit"));
    }
}

#[test]
fn another_user_by_id_is_a_user_without_email() {
    let app = spawn_app();
    let caller = app.create_user();
    let other = app.create_user();

    let resp = app.get(&format!("/api/users/{}", other.id), Some(&caller.token));

    resp.assert_status(200, "GET /api/users/{id}");
    assert_user(&resp.json(), other.id, &other.username, "another user");
    assert!(!resp.text().contains(&other.email), "another user's email shows: {}", resp.text());
    assert!(!resp.text().contains('@'), "an email shows: {}", resp.text());
}

#[test]
fn an_unknown_or_non_numeric_user_id_is_404() {
    let app = spawn_app();
    let caller = app.create_user();

    for id in [
        (caller.id + 1000).to_string(),
        "0".to_string(),
        "-1".to_string(),
        "abc".to_string(),
        "1.5".to_string(),
        "99999999999999999999".to_string(),
        format!("{}abc", caller.id),
    ] {
        let resp = app.get(&format!("/api/users/{id}"), Some(&caller.token));
        assert_eq!(resp.status, 404, "GET /api/users/{id}:\n{}", resp.describe());
        check_error(&resp, 404, "not_found", None);
    }
}

// ---- The seed's account routes (section 8) ----------------------------------

#[test]
fn seed_signup_answers_200_with_a_string_id_username_and_email() {
    let app = spawn_app();

    let resp = app.post("/user/signup", None, signup_json("Alice_1", "alice@example.com", PASSWORD));

    resp.assert_status(200, "POST /user/signup");
    let body = resp.json();
    assert_keys(&body, &["id", "username", "email"], "seed signup body");
    let id: i64 = body["id"]
        .as_str()
        .unwrap_or_else(|| panic!("the seed's id is a JSON string: {body}"))
        .parse()
        .unwrap_or_else(|e| panic!("the seed's id is a number in a string ({e}): {body}"));
    assert_eq!(body["username"], json!("Alice_1"));
    assert_eq!(body["email"], json!("alice@example.com"));
    let token = app.login_token("Alice_1", PASSWORD);
    let me = app.get("/api/users/me", Some(&token)).json();
    assert_eq!(me["id"], json!(id), "the seed's id is the account's id");
}

#[test]
fn seed_signup_follows_the_account_rules() {
    let app = spawn_app();
    app.post("/api/users", None, signup_json("alice", "alice@example.com", PASSWORD)).assert_status(201, "signup");

    let short = app.post("/user/signup", None, signup_json("ab", "ab@example.com", PASSWORD));
    let taken_name = app.post("/user/signup", None, signup_json("ALICE", "b@example.com", PASSWORD));
    let taken_email = app.post("/user/signup", None, signup_json("bob", "ALICE@example.com", PASSWORD));
    let short_password = app.post("/user/signup", None, signup_json("bob", "bob@example.com", "short"));
    let no_email = app.post("/user/signup", None, json!({ "username": "bob", "password": PASSWORD }));

    check_error(&short, 400, "invalid_request", Some("username"));
    check_error(&taken_name, 409, "conflict", Some("username"));
    check_error(&taken_email, 409, "conflict", Some("email"));
    check_error(&short_password, 400, "invalid_request", Some("password"));
    check_error(&no_email, 400, "invalid_request", Some("email"));
}

#[test]
fn seed_login_answers_200_with_only_a_token_that_works_on_the_api() {
    let app = spawn_app();
    let user = app.create_user();

    let resp = app.post("/user/login", None, json!({ "email": user.email, "password": PASSWORD }));

    resp.assert_status(200, "POST /user/login");
    let body = resp.json();
    assert_keys(&body, &["token"], "seed login body");
    let token = body["token"].as_str().expect("token is a string");
    let me = app.get("/api/users/me", Some(token));
    me.assert_status(200, "the seed's token on /api/users/me");
    assert_eq!(me.json()["id"], json!(user.id));
}

#[test]
fn seed_login_failures_are_identical_401_invalid_credentials() {
    let app = spawn_app();
    let user = app.create_user();

    let wrong_password = app.post("/user/login", None, json!({ "email": user.email, "password": "wrong password!" }));
    let unknown = app.post("/user/login", None, json!({ "email": "nobody@example.com", "password": PASSWORD }));

    check_error(&wrong_password, 401, "invalid_credentials", None);
    check_error(&unknown, 401, "invalid_credentials", None);
    assert_eq!(wrong_password.body, unknown.body);
}

#[test]
fn seed_logout_answers_the_seed_message_and_ends_the_session() {
    let app = spawn_app();
    let user = app.create_user();
    let other_token = app.login_token(&user.username, PASSWORD);
    let authorization = format!("Bearer {}", user.token);

    // The seed's clients send no body and no Content-Type.
    let resp = app.raw("POST", "/user/logout", &[("Authorization", &authorization)], b"");

    resp.assert_status(200, "POST /user/logout");
    assert_eq!(resp.json(), json!({ "message": "Successfully logged out" }));
    let resp = app.get("/api/users/me", Some(&user.token));
    check_error(&resp, 401, "unauthorized", None);
    app.get("/api/users/me", Some(&other_token)).assert_status(200, "the user's other session");
    let resp = app.raw("POST", "/user/logout", &[("Authorization", &authorization)], b"");
    check_error(&resp, 401, "unauthorized", None);
}

/// `METHOD path` on the compiled server at `addr`, with `token` as the bearer.
fn as_bearer(addr: SocketAddr, method: &str, path: &str, token: &str) -> Resp {
    let authorization = format!("Bearer {token}");
    request(addr, method, path, &[("Authorization", &authorization)], b"")
}

/// Two compiled servers on one database, and the account `alice` made
/// through the first: each server with its HTTP address.
fn two_processes_with_alice() -> (crate::binary::Running, SocketAddr, crate::binary::Running, SocketAddr) {
    let db_url = fresh_database();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let (a, http_a, _) = crate::binary::serve_in(repo, &db_url, &[("RATE_LIMITS", "off")]);
    let (b, http_b, _) = crate::binary::serve_in(repo, &db_url, &[("RATE_LIMITS", "off")]);
    let signup = json!({ "username": "alice", "email": "alice@example.com", "password": PASSWORD }).to_string();
    let json_headers = [("Content-Type", "application/json")];
    request(http_a, "POST", "/api/users", &json_headers, signup.as_bytes()).assert_status(201, "signup");
    (a, http_a, b, http_b)
}

/// A new session of `alice` on the server at `http`: its token.
fn log_in_alice(http: SocketAddr) -> String {
    let login = json!({ "login": "alice", "password": PASSWORD }).to_string();
    let resp = request(http, "POST", "/api/sessions", &[("Content-Type", "application/json")], login.as_bytes());
    resp.assert_status(201, "login").json()["token"].as_str().expect("a token").to_string()
}

// Issue 14: sessions are cached per process, so ending one must reach every
// process's cache before the client hears it ended (src/confirm.rs).
#[test]
fn a_session_ended_on_one_process_is_refused_by_another_at_once() {
    let (_a, http_a, _b, http_b) = two_processes_with_alice();

    for round in 0..20 {
        let tokens: Vec<String> = (0..2).map(|_| log_in_alice(http_a)).collect();
        for token in &tokens {
            // Twice, so that process B has surely cached the session.
            for _ in 0..2 {
                as_bearer(http_b, "GET", "/api/users/me", token)
                    .assert_status(200, &format!("round {round}: B knows it"));
            }
        }
        // Round by round, the session ends by logout or by logout everywhere.
        let (ending, path) =
            if round % 2 == 0 { (&tokens[..1], "/api/sessions/current") } else { (&tokens[..], "/api/sessions") };
        as_bearer(http_a, "DELETE", path, &tokens[0]).assert_status(204, &format!("round {round}: DELETE {path} on A"));

        for token in ending {
            let resp = as_bearer(http_b, "GET", "/api/users/me", token);
            check_error(&resp, 401, "unauthorized", None);
        }
        if let [_, kept] = &tokens[..] {
            if round % 2 == 0 {
                as_bearer(http_b, "GET", "/api/users/me", kept).assert_status(200, "the other session lives on");
            }
        }
    }
}

/// `kill -SIGNAL pid`.
fn signal_process(signal: &str, pid: u32) {
    let sent = std::process::Command::new("kill").args([format!("-{signal}"), pid.to_string()]).status();
    assert!(sent.is_ok_and(|status| status.success()), "kill -{signal} {pid}");
}

// Found by review: a process frozen across a logout elsewhere, and thawed
// just after the logout answered, still used its cache for the token.
#[test]
fn a_session_ended_while_another_process_is_frozen_is_refused_there_after_it_thaws() {
    let (_a, http_a, b, http_b) = two_processes_with_alice();

    for round in 0..5u64 {
        let token = log_in_alice(http_a);
        for _ in 0..2 {
            as_bearer(http_b, "GET", "/api/users/me", &token).assert_status(200, "B caches the session");
        }
        // At a different point of B's listener's round each time.
        std::thread::sleep(Duration::from_millis(100 + 230 * round));
        signal_process("STOP", b.pid());
        let logout = as_bearer(http_a, "DELETE", "/api/sessions/current", &token);
        std::thread::sleep(Duration::from_millis(100));
        signal_process("CONT", b.pid());

        logout.assert_status(204, &format!("round {round}: logout on A while B is frozen"));
        let resp = as_bearer(http_b, "GET", "/api/users/me", &token);
        check_error(&resp, 401, "unauthorized", None);
    }
}
