//! Failed-login limits, after OWASP's advice that an attacker elsewhere must
//! not be able to lock a user out: failures count per (login, client
//! address) pair, 10 in `WINDOW`, and per client address, 100 in `WINDOW`,
//! never per login alone. Past either, attempts get `429` until the oldest
//! failure that counts ages out, so the right password from an address under
//! both limits always gets through.
//!
//! The counts live in this process's memory: with several processes behind
//! one address the limit is per process. Each map is bounded, so a flood of
//! distinct logins or addresses costs a fixed amount of memory. The rules are
//! pure (`LoginFailures`, time a parameter); `LoginLimiter` adds the lock.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a failure counts.
pub const WINDOW: Duration = Duration::from_secs(300);
/// Failures of one login from one address that lock that pair.
pub const PAIR_LIMIT: usize = 10;
/// Failures from one address, for any logins, that lock the address.
pub const ADDRESS_LIMIT: usize = 100;
const MAX_PAIRS: usize = 100_000;
/// Fewer addresses than pairs: each may hold 100 times.
const MAX_ADDRESSES: usize = 10_000;

/// The failure limits, shared by every worker.
pub struct LoginLimiter {
    enabled: bool,
    failures: Mutex<LoginFailures>,
}

impl LoginLimiter {
    pub fn new(enabled: bool) -> LoginLimiter {
        LoginLimiter { enabled, failures: Mutex::new(LoginFailures::new()) }
    }

    /// `Err(seconds to wait)` when `address`, or `login` from `address`, is
    /// over its limit. `login` is `None` for a login that names no account
    /// (too long to be one), which counts against the address only.
    pub fn check(&self, login: Option<&str>, address: &str) -> Result<(), u64> {
        if !self.enabled {
            return Ok(());
        }
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        match failures.wait(login, address, Instant::now()) {
            None => Ok(()),
            Some(wait) => Err(wait.as_secs().max(1)),
        }
    }

    /// Records one failed attempt.
    pub fn record_failure(&self, login: Option<&str>, address: &str) {
        if self.enabled {
            let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
            failures.record(login, address, Instant::now());
        }
    }
}

/// The rules themselves: which failures count, and for how long.
struct LoginFailures {
    pairs: Windows,
    addresses: Windows,
}

impl LoginFailures {
    fn new() -> LoginFailures {
        LoginFailures {
            pairs: Windows::new(PAIR_LIMIT, MAX_PAIRS),
            addresses: Windows::new(ADDRESS_LIMIT, MAX_ADDRESSES),
        }
    }

    /// How long until an attempt may go through, or `None` when it may now.
    fn wait(&mut self, login: Option<&str>, address: &str, now: Instant) -> Option<Duration> {
        let pair = login.and_then(|login| self.pairs.wait(&pair_key(login, address), now));
        pair.max(self.addresses.wait(address, now))
    }

    fn record(&mut self, login: Option<&str>, address: &str, now: Instant) {
        if let Some(login) = login {
            self.pairs.record(pair_key(login, address), now);
        }
        self.addresses.record(address.to_string(), now);
    }
}

/// A login, compared without regard to case, from an address (which holds no space).
fn pair_key(login: &str, address: &str) -> String {
    format!("{address} {}", login.to_lowercase())
}

/// The failures within `WINDOW` of each key, at most `limit` kept per key.
struct Windows {
    limit: usize,
    max_keys: usize,
    times: HashMap<String, VecDeque<Instant>>,
}

impl Windows {
    fn new(limit: usize, max_keys: usize) -> Windows {
        Windows { limit, max_keys, times: HashMap::new() }
    }

    fn wait(&mut self, key: &str, now: Instant) -> Option<Duration> {
        let times = self.times.get_mut(key)?;
        forget_old(times, now);
        let oldest = *times.front()?;
        (times.len() >= self.limit).then(|| WINDOW.saturating_sub(now.duration_since(oldest)))
    }

    fn record(&mut self, key: String, now: Instant) {
        if !self.times.contains_key(&key) && self.times.len() >= self.max_keys {
            self.make_room(now);
        }
        let times = self.times.entry(key).or_default();
        forget_old(times, now);
        times.push_back(now);
        if times.len() > self.limit {
            times.pop_front();
        }
    }

    /// Forgets keys with no failure in the window, then keys under their
    /// limit, so a flood of new keys cannot lift a limit that applies; only
    /// when every key is limited does it forget them all.
    fn make_room(&mut self, now: Instant) {
        self.times.retain(|_, times| {
            forget_old(times, now);
            !times.is_empty()
        });
        if self.times.len() >= self.max_keys {
            let limit = self.limit;
            self.times.retain(|_, times| times.len() >= limit);
        }
        if self.times.len() >= self.max_keys {
            self.times.clear();
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

    const SECOND: Duration = Duration::from_secs(1);

    fn fail(failures: &mut LoginFailures, n: usize, login: Option<&str>, address: &str, now: Instant) {
        for _ in 0..n {
            failures.record(login, address, now);
        }
    }

    #[test]
    fn ten_failures_lock_the_login_at_that_address_only() {
        let mut failures = LoginFailures::new();
        let now = Instant::now();
        fail(&mut failures, 9, Some("alice"), "1.1.1.1", now);
        assert_eq!(failures.wait(Some("alice"), "1.1.1.1", now), None, "nine failures still let a try through");

        failures.record(Some("Alice"), "1.1.1.1", now);

        let wait = failures.wait(Some("ALICE"), "1.1.1.1", now + SECOND);
        assert_eq!(wait, Some(WINDOW - SECOND), "the login is compared without regard to case");
        assert_eq!(failures.wait(Some("alice"), "2.2.2.2", now), None, "another address is not locked out");
        assert_eq!(failures.wait(Some("bob"), "1.1.1.1", now), None, "another login from that address is not");
    }

    #[test]
    fn a_hundred_failures_lock_the_address_for_every_login() {
        let mut failures = LoginFailures::new();
        let now = Instant::now();
        for idx in 0..99 {
            failures.record(Some(&format!("user{idx}")), "1.1.1.1", now);
        }
        assert_eq!(failures.wait(Some("victim"), "1.1.1.1", now), None, "99 failures leave the address open");

        failures.record(None, "1.1.1.1", now);

        assert!(failures.wait(Some("victim"), "1.1.1.1", now).is_some(), "the 100th locks the address");
        assert!(failures.wait(None, "1.1.1.1", now).is_some(), "for logins that name no account too");
        assert_eq!(failures.wait(Some("victim"), "2.2.2.2", now), None, "the victim elsewhere is not locked out");
    }

    #[test]
    fn a_login_alone_is_never_locked_however_many_addresses_fail_it() {
        let mut failures = LoginFailures::new();
        let now = Instant::now();
        for idx in 0..1000 {
            fail(&mut failures, 10, Some("victim"), &format!("10.0.{}.{}", idx / 256, idx % 256), now);
        }
        assert_eq!(failures.wait(Some("victim"), "192.0.2.1", now), None);
    }

    #[test]
    fn failures_age_out_after_the_window_oldest_first() {
        let mut failures = LoginFailures::new();
        let start = Instant::now();
        fail(&mut failures, 5, Some("alice"), "1.1.1.1", start);
        fail(&mut failures, 5, Some("alice"), "1.1.1.1", start + 60 * SECOND);
        assert_eq!(failures.wait(Some("alice"), "1.1.1.1", start + 60 * SECOND), Some(WINDOW - 60 * SECOND));
        assert_eq!(failures.wait(Some("alice"), "1.1.1.1", start + WINDOW), None, "the first five aged out");
        fail(&mut failures, 5, Some("alice"), "1.1.1.1", start + WINDOW);
        let wait = failures.wait(Some("alice"), "1.1.1.1", start + WINDOW + SECOND);
        assert_eq!(wait, Some(60 * SECOND - SECOND), "until the oldest that counts is 5 minutes old");
    }

    #[test]
    fn a_full_map_forgets_unlimited_keys_before_limited_ones() {
        let mut windows = Windows::new(2, 3);
        let now = Instant::now();
        for _ in 0..2 {
            windows.record("limited".into(), now);
        }
        windows.record("one".into(), now);
        windows.record("two".into(), now);

        windows.record("new".into(), now);

        assert!(windows.wait("limited", now).is_some(), "the limit on a key under attack survives a flood");
        assert!(windows.times.contains_key("new"));
        assert!(!windows.times.contains_key("one") && !windows.times.contains_key("two"));
        assert!(windows.times.len() <= 3);
    }

    #[test]
    fn a_disabled_limiter_never_limits() {
        let limiter = LoginLimiter::new(false);
        for _ in 0..200 {
            limiter.record_failure(Some("k"), "a");
        }
        assert_eq!(limiter.check(Some("k"), "a"), Ok(()));
    }
}
