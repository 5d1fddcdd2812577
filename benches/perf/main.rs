//! `make bench`: the performance issue's scenarios P1 to P10, and P11 (history with reactions), each measured against its baseline in the same
//! run, in interleaved rounds, printed as one table and written to BENCHMARKS.md.
//!
//! Why it is built this way:
//! - Every figure is a ratio to a baseline measured seconds apart (stats.rs), because absolute timings on a
//!   shared 2-core machine drift by tens of percent.
//! - HTTP load comes from wrk and database load from pgbench (wrk.rs, pgbench.rs): tools whose own overheads
//!   are known, so a shortfall is the server's. WebSocket clients are ours (ws.rs), on epoll, so a thousand of
//!   them cost the server's machine little.
//! - The server is the release binary as a child process (server.rs), on a private cluster with durable
//!   settings (cluster.rs): `/proc/<pid>` then describes the server alone, and a `201` costs a real commit.
//! - Each measurement records where the CPU went and what PostgreSQL waited for (probe.rs), so a missed target
//!   comes with what limited it.
//!
//! The scenarios live one concern per file: footprint.rs (P6, P8), health.rs (P3), send.rs (P1, P7),
//! history.rs (P2, P11), fanout.rs (P4, P5, P10), unread.rs (P9). Guards stop every server and the cluster on every
//! way out, a failure included.

mod cluster;
mod fanout;
mod footprint;
mod health;
mod history;
mod http;
mod options;
mod pgbench;
mod probe;
mod report;
mod send;
mod server;
mod setup;
mod stats;
mod unread;
mod versus;
mod wrk;
mod ws;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use crate::cluster::Cluster;
use crate::options::Options;
use crate::probe::Subjects;
use crate::report::{RunInfo, Section};
use crate::server::{Server, Settings};
use crate::setup::User;

pub type BenchResult<T> = Result<T, String>;

/// WebSockets the main and the second server hold at once: at most P4's 1,000 members, with room to spare.
const MAIN_WS_CONNECTIONS: usize = 1500;

fn main() {
    // `cargo bench` passes `--bench`; everything else comes from the environment (options.rs).
    if let Err(problem) = run() {
        eprintln!("make bench failed: {problem}");
        std::process::exit(1);
    }
}

/// A group of scenarios measured together because they share their setup.
type Group = (&'static [&'static str], fn(&mut Bench) -> BenchResult<Vec<Section>>);

/// In the order a run measures them: the start-up figures on a quiet database first, the one that writes a
/// million rows and the one that opens 10,000 sockets last.
const GROUPS: [Group; 7] = [
    (&["P8"], footprint::startup),
    (&["P3"], health::run),
    (&["P1", "P7"], send::run),
    (&["P2", "P11"], history::run),
    (&["P4", "P5", "P10"], fanout::run),
    (&["P9"], unread::run),
    (&["P6"], footprint::idle_connections),
];

fn run() -> BenchResult<()> {
    let options = Options::from_env()?;
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_messaging"));
    let open_files = raise_open_files_limit()?;
    let started = Instant::now();
    let load_before = report::load_average();

    let cluster = Cluster::start(&repo)?;
    server::migrate(&binary, &cluster.url)?;
    let settings = Settings { workers: options.workers, ws_max_connections: MAIN_WS_CONNECTIONS };
    let server = Server::start(&binary, &cluster.url, &settings)?;
    let workers = server.http_workers()?;
    eprintln!(
        "bench: {} with {workers} workers; scenarios {}; {} rounds of {} s; open files limit {open_files}",
        binary.display(),
        options.selected().join(","),
        options.rounds,
        options.secs
    );
    let scratch = Scratch::new()?;
    let mut bench = Bench {
        options,
        repo,
        binary,
        server,
        second: None,
        cluster,
        scratch: scratch.0.clone(),
        pools: HashMap::new(),
        open_files,
    };

    let mut sections = Vec::new();
    for (ids, measure) in GROUPS {
        if ids.iter().any(|id| bench.options.runs(id)) {
            let group_started = Instant::now();
            sections.extend(measure(&mut bench)?);
            eprintln!("bench: {} took {:.0?}", ids.join(", "), group_started.elapsed());
        }
    }
    sections.retain(|section| bench.options.runs(section.id));
    sections.sort_by_key(|section| section.id[1..].parse::<u32>().unwrap_or(u32::MAX));

    println!("{}", report::terminal(&sections));
    let run = RunInfo {
        command: bench.options.command(),
        load_before,
        load_after: report::load_average(),
        took_secs: started.elapsed().as_secs_f64(),
        postgres: bench.cluster.version(),
        server: format!(
            "`WORKERS={workers} LOG=off RATE_LIMITS=off`, other settings at their defaults but `WS_MAX_CONNECTIONS` (room for each scenario's sockets); `PASSWORD_ITERATIONS={}` only so that creating a thousand accounts is quick (no measured request hashes a password)",
            server::PASSWORD_ITERATIONS
        ),
        rounds: bench.options.rounds,
        secs: bench.options.secs,
    };
    println!(
        "load average (1 min): {} before, {} after; {:.0} s in all",
        run.load_before, run.load_after, run.took_secs
    );
    let previous = std::fs::read_to_string(bench.repo.join("BENCHMARKS.md")).ok();
    let markdown = report::markdown(&bench.repo, &run, &sections, previous.as_deref());
    // Every run leaves its report beside the build, where a subset's can be read in full.
    let beside_build = report_path()?;
    std::fs::write(&beside_build, &markdown).map_err(|e| format!("cannot write {}: {e}", beside_build.display()))?;
    if bench.options.is_full() {
        let path = bench.repo.join("BENCHMARKS.md");
        std::fs::write(&path, markdown).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("wrote {} and {}", path.display(), beside_build.display());
    } else {
        println!("wrote {}; BENCHMARKS.md left as it is, as only some scenarios ran", beside_build.display());
    }
    drop(scratch);
    Ok(())
}

/// What every scenario uses: the options, the cluster, the main server and, once needed, a second one on the
/// same database; accounts made once and shared.
pub struct Bench {
    pub options: Options,
    pub repo: PathBuf,
    pub binary: PathBuf,
    // The servers come before the cluster: fields drop in order, and a server outliving its database would
    // only log failures.
    server: Server,
    second: Option<Server>,
    pub cluster: Cluster,
    /// A directory for the files wrk reads.
    pub scratch: PathBuf,
    pools: HashMap<&'static str, Vec<User>>,
    /// This process's open files limit, raised to its hard limit at start.
    pub open_files: u64,
}

/// Where a running server listens, and its process id.
#[derive(Clone, Copy)]
pub struct Endpoint {
    pub http: SocketAddr,
    pub ws: SocketAddr,
    pub pid: u32,
}

impl Endpoint {
    fn of(server: &Server) -> Endpoint {
        Endpoint { http: server.http, ws: server.ws, pid: server.pid() }
    }
}

impl Bench {
    pub fn main_server(&self) -> Endpoint {
        Endpoint::of(&self.server)
    }

    /// A second server process on the same database, started the first time a scenario needs it.
    pub fn second_server(&mut self) -> BenchResult<Endpoint> {
        if self.second.is_none() {
            self.second = Some(Server::start(&self.binary, &self.cluster.url, &self.settings(MAIN_WS_CONNECTIONS))?);
        }
        Ok(Endpoint::of(self.second.as_ref().expect("started just above")))
    }

    /// How this run starts a server that must hold `ws_max_connections` WebSockets.
    pub fn settings(&self, ws_max_connections: usize) -> Settings {
        Settings { workers: self.options.workers, ws_max_connections }
    }

    /// The main server's HTTP worker count.
    pub fn workers(&self) -> BenchResult<usize> {
        self.server.http_workers()
    }

    /// The first `count` accounts named `{pool}{n}`, created on the main server when first asked for.
    pub fn users(&mut self, pool: &'static str, count: usize) -> BenchResult<Vec<User>> {
        let have = self.pools.get(pool).map_or(0, Vec::len);
        if have < count {
            let setup_started = Instant::now();
            let created = setup::create_users(self.server.http, pool, have..count)?;
            eprintln!("bench: created {} accounts {pool}N in {:.1?}", created.len(), setup_started.elapsed());
            self.pools.entry(pool).or_default().extend(created);
        }
        Ok(self.pools[pool][..count].to_vec())
    }

    /// The processes a measurement involves: the servers' (process ids) and what drives the load.
    pub fn subjects(&self, servers: &[u32], load: &'static str) -> BenchResult<Subjects> {
        Ok(Subjects {
            servers: servers.to_vec(),
            postmaster: self.cluster.postmaster_pid()?,
            url: self.cluster.url.clone(),
            load,
        })
    }
}

/// `bench-report.md` in the build's directory (`target/release/`), beside the benchmark's own binary.
fn report_path() -> BenchResult<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the benchmark's binary: {e}"))?;
    // The binary is target/release/deps/perf-<hash>.
    let dir = exe.parent().and_then(|deps| deps.parent()).ok_or("the benchmark's binary has no directory")?;
    Ok(dir.join("bench-report.md"))
}

/// A temporary directory for the run's files, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> BenchResult<Scratch> {
        let dir = std::env::temp_dir().join(format!("messaging-bench-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Raises this process's soft limit on open files to its hard limit (P6 holds 10,000 client sockets here);
/// the servers it starts inherit it and raise their own. Returns the limit now in force.
fn raise_open_files_limit() -> BenchResult<u64> {
    // SAFETY: getrlimit and setrlimit read and write one rlimit struct that lives across the calls.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(format!("getrlimit: {}", std::io::Error::last_os_error()));
        }
        // An unlimited hard limit still stops at the kernel's per-process ceiling.
        let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|n| n.trim().parse().ok());
        let wanted = if limit.rlim_max == libc::RLIM_INFINITY { ceiling.unwrap_or(1 << 20) } else { limit.rlim_max };
        if limit.rlim_cur < wanted {
            limit.rlim_cur = wanted;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(format!("setrlimit: {}", std::io::Error::last_os_error()));
            }
        }
        Ok(limit.rlim_cur)
    }
}
