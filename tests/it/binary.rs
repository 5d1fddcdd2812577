//! The compiled `messaging` binary, run as an operator would: its exit codes,
//! its one-line-per-problem stderr, `migrate up | down | status` output, and
//! `serve` refusing to start on pending migrations or answering `/healthz`.
//!
//! Each child runs in the repository root, or in a directory the test gives,
//! with every configuration variable removed from its environment but those
//! the test sets, and is killed when the test ends, pass or fail.

use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::migrate::{empty_database, sql_dir, stems, SqlCopy};
use crate::support::pg::connect;
use crate::support::ws::connect_bearer;
use crate::support::{fresh_database, random_hex, request, wait_for, TempDir};

/// Every variable the binary reads; all are removed unless a test sets them.
pub(crate) const VARIABLES: &[&str] = &[
    "DATABASE_URL",
    "HTTP_ADDR",
    "WS_ADDR",
    "WORKERS",
    "SECRET_KEY",
    "TOKEN_TTL_SECS",
    "PASSWORD_ITERATIONS",
    "MAX_BODY_BYTES",
    "HTTP_HEAD_TIMEOUT_SECS",
    "HTTP_IDLE_TIMEOUT_SECS",
    "HTTP_BODY_TIMEOUT_SECS",
    "HTTP_WRITE_TIMEOUT_SECS",
    "HTTP_MAX_CONNECTIONS",
    "LOG",
    "RATE_LIMITS",
    "TRUSTED_PROXIES",
    "WS_ALLOWED_ORIGINS",
    "WS_QUEUE",
    "WS_MAX_CONNECTIONS",
    "HTTP_MAX_CONNECTIONS",
    "WS_MAX_PER_USER",
    "WS_MAX_PER_ADDRESS",
    "WS_HANDSHAKES_PER_ADDRESS",
    "WS_FRAME_RATE",
    "WS_FRAME_BURST",
    "MESSAGE_RATE",
    "MESSAGE_BURST",
    "SIGNUP_RATE",
    "MIGRATIONS_DIR",
    "MESSAGING_FAULT",
];

pub(crate) const SECRET_KEY: &str = "a-test-secret-key-that-is-long-enough-0123456789";

/// A URL that parses but is never connected to: configuration is checked first.
pub(crate) const UNUSED_DATABASE_URL: &str = "postgresql://postgres@localhost/messaging?host=/nonexistent";

const USAGE_LINE: &str =
    "messaging: usage: messaging serve | messaging migrate up | down [N] | status | messaging client ...";

/// How long a command that should exit promptly may take.
const EXIT_DEADLINE: Duration = Duration::from_secs(30);

/// A child process that is killed and reaped when dropped, and whose
/// stdout and stderr go to files (a pipe nobody reads could fill and block it).
pub struct Running {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    what: String,
}

impl Running {
    /// The child's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts `messaging ARGS` in the repository root with only `vars` of the configuration variables set.
    pub(crate) fn spawn(args: &[&str], vars: &[(&str, &str)]) -> Running {
        Running::spawn_in(Path::new(env!("CARGO_MANIFEST_DIR")), args, vars)
    }

    /// Starts `messaging ARGS` in the working directory `dir`, with only `vars` set.
    fn spawn_in(dir: &Path, args: &[&str], vars: &[(&str, &str)]) -> Running {
        let mut command = Command::new(env!("CARGO_BIN_EXE_messaging"));
        command.args(args).current_dir(dir);
        for name in VARIABLES {
            command.env_remove(name);
        }
        command.envs(vars.iter().copied());
        Running::start(command, format!("messaging {}", args.join(" ")))
    }

    /// Starts `command`, described as `what` in failure messages.
    pub fn start(mut command: Command, what: String) -> Running {
        let base = std::env::temp_dir().join(format!("msg-it-bin-{}-{}", std::process::id(), random_hex(6)));
        let stdout = base.with_extension("out");
        let stderr = base.with_extension("err");
        command.stdin(Stdio::null());
        command.stdout(File::create(&stdout).expect("create a stdout file"));
        command.stderr(File::create(&stderr).expect("create a stderr file"));
        let child = command.spawn().unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
        Running { child, stdout, stderr, what }
    }

    /// Waits for the child to exit, failing after `timeout`.
    pub fn finish(mut self, timeout: Duration) -> Output {
        let what = format!("{} to exit", self.what);
        let status = wait_for(&what, timeout, || self.exited());
        Output { status, stdout: self.stdout(), stderr: self.stderr() }
    }

    /// Sends the child `signal` (`TERM`, `INT`, …) with kill(1).
    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap_or_else(|e| panic!("{}: kill -{signal}: {e}", self.what));
        assert!(status.success(), "{}: kill -{signal} failed ({status})", self.what);
    }

    /// The exit status, if the child has exited.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap_or_else(|e| panic!("{}: wait: {e}", self.what))
    }

    fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub(crate) fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Ends the child with SIGKILL, as a crash would, and reaps it.
    pub(crate) fn kill(&mut self) {
        self.child.kill().unwrap_or_else(|e| panic!("{}: SIGKILL: {e}", self.what));
        self.child.wait().unwrap_or_else(|e| panic!("{}: wait after SIGKILL: {e}", self.what));
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.stdout);
        let _ = fs::remove_file(&self.stderr);
    }
}

/// What a finished command left behind.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn describe(&self) -> String {
        format!("{}\n--- stdout\n{}--- stderr\n{}", self.status, self.stdout, self.stderr)
    }

    pub fn stdout_lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    pub(crate) fn stderr_lines(&self) -> Vec<&str> {
        self.stderr.lines().collect()
    }
}

/// Runs `messaging ARGS` in the repository root to completion within `EXIT_DEADLINE`.
pub(crate) fn run(args: &[&str], vars: &[(&str, &str)]) -> Output {
    Running::spawn(args, vars).finish(EXIT_DEADLINE)
}

/// Runs `messaging ARGS` in the working directory `dir` to completion within `EXIT_DEADLINE`.
fn run_in(dir: &Path, args: &[&str], vars: &[(&str, &str)]) -> Output {
    Running::spawn_in(dir, args, vars).finish(EXIT_DEADLINE)
}

/// The lines `migrate` prints for `stems`: `PREFIX` then the stem.
fn lines(prefix: &str, stems: &[String]) -> Vec<String> {
    stems.iter().map(|stem| format!("{prefix}{stem}")).collect()
}

/// Asserts a non-zero exit and stderr free of Rust panic text.
pub(crate) fn assert_failed_cleanly(output: &Output, what: &str) {
    assert!(!output.status.success(), "{what}: expected a non-zero exit:\n{}", output.describe());
    for panic_text in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
        assert!(!output.stderr.contains(panic_text), "{what}: stderr holds panic text:\n{}", output.describe());
    }
}

/// A port on 127.0.0.1 that was free a moment ago, for a compiled server to
/// bind. It is below the kernel's ephemeral range, from which client sockets
/// take their local ports: a port 0 bind would come from that range, and a
/// test beside this one opening hundreds of connections could take it before
/// the server binds it.
pub(crate) fn free_addr() -> SocketAddr {
    let range = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let ephemeral_from: u16 = range.split_whitespace().next().and_then(|low| low.parse().ok()).unwrap_or(0);
    if ephemeral_from < 4096 {
        return TcpListener::bind("127.0.0.1:0").expect("bind port 0").local_addr().expect("a local address");
    }
    let below = ephemeral_from - 2048;
    loop {
        let random = u16::from_str_radix(&random_hex(2), 16).expect("four hex digits");
        let port = 2048 + random % below;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr().expect("a local address");
        }
    }
}

#[test]
fn serve_without_database_url_and_secret_key_names_each_on_its_own_line() {
    let output = run(&["serve"], &[]);

    assert_failed_cleanly(&output, "serve with nothing set");
    let lines = output.stderr_lines();
    assert_eq!(lines.len(), 2, "one line per problem:\n{}", output.describe());
    assert!(
        lines.iter().any(|line| line.contains("DATABASE_URL")),
        "a line names DATABASE_URL:\n{}",
        output.describe()
    );
    assert!(lines.iter().any(|line| line.contains("SECRET_KEY")), "a line names SECRET_KEY:\n{}", output.describe());
    assert!(
        lines.iter().all(|line| line.starts_with("messaging: ")),
        "each line says who speaks:\n{}",
        output.describe()
    );
    assert_eq!(output.stdout, "", "nothing on stdout");
}

#[test]
fn serve_names_each_bad_value_on_its_own_line() {
    // (variable, bad value): each is set alone, on top of a valid configuration.
    let cases = [("WORKERS", "zero"), ("LOG", "loud"), ("SECRET_KEY", "short"), ("DATABASE_URL", "not a url")];
    for (name, value) in cases {
        let mut vars = vec![("DATABASE_URL", UNUSED_DATABASE_URL), ("SECRET_KEY", SECRET_KEY)];
        vars.retain(|(key, _)| *key != name);
        vars.push((name, value));

        let output = run(&["serve"], &vars);

        let what = format!("serve with {name}={value}");
        assert_failed_cleanly(&output, &what);
        let lines = output.stderr_lines();
        assert_eq!(lines.len(), 1, "{what}: one line for one problem:\n{}", output.describe());
        assert!(lines[0].contains(name), "{what}: the line names {name}:\n{}", output.describe());
    }

    let output = run(
        &["serve"],
        &[("DATABASE_URL", UNUSED_DATABASE_URL), ("SECRET_KEY", SECRET_KEY), ("WORKERS", "zero"), ("LOG", "loud")],
    );

    assert_failed_cleanly(&output, "serve with WORKERS=zero and LOG=loud");
    let lines = output.stderr_lines();
    assert_eq!(lines.len(), 2, "both problems at once, one line each:\n{}", output.describe());
    assert!(lines.iter().any(|line| line.contains("WORKERS") && line.contains("zero")), "{}", output.describe());
    assert!(lines.iter().any(|line| line.contains("LOG") && line.contains("loud")), "{}", output.describe());
}

#[test]
fn an_unknown_subcommand_prints_the_usage_line_and_exits_non_zero() {
    let db_url = empty_database();
    let cases: &[&[&str]] =
        &[&[], &["frobnicate"], &["serve", "now"], &["migrate"], &["migrate", "sideways"], &["migrate", "down", "x"]];
    for args in cases {
        let what = format!("messaging {}", args.join(" "));

        let output = run(args, &[("DATABASE_URL", &db_url)]);

        assert_failed_cleanly(&output, &what);
        assert_eq!(output.stderr_lines(), vec![USAGE_LINE], "{what}: the usage line:\n{}", output.describe());
    }
}

#[test]
fn an_unknown_migrate_subcommand_gets_the_usage_line_before_any_connection() {
    for args in [&["migrate", "sideways"][..], &["migrate"], &["migrate", "down", "x"]] {
        let what = format!("messaging {} with the database down", args.join(" "));

        let output = run(args, &[("DATABASE_URL", UNUSED_DATABASE_URL)]);

        assert_failed_cleanly(&output, &what);
        assert_eq!(output.stderr_lines(), vec![USAGE_LINE], "{what}: the usage line:\n{}", output.describe());
    }
}

#[test]
fn migrate_status_up_down_and_status_again_report_each_migration_by_name() {
    let db_url = empty_database();
    let vars = [("DATABASE_URL", db_url.as_str())];
    let stems = stems(&sql_dir());

    let before = run(&["migrate", "status"], &vars);
    let up = run(&["migrate", "up"], &vars);
    let after = run(&["migrate", "status"], &vars);
    let up_again = run(&["migrate", "up"], &vars);

    for (output, what) in [(&before, "status"), (&up, "up"), (&after, "status after up"), (&up_again, "up again")] {
        assert!(output.status.success(), "migrate {what}:\n{}", output.describe());
    }
    assert_eq!(before.stdout_lines(), lines("pending ", &stems), "status before up:\n{}", before.describe());
    assert_eq!(up.stdout_lines(), lines("applied: ", &stems), "up:\n{}", up.describe());
    assert_eq!(after.stdout_lines(), lines("applied ", &stems), "status after up:\n{}", after.describe());
    assert_eq!(
        up_again.stdout_lines(),
        vec!["nothing to apply"],
        "up with nothing pending says so:\n{}",
        up_again.describe()
    );

    let down = run(&["migrate", "down", "2"], &vars);
    let status = run(&["migrate", "status"], &vars);

    assert!(down.status.success(), "migrate down 2:\n{}", down.describe());
    let newest_two: Vec<String> = stems.iter().rev().take(2).cloned().collect();
    assert_eq!(down.stdout_lines(), lines("rolled back: ", &newest_two), "down 2:\n{}", down.describe());
    let mut want = lines("applied ", &stems[..stems.len() - 2]);
    want.extend(lines("pending ", &stems[stems.len() - 2..]));
    assert_eq!(status.stdout_lines(), want, "status after down 2:\n{}", status.describe());
}

#[test]
fn migrate_without_database_url_or_with_an_unreachable_database_fails_in_one_line() {
    let unset = run(&["migrate", "status"], &[]);
    let unreachable = run(&["migrate", "up"], &[("DATABASE_URL", UNUSED_DATABASE_URL)]);

    assert_failed_cleanly(&unset, "migrate status without DATABASE_URL");
    assert_eq!(unset.stderr_lines().len(), 1, "one line:\n{}", unset.describe());
    assert!(unset.stderr.contains("DATABASE_URL"), "names DATABASE_URL:\n{}", unset.describe());
    assert_failed_cleanly(&unreachable, "migrate up with an unreachable database");
    assert_eq!(unreachable.stderr_lines().len(), 1, "one line:\n{}", unreachable.describe());
    assert!(unreachable.stderr.contains("cannot connect"), "says it cannot connect:\n{}", unreachable.describe());
    let reason = unreachable.stderr.split("error connecting to server").nth(1).unwrap_or("");
    assert!(reason.trim_start_matches(':').trim().len() > 3, "and why:\n{}", unreachable.describe());
}

#[test]
fn serve_with_pending_migrations_exits_non_zero_saying_to_run_make_migrate() {
    let db_url = empty_database();

    let output = run(
        &["serve"],
        &[
            ("DATABASE_URL", &db_url),
            ("SECRET_KEY", SECRET_KEY),
            ("HTTP_ADDR", "127.0.0.1:0"),
            ("WS_ADDR", "127.0.0.1:0"),
            ("LOG", "off"),
        ],
    );

    assert_failed_cleanly(&output, "serve with pending migrations");
    assert!(output.stderr.contains("make migrate"), "stderr says to run `make migrate`:\n{}", output.describe());
    assert!(output.stderr.contains("0001_create_users"), "stderr names what is pending:\n{}", output.describe());
}

/// Starts `messaging serve` in the working directory `dir` on free ports, and
/// waits until it accepts connections on `HTTP_ADDR`.
pub(crate) fn serve_in(dir: &Path, db_url: &str, extra: &[(&str, &str)]) -> (Running, SocketAddr, SocketAddr) {
    let (http_addr, ws_addr) = (free_addr(), free_addr());
    let (http, ws) = (http_addr.to_string(), ws_addr.to_string());
    let mut vars = vec![
        ("DATABASE_URL", db_url),
        ("SECRET_KEY", SECRET_KEY),
        ("HTTP_ADDR", &http),
        ("WS_ADDR", &ws),
        ("WORKERS", "2"),
        ("PASSWORD_ITERATIONS", "1000"),
        ("LOG", "info"),
    ];
    vars.extend_from_slice(extra);
    let mut server = Running::spawn_in(dir, &["serve"], &vars);
    wait_for("the server to accept connections on HTTP_ADDR", Duration::from_secs(10), || {
        if let Some(status) = server.exited() {
            panic!("serve exited early ({status}):\n{}", server.stderr());
        }
        TcpStream::connect(http_addr).ok()
    });
    (server, http_addr, ws_addr)
}

#[test]
fn serve_on_a_migrated_database_answers_healthz_on_the_configured_ports() {
    let db_url = fresh_database();

    let (mut server, http_addr, ws_addr) = serve_in(Path::new(env!("CARGO_MANIFEST_DIR")), &db_url, &[]);

    let resp = request(http_addr, "GET", "/healthz", &[], b"");
    resp.assert_status(200, "GET /healthz on the binary");
    assert_eq!(resp.json(), json!({ "status": "ok" }), "{resp:?}");
    TcpStream::connect(ws_addr).unwrap_or_else(|e| panic!("the WebSocket port {ws_addr} accepts connections: {e}"));
    assert!(server.exited().is_none(), "serve keeps running:\n{}", server.stderr());
    let announcement = format!("http://{http_addr}");
    wait_for("serve to say where it listens", Duration::from_secs(5), || {
        server.stderr().contains(&announcement).then_some(())
    });
}

#[test]
fn migrate_and_serve_from_an_empty_working_directory_use_the_migrations_built_into_the_binary() {
    let db_url = empty_database();
    let vars = [("DATABASE_URL", db_url.as_str())];
    let stems = stems(&sql_dir());
    let newest = stems[stems.len() - 1..].to_vec();
    let elsewhere = TempDir::new("cwd");
    let cwd = elsewhere.path();

    let up = run_in(cwd, &["migrate", "up"], &vars);
    let status = run_in(cwd, &["migrate", "status"], &vars);
    let down = run_in(cwd, &["migrate", "down", "1"], &vars);
    let status_after_down = run_in(cwd, &["migrate", "status"], &vars);
    let up_again = run_in(cwd, &["migrate", "up"], &vars);

    for (output, what) in [
        (&up, "up"),
        (&status, "status"),
        (&down, "down 1"),
        (&status_after_down, "status after down 1"),
        (&up_again, "up again"),
    ] {
        assert!(output.status.success(), "migrate {what} in an empty directory:\n{}", output.describe());
    }
    assert_eq!(up.stdout_lines(), lines("applied: ", &stems), "up:\n{}", up.describe());
    assert_eq!(status.stdout_lines(), lines("applied ", &stems), "status:\n{}", status.describe());
    assert_eq!(down.stdout_lines(), lines("rolled back: ", &newest), "down 1:\n{}", down.describe());
    let mut want = lines("applied ", &stems[..stems.len() - 1]);
    want.extend(lines("pending ", &newest));
    assert_eq!(status_after_down.stdout_lines(), want, "status after down 1:\n{}", status_after_down.describe());
    assert_eq!(up_again.stdout_lines(), lines("applied: ", &newest), "up again:\n{}", up_again.describe());

    let (server, http_addr, _) = serve_in(cwd, &db_url, &[]);

    let resp = request(http_addr, "GET", "/healthz", &[], b"");
    resp.assert_status(200, "GET /healthz on the binary started in an empty directory");
    drop(server);
    let left = fs::read_dir(cwd).expect("read the working directory").count();
    assert_eq!(left, 0, "nothing was written to the working directory");
}

#[test]
fn migrations_dir_names_a_directory_read_instead_of_the_built_in_migrations() {
    let db_url = empty_database();
    let stems = stems(&sql_dir());
    let extra = format!("{:04}_create_extra", stems.len() + 1);
    let sql = SqlCopy::new();
    sql.write(&format!("{extra}.up.sql"), "-- Only this copy has it.\nCREATE TABLE extra (id int);\n");
    sql.write(&format!("{extra}.down.sql"), "-- Undoes it.\nDROP TABLE extra;\n");
    let dir = sql.dir().to_str().expect("a UTF-8 temporary path");

    let up = run(&["migrate", "up"], &[("DATABASE_URL", &db_url), ("MIGRATIONS_DIR", dir)]);
    let built_in = run(&["migrate", "status"], &[("DATABASE_URL", &db_url)]);

    assert!(up.status.success(), "migrate up with MIGRATIONS_DIR:\n{}", up.describe());
    let mut want = lines("applied: ", &stems);
    want.push(format!("applied: {extra}"));
    assert_eq!(up.stdout_lines(), want, "up applies the copy's extra migration too:\n{}", up.describe());
    let exists: bool = connect(&db_url)
        .query_one("SELECT to_regclass('extra') IS NOT NULL", &[])
        .expect("look up the extra table")
        .get(0);
    assert!(exists, "the extra migration created its table");
    assert_failed_cleanly(&built_in, "migrate status without MIGRATIONS_DIR");
    assert!(
        built_in.stderr.contains(&extra) && built_in.stderr.contains("missing"),
        "the built-in migrations lack {extra}, so status says its file is missing:\n{}",
        built_in.describe()
    );
}

/// How long a stop asked for by a signal may take, from the signal to the exit.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// Sends `signal` to a server holding a WebSocket and a request that waits on
/// a row lock; the socket must get 1001, the request its answer, and the
/// process must exit 0, all within `STOP_DEADLINE` of the signal.
fn a_signal_stops_the_server_gracefully(signal: &str) {
    let db_url = fresh_database();
    let (server, http_addr, ws_addr) = serve_in(Path::new(env!("CARGO_MANIFEST_DIR")), &db_url, &[]);
    let post = |path: &str, token: Option<&str>, body: serde_json::Value| {
        let authorization = token.map(|token| format!("Bearer {token}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(authorization) = &authorization {
            headers.push(("Authorization", authorization));
        }
        request(http_addr, "POST", path, &headers, body.to_string().as_bytes())
    };
    let password = "correct horse battery";
    post("/api/users", None, json!({ "username": "alice", "email": "a@example.com", "password": password }))
        .assert_status(201, "signup");
    let login = post("/api/sessions", None, json!({ "login": "alice", "password": password }));
    let token = login.assert_status(201, "login").json()["token"].as_str().expect("a token").to_string();
    let chat = post("/api/chats", Some(&token), json!({ "is_group": true, "title": "t", "member_ids": [] }));
    let chat_id = chat.assert_status(201, "create a chat").json()["id"].as_i64().expect("a chat id");
    let mut ws = connect_bearer(ws_addr, &token).named("alice");
    ws.recv_until(Duration::from_secs(5), "ready", |frame| frame["type"] == "ready");
    // A send waits for the chat's row lock, which this transaction holds.
    let mut holder = connect(&db_url);
    let mut lock = holder.transaction().expect("begin");
    lock.execute("SELECT id FROM chats WHERE id = $1 FOR UPDATE", &[&chat_id]).expect("lock the chat row");
    let in_flight = std::thread::spawn({
        let token = token.clone();
        move || {
            let body = json!({ "content": "sent before the signal" }).to_string();
            let authorization = format!("Bearer {token}");
            let headers = [("Content-Type", "application/json"), ("Authorization", authorization.as_str())];
            request(http_addr, "POST", &format!("/api/chats/{chat_id}/messages"), &headers, body.as_bytes())
        }
    });
    let mut watcher = connect(&db_url);
    wait_for("the send to wait for the row lock", Duration::from_secs(5), || {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'messaging' AND wait_event_type = 'Lock'",
                &[],
            )
            .expect("read pg_stat_activity")
            .get(0);
        (waiting > 0).then_some(())
    });

    let signalled = Instant::now();
    server.signal(signal);

    let closed = ws.expect_close(STOP_DEADLINE, &format!("the server stopping on SIG{signal}"));
    assert_eq!(closed.code, Some(1001), "SIG{signal}: the WebSocket is closed with 1001 (going away)");
    // Stopped accepting, while the send is still in flight.
    for (port, addr) in [("HTTP", http_addr), ("WebSocket", ws_addr)] {
        let refused = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map(drop);
        let kind = refused.as_ref().map_err(std::io::Error::kind);
        assert_eq!(kind, Err(std::io::ErrorKind::ConnectionRefused), "SIG{signal}: a new {port} connection is refused");
    }
    lock.commit().expect("release the row lock");
    let sent = in_flight.join().expect("the in-flight request's thread");
    sent.assert_status(201, &format!("the send in flight when SIG{signal} arrived"));
    let output = server.finish(STOP_DEADLINE.saturating_sub(signalled.elapsed()));
    assert!(output.status.success(), "SIG{signal}: exit status 0:\n{}", output.describe());
    assert!(signalled.elapsed() <= STOP_DEADLINE, "SIG{signal}: stopped in {:?}", signalled.elapsed());
    let said = |msg: &str| {
        output.stderr.lines().any(|line| line.contains(&format!("msg={msg} ")) || line.ends_with(&format!("msg={msg}")))
    };
    assert!(said("stopping") && output.stderr.contains(&format!("signal=SIG{signal}")), "{}", output.describe());
    assert!(said("stopped"), "the log says it stopped:\n{}", output.describe());
}

#[test]
fn sigterm_closes_websockets_with_1001_finishes_requests_and_exits_0() {
    a_signal_stops_the_server_gracefully("TERM");
}

#[test]
fn sigint_closes_websockets_with_1001_finishes_requests_and_exits_0() {
    a_signal_stops_the_server_gracefully("INT");
}

/// `messaging serve` run by bash after lowering the open files limit to
/// `soft` (soft) and `hard` (hard), with only `vars` of the configuration set.
fn serve_under_open_files_limit(soft: u32, hard: u32, vars: &[(&str, &str)]) -> Running {
    let mut command = Command::new("bash");
    command
        .arg("-c")
        .arg(format!(r#"ulimit -Sn {soft} && ulimit -Hn {hard} && exec "$0" serve"#))
        .arg(env!("CARGO_BIN_EXE_messaging"))
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    for name in VARIABLES {
        command.env_remove(name);
    }
    command.envs(vars.iter().copied());
    Running::start(command, format!("messaging serve under ulimit -n {soft} (hard {hard}) with {vars:?}"))
}

#[test]
fn serve_refuses_to_start_when_its_connections_do_not_fit_in_the_open_files_limit() {
    // 5000 WebSockets fit in the memory mappings of any machine with Linux's default.
    let vars = [
        ("DATABASE_URL", UNUSED_DATABASE_URL),
        ("SECRET_KEY", SECRET_KEY),
        ("LOG", "off"),
        ("WS_MAX_CONNECTIONS", "5000"),
    ];

    let output = serve_under_open_files_limit(1024, 2048, &vars).finish(EXIT_DEADLINE);

    assert_failed_cleanly(&output, "serve with 5000 WebSockets under 2048 open files");
    let lines = output.stderr_lines();
    assert_eq!(lines.len(), 1, "one line:\n{}", output.describe());
    for part in ["messaging: ", "2048", "WS_MAX_CONNECTIONS=5000", "HTTP_MAX_CONNECTIONS=1024"] {
        assert!(lines[0].contains(part), "the line says {part:?}:\n{}", output.describe());
    }
}

#[test]
fn serve_raises_the_soft_open_files_limit_to_the_hard_one_and_logs_it() {
    let db_url = fresh_database();
    let http_addr = free_addr();
    let (http, ws) = (http_addr.to_string(), free_addr().to_string());
    let vars = [
        ("DATABASE_URL", db_url.as_str()),
        ("SECRET_KEY", SECRET_KEY),
        ("HTTP_ADDR", http.as_str()),
        ("WS_ADDR", ws.as_str()),
        ("WORKERS", "2"),
        ("WS_MAX_CONNECTIONS", "1500"),
        ("HTTP_MAX_CONNECTIONS", "100"),
        ("LOG", "info"),
    ];

    let mut server = serve_under_open_files_limit(1024, 2048, &vars);

    wait_for("the server to accept connections", Duration::from_secs(10), || {
        if let Some(status) = server.exited() {
            panic!("serve exited early ({status}):\n{}", server.stderr());
        }
        TcpStream::connect(http_addr).ok()
    });
    let limits = fs::read_to_string(format!("/proc/{}/limits", server.child.id())).expect("read /proc/PID/limits");
    let open_files = limits.lines().find(|line| line.starts_with("Max open files")).expect("a Max open files line");
    assert_eq!(open_files.split_whitespace().collect::<Vec<_>>()[3..5], ["2048", "2048"], "{open_files}");
    let stderr = server.stderr();
    let line = stderr.lines().find(|line| line.contains(r#"msg="open files limit""#));
    let line = line.unwrap_or_else(|| panic!("no open files limit line:\n{stderr}"));
    for part in ["level=info", "limit=2048", "was=1024", "needed=1820"] {
        assert!(line.contains(part), "{part} in {line}");
    }
}

// Found by the performance issue's harness: about 7,700 WebSockets used up
// vm.max_map_count (65,530 by default) and the process aborted.
#[test]
fn serve_lowers_ws_max_connections_to_what_the_memory_mappings_limit_allows_and_logs_it() {
    let max_map_count: u64 = fs::read_to_string("/proc/sys/vm/max_map_count")
        .expect("read /proc/sys/vm/max_map_count")
        .trim()
        .parse()
        .expect("a number");
    let db_url = fresh_database();

    let (mut server, _, ws_addr) = serve_in(
        Path::new(env!("CARGO_MANIFEST_DIR")),
        &db_url,
        &[("WS_MAX_CONNECTIONS", "1000000"), ("HTTP_MAX_CONNECTIONS", "100"), ("LOG", "warn")],
    );

    let fit = (max_map_count - 4 * 100 - 2000) / 8;
    let stderr = server.stderr();
    let line = stderr.lines().find(|line| line.contains("msg=\"WS_MAX_CONNECTIONS lowered"));
    if fit >= 1_000_000 {
        // A kernel with room for a million WebSockets' mappings lowers nothing.
        assert_eq!(line, None, "nothing lowered under max_map_count={max_map_count}");
        return;
    }
    let line = line.unwrap_or_else(|| panic!("no line about WS_MAX_CONNECTIONS:\n{stderr}"));
    for part in ["level=warn", "was=1000000", &format!("now={fit}"), &format!("max_map_count={max_map_count}")] {
        assert!(line.contains(part), "{part} in {line}");
    }
    TcpStream::connect(ws_addr).expect("the WebSocket port accepts connections");
    assert!(server.exited().is_none(), "serve keeps running:\n{}", server.stderr());
}
