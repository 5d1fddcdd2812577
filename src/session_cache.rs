//! Verified sessions kept for a short while, so that most authenticated
//! requests skip the session lookup (a round trip to PostgreSQL).
//!
//! A session that ends must stop working at once on every process, so the
//! cache is only trusted while it hears every end: a process forgets a
//! session when it ends one itself and when its listener hears another
//! process end one (`listen.rs`), and the process that ended it waits for the
//! others to confirm (`confirm.rs`). Where hearing can fail, the cache is not
//! used: while the listener has not finished a round within `HEARD_WITHIN`
//! (its connection lost, the database or this process frozen), a lookup
//! misses, and when the listener starts again it forgets everything, since
//! what was said meanwhile is lost. A lookup that raced an end cannot store a
//! stale session: `put` takes the generation read before the lookup, and any
//! end moves the generation on.
//!
//! Entries last `TTL` at most and never past the session's expiry; at most
//! `CAPACITY` are kept.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::model::{Session, SessionId};

/// How long a verified session is reused before it is looked up again.
pub const TTL: Duration = Duration::from_secs(30);
/// How recently the listener's last finished round must have begun for the
/// cache to be used; it finishes one at least every half second while all is
/// well. Ending a session waits longer than this for confirmations
/// (`app::CONFIRM_WITHIN`).
pub const HEARD_WITHIN: Duration = Duration::from_millis(1500);
/// Sessions kept at most; a full cache drops what is stale, or else everything.
pub const CAPACITY: usize = 10_000;

/// The SHA-256 of a bearer token: what the cache is keyed by.
pub type TokenHash = [u8; 32];

#[derive(Default)]
pub struct SessionCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<TokenHash, Entry>,
    /// Moves on at every end and every forgetting, so a lookup that began
    /// before one stores nothing.
    generation: u64,
    /// When the listener last finished a round; `None` until it first does.
    heard_at: Option<Instant>,
}

struct Entry {
    session: Session,
    cached_at: Instant,
}

impl SessionCache {
    /// The session behind `token_hash`, when it is cached, fresh, unexpired,
    /// and the listener is keeping up.
    pub fn get(&self, token_hash: &TokenHash, now: Instant, wall: OffsetDateTime) -> Option<Session> {
        let inner = self.lock();
        if !inner.listening(now) {
            return None;
        }
        let entry = inner.entries.get(token_hash)?;
        let fresh = now.saturating_duration_since(entry.cached_at) < TTL && entry.session.expires_at > wall;
        fresh.then(|| entry.session.clone())
    }

    /// The generation to give `put` after a lookup: read it before the lookup.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Keeps a session just read from the database, unless a session ended
    /// since `generation` was read, or the listener is not keeping up.
    pub fn put(&self, token_hash: TokenHash, session: Session, generation: u64, now: Instant) {
        let mut inner = self.lock();
        if inner.generation != generation || !inner.listening(now) {
            return;
        }
        if inner.entries.len() >= CAPACITY && !inner.entries.contains_key(&token_hash) {
            inner.entries.retain(|_, entry| now.saturating_duration_since(entry.cached_at) < TTL);
            if inner.entries.len() >= CAPACITY {
                inner.entries.clear();
            }
        }
        inner.entries.insert(token_hash, Entry { session, cached_at: now });
    }

    /// Forgets ended sessions.
    pub fn forget(&self, session_ids: &[SessionId]) {
        let ended: HashSet<SessionId> = session_ids.iter().copied().collect();
        let mut inner = self.lock();
        inner.generation += 1;
        inner.entries.retain(|_, entry| !ended.contains(&entry.session.id));
    }

    /// The listener finished a round that began at `now`: everything said
    /// (committed) before `now` is heard.
    pub fn heard(&self, now: Instant) {
        let mut inner = self.lock();
        inner.heard_at = Some(inner.heard_at.map_or(now, |at| at.max(now)));
    }

    /// The listener (re)starts: what was said while it was not listening is
    /// lost, so nothing cached before can be trusted.
    pub fn forget_all(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.entries.clear();
        inner.heard_at = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn listening(&self, now: Instant) -> bool {
        self.heard_at.is_some_and(|at| now.saturating_duration_since(at) < HEARD_WITHIN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Me, UserId};

    const WALL: OffsetDateTime = OffsetDateTime::UNIX_EPOCH;

    fn session(id: i64) -> Session {
        let user =
            Me { id: UserId(id), username: format!("u{id}"), email: format!("u{id}@example.com"), created_at: WALL };
        Session { id: SessionId(id), user, expires_at: WALL + time::Duration::days(1) }
    }

    /// A cache whose listener has just finished a round, and the time it did.
    fn listening() -> (SessionCache, Instant) {
        let (cache, now) = (SessionCache::default(), Instant::now());
        cache.heard(now);
        (cache, now)
    }

    fn put(cache: &SessionCache, hash: u8, id: i64, now: Instant) {
        cache.put([hash; 32], session(id), cache.generation(), now);
    }

    fn cached(cache: &SessionCache, hash: u8, now: Instant) -> Option<i64> {
        cache.get(&[hash; 32], now, WALL).map(|session| session.id.0)
    }

    #[test]
    fn a_put_session_is_found_by_its_token_hash_only() {
        let (cache, now) = listening();
        put(&cache, 1, 10, now);
        assert_eq!(cached(&cache, 1, now), Some(10));
        assert_eq!(cached(&cache, 2, now), None);
    }

    #[test]
    fn an_entry_lasts_its_ttl_and_never_past_the_sessions_expiry() {
        let (cache, now) = listening();
        put(&cache, 1, 10, now);
        let later = now + TTL;
        cache.heard(later);
        assert_eq!(cached(&cache, 1, later - Duration::from_millis(1)), Some(10));
        assert_eq!(cached(&cache, 1, later), None, "stale after the TTL");
        let expired = session(10).expires_at;
        assert_eq!(cache.get(&[1; 32], now, expired).map(|s| s.id), None, "expired at its expiry");
    }

    #[test]
    fn a_forgotten_session_is_gone_and_others_stay() {
        let (cache, now) = listening();
        put(&cache, 1, 10, now);
        put(&cache, 2, 20, now);
        cache.forget(&[SessionId(10)]);
        assert_eq!((cached(&cache, 1, now), cached(&cache, 2, now)), (None, Some(20)));
    }

    #[test]
    fn a_lookup_that_began_before_an_end_stores_nothing() {
        let (cache, now) = listening();
        let before_lookup = cache.generation();
        cache.forget(&[SessionId(10)]);
        cache.put([1; 32], session(10), before_lookup, now);
        assert_eq!(cached(&cache, 1, now), None);
    }

    #[test]
    fn nothing_is_stored_or_found_unless_the_listener_kept_up() {
        let cache = SessionCache::default();
        let now = Instant::now();
        put(&cache, 1, 10, now);
        assert_eq!(cached(&cache, 1, now), None, "the listener has not finished a round yet");

        cache.heard(now);
        put(&cache, 1, 10, now);
        let silent = now + HEARD_WITHIN;
        assert_eq!(cached(&cache, 1, silent - Duration::from_millis(1)), Some(10));
        assert_eq!(cached(&cache, 1, silent), None, "not heard from for HEARD_WITHIN");
        cache.heard(silent);
        assert_eq!(cached(&cache, 1, silent), Some(10), "heard again");
    }

    #[test]
    fn a_listener_starting_again_forgets_everything_until_it_finishes_a_round() {
        let (cache, now) = listening();
        put(&cache, 1, 10, now);
        cache.forget_all();
        cache.heard(now);
        assert_eq!(cached(&cache, 1, now), None);
    }

    #[test]
    fn a_full_cache_drops_stale_entries_first_then_everything() {
        let (cache, now) = listening();
        let old = now;
        for idx in 0..CAPACITY {
            cache.put((idx as u64 * 7919).to_le_bytes().repeat(4).try_into().unwrap(), session(1), 0, old);
        }
        let later = now + TTL;
        cache.heard(later);
        put(&cache, 1, 10, later);
        assert_eq!(cached(&cache, 1, later), Some(10), "the stale ones made room");
        assert_eq!(cache.lock().entries.len(), 1);

        for idx in 1..CAPACITY {
            cache.put((idx as u64 * 7919 + 1).to_le_bytes().repeat(4).try_into().unwrap(), session(1), 0, later);
        }
        assert_eq!(cache.lock().entries.len(), CAPACITY, "full of fresh entries");
        put(&cache, 2, 20, later);
        assert_eq!(cache.lock().entries.len(), 1, "no stale entry: everything went");
        assert_eq!(cached(&cache, 2, later), Some(20));
    }
}
