//! P4, P5 and P10: delivery of a message to the WebSockets of a chat's members.
//!
//! P4: one chat of 1,000 members, each connected, a sender at 10 messages per second; the time from just
//! before each `POST` (the commit happens inside it) to the `message.created` frame at every member, against
//! the same in a chat whose only member is the sender.
//! P5: the same 1,000 connections, with senders kept just ahead of delivery (at most `WINDOW` messages not yet
//! delivered everywhere), so the send rate settles at the highest the fan-out sustains without any connection
//! falling behind; against a bare loop in this process writing one pre-encoded frame to 1,000 loopback sockets
//! under the same window, read by the same readers.
//! P10: 200 members with every other one on a second server process, against 200 members on one process.

use std::cell::Cell;
use std::collections::HashSet;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::Role;
use tungstenite::WebSocket;

use crate::http::Conn;
use crate::probe::{observe, Usage};
use crate::report::{self, Check, Round, Row, Section, Target};
use crate::setup::{self, User};
use crate::stats::{self, interleave, Summary};
use crate::ws::{self, Readers};
use crate::{Bench, BenchResult};

/// P4's and P5's chat, the sender included.
const MEMBERS: usize = 1000;
/// P10's chats, the sender included.
const SPLIT_MEMBERS: usize = 200;
/// The latency scenarios' send rate: low enough that each message is delivered before the next.
const SENDS_PER_SEC: u64 = 10;
/// P5: messages sent but not yet delivered to every member, at most; far below `WS_QUEUE` (1,024 frames).
const WINDOW: u64 = 16;
/// P5: senders, each with its own keep-alive connection, so the send rate is not held to one round trip.
const SENDERS: usize = 4;
/// P5: sending before the count starts, so that the pipeline is full when it does.
const WARM_UP: Duration = Duration::from_millis(500);
/// Threads reading the members' sockets (ws.rs); two cores, two readers.
const READER_THREADS: usize = 2;
/// Threads opening connections at once.
const CONNECTING_THREADS: usize = 8;
/// How long deliveries may still arrive after the last send.
const DELIVERY_GRACE: Duration = Duration::from_secs(10);
/// Time for the presence frames of a batch of new connections to pass before a measurement.
const SETTLE: Duration = Duration::from_millis(500);

pub fn run(bench: &mut Bench) -> BenchResult<Vec<Section>> {
    let mut sections = Vec::new();
    let member_count = report::number(MEMBERS as f64);
    // Each latency round tags its messages with a number of its own.
    let tags = Cell::new(0);
    if bench.options.runs("P4") || bench.options.runs("P5") {
        let members = bench.users("member", MEMBERS)?;
        let server = bench.main_server();
        let big = setup::create_group(server.http, &members[0], "fan-out", &members)?;
        let alone = setup::create_group(server.http, &members[0], "alone", &[])?;
        let targets: Vec<(SocketAddr, &str)> = members.iter().map(|m| (server.ws, m.token.as_str())).collect();
        let connected = Instant::now();
        let sockets = ws::connect_many(&targets, CONNECTING_THREADS)?.into_iter().map(|(socket, _)| socket).collect();
        eprintln!("bench: {MEMBERS} members connected in {:.1?}", connected.elapsed());
        let readers = Readers::start(sockets, READER_THREADS)?;
        thread::sleep(SETTLE);
        let subjects = bench.subjects(&[server.pid], "bench")?;
        let secs = bench.options.secs;

        if bench.options.runs("P4") {
            let pairs = interleave(
                bench.options.rounds,
                |_| observe(&subjects, || latency_round(server.http, &members[0], big, &tags, secs, &readers, MEMBERS)),
                |_| observe(&subjects, || latency_round(server.http, &members[0], alone, &tags, secs, &readers, 1)),
            )?;
            let spec = LatencyReport {
                id: "P4",
                title: "Fan-out latency to 1,000 members",
                scenario: "fan-out, 1,000 members, p99 from before the POST to each frame",
                method: format!(
                    "One group of {member_count} members, each with a WebSocket (bearer header) to the server, read by {READER_THREADS} epoll threads here; the first member sends {SENDS_PER_SEC} messages per second over one keep-alive connection for {secs} s per round. Each figure runs from just before a `POST` (the commit is inside it) to a member's `message.created` frame, over every (message, member) pair, the sender's own connection included. Baseline: the same sender into a group of which it is the only member, with the same {member_count} connections open.\n\
                     Targets: the p99 at most 10 times the one-member chat's, and at most 25 ms.\n\n"
                ),
                ours_name: "1,000 members",
                baseline_name: "1 member",
                ratio_at_most: 10.0,
                ceiling_ms: Some(25.0),
            };
            sections.push(latency_section(spec, pairs));
        }
        if bench.options.runs("P5") {
            let senders = &members[..SENDERS];
            let baseline = BareLoop::open(MEMBERS)?;
            let bare_subjects = bench.subjects(&[std::process::id()], "bench")?;
            let pairs = interleave(
                bench.options.rounds,
                |_| observe(&subjects, || sustained_round(server.http, senders, big, secs, &readers)),
                |_| {
                    let sample = readers.sample().ok_or("no message.created frame was seen to copy")?;
                    observe(&bare_subjects, || baseline.round(sample.as_bytes(), secs))
                },
            )?;
            sections.push(throughput_section(pairs, secs));
        }
    }
    if bench.options.runs("P10") {
        let members = bench.users("member", 2 * SPLIT_MEMBERS)?;
        let (one_process, two_processes) = members.split_at(SPLIT_MEMBERS);
        let server = bench.main_server();
        let second = bench.second_server()?;
        let one = setup::create_group(server.http, &one_process[0], "one process", one_process)?;
        let split = setup::create_group(server.http, &two_processes[0], "two processes", two_processes)?;
        let mut targets: Vec<(SocketAddr, &str)> = one_process.iter().map(|m| (server.ws, m.token.as_str())).collect();
        let alternate = |i: usize| if i.is_multiple_of(2) { server.ws } else { second.ws };
        targets.extend(two_processes.iter().enumerate().map(|(i, m)| (alternate(i), m.token.as_str())));
        let sockets = ws::connect_many(&targets, CONNECTING_THREADS)?.into_iter().map(|(socket, _)| socket).collect();
        let readers = Readers::start(sockets, READER_THREADS)?;
        thread::sleep(SETTLE);
        let subjects = bench.subjects(&[server.pid, second.pid], "bench")?;
        let secs = bench.options.secs;
        let (sender_split, sender_one) = (&two_processes[0], &one_process[0]);
        let pairs = interleave(
            bench.options.rounds,
            |_| {
                observe(&subjects, || {
                    latency_round(server.http, sender_split, split, &tags, secs, &readers, SPLIT_MEMBERS)
                })
            },
            |_| {
                observe(&subjects, || latency_round(server.http, sender_one, one, &tags, secs, &readers, SPLIT_MEMBERS))
            },
        )?;
        let spec = LatencyReport {
            id: "P10",
            title: "Fan-out split over two processes",
            scenario: "fan-out, 200 members over two processes, p99 from before the POST to each frame",
            method: format!(
                "Two groups of {SPLIT_MEMBERS} members each, every member with a WebSocket: in one, all on the server the messages are sent through; in the other, every other member on a second server process on the same database, which hears of each message by NOTIFY and reads it from the table. {SENDS_PER_SEC} messages per second for {secs} s per round, as in P4, into each group in turn.\n\
                 Target: the split group's p99 at most twice the one-process group's.\n\n"
            ),
            ours_name: "split over two processes",
            baseline_name: "one process",
            ratio_at_most: 2.0,
            ceiling_ms: None,
        };
        sections.push(latency_section(spec, pairs));
    }
    Ok(sections)
}

/// What the members received in one latency round.
struct Latency {
    /// Milliseconds from just before each `POST` to each member's frame.
    from_send: Summary,
    /// Milliseconds per `POST`, request to response.
    round_trip: Summary,
    expected: usize,
    /// Frames that came a second time to the same connection.
    duplicates: usize,
    ended: Vec<String>,
}

impl Latency {
    fn describe(&self) -> String {
        let missing = self.expected - self.from_send.count;
        let ended =
            if self.ended.is_empty() { String::new() } else { format!(", {} connections ended", self.ended.len()) };
        format!(
            "p99 {} ms, median {} ms, max {} ms over {} deliveries ({missing} missing, {} duplicates{ended}); POST p99 {} ms",
            report::number(self.from_send.p99),
            report::number(self.from_send.median),
            report::number(self.from_send.max),
            self.from_send.count,
            self.duplicates,
            report::number(self.round_trip.p99)
        )
    }
}

/// Sends `SENDS_PER_SEC` messages a second for `secs` into `chat`, each tagged with a new round, and collects
/// every member's frame for them (`members` expected per message).
fn latency_round(
    http: SocketAddr,
    sender: &User,
    chat: i64,
    tags: &Cell<usize>,
    secs: u64,
    readers: &Readers,
    members: usize,
) -> BenchResult<Latency> {
    let tag = tags.get();
    tags.set(tag + 1);
    let count = (secs * SENDS_PER_SEC) as usize;
    readers.take_deliveries();
    readers.set_recording(true);
    let delivered_before = readers.delivered();
    let mut conn = Conn::open(http)?;
    let path = format!("/api/chats/{chat}/messages");
    let started = Instant::now();
    let mut sent = Vec::with_capacity(count);
    for index in 0..count {
        let due = started + Duration::from_millis(index as u64 * 1000 / SENDS_PER_SEC);
        thread::sleep(due.saturating_duration_since(Instant::now()));
        let body = json!({ "content": format!("fan-out message {index}"), "client_id": ws::tag(tag, index) });
        let before = Instant::now();
        conn.call("POST", &path, Some(&sender.token), Some(&body), 201)?;
        sent.push((before, before.elapsed()));
    }
    readers.wait_for(delivered_before + (count * members) as u64, DELIVERY_GRACE);
    readers.set_recording(false);
    let mut seen = HashSet::new();
    let mut duplicates = 0;
    let mut from_send = Vec::with_capacity(count * members);
    for delivery in readers.take_deliveries() {
        if delivery.round != tag || delivery.index >= count {
            continue;
        }
        if !seen.insert((delivery.conn, delivery.index)) {
            duplicates += 1;
            continue;
        }
        from_send.push(delivery.at.duration_since(sent[delivery.index].0).as_secs_f64() * 1000.0);
    }
    Ok(Latency {
        from_send: Summary::of(from_send),
        duplicates,
        round_trip: Summary::of(sent.iter().map(|(_, took)| took.as_secs_f64() * 1000.0).collect()),
        expected: count * members,
        ended: readers.ended(),
    })
}

/// How a latency comparison reads in the report.
struct LatencyReport {
    id: &'static str,
    title: &'static str,
    /// The table's name for it.
    scenario: &'static str,
    /// How the scenario was measured, as markdown.
    method: String,
    ours_name: &'static str,
    baseline_name: &'static str,
    /// The bound on ours' p99 ÷ the baseline's.
    ratio_at_most: f64,
    /// The bound on ours' p99 itself, if any.
    ceiling_ms: Option<f64>,
}

/// The row and detail of a latency comparison: the rounds' p99s, their ratio, and ours against its ceiling.
fn latency_section(spec: LatencyReport, pairs: Vec<((Latency, Usage), (Latency, Usage))>) -> Section {
    let rounds: Vec<Round> = pairs
        .iter()
        .map(|((ours, ours_usage), (base, baseline_usage))| Round {
            ours: ours.from_send.p99,
            ours_text: ours.describe(),
            ours_usage: ours_usage.clone(),
            baseline: base.from_send.p99,
            baseline_text: base.describe(),
            baseline_usage: baseline_usage.clone(),
        })
        .collect();
    let compared = report::compare(&rounds);
    let median_p99 = |ours: bool| {
        stats::median(
            &pairs
                .iter()
                .map(|((o, _), (b, _))| if ours { o.from_send.p99 } else { b.from_send.p99 })
                .collect::<Vec<_>>(),
        )
    };
    let mut checks = vec![Check {
        what: "p99 ratio",
        value: compared.ratio.median,
        target: Target::AtMost(spec.ratio_at_most),
        unit: "×",
    }];
    if let Some(ceiling) = spec.ceiling_ms {
        checks.push(Check { what: "p99", value: median_p99(true), target: Target::AtMost(ceiling), unit: " ms" });
    }
    // How much of ours' p99 the send itself takes: the commit, before any frame can go out.
    let post_p99 = stats::median(&pairs.iter().map(|((o, _), _)| o.round_trip.p99).collect::<Vec<_>>());
    let missing: usize =
        pairs.iter().map(|((o, _), (b, _))| o.expected - o.from_send.count + b.expected - b.from_send.count).sum();
    let mut detail = spec.method;
    detail.push_str(&compared.detail);
    if missing > 0 {
        detail.push_str(&format!("\n{missing} deliveries never arrived within {DELIVERY_GRACE:?} of the last send.\n"));
    }
    Section {
        id: spec.id,
        title: spec.title.into(),
        rows: vec![Row {
            id: spec.id,
            scenario: spec.scenario.into(),
            ours: format!("{}: p99 {} ms", spec.ours_name, report::number(median_p99(true))),
            baseline: format!("{}: p99 {} ms", spec.baseline_name, report::number(median_p99(false))),
            ratio: Some(compared.ratio),
            checks,
            limited_by: format!("POST p99 {} ms of it; {}", report::number(post_p99), compared.limited_by),
        }],
        detail,
    }
}

/// Deliveries per second in one round, and whether every delivery arrived.
struct Sustained {
    per_sec: f64,
    /// Frames written, or messages sent times members.
    expected: u64,
    missing: u64,
    ended: Vec<String>,
}

impl Sustained {
    fn describe(&self) -> String {
        let ended =
            if self.ended.is_empty() { String::new() } else { format!(", {} connections ended", self.ended.len()) };
        format!(
            "{} deliveries/s ({} messages/s to all {}), {} deliveries, {} missing{ended}",
            report::number(self.per_sec),
            report::number(self.per_sec / MEMBERS as f64),
            report::number(MEMBERS as f64),
            report::number(self.expected as f64),
            self.missing
        )
    }
}

/// Counts deliveries for `secs` after `WARM_UP` while `senders` threads call `send_one(sender, index)`, each
/// call making `per_send` deliveries, whenever fewer than `WINDOW` messages' worth of deliveries are on their
/// way; then stops sending and waits for the rest to arrive.
fn windowed_round(
    readers: &Readers,
    per_send: u64,
    secs: u64,
    senders: usize,
    send_one: impl Fn(usize, u64) -> BenchResult<()> + Sync,
) -> BenchResult<Sustained> {
    let delivered_before = readers.delivered();
    let (sent, stop) = (AtomicU64::new(0), AtomicBool::new(false));
    let in_flight = |sent: u64| (sent * per_send).saturating_sub(readers.delivered() - delivered_before);
    let (per_sec, failures) = thread::scope(|scope| {
        let workers: Vec<_> = (0..senders)
            .map(|sender| {
                let (sent, stop, send_one) = (&sent, &stop, &send_one);
                scope.spawn(move || -> BenchResult<()> {
                    while !stop.load(Ordering::Acquire) {
                        if in_flight(sent.load(Ordering::Acquire)) >= WINDOW * MEMBERS as u64 {
                            thread::sleep(Duration::from_micros(100));
                            continue;
                        }
                        let index = sent.fetch_add(1, Ordering::AcqRel);
                        send_one(sender, index)?;
                    }
                    Ok(())
                })
            })
            .collect();
        thread::sleep(WARM_UP);
        let (count_started, counted_from) = (Instant::now(), readers.delivered());
        thread::sleep(Duration::from_secs(secs));
        let per_sec = (readers.delivered() - counted_from) as f64 / count_started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Release);
        let failures: Vec<String> = workers.into_iter().filter_map(|w| w.join().ok().and_then(Result::err)).collect();
        (per_sec, failures)
    });
    if let Some(failure) = failures.first() {
        return Err(failure.clone());
    }
    let sent = sent.load(Ordering::Acquire);
    readers.wait_for(delivered_before + sent * per_send, DELIVERY_GRACE);
    Ok(Sustained { per_sec, expected: sent * per_send, missing: in_flight(sent), ended: readers.ended() })
}

/// P5's ours: `SENDERS` keep-alive connections sending into the chat of `MEMBERS` members.
fn sustained_round(
    http: SocketAddr,
    senders: &[User],
    chat: i64,
    secs: u64,
    readers: &Readers,
) -> BenchResult<Sustained> {
    let conns: Vec<std::sync::Mutex<Conn>> =
        senders.iter().map(|_| Conn::open(http).map(std::sync::Mutex::new)).collect::<BenchResult<_>>()?;
    let path = format!("/api/chats/{chat}/messages");
    windowed_round(readers, MEMBERS as u64, secs, senders.len(), |sender, index| {
        let body = json!({ "content": format!("sustained message {index}") });
        let mut conn = conns[sender].lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        conn.call("POST", &path, Some(&senders[sender].token), Some(&body), 201).map(drop)
    })
}

/// P5's baseline: loopback TCP connections this process writes frames to itself, read by the same readers.
struct BareLoop {
    /// The accepted ends, in one share per CPU: each share is written to in turn by a loop of its own, as the
    /// server's writes may use every CPU too.
    shares: Vec<Vec<TcpStream>>,
    readers: Readers,
}

impl BareLoop {
    fn open(connections: usize) -> BenchResult<BareLoop> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bare loop: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let loops = thread::available_parallelism().map_or(1, |n| n.get());
        let mut shares: Vec<Vec<TcpStream>> = (0..loops).map(|_| Vec::new()).collect();
        let mut sockets = Vec::with_capacity(connections);
        for _ in 0..connections {
            let client = TcpStream::connect(addr).map_err(|e| format!("bare loop connect: {e}"))?;
            let (accepted, _) = listener.accept().map_err(|e| format!("bare loop accept: {e}"))?;
            for stream in [&client, &accepted] {
                stream.set_nodelay(true).map_err(|e| e.to_string())?;
            }
            shares[sockets.len() % loops].push(accepted);
            sockets.push(WebSocket::from_raw_socket(client, Role::Client, None));
        }
        Ok(BareLoop { shares, readers: Readers::start(sockets, READER_THREADS)? })
    }

    /// Writes `text` as one WebSocket text frame to every connection, each loop over its share in turn, as
    /// fast as the window allows.
    fn round(&self, text: &[u8], secs: u64) -> BenchResult<Sustained> {
        let mut frame = Vec::new();
        Frame::message(text.to_vec(), OpCode::Data(Data::Text), true)
            .format(&mut frame)
            .map_err(|e| format!("encoding the frame: {e}"))?;
        let share = self.shares[0].len() as u64;
        if self.shares.iter().any(|other| other.len() as u64 != share) {
            return Err(format!("{MEMBERS} connections do not split evenly over {} loops", self.shares.len()));
        }
        windowed_round(&self.readers, share, secs, self.shares.len(), |loop_index, _| {
            for mut writer in &self.shares[loop_index] {
                writer.write_all(&frame).map_err(|e| format!("bare loop write: {e}"))?;
            }
            Ok(())
        })
    }
}

fn throughput_section(pairs: Vec<((Sustained, Usage), (Sustained, Usage))>, secs: u64) -> Section {
    let rounds: Vec<Round> = pairs
        .iter()
        .map(|((ours, ours_usage), (base, baseline_usage))| Round {
            ours: ours.per_sec,
            ours_text: ours.describe(),
            ours_usage: ours_usage.clone(),
            baseline: base.per_sec,
            baseline_text: base.describe(),
            baseline_usage: baseline_usage.clone(),
        })
        .collect();
    let compared = report::compare(&rounds);
    let median = |ours: bool| {
        stats::median(
            &pairs.iter().map(|((o, _), (b, _))| if ours { o.per_sec } else { b.per_sec }).collect::<Vec<_>>(),
        )
    };
    let member_count = report::number(MEMBERS as f64);
    let troubles: Vec<String> = pairs
        .iter()
        .filter(|((o, _), _)| o.missing > 0 || !o.ended.is_empty())
        .map(|((o, _), _)| format!("{} deliveries missing; ended: {}", o.missing, o.ended.join("; ")))
        .collect();
    let mut detail = format!(
        "P4's {member_count} connections and readers. Ours: {SENDERS} senders (the first members, each on its own keep-alive connection) post into the {member_count}-member group, each waiting while {WINDOW} messages are not yet delivered to every member, so the send rate settles at the highest the fan-out sustains (no connection falls behind: the queues hold at most {WINDOW} frames). Deliveries are counted for {secs} s after {WARM_UP:?} of sending.\n\
         Baseline: a copy of a `message.created` frame the server sent, pre-encoded, written to {member_count} loopback TCP connections by bare loops in this process, one per CPU, each over its share of the connections in turn, under the same window, read by the same readers.\n\
         Targets: at least 0.5 of the bare loop's deliveries per second, and at least 50,000.\n\n{}",
        compared.detail
    );
    if !troubles.is_empty() {
        detail.push_str(&format!("\nNot sustained: {}\n", troubles.join(" / ")));
    }
    Section {
        id: "P5",
        title: "Deliveries per second into the 1,000-member chat".into(),
        rows: vec![Row {
            id: "P5",
            scenario: "fan-out throughput, 1,000 members, highest sustained send rate".into(),
            ours: format!("{} deliveries/s", report::number(median(true))),
            baseline: format!("bare loop: {} deliveries/s", report::number(median(false))),
            ratio: Some(compared.ratio),
            checks: vec![
                Check { what: "ratio", value: compared.ratio.median, target: Target::AtLeast(0.5), unit: "" },
                Check { what: "deliveries/s", value: median(true), target: Target::AtLeast(50_000.0), unit: "" },
            ],
            limited_by: compared.limited_by,
        }],
        detail,
    }
}
