//! Failed-login limits: more than `MAX_FAILURES` in `WINDOW` for one key
//! (a login or a client address) gets `429` until the oldest failure ages out.
//!
//! The counts live in this process's memory: with several processes behind
//! one address the limit is per process. The map is bounded (`MAX_KEYS`), so
//! a flood of distinct logins costs a fixed amount of memory.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

const MAX_FAILURES: usize = 10;
const WINDOW: Duration = Duration::from_secs(300);
const MAX_KEYS: usize = 100_000;

pub struct FailureLimiter {
    enabled: bool,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl FailureLimiter {
    pub fn new(enabled: bool) -> FailureLimiter {
        FailureLimiter { enabled, failures: Mutex::new(HashMap::new()) }
    }

    /// `Err(seconds to wait)` when any key is over its limit.
    pub fn check(&self, keys: &[&str]) -> Result<(), u64> {
        if !self.enabled {
            return Ok(());
        }
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let mut wait = Duration::ZERO;
        for key in keys {
            if let Some(times) = failures.get_mut(*key) {
                forget_old(times, now);
                if times.len() >= MAX_FAILURES {
                    let oldest = times.front().copied().unwrap_or(now);
                    wait = wait.max(WINDOW.saturating_sub(now - oldest));
                }
            }
        }
        if wait.is_zero() {
            Ok(())
        } else {
            Err(wait.as_secs().max(1))
        }
    }

    /// Records one failed attempt against each key.
    pub fn record_failure(&self, keys: &[&str]) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if failures.len() >= MAX_KEYS {
            failures.retain(|_, times| {
                forget_old(times, now);
                !times.is_empty()
            });
            if failures.len() >= MAX_KEYS {
                // Still full of live keys: keep those that are limited now, so a
                // flood of new keys cannot lift the limit on a login under attack.
                failures.retain(|_, times| times.len() >= MAX_FAILURES);
            }
            if failures.len() >= MAX_KEYS {
                failures.clear();
            }
        }
        for key in keys {
            let times = failures.entry((*key).to_string()).or_default();
            forget_old(times, now);
            times.push_back(now);
            if times.len() > MAX_FAILURES {
                times.pop_front();
            }
        }
    }
}

fn forget_old(times: &mut VecDeque<Instant>, now: Instant) {
    while times.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
        times.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eleventh_attempt_after_ten_failures_waits() {
        let limiter = FailureLimiter::new(true);
        for _ in 0..10 {
            assert_eq!(limiter.check(&["login:a", "ip:1"]), Ok(()));
            limiter.record_failure(&["login:a", "ip:1"]);
        }
        let wait = limiter.check(&["login:a", "ip:2"]).unwrap_err();
        assert!((1..=300).contains(&wait), "{wait}");
        assert_eq!(limiter.check(&["login:b", "ip:2"]), Ok(()));
    }

    #[test]
    fn a_disabled_limiter_never_limits() {
        let limiter = FailureLimiter::new(false);
        for _ in 0..20 {
            limiter.record_failure(&["k"]);
        }
        assert_eq!(limiter.check(&["k"]), Ok(()));
    }
}
