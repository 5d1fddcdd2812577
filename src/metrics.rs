//! The process's counters and gauges, and their Prometheus text (`GET /metrics`).
//!
//! Counting is cheap and never blocks for long: a request takes one short
//! lock (its route's counts and latency buckets), everything else is an
//! atomic. Rendering copies the counts under that lock and formats them
//! outside it, in the text exposition format 0.0.4, written by hand (no
//! crate): `render` is pure, and its unit tests pin the format. Labels are
//! route patterns (`Route::name`) and close reasons, never a raw path or an
//! id, so the number of series is bounded.

use std::collections::BTreeMap;
use std::fmt::{Display, Write};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// The route label of a request that matched no route (`404` or `405`).
pub const UNMATCHED: &str = "unmatched";

/// Upper bounds of the latency buckets, in microseconds, and as `le` labels.
const BUCKETS: [(u64, &str); 14] = [
    (500, "0.0005"),
    (1_000, "0.001"),
    (2_500, "0.0025"),
    (5_000, "0.005"),
    (10_000, "0.01"),
    (25_000, "0.025"),
    (50_000, "0.05"),
    (100_000, "0.1"),
    (250_000, "0.25"),
    (500_000, "0.5"),
    (1_000_000, "1"),
    (2_500_000, "2.5"),
    (5_000_000, "5"),
    (10_000_000, "10"),
];

/// A count that only goes up.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// How a WebSocket that was upgraded ended: the close reasons' label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum WsEnd {
    /// The server closed it with this code (4008, 4001, 1001, 1009, …).
    Server(u16),
    /// The client sent a close frame first.
    Client,
    /// The connection ended without a close frame (reset, end of stream, a failed write).
    Lost,
}

impl WsEnd {
    /// How a connection ended: the server's close code if it asked for one
    /// (whoever then spoke first on the wire), else whether the client closed.
    pub fn of(server_code: Option<u16>, client_closed: bool) -> WsEnd {
        match (server_code, client_closed) {
            (Some(code), _) => WsEnd::Server(code),
            (None, true) => WsEnd::Client,
            (None, false) => WsEnd::Lost,
        }
    }

    fn label(self) -> String {
        match self {
            WsEnd::Server(code) => code.to_string(),
            WsEnd::Client => "client".into(),
            WsEnd::Lost => "lost".into(),
        }
    }
}

/// What went wrong with the database, as `messaging_db_errors_total` labels it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbError {
    /// A connection attempt failed or outlived its deadline.
    Connect,
    /// The check at the start of a unit of work was not answered in time.
    Timeout,
    /// A statement, or a transaction's start or commit, failed.
    Statement,
}

impl DbError {
    const ALL: [DbError; 3] = [DbError::Connect, DbError::Timeout, DbError::Statement];

    fn label(self) -> &'static str {
        match self {
            DbError::Connect => "connect",
            DbError::Timeout => "timeout",
            DbError::Statement => "statement",
        }
    }
}

/// One route's requests: counts by status, and the latency histogram.
#[derive(Clone, Default, Debug, PartialEq)]
struct RouteStats {
    statuses: BTreeMap<u16, u64>,
    /// Requests per bucket (not cumulative); the last one is past every bound.
    buckets: [u64; BUCKETS.len() + 1],
    sum_micros: u64,
}

impl RouteStats {
    fn record(&mut self, status: u16, elapsed: Duration) {
        *self.statuses.entry(status).or_default() += 1;
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = BUCKETS.iter().position(|(bound, _)| micros <= *bound).unwrap_or(BUCKETS.len());
        self.buckets[bucket] += 1;
        self.sum_micros = self.sum_micros.saturating_add(micros);
    }
}

/// What the process counts; one per process, in `App`, shared by every thread
/// that counts (workers, WebSocket threads, the hub, every `Db`).
#[derive(Default)]
pub struct Metrics {
    /// Keyed by route pattern; one short lock per request.
    requests: Mutex<BTreeMap<&'static str, RouteStats>>,
    /// HTTP workers handling a request now (`busy`).
    busy_workers: Gauge,
    /// WebSockets upgraded and not yet closed (`ws_opened`, `ws_closed`).
    ws_open: Gauge,
    /// Frames written whole to a WebSocket.
    pub ws_frames_delivered: Counter,
    /// Frames not queued because the connection's queue was full (it is then closed with 4008).
    pub ws_frames_dropped: Counter,
    ws_closes: Mutex<BTreeMap<WsEnd, u64>>,
    /// Events committed by this process's handlers and handed to delivery.
    pub events_published: Counter,
    /// Events the hub read back from the table: other processes' events, gaps, catch-ups.
    pub events_fetched: Counter,
    /// Reads of every followed chat's last seq (the hub's anti-entropy check).
    pub last_seq_checks: Counter,
    db_errors: [Counter; DbError::ALL.len()],
    /// Database connections opened to replace one a `Db` had before.
    pub db_reconnects: Counter,
}

/// What `/proc/self` says of the process at scrape time; `None` where it cannot be read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Process {
    pub resident_bytes: Option<u64>,
    pub open_fds: Option<u64>,
}

impl Process {
    /// Reads `/proc/self/status` and `/proc/self/fd` (Linux).
    pub fn read() -> Process {
        let status = std::fs::read_to_string("/proc/self/status").ok();
        let fds = std::fs::read_dir("/proc/self/fd").ok().map(|entries| entries.count() as u64);
        Process { resident_bytes: status.as_deref().and_then(resident_bytes), open_fds: fds }
    }
}

/// `VmRSS` of a `/proc/<pid>/status` text, in bytes.
fn resident_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|line| line.strip_prefix("VmRSS:"))?;
    let kib = line.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
    kib.checked_mul(1024)
}

impl Metrics {
    /// Counts one answered request under its route pattern (or `UNMATCHED`).
    pub fn request(&self, route: &'static str, status: u16, elapsed: Duration) {
        let mut requests = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        requests.entry(route).or_default().record(status, elapsed);
    }

    /// Counts a worker busy until the returned guard drops.
    pub fn busy(&self) -> Busy<'_> {
        self.busy_workers.inc();
        Busy(&self.busy_workers)
    }

    /// Counts a WebSocket that upgraded.
    pub fn ws_opened(&self) {
        self.ws_open.inc();
    }

    /// Counts the end of a WebSocket `ws_opened` counted.
    pub fn ws_closed(&self, end: WsEnd) {
        self.ws_open.dec();
        *self.ws_closes.lock().unwrap_or_else(PoisonError::into_inner).entry(end).or_default() += 1;
    }

    pub fn db_error(&self, error: DbError) {
        self.db_errors[error as usize].inc();
    }

    /// The whole exposition, with the process's figures read now.
    pub fn render(&self, process: Process) -> String {
        let requests = self.requests.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let closes = self.ws_closes.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let mut text = Text::default();

        text.family("messaging_http_requests_total", "counter", "HTTP requests answered, by route pattern and status.");
        for (route, stats) in &requests {
            for (status, count) in &stats.statuses {
                text.sample(
                    "messaging_http_requests_total",
                    &[("route", route), ("status", &status.to_string())],
                    count,
                );
            }
        }
        let latency = "messaging_http_request_duration_seconds";
        text.family(
            latency,
            "histogram",
            "Time from a request reaching a worker to its answer ready to write, by route pattern.",
        );
        for (route, stats) in &requests {
            let mut cumulative = 0;
            for (idx, (_, le)) in BUCKETS.iter().enumerate() {
                cumulative += stats.buckets[idx];
                text.sample(&format!("{latency}_bucket"), &[("route", route), ("le", le)], cumulative);
            }
            let count = cumulative + stats.buckets[BUCKETS.len()];
            text.sample(&format!("{latency}_bucket"), &[("route", route), ("le", "+Inf")], count);
            text.sample(&format!("{latency}_sum"), &[("route", route)], seconds(stats.sum_micros));
            text.sample(&format!("{latency}_count"), &[("route", route)], count);
        }

        let gauges = [
            ("messaging_http_busy_workers", "HTTP workers handling a request now.", &self.busy_workers),
            ("messaging_ws_open_connections", "WebSocket connections open now.", &self.ws_open),
        ];
        for (name, help, gauge) in gauges {
            text.family(name, "gauge", help);
            text.sample(name, &[], gauge.get());
        }

        let counters = [
            ("messaging_ws_frames_delivered_total", "Frames written whole to WebSockets.", &self.ws_frames_delivered),
            (
                "messaging_ws_frames_dropped_total",
                "Frames not queued because the connection's queue was full; it is closed with 4008.",
                &self.ws_frames_dropped,
            ),
            ("messaging_events_published_total", "Events committed by this process.", &self.events_published),
            (
                "messaging_events_fetched_total",
                "Events the hub read from the table: other processes' events, gaps and catch-ups.",
                &self.events_fetched,
            ),
            (
                "messaging_last_seq_checks_total",
                "Reads of the last seq of every followed chat (anti-entropy).",
                &self.last_seq_checks,
            ),
            (
                "messaging_db_reconnects_total",
                "Database connections opened to replace a lost or abandoned one.",
                &self.db_reconnects,
            ),
        ];
        for (name, help, counter) in counters {
            text.family(name, "counter", help);
            text.sample(name, &[], counter.get());
        }

        let name = "messaging_ws_closes_total";
        text.family(name, "counter", "WebSockets closed, by the server's close code, or client or lost.");
        for (end, count) in &closes {
            text.sample(name, &[("reason", &end.label())], count);
        }
        let name = "messaging_db_errors_total";
        text.family(name, "counter", "Database failures: connecting, an unanswered check, a failed statement.");
        for kind in DbError::ALL {
            text.sample(name, &[("kind", kind.label())], self.db_errors[kind as usize].get());
        }

        let name = "messaging_process_resident_memory_bytes";
        text.family(name, "gauge", "Resident set size (VmRSS) of the process.");
        if let Some(bytes) = process.resident_bytes {
            text.sample(name, &[], bytes);
        }
        let name = "messaging_process_open_fds";
        text.family(name, "gauge", "Open file descriptors of the process.");
        if let Some(fds) = process.open_fds {
            text.sample(name, &[], fds);
        }
        text.0
    }
}

/// A busy worker, counted until dropped.
pub struct Busy<'a>(&'a Gauge);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Microseconds as seconds, in decimal digits: exact, with no float rounding.
fn seconds(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

/// The exposition being written: `# HELP`, `# TYPE`, then samples.
#[derive(Default)]
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            let labels: Vec<String> =
                labels.iter().map(|(key, value)| format!("{key}=\"{}\"", escape(value))).collect();
            let _ = write!(self.0, "{{{}}}", labels.join(","));
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// A label value as the format quotes it: backslash, double quote and line feed escaped.
fn escape(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|line| line.starts_with(prefix)).collect()
    }

    #[test]
    fn label_values_escape_backslash_quote_and_line_feed() {
        assert_eq!(escape(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape("two\nlines"), "two\\nlines");
        assert_eq!(escape("GET /api/chats/{id}"), "GET /api/chats/{id}");
        let mut text = Text::default();
        text.sample("m", &[("route", "x\"y"), ("status", "200")], 3);
        assert_eq!(text.0, "m{route=\"x\\\"y\",status=\"200\"} 3\n");
    }

    #[test]
    fn help_escapes_backslash_and_line_feed_and_type_follows() {
        let mut text = Text::default();
        text.family("m", "counter", "a\\b\nc");
        assert_eq!(text.0, "# HELP m a\\\\b\\nc\n# TYPE m counter\n");
    }

    #[test]
    fn requests_count_by_route_and_status() {
        let metrics = Metrics::default();
        metrics.request("GET /healthz", 200, Duration::from_micros(10));
        metrics.request("GET /healthz", 200, Duration::from_micros(10));
        metrics.request(UNMATCHED, 404, Duration::from_micros(10));
        let text = metrics.render(Process::default());
        assert_eq!(
            lines_of(&text, "messaging_http_requests_total{"),
            [
                "messaging_http_requests_total{route=\"GET /healthz\",status=\"200\"} 2",
                "messaging_http_requests_total{route=\"unmatched\",status=\"404\"} 1",
            ]
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_inf_equal_to_count() {
        let metrics = Metrics::default();
        for micros in [100, 500, 501, 30_000, 20_000_000] {
            metrics.request("GET /r", 200, Duration::from_micros(micros));
        }
        let text = metrics.render(Process::default());
        let buckets = lines_of(&text, "messaging_http_request_duration_seconds_bucket{route=\"GET /r\"");
        let expected = [
            ("0.0005", 2),
            ("0.001", 3),
            ("0.0025", 3),
            ("0.005", 3),
            ("0.01", 3),
            ("0.025", 3),
            ("0.05", 4),
            ("0.1", 4),
            ("0.25", 4),
            ("0.5", 4),
            ("1", 4),
            ("2.5", 4),
            ("5", 4),
            ("10", 4),
            ("+Inf", 5),
        ];
        let expected: Vec<String> = (expected.iter())
            .map(|(le, n)| {
                format!("messaging_http_request_duration_seconds_bucket{{route=\"GET /r\",le=\"{le}\"}} {n}")
            })
            .collect();
        assert_eq!(buckets, expected);
        assert_eq!(
            lines_of(&text, "messaging_http_request_duration_seconds_sum"),
            ["messaging_http_request_duration_seconds_sum{route=\"GET /r\"} 20.031101"]
        );
        assert_eq!(
            lines_of(&text, "messaging_http_request_duration_seconds_count"),
            ["messaging_http_request_duration_seconds_count{route=\"GET /r\"} 5"]
        );
    }

    #[test]
    fn a_histogram_family_is_declared_once_before_its_samples() {
        let metrics = Metrics::default();
        metrics.request("GET /a", 200, Duration::ZERO);
        metrics.request("GET /b", 200, Duration::ZERO);
        let text = metrics.render(Process::default());
        let kind = "# TYPE messaging_http_request_duration_seconds histogram";
        assert_eq!(lines_of(&text, kind).len(), 1);
        let declared = text.find(kind).unwrap();
        assert!(declared < text.find("messaging_http_request_duration_seconds_bucket").unwrap());
    }

    #[test]
    fn seconds_are_exact_decimals() {
        assert_eq!(seconds(0), "0.000000");
        assert_eq!(seconds(1_500_001), "1.500001");
        assert_eq!(seconds(100_000), "0.100000");
    }

    #[test]
    fn gauges_go_up_and_down_and_closes_count_by_reason() {
        let metrics = Metrics::default();
        {
            let _busy = metrics.busy();
            assert!(metrics.render(Process::default()).contains("\nmessaging_http_busy_workers 1\n"));
        }
        metrics.ws_opened();
        metrics.ws_opened();
        metrics.ws_closed(WsEnd::Server(4001));
        metrics.ws_opened();
        metrics.ws_closed(WsEnd::Client);
        let text = metrics.render(Process::default());
        assert!(text.contains("\nmessaging_http_busy_workers 0\n"), "{text}");
        assert!(text.contains("\nmessaging_ws_open_connections 1\n"), "{text}");
        assert_eq!(
            lines_of(&text, "messaging_ws_closes_total{"),
            ["messaging_ws_closes_total{reason=\"4001\"} 1", "messaging_ws_closes_total{reason=\"client\"} 1"]
        );
    }

    #[test]
    fn a_server_close_code_wins_then_the_clients_close_then_lost() {
        assert_eq!(WsEnd::of(Some(4008), true), WsEnd::Server(4008));
        assert_eq!(WsEnd::of(Some(1009), false), WsEnd::Server(1009));
        assert_eq!(WsEnd::of(None, true), WsEnd::Client);
        assert_eq!(WsEnd::of(None, false), WsEnd::Lost);
    }

    #[test]
    fn db_errors_have_a_sample_for_every_kind() {
        let metrics = Metrics::default();
        metrics.db_error(DbError::Statement);
        metrics.db_error(DbError::Statement);
        let text = metrics.render(Process::default());
        assert_eq!(
            lines_of(&text, "messaging_db_errors_total{"),
            [
                "messaging_db_errors_total{kind=\"connect\"} 0",
                "messaging_db_errors_total{kind=\"timeout\"} 0",
                "messaging_db_errors_total{kind=\"statement\"} 2",
            ]
        );
    }

    #[test]
    fn process_figures_appear_when_read_and_are_left_out_when_not() {
        let metrics = Metrics::default();
        let read = metrics.render(Process { resident_bytes: Some(4096), open_fds: Some(7) });
        assert!(read.contains("\nmessaging_process_resident_memory_bytes 4096\n"), "{read}");
        assert!(read.contains("\nmessaging_process_open_fds 7\n"), "{read}");
        let unread = metrics.render(Process::default());
        assert!(unread.contains("# TYPE messaging_process_open_fds gauge\n"));
        assert!(!unread.contains("\nmessaging_process_open_fds "), "{unread}");
    }

    #[test]
    fn resident_bytes_come_from_vm_rss() {
        let status = "Name:\tmessaging\nVmPeak:\t  9000 kB\nVmRSS:\t   1234 kB\nThreads:\t5\n";
        assert_eq!(resident_bytes(status), Some(1234 * 1024));
        assert_eq!(resident_bytes("Name:\tx\n"), None);
        assert_eq!(resident_bytes("VmRSS:\tlots kB\n"), None);
        let here = Process::read();
        assert!(here.resident_bytes.is_some_and(|bytes| bytes > 0) && here.open_fds.is_some_and(|n| n > 2), "{here:?}");
    }

    #[test]
    fn every_sample_line_is_a_name_labels_and_a_number() {
        let metrics = Metrics::default();
        metrics.request("GET /a b", 404, Duration::from_millis(3));
        metrics.ws_opened();
        metrics.ws_closed(WsEnd::Lost);
        for line in metrics.render(Process::read()).lines() {
            if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
                continue;
            }
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            let name: String = line.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            assert!(name.starts_with("messaging_"), "{line}");
        }
    }
}
