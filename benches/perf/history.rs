//! P2: the newest page (50 messages) of a chat of 10,000, each connection as its own member of that chat,
//! against pgbench running the SELECTs the server runs for it today (benches/pgbench/history_page.sql): the
//! session lookup, the membership check and the page. The ratio is what the HTTP layer, the JSON and the
//! round trips between them cost on top of the database's work.

use crate::pgbench;
use crate::probe::observe;
use crate::report::{self, Check, Row, Section};
use crate::setup;
use crate::stats;
use crate::versus::{versus, wrk_medians};
use crate::wrk::{self, PerClient};
use crate::{Bench, BenchResult};

const CLIENTS: [usize; 2] = [16, 64];
const HISTORY: i64 = 10_000;
/// pgbench's client N is the account `reader{N}`.
const READER_PREFIX: &str = "reader";

pub fn run(bench: &mut Bench) -> BenchResult<Vec<Section>> {
    let most = CLIENTS.into_iter().max().unwrap_or(0);
    let readers = bench.users(READER_PREFIX, most)?;
    let server = bench.main_server();
    let (rounds, secs) = (bench.options.rounds, bench.options.secs);
    let chat = setup::create_group(server.http, &readers[0], "history", &readers)?;
    setup::bulk_messages(&mut bench.cluster.connect()?, chat, readers[0].id, HISTORY)?;

    let path = format!("/api/chats/{chat}/messages");
    let lines: Vec<(String, String)> = readers.iter().map(|reader| (reader.token.clone(), path.clone())).collect();
    let clients_file = wrk::clients_file(&bench.scratch, "history.clients", &lines)?;
    let script = bench.repo.join("benches/wrk/per_client.lua");
    let selects = bench.repo.join("benches/pgbench/history_page.sql");
    let variables = [
        ("reader_prefix", READER_PREFIX.to_string()),
        ("before", i64::MAX.to_string()),
        ("page_rows", "51".to_string()),
    ];
    let subjects = bench.subjects(&[server.pid], "wrk")?;
    let pgbench_subjects = bench.subjects(&[], "pgbench")?;
    let mut rows = Vec::new();
    let mut detail = format!(
        "wrk: `GET {path}` (the newest 50 of {} messages, written with SQL before the run), one wrk thread per connection, connection N as the member `reader{{N}}` with its own token, {secs} s per round.\n\
         Baseline: pgbench `-M prepared`, as many clients, client N as `reader{{N}}`: the session lookup, the membership check and the page of `store::list_messages_before` (`benches/pgbench/history_page.sql`).\n\
         Target: the server's requests per second at least 0.8 of pgbench's transactions per second.\n\n",
        report::number(HISTORY as f64)
    );
    for clients in CLIENTS {
        let load = wrk::Load {
            addr: server.http,
            path: "/",
            connections: clients,
            secs,
            per_client: Some(PerClient { script: &script, clients: &clients_file, method: "GET", body: None }),
            header: None,
        };
        let measured = versus(
            rounds,
            || observe(&subjects, || wrk::run(&load)),
            || {
                let load = pgbench::Load { script: &selects, clients, secs, variables: &variables };
                observe(&pgbench_subjects, || pgbench::run(&bench.cluster, &load))
            },
            |ours| ours.requests_per_sec,
            |selects| selects.tps,
        )?;
        let baseline_tps = stats::median(&measured.baseline.iter().map(|b| b.tps).collect::<Vec<_>>());
        detail.push_str(&format!("{clients} clients:\n\n{}\n", measured.compared.detail));
        rows.push(Row {
            id: "P2",
            scenario: format!("newest 50 of {} messages, {clients} clients", report::number(HISTORY as f64)),
            ours: wrk_medians(&measured.ours),
            baseline: format!("pgbench, the 3 SELECTs: {} tps", report::number(baseline_tps)),
            ratio: Some(measured.compared.ratio),
            checks: vec![Check::ratio_at_least(measured.compared.ratio.median, 0.8)],
            limited_by: measured.compared.limited_by,
        });
    }
    Ok(vec![Section { id: "P2", title: "History page against its SELECTs".into(), rows, detail }])
}
