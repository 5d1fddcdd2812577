//! P8 and P6: what the server costs when nothing happens.
//!
//! P8: a fresh process's resident memory once it is ready and idle, the release binary's size, and the time
//! from spawning it to its first `200` from `/readyz` (polled every millisecond), the median of fresh starts.
//! P6: resident memory per idle authenticated WebSocket, at 1,000 and at 10,000 connections, on a fresh process:
//! (RSS with N open − RSS before any) ÷ N. Each connection is past its `ready` frame; the users are in no chat,
//! so nothing is sent to them. 10,000 sockets need as many descriptors here and in the server: the run raises
//! its open files limit to the hard limit, and says which limit stopped it if 10,000 do not fit.

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use crate::report::{self, Check, Row, Section, Target};
use crate::server::{ProcStatus, Server};
use crate::stats::{self, Summary};
use crate::ws;
use crate::{Bench, BenchResult};

/// How long a server gets to settle before its memory is read.
const SETTLE: Duration = Duration::from_secs(2);
const MIB: f64 = 1024.0 * 1024.0;

pub fn startup(bench: &mut Bench) -> BenchResult<Vec<Section>> {
    let binary_bytes = std::fs::metadata(&bench.binary).map_err(|e| format!("{}: {e}", bench.binary.display()))?.len();
    let (mut ready_ms, mut rss_kib) = (Vec::new(), Vec::new());
    for _ in 0..bench.options.rounds {
        let server = Server::start(&bench.binary, &bench.cluster.url, &bench.settings(1000))?;
        ready_ms.push(server.started_in.as_secs_f64() * 1000.0);
        thread::sleep(SETTLE);
        rss_kib.push(server.status()?.rss_kib as f64);
    }
    let list = |values: &[f64], unit: &str| {
        values.iter().map(|v| format!("{}{unit}", report::number(*v))).collect::<Vec<_>>().join(", ")
    };
    let (ready, rss) = (stats::median(&ready_ms), stats::median(&rss_kib) / 1024.0);
    let binary = binary_bytes as f64 / MIB;
    let row = |scenario: &str, ours: String, check: Check| Row {
        id: "P8",
        scenario: scenario.into(),
        ours,
        baseline: "— (absolute)".into(),
        ratio: None,
        checks: vec![check],
        limited_by: "—".into(),
    };
    let detail = format!(
        "{} fresh starts of the release binary with the run's settings against the run's database (migrations applied): the time from the spawn to the first `200` from `/readyz` ({} ms), and `VmRSS` {} s after it ({} MiB). The binary is `{}` as `make build` leaves it ({binary_bytes} bytes).\n",
        ready_ms.len(),
        list(&ready_ms, ""),
        SETTLE.as_secs(),
        list(&rss_kib.iter().map(|kib| kib / 1024.0).collect::<Vec<_>>(), ""),
        bench.binary.display(),
    );
    Ok(vec![Section {
        id: "P8",
        title: "Start-up and idle footprint".into(),
        rows: vec![
            row(
                "idle RSS after start",
                format!("{} MiB", report::number(rss)),
                Check { what: "RSS", value: rss, target: Target::AtMost(15.0), unit: " MiB" },
            ),
            row(
                "release binary size",
                format!("{} MiB", report::number(binary)),
                Check { what: "size", value: binary, target: Target::AtMost(8.0), unit: " MiB" },
            ),
            row(
                "start to /readyz 200",
                format!("{} ms", report::number(ready)),
                Check { what: "time", value: ready, target: Target::AtMost(100.0), unit: " ms" },
            ),
        ],
        detail,
    }])
}

/// WebSockets the scenario wants open at each reading.
const STEPS: [usize; 2] = [1000, 10_000];
/// Users whose tokens the idle connections share, so that no user holds more than a hundred.
const IDLE_USERS: usize = 100;
/// Connections opened between checks of whether the next batch fails.
const BATCH: usize = 500;
/// Descriptors a process needs besides its WebSockets: the server's HTTP connections (two each, 1,024 by
/// default), its database connections and its margin (README, "Configuration"); this process's own files.
const SERVER_DESCRIPTORS_BESIDES: u64 = 2 * 1024 + 64 + 64;
const OWN_DESCRIPTORS_BESIDES: u64 = 256;
/// Memory mappings kept free for everything else the server maps (its heap growing, a database reconnect).
const SPARE_MAPPINGS: u64 = 2000;

/// How many WebSockets the run can open without breaking something, and what sets that number.
struct Ceiling {
    connections: usize,
    why: Option<String>,
}

impl Ceiling {
    fn lower(&mut self, connections: usize, why: impl FnOnce() -> String) {
        if connections < self.connections {
            self.connections = connections;
            self.why = Some(why());
        }
    }
}

pub fn idle_connections(bench: &mut Bench) -> BenchResult<Vec<Section>> {
    let users = bench.users("idle", IDLE_USERS)?;
    let most = STEPS[STEPS.len() - 1];
    let mut ceiling = Ceiling { connections: most, why: None };
    // The server inherits this process's limit and raises its soft limit to the same hard limit.
    let descriptors = bench.open_files;
    let besides = SERVER_DESCRIPTORS_BESIDES.max(OWN_DESCRIPTORS_BESIDES);
    ceiling.lower(descriptors.saturating_sub(besides) as usize, || {
        format!("the open files limit, {descriptors} (RLIMIT_NOFILE's hard limit), less {besides} for everything else")
    });
    let server = Server::start(&bench.binary, &bench.cluster.url, &bench.settings(ceiling.connections + 100))?;
    thread::sleep(SETTLE);
    let before = server.status()?;
    let (mut sockets, mut to_ready, mut readings) = (Vec::new(), Vec::new(), Vec::new());
    let mut failed = None;
    let opening = Instant::now();
    for step in STEPS {
        while sockets.len() < step.min(ceiling.connections) && failed.is_none() {
            let batch = (step.min(ceiling.connections) - sockets.len()).min(BATCH);
            let targets: Vec<(SocketAddr, &str)> = (sockets.len()..sockets.len() + batch)
                .map(|n| (server.ws, users[n % users.len()].token.as_str()))
                .collect();
            match ws::connect_many(&targets, 4) {
                Ok(opened) => {
                    for (socket, took) in opened {
                        to_ready.push(took.as_secs_f64() * 1000.0);
                        sockets.push(socket);
                    }
                }
                Err(problem) => {
                    failed = Some(format!("a connection after the first {} failed: {problem}", sockets.len()))
                }
            }
        }
        if readings.last().is_some_and(|(open, _): &(usize, ProcStatus)| *open == sockets.len()) {
            continue;
        }
        let opened_in = opening.elapsed();
        thread::sleep(SETTLE);
        let status =
            server.status().map_err(|e| format!("the server ended with {} WebSockets open: {e}", sockets.len()))?;
        readings.push((sockets.len(), status));
        eprintln!("bench: {} idle WebSockets open after {opened_in:.1?}", sockets.len());
        // Each WebSocket costs the server memory mappings (its two threads' stacks, guard pages and signal
        // stacks); past vm.max_map_count, creating a thread fails and the process aborts. Stop short of that.
        let (mapped, allowed) = (status.mappings, max_map_count()?);
        let open = sockets.len().max(1) as u64;
        let per_connection = ((mapped.saturating_sub(before.mappings) + open / 2) / open).max(1);
        let room = allowed.saturating_sub(mapped + SPARE_MAPPINGS) / per_connection;
        ceiling.lower(sockets.len() + room as usize, || {
            format!(
                "vm.max_map_count is {allowed} and each WebSocket costs the server about {per_connection} memory mappings (two threads, each with a stack, a guard page and a signal stack), so about {} fit",
                report::number((sockets.len() as u64 + room) as f64)
            )
        });
    }
    drop(sockets);
    thread::sleep(SETTLE);
    let after = server.status()?;
    let stopped_by = failed.or(ceiling.why);

    let per_connection =
        |open: usize, status: &ProcStatus| (status.rss_kib as f64 - before.rss_kib as f64) / open as f64;
    let opening_times = Summary::of(to_ready);
    let mut detail = format!(
        "A fresh server with `WS_MAX_CONNECTIONS` set to fit; connections opened four at a time, each with a bearer header of one of {IDLE_USERS} users in no chat and past its `ready` frame, then {} s to settle before `VmRSS` is read from `/proc/<pid>/status`.\n\
         Descriptors: this process's open files limit is {descriptors} (raised to the hard limit), and the server's the same.\n\n\
         | server | VmRSS (MiB) | threads | memory mappings | per connection (KiB) |\n|---|---|---|---|---|\n| before any connection | {} | {} | {} | |\n",
        SETTLE.as_secs(),
        report::number(before.rss_kib as f64 / 1024.0),
        before.threads,
        before.mappings
    );
    for (open, status) in &readings {
        detail.push_str(&format!(
            "| {} idle WebSockets | {} | {} | {} | {} |\n",
            report::number(*open as f64),
            report::number(status.rss_kib as f64 / 1024.0),
            status.threads,
            status.mappings,
            report::number(per_connection(*open, status))
        ));
    }
    detail.push_str(&format!(
        "| after closing them | {} | {} | {} | |\n\nFrom the TCP connect to the `ready` frame, per connection: median {} ms, p99 {} ms, max {} ms.\n",
        report::number(after.rss_kib as f64 / 1024.0),
        after.threads,
        after.mappings,
        report::number(opening_times.median),
        report::number(opening_times.p99),
        report::number(opening_times.max)
    ));
    if let Some(reason) = &stopped_by {
        detail.push_str(&format!(
            "\nStopped at {} connections: {reason}.\n",
            report::number(readings.last().map_or(0, |(open, _)| *open) as f64)
        ));
    }
    let rows = STEPS
        .iter()
        .map(|&wanted| {
            let reading = readings.iter().rev().find(|(open, _)| *open <= wanted);
            let (open, kib) = reading.map_or((0, f64::NAN), |(open, status)| (*open, per_connection(*open, status)));
            let threads = reading
                .map_or(f64::NAN, |(open, status)| (status.threads as f64 - before.threads as f64) / *open as f64);
            let stopped = match &stopped_by {
                Some(why) if open < wanted => format!("stopped at {}: {why}; ", report::number(open as f64)),
                _ => String::new(),
            };
            Row {
                id: "P6",
                scenario: format!("RSS per idle WebSocket, {} connections", report::number(wanted as f64)),
                ours: format!("{} KiB per connection at {}", report::number(kib), report::number(open as f64)),
                baseline: "÷ N".into(),
                ratio: None,
                checks: vec![Check { what: "per connection", value: kib, target: Target::AtMost(32.0), unit: " KiB" }],
                limited_by: format!("{stopped}{} threads per connection", report::number(threads)),
            }
        })
        .collect();
    Ok(vec![Section { id: "P6", title: "Memory per idle WebSocket".into(), rows, detail }])
}

/// The kernel's limit on one process's memory mappings.
fn max_map_count() -> BenchResult<u64> {
    let path = "/proc/sys/vm/max_map_count";
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    text.trim().parse().map_err(|e| format!("{path}: {e}"))
}
