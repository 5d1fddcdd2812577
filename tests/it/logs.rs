//! The log as an operator reads it: logfmt lines on stderr filtered by `LOG`,
//! one `msg=request` line per request whose `req=` the response carries as
//! `X-Request-Id`, the causes of 500s and 503s in the log but never in a body,
//! and a process that ends when a thread it cannot live without dies.
//!
//! The log is the process's stderr, so every test here runs the compiled
//! binary through `binary::Running` and reads the file its stderr goes to.

use std::net::SocketAddr;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::binary::{assert_failed_cleanly, free_addr, run, Running, SECRET_KEY, UNUSED_DATABASE_URL};
use crate::support::{check_error, fresh_database, pg, random_hex, request, PrivateCluster, Resp};

/// The password every user here signs up with.
const PASSWORD: &str = "correct horse battery";

/// The levels a line may carry; `off` is a setting of `LOG`, never a line's level.
const LINE_LEVELS: [&str; 4] = ["error", "warn", "info", "debug"];

/// The single-instance threads whose death ends the process.
const WATCHED_THREADS: [&str; 5] = ["hub", "notifier", "listener", "presence", "ws-accept"];

/// The only body a 500 ever has.
const OPAQUE_500: &str = r#"{"error":{"code":"internal","message":"internal error"}}"#;

/// How long a request's line may take to appear after its response.
const LINE_DEADLINE: Duration = Duration::from_secs(5);

/// How long a dying watched thread may take to end the process.
const FAULT_DEADLINE: Duration = Duration::from_secs(15);

/// How long a server without a fault must stay up to count as staying up.
const CONTROL_WINDOW: Duration = Duration::from_secs(2);

/// How long the database may take to be seen as gone, or as back.
const OUTAGE_DEADLINE: Duration = Duration::from_secs(30);

/// One line of stderr read as logfmt: its `key=value` pairs, in order.
#[derive(Debug)]
struct LogLine {
    text: String,
    pairs: Vec<(String, String)>,
}

impl LogLine {
    /// Reads `text` as space-separated `key=value` pairs, or says what is wrong.
    ///
    /// A value is bare, or double-quoted with `\"`, `\\`, `\n` (and `\r`,
    /// `\t`) escapes. A bare value is never empty and holds no `=` or `"`;
    /// a space ends it.
    fn parse(text: &str) -> Result<LogLine, String> {
        let mut pairs = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let key_end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || "_-.".contains(c))).unwrap_or(rest.len());
            let key = &rest[..key_end];
            if key.is_empty() {
                return Err(format!("expected a key at {rest:?}"));
            }
            let Some(after_equals) = rest[key_end..].strip_prefix('=') else {
                return Err(format!("key {key:?} is not followed by `=`"));
            };
            let (value, after_value) = match after_equals.strip_prefix('"') {
                Some(quoted) => unquote(quoted).map_err(|problem| format!("the value of {key:?}: {problem}"))?,
                None => {
                    let end = after_equals.find(' ').unwrap_or(after_equals.len());
                    let bare = &after_equals[..end];
                    if bare.is_empty() {
                        return Err(format!("the value of {key:?} is empty but not quoted"));
                    }
                    if bare.contains(['=', '"']) {
                        return Err(format!("the value of {key:?} holds `=` or `\"` but is not quoted: {bare:?}"));
                    }
                    (bare.to_string(), &after_equals[end..])
                }
            };
            pairs.push((key.to_string(), value));
            rest = match after_value.strip_prefix(' ') {
                Some("") => return Err("the line ends with a space".into()),
                Some(next) => next,
                None if after_value.is_empty() => after_value,
                None => return Err(format!("no space after the value of {key:?}, at {after_value:?}")),
            };
        }
        Ok(LogLine { text: text.to_string(), pairs })
    }

    /// The value of the first `key`, if the line has one.
    fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Whether the line has `key` with exactly `value`.
    fn has(&self, key: &str, value: &str) -> bool {
        self.get(key) == Some(value)
    }

    /// Checks the rule every line follows: `ts=<RFC 3339 UTC, ending in Z>
    /// level=<error|warn|info|debug> msg=<text>` first, and no key twice.
    fn check_prefix(&self) -> Result<(), String> {
        let keys: Vec<&str> = self.pairs.iter().map(|(k, _)| k.as_str()).collect();
        if keys.len() < 3 || keys[..3] != ["ts", "level", "msg"] {
            return Err(format!("the keys start {keys:?}, not ts, level, msg"));
        }
        if let Some(repeated) = keys.iter().enumerate().find(|(idx, key)| keys[..*idx].contains(key)) {
            return Err(format!("key {:?} appears twice", repeated.1));
        }
        let ts = &self.pairs[0].1;
        if !ts.ends_with('Z') {
            return Err(format!("ts {ts:?} does not end in Z"));
        }
        if let Err(e) = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339) {
            return Err(format!("ts {ts:?} is not RFC 3339: {e}"));
        }
        let level = &self.pairs[1].1;
        if !LINE_LEVELS.contains(&level.as_str()) {
            return Err(format!("level {level:?} is none of {LINE_LEVELS:?}"));
        }
        if self.pairs[2].1.is_empty() {
            return Err("msg is empty".into());
        }
        Ok(())
    }
}

/// Reads a quoted value that started just before `quoted`; returns it and what follows the closing quote.
fn unquote(quoted: &str) -> Result<(String, &str), String> {
    let mut value = String::new();
    let mut chars = quoted.char_indices();
    while let Some((idx, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &quoted[idx + 1..])),
            '\\' => match chars.next() {
                Some((_, '"')) => value.push('"'),
                Some((_, '\\')) => value.push('\\'),
                Some((_, 'n')) => value.push('\n'),
                Some((_, 'r')) => value.push('\r'),
                Some((_, 't')) => value.push('\t'),
                other => return Err(format!("unknown escape \\{:?}", other.map(|(_, c)| c))),
            },
            _ => value.push(c),
        }
    }
    Err("the closing quote is missing".into())
}

/// The lines of `stderr` that are complete: a line still being written has no newline yet.
fn complete_lines(stderr: &str) -> Vec<&str> {
    stderr.rsplit_once('\n').map_or("", |(done, _)| done).lines().collect()
}

/// `messaging serve` as a child process, on ports chosen for it.
struct Server {
    running: Running,
    http_addr: SocketAddr,
    what: String,
}

impl Server {
    /// Starts `messaging serve` on `db_url`; `vars` add to or override the
    /// defaults (two workers, cheap password hashes, `LOG` unset).
    fn spawn(db_url: &str, vars: &[(&str, &str)]) -> Server {
        let http_addr = free_addr();
        let (http, ws) = (http_addr.to_string(), free_addr().to_string());
        let mut env = vec![
            ("DATABASE_URL", db_url),
            ("SECRET_KEY", SECRET_KEY),
            ("HTTP_ADDR", http.as_str()),
            ("WS_ADDR", ws.as_str()),
            ("WORKERS", "2"),
            ("PASSWORD_ITERATIONS", "1000"),
        ];
        env.extend_from_slice(vars);
        let what = format!("messaging serve with {vars:?}");
        Server { running: Running::spawn(&["serve"], &env), http_addr, what }
    }

    /// `spawn`, then waits until the server accepts HTTP connections.
    fn start(db_url: &str, vars: &[(&str, &str)]) -> Server {
        let mut server = Server::spawn(db_url, vars);
        let addr = server.http_addr;
        server.wait("the server to accept connections", Duration::from_secs(10), |_| {
            std::net::TcpStream::connect(addr).ok()
        });
        server
    }

    /// `GET path` with `headers`.
    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        request(self.http_addr, "GET", path, headers, b"")
    }

    /// `POST path` with a JSON body.
    fn post(&self, path: &str, body: Value) -> Resp {
        let bytes = serde_json::to_vec(&body).expect("a JSON value serializes");
        request(self.http_addr, "POST", path, &[("Content-Type", "application/json")], &bytes)
    }

    /// Everything the server wrote to stderr so far, for failure messages.
    fn describe(&self) -> String {
        format!("{}\n--- stderr\n{}", self.what, self.running.stderr())
    }

    /// The complete stderr lines that read as logfmt, in order; other lines are skipped.
    fn log(&self) -> Vec<LogLine> {
        complete_lines(&self.running.stderr()).into_iter().filter_map(|text| LogLine::parse(text).ok()).collect()
    }

    /// Polls `probe` until it returns `Some`; fails with the server's stderr
    /// when `timeout` passes or the server exits first.
    fn wait<T>(&mut self, what: &str, timeout: Duration, mut probe: impl FnMut(&Server) -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = probe(self) {
                return value;
            }
            if let Some(status) = self.running.exited() {
                panic!("waiting for {what}: the server exited ({status}):\n{}", self.describe());
            }
            if Instant::now() >= deadline {
                panic!("timed out after {timeout:?} waiting for {what}:\n{}", self.describe());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the first log line that `matches`, and returns it with its index in `log()`.
    fn wait_for_line(&mut self, what: &str, timeout: Duration, matches: impl Fn(&LogLine) -> bool) -> (usize, LogLine) {
        self.wait(what, timeout, |server| server.log().into_iter().enumerate().find(|(_, line)| matches(line)))
    }

    /// The response's `X-Request-Id`, and the `msg=request` line with that `req=`.
    fn request_line(&mut self, resp: &Resp, what: &str) -> (String, LogLine) {
        let Some(id) = resp.header("X-Request-Id").map(str::to_string) else {
            panic!("{what}: the response has no X-Request-Id:\n{}\n{}", resp.describe(), self.describe())
        };
        let (_, line) =
            self.wait_for_line(&format!("{what}: a msg=request line with req={id}"), LINE_DEADLINE, |line| {
                line.has("msg", "request") && line.has("req", &id)
            });
        (id, line)
    }

    /// Waits up to `timeout` for the process to exit.
    fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.running.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asserts the process stays up for all of `window`, then still answers `/healthz`.
    fn assert_keeps_running(&mut self, window: Duration, what: &str) {
        if let Some(status) = self.wait_for_exit(window) {
            panic!("{what}: expected the server to keep running, but it exited ({status}):\n{}", self.describe());
        }
        let resp = self.get("/healthz", &[]);
        assert_eq!(resp.status, 200, "{what}: /healthz after {window:?}:\n{}\n{}", resp.describe(), self.describe());
    }
}

/// Signs `username` up over HTTP and returns its id.
fn sign_up(server: &Server, username: &str) -> i64 {
    let body = json!({ "username": username, "email": format!("{username}@example.com"), "password": PASSWORD });
    let resp = server.post("/api/users", body);
    resp.assert_status(201, &format!("signing up {username}"));
    resp.json()["id"].as_i64().unwrap_or_else(|| panic!("signup of {username}: no integer id:\n{}", resp.describe()))
}

/// Logs `username` in over HTTP and returns the session's token.
fn log_in(server: &Server, username: &str) -> String {
    let resp = server.post("/api/sessions", json!({ "login": username, "password": PASSWORD }));
    resp.assert_status(201, &format!("logging in as {username}"));
    let token = resp.json()["token"].as_str().map(str::to_string);
    token.unwrap_or_else(|| panic!("login as {username}: no token string:\n{}", resp.describe()))
}

/// Whether `id` looks like a request id the server made: 16 lowercase hex characters.
fn is_generated_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[test]
fn the_logfmt_reader_of_these_tests_unquotes_values_and_rejects_what_the_format_forbids() {
    let text = r#"ts=2024-01-02T03:04:05.678Z level=info msg=request path="/a b=c" error="say \"hi\" \\ now\nthen" empty="" user=-"#;

    let line = LogLine::parse(text).unwrap_or_else(|problem| panic!("{text:?}: {problem}"));

    assert_eq!(line.get("path"), Some("/a b=c"));
    assert_eq!(line.get("error"), Some("say \"hi\" \\ now\nthen"));
    assert_eq!(line.get("empty"), Some(""));
    assert_eq!(line.get("user"), Some("-"));
    assert_eq!(line.pairs.len(), 7, "{line:?}");
    line.check_prefix().unwrap_or_else(|problem| panic!("{text:?}: {problem}"));

    let malformed = [
        ("msg", "a key without `=`"),
        ("msg=", "an empty bare value"),
        ("msg=a=b", "`=` in a bare value"),
        (r#"msg=a"b"#, "`\"` in a bare value"),
        (r#"msg="open"#, "a missing closing quote"),
        (r#"msg="x"y"#, "no space after a quoted value"),
        ("msg=a  b=c", "two spaces"),
        ("=a", "an empty key"),
        (r#"msg="bad \q escape""#, "an unknown escape"),
        ("msg=a ", "a trailing space"),
        ("a message in prose", "prose"),
    ];
    for (text, why) in malformed {
        assert!(LogLine::parse(text).is_err(), "{text:?} should be rejected: {why}");
    }

    let off_prefix = [
        ("level=info ts=2024-01-02T03:04:05Z msg=x", "ts is not first"),
        ("ts=2024-01-02T03:04:05+00:00 level=info msg=x", "ts does not end in Z"),
        ("ts=2024-13-02T03:04:05Z level=info msg=x", "ts is no date"),
        ("ts=2024-01-02T03:04:05Z level=trace msg=x", "trace is no level"),
        ("ts=2024-01-02T03:04:05Z level=info", "msg is missing"),
        ("ts=2024-01-02T03:04:05Z level=info msg=x req=a req=b", "req appears twice"),
    ];
    for (text, why) in off_prefix {
        let line = LogLine::parse(text).unwrap_or_else(|problem| panic!("{text:?}: {problem}"));
        assert!(line.check_prefix().is_err(), "{text:?} should fail the prefix rule: {why}");
    }
}

#[test]
fn log_levels_warn_and_debug_start_and_filter_request_lines() {
    let db_url = fresh_database();
    // One worker writes each request's line before it takes the next
    // request, so once the second response is in, the first line would be too.
    for (log, writes_request_lines) in [("warn", false), ("debug", true), ("off", false)] {
        let what = format!("LOG={log}");
        let mut server = Server::start(&db_url, &[("LOG", log), ("WORKERS", "1")]);

        let first = server.get("/healthz", &[]);
        let second = server.get("/healthz", &[]);

        first.assert_status(200, &format!("{what}: the first GET /healthz"));
        second.assert_status(200, &format!("{what}: the second GET /healthz"));
        if writes_request_lines {
            let (_, line) = server.request_line(&first, &what);
            assert!(line.has("level", "info"), "{what}: a 200 is logged at info: {line:?}\n{}", server.describe());
            assert!(line.has("status", "200"), "{what}: {line:?}\n{}", server.describe());
            continue;
        }
        let stderr = server.running.stderr();
        assert!(!stderr.contains("msg=request"), "{what}: no request line for a 200:\n{}", server.describe());
        for line in server.log() {
            let level = line.get("level").unwrap_or("");
            assert!(
                log == "warn" && ["warn", "error"].contains(&level),
                "{what}: a line at level {level:?} got through: {:?}\n{}",
                line.text,
                server.describe()
            );
        }
    }

    let output = run(&["serve"], &[("DATABASE_URL", UNUSED_DATABASE_URL), ("SECRET_KEY", SECRET_KEY), ("LOG", "loud")]);

    assert_failed_cleanly(&output, "serve with LOG=loud");
    let lines = output.stderr_lines();
    assert_eq!(lines.len(), 1, "one line for one problem:\n{}", output.describe());
    for word in ["LOG", "loud", "error", "warn", "info", "debug", "off"] {
        assert!(lines[0].contains(word), "the line names {word:?}:\n{}", output.describe());
    }
}

#[test]
fn every_line_is_logfmt_with_ts_level_and_msg() {
    // `LOG` is unset: the default, info, writes a line per request.
    let mut server = Server::start(&fresh_database(), &[]);
    let odd_path = r#"/no="such"\path="#;
    let username = format!("u{}", random_hex(6));
    let user_id = sign_up(&server, &username);
    let token = log_in(&server, &username);

    let healthz = server.get("/healthz", &[]);
    let odd = server.get(odd_path, &[]);
    let me = server.get("/api/users/me", &[("Authorization", &format!("Bearer {token}"))]);

    healthz.assert_status(200, "GET /healthz");
    odd.assert_status(404, "GET of a path that needs quoting");
    me.assert_status(200, "GET /api/users/me");
    let (_, healthz_line) = server.request_line(&healthz, "GET /healthz");
    let (_, odd_line) = server.request_line(&odd, "GET of a path that needs quoting");
    let (_, me_line) = server.request_line(&me, "GET /api/users/me");
    let stderr = server.running.stderr();
    let lines = complete_lines(&stderr);
    assert!(lines.len() >= 5, "a line per request at least:\n{}", server.describe());
    for text in &lines {
        let line =
            LogLine::parse(text).unwrap_or_else(|problem| panic!("{problem} in {text:?}:\n{}", server.describe()));
        if let Err(problem) = line.check_prefix() {
            panic!("{problem} in {text:?}:\n{}", server.describe());
        }
    }
    for (line, method, path, status, user) in [
        (&healthz_line, "GET", "/healthz", "200", "-".to_string()),
        (&odd_line, "GET", odd_path, "404", "-".to_string()),
        (&me_line, "GET", "/api/users/me", "200", user_id.to_string()),
    ] {
        let what = format!("the line of {method} {path}");
        assert!(line.has("level", "info"), "{what}: {line:?}\n{}", server.describe());
        assert!(line.has("method", method), "{what}: method={method}: {line:?}\n{}", server.describe());
        assert!(line.has("path", path), "{what}: path={path:?} after unquoting: {line:?}\n{}", server.describe());
        assert!(line.has("status", status), "{what}: status={status}: {line:?}\n{}", server.describe());
        assert!(line.has("user", &user), "{what}: user={user}: {line:?}\n{}", server.describe());
        let us = line.get("us").unwrap_or("");
        assert!(us.parse::<u64>().is_ok(), "{what}: us={us:?} is not a whole number: {line:?}\n{}", server.describe());
    }
}

#[test]
fn responses_carry_the_request_id_of_their_log_line() {
    let mut server = Server::start(&fresh_database(), &[("LOG", "info")]);
    let cases = [
        ("a 200", "/healthz", 200),
        ("a 404", "/api/nope", 404),
        ("a 401 without a token", "/api/users/me", 401),
        ("a 405", "/api/sessions/current", 405),
    ];
    let mut generated = Vec::new();

    for (what, path, status) in cases {
        let resp = server.get(path, &[]);

        resp.assert_status(status, what);
        let (id, line) = server.request_line(&resp, what);
        assert!(is_generated_id(&id), "{what}: X-Request-Id {id:?} is not 16 lowercase hex:\n{}", resp.describe());
        assert!(line.has("status", &status.to_string()), "{what}: status={status}: {line:?}\n{}", server.describe());
        assert!(line.has("path", path), "{what}: path={path}: {line:?}\n{}", server.describe());
        generated.push(id);
    }
    let mut distinct = generated.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), generated.len(), "each request gets its own id: {generated:?}");

    let longest = format!("{}.-_x", "aZ9".repeat(20));
    assert_eq!(longest.len(), 64);
    for supplied in ["trace-1.A_b", "x", longest.as_str()] {
        let what = format!("a valid X-Request-Id {supplied:?}");

        let resp = server.get("/healthz", &[("X-Request-Id", supplied)]);

        resp.assert_status(200, &what);
        assert_eq!(resp.header("X-Request-Id"), Some(supplied), "{what} is echoed:\n{}", resp.describe());
        let (_, line) = server.request_line(&resp, &what);
        assert!(line.has("status", "200"), "{what}: {line:?}\n{}", server.describe());
    }

    let too_long = "a".repeat(65);
    for supplied in [too_long.as_str(), "has space", "a/b", "a=b", ""] {
        let what = format!("an invalid X-Request-Id {supplied:?}");

        let resp = server.get("/api/nope", &[("X-Request-Id", supplied)]);

        resp.assert_status(404, &what);
        let (id, line) = server.request_line(&resp, &what);
        assert!(is_generated_id(&id), "{what} is replaced by 16 lowercase hex, not {id:?}:\n{}", resp.describe());
        assert!(line.has("status", "404"), "{what}: {line:?}\n{}", server.describe());
    }
}

#[test]
fn a_broken_schema_gives_an_opaque_500_and_the_log_names_the_cause() {
    let db_url = fresh_database();
    let mut server = Server::start(&db_url, &[("LOG", "info")]);
    let username = format!("u{}", random_hex(6));
    sign_up(&server, &username);
    let token = log_in(&server, &username);
    // No chat route has run yet, so no worker holds a statement prepared against the old column.
    pg::connect(&db_url)
        .batch_execute("ALTER TABLE chats RENAME COLUMN title TO title_renamed")
        .unwrap_or_else(|e| panic!("rename chats.title: {}", pg::db_error(&e)));

    let resp = server.get("/api/chats", &[("Authorization", &format!("Bearer {token}"))]);

    resp.assert_status(500, "GET /api/chats on a broken schema");
    assert_eq!(resp.text(), OPAQUE_500, "the 500 body says nothing of the cause:\n{}", resp.describe());
    let (_, line) = server.request_line(&resp, "the 500");
    assert!(line.has("level", "error"), "a 500 is logged at error: {line:?}\n{}", server.describe());
    assert!(line.has("status", "500"), "{line:?}\n{}", server.describe());
    let cause = line.get("error").unwrap_or_else(|| panic!("no error= key: {line:?}\n{}", server.describe()));
    assert!(
        cause.contains("title") && cause.contains("does not exist"),
        "error= names PostgreSQL's cause, got {cause:?}:\n{}",
        server.describe()
    );
}

#[test]
fn a_database_outage_logs_503_causes_at_warn_and_the_listener_recovers() {
    let cluster = PrivateCluster::start();
    let mut server = Server::start(cluster.url(), &[("LOG", "info")]);
    server.get("/readyz", &[]).assert_status(200, "readyz before the database stops");

    cluster.stop();

    let down = server.wait("readyz to answer 503 with the database stopped", OUTAGE_DEADLINE, |server| {
        let resp = server.get("/readyz", &[]);
        (resp.status == 503).then_some(resp)
    });
    check_error(&down, 503, "unavailable", None);
    let (_, line) = server.request_line(&down, "the 503 of readyz");
    assert!(line.has("level", "warn"), "a 503 is logged at warn: {line:?}\n{}", server.describe());
    assert!(line.has("status", "503"), "{line:?}\n{}", server.describe());
    let cause = line.get("error").unwrap_or("");
    assert!(!cause.is_empty(), "a 503 line has an error= key with the cause: {line:?}\n{}", server.describe());
    let (lost_at, _) = server.wait_for_line("a thread=listener line at warn", OUTAGE_DEADLINE, |line| {
        line.has("thread", "listener") && line.has("level", "warn")
    });

    cluster.start_again();

    server.wait("readyz to answer 200 after the database restarts", OUTAGE_DEADLINE, |server| {
        (server.get("/readyz", &[]).status == 200).then_some(())
    });
    server.wait("a thread=listener line at info after the one at warn", OUTAGE_DEADLINE, |server| {
        let log = server.log();
        log.iter()
            .skip(lost_at + 1)
            .any(|line| line.has("thread", "listener") && line.has("level", "info"))
            .then_some(())
    });
}

#[test]
fn a_dying_watched_thread_ends_the_process_with_a_failure_status() {
    // All five at once: each waits out its own deadline in parallel.
    let mut servers: Vec<(&str, Server)> = WATCHED_THREADS
        .iter()
        .map(|name| (*name, Server::spawn(&fresh_database(), &[("LOG", "info"), ("MESSAGING_FAULT", name)])))
        .collect();
    if !cfg!(debug_assertions) {
        // A release build ignores the switch.
        for (name, server) in &mut servers {
            server.assert_keeps_running(CONTROL_WINDOW, &format!("MESSAGING_FAULT={name} in a release build"));
        }
        return;
    }
    let deadline = Instant::now() + FAULT_DEADLINE;
    let mut problems = Vec::new();

    for (name, server) in &mut servers {
        let status = server.wait_for_exit(deadline.saturating_duration_since(Instant::now()));

        let mut wrong = Vec::new();
        match status {
            None => wrong.push(format!("still running after {FAULT_DEADLINE:?}")),
            Some(status) if status.code().is_none_or(|code| code == 0) => {
                wrong.push(format!("expected a non-zero exit code, got {status}"))
            }
            Some(_) => {}
        }
        if !server.log().iter().any(|line| line.has("level", "error") && line.has("thread", name)) {
            wrong.push(format!("no level=error line with thread={name}"));
        }
        if !wrong.is_empty() {
            problems.push(format!("MESSAGING_FAULT={name}: {}:\n{}", wrong.join("; "), server.describe()));
        }
    }

    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn without_the_fault_switch_the_server_keeps_running() {
    let mut server = Server::start(&fresh_database(), &[("LOG", "info")]);

    server.assert_keeps_running(CONTROL_WINDOW, "no MESSAGING_FAULT");
}
