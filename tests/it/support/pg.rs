//! PostgreSQL for tests: one cluster per run, one fresh database per test.
//!
//! `make test` starts a throwaway cluster and exports `DATABASE_URL`; a bare
//! `cargo test` gets a cluster started here, once per test process, that a
//! watchdog stops when the process exits (destructors of statics never run).
//! Every test database is cloned from a template migrated once per set of
//! migrations built into the binary; several test processes may race to
//! build it, so an advisory lock serializes building and cloning.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;

use messaging::migrate::{self, Source};
use postgres::{Client, NoTls};
use sha2::{Digest, Sha256};

use super::client::random_hex;

/// Key of the advisory lock that guards building and cloning the template.
const TEMPLATE_LOCK: i64 = 0x6d65_7373_6167_6531; // "message1"

/// The cluster the whole test process shares.
struct Shared {
    admin_url: String,
    /// Dropping this when the process exits closes the watchdog's stdin.
    _watchdog: Option<Watchdog>,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

/// The admin URL: `DATABASE_URL` when set, else a cluster started for this process.
pub fn admin_url() -> &'static str {
    &SHARED
        .get_or_init(|| match std::env::var("DATABASE_URL") {
            Ok(url) if !url.trim().is_empty() => Shared { admin_url: url, _watchdog: None },
            _ => {
                let dir = temp_dir("shared");
                // The watchdog exists before the cluster, so a failed start still cleans up.
                let watchdog = Watchdog::spawn(&dir);
                let admin_url = pg_sh("start", &dir);
                Shared { admin_url, _watchdog: Some(watchdog) }
            }
        })
        .admin_url
}

/// Creates a database cloned from the migrated template and returns its URL.
pub fn fresh_database() -> String {
    let admin_url = admin_url();
    let template = template_name();
    let database = format!("test_{}", random_hex(8));
    let mut admin = connect(admin_url);
    admin.execute("SELECT pg_advisory_lock($1)", &[&TEMPLATE_LOCK]).expect("take the template lock");
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&template])
        .expect("look up the template")
        .is_some();
    if !exists {
        build_template(&mut admin, admin_url, &template);
    }
    // Still under the lock: cloning fails while anyone is connected to the template.
    admin
        .batch_execute(&format!("CREATE DATABASE {database} TEMPLATE {template}"))
        .unwrap_or_else(|e| panic!("create database {database} from {template}: {}", db_error(&e)));
    admin.execute("SELECT pg_advisory_unlock($1)", &[&TEMPLATE_LOCK]).expect("release the template lock");
    with_database(admin_url, &database)
}

/// Builds the template under a temporary name, so a half-built one is never cloned.
fn build_template(admin: &mut Client, admin_url: &str, template: &str) {
    let building = format!("{template}_building");
    // One statement per call: a multi-statement query is one transaction block,
    // and neither DROP DATABASE nor CREATE DATABASE may run inside one.
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {building}"))
        .unwrap_or_else(|e| panic!("drop a stale {building}: {}", db_error(&e)));
    admin
        .batch_execute(&format!("CREATE DATABASE {building}"))
        .unwrap_or_else(|e| panic!("create {building}: {}", db_error(&e)));
    let mut client = connect(&with_database(admin_url, &building));
    migrate(&mut client, &building);
    client.close().expect("close the template connection");
    admin
        .batch_execute(&format!("ALTER DATABASE {building} RENAME TO {template}"))
        .unwrap_or_else(|e| panic!("rename {building} to {template}: {}", db_error(&e)));
}

fn migrate(client: &mut Client, what: &str) {
    if let Err(e) = migrate::up(client, &Source::Embedded) {
        panic!("migrating {what} failed: {e}");
    }
}

/// `messaging_tpl_<12 hex>`: a digest of every migration built into the binary, name and text.
fn template_name() -> String {
    let files = Source::Embedded.files().unwrap_or_else(|e| panic!("read the embedded migrations: {e}"));
    let mut hasher = Sha256::new();
    for (file_name, text) in files {
        hasher.update(file_name.as_bytes());
        hasher.update([0]);
        hasher.update(text.as_bytes());
        hasher.update([0]);
    }
    let digest: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("messaging_tpl_{}", &digest[..12])
}

/// Connects, with the URL in the failure message.
pub fn connect(url: &str) -> Client {
    Client::connect(url, NoTls).unwrap_or_else(|e| panic!("connect to {url}: {}", db_error(&e)))
}

/// The server's message when there is one: `postgres::Error`'s Display says only "db error".
pub fn db_error(error: &postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => db.to_string(),
        None => match std::error::Error::source(error) {
            Some(cause) => format!("{error}: {cause}"),
            None => error.to_string(),
        },
    }
}

/// Replaces the database name of a `postgresql://…/name?…` URL (or a
/// `key=value` conninfo string), keeping the user, host and query.
pub fn with_database(url: &str, database: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        let kept: Vec<&str> = url.split_whitespace().filter(|pair| !pair.starts_with("dbname=")).collect();
        return format!("{} dbname={database}", kept.join(" "));
    };
    let rest_start = scheme_end + 3;
    let rest = &url[rest_start..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let after_authority = &rest[authority_end..];
    let query = after_authority.find('?').map_or("", |q| &after_authority[q..]);
    format!("{}{}/{}{}", &url[..rest_start], &rest[..authority_end], database, query)
}

/// A short directory under /tmp: the socket path must stay under 107 bytes.
fn temp_dir(what: &str) -> PathBuf {
    let dir = PathBuf::from(format!("/tmp/msg-it-{}-{what}-{}", std::process::id(), random_hex(4)));
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

fn pg_sh_path() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg.sh")).to_path_buf()
}

/// Runs `scripts/pg.sh COMMAND DIR` and returns its stdout, trimmed.
///
/// Output goes through files, not pipes: a server that inherited a pipe
/// would keep it open and a read to EOF would never end.
fn pg_sh(command: &str, dir: &Path) -> String {
    let out_path = dir.with_extension(format!("{command}.out"));
    let err_path = dir.with_extension(format!("{command}.err"));
    let out = File::create(&out_path).expect("create pg.sh stdout file");
    let err = File::create(&err_path).expect("create pg.sh stderr file");
    let status = Command::new(pg_sh_path())
        .arg(command)
        .arg(dir)
        .env("PG_FAST", "1")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .unwrap_or_else(|e| panic!("run {}: {e}", pg_sh_path().display()));
    let mut stdout = String::new();
    let mut stderr = String::new();
    File::open(&out_path).and_then(|mut f| f.read_to_string(&mut stdout)).ok();
    File::open(&err_path).and_then(|mut f| f.read_to_string(&mut stderr)).ok();
    let _ = fs::remove_file(&out_path);
    let _ = fs::remove_file(&err_path);
    if !status.success() {
        panic!("scripts/pg.sh {command} {} failed ({status}):\n{stderr}\n{stdout}", dir.display());
    }
    stdout.trim().lines().last().unwrap_or("").trim().to_string()
}

/// A shell that blocks on stdin, then stops the cluster in `dir` and removes it.
///
/// Its stdin is a pipe whose only write end we hold: when this process exits,
/// however it exits, the pipe closes and the cluster goes with it. It runs in
/// its own process group so that a Ctrl-C aimed at the tests does not kill it
/// before it has cleaned up.
struct Watchdog {
    stdin: Option<ChildStdin>,
    child: Child,
}

impl Watchdog {
    fn spawn(dir: &Path) -> Watchdog {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"cat >/dev/null; "$0" stop "$1" >/dev/null 2>&1; rm -rf "$1""#)
            .arg(pg_sh_path())
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn the cluster watchdog");
        let stdin = child.stdin.take();
        Watchdog { stdin, child }
    }

    /// Closes the pipe and waits until the cluster is stopped and removed.
    fn finish(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// A cluster of one's own, for tests that stop the database (readyz).
///
/// Its `messaging` database is migrated directly. Dropping it stops the
/// cluster and removes its directory.
pub struct PrivateCluster {
    dir: PathBuf,
    url: String,
    watchdog: Watchdog,
}

#[allow(dead_code)]
impl PrivateCluster {
    /// Starts a new cluster in a temporary directory and migrates its database.
    pub fn start() -> PrivateCluster {
        let dir = temp_dir("private");
        let watchdog = Watchdog::spawn(&dir);
        let url = pg_sh("start", &dir);
        let mut client = connect(&url);
        migrate(&mut client, &url);
        client.close().expect("close the migration connection");
        PrivateCluster { dir, url, watchdog }
    }

    /// The URL of the cluster's migrated `messaging` database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops the server (fast shutdown); the data stays.
    pub fn stop(&self) {
        pg_sh("stop", &self.dir);
    }

    /// Starts the stopped server again on the same socket.
    pub fn start_again(&self) {
        let url = pg_sh("start", &self.dir);
        assert_eq!(url, self.url, "the restarted cluster has another URL");
    }
}

impl PrivateCluster {
    /// Stops every process of the cluster with SIGSTOP, the way a frozen
    /// host looks from outside: sockets stay open and nothing answers.
    /// Dropping the guard thaws them.
    pub fn freeze(&self) -> Frozen {
        let pid_file = self.dir.join("data/postmaster.pid");
        let text = fs::read_to_string(&pid_file).unwrap_or_else(|e| panic!("read {}: {e}", pid_file.display()));
        let postmaster = text.lines().next().unwrap_or("").trim().to_string();
        let children = fs::read_to_string(format!("/proc/{postmaster}/task/{postmaster}/children"))
            .unwrap_or_else(|e| panic!("list the children of postmaster {postmaster}: {e}"));
        // The postmaster first, so that it forks no one new meanwhile.
        let mut pids = vec![postmaster];
        pids.extend(children.split_whitespace().map(String::from));
        kill("STOP", &pids);
        Frozen { pids }
    }
}

/// A frozen cluster's processes, sent SIGCONT on drop.
#[allow(dead_code)]
pub struct Frozen {
    pids: Vec<String>,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        kill("CONT", &self.pids);
    }
}

/// `kill -SIGNAL PIDS…`, by process id only.
fn kill(signal: &str, pids: &[String]) {
    let status = Command::new("kill").arg(format!("-{signal}")).args(pids).status();
    assert!(status.as_ref().is_ok_and(|s| s.success()), "kill -{signal} {pids:?} failed: {status:?}");
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        self.watchdog.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn with_database_keeps_user_host_and_query() {
        assert_eq!(
            with_database("postgresql://postgres@localhost/messaging?host=/tmp/x", "t1"),
            "postgresql://postgres@localhost/t1?host=/tmp/x"
        );
        assert_eq!(with_database("postgres://u:p@h:5432/db", "t2"), "postgres://u:p@h:5432/t2");
        assert_eq!(with_database("postgresql://h", "t3"), "postgresql://h/t3");
        assert_eq!(with_database("postgresql://h?host=/s", "t4"), "postgresql://h/t4?host=/s");
        assert_eq!(with_database("host=/s dbname=x user=p", "t5"), "host=/s user=p dbname=t5");
    }
}
