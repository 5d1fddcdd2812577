//! Database-only baselines from pgbench: the statements a request runs, as prepared statements (`-M prepared`,
//! as the server prepares its own), from as many clients as the HTTP scenario has connections, on the same
//! durable cluster for the same time.
//!
//! The scripts (benches/pgbench/*.sql) find their own rows by `:client_id` on their first transaction
//! (`\gset`), so client N uses the chat and the session that connection N of the HTTP scenario uses.

use std::path::Path;
use std::process::Command;

use crate::cluster::{self, Cluster};
use crate::{report, BenchResult};

pub struct Load<'a> {
    pub script: &'a Path,
    pub clients: usize,
    pub secs: u64,
    /// Variables the script reads (`-D name=value`), besides `ready`.
    pub variables: &'a [(&'a str, String)],
}

#[derive(Clone, Copy)]
pub struct Measured {
    pub tps: f64,
    pub latency_ms: f64,
}

impl Measured {
    pub fn describe(&self) -> String {
        format!("{} tps, latency average {} ms", report::number(self.tps), report::number(self.latency_ms))
    }
}

pub fn run(cluster: &Cluster, load: &Load) -> BenchResult<Measured> {
    let mut command = Command::new(cluster::tool("pgbench"));
    command.args([
        "--no-vacuum",
        "--protocol=prepared",
        "--client",
        &load.clients.to_string(),
        "--jobs",
        &load.clients.min(2).to_string(),
        "--time",
        &load.secs.to_string(),
        // Each client looks up its own rows once, in its first transaction.
        "--define=ready=0",
    ]);
    for (name, value) in load.variables {
        command.arg(format!("--define={name}={value}"));
    }
    command.arg("--file").arg(load.script).args(cluster.libpq_args());
    let output = command.output().map_err(|e| format!("cannot run pgbench: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!("pgbench failed ({}): {text}{}", output.status, String::from_utf8_lossy(&output.stderr)));
    }
    parse(&text).map_err(|problem| format!("pgbench {}: {problem}\n{text}", load.script.display()))
}

fn parse(text: &str) -> BenchResult<Measured> {
    let line_after = |prefix: &str| text.lines().find_map(|line| line.trim().strip_prefix(prefix)).map(str::trim);
    let first_number = |rest: &str| rest.split_whitespace().next().and_then(|n| n.parse::<f64>().ok());
    if let Some(failed) = line_after("number of failed transactions:").filter(|rest| !rest.starts_with("0 ")) {
        return Err(format!("failed transactions: {failed}"));
    }
    Ok(Measured {
        tps: line_after("tps =").and_then(first_number).ok_or("no tps")?,
        latency_ms: line_after("latency average =").and_then(first_number).ok_or("no latency average")?,
    })
}
