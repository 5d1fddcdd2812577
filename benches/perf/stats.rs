//! Medians, percentiles and the pairing of interleaved rounds.
//!
//! Timings on a shared 2-core machine drift by tens of percent within minutes, so every figure is taken in
//! rounds that alternate ours and the baseline (A, B, A, B, …), and a ratio is the median of the rounds' own
//! ratios: each compares two measurements taken seconds apart.

use crate::BenchResult;

/// Median, 99th percentile (nearest rank) and maximum of a sample.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub count: usize,
    pub median: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(mut values: Vec<f64>) -> Summary {
        values.sort_by(f64::total_cmp);
        let rank = |fraction: f64| {
            let index = ((fraction * values.len() as f64).ceil() as usize).saturating_sub(1);
            values.get(index).copied().unwrap_or(f64::NAN)
        };
        Summary { count: values.len(), median: rank(0.5), p99: rank(0.99), max: rank(1.0) }
    }
}

/// The median of some figures (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Runs `ours` and `baseline` alternately, `rounds` times each, starting with ours.
pub fn interleave<A, B>(
    rounds: usize,
    mut ours: impl FnMut(usize) -> BenchResult<A>,
    mut baseline: impl FnMut(usize) -> BenchResult<B>,
) -> BenchResult<Vec<(A, B)>> {
    let mut pairs = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let a = ours(round)?;
        let b = baseline(round)?;
        pairs.push((a, b));
    }
    Ok(pairs)
}

/// The median of the per-round ratios, with their range.
#[derive(Clone, Copy, Debug)]
pub struct Ratio {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Ratio {
    /// `ours[i] / baseline[i]` for each round.
    pub fn of_rounds(ours: &[f64], baseline: &[f64]) -> Ratio {
        let ratios: Vec<f64> = ours.iter().zip(baseline).map(|(a, b)| a / b).collect();
        Ratio {
            median: median(&ratios),
            min: ratios.iter().copied().fold(f64::INFINITY, f64::min),
            max: ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }
}

/// The index of the figure nearest the median: the round whose circumstances describe the median.
pub fn median_index(values: &[f64]) -> usize {
    let middle = median(values);
    (0..values.len()).min_by(|&a, &b| (values[a] - middle).abs().total_cmp(&(values[b] - middle).abs())).unwrap_or(0)
}
