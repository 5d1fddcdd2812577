//! P9: `GET /api/chats` for a member of 200 chats, one of which holds 1,000,000 messages the member has not
//! read, against the same list for a member of the same 200 chats who has read everything. The list carries
//! each chat's `unread_count`; the target asks for an exact count whose cost does not grow with the backlog.
//!
//! The chats are made through the API; the million messages are written with SQL (setup.rs), then vacuumed
//! and analyzed as autovacuum would have done by the time such a backlog built up.

use std::time::Instant;

use postgres::Client;

use crate::http::Conn;
use crate::probe::observe;
use crate::report::{self, Check, Row, Section, Target};
use crate::setup::{self, User};
use crate::stats;
use crate::versus::{versus, wrk_medians};
use crate::{wrk, Bench, BenchResult};

const CHATS: usize = 200;
const BACKLOG: i64 = 1_000_000;

pub fn run(bench: &mut Bench) -> BenchResult<Vec<Section>> {
    let users = bench.users("unread", 3)?;
    let (behind, caught_up, sender) = (&users[0], &users[1], &users[2]);
    let server = bench.main_server();
    let (rounds, secs) = (bench.options.rounds, bench.options.secs);
    let setup_started = Instant::now();
    let mut chats = Vec::with_capacity(CHATS);
    for n in 0..CHATS {
        chats.push(setup::create_group(
            server.http,
            behind,
            &format!("unread-{n}"),
            &[caught_up.clone(), sender.clone()],
        )?);
    }
    let mut db = bench.cluster.connect()?;
    setup::bulk_messages(&mut db, chats[0], sender.id, BACKLOG)?;
    mark_everything_read(&mut db, caught_up)?;
    let unread = unread_counts(server.http, behind)?;
    if unread != [BACKLOG] {
        return Err(format!("the member who is behind should have one chat with {BACKLOG} unread, has {unread:?}"));
    }
    if !unread_counts(server.http, caught_up)?.is_empty() {
        return Err("the member who has read everything has unread messages".into());
    }
    eprintln!("bench: P9's {CHATS} chats and {BACKLOG} messages written in {:.1?}", setup_started.elapsed());

    let list = |user: &User| wrk::Load {
        addr: server.http,
        path: "/api/chats",
        connections: 1,
        secs,
        per_client: None,
        header: Some(format!("Authorization: Bearer {}", user.token)),
    };
    let subjects = bench.subjects(&[server.pid], "wrk")?;
    let measured = versus(
        rounds,
        || observe(&subjects, || wrk::run(&list(behind))),
        || observe(&subjects, || wrk::run(&list(caught_up))),
        |ours| ours.p50_ms,
        |read| read.p50_ms,
    )?;
    let p99_ratios: Vec<f64> = measured.ours.iter().zip(&measured.baseline).map(|(o, b)| o.p99_ms / b.p99_ms).collect();
    let detail = format!(
        "wrk, one connection, `GET /api/chats` for {secs} s per round: ours as `unread0`, a member of {CHATS} groups (each of 3 members) who has read none of the {} messages of one of them; baseline as `unread1`, a member of the same groups who has read everything. The ratio is the median latency's (p50); the p99 ratio was {}.\n\
         Target: at most 1.5 times the latency of the list with nothing unread.\n\n{}",
        report::number(BACKLOG as f64),
        report::number(stats::median(&p99_ratios)),
        measured.compared.detail
    );
    Ok(vec![Section {
        id: "P9",
        title: "The chat list with a million unread messages".into(),
        rows: vec![Row {
            id: "P9",
            scenario: format!("GET /api/chats, {CHATS} chats, one with {} unread", report::number(BACKLOG as f64)),
            ours: wrk_medians(&measured.ours),
            baseline: format!("nothing unread: {}", wrk_medians(&measured.baseline)),
            ratio: Some(measured.compared.ratio),
            checks: vec![Check {
                what: "p50 ratio",
                value: measured.compared.ratio.median,
                target: Target::AtMost(1.5),
                unit: "×",
            }],
            limited_by: measured.compared.limited_by,
        }],
        detail,
    }])
}

/// Moves the user's read marker to the end of every chat of theirs, as `POST /api/chats/{id}/read` would.
fn mark_everything_read(db: &mut Client, user: &User) -> BenchResult<()> {
    db.execute(
        "UPDATE chat_members m SET last_read_seq = c.last_seq FROM chats c WHERE c.id = m.chat_id AND m.user_id = $1",
        &[&user.id],
    )
    .map(drop)
    .map_err(|e| format!("marking {}'s chats read: {}", user.username, setup::describe(&e)))
}

/// The user's non-zero `unread_count`s, as `GET /api/chats` gives them.
fn unread_counts(http: std::net::SocketAddr, user: &User) -> BenchResult<Vec<i64>> {
    let list = Conn::open(http)?.call("GET", "/api/chats", Some(&user.token), None, 200)?;
    let chats = list["chats"].as_array().ok_or("GET /api/chats answered no chats")?;
    if chats.len() != CHATS {
        return Err(format!("{} is in {} chats, not {CHATS}", user.username, chats.len()));
    }
    Ok(chats.iter().filter_map(|chat| chat["unread_count"].as_i64()).filter(|&count| count > 0).collect())
}
