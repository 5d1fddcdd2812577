//! Operations and transport: health checks, routing errors, the `/ws` hint
//! on the HTTP port, and the body rules of contract section 1.
//!
//! Body rules are exercised on `POST /api/users`, the one route that takes a
//! body without a token; after each rejected request the same signup still
//! succeeds, which shows the rejected one wrote nothing.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{
    assert_keys, check_error, random_hex, spawn_app, spawn_app_on, spawn_app_with, wait_for, PrivateCluster, Resp,
    TestApp,
};

fn signup_body(username: &str) -> Value {
    json!({
        "username": username,
        "email": format!("{username}@example.com"),
        "password": "correct horse battery",
    })
}

/// Asserts that a signup of `username` (after a rejected attempt) still works.
fn assert_signup_still_possible(app: &TestApp, username: &str) {
    let resp = app.post("/api/users", None, signup_body(username));
    resp.assert_status(201, "the same signup after a rejected one");
}

#[test]
fn healthz_answers_status_ok() {
    let app = spawn_app();

    let resp = app.get("/healthz", None);

    resp.assert_status(200, "GET /healthz");
    assert_eq!(resp.json(), json!({ "status": "ok" }), "{resp:?}");
}

#[test]
fn openapi_json_serves_the_repository_document_without_a_token() {
    let app = spawn_app();
    let in_repository: Value =
        serde_json::from_str(include_str!("../../docs/openapi.json")).expect("docs/openapi.json is JSON");

    let resp = app.get("/openapi.json", None);

    resp.assert_status(200, "GET /openapi.json");
    assert_eq!(resp.header("Content-Type"), Some("application/json"), "{resp:?}");
    let served = resp.json();
    assert_eq!(served["openapi"], "3.1.0", "{resp:?}");
    assert_eq!(served, in_repository, "the served document is docs/openapi.json");
}

#[test]
fn readyz_answers_ok_while_the_database_answers() {
    let app = spawn_app();

    let resp = app.get("/readyz", None);

    resp.assert_status(200, "GET /readyz");
}

#[test]
fn readyz_is_unavailable_while_the_database_is_down_and_recovers_without_a_restart() {
    let cluster = PrivateCluster::start();
    let app = spawn_app_on(cluster.url(), &[]);
    let user = app.create_user();
    app.get("/readyz", None).assert_status(200, "readyz before the database stops");

    cluster.stop();

    let down = wait_for("readyz to answer 503 with the database stopped", Duration::from_secs(30), || {
        let resp = app.get("/readyz", None);
        match resp.status {
            200 => None,
            503 => Some(resp),
            _ => panic!("readyz answered neither 200 nor 503:\n{}", resp.describe()),
        }
    });
    check_error(&down, 503, "unavailable", None);
    app.get("/healthz", None).assert_status(200, "healthz while the database is down");
    // Every worker meets the dead connection: each must answer 503, never 500 or 401.
    for attempt in 0..8 {
        let resp = app.get("/api/users/me", Some(&user.token));
        if resp.status != 503 {
            panic!("attempt {attempt}: /api/users/me with the database down:\n{}", resp.describe());
        }
        check_error(&resp, 503, "unavailable", None);
    }

    cluster.start_again();

    wait_for("readyz to answer 200 after the database restarts", Duration::from_secs(30), || {
        let resp = app.get("/readyz", None);
        match resp.status {
            200 => Some(()),
            503 => None,
            _ => panic!("readyz answered neither 200 nor 503:\n{}", resp.describe()),
        }
    });
    // A worker may answer 503 once while it reconnects; after that, all is well.
    let mut consecutive_ok = 0;
    wait_for("20 successive requests to succeed after the restart", Duration::from_secs(30), || {
        let resp = app.get("/api/users/me", Some(&user.token));
        match resp.status {
            200 => consecutive_ok += 1,
            503 => consecutive_ok = 0,
            _ => panic!("/api/users/me after the restart:\n{}", resp.describe()),
        }
        (consecutive_ok >= 20).then_some(())
    });
    app.create_user();
}

#[test]
fn unknown_paths_are_not_found() {
    let app = spawn_app();
    let user = app.create_user();

    for path in ["/nope", "/api/nope", "/api/users/me/nope", "/api"] {
        let resp = app.get(path, Some(&user.token));
        check_error(&resp, 404, "not_found", None);
        let resp = app.get(path, None);
        check_error(&resp, 404, "not_found", None);
    }
}

#[test]
fn a_known_path_with_the_wrong_method_is_405_with_an_allow_header() {
    let app = spawn_app();
    let user = app.create_user();
    let allows = |resp: &Resp, method: &str| {
        let allow = resp.header("Allow").unwrap_or("");
        assert!(
            allow.split(',').any(|m| m.trim().eq_ignore_ascii_case(method)),
            "Allow should list {method}:\n{}",
            resp.describe()
        );
    };

    let resp = app.put("/api/users/me", Some(&user.token), json!({ "username": "x" }));
    check_error(&resp, 405, "method_not_allowed", None);
    allows(&resp, "GET");

    let resp = app.delete("/healthz", None);
    check_error(&resp, 405, "method_not_allowed", None);
    allows(&resp, "GET");

    let resp = app.put("/api/sessions", Some(&user.token), json!({}));
    check_error(&resp, 405, "method_not_allowed", None);
    allows(&resp, "GET");
    allows(&resp, "POST");
    allows(&resp, "DELETE");
}

#[test]
fn ws_on_the_http_port_answers_426_naming_the_websocket_address() {
    let app = spawn_app();
    let plain = app.get("/ws", None);
    let upgrade = app.raw(
        "GET",
        "/ws",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ],
        b"",
    );

    for resp in [plain, upgrade] {
        resp.assert_status(426, "GET /ws on the HTTP port");
        let body = resp.json();
        assert_keys(&body, &["error", "ws_url"], "426 body");
        assert_keys(&body["error"], &["code", "message"], "426 error object");
        assert!(body["error"]["code"].is_string() && body["error"]["message"].is_string(), "{resp:?}");
        let ws_url = body["ws_url"].as_str().unwrap_or_else(|| panic!("ws_url: {resp:?}"));
        assert!(ws_url.starts_with("ws://"), "ws_url {ws_url:?} is not a ws:// URL");
        assert!(ws_url.ends_with("/ws"), "ws_url {ws_url:?} does not name /ws");
        assert!(
            ws_url.contains(&format!(":{}/", app.ws_addr.port())),
            "ws_url {ws_url:?} does not name the WebSocket port {}",
            app.ws_addr.port()
        );
    }
}

#[test]
fn a_body_with_another_content_type_is_415() {
    let app = spawn_app();
    let body = serde_json::to_vec(&signup_body("alice")).unwrap();

    for content_type in ["text/plain", "application/x-www-form-urlencoded", "application/jsonx"] {
        let resp = app.raw("POST", "/api/users", &[("Content-Type", content_type)], &body);
        check_error(&resp, 415, "unsupported_media_type", None);
    }

    assert_signup_still_possible(&app, "alice");
}

#[test]
fn a_body_without_content_type_is_415() {
    let app = spawn_app();
    let body = serde_json::to_vec(&signup_body("alice")).unwrap();

    let resp = app.raw("POST", "/api/users", &[], &body);

    check_error(&resp, 415, "unsupported_media_type", None);
    assert_signup_still_possible(&app, "alice");
}

#[test]
fn content_type_parameters_such_as_charset_are_accepted() {
    let app = spawn_app();
    let body = serde_json::to_vec(&signup_body("alice")).unwrap();

    let resp = app.raw("POST", "/api/users", &[("Content-Type", "application/json; charset=utf-8")], &body);

    resp.assert_status(201, "signup with a charset parameter");
}

/// A signup body padded (with an ignored field) to exactly `size` bytes.
fn signup_body_of_size(username: &str, size: usize) -> Vec<u8> {
    let mut body = signup_body(username);
    body["padding"] = json!("");
    let base = serde_json::to_vec(&body).unwrap().len();
    assert!(base <= size, "the unpadded body already has {base} bytes");
    body["padding"] = json!("x".repeat(size - base));
    let bytes = serde_json::to_vec(&body).unwrap();
    assert_eq!(bytes.len(), size);
    bytes
}

#[test]
fn a_body_one_byte_over_max_body_bytes_is_413() {
    let app = spawn_app_with(&[("MAX_BODY_BYTES", "1024")]);
    let body = signup_body_of_size("alice", 1025);

    let resp = app.raw("POST", "/api/users", &[("Content-Type", "application/json")], &body);

    check_error(&resp, 413, "payload_too_large", None);
    assert_signup_still_possible(&app, "alice");
}

#[test]
fn a_body_of_exactly_max_body_bytes_is_accepted() {
    let app = spawn_app_with(&[("MAX_BODY_BYTES", "1024")]);
    let body = signup_body_of_size("alice", 1024);

    let resp = app.raw("POST", "/api/users", &[("Content-Type", "application/json")], &body);

    resp.assert_status(201, "a signup body of exactly MAX_BODY_BYTES");
}

#[test]
fn a_chunked_body_over_max_body_bytes_is_413() {
    let app = spawn_app_with(&[("MAX_BODY_BYTES", "1024")]);
    let body = signup_body_of_size("alice", 2000);
    let mut chunked = Vec::new();
    for chunk in body.chunks(300) {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");

    let resp = app.raw(
        "POST",
        "/api/users",
        &[("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")],
        &chunked,
    );

    check_error(&resp, 413, "payload_too_large", None);
    assert_signup_still_possible(&app, "alice");
}

#[test]
fn malformed_json_is_invalid_request() {
    let app = spawn_app();
    let bodies: [&[u8]; 4] = [
        br#"{"username": "alice", "email": "alice@example.com","#,
        br#"{username: "alice"}"#,
        b"not json at all",
        br#"{"username": "alice"} trailing"#,
    ];

    for body in bodies {
        let resp = app.raw("POST", "/api/users", &[("Content-Type", "application/json")], body);
        check_error(&resp, 400, "invalid_request", None);
    }
}

#[test]
fn a_json_value_other_than_an_object_is_invalid_request() {
    let app = spawn_app();
    let array = serde_json::to_vec(&json!([signup_body("alice")])).unwrap();
    let bodies: [&[u8]; 5] = [&array, b"[]", b"\"alice\"", b"42", b"null"];

    for body in bodies {
        let resp = app.raw("POST", "/api/users", &[("Content-Type", "application/json")], body);
        check_error(&resp, 400, "invalid_request", None);
    }
    assert_signup_still_possible(&app, "alice");
}

#[test]
fn an_empty_json_body_is_invalid_request() {
    let app = spawn_app();

    let resp = app.raw("POST", "/api/users", &[("Content-Type", "application/json")], b"");

    check_error(&resp, 400, "invalid_request", None);
}

#[test]
fn a_body_that_is_not_utf8_is_invalid_request() {
    let app = spawn_app();
    let body = b"{\"username\": \"al\xff\xfeice\", \"email\": \"a@example.com\", \"password\": \"correct horse\"}";

    let resp = app.raw("POST", "/api/users", &[("Content-Type", "application/json")], body);

    check_error(&resp, 400, "invalid_request", None);
}

#[test]
fn a_request_from_ipv6_loopback_is_served() {
    // The rate-limit tests in `accounts` rely on the server listening on a
    // dual-stack socket; this shows it works before they depend on it.
    let Some(app) = crate::accounts::spawn_dual_stack_app(&[]) else {
        eprintln!("no IPv6 loopback here: nothing to check");
        return;
    };
    let v6 = SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], app.http_addr.port()));

    let resp = crate::support::request(v6, "GET", "/healthz", &[], b"");

    resp.assert_status(200, "GET /healthz over ::1");
    let name = format!("v{}", random_hex(4));
    assert_signup_still_possible(&app, &name);
}

#[test]
fn a_body_with_a_key_given_twice_is_400_whichever_copy_would_count() {
    let app = spawn_app();
    let bodies = [
        r#"{"username": "first", "email": "a@example.com", "password": "correct horse battery", "username": "second"}"#,
        r#"{"username": "first", "email": "a@example.com", "password": "correct horse battery", "\u0075sername": "x"}"#,
        r#"{"username": "first", "email": "a@example.com", "password": "correct horse battery", "x": {"y": 1, "y": 2}}"#,
    ];
    for body in bodies {
        let resp = app.raw("POST", "/api/users", &[("Content-Type", "application/json")], body.as_bytes());

        check_error(&resp, 400, "invalid_request", None);
    }
    app.post("/api/users", None, signup_body("first")).assert_status(201, "no account was made from those");
}
