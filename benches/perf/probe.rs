//! What limited a measurement: where the machine's CPU went while it ran (the server, PostgreSQL, the load
//! generator, anything else on the machine), and what PostgreSQL's backends were waiting for, sampled from
//! `pg_stat_activity`. A scenario that misses its target says which of these it ran into.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};

use crate::BenchResult;

/// How often PostgreSQL's backends are sampled.
const WAIT_SAMPLE: Duration = Duration::from_millis(50);
/// Above this share of all CPUs busy, the machine's CPU is what limited the run.
const CPU_BOUND: f64 = 0.85;

/// The processes a measurement involves.
#[derive(Clone)]
pub struct Subjects {
    /// The server processes under load: none for pgbench, this process for a baseline it serves itself.
    pub servers: Vec<u32>,
    pub postmaster: u32,
    pub url: String,
    /// What drives the load: `wrk` or `pgbench` (child processes, counted once they exit) or `bench`, this
    /// process's own client threads.
    pub load: &'static str,
}

/// CPU times at one moment, in seconds.
struct Snapshot {
    at: Instant,
    machine_busy: f64,
    machine_all: f64,
    /// Interrupt and softirq time: loopback networking is mostly this, and no process is charged for it.
    machine_interrupts: f64,
    servers: f64,
    postgres: f64,
    own: f64,
    exited_children: f64,
}

impl Snapshot {
    fn take(subjects: &Subjects) -> Snapshot {
        let (machine_busy, machine_all, machine_interrupts) = machine_times();
        Snapshot {
            at: Instant::now(),
            machine_busy,
            machine_all,
            machine_interrupts,
            servers: subjects.servers.iter().map(|&pid| process_times(pid).map_or(0.0, |t| t.own)).sum(),
            postgres: postgres_times(subjects.postmaster),
            own: rusage_secs(libc::RUSAGE_SELF),
            exited_children: rusage_secs(libc::RUSAGE_CHILDREN),
        }
    }
}

/// A measurement under observation.
pub struct Probe {
    subjects: Subjects,
    start: Snapshot,
    stop: Arc<AtomicBool>,
    sampler: JoinHandle<Waits>,
}

/// Samples of what active PostgreSQL backends were doing: `CPU` or a wait event.
#[derive(Default)]
struct Waits {
    samples: usize,
    active: usize,
    by_event: HashMap<String, usize>,
}

/// Where a measurement's time went.
#[derive(Clone)]
pub struct Usage {
    pub wall: f64,
    /// Shares of one CPU, in percent: two busy cores make 200.
    pub server: f64,
    pub postgres: f64,
    pub load: f64,
    /// The kernel's interrupt and softirq time, mostly loopback networking.
    pub interrupts: f64,
    pub other: f64,
    pub idle: f64,
    cpus: f64,
    load_name: &'static str,
    /// Average number of active PostgreSQL backends, and the commonest states, in percent of active samples.
    pub active_backends: f64,
    pub waits: Vec<(String, f64)>,
}

impl Probe {
    pub fn start(subjects: &Subjects) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let (url, flag) = (subjects.url.clone(), stop.clone());
        let sampler = thread::spawn(move || sample_waits(&url, &flag));
        Probe { subjects: subjects.clone(), start: Snapshot::take(subjects), stop, sampler }
    }

    pub fn finish(self) -> Usage {
        let end = Snapshot::take(&self.subjects);
        self.stop.store(true, Ordering::Release);
        let waits = self.sampler.join().unwrap_or_default();
        let start = &self.start;
        let wall = end.at.duration_since(start.at).as_secs_f64().max(1e-9);
        let percent = |secs: f64| (secs / wall * 100.0).max(0.0);
        let cpus = thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let machine_all = (end.machine_all - start.machine_all).max(1e-9);
        let busy_share = (end.machine_busy - start.machine_busy) / machine_all;
        let server = percent(end.servers - start.servers);
        let postgres = percent(end.postgres - start.postgres);
        // This process is either a server (P3's hello-world, P5's bare loop) or a load generator.
        let own = if self.subjects.servers.contains(&std::process::id()) { 0.0 } else { end.own - start.own };
        let load = percent(own + (end.exited_children - start.exited_children));
        let busy = busy_share * cpus * 100.0;
        let interrupts = (end.machine_interrupts - start.machine_interrupts) / machine_all * cpus * 100.0;
        let mut by_event: Vec<(String, f64)> = waits
            .by_event
            .into_iter()
            .map(|(event, count)| (event, count as f64 * 100.0 / waits.active.max(1) as f64))
            .collect();
        by_event.sort_by(|a, b| b.1.total_cmp(&a.1));
        Usage {
            wall,
            server,
            postgres,
            load,
            interrupts,
            other: (busy - server - postgres - load - interrupts).max(0.0),
            idle: (1.0 - busy_share).max(0.0) * cpus * 100.0,
            cpus,
            load_name: self.subjects.load,
            active_backends: waits.active as f64 / waits.samples.max(1) as f64,
            waits: by_event,
        }
    }
}

/// Runs `measure` under a probe of `subjects`.
pub fn observe<T>(subjects: &Subjects, measure: impl FnOnce() -> BenchResult<T>) -> BenchResult<(T, Usage)> {
    let probe = Probe::start(subjects);
    let measured = measure()?;
    Ok((measured, probe.finish()))
}

impl Usage {
    /// One short line for the table: CPU when the machine was busy, else what PostgreSQL waited for.
    pub fn limited_by(&self) -> String {
        let all = self.cpus * 100.0;
        // PostgreSQL's states are worth a mention only when it was busy at all.
        let postgres = match self.waits.first() {
            Some((event, share)) if self.active_backends >= 0.1 => {
                format!("; pg {:.1} active, {event} {share:.0}%", self.active_backends)
            }
            _ => String::new(),
        };
        if self.idle < all * (1.0 - CPU_BOUND) {
            format!(
                "CPU: server {:.0}%, pg {:.0}%, {} {:.0}%, kernel {:.0}%, other {:.0}% of {all:.0}%{postgres}",
                self.server, self.postgres, self.load_name, self.load, self.interrupts, self.other
            )
        } else {
            format!("not CPU ({:.0}% of {all:.0}% idle){postgres}", self.idle)
        }
    }

    /// Everything measured, for the scenario's detail.
    pub fn describe(&self) -> String {
        let waits: Vec<String> =
            self.waits.iter().take(4).map(|(event, share)| format!("{event} {share:.0}%")).collect();
        format!(
            "CPU in % of one core over {:.1} s: server {:.0}, PostgreSQL {:.0}, {} {:.0}, kernel interrupts {:.0}, other processes {:.0}, idle {:.0}; \
             active PostgreSQL backends {:.1} on average, their samples: {}",
            self.wall,
            self.server,
            self.postgres,
            self.load_name,
            self.load,
            self.interrupts,
            self.other,
            self.idle,
            self.active_backends,
            if waits.is_empty() { "none".to_string() } else { waits.join(", ") }
        )
    }
}

/// Samples `pg_stat_activity` until `stop`; a sampler that cannot connect reports nothing.
fn sample_waits(url: &str, stop: &AtomicBool) -> Waits {
    let mut waits = Waits::default();
    let Ok(mut client) = Client::connect(url, NoTls) else { return waits };
    let Ok(statement) = client.prepare(
        "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') FROM pg_stat_activity
         WHERE state = 'active' AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
    ) else {
        return waits;
    };
    while !stop.load(Ordering::Acquire) {
        if let Ok(rows) = client.query(&statement, &[]) {
            waits.samples += 1;
            waits.active += rows.len();
            for row in rows {
                *waits.by_event.entry(row.get(0)).or_default() += 1;
            }
        }
        thread::sleep(WAIT_SAMPLE);
    }
    waits
}

/// Busy, total and interrupt CPU time of the whole machine, in seconds, from `/proc/stat`.
fn machine_times() -> (f64, f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    let field = |i: usize| fields.get(i).copied().unwrap_or(0.0);
    // user nice system idle iowait irq softirq steal
    let busy = field(0) + field(1) + field(2) + field(5) + field(6) + field(7);
    let all = busy + field(3) + field(4);
    (busy / ticks_per_sec(), all / ticks_per_sec(), (field(5) + field(6)) / ticks_per_sec())
}

struct ProcessTimes {
    parent: u32,
    /// The process's own user and system time.
    own: f64,
    /// Its children's that it has waited for.
    reaped: f64,
}

fn process_times(pid: u32) -> Option<ProcessTimes> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it are positional (proc(5)).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let number = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    Some(ProcessTimes {
        parent: fields.get(1)?.parse().ok()?,
        own: (number(11) + number(12)) / ticks_per_sec(),
        reaped: (number(13) + number(14)) / ticks_per_sec(),
    })
}

/// The postmaster's time, its exited backends' and its live backends'.
fn postgres_times(postmaster: u32) -> f64 {
    let Some(main) = process_times(postmaster) else { return 0.0 };
    let live_children: f64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(process_times)
        .filter(|times| times.parent == postmaster)
        .map(|times| times.own)
        .sum();
    main.own + main.reaped + live_children
}

fn rusage_secs(who: libc::c_int) -> f64 {
    // SAFETY: getrusage writes one rusage into the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut usage);
        usage
    };
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no memory arguments.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}
