//! The release server as a child process, so that `/proc/<pid>` describes the server alone.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::http;
use crate::BenchResult;

/// Signs WebSocket tickets; the benchmark's clients use bearer headers and never need it.
const SECRET_KEY: &str = "bench-secret-key-0123456789abcdef-0123456789abcdef-0123456789abcd";
/// Low so that creating a thousand accounts takes seconds; no measured request hashes a password.
pub const PASSWORD_ITERATIONS: &str = "1000";
/// How long a server may take to answer `/readyz` after it is spawned.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How a server process is started; everything else is the server's default.
#[derive(Clone)]
pub struct Settings {
    /// `WORKERS`, or the server's default.
    pub workers: Option<usize>,
    /// `WS_MAX_CONNECTIONS`: room for the scenario's sockets within the open files limit.
    pub ws_max_connections: usize,
}

/// A running server, killed on drop.
pub struct Server {
    child: Child,
    pub http: SocketAddr,
    pub ws: SocketAddr,
    /// From the spawn to the first `200` from `/readyz`.
    pub started_in: Duration,
}

impl Server {
    pub fn start(binary: &Path, url: &str, settings: &Settings) -> BenchResult<Server> {
        let http = free_port()?;
        let ws = free_port()?;
        let mut command = Command::new(binary);
        command.arg("serve").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit());
        // Whatever the caller's environment says, these are the settings the figures describe.
        for name in ["WORKERS", "TOKEN_TTL_SECS", "MAX_BODY_BYTES", "WS_ALLOWED_ORIGINS", "WS_QUEUE", "MIGRATIONS_DIR"]
        {
            command.env_remove(name);
        }
        if let Some(workers) = settings.workers {
            command.env("WORKERS", workers.to_string());
        }
        command
            .env("DATABASE_URL", url)
            .env("HTTP_ADDR", http.to_string())
            .env("WS_ADDR", ws.to_string())
            .env("LOG", "off")
            .env("RATE_LIMITS", "off")
            .env("WS_MAX_CONNECTIONS", settings.ws_max_connections.to_string())
            .env("PASSWORD_ITERATIONS", PASSWORD_ITERATIONS)
            .env("SECRET_KEY", SECRET_KEY);
        let spawned = Instant::now();
        let child = command.spawn().map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let mut server = Server { child, http, ws, started_in: Duration::ZERO };
        server.started_in = server.wait_ready(spawned)?;
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls `/readyz` every millisecond: the start time is measured to that precision.
    fn wait_ready(&mut self, spawned: Instant) -> BenchResult<Duration> {
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("the server exited at start ({status})"));
            }
            if http::get_status(self.http, "/readyz") == Some(200) {
                return Ok(spawned.elapsed());
            }
            if spawned.elapsed() >= START_TIMEOUT {
                return Err(format!("the server was not ready within {START_TIMEOUT:?}"));
            }
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Resident memory (`VmRSS`), threads and memory mappings.
    pub fn status(&self) -> BenchResult<ProcStatus> {
        proc_status(self.pid())
    }

    /// How many HTTP workers the server runs: its threads named `http-N`.
    pub fn http_workers(&self) -> BenchResult<usize> {
        let tasks = PathBuf::from(format!("/proc/{}/task", self.pid()));
        let entries = std::fs::read_dir(&tasks).map_err(|e| format!("{}: {e}", tasks.display()))?;
        let workers = entries
            .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path().join("comm")).ok())
            .filter(|name| name.trim().strip_prefix("http-").is_some_and(|n| n.parse::<usize>().is_ok()))
            .count();
        match workers {
            0 => Err("the server has no thread named http-N: set BENCH_WORKERS to its worker count".into()),
            n => Ok(n),
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

/// What `/proc/<pid>` says about a process.
#[derive(Clone, Copy)]
pub struct ProcStatus {
    pub rss_kib: u64,
    pub threads: u64,
    /// Lines of `/proc/<pid>/maps`: the kernel allows `vm.max_map_count` of them.
    pub mappings: u64,
}

pub fn proc_status(pid: u32) -> BenchResult<ProcStatus> {
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
    let maps = format!("/proc/{pid}/maps");
    let mappings = std::fs::read_to_string(&maps).map_err(|e| format!("{maps}: {e}"))?.lines().count() as u64;
    Ok(ProcStatus { rss_kib: field("VmRSS:")?, threads: field("Threads:")?, mappings })
}

/// Runs `messaging migrate up` against the cluster.
pub fn migrate(binary: &Path, url: &str) -> BenchResult<()> {
    let output = Command::new(binary)
        .args(["migrate", "up"])
        .env("DATABASE_URL", url)
        .env_remove("MIGRATIONS_DIR")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    if !output.status.success() {
        return Err(format!("migrate up failed: {}", String::from_utf8_lossy(&output.stderr).trim()));
    }
    Ok(())
}
