//! Real-time benchmark: how soon a message reaches every member of a 100-member group, and what 1,000 idle
//! WebSockets cost the server in memory.
//!
//! It runs the release binary as a child process on its own PostgreSQL cluster with durable settings, and drives
//! it over loopback sockets as clients would, so the figures include the commit, the network stack and the client
//! threads. The server is a separate process so that `/proc/<pid>/status` describes the server alone.
//! `make bench` runs it; it prints a table and rewrites BENCHMARKS.md. Guards stop the server and the cluster on
//! every way out, a failure included.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::client::{client_with_config, IntoClientRequest};
use tungstenite::http::HeaderValue;
use tungstenite::{Error as WsError, Message, WebSocket};

/// Members of the fan-out group, the sender included; each has its own connection and reader thread.
const MEMBERS: usize = 100;
/// Messages the first member sends, one at a time.
const MESSAGES: usize = 300;
/// Pause between sends, so that the figures are latency rather than throughput.
const SEND_GAP: Duration = Duration::from_millis(20);
const IDLE_CONNECTIONS: usize = 1000;
/// Users whose tokens the idle connections share; they are in no chat, so their sockets stay silent.
const IDLE_USERS: usize = 10;
/// How long the server gets to settle before its memory is read.
const SETTLE: Duration = Duration::from_secs(2);
/// The longest any single HTTP request, handshake or wait for a `ready` frame may take.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long readers may still wait for deliveries after the last send.
const DELIVERY_GRACE: Duration = Duration::from_secs(10);
/// A reader's hard limit, whatever happens to the sender.
const READER_LIMIT: Duration = Duration::from_secs(300);
/// Descriptors the benchmark needs: its own sockets; the server child inherits the limit and needs as many.
const MIN_OPEN_FILES: u64 = IDLE_CONNECTIONS as u64 + MEMBERS as u64 + 500;
/// Kept low so that setting up 110 accounts takes seconds; it does not touch what is measured.
const PASSWORD_ITERATIONS: &str = "1000";
const WORKERS: &str = "8";
const SECRET_KEY: &str = "bench-secret-key-0123456789abcdef-0123456789abcdef-0123456789abcd";
const PASSWORD: &str = "correct horse battery";

type BenchResult<T> = Result<T, String>;

fn main() {
    // `cargo bench` passes `--bench`; there are no options to read.
    if let Err(problem) = run() {
        eprintln!("realtime bench failed: {problem}");
        std::process::exit(1);
    }
}

fn run() -> BenchResult<()> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_messaging"));
    check_open_files()?;
    let load_before = load_average();

    let cluster = Cluster::start(&repo)?;
    migrate(&binary, &cluster.url)?;
    let server = Server::start(&repo, &binary, &cluster.url)?;
    eprintln!("server {} running: HTTP {}, WebSocket {}", binary.display(), server.http, server.ws);
    let after_start = proc_status(server.pid())?;

    let setup_started = Instant::now();
    let members: Vec<User> =
        (0..MEMBERS).map(|i| create_user(server.http, &format!("member{i:03}"))).collect::<BenchResult<_>>()?;
    let idle_users: Vec<User> =
        (0..IDLE_USERS).map(|i| create_user(server.http, &format!("idle{i:02}"))).collect::<BenchResult<_>>()?;
    let chat_id = create_group(server.http, &members)?;
    eprintln!("created {} users and a {MEMBERS}-member group in {:.1?}", MEMBERS + IDLE_USERS, setup_started.elapsed());

    thread::sleep(SETTLE);
    let baseline = proc_status(server.pid())?;
    let idle = measure_idle(&server, &idle_users, baseline)?;
    let fanout = measure_fanout(&[server.ws], server.http, &members, chat_id, "one")?;
    // The same group with every other member on a second process: events cross by NOTIFY.
    let second = Server::start(&repo, &binary, &cluster.url)?;
    let split = measure_fanout(&[server.ws, second.ws], server.http, &members, chat_id, "two")?;
    drop(second);

    let load = format!("{} before, {} after", load_before, load_average());
    let report = Report { after_start, baseline, idle, fanout, split, load };
    println!("{}", report.table());
    let markdown = report.markdown(&repo, &cluster.dir);
    std::fs::write(repo.join("BENCHMARKS.md"), markdown).map_err(|e| format!("cannot write BENCHMARKS.md: {e}"))?;
    println!("wrote {}", repo.join("BENCHMARKS.md").display());
    for fanout in [&report.fanout, &report.split] {
        if fanout.missing > 0 {
            return Err(format!("{} of {} deliveries never arrived", fanout.missing, MEMBERS * MESSAGES));
        }
    }
    Ok(())
}

/// Fails early, with the fix, when 1,000 sockets would not fit under the open-file limit.
fn check_open_files() -> BenchResult<()> {
    let limits = std::fs::read_to_string("/proc/self/limits").map_err(|e| format!("/proc/self/limits: {e}"))?;
    let soft = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .ok_or("no open-file limit in /proc/self/limits")?;
    match soft.parse::<u64>() {
        Ok(soft) if soft < MIN_OPEN_FILES => Err(format!(
            "the open-file limit is {soft}, below {MIN_OPEN_FILES}: run `ulimit -n 8192` first (make bench does)"
        )),
        _ => Ok(()),
    }
}

/// A private PostgreSQL cluster from `scripts/pg.sh`, stopped (and its directory removed) on drop.
struct Cluster {
    script: PathBuf,
    dir: PathBuf,
    url: String,
}

impl Cluster {
    /// Starts a cluster in `BENCH_PG_DIR` (the Makefile's, which its trap also stops) or in a new temporary
    /// directory, with PostgreSQL's durable defaults: fsync and synchronous commit stay on.
    fn start(repo: &Path) -> BenchResult<Cluster> {
        let dir = match std::env::var_os("BENCH_PG_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => std::env::temp_dir().join(format!("messaging-bench-{}", std::process::id())),
        };
        let mut cluster = Cluster { script: repo.join("scripts/pg.sh"), dir, url: String::new() };
        let output = Command::new(&cluster.script)
            .arg("start")
            .arg(&cluster.dir)
            .env_remove("PG_FAST")
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run scripts/pg.sh: {e}"))?;
        if !output.status.success() {
            return Err(format!("scripts/pg.sh start {} failed ({})", cluster.dir.display(), output.status));
        }
        cluster.url = String::from_utf8_lossy(&output.stdout).trim().to_string();
        Ok(cluster)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        match Command::new(&self.script).arg("stop").arg(&self.dir).status() {
            Ok(status) if status.success() => {
                let _ = std::fs::remove_dir_all(&self.dir);
            }
            outcome => eprintln!("warning: stopping the cluster in {} failed: {outcome:?}", self.dir.display()),
        }
    }
}

fn migrate(binary: &Path, url: &str) -> BenchResult<()> {
    let output = Command::new(binary)
        .args(["migrate", "up"])
        .env("DATABASE_URL", url)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    if !output.status.success() {
        return Err(format!("migrate up failed: {}", String::from_utf8_lossy(&output.stderr).trim()));
    }
    Ok(())
}

/// The release server as a child process, killed on drop.
struct Server {
    child: Child,
    http: SocketAddr,
    ws: SocketAddr,
}

impl Server {
    fn start(repo: &Path, binary: &Path, url: &str) -> BenchResult<Server> {
        let http = free_port()?;
        let ws = free_port()?;
        let mut command = Command::new(binary);
        command.arg("serve").current_dir(repo).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit());
        // Whatever the caller's environment says, these are the settings the figures describe.
        for name in ["TOKEN_TTL_SECS", "MAX_BODY_BYTES", "WS_ALLOWED_ORIGINS", "WS_QUEUE"] {
            command.env_remove(name);
        }
        command
            .env("DATABASE_URL", url)
            .env("HTTP_ADDR", http.to_string())
            .env("WS_ADDR", ws.to_string())
            .env("WORKERS", WORKERS)
            .env("LOG", "off")
            .env("RATE_LIMITS", "off")
            // Room for the 1,100 sockets measured, within the open files limit `make bench` sets.
            .env("WS_MAX_CONNECTIONS", "2000")
            .env("PASSWORD_ITERATIONS", PASSWORD_ITERATIONS)
            .env("SECRET_KEY", SECRET_KEY);
        let child = command.spawn().map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let mut server = Server { child, http, ws };
        server.wait_ready()?;
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_ready(&mut self) -> BenchResult<()> {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("the server exited at start ({status})"));
            }
            if request(self.http, "GET", "/readyz", None, None).is_ok_and(|resp| resp.status == 200) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("the server was not ready within {IO_TIMEOUT:?}"));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port that was free a moment ago; the server binds it right after.
fn free_port() -> BenchResult<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot bind a loopback port: {e}"))?;
    listener.local_addr().map_err(|e| e.to_string())
}

/// What `/proc/<pid>/status` says about the server.
#[derive(Clone, Copy)]
struct ProcStatus {
    rss_kib: u64,
    threads: u64,
}

fn proc_status(pid: u32) -> BenchResult<ProcStatus> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let field = |name: &str| -> BenchResult<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse().ok())
            .ok_or_else(|| format!("no {name} in {path}"))
    };
    Ok(ProcStatus { rss_kib: field("VmRSS:")?, threads: field("Threads:")? })
}

// ---- Clients ----

struct User {
    id: i64,
    token: String,
}

struct Resp {
    status: u16,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> BenchResult<Value> {
        serde_json::from_slice(&self.body).map_err(|e| format!("response is not JSON ({e})"))
    }
}

/// One request on its own connection with `Connection: close`; returns once the whole response has arrived.
fn request(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> BenchResult<Resp> {
    let what = format!("{method} {path}");
    let body = body.map(|body| body.to_string().into_bytes());
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some(body) = &body {
        head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.as_deref().unwrap_or_default());

    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| format!("{what}: {e}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| format!("{what}: {e}"))?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| format!("{what}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| format!("{what}: {e}"))?;
    stream.write_all(&bytes).map_err(|e| format!("{what}: {e}"))?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(resp) = parse_response(&raw, false) {
            return Ok(resp);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return parse_response(&raw, true).ok_or_else(|| format!("{what}: incomplete response")),
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("{what}: {e}")),
        }
    }
}

/// The response in `raw` once it is complete; at end of stream (`ended`) whatever came is the body.
fn parse_response(raw: &[u8], ended: bool) -> Option<Resp> {
    let head_end = raw.windows(4).position(|window| window == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let status = head.split_whitespace().nth(1)?.parse::<u16>().ok()?;
    let header = |name: &str| {
        head.lines().skip(1).filter_map(|line| line.split_once(':')).find_map(|(n, v)| {
            if n.trim().eq_ignore_ascii_case(name) {
                Some(v.trim().to_ascii_lowercase())
            } else {
                None
            }
        })
    };
    let rest = &raw[head_end + 4..];
    if status == 204 || status == 304 {
        return Some(Resp { status, body: Vec::new() });
    }
    if header("Transfer-Encoding").is_some_and(|v| v.contains("chunked")) {
        return decode_chunked(rest).map(|body| Resp { status, body });
    }
    match header("Content-Length").and_then(|v| v.parse::<usize>().ok()) {
        Some(length) if rest.len() >= length => Some(Resp { status, body: rest[..length].to_vec() }),
        Some(_) => None,
        None if ended => Some(Resp { status, body: rest.to_vec() }),
        None => None,
    }
}

/// A chunked body, or `None` until its last chunk has arrived.
fn decode_chunked(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|window| window == b"\r\n")?;
        let size = String::from_utf8_lossy(&raw[..line_end]);
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

/// Sends `body` and insists on `status`, returning the JSON answer.
fn call(addr: SocketAddr, path: &str, token: Option<&str>, body: &Value, status: u16) -> BenchResult<Value> {
    let resp = request(addr, "POST", path, token, Some(body))?;
    if resp.status != status {
        let text = String::from_utf8_lossy(&resp.body);
        return Err(format!("POST {path}: expected {status}, got {}: {text}", resp.status));
    }
    resp.json()
}

fn create_user(http: SocketAddr, username: &str) -> BenchResult<User> {
    let signup = json!({ "username": username, "email": format!("{username}@example.com"), "password": PASSWORD });
    let me = call(http, "/api/users", None, &signup, 201)?;
    let session = call(http, "/api/sessions", None, &json!({ "login": username, "password": PASSWORD }), 201)?;
    let id = me["id"].as_i64().ok_or("signup answered no id")?;
    let token = session["token"].as_str().ok_or("login answered no token")?.to_string();
    Ok(User { id, token })
}

/// A group owned by the first member, with every other member in it.
fn create_group(http: SocketAddr, members: &[User]) -> BenchResult<i64> {
    let member_ids: Vec<i64> = members[1..].iter().map(|user| user.id).collect();
    let body = json!({ "is_group": true, "title": "fan-out", "member_ids": member_ids });
    let chat = call(http, "/api/chats", Some(&members[0].token), &body, 201)?;
    let n_members = chat["members"].as_array().map_or(0, Vec::len);
    if n_members != MEMBERS {
        return Err(format!("the group has {n_members} members, not {MEMBERS}"));
    }
    chat["id"].as_i64().ok_or_else(|| "the new chat has no id".to_string())
}

/// Opens `/ws` with a Bearer header and waits for the `ready` frame, so the connection is subscribed.
/// Also returns how long the upgrade took and how long until `ready`, both from the start of the TCP connect.
fn connect_ready(ws: SocketAddr, token: &str) -> BenchResult<(WebSocket<TcpStream>, Duration, Duration)> {
    let started = Instant::now();
    let mut request = format!("ws://{ws}/ws").into_client_request().map_err(|e| e.to_string())?;
    let authorization = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| e.to_string())?;
    request.headers_mut().insert("Authorization", authorization);
    let stream = TcpStream::connect_timeout(&ws, IO_TIMEOUT).map_err(|e| format!("connect to {ws}: {e}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut socket, _) = client_with_config(request, stream, None).map_err(|e| format!("handshake: {e}"))?;
    let upgraded = started.elapsed();
    let deadline = Instant::now() + IO_TIMEOUT;
    while Instant::now() < deadline {
        match socket.read() {
            Ok(Message::Text(text)) => {
                let frame: Value =
                    serde_json::from_str(text.as_str()).map_err(|e| format!("frame is not JSON: {e}"))?;
                if frame["type"] == "ready" {
                    return Ok((socket, upgraded, started.elapsed()));
                }
                return Err(format!("the first frame was not ready: {text}"));
            }
            Ok(Message::Close(frame)) => return Err(format!("closed before ready: {frame:?}")),
            Ok(_) => {}
            Err(e) => return Err(format!("no ready frame: {e}")),
        }
    }
    Err(format!("no ready frame within {IO_TIMEOUT:?}"))
}

// ---- Memory with idle connections ----

struct Idle {
    opened_in: Duration,
    /// Milliseconds from connect to the upgrade, and to the `ready` frame, per connection.
    upgraded: Summary,
    ready: Summary,
    with_idle: ProcStatus,
    after_close: ProcStatus,
    per_connection_kib: f64,
}

/// Opens the idle connections, reads the server's memory, then closes them and reads it again.
fn measure_idle(server: &Server, idle_users: &[User], baseline: ProcStatus) -> BenchResult<Idle> {
    let started = Instant::now();
    let mut sockets = Vec::with_capacity(IDLE_CONNECTIONS);
    let (mut upgraded, mut ready) = (Vec::new(), Vec::new());
    for n in 0..IDLE_CONNECTIONS {
        let user = &idle_users[n % idle_users.len()];
        let (socket, upgrade_took, ready_took) =
            connect_ready(server.ws, &user.token).map_err(|e| format!("idle connection {n}: {e}"))?;
        sockets.push(socket);
        upgraded.push(upgrade_took.as_secs_f64() * 1000.0);
        ready.push(ready_took.as_secs_f64() * 1000.0);
    }
    let opened_in = started.elapsed();
    eprintln!("opened {IDLE_CONNECTIONS} idle WebSockets, each past its ready frame, in {opened_in:.1?}");
    thread::sleep(SETTLE);
    let with_idle = proc_status(server.pid())?;

    for mut socket in sockets {
        let _ = socket.close(None);
        let _ = socket.flush();
    }
    thread::sleep(SETTLE);
    let after_close = proc_status(server.pid())?;
    let per_connection_kib = (with_idle.rss_kib as f64 - baseline.rss_kib as f64) / IDLE_CONNECTIONS as f64;
    Ok(Idle {
        opened_in,
        upgraded: Summary::of(upgraded),
        ready: Summary::of(ready),
        with_idle,
        after_close,
        per_connection_kib,
    })
}

// ---- Fan-out latency ----

/// What one member's reader saw.
struct Receipts {
    /// (message index, when its `message.created` frame arrived), first arrival only.
    arrivals: Vec<(usize, Instant)>,
    duplicates: usize,
    /// Why the reader stopped early, if the connection ended.
    ended: Option<String>,
}

struct Fanout {
    from_send: Summary,
    from_response: Summary,
    round_trip: Summary,
    missing: usize,
    duplicates: usize,
    ended: Vec<String>,
}

/// Connects every member, then has the first one send `MESSAGES` messages over REST while every reader
/// timestamps the `message.created` frames.
/// Member `i` listens on `ws[i % ws.len()]`; member 0 sends through `http`.
/// `run` tags the messages' client ids, so that runs do not retry each other's.
fn measure_fanout(
    ws: &[SocketAddr],
    http: SocketAddr,
    members: &[User],
    chat_id: i64,
    run: &str,
) -> BenchResult<Fanout> {
    let mut sockets = Vec::with_capacity(MEMBERS);
    for (member_idx, member) in members.iter().enumerate() {
        let (socket, _, _) =
            connect_ready(ws[member_idx % ws.len()], &member.token).map_err(|e| format!("member {member_idx}: {e}"))?;
        sockets.push(socket);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<JoinHandle<Receipts>> = sockets
        .into_iter()
        .map(|socket| {
            let stop = stop.clone();
            thread::spawn(move || read_receipts(socket, &stop))
        })
        .collect();
    // The members' presence frames go out while they connect; let them pass before the clock starts.
    thread::sleep(Duration::from_millis(500));

    let sent = send_messages(http, &members[0].token, chat_id, run);
    let grace_ends = Instant::now() + DELIVERY_GRACE;
    while Instant::now() < grace_ends && !readers.iter().all(JoinHandle::is_finished) {
        thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let receipts: Vec<Receipts> = readers
        .into_iter()
        .map(|reader| reader.join().map_err(|_| "a reader thread panicked".to_string()))
        .collect::<BenchResult<_>>()?;
    let sent = sent?;

    let mut from_send = Vec::with_capacity(MEMBERS * MESSAGES);
    let mut from_response = Vec::with_capacity(MEMBERS * MESSAGES);
    let mut delivered = 0;
    for receipt in &receipts {
        for &(index, arrived) in &receipt.arrivals {
            let (before, answered) = sent[index];
            from_send.push(signed_ms(arrived, before));
            from_response.push(signed_ms(arrived, answered));
            delivered += 1;
        }
    }
    let round_trip = sent.iter().map(|&(before, answered)| signed_ms(answered, before)).collect();
    Ok(Fanout {
        from_send: Summary::of(from_send),
        from_response: Summary::of(from_response),
        round_trip: Summary::of(round_trip),
        missing: MEMBERS * MESSAGES - delivered,
        duplicates: receipts.iter().map(|receipt| receipt.duplicates).sum(),
        ended: receipts
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.ended.as_ref().map(|e| format!("member {i}: {e}")))
            .collect(),
    })
}

/// Sends the messages one at a time; for each, the time just before the request and when its response arrived.
fn send_messages(http: SocketAddr, token: &str, chat_id: i64, run: &str) -> BenchResult<Vec<(Instant, Instant)>> {
    let path = format!("/api/chats/{chat_id}/messages");
    let mut sent = Vec::with_capacity(MESSAGES);
    for index in 0..MESSAGES {
        let body =
            json!({ "content": format!("fan-out message {index}"), "client_id": format!("bench-{run}-{index}") });
        let before = Instant::now();
        let resp = request(http, "POST", &path, Some(token), Some(&body))?;
        let answered = Instant::now();
        if resp.status != 201 {
            return Err(format!("message {index}: expected 201, got {}", resp.status));
        }
        sent.push((before, answered));
        thread::sleep(SEND_GAP);
    }
    Ok(sent)
}

/// One member's reader: timestamps each `message.created` frame as soon as tungstenite hands it over.
fn read_receipts(mut socket: WebSocket<TcpStream>, stop: &AtomicBool) -> Receipts {
    let limit = Instant::now() + READER_LIMIT;
    let mut seen = vec![false; MESSAGES];
    let mut receipts = Receipts { arrivals: Vec::with_capacity(MESSAGES), duplicates: 0, ended: None };
    // A short timeout so the reader notices `stop` soon.
    if let Err(e) = socket.get_mut().set_read_timeout(Some(Duration::from_millis(100))) {
        receipts.ended = Some(format!("set_read_timeout: {e}"));
        return receipts;
    }
    while receipts.arrivals.len() < MESSAGES && !stop.load(Ordering::Relaxed) && Instant::now() < limit {
        match socket.read() {
            Ok(Message::Text(text)) => {
                let arrived = Instant::now();
                match created_index(text.as_str()) {
                    Some(index) if seen[index] => receipts.duplicates += 1,
                    Some(index) => {
                        seen[index] = true;
                        receipts.arrivals.push((index, arrived));
                    }
                    None => {}
                }
            }
            Ok(Message::Close(frame)) => {
                receipts.ended = Some(format!("closed by the server: {frame:?}"));
                break;
            }
            Ok(_) => {}
            Err(WsError::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => {
                receipts.ended = Some(format!("read failed: {e}"));
                break;
            }
        }
    }
    receipts
}

/// The message index of a `message.created` event frame for one of our messages.
fn created_index(text: &str) -> Option<usize> {
    let frame: Value = serde_json::from_str(text).ok()?;
    if frame["type"] != "event" || frame["event"]["type"] != "message.created" {
        return None;
    }
    let client_id = frame["event"]["message"]["client_id"].as_str()?;
    client_id.strip_prefix("bench-")?.split_once('-')?.1.parse().ok().filter(|&index| index < MESSAGES)
}

/// `later - earlier` in milliseconds, negative when `later` came first.
fn signed_ms(later: Instant, earlier: Instant) -> f64 {
    match later.checked_duration_since(earlier) {
        Some(elapsed) => elapsed.as_secs_f64() * 1000.0,
        None => -(earlier.duration_since(later).as_secs_f64() * 1000.0),
    }
}

/// Median, 99th percentile (nearest rank) and maximum, in milliseconds.
struct Summary {
    count: usize,
    median: f64,
    p99: f64,
    max: f64,
}

impl Summary {
    fn of(mut values: Vec<f64>) -> Summary {
        values.sort_by(f64::total_cmp);
        let rank = |fraction: f64| {
            let index = ((fraction * values.len() as f64).ceil() as usize).saturating_sub(1);
            values.get(index).copied().unwrap_or(f64::NAN)
        };
        Summary { count: values.len(), median: rank(0.5), p99: rank(0.99), max: rank(1.0) }
    }
}

// ---- Report ----

struct Report {
    /// The machine's 1-minute load average around the run: other work on it skews the figures.
    load: String,
    after_start: ProcStatus,
    baseline: ProcStatus,
    idle: Idle,
    fanout: Fanout,
    /// The same, with every other member connected to a second process.
    split: Fanout,
}

impl Report {
    fn table(&self) -> String {
        let fanout = &self.fanout;
        let idle = &self.idle;
        let mib = |status: ProcStatus| status.rss_kib as f64 / 1024.0;
        let row = |name: &str, summary: &Summary| {
            format!("  {name:<34}{:>9.2}{:>9.2}{:>9.2}\n", summary.median, summary.p99, summary.max)
        };
        let mut out = String::new();
        out.push_str(&format!(
            "\nfan-out: {MEMBERS} members x {MESSAGES} messages = {} deliveries expected, {} ms between sends\n",
            MEMBERS * MESSAGES,
            SEND_GAP.as_millis()
        ));
        out.push_str(&format!("  {:<34}{:>9}{:>9}{:>9}\n", "latency (ms)", "median", "p99", "max"));
        for (name, fanout) in [("one process", fanout), ("members split over two processes", &self.split)] {
            out.push_str(&format!("  {name}\n"));
            out.push_str(&row("frame - just before the POST", &fanout.from_send));
            out.push_str(&row("frame - POST response arrived", &fanout.from_response));
            out.push_str(&row("POST round trip (per message)", &fanout.round_trip));
            out.push_str(&format!(
                "  delivered {}, missing {}, duplicates {}, connections ended early {}\n",
                fanout.from_send.count,
                fanout.missing,
                fanout.duplicates,
                fanout.ended.len()
            ));
            for ended in &fanout.ended {
                out.push_str(&format!("    {ended}\n"));
            }
        }
        out.push_str(&format!("\nmemory (server VmRSS), {IDLE_CONNECTIONS} idle WebSockets\n"));
        out.push_str(&format!("  {:<34}{:>9}{:>9}\n", "", "MiB", "threads"));
        let memory =
            |name: &str, status: ProcStatus| format!("  {name:<34}{:>9.1}{:>9}\n", mib(status), status.threads);
        out.push_str(&memory("after start", self.after_start));
        out.push_str(&memory("after setup requests (baseline)", self.baseline));
        out.push_str(&memory(&format!("with {IDLE_CONNECTIONS} idle connections"), idle.with_idle));
        out.push_str(&memory("after closing them", idle.after_close));
        out.push_str(&format!(
            "  per connection: {:.1} KiB ((with - baseline) / {IDLE_CONNECTIONS})\n",
            idle.per_connection_kib
        ));
        out.push_str(&format!(
            "  opening them one after another took {:.1} s; per connection (ms)  median {:.2}  p99 {:.2}  max {:.2} \
             to the upgrade, median {:.2}  p99 {:.2}  max {:.2} to ready\n",
            idle.opened_in.as_secs_f64(),
            idle.upgraded.median,
            idle.upgraded.p99,
            idle.upgraded.max,
            idle.ready.median,
            idle.ready.p99,
            idle.ready.max
        ));
        out.push_str(&format!("\nload average (1 min): {}\n", self.load));
        out.push_str(&format!(
            "setup: PASSWORD_ITERATIONS={PASSWORD_ITERATIONS} (account setup speed only), WORKERS={WORKERS}, LOG=off, \
             RATE_LIMITS=off, WS_QUEUE default, durable PostgreSQL\n"
        ));
        out
    }

    fn markdown(&self, repo: &Path, pg_dir: &Path) -> String {
        let fanout = &self.fanout;
        let idle = &self.idle;
        let commit = command_line(repo, "git", &["rev-parse", "--short", "HEAD"]);
        let dirty = Command::new("git")
            .args(["status", "--porcelain", "--untracked-files=no"])
            .current_dir(repo)
            .output()
            .is_ok_and(|output| !output.stdout.is_empty());
        let commit = if dirty { format!("{commit} (with uncommitted changes)") } else { commit };
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines().find_map(|line| {
                    line.strip_prefix("model name")?.split_once(':').map(|(_, m)| m.trim().to_string())
                })
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find_map(|line| line.strip_prefix("MemTotal:")?.split_whitespace().next()?.parse::<f64>().ok())
            })
            .map_or("unknown".into(), |kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0));
        let postgres =
            std::fs::read_to_string(pg_dir.join("data/PG_VERSION")).map_or("unknown".into(), |v| v.trim().to_string());
        let mib = |status: ProcStatus| status.rss_kib as f64 / 1024.0;
        let latency = |name: &str, s: &Summary| format!("| {name} | {:.2} | {:.2} | {:.2} |\n", s.median, s.p99, s.max);
        let memory = |name: &str, s: ProcStatus| format!("| {name} | {:.1} | {} |\n", mib(s), s.threads);

        let mut md = String::new();
        md.push_str("# Benchmarks\n\n");
        md.push_str("Real-time delivery, measured by `benches/realtime.rs`.\n");
        md.push_str("`make bench` runs it and rewrites this file; the figures below are from its last run.\n");
        md.push_str("The server is the release binary as a child process, on a private PostgreSQL cluster with durable settings (fsync and synchronous commit on), driven over loopback sockets by clients in the benchmark process on the same machine.\n\n");
        md.push_str("## Run\n\n");
        md.push_str(&format!("- Date: {}\n", command_line(repo, "date", &["-u", "+%Y-%m-%d %H:%M UTC"])));
        md.push_str(&format!("- Commit: {commit}\n"));
        md.push_str("- Command: `make bench`\n");
        md.push_str(&format!(
            "- Machine: {} CPUs ({cpu}), {memory_gib} memory, Linux {}\n",
            thread::available_parallelism().map_or(0, |n| n.get()),
            command_line(repo, "uname", &["-r"])
        ));
        md.push_str(&format!("- Load average (1 min): {}\n", self.load));
        md.push_str(&format!("- PostgreSQL {postgres}, default settings on a unix socket\n"));
        md.push_str(&format!(
            "- Server: `WORKERS={WORKERS} LOG=off RATE_LIMITS=off`, `WS_QUEUE` default; `PASSWORD_ITERATIONS={PASSWORD_ITERATIONS}` only so that creating {} accounts is quick (it does not touch what is measured)\n\n",
            MEMBERS + IDLE_USERS
        ));
        md.push_str("## Fan-out latency\n\n");
        md.push_str(&format!(
            "One group of {MEMBERS} members, each on its own WebSocket (Bearer header) with its own reader thread.\n\
             Member 0 sends {MESSAGES} messages with `POST /api/chats/{{id}}/messages`, one at a time, {} ms apart, so this is latency, not throughput.\n\
             Each reader timestamps every `message.created` event frame; the figures are over all {} (message, member) pairs, the sender's own connection included.\n\n",
            SEND_GAP.as_millis(),
            MEMBERS * MESSAGES
        ));
        md.push_str("| milliseconds | median | p99 | max |\n|---|---|---|---|\n");
        md.push_str(&latency("frame arrival − just before the POST", &fanout.from_send));
        md.push_str(&latency("frame arrival − the POST's response arrival", &fanout.from_response));
        md.push_str(&latency("POST round trip, per message", &fanout.round_trip));
        md.push_str(&format!(
            "\nDelivered {} of {}: missing {}, duplicates {}, connections ended early {}.\n",
            fanout.from_send.count,
            MEMBERS * MESSAGES,
            fanout.missing,
            fanout.duplicates,
            fanout.ended.len()
        ));
        md.push_str("A negative figure in the second row means the frame arrived before the HTTP response.\n");
        md.push_str("\nThe same group, with every other member's WebSocket on a second server process on the same database: the odd members' frames cross between processes by NOTIFY, and that process reads the event from the table.\n\n");
        md.push_str("| milliseconds | median | p99 | max |\n|---|---|---|---|\n");
        md.push_str(&latency("frame arrival − just before the POST", &self.split.from_send));
        md.push_str(&latency("frame arrival − the POST's response arrival", &self.split.from_response));
        md.push_str(&latency("POST round trip, per message", &self.split.round_trip));
        md.push_str(&format!(
            "\nDelivered {} of {}: missing {}, duplicates {}, connections ended early {}.\n",
            self.split.from_send.count,
            MEMBERS * MESSAGES,
            self.split.missing,
            self.split.duplicates,
            self.split.ended.len()
        ));
        md.push_str("The 100 reader threads share the machine's CPUs with the server and PostgreSQL, so part of the spread is client scheduling.\n\n");
        md.push_str(&format!("## Memory with {IDLE_CONNECTIONS} idle connections\n\n"));
        md.push_str(&format!(
            "Server resident memory (`VmRSS` in `/proc/<pid>/status`) and thread count.\n\
             The {IDLE_CONNECTIONS} connections are authenticated with the tokens of {IDLE_USERS} users who are in no chat; each has received its `ready` frame, and the server then gets {} s to settle.\n\
             They were opened one after another, in {:.1} s.\n\n",
            SETTLE.as_secs(),
            idle.opened_in.as_secs_f64()
        ));
        md.push_str("| server | VmRSS (MiB) | threads |\n|---|---|---|\n");
        md.push_str(&memory("after start", self.after_start));
        md.push_str(&memory("after the setup requests (baseline)", self.baseline));
        md.push_str(&memory(&format!("with {IDLE_CONNECTIONS} idle WebSockets"), idle.with_idle));
        md.push_str(&memory("after closing them", idle.after_close));
        md.push_str(&format!(
            "\nPer connection: **{:.1} KiB** of resident memory ((with − baseline) / {IDLE_CONNECTIONS}) and {:.2} threads.\n",
            idle.per_connection_kib,
            (idle.with_idle.threads as f64 - self.baseline.threads as f64) / IDLE_CONNECTIONS as f64
        ));
        md.push_str("\nOpening one connection, from the TCP connect, in milliseconds:\n\n");
        md.push_str("| milliseconds | median | p99 | max |\n|---|---|---|---|\n");
        md.push_str(&latency("until the upgrade (101)", &idle.upgraded));
        md.push_str(&latency("until the `ready` frame", &idle.ready));
        md
    }
}

/// The 1-minute load average, from `/proc/loadavg`.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// A command's first line of output, or `unknown`.
fn command_line(dir: &Path, program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8_lossy(&output.stdout).lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}
