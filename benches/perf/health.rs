//! P3: `GET /healthz`, the cheapest request the server has, against a bare tiny_http hello-world: the cost of
//! everything the server adds to the HTTP layer (routing, the request id, logging's checks, the worker loop).
//!
//! The hello-world runs in this process on the same vendored, patched tiny_http with the same limits and the
//! same number of worker threads as the server, and answers the same body; this process does nothing else
//! meanwhile. wrk drives both with the same connections.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::probe::observe;
use crate::report::{Check, Row, Section, Target};
use crate::stats;
use crate::versus::{versus, wrk_medians};
use crate::{wrk, Bench, BenchResult};

const CLIENTS: [usize; 3] = [1, 16, 64];
const BODY: &[u8] = br#"{"status":"ok"}"#;

pub fn run(bench: &mut Bench) -> BenchResult<Vec<Section>> {
    let workers = bench.workers()?;
    let hello = HelloWorld::start(workers)?;
    let server = bench.main_server();
    let subjects = bench.subjects(&[server.pid], "wrk")?;
    let hello_subjects = bench.subjects(&[std::process::id()], "wrk")?;
    let (rounds, secs) = (bench.options.rounds, bench.options.secs);
    let mut rows = Vec::new();
    let mut detail = format!(
        "wrk with keep-alive connections for {secs} s per round, `GET /healthz` on the server against the same request on a hello-world of {workers} threads that answers `{}` with `Content-Type: application/json`.\n\
         Targets: requests per second at least 0.95 of the hello-world's, and a p99 latency at most 1.2 times its.\n\n",
        String::from_utf8_lossy(BODY)
    );
    for clients in CLIENTS {
        let load =
            |addr| wrk::Load { addr, path: "/healthz", connections: clients, secs, per_client: None, header: None };
        let measured = versus(
            rounds,
            || observe(&subjects, || wrk::run(&load(server.http))),
            || observe(&hello_subjects, || wrk::run(&load(hello.addr))),
            |ours| ours.requests_per_sec,
            |hello| hello.requests_per_sec,
        )?;
        let p99_ratios: Vec<f64> =
            measured.ours.iter().zip(&measured.baseline).map(|(o, b)| o.p99_ms / b.p99_ms).collect();
        let plural = if clients == 1 { "" } else { "s" };
        detail.push_str(&format!("{clients} client{plural}:\n\n{}\n", measured.compared.detail));
        rows.push(Row {
            id: "P3",
            scenario: format!("GET /healthz, {clients} client{plural}"),
            ours: wrk_medians(&measured.ours),
            baseline: format!("hello-world: {}", wrk_medians(&measured.baseline)),
            ratio: Some(measured.compared.ratio),
            checks: vec![
                Check { what: "ratio", value: measured.compared.ratio.median, target: Target::AtLeast(0.95), unit: "" },
                Check { what: "p99 ratio", value: stats::median(&p99_ratios), target: Target::AtMost(1.2), unit: "×" },
            ],
            limited_by: measured.compared.limited_by,
        });
    }
    Ok(vec![Section { id: "P3", title: "GET /healthz against a bare tiny_http hello-world".into(), rows, detail }])
}

/// A bare tiny_http server: its worker threads answer every request with `BODY`.
struct HelloWorld {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl HelloWorld {
    fn start(workers: usize) -> BenchResult<HelloWorld> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot bind the hello-world: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let server = tiny_http::Server::from_listener_with_limits(listener, None, tiny_http::Limits::default())
            .map_err(|e| format!("cannot start the hello-world: {e}"))?;
        let server = Arc::new(server);
        let stop = Arc::new(AtomicBool::new(false));
        let content_type = tiny_http::Header::from_bytes("Content-Type", "application/json").expect("an ASCII header");
        let threads = (0..workers)
            .map(|_| {
                let (server, stop, content_type) = (server.clone(), stop.clone(), content_type.clone());
                // The same wait as the server's workers (`RECV_TICK`), so both notice a stop alike.
                thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok(Some(request)) = server.recv_timeout(Duration::from_millis(250)) {
                            let response = tiny_http::Response::from_data(BODY).with_header(content_type.clone());
                            let _ = request.respond(response);
                        }
                    }
                })
            })
            .collect();
        Ok(HelloWorld { addr, stop, threads })
    }
}

impl Drop for HelloWorld {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
