//! What the process shares (`App`) and what one request carries (`Ctx`).
//!
//! Handlers see the process only through these two types: configuration,
//! the log, the login limiter, and the handles of the real-time threads.
//! A committed change leaves the handlers in one place, `App::publish`,
//! always after its transaction has committed.

use std::sync::{Arc, OnceLock};

use postgres::Transaction;
use std::time::{Duration, Instant};

use crate::auth;
use crate::config::Config;
use crate::confirm::Confirmations;
use crate::db::{Db, Sql};
use crate::error::ApiError;
use crate::forwarded;
use crate::http::{self, Body, Query};
use crate::hub::Hub;
use crate::jobs::Jobs;
use crate::log::Log;
use crate::metrics::Metrics;
use crate::model::{Event, Live, Session, SessionId, UserId};
use crate::notify::{self, Notifier, Signal};
use crate::presence::Presence;
use crate::ratelimit::{Buckets, LoginLimiter, Occupancy, Rate};
use crate::session_cache::SessionCache;
use crate::store;
use crate::watch::Stop;

/// How long ending a session waits for the other processes to forget it:
/// longer than `session_cache::HEARD_WITHIN`, so a process that has not
/// confirmed by then has stopped using its cache (ARCHITECTURE.md).
const CONFIRM_WITHIN: Duration = Duration::from_secs(2);

/// What every worker shares: configuration and process-wide state.
pub struct App {
    pub config: Config,
    /// This process's id among the server processes (`server_processes`).
    pub process_id: i64,
    pub log: Log,
    pub limits: Limits,
    /// Verified against when a login is unknown, so that case costs the same;
    /// made on first use, so start-up does not pay for a slow hash.
    pub decoy_password_hash: OnceLock<String>,
    /// The WebSocket endpoint, as clients should dial it.
    pub ws_url: String,
    pub presence: Arc<Presence>,
    pub hub: Hub,
    pub notifier: Notifier,
    pub jobs: Jobs,
    pub stop: Stop,
    /// Verified sessions, so most requests skip the lookup (`session_cache.rs`).
    pub sessions: Arc<SessionCache>,
    /// Session ends waiting for the other processes to confirm (`confirm.rs`).
    pub confirmations: Arc<Confirmations>,
    /// What `GET /metrics` shows (`metrics.rs`).
    pub metrics: Arc<Metrics>,
}

impl App {
    /// Hands committed events to real-time delivery: to this process's hub at
    /// once, and to other processes as `(chat_id, seq)` through the notifier.
    /// Called after the transaction commits, never inside it.
    pub fn publish(&self, events: &[Event]) {
        self.metrics.events_published.add(events.len() as u64);
        for event in events {
            self.notifier.signal(Signal::Event { chat_id: event.chat_id, seq: event.seq, added: event.joins() });
            self.hub.event(event.clone());
        }
    }

    /// Hands a typing or read frame to every process's members of the chat.
    pub fn publish_live(&self, live: Live) {
        self.notifier.signal(live.clone().into());
        self.hub.live(live);
    }

    /// Ends sessions everywhere: `delete` deletes them and returns their ids,
    /// in one transaction with the NOTIFY that tells the other processes (so
    /// the signal goes out if and only if the deletion commits); then the
    /// sessions are forgotten here, their WebSockets closed on every process,
    /// and this returns once every live process has forgotten them too, or
    /// after `CONFIRM_WITHIN` (`confirm.rs`): a token logged out is refused
    /// everywhere as soon as the client hears it is.
    pub fn end_sessions(
        &self,
        db: &mut Db,
        delete: impl FnOnce(&mut Sql<'_, Transaction<'_>>) -> Result<Vec<SessionId>, ApiError>,
    ) -> Result<(), ApiError> {
        let (ended, ticket) = db.transaction(|tx| {
            let ended = delete(tx)?;
            let others = store::list_live_processes(tx, self.process_id)?;
            let items: Vec<i64> = ended.iter().map(|id| id.0).collect();
            let ticket = self.confirmations.ticket(&others, &items);
            let signals: Vec<Signal> = (ended.iter())
                .map(|&session_id| Signal::SessionEnded { session_id, ticket: ticket.number() })
                .collect();
            for payload in notify::payloads(self.process_id, &signals) {
                store::notify(tx, &payload)?;
            }
            Ok((ended, ticket))
        })?;
        self.sessions.forget(&ended);
        self.hub.sessions_ended(ended);
        let missing = ticket.wait(Instant::now() + CONFIRM_WITHIN);
        if !missing.is_empty() {
            let fields: [(&str, &dyn std::fmt::Display); 1] = [("processes", &missing.len())];
            self.log.warn("processes did not confirm a session end in time", &fields);
        }
        Ok(())
    }
}

/// The process's rate limits, each off when `RATE_LIMITS=off`; the rules
/// are in `ratelimit.rs`, the handlers and the WebSocket threads consult them.
pub struct Limits {
    /// Failed password checks per (account or login, client address) and per client address.
    pub logins: LoginLimiter,
    /// One budget per user for every way of sending a message.
    pub messages: Buckets<UserId>,
    /// Sign-ups per client address.
    pub signups: Buckets<String>,
    /// Open WebSockets per user.
    pub ws_per_user: Arc<Occupancy<UserId>>,
    /// Open WebSockets per client address.
    pub ws_per_address: Arc<Occupancy<String>>,
    /// WebSocket handshakes in flight per TCP peer address.
    pub ws_handshakes: Arc<Occupancy<String>>,
    /// Each WebSocket's own frame budget, or `None` when limits are off.
    pub ws_frames: Option<Rate>,
}

impl Limits {
    pub fn new(config: &Config) -> Limits {
        let on = config.rate_limits;
        Limits {
            logins: LoginLimiter::new(on),
            messages: Buckets::new(config.messages, on),
            signups: Buckets::new(config.signups, on),
            ws_per_user: Occupancy::new(config.ws_max_per_user, on),
            ws_per_address: Occupancy::new(config.ws_max_per_address, on),
            ws_handshakes: Occupancy::new(config.ws_handshakes_per_address, on),
            ws_frames: on.then_some(config.ws_frames),
        }
    }
}

/// One request being handled, with its worker's connection.
pub struct Ctx<'a> {
    pub app: &'a App,
    pub db: &'a mut Db,
    pub request: &'a mut tiny_http::Request,
    /// Set once the caller is known, for the log line.
    pub user_id: Option<UserId>,
}

impl Ctx<'_> {
    /// The JSON object body, under the size limit.
    pub fn body(&mut self) -> Result<Body, ApiError> {
        http::read_json(self.request, self.app.config.max_body_bytes)
    }

    pub fn query(&self) -> Query {
        Query::parse(self.request.url())
    }

    /// The caller's session, or `401`.
    pub fn authenticate(&mut self) -> Result<Session, ApiError> {
        let session = auth::require(self.db, &self.app.sessions, http::header(self.request, "Authorization"))?;
        self.user_id = Some(session.user.id);
        Ok(session)
    }

    /// The client's address as per-address limits count it: the peer, or
    /// behind a trusted proxy what it says in `X-Forwarded-For`
    /// (`forwarded.rs`); an IPv6 client counts as its /64.
    pub fn client_address(&self) -> String {
        let Some(peer) = self.request.remote_addr().map(|addr| addr.ip()) else { return "unknown".into() };
        let forwarded_for: Vec<&str> = (self.request.headers().iter())
            .filter(|h| h.field.as_str().as_str().eq_ignore_ascii_case("X-Forwarded-For"))
            .map(|h| h.value.as_str())
            .collect();
        forwarded::limit_key(self.app.config.trusted_proxies.client(peer, &forwarded_for))
    }
}
