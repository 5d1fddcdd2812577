//! The run's PostgreSQL: a private cluster from `scripts/pg.sh` with the durable defaults (fsync and
//! synchronous_commit on), the path of its tools (pgbench) and a client for the SQL the setups run directly.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use postgres::{Client, NoTls};

use crate::BenchResult;

/// A cluster, stopped (and its directory removed) on drop; `make bench`'s trap stops it too.
pub struct Cluster {
    script: PathBuf,
    pub dir: PathBuf,
    pub url: String,
}

impl Cluster {
    /// Starts a cluster in `BENCH_PG_DIR` (the Makefile's) or in a new temporary directory. `PG_FAST` is removed
    /// from the script's environment: fsync and synchronous commit stay on.
    pub fn start(repo: &Path) -> BenchResult<Cluster> {
        let dir = match std::env::var_os("BENCH_PG_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => std::env::temp_dir().join(format!("messaging-bench-{}", std::process::id())),
        };
        let mut cluster = Cluster { script: repo.join("scripts/pg.sh"), dir, url: String::new() };
        let output = Command::new(&cluster.script)
            .arg("start")
            .arg(&cluster.dir)
            .env_remove("PG_FAST")
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run scripts/pg.sh: {e}"))?;
        if !output.status.success() {
            return Err(format!("scripts/pg.sh start {} failed ({})", cluster.dir.display(), output.status));
        }
        cluster.url = String::from_utf8_lossy(&output.stdout).trim().to_string();
        Ok(cluster)
    }

    pub fn connect(&self) -> BenchResult<Client> {
        Client::connect(&self.url, NoTls).map_err(|e| format!("cannot connect to {}: {e}", self.url))
    }

    /// The postmaster's process id: its backends are its children.
    pub fn postmaster_pid(&self) -> BenchResult<u32> {
        let path = self.dir.join("data/postmaster.pid");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        text.lines().next().and_then(|line| line.trim().parse().ok()).ok_or(format!("no pid in {}", path.display()))
    }

    /// `PG_VERSION` of the data directory.
    pub fn version(&self) -> String {
        std::fs::read_to_string(self.dir.join("data/PG_VERSION")).map_or("unknown".into(), |v| v.trim().to_string())
    }

    /// libpq arguments that reach the cluster's unix socket as its superuser.
    pub fn libpq_args(&self) -> Vec<String> {
        let dir = self.dir.display().to_string();
        ["-h", &dir, "-p", "5432", "-U", "postgres", "messaging"].map(str::to_string).to_vec()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        match Command::new(&self.script).arg("stop").arg(&self.dir).status() {
            Ok(status) if status.success() => {
                let _ = std::fs::remove_dir_all(&self.dir);
            }
            outcome => eprintln!("warning: stopping the cluster in {} failed: {outcome:?}", self.dir.display()),
        }
    }
}

/// A PostgreSQL program from the server's own directory, as scripts/pg.sh finds it (`initdb` on the PATH, else
/// Debian's newest `/usr/lib/postgresql/*/bin`), so that Debian's version-guessing wrapper is not in the way.
pub fn tool(name: &str) -> PathBuf {
    let beside_initdb = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .ok()
        .and_then(|output| std::fs::canonicalize(String::from_utf8_lossy(&output.stdout).trim()).ok())
        .and_then(|initdb| initdb.parent().map(|dir| dir.join(name)));
    let debian = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|versions| {
        let mut dirs: Vec<PathBuf> = versions.filter_map(|v| Some(v.ok()?.path().join("bin").join(name))).collect();
        dirs.sort_by_key(|path| {
            path.components().nth(4).and_then(|v| v.as_os_str().to_str()?.parse::<u32>().ok()).unwrap_or(0)
        });
        dirs.pop()
    });
    [beside_initdb, debian].into_iter().flatten().find(|path| path.is_file()).unwrap_or_else(|| PathBuf::from(name))
}
