//! HTTP load from wrk: keep-alive connections as fast as the server answers, latency from wrk's own
//! distribution (`--latency`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{report, BenchResult};

/// Every connection as its own client: line N of `clients` ("<token> <path>") is connection N's
/// (benches/wrk/per_client.lua; wrk then runs one thread per connection).
pub struct PerClient<'a> {
    pub script: &'a Path,
    pub clients: &'a Path,
    pub method: &'a str,
    pub body: Option<&'a str>,
}

/// One wrk run's load.
pub struct Load<'a> {
    pub addr: SocketAddr,
    /// The path every connection requests, unless `per_client` gives each its own.
    pub path: &'a str,
    pub connections: usize,
    pub secs: u64,
    pub per_client: Option<PerClient<'a>>,
    /// One header on every request, e.g. `Authorization: Bearer …`.
    pub header: Option<String>,
}

/// What wrk measured.
#[derive(Clone, Copy)]
pub struct Measured {
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub requests: u64,
}

impl Measured {
    pub fn describe(&self) -> String {
        format!(
            "{} req/s, p50 {} ms, p99 {} ms",
            report::number(self.requests_per_sec),
            report::number(self.p50_ms),
            report::number(self.p99_ms)
        )
    }
}

pub fn run(load: &Load) -> BenchResult<Measured> {
    let threads = match &load.per_client {
        Some(_) => load.connections,
        // wrk's threads are event loops: one per core is plenty.
        None => load.connections.min(2),
    };
    let mut command = Command::new("wrk");
    command.args([
        "-t",
        &threads.to_string(),
        "-c",
        &load.connections.to_string(),
        "-d",
        &format!("{}s", load.secs),
        "--latency",
        "--timeout",
        "10s",
    ]);
    if let Some(header) = &load.header {
        command.args(["-H", header]);
    }
    if let Some(per_client) = &load.per_client {
        command
            .arg("-s")
            .arg(per_client.script)
            .env("BENCH_CLIENTS", per_client.clients)
            .env("BENCH_METHOD", per_client.method)
            .env("BENCH_BODY", per_client.body.unwrap_or(""));
    }
    command.arg(format!("http://{}{}", load.addr, load.path));
    let output = command.output().map_err(|e| format!("cannot run wrk ({e}): scripts/bench-tools.sh installs it"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!("wrk failed ({}): {}{}", output.status, text, String::from_utf8_lossy(&output.stderr)));
    }
    parse(&text).map_err(|problem| format!("wrk on {}: {problem}\n{text}", load.path))
}

fn parse(text: &str) -> BenchResult<Measured> {
    let line_after =
        |prefix: &str| text.lines().map(str::trim).find_map(|line| line.strip_prefix(prefix)).map(str::trim);
    if let Some(non_2xx) = line_after("Non-2xx or 3xx responses:") {
        return Err(format!("{non_2xx} answers were not 2xx"));
    }
    if let Some(errors) = line_after("Socket errors:") {
        return Err(format!("socket errors: {errors}"));
    }
    let requests_per_sec = line_after("Requests/sec:").and_then(|v| v.parse().ok()).ok_or("no Requests/sec")?;
    let requests = text
        .lines()
        .find_map(|line| line.trim().split_once(" requests in ").and_then(|(n, _)| n.parse().ok()))
        .ok_or("no request count")?;
    let percentile = |p: &str| line_after(p).and_then(duration_ms).ok_or(format!("no {p} latency"));
    Ok(Measured { requests_per_sec, p50_ms: percentile("50%")?, p99_ms: percentile("99%")?, requests })
}

/// wrk's durations: `812.00us`, `3.21ms`, `1.05s`, `2.00m`.
fn duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let value: f64 = text[..split].parse().ok()?;
    let scale = match &text[split..] {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        _ => return None,
    };
    Some(value * scale)
}

/// Writes the clients file of a per-client run (`PerClient::clients`) to `dir`.
pub fn clients_file(dir: &Path, name: &str, lines: &[(String, String)]) -> BenchResult<PathBuf> {
    let path = dir.join(name);
    let text: String = lines.iter().map(|(token, path)| format!("{token} {path}\n")).collect();
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}
