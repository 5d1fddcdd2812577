//! P2: the newest page (50 messages) of a chat of 10,000, each connection as its own member of that chat,
//! against pgbench running the SELECTs the server runs for it today (benches/pgbench/history_page.sql): the
//! session lookup, the membership check and the page. The ratio is what the HTTP layer, the JSON and the
//! round trips between them cost on top of the database's work.
//!
//! P11: the same page of a second chat of 10,000 messages, each carrying reactions, against P2's chat without
//! any, 16 clients each: what reading reactions with every message costs history.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::pgbench;
use crate::probe::observe;
use crate::report::{self, Check, Row, Section};
use crate::setup::{self, User};
use crate::stats;
use crate::versus::{versus, wrk_medians};
use crate::wrk::{self, PerClient};
use crate::{Bench, BenchResult};

const CLIENTS: [usize; 2] = [16, 64];
/// P11's clients.
const REACTION_CLIENTS: usize = 16;
const HISTORY: i64 = 10_000;
/// pgbench's client N is the account `reader{N}`.
const READER_PREFIX: &str = "reader";

pub fn run(bench: &mut Bench) -> BenchResult<Vec<Section>> {
    let mut sections = Vec::new();
    if bench.options.runs("P2") {
        sections.push(against_selects(bench)?);
    }
    if bench.options.runs("P11") {
        sections.push(with_reactions(bench)?);
    }
    Ok(sections)
}

fn against_selects(bench: &mut Bench) -> BenchResult<Section> {
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
         Baseline: pgbench `-M prepared`, as many clients, client N as `reader{{N}}`: the session lookup, the membership check and the page with the columns of `store::list_messages_as_member` (`benches/pgbench/history_page.sql`).\n\
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
    Ok(Section { id: "P2", title: "History page against its SELECTs".into(), rows, detail })
}

/// Every message of P11's chat carries these: three emoji from six of the readers.
fn reactions(readers: &[User]) -> serde_json::Value {
    let ids: Vec<i64> = readers.iter().take(6).map(|reader| reader.id).collect();
    serde_json::json!([
        { "emoji": "👍", "user_ids": &ids[..3] },
        { "emoji": "🎉", "user_ids": &ids[3..4] },
        { "emoji": "❤️", "user_ids": &ids[4..] },
    ])
}

fn with_reactions(bench: &mut Bench) -> BenchResult<Section> {
    let readers = bench.users(READER_PREFIX, REACTION_CLIENTS)?;
    let server = bench.main_server();
    let (rounds, secs) = (bench.options.rounds, bench.options.secs);
    let plain = setup::create_group(server.http, &readers[0], "no reactions", &readers)?;
    let reacted = setup::create_group(server.http, &readers[0], "reactions", &readers)?;
    let mut db = bench.cluster.connect()?;
    setup::bulk_messages(&mut db, plain, readers[0].id, HISTORY)?;
    setup::bulk_messages(&mut db, reacted, readers[0].id, HISTORY)?;
    let reactions = reactions(&readers);
    db.execute("UPDATE messages SET reactions = $2 WHERE chat_id = $1", &[&reacted, &reactions])
        .map_err(|e| format!("adding reactions: {}", setup::describe(&e)))?;
    db.batch_execute("VACUUM ANALYZE messages").map_err(|e| format!("vacuum: {}", setup::describe(&e)))?;

    let script = bench.repo.join("benches/wrk/per_client.lua");
    let load = |chat: i64, name: &str| -> BenchResult<(PathBuf, String)> {
        let path = format!("/api/chats/{chat}/messages");
        let lines: Vec<(String, String)> = readers.iter().map(|reader| (reader.token.clone(), path.clone())).collect();
        Ok((wrk::clients_file(&bench.scratch, name, &lines)?, path))
    };
    let (reacted_clients, reacted_path) = load(reacted, "reactions.clients")?;
    let (plain_clients, _) = load(plain, "plain.clients")?;
    fn page<'a>(addr: SocketAddr, script: &'a Path, clients: &'a Path, secs: u64) -> wrk::Load<'a> {
        let per_client = Some(PerClient { script, clients, method: "GET", body: None });
        wrk::Load { addr, path: "/", connections: REACTION_CLIENTS, secs, per_client, header: None }
    }
    let subjects = bench.subjects(&[server.pid], "wrk")?;
    let measured = versus(
        rounds,
        || observe(&subjects, || wrk::run(&page(server.http, &script, &reacted_clients, secs))),
        || observe(&subjects, || wrk::run(&page(server.http, &script, &plain_clients, secs))),
        |ours| ours.requests_per_sec,
        |plain| plain.requests_per_sec,
    )?;
    let detail = format!(
        "wrk: `GET {reacted_path}`, the newest 50 of {} messages each carrying three reactions of six members          (`{reactions}`, written with SQL before the run), {REACTION_CLIENTS} connections, connection N as `reader{{N}}`, {secs} s per round.\n\
         Baseline: the same page of another chat of as many messages without reactions, the same clients.\n\
         Target: at least 0.9 of the baseline's requests per second (history with reactions within 10%).\n\n{}",
        report::number(HISTORY as f64),
        measured.compared.detail
    );
    let row = Row {
        id: "P11",
        scenario: format!(
            "newest 50 of {} messages with reactions, {REACTION_CLIENTS} clients",
            report::number(HISTORY as f64)
        ),
        ours: wrk_medians(&measured.ours),
        baseline: format!("no reactions: {}", wrk_medians(&measured.baseline)),
        ratio: Some(measured.compared.ratio),
        checks: vec![Check::ratio_at_least(measured.compared.ratio.median, 0.9)],
        limited_by: measured.compared.limited_by,
    };
    Ok(Section { id: "P11", title: "History with reactions against history without".into(), rows: vec![row], detail })
}
