//! What a run was asked for, from the environment `make bench` passes on: which scenarios (`BENCH=P1,P3`),
//! how long one measurement lasts (`BENCH_SECS`), how many interleaved rounds (`BENCH_ROUNDS`) and the server's
//! worker count (`BENCH_WORKERS`, else the server's own default).

use crate::BenchResult;

/// The performance issue's scenarios, and P11 from the reactions issue (main.rs's `GROUPS` says in which order they run).
pub const SCENARIOS: [&str; 11] = ["P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "P9", "P10", "P11"];

/// Seconds per measurement: 3 rounds of every scenario and its baseline fit in the 10 minutes.
const DEFAULT_SECS: u64 = 4;
/// The issue asks for at least 3 rounds; fewer are for development only.
const DEFAULT_ROUNDS: usize = 3;

pub struct Options {
    selected: Vec<&'static str>,
    pub secs: u64,
    pub rounds: usize,
    /// `WORKERS` for every server the run starts; `None` leaves the server's default.
    pub workers: Option<usize>,
}

impl Options {
    pub fn from_env() -> BenchResult<Options> {
        let var = |name: &str| std::env::var(name).ok().filter(|value| !value.trim().is_empty());
        let selected = match var("BENCH") {
            None => SCENARIOS.to_vec(),
            Some(list) => {
                let wanted: Vec<String> = list.split(',').map(|id| id.trim().to_ascii_uppercase()).collect();
                if let Some(unknown) = wanted.iter().find(|id| !SCENARIOS.contains(&id.as_str())) {
                    return Err(format!("BENCH names {unknown}, which is not one of {}", SCENARIOS.join(",")));
                }
                SCENARIOS.iter().copied().filter(|id| wanted.iter().any(|w| w == id)).collect()
            }
        };
        let number = |name: &str, default: u64| -> BenchResult<u64> {
            match var(name) {
                None => Ok(default),
                Some(value) => match value.trim().parse::<u64>() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err(format!("{name} must be a positive whole number, not {value:?}")),
                },
            }
        };
        let workers = match var("BENCH_WORKERS") {
            None => None,
            Some(_) => Some(number("BENCH_WORKERS", 0)? as usize),
        };
        Ok(Options {
            selected,
            secs: number("BENCH_SECS", DEFAULT_SECS)?,
            rounds: number("BENCH_ROUNDS", DEFAULT_ROUNDS as u64)? as usize,
            workers,
        })
    }

    pub fn runs(&self, id: &str) -> bool {
        self.selected.contains(&id)
    }

    pub fn selected(&self) -> &[&'static str] {
        &self.selected
    }

    /// Whether every scenario runs: only such a run rewrites BENCHMARKS.md.
    pub fn is_full(&self) -> bool {
        self.selected.len() == SCENARIOS.len()
    }

    /// The command that reproduces this run, for BENCHMARKS.md.
    pub fn command(&self) -> String {
        let mut command = String::from("make bench");
        for name in ["BENCH", "BENCH_SECS", "BENCH_ROUNDS", "BENCH_WORKERS"] {
            if let Some(value) = std::env::var(name).ok().filter(|value| !value.trim().is_empty()) {
                command.push_str(&format!(" {name}={value}"));
            }
        }
        command
    }
}
