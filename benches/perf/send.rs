//! P1 and P7: sending messages over REST, each keep-alive connection as its own user into its own chat.
//!
//! P1 compares the server's sends with pgbench running only the send's insert statement
//! (benches/pgbench/send_insert.sql) from as many clients: the one statement a send cannot avoid, so the ratio
//! is what the HTTP layer, the session lookup and the rest cost on top of the commit. A message carries no
//! `client_id`, so the server does not look for an earlier retry.
//! P7 is P1 at 16 clients with the other member of each chat connected by WebSocket to a second server
//! process, which hears of each message by NOTIFY and reads it from the table, against the same sends with
//! nobody connected.

use std::time::Duration;

use serde_json::json;

use crate::pgbench;
use crate::probe::observe;
use crate::report::{self, Check, Row, Section};
use crate::setup::{self, User};
use crate::stats;
use crate::versus::{versus, wrk_medians};
use crate::wrk::{self, PerClient};
use crate::ws::{self, Readers};
use crate::{Bench, BenchResult, Endpoint};

const CLIENTS: [usize; 2] = [16, 64];
const P7_CLIENTS: usize = 16;
/// Chat N is titled `send-N`; pgbench's client N finds its chat by that title.
const TITLE_PREFIX: &str = "send-";
/// The text of every message sent, over HTTP and by pgbench alike.
const MESSAGE: &str = "a benchmark message, about as long as a line people type";
/// How long P7's listeners may take to receive the last sends after wrk stops.
const DELIVERY_GRACE: Duration = Duration::from_secs(5);

pub fn run(bench: &mut Bench) -> BenchResult<Vec<Section>> {
    let most = CLIENTS.into_iter().max().unwrap_or(P7_CLIENTS);
    let senders = bench.users("sender", most)?;
    let listeners = bench.users("listener", most)?;
    let server = bench.main_server();
    let (rounds, secs) = (bench.options.rounds, bench.options.secs);
    let mut lines = Vec::with_capacity(most);
    for (n, (sender, listener)) in senders.iter().zip(&listeners).enumerate() {
        let title = format!("{TITLE_PREFIX}{n}");
        let chat = setup::create_group(server.http, sender, &title, std::slice::from_ref(listener))?;
        lines.push((sender.token.clone(), format!("/api/chats/{chat}/messages")));
    }
    let clients_file = wrk::clients_file(&bench.scratch, "send.clients", &lines)?;
    let script = bench.repo.join("benches/wrk/per_client.lua");
    let body = json!({ "content": MESSAGE }).to_string();
    let sends = |connections| wrk::Load {
        addr: server.http,
        path: "/",
        connections,
        secs,
        per_client: Some(PerClient { script: &script, clients: &clients_file, method: "POST", body: Some(&body) }),
        header: None,
    };
    let subjects = bench.subjects(&[server.pid], "wrk")?;

    let mut sections = Vec::new();
    if bench.options.runs("P1") {
        let insert = bench.repo.join("benches/pgbench/send_insert.sql");
        let variables = [("title_prefix", TITLE_PREFIX.to_string()), ("content", MESSAGE.to_string())];
        let pgbench_subjects = bench.subjects(&[], "pgbench")?;
        let mut rows = Vec::new();
        let mut detail = format!(
            "wrk: `POST /api/chats/{{id}}/messages` with `{body}`, one wrk thread per connection, connection N as the account `sender{{N}}` into its own chat `send-{{N}}` (whose other member is not connected), {secs} s per round.\n\
             Baseline: pgbench `-M prepared`, as many clients, the insert statement of `store::insert_message` alone (`benches/pgbench/send_insert.sql`), client N into chat `send-{{N}}` as its owner.\n\
             Target: the server's requests per second at least 0.9 of pgbench's transactions per second.\n\n"
        );
        for clients in CLIENTS {
            let load = pgbench::Load { script: &insert, clients, secs, variables: &variables };
            let measured = versus(
                rounds,
                || observe(&subjects, || wrk::run(&sends(clients))),
                || observe(&pgbench_subjects, || pgbench::run(&bench.cluster, &load)),
                |ours| ours.requests_per_sec,
                |insert| insert.tps,
            )?;
            let baseline_tps = stats::median(&measured.baseline.iter().map(|b| b.tps).collect::<Vec<_>>());
            detail.push_str(&format!("{clients} clients:\n\n{}\n", measured.compared.detail));
            rows.push(Row {
                id: "P1",
                scenario: format!("send, {clients} clients, each into its own chat"),
                ours: wrk_medians(&measured.ours),
                baseline: format!("pgbench, the insert alone: {} tps", report::number(baseline_tps)),
                ratio: Some(measured.compared.ratio),
                checks: vec![Check::ratio_at_least(measured.compared.ratio.median, 0.9)],
                limited_by: measured.compared.limited_by,
            });
        }
        sections.push(Section { id: "P1", title: "Sending messages against the insert alone".into(), rows, detail });
    }

    if bench.options.runs("P7") {
        let second = bench.second_server()?;
        let listened = &listeners[..P7_CLIENTS];
        let subjects = bench.subjects(&[server.pid, second.pid], "wrk")?;
        let mut deliveries = Vec::new();
        let measured = versus(
            rounds,
            || {
                let readers = connect_listeners(second, listened)?;
                let (sent, usage) = observe(&subjects, || wrk::run(&sends(P7_CLIENTS)))?;
                readers.wait_for(sent.requests, DELIVERY_GRACE);
                deliveries.push((readers.delivered(), sent.requests, readers.ended()));
                Ok((sent, usage))
            },
            || observe(&subjects, || wrk::run(&sends(P7_CLIENTS))),
            |ours| ours.requests_per_sec,
            |alone| alone.requests_per_sec,
        )?;
        let mut detail = format!(
            "P1's load at {P7_CLIENTS} clients. Ours: the other member of each of the {P7_CLIENTS} chats (`listener{{N}}`) has a WebSocket on a second server process, connected before the round and closed after it, so every message also crosses to that process by NOTIFY, is read there from the table and is written to one socket. Baseline: the same sends with nobody connected.\n\
             Target: at least 0.9 of the baseline's requests per second.\n\n{}\n",
            measured.compared.detail
        );
        for (round, (frames, sent, ended)) in deliveries.iter().enumerate() {
            let ended =
                if ended.is_empty() { String::new() } else { format!("; connections ended: {}", ended.join("; ")) };
            detail.push_str(&format!(
                "- Round {}: {frames} `message.created` frames reached the listeners for {sent} sends{ended}\n",
                round + 1
            ));
        }
        sections.push(Section {
            id: "P7",
            title: "Sending with each chat's other member connected to another process".into(),
            rows: vec![Row {
                id: "P7",
                scenario: format!(
                    "send, {P7_CLIENTS} clients, each chat's other member on a WebSocket of a second process"
                ),
                ours: wrk_medians(&measured.ours),
                baseline: format!("nobody connected: {}", wrk_medians(&measured.baseline)),
                ratio: Some(measured.compared.ratio),
                checks: vec![Check::ratio_at_least(measured.compared.ratio.median, 0.9)],
                limited_by: measured.compared.limited_by,
            }],
            detail,
        });
    }
    Ok(sections)
}

/// Connects each listener to the second process, and reads what it gets until the readers are dropped.
fn connect_listeners(second: Endpoint, listeners: &[User]) -> BenchResult<Readers> {
    let targets: Vec<_> = listeners.iter().map(|user| (second.ws, user.token.as_str())).collect();
    let sockets = ws::connect_many(&targets, 4)?.into_iter().map(|(socket, _)| socket).collect();
    Readers::start(sockets, 1)
}
