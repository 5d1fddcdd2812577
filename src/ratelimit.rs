//! Every rate limit's rules: failed logins, token buckets (messages per
//! user, sign-ups per address, frames per WebSocket) and counts of what a key
//! holds open (WebSockets per user and per address, handshakes per address).
//!
//! Failed logins follow OWASP's advice that an attacker elsewhere must not
//! be able to lock a user out: failures count per (login, client address)
//! pair, 10 in `WINDOW`, and per client address, 100 in `WINDOW`, never per
//! login alone. A login that names an account counts as that account, so
//! its username, its email and a wrong current password at a password change
//! share one count (`Login`). Past either limit, attempts get `429` until
//! the oldest failure that counts ages out, so the right password from an
//! address under both limits always gets through.
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
/// Failures of one account (or unknown login) from one address that lock that pair.
pub const PAIR_LIMIT: usize = 10;
/// Failures from one address, for any logins, that lock the address.
pub const ADDRESS_LIMIT: usize = 100;
const MAX_PAIRS: usize = 100_000;
/// Fewer addresses than pairs: each may hold 100 times.
const MAX_ADDRESSES: usize = 10_000;

/// The longest login that can name an account: an email of 254 characters, in UTF-8.
pub const MAX_LOGIN_BYTES: usize = 254 * 4;

/// Whose failures an attempt counts with, besides its client address's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Login<'a> {
    /// An account (its id), however it was named or however the password
    /// was wrong: by username, by email in any case, or at a password change.
    Account(i64),
    /// Text that names no account, compared without regard to case.
    Unknown(&'a str),
    /// Text too long to name any account: it counts against the address only,
    /// which keeps the keys small.
    Unnamed,
}

impl<'a> Login<'a> {
    /// What an attempt at `text` counts as: the account it names when there
    /// is one (`account`), else the text, unless no account could have it.
    pub fn named(account: Option<i64>, text: &'a str) -> Login<'a> {
        match account {
            Some(id) => Login::Account(id),
            None if text.len() > MAX_LOGIN_BYTES => Login::Unnamed,
            None => Login::Unknown(text),
        }
    }
}

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
    /// over its limit.
    pub fn check(&self, login: Login, address: &str) -> Result<(), u64> {
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
    pub fn record_failure(&self, login: Login, address: &str) {
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
    fn wait(&mut self, login: Login, address: &str, now: Instant) -> Option<Duration> {
        let pair = pair_key(login, address).and_then(|key| self.pairs.wait(&key, now));
        pair.max(self.addresses.wait(address, now))
    }

    fn record(&mut self, login: Login, address: &str, now: Instant) {
        if let Some(key) = pair_key(login, address) {
            self.pairs.record(key, now);
        }
        self.addresses.record(address.to_string(), now);
    }
}

/// An account or a login's text from an address (which holds no space); the
/// mark after the space keeps an account apart from any text.
fn pair_key(login: Login, address: &str) -> Option<String> {
    match login {
        Login::Account(id) => Some(format!("{address} #{id}")),
        Login::Unknown(text) => Some(format!("{address} ={}", text.to_lowercase())),
        Login::Unnamed => None,
    }
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

    fn fail(failures: &mut LoginFailures, n: usize, login: Login, address: &str, now: Instant) {
        for _ in 0..n {
            failures.record(login, address, now);
        }
    }

    #[test]
    fn ten_failures_lock_the_login_at_that_address_only() {
        let mut failures = LoginFailures::new();
        let now = Instant::now();
        fail(&mut failures, 9, Login::Unknown("alice"), "1.1.1.1", now);
        assert_eq!(
            failures.wait(Login::Unknown("alice"), "1.1.1.1", now),
            None,
            "nine failures still let a try through"
        );

        failures.record(Login::Unknown("Alice"), "1.1.1.1", now);

        let wait = failures.wait(Login::Unknown("ALICE"), "1.1.1.1", now + SECOND);
        assert_eq!(wait, Some(WINDOW - SECOND), "the login is compared without regard to case");
        assert_eq!(failures.wait(Login::Unknown("alice"), "2.2.2.2", now), None, "another address is not locked out");
        assert_eq!(
            failures.wait(Login::Unknown("bob"), "1.1.1.1", now),
            None,
            "another login from that address is not"
        );
    }

    #[test]
    fn a_hundred_failures_lock_the_address_for_every_login() {
        let mut failures = LoginFailures::new();
        let now = Instant::now();
        for idx in 0..99 {
            failures.record(Login::Unknown(&format!("user{idx}")), "1.1.1.1", now);
        }
        assert_eq!(failures.wait(Login::Unknown("victim"), "1.1.1.1", now), None, "99 failures leave the address open");

        failures.record(Login::Unnamed, "1.1.1.1", now);

        assert!(failures.wait(Login::Unknown("victim"), "1.1.1.1", now).is_some(), "the 100th locks the address");
        assert!(failures.wait(Login::Unnamed, "1.1.1.1", now).is_some(), "for logins that name no account too");
        assert_eq!(
            failures.wait(Login::Unknown("victim"), "2.2.2.2", now),
            None,
            "the victim elsewhere is not locked out"
        );
    }

    #[test]
    fn a_login_alone_is_never_locked_however_many_addresses_fail_it() {
        let mut failures = LoginFailures::new();
        let now = Instant::now();
        for idx in 0..1000 {
            fail(&mut failures, 10, Login::Unknown("victim"), &format!("10.0.{}.{}", idx / 256, idx % 256), now);
        }
        assert_eq!(failures.wait(Login::Unknown("victim"), "192.0.2.1", now), None);
    }

    #[test]
    fn a_login_counts_as_the_account_it_names_else_as_its_text() {
        assert_eq!(Login::named(Some(7), "alice"), Login::Account(7), "by username");
        assert_eq!(Login::named(Some(7), "ALICE@Example.com"), Login::Account(7), "by email, in any case");
        assert_eq!(Login::named(None, "nobody"), Login::Unknown("nobody"));
        let longest = "x".repeat(MAX_LOGIN_BYTES);
        assert_eq!(Login::named(None, &longest), Login::Unknown(&longest), "as long as an account's login can be");
        let too_long = "x".repeat(MAX_LOGIN_BYTES + 1);
        assert_eq!(Login::named(None, &too_long), Login::Unnamed, "longer than any account's login");
    }

    #[test]
    fn an_accounts_failures_count_together_from_one_address_only() {
        let mut failures = LoginFailures::new();
        let now = Instant::now();
        // By username, by email, and by a wrong current password: one account.
        fail(&mut failures, 4, Login::named(Some(7), "alice"), "1.1.1.1", now);
        fail(&mut failures, 3, Login::named(Some(7), "Alice@example.com"), "1.1.1.1", now);
        fail(&mut failures, 2, Login::Account(7), "1.1.1.1", now);
        assert_eq!(failures.wait(Login::Account(7), "1.1.1.1", now), None, "nine failures still let a try through");

        failures.record(Login::Account(7), "1.1.1.1", now);

        assert_eq!(failures.wait(Login::Account(7), "1.1.1.1", now), Some(WINDOW), "the tenth locks the account there");
        assert_eq!(failures.wait(Login::Account(7), "2.2.2.2", now), None, "another address is not locked out");
        assert_eq!(failures.wait(Login::Account(8), "1.1.1.1", now), None, "another account from that address is not");
    }

    #[test]
    fn an_account_and_a_text_never_share_a_count() {
        let mut failures = LoginFailures::new();
        let now = Instant::now();
        fail(&mut failures, 10, Login::Account(7), "1.1.1.1", now);
        fail(&mut failures, 10, Login::Unknown("#8"), "1.1.1.1", now);

        for text in ["7", "#7", "=7"] {
            assert_eq!(failures.wait(Login::Unknown(text), "1.1.1.1", now), None, "{text:?} is not account 7");
        }
        assert_eq!(failures.wait(Login::Account(8), "1.1.1.1", now), None, "account 8 is not the text \"#8\"");
    }

    #[test]
    fn failures_age_out_after_the_window_oldest_first() {
        let mut failures = LoginFailures::new();
        let start = Instant::now();
        fail(&mut failures, 5, Login::Unknown("alice"), "1.1.1.1", start);
        fail(&mut failures, 5, Login::Unknown("alice"), "1.1.1.1", start + 60 * SECOND);
        assert_eq!(failures.wait(Login::Unknown("alice"), "1.1.1.1", start + 60 * SECOND), Some(WINDOW - 60 * SECOND));
        assert_eq!(failures.wait(Login::Unknown("alice"), "1.1.1.1", start + WINDOW), None, "the first five aged out");
        fail(&mut failures, 5, Login::Unknown("alice"), "1.1.1.1", start + WINDOW);
        let wait = failures.wait(Login::Unknown("alice"), "1.1.1.1", start + WINDOW + SECOND);
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
            limiter.record_failure(Login::Unknown("k"), "a");
        }
        assert_eq!(limiter.check(Login::Unknown("k"), "a"), Ok(()));
    }
}
