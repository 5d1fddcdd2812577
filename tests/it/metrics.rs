//! `GET /metrics` (contract section 7): the whole exposition read by a strict
//! parser of the Prometheus text format 0.0.4 written here, and the counters
//! seen to move with real requests, WebSockets, events and database faults.
//!
//! Counters are compared with a scrape taken before the act, so what the
//! harness does elsewhere never matters; what the server counts after it has
//! answered (a frame written, a socket closed) is waited for with a deadline.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use crate::chats::{create_group, id_of};
use crate::messages::send;
use crate::realtime::{connect_ready, SOON};
use crate::support::{check_error, spawn_app, spawn_app_on, wait_for, TestApp};

/// How long a count that follows an answer may take to show.
const COUNTED: Duration = Duration::from_secs(10);

/// One sample line: `name{labels} value`.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition; `parse` has checked every rule of the format.
#[derive(Debug)]
struct Scrape {
    samples: Vec<Sample>,
}

impl Scrape {
    /// The value of the series `name` with exactly `labels`, or 0 when absent
    /// (a labelled counter appears with its first count).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let wanted: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        (self.samples.iter()).find(|s| s.name == name && s.labels == wanted).map_or(0.0, |sample| sample.value)
    }

    /// Like `value`, for a series that must be there (a gauge, an unlabelled counter).
    fn present(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found = self.samples.iter().any(|s| s.name == name && s.labels.len() == labels.len());
        assert!(found, "no sample {name} {labels:?} in the scrape");
        self.value(name, labels)
    }
}

/// Scrapes `/metrics` without credentials, checks the answer's status and
/// type, and parses the whole body.
fn scrape(app: &TestApp) -> Scrape {
    let resp = app.get("/metrics", None);
    resp.assert_status(200, "GET /metrics without a token");
    assert_eq!(resp.header("Content-Type"), Some("text/plain; version=0.0.4"), "{}", resp.describe());
    parse(&resp.text())
}

/// Parses the text exposition format 0.0.4, panicking on anything it does
/// not allow or that this server must not do: every line is `# HELP`,
/// `# TYPE` or a sample; a family's TYPE comes once, before its samples,
/// which are contiguous; every sample belongs to a typed family; no series
/// twice; counters are finite and not negative; each histogram's buckets are
/// cumulative, in increasing `le`, end at `+Inf` equal to `_count`, and
/// come with a `_sum`.
fn parse(text: &str) -> Scrape {
    assert!(text.ends_with('\n'), "the exposition must end with a line feed");
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helped: HashSet<String> = HashSet::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut series: HashSet<(String, BTreeMap<String, String>)> = HashSet::new();
    let mut samples = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        let at = format!("line {}: {line:?}", idx + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or_else(|| panic!("{at}: HELP without text"));
            assert!(metric_name(name), "{at}: bad metric name");
            assert!(!help.is_empty() && unescape(help, false).is_some(), "{at}: bad HELP text");
            assert!(helped.insert(name.to_string()), "{at}: a second HELP for {name}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("{at}: TYPE without a type"));
            assert!(metric_name(name), "{at}: bad metric name");
            assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "{at}: unknown type");
            assert!(types.insert(name.to_string(), kind.to_string()).is_none(), "{at}: a second TYPE for {name}");
            assert!(!finished.contains(name) && current.as_deref() != Some(name), "{at}: TYPE after samples");
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "{at}: neither HELP, TYPE nor a sample");
        let sample = parse_sample(line).unwrap_or_else(|why| panic!("{at}: {why}"));
        let family = family_of(&sample.name, &types).unwrap_or_else(|| panic!("{at}: no TYPE for this sample"));
        if current.as_deref() != Some(family.as_str()) {
            assert!(!finished.contains(&family), "{at}: the samples of {family} are not contiguous");
            if let Some(previous) = current.replace(family.clone()) {
                finished.insert(previous);
            }
        }
        if types[&family] == "counter" {
            assert!(sample.value.is_finite() && sample.value >= 0.0, "{at}: a counter must be finite and not negative");
        }
        assert!(series.insert((sample.name.clone(), sample.labels.clone())), "{at}: the same series twice");
        samples.push(sample);
    }
    for (family, kind) in &types {
        assert!(helped.contains(family), "{family} has no HELP");
        if kind == "histogram" {
            check_histogram(family, &samples);
        }
    }
    Scrape { samples }
}

/// The typed family a sample belongs to: its own name, or for a histogram's
/// `_bucket`, `_sum` and `_count`, the name without the suffix.
fn family_of(name: &str, types: &HashMap<String, String>) -> Option<String> {
    if types.contains_key(name) {
        return Some(name.to_string());
    }
    let base = ["_bucket", "_sum", "_count"].iter().find_map(|suffix| name.strip_suffix(suffix))?;
    (types.get(base).map(String::as_str) == Some("histogram")).then(|| base.to_string())
}

/// Each series of a histogram (its labels but `le`): buckets cumulative in
/// increasing `le`, the last `+Inf` and equal to `_count`, and a `_sum`.
fn check_histogram(family: &str, samples: &[Sample]) {
    let mut buckets: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
    for sample in samples.iter().filter(|s| s.name == format!("{family}_bucket")) {
        let mut labels = sample.labels.clone();
        let le = labels.remove("le").unwrap_or_else(|| panic!("{family}: a bucket without le: {sample:?}"));
        let le: f64 = le.parse().unwrap_or_else(|_| panic!("{family}: le {le:?} is not a number"));
        buckets.entry(labels).or_default().push((le, sample.value));
    }
    assert!(!buckets.is_empty() || !samples.iter().any(|s| s.name.starts_with(family)), "{family}: no buckets");
    for (labels, buckets) in &buckets {
        for pair in buckets.windows(2) {
            let [(le_a, n_a), (le_b, n_b)] = [pair[0], pair[1]];
            assert!(le_a < le_b, "{family} {labels:?}: le not increasing: {buckets:?}");
            assert!(n_a <= n_b, "{family} {labels:?}: buckets not cumulative: {buckets:?}");
        }
        let &(last_le, last_n) = buckets.last().expect("a series has a bucket");
        assert!(last_le == f64::INFINITY, "{family} {labels:?}: the last bucket is not +Inf: {buckets:?}");
        let of = |suffix: &str| samples.iter().find(|s| s.name == format!("{family}{suffix}") && s.labels == *labels);
        let count = of("_count").unwrap_or_else(|| panic!("{family} {labels:?}: no _count"));
        assert_eq!(count.value, last_n, "{family} {labels:?}: +Inf is not _count");
        let sum = of("_sum").unwrap_or_else(|| panic!("{family} {labels:?}: no _sum"));
        assert!(sum.value.is_finite() && sum.value >= 0.0, "{family} {labels:?}: _sum {}", sum.value);
    }
}

fn metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Undoes the format's escapes: `\\` and `\n`, and in label values `\"`;
/// `None` for any other escape or a bare `"` in a label value.
fn unescape(text: &str, label_value: bool) -> Option<String> {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                '\\' => out.push('\\'),
                'n' => out.push('\n'),
                '"' if label_value => out.push('"'),
                _ => return None,
            },
            '"' if label_value => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// `name{key="value",…} value`, with no timestamp (this server writes none).
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(mut inside) = rest.strip_prefix('{') {
        loop {
            let (key, after) = inside.split_once("=\"").ok_or("a label without =\"")?;
            if !label_name(key) || key.starts_with("__") {
                return Err(format!("bad label name {key:?}"));
            }
            // The value ends at the first quote not escaped by a backslash.
            let mut end = None;
            let mut escaped = false;
            for (idx, c) in after.char_indices() {
                match (c, escaped) {
                    ('\\', false) => escaped = true,
                    ('"', false) => {
                        end = Some(idx);
                        break;
                    }
                    _ => escaped = false,
                }
            }
            let end = end.ok_or("an unterminated label value")?;
            let value = unescape(&after[..end], true).ok_or("a bad escape in a label value")?;
            if labels.insert(key.to_string(), value).is_some() {
                return Err(format!("label {key} twice"));
            }
            inside = &after[end + 1..];
            if let Some(next) = inside.strip_prefix(',') {
                inside = next;
            } else if let Some(after_labels) = inside.strip_prefix('}') {
                rest = after_labels;
                break;
            } else {
                return Err("labels not separated by , or closed by }".into());
            }
        }
    }
    let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        number if !number.contains(' ') => number.parse().map_err(|_| format!("bad value {number:?}"))?,
        _ => return Err("a timestamp or trailing text after the value".into()),
    };
    Ok(Sample { name: name.to_string(), labels, value })
}

const REQUESTS: &str = "messaging_http_requests_total";
const LATENCY_COUNT: &str = "messaging_http_request_duration_seconds_count";
const WS_OPEN: &str = "messaging_ws_open_connections";
const DELIVERED: &str = "messaging_ws_frames_delivered_total";

#[test]
fn the_parser_refuses_what_the_format_forbids() {
    let typed = "# HELP m_total h\n# TYPE m_total counter\n";
    let histogram = "# HELP h h\n# TYPE h histogram\n";
    let bad = [
        ("a sample without TYPE", "x 1\n".to_string()),
        ("an unescaped quote", format!("{typed}m_total{{a=\"x\"y\"}} 1\n")),
        ("a timestamp", format!("{typed}m_total 1 1700000000\n")),
        ("a negative counter", format!("{typed}m_total -1\n")),
        ("TYPE after samples", "# HELP g h\ng 1\n# TYPE g gauge\n".to_string()),
        ("a blank line", format!("{typed}\nm_total 1\n")),
        ("the same series twice", format!("{typed}m_total 1\nm_total 2\n")),
        (
            "buckets going down",
            format!("{histogram}h_bucket{{le=\"1\"}} 2\nh_bucket{{le=\"+Inf\"}} 1\nh_sum 1\nh_count 1\n"),
        ),
        ("no +Inf", format!("{histogram}h_bucket{{le=\"1\"}} 1\nh_sum 1\nh_count 1\n")),
        ("+Inf not _count", format!("{histogram}h_bucket{{le=\"+Inf\"}} 1\nh_sum 1\nh_count 2\n")),
    ];
    for (what, text) in bad {
        assert!(std::panic::catch_unwind(|| parse(&text)).is_err(), "the parser took {what}:\n{text}");
    }
    let good = format!(
        "{typed}m_total{{a=\"q\\\"\\\\\\n\"}} 3\n{histogram}h_bucket{{le=\"0.5\"}} 1\nh_bucket{{le=\"+Inf\"}} 2\nh_sum 0.7\nh_count 2\n"
    );
    let scrape = parse(&good);
    assert_eq!(scrape.value("m_total", &[("a", "q\"\\\n")]), 3.0);
}

#[test]
fn requests_are_counted_by_route_pattern_and_status_with_their_latency() {
    let app = spawn_app();
    let alice = app.create_user();
    let before = scrape(&app);

    for _ in 0..2 {
        app.get("/healthz", None).assert_status(200, "GET /healthz");
    }
    check_error(&app.get("/no/such/path/42", None), 404, "not_found", None);
    check_error(&app.get("/api/users/me", None), 401, "unauthorized", None);
    app.get(&format!("/api/users/{}", alice.id), Some(&alice.token)).assert_status(200, "GET /api/users/{id}");
    let after = scrape(&app);

    let delta = |name: &str, labels: &[(&str, &str)]| after.value(name, labels) - before.value(name, labels);
    let table = [
        ("GET /healthz", "200", 2.0),
        ("unmatched", "404", 1.0),
        ("GET /api/users/me", "401", 1.0),
        ("GET /api/users/{id}", "200", 1.0),
        ("GET /metrics", "200", 1.0),
    ];
    for (route, status, expected) in table {
        let moved = delta(REQUESTS, &[("route", route), ("status", status)]);
        assert_eq!(moved, expected, "{REQUESTS} for {route} {status}");
    }
    assert_eq!(delta(LATENCY_COUNT, &[("route", "GET /healthz")]), 2.0, "the latency histogram of GET /healthz");
    let raw_path = format!("/api/users/{}", alice.id);
    let leaked = after.samples.iter().find(|s| s.labels.values().any(|v| v.contains(&raw_path) || v.contains("/no/")));
    assert!(leaked.is_none(), "a raw path became a label: {leaked:?}");
    assert!(after.present("messaging_http_busy_workers", &[]) >= 1.0, "the scrape's own worker is busy");
    assert!(after.present("messaging_process_resident_memory_bytes", &[]) > 0.0, "the process's RSS");
    assert!(after.present("messaging_process_open_fds", &[]) > 2.0, "the process's descriptors");
}

#[test]
fn websockets_frames_closes_and_events_are_counted_on_the_process_that_sees_them() {
    let app = spawn_app();
    let other = spawn_app_on(&app.db_url, &[]);
    let (alice, bob) = (app.create_user(), app.create_user());
    let chat_id = id_of(&create_group(&app, &alice, "metrics", &[&bob]));
    let (before_here, before_there) = (scrape(&app), scrape(&other));
    let open_before = before_there.present(WS_OPEN, &[]);

    // Bob on the other process: its open gauge goes up.
    let (mut bob_ws, _) = connect_ready(&other, &bob, "bob on the other process");
    wait_for("the open gauge to go up", COUNTED, || {
        (scrape(&other).present(WS_OPEN, &[]) == open_before + 1.0).then_some(())
    });

    // Alice sends here: one event published here, read from the table and delivered there.
    let message = send(&app, &alice, chat_id, "counted");
    bob_ws.recv_until(SOON, "alice's message", |frame| frame["event"]["message"]["id"] == message["id"]);
    let published = |scrape: &Scrape| scrape.present("messaging_events_published_total", &[]);
    assert_eq!(published(&scrape(&app)) - published(&before_here), 1.0, "events published by the sending process");
    let fetched = |scrape: &Scrape| scrape.present("messaging_events_fetched_total", &[]);
    let delivered_before = before_there.present(DELIVERED, &[]);
    wait_for("the other process to count the event read and the frames written", COUNTED, || {
        let there = scrape(&other);
        // The ready frame and the event.
        (fetched(&there) > fetched(&before_there) && there.present(DELIVERED, &[]) >= delivered_before + 2.0)
            .then_some(())
    });
    wait_for("a last seq check on the process that follows the chat", COUNTED, || {
        let checks = |scrape: &Scrape| scrape.present("messaging_last_seq_checks_total", &[]);
        (checks(&scrape(&other)) > checks(&before_there)).then_some(())
    });
    assert_eq!(published(&scrape(&other)), published(&before_there), "the other process published nothing");

    // Bob logs out: his socket is closed with 4001 and the gauge comes down.
    app.delete("/api/sessions/current", Some(&bob.token)).assert_status(204, "bob logs out");
    let closed = bob_ws.expect_close(SOON, "bob's socket after his logout");
    assert_eq!(closed.code, Some(4001), "the close code of a logout");
    let closes = |scrape: &Scrape| scrape.value("messaging_ws_closes_total", &[("reason", "4001")]);
    wait_for("the close to be counted as 4001", COUNTED, || {
        let there = scrape(&other);
        (closes(&there) == closes(&before_there) + 1.0 && there.present(WS_OPEN, &[]) == open_before).then_some(())
    });
    assert_eq!(closes(&scrape(&app)), closes(&before_here), "no socket of the sending process closed");
}

#[test]
fn a_client_close_is_counted_as_client() {
    let app = spawn_app();
    let alice = app.create_user();
    let before = scrape(&app).value("messaging_ws_closes_total", &[("reason", "client")]);
    let (alice_ws, _) = connect_ready(&app, &alice, "alice");
    alice_ws.close();
    wait_for("the client's close to be counted", COUNTED, || {
        let closes = scrape(&app).value("messaging_ws_closes_total", &[("reason", "client")]);
        (closes == before + 1.0).then_some(())
    });
}

#[test]
fn database_errors_and_reconnects_are_counted() {
    let app = spawn_app();
    let alice = app.create_user();
    let reconnects = |scrape: &Scrape| scrape.present("messaging_db_reconnects_total", &[]);
    let statements = |scrape: &Scrape| scrape.present("messaging_db_errors_total", &[("kind", "statement")]);
    let before = scrape(&app);

    // A conflict is the client's doing, not the database failing.
    let taken = app.signup(&alice.username, "another@example.com", "correct horse battery");
    check_error(&taken, 409, "conflict", Some("username"));
    assert_eq!(statements(&scrape(&app)), statements(&before), "a unique violation counted as a database error");

    // Every connection of the server ended: the next unit of work reconnects.
    let mut db = app.db();
    db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE application_name = 'messaging' AND datname = current_database()",
        &[],
    )
    .expect("terminate the server's connections");
    wait_for("a reconnect to be counted", COUNTED, || {
        app.create_user();
        (reconnects(&scrape(&app)) > reconnects(&before)).then_some(())
    });

    // Sabotage: a table the statements need is gone, so a sign-up fails inside the database.
    db.batch_execute("ALTER TABLE users RENAME TO users_sabotaged").expect("rename users");
    let failed = app.signup("sabotaged", "sabotaged@example.com", "correct horse battery");
    check_error(&failed, 500, "internal", None);
    assert!(statements(&scrape(&app)) > statements(&before), "the failed statement was not counted");
}
