//! Servers under test: each bound to port 0 on its own database.
//!
//! A `TestApp` is one server process as far as the contract is concerned;
//! two of them on one database behave as two processes. Its methods are the
//! client actions tests are written in.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};

use super::client::{random_hex, request, Resp, TestUser};
use super::pg;

/// A 64-character key: the server requires at least 32.
const SECRET_KEY: &str = "test-secret-key-0123456789abcdef-0123456789abcdef-0123456789abcd";

/// The password `create_user` gives every user.
pub const PASSWORD: &str = "correct horse battery";

/// A running server and the addresses to reach it.
pub struct TestApp {
    pub http_addr: SocketAddr,
    pub ws_addr: SocketAddr,
    pub db_url: String,
    running: Option<messaging::server::Running>,
}

/// A server on a fresh database with the test defaults.
pub fn spawn_app() -> TestApp {
    spawn_app_with(&[])
}

/// A server on a fresh database, with `vars` overriding the test defaults.
pub fn spawn_app_with(vars: &[(&str, &str)]) -> TestApp {
    spawn_app_on(&pg::fresh_database(), vars)
}

/// A server on an existing database: a second server on a test's database,
/// or a server on a `PrivateCluster`.
pub fn spawn_app_on(db_url: &str, vars: &[(&str, &str)]) -> TestApp {
    let http = TcpListener::bind("127.0.0.1:0").expect("bind an HTTP port");
    let ws = TcpListener::bind("127.0.0.1:0").expect("bind a WS port");
    spawn_app_on_listeners(db_url, vars, http, ws)
}

/// A server on listeners the test bound itself (an IPv6 wildcard, say).
pub fn spawn_app_on_listeners(db_url: &str, vars: &[(&str, &str)], http: TcpListener, ws: TcpListener) -> TestApp {
    let mut env: HashMap<String, String> = [
        ("DATABASE_URL", db_url),
        ("SECRET_KEY", SECRET_KEY),
        ("PASSWORD_ITERATIONS", "1000"),
        ("LOG", "error"),
        ("WORKERS", "4"),
        // Tests send hundreds of messages and sign up dozens of users in a
        // second; tests/it/limits.rs sets these budgets back where it checks them.
        ("MESSAGE_RATE", "1000000"),
        ("MESSAGE_BURST", "1000000"),
        ("SIGNUP_RATE", "1000000"),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value.to_string()))
    .collect();
    for (name, value) in vars {
        env.insert(name.to_string(), value.to_string());
    }
    let config = messaging::config::Config::from_lookup(|name: &str| env.get(name).cloned())
        .unwrap_or_else(|problems| panic!("test configuration rejected: {problems:?}"));
    let running = messaging::server::start(config, http, ws).unwrap_or_else(|e| panic!("server did not start: {e}"));
    TestApp {
        http_addr: running.http_addr(),
        ws_addr: running.ws_addr(),
        db_url: db_url.to_string(),
        running: Some(running),
    }
}

#[allow(dead_code)]
impl TestApp {
    /// A client for a server this test did not start in-process (a child
    /// process running the binary, say); dropping it stops nothing.
    pub fn attach(http_addr: SocketAddr, ws_addr: SocketAddr, db_url: &str) -> TestApp {
        TestApp { http_addr, ws_addr, db_url: db_url.to_string(), running: None }
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.send("GET", path, token, None)
    }

    /// Sends `body` as `Content-Type: application/json`.
    pub fn post(&self, path: &str, token: Option<&str>, body: Value) -> Resp {
        self.send("POST", path, token, Some(body))
    }

    pub fn patch(&self, path: &str, token: Option<&str>, body: Value) -> Resp {
        self.send("PATCH", path, token, Some(body))
    }

    pub fn put(&self, path: &str, token: Option<&str>, body: Value) -> Resp {
        self.send("PUT", path, token, Some(body))
    }

    pub fn delete(&self, path: &str, token: Option<&str>) -> Resp {
        self.send("DELETE", path, token, None)
    }

    /// Exactly these headers and body bytes; only `Host`, `Content-Length`
    /// and `Connection: close` are added when missing.
    pub fn raw(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        request(self.http_addr, method, path, headers, body)
    }

    /// `send`, through a proxy that says the client is `client`
    /// (`X-Forwarded-For`): the server must list 127.0.0.1 in `TRUSTED_PROXIES`.
    pub fn send_via(&self, client: &str, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Resp {
        self.send_with(method, path, token, body, &[("X-Forwarded-For", client)])
    }

    fn send(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Resp {
        self.send_with(method, path, token, body, &[])
    }

    fn send_with(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        extra: &[(&str, &str)],
    ) -> Resp {
        let authorization = token.map(|token| format!("Bearer {token}"));
        let mut headers: Vec<(&str, &str)> = extra.to_vec();
        if let Some(authorization) = &authorization {
            headers.push(("Authorization", authorization));
        }
        let bytes = match &body {
            Some(body) => {
                headers.push(("Content-Type", "application/json"));
                serde_json::to_vec(body).expect("a JSON value serializes")
            }
            None => Vec::new(),
        };
        request(self.http_addr, method, path, &headers, &bytes)
    }

    /// `POST /api/users`.
    pub fn signup(&self, username: &str, email: &str, password: &str) -> Resp {
        self.post("/api/users", None, json!({ "username": username, "email": email, "password": password }))
    }

    /// `POST /api/sessions` with a username or an email.
    pub fn login(&self, login: &str, password: &str) -> Resp {
        self.post("/api/sessions", None, json!({ "login": login, "password": password }))
    }

    /// Signs up a user with a unique name and logs it in.
    pub fn create_user(&self) -> TestUser {
        self.create_user_named(&format!("u{}", random_hex(6)))
    }

    /// Signs up `username` (email `<username>@example.com`) and logs it in.
    pub fn create_user_named(&self, username: &str) -> TestUser {
        let email = format!("{username}@example.com");
        let signup = self.signup(username, &email, PASSWORD);
        assert_eq!(signup.status, 201, "signing up {username} failed:\n{}", signup.describe());
        let me = signup.json();
        let id =
            me["id"].as_i64().unwrap_or_else(|| panic!("signup of {username}: no integer id:\n{}", signup.describe()));
        let token = self.login_token(username, PASSWORD);
        TestUser { id, username: username.to_string(), email, password: PASSWORD.to_string(), token }
    }

    /// Logs in and returns the new session's token, asserting `201`.
    pub fn login_token(&self, login: &str, password: &str) -> String {
        let session = self.login(login, password);
        assert_eq!(session.status, 201, "logging in as {login} failed:\n{}", session.describe());
        session.json()["token"]
            .as_str()
            .unwrap_or_else(|| panic!("login as {login}: no token string:\n{}", session.describe()))
            .to_string()
    }

    /// A direct connection to this server's database.
    pub fn db(&self) -> postgres::Client {
        pg::connect(&self.db_url)
    }
}

impl Drop for TestApp {
    /// Shuts the server down, but never lets a stuck shutdown hang the test run.
    fn drop(&mut self) {
        let Some(running) = self.running.take() else { return };
        let (done_tx, done_rx) = mpsc::channel();
        std::thread::spawn(move || {
            running.shutdown();
            let _ = done_tx.send(());
        });
        if done_rx.recv_timeout(Duration::from_secs(10)).is_err() && !std::thread::panicking() {
            eprintln!("warning: server at {} did not shut down within 10 s", self.http_addr);
        }
    }
}
