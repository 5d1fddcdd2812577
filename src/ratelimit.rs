//! Every rate limit's rules: failed logins, token buckets (messages per
//! user, sign-ups per address, frames per WebSocket) and counts of what a key
//! holds open (WebSockets per user and per address, handshakes per address).
//!
//! Failed logins follow OWASP's advice that an attacker elsewhere must not
//! be able to lock a user out: failures count per (login, client address)
//! pair, 10 in `WINDOW`, and per client address, 100 in `WINDOW`, never per
//! login alone. A wrong current password at a password change counts as a
//! failed login under both of the account's names, its username and its
//! email, and is refused while either is locked; a login counts under the
//! name it gave only, so nothing here ties a username to its email for
//! someone who does not know the password. Past either limit, attempts get
//! `429` until the oldest failure that counts ages out, so the right password
//! from an address under both limits always gets through.
//!
//! Everything lives in this process's memory, so with several processes the
//! limits are per process; every map is bounded. The rules are pure (time is
//! a parameter); the shared types add one lock each, never held across code
//! that can panic.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
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

/// The longest login that can name an account: an email of 254 characters, in UTF-8.
pub const MAX_LOGIN_BYTES: usize = 254 * 4;

/// The failure limits, shared by every worker.
pub struct LoginLimiter {
    enabled: bool,
    failures: Mutex<LoginFailures>,
}

impl LoginLimiter {
    pub fn new(enabled: bool) -> LoginLimiter {
        LoginLimiter { enabled, failures: Mutex::new(LoginFailures::new()) }
    }

    /// `Err(seconds to wait)` when `address`, or any of `logins` from
    /// `address`, is over its limit. `logins` is empty for a login too long
    /// to name an account, which counts against the address only.
    pub fn check(&self, logins: &[&str], address: &str) -> Result<(), u64> {
        if !self.enabled {
            return Ok(());
        }
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        match failures.wait(logins, address, Instant::now()) {
            None => Ok(()),
            Some(wait) => Err(wait.as_secs().max(1)),
        }
    }

    /// Records one failed attempt under each of `logins` and once against `address`.
    pub fn record_failure(&self, logins: &[&str], address: &str) {
        if self.enabled {
            let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
            failures.record(logins, address, Instant::now());
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
    fn wait(&mut self, logins: &[&str], address: &str, now: Instant) -> Option<Duration> {
        let pairs = logins.iter().filter_map(|login| self.pairs.wait(&pair_key(login, address), now)).max();
        pairs.max(self.addresses.wait(address, now))
    }

    fn record(&mut self, logins: &[&str], address: &str, now: Instant) {
        for login in logins {
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

/// A rate: `count` events per `per` on average, and up to `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
    pub burst: u32,
}

impl Rate {
    fn tokens_per_sec(&self) -> f64 {
        f64::from(self.count) / self.per.as_secs_f64()
    }
}

/// A token bucket: holds at most `burst` tokens, refills at the rate, and
/// each event takes one.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    pub fn full(rate: Rate, now: Instant) -> TokenBucket {
        TokenBucket { tokens: f64::from(rate.burst), updated: now }
    }

    /// Takes a token, or says how long until there is one.
    pub fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - self.tokens) / rate.tokens_per_sec()))
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.tokens_per_sec()).min(f64::from(rate.burst));
        self.updated = self.updated.max(now);
    }

    fn is_full(&self, rate: Rate) -> bool {
        self.tokens >= f64::from(rate.burst)
    }
}

/// Keys with a bucket at most: a flood of new keys costs a bounded amount.
const MAX_BUCKETS: usize = 100_000;

/// One token bucket per key (a user, an address), shared by every thread.
pub struct Buckets<K> {
    rate: Option<Rate>,
    buckets: Mutex<HashMap<K, TokenBucket>>,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    /// Buckets at `rate`; with `enabled` false, `take` always succeeds.
    pub fn new(rate: Rate, enabled: bool) -> Buckets<K> {
        Buckets { rate: enabled.then_some(rate), buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one of `key`'s tokens, or `Err(whole seconds to wait, at least 1)`.
    pub fn take(&self, key: &K) -> Result<(), u64> {
        let Some(rate) = self.rate else { return Ok(()) };
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        take_from(&mut buckets, rate, key, Instant::now()).map_err(|wait| wait.as_secs_f64().ceil().max(1.0) as u64)
    }
}

/// The rule of `Buckets::take`: a key without a bucket has a full one. A full
/// bucket says nothing a missing one does not, so when the map is full those
/// are forgotten first; if every bucket is in use, all are.
fn take_from<K: Hash + Eq + Clone>(
    buckets: &mut HashMap<K, TokenBucket>,
    rate: Rate,
    key: &K,
    now: Instant,
) -> Result<(), Duration> {
    if !buckets.contains_key(key) && buckets.len() >= MAX_BUCKETS {
        buckets.retain(|_, bucket| {
            bucket.refill(rate, now);
            !bucket.is_full(rate)
        });
        if buckets.len() >= MAX_BUCKETS {
            buckets.clear();
        }
    }
    buckets.entry(key.clone()).or_insert_with(|| TokenBucket::full(rate, now)).take(rate, now)
}

/// How many of something each key holds open (WebSockets of a user, say),
/// against one limit per key. The map holds only keys that hold something.
pub struct Occupancy<K> {
    limit: Option<usize>,
    held: Mutex<HashMap<K, usize>>,
}

/// One place held in an `Occupancy`, given back when dropped.
pub struct Held<K: Hash + Eq> {
    occupancy: Arc<Occupancy<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> Occupancy<K> {
    /// At most `limit` per key; with `enabled` false, no limit and no counting.
    pub fn new(limit: usize, enabled: bool) -> Arc<Occupancy<K>> {
        Arc::new(Occupancy { limit: enabled.then_some(limit), held: Mutex::new(HashMap::new()) })
    }

    /// A place for `key`, or `None` when it already holds `limit`.
    pub fn enter(self: &Arc<Self>, key: K) -> Option<Held<K>> {
        if let Some(limit) = self.limit {
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            if !take_place(&mut held, limit, &key) {
                return None;
            }
        }
        Some(Held { occupancy: self.clone(), key })
    }
}

impl<K: Hash + Eq> Drop for Held<K> {
    fn drop(&mut self) {
        if self.occupancy.limit.is_some() {
            let mut held = self.occupancy.held.lock().unwrap_or_else(PoisonError::into_inner);
            give_back(&mut held, &self.key);
        }
    }
}

/// The rule of `Occupancy::enter`.
fn take_place<K: Hash + Eq + Clone>(held: &mut HashMap<K, usize>, limit: usize, key: &K) -> bool {
    let count = held.entry(key.clone()).or_insert(0);
    if *count >= limit {
        return false;
    }
    *count += 1;
    true
}

fn give_back<K: Hash + Eq>(held: &mut HashMap<K, usize>, key: &K) {
    if let Some(count) = held.get_mut(key) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            held.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn fail(failures: &mut LoginFailures, n: usize, logins: &[&str], address: &str, now: Instant) {
        for _ in 0..n {
            failures.record(logins, address, now);
        }
    }

    #[test]
    fn ten_failures_lock_the_login_at_that_address_only() {
        let mut failures = LoginFailures::new();
        let now = Instant::now();
        fail(&mut failures, 9, &["alice"], "1.1.1.1", now);
        assert_eq!(failures.wait(&["alice"], "1.1.1.1", now), None, "nine failures still let a try through");

        failures.record(&["Alice"], "1.1.1.1", now);

        let wait = failures.wait(&["ALICE"], "1.1.1.1", now + SECOND);
        assert_eq!(wait, Some(WINDOW - SECOND), "the login is compared without regard to case");
        assert_eq!(failures.wait(&["alice"], "2.2.2.2", now), None, "another address is not locked out");
        assert_eq!(failures.wait(&["bob"], "1.1.1.1", now), None, "another login from that address is not");
    }

    #[test]
    fn a_hundred_failures_lock_the_address_for_every_login() {
        let mut failures = LoginFailures::new();
        let now = Instant::now();
        for idx in 0..99 {
            failures.record(&[format!("user{idx}").as_str()], "1.1.1.1", now);
        }
        assert_eq!(failures.wait(&["victim"], "1.1.1.1", now), None, "99 failures leave the address open");

        failures.record(&[], "1.1.1.1", now);

        assert!(failures.wait(&["victim"], "1.1.1.1", now).is_some(), "the 100th locks the address");
        assert!(failures.wait(&[], "1.1.1.1", now).is_some(), "for logins that name no account too");
        assert_eq!(failures.wait(&["victim"], "2.2.2.2", now), None, "the victim elsewhere is not locked out");
    }

    #[test]
    fn a_login_alone_is_never_locked_however_many_addresses_fail_it() {
        let mut failures = LoginFailures::new();
        let now = Instant::now();
        for idx in 0..1000 {
            fail(&mut failures, 10, &["victim"], &format!("10.0.{}.{}", idx / 256, idx % 256), now);
        }
        assert_eq!(failures.wait(&["victim"], "192.0.2.1", now), None);
    }

    #[test]
    fn a_failure_under_several_names_counts_under_each_and_once_for_the_address() {
        let mut failures = LoginFailures::new();
        let now = Instant::now();
        // A wrong current password: the account's username and email both.
        fail(&mut failures, 9, &["alice", "alice@example.com"], "1.1.1.1", now);
        assert_eq!(failures.wait(&["Alice"], "1.1.1.1", now), None, "nine failures still let a try through");
        failures.record(&["alice", "alice@example.com"], "1.1.1.1", now);
        assert!(failures.wait(&["ALICE"], "1.1.1.1", now).is_some(), "the username is locked");
        assert!(failures.wait(&["Alice@Example.com"], "1.1.1.1", now).is_some(), "and the email");
        fail(&mut failures, 89, &["carol"], "1.1.1.1", now);
        assert_eq!(failures.wait(&["dave"], "1.1.1.1", now), None, "the address counted each attempt once: 99");
        assert_eq!(failures.wait(&["alice", "alice@example.com"], "2.2.2.2", now), None, "another address is not");
        // Logins by the username alone: a password change, which checks both names, is locked too.
        fail(&mut failures, 10, &["bob"], "3.3.3.3", now);
        assert!(failures.wait(&["bob", "bob@example.com"], "3.3.3.3", now).is_some());
        assert_eq!(failures.wait(&["bob@example.com"], "3.3.3.3", now), None, "a login by the other name is not");
    }

    #[test]
    fn failures_age_out_after_the_window_oldest_first() {
        let mut failures = LoginFailures::new();
        let start = Instant::now();
        fail(&mut failures, 5, &["alice"], "1.1.1.1", start);
        fail(&mut failures, 5, &["alice"], "1.1.1.1", start + 60 * SECOND);
        assert_eq!(failures.wait(&["alice"], "1.1.1.1", start + 60 * SECOND), Some(WINDOW - 60 * SECOND));
        assert_eq!(failures.wait(&["alice"], "1.1.1.1", start + WINDOW), None, "the first five aged out");
        fail(&mut failures, 5, &["alice"], "1.1.1.1", start + WINDOW);
        let wait = failures.wait(&["alice"], "1.1.1.1", start + WINDOW + SECOND);
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

    const TWO_PER_SECOND_BURST_4: Rate = Rate { count: 2, per: Duration::from_secs(1), burst: 4 };

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let rate = TWO_PER_SECOND_BURST_4;
        let start = Instant::now();
        let mut bucket = TokenBucket::full(rate, start);
        for idx in 0..4 {
            assert_eq!(bucket.take(rate, start), Ok(()), "burst event {idx}");
        }
        assert_eq!(bucket.take(rate, start), Err(Duration::from_millis(500)), "empty: one token takes 1/rate");
        assert_eq!(bucket.take(rate, start + Duration::from_millis(500)), Ok(()), "refilled one");
        assert!(bucket.take(rate, start + Duration::from_millis(600)).is_err());
        let later = start + Duration::from_secs(60);
        for idx in 0..4 {
            assert_eq!(bucket.take(rate, later), Ok(()), "refilled to the burst, no more: {idx}");
        }
        assert!(bucket.take(rate, later).is_err());
    }

    #[test]
    fn buckets_are_per_key_and_a_full_map_forgets_full_buckets_first() {
        let rate = Rate { count: 1, per: Duration::from_secs(10), burst: 1 };
        let now = Instant::now();
        let mut buckets = HashMap::new();
        assert_eq!(take_from(&mut buckets, rate, &"a", now), Ok(()));
        assert!(take_from(&mut buckets, rate, &"a", now).is_err(), "a's one token is spent");
        assert_eq!(take_from(&mut buckets, rate, &"b", now), Ok(()), "b has its own bucket");
        let later = now + Duration::from_secs(10);
        let mut full: HashMap<u32, TokenBucket> =
            (0..MAX_BUCKETS as u32).map(|k| (k, TokenBucket::full(rate, now))).collect();
        assert!(take_from(&mut full, rate, &0, now).is_ok());
        assert_eq!(take_from(&mut full, rate, &u32::MAX, later), Ok(()));
        assert_eq!(full.len(), 1, "only the new key's bucket, not full, remains: the others were full");
    }

    #[test]
    fn disabled_buckets_never_limit() {
        let buckets = Buckets::new(Rate { count: 1, per: Duration::from_secs(3600), burst: 1 }, false);
        for _ in 0..10 {
            assert_eq!(buckets.take(&"k"), Ok(()));
        }
        let buckets = Buckets::new(Rate { count: 1, per: Duration::from_secs(3600), burst: 1 }, true);
        assert_eq!(buckets.take(&"k"), Ok(()));
        assert_eq!(buckets.take(&"k"), Err(3600), "an hour to wait, in whole seconds");
    }

    #[test]
    fn a_key_holds_at_most_its_limit_and_gets_places_back_on_drop() {
        let occupancy = Occupancy::new(2, true);
        let first = occupancy.enter("alice").expect("one");
        let second = occupancy.enter("alice").expect("two");
        assert!(occupancy.enter("alice").is_none(), "a third is refused");
        let bob = occupancy.enter("bob").expect("bob counts apart");
        drop(first);
        let third = occupancy.enter("alice").expect("a place given back is free again");
        drop((second, third, bob));
        assert!(occupancy.held.lock().unwrap().is_empty(), "keys holding nothing are forgotten");
        let off = Occupancy::new(1, false);
        let held: Vec<_> = (0..5).map(|_| off.enter("k").expect("no limit when off")).collect();
        assert_eq!(held.len(), 5);
    }

    #[test]
    fn a_disabled_limiter_never_limits() {
        let limiter = LoginLimiter::new(false);
        for _ in 0..200 {
            limiter.record_failure(&["k"], "a");
        }
        assert_eq!(limiter.check(&["k"], "a"), Ok(()));
    }
}
