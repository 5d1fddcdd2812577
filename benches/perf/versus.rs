//! The shape P1, P2, P3, P7 and P9 share: wrk on the server, observed by the probe, against a baseline
//! (pgbench, or wrk on something else), in interleaved rounds.

use crate::probe::Usage;
use crate::report::{self, Compared, Round};
use crate::stats::{self, interleave};
use crate::{pgbench, wrk, BenchResult};

/// A baseline's measurement as a round's table shows it.
pub trait Described {
    fn describe(&self) -> String;
}

impl Described for wrk::Measured {
    fn describe(&self) -> String {
        wrk::Measured::describe(self)
    }
}

impl Described for pgbench::Measured {
    fn describe(&self) -> String {
        pgbench::Measured::describe(self)
    }
}

/// Every round's measurements, and what they add up to.
pub struct Versus<B> {
    pub ours: Vec<wrk::Measured>,
    pub baseline: Vec<B>,
    pub compared: Compared,
}

/// Runs `ours` and `baseline` in `rounds` interleaved rounds and compares `ours_figure` with `baseline_figure`;
/// each measurement comes with what the probe saw (`probe::observe`).
pub fn versus<B: Described>(
    rounds: usize,
    mut ours: impl FnMut() -> BenchResult<(wrk::Measured, Usage)>,
    mut baseline: impl FnMut() -> BenchResult<(B, Usage)>,
    ours_figure: fn(&wrk::Measured) -> f64,
    baseline_figure: fn(&B) -> f64,
) -> BenchResult<Versus<B>> {
    let pairs = interleave(rounds, |_| ours(), |_| baseline())?;
    let (mut our_runs, mut baseline_runs, mut table) = (Vec::new(), Vec::new(), Vec::new());
    for ((measured, ours_usage), (base, baseline_usage)) in pairs {
        table.push(Round {
            ours: ours_figure(&measured),
            ours_text: measured.describe(),
            ours_usage,
            baseline: baseline_figure(&base),
            baseline_text: base.describe(),
            baseline_usage,
        });
        our_runs.push(measured);
        baseline_runs.push(base);
    }
    Ok(Versus { ours: our_runs, baseline: baseline_runs, compared: report::compare(&table) })
}

/// The medians of wrk's figures over the rounds: requests per second, p50 and p99.
pub fn wrk_medians(measured: &[wrk::Measured]) -> String {
    let median = |figure: fn(&wrk::Measured) -> f64| {
        report::number(stats::median(&measured.iter().map(figure).collect::<Vec<_>>()))
    };
    format!(
        "{} req/s, p50 {} ms, p99 {} ms",
        median(|m| m.requests_per_sec),
        median(|m| m.p50_ms),
        median(|m| m.p99_ms)
    )
}
