//! Starts the server on listeners it is given, and runs the HTTP workers.
//!
//! `WORKERS` threads share one tiny_http `Server`; each calls `recv()` and
//! owns one `Db`. A request's whole life is in `handle`: route, authenticate
//! where the route needs it, run the handler under `catch_unwind`, respond,
//! log one line. A panic answers `500` and costs the worker only its
//! database connection, which it opens again on the next request.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};

use crate::accounts;
use crate::app::{App, Ctx, Limits};
use crate::auth;
use crate::chats;
use crate::config::Config;
use crate::confirm::Confirmations;
use crate::db::Db;
use crate::error::ApiError;
use crate::events;
use crate::http::{self, Reply};
use crate::hub::Hub;
use crate::jobs::Jobs;
use crate::legacy;
use crate::listen;
use crate::log::{Level, Log, OrDash};
use crate::messages;
use crate::metrics::{self, Metrics};
use crate::migrate;
use crate::model::EventKind;
use crate::notify::Notifier;
use crate::ops;
use crate::presence::{self, Presence};
use crate::router::{self, Route};
use crate::search;
use crate::session_cache::SessionCache;
use crate::watch::{panic_message, Stop, Watch};
use crate::webclient;
use crate::ws;

/// A started server. Dropping it stops the server: workers finish their
/// requests, WebSockets are closed with 1001, background threads end, all
/// within `SHUTDOWN_GRACE`.
pub struct Running {
    app: Arc<App>,
    process_id: i64,
    http_addr: SocketAddr,
    ws_addr: SocketAddr,
    workers: Vec<JoinHandle<()>>,
    /// Handles on the two listening sockets, shut when stopping so that no
    /// connection is accepted after the signal.
    listeners: [TcpListener; 2],
    /// The names of watched threads that died.
    deaths: Receiver<String>,
    sockets: ws::Sockets,
}

impl Running {
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn ws_addr(&self) -> SocketAddr {
        self.ws_addr
    }

    /// Blocks while the server runs, then stops it: `Ok` when a stop was
    /// requested on `stop` (a message, or its sender dropped; `main` sends
    /// one on SIGTERM or SIGINT), an error naming the watched thread that died.
    pub fn wait(mut self, stop: &Receiver<()>) -> Result<(), String> {
        select! {
            recv(self.deaths) -> died => match died {
                Ok(thread) => {
                    // A worker held by a client that never finishes its request must
                    // not keep a broken process alive: the workers are left, not joined.
                    self.workers.clear();
                    Err(format!("the {thread} thread died; stopping so that a supervisor restarts the server"))
                }
                Err(_) => Ok(()),
            },
            recv(stop) -> _ => Ok(()),
        }
    }

    /// Stops the server and waits for the HTTP workers.
    pub fn shutdown(self) {}
}

impl Drop for Running {
    /// Stops accepting, lets the workers finish the requests they hold and
    /// those already queued, closes WebSockets with 1001 and waits for their
    /// close frames to go out, then forgets this process's presence rows.
    /// Each wait ends at the grace deadline, so a process stopped by a signal
    /// exits in time whatever it was waiting for (a frozen database, say).
    fn drop(&mut self) {
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        self.app.stop.set();
        self.listeners.iter().for_each(stop_accepting);
        self.app.hub.shutdown();
        let mut busy_workers = 0;
        for worker in std::mem::take(&mut self.workers) {
            match wait_until(deadline, || worker.is_finished()) {
                true => drop(worker.join()),
                false => busy_workers += 1,
            }
        }
        wait_until(deadline, || self.sockets.open() == 0);
        let (url, process_id) = (self.app.config.database_url.clone(), self.process_id);
        if let Ok(forgetting) = std::thread::Builder::new().name("forget-process".into()).spawn({
            let metrics = self.app.metrics.clone();
            move || presence::forget_process(&url, process_id, &metrics)
        }) {
            wait_until(deadline.max(Instant::now() + FORGET_AT_LEAST), || forgetting.is_finished());
        }
        let open_sockets = self.sockets.open();
        if busy_workers > 0 || open_sockets > 0 {
            let fields: [(&str, &dyn std::fmt::Display); 2] = [("workers", &busy_workers), ("sockets", &open_sockets)];
            self.app.log.warn("stopped before everything finished", &fields);
        }
    }
}

/// Shuts a listening socket: new connections are refused at once, and an
/// `accept` blocked on it returns an error, so both accept loops see the
/// stop flag. Connections accepted before stay open and are answered.
fn stop_accepting(listener: &TcpListener) {
    // SAFETY: `shutdown` on a descriptor this handle owns; it cannot close it.
    unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RD) };
}

/// How long stopping may wait for requests and WebSockets to finish; a
/// supervisor's stop timeout (systemd's is 90 s, Kubernetes' 30 s) and the
/// issue's 10 s both leave room for it.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(7);

/// The least time stopping gives the presence rows to be deleted.
const FORGET_AT_LEAST: Duration = Duration::from_secs(1);

/// Polls `done` until it holds (`true`) or `deadline` passes (`false`).
fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How often an idle worker looks at the stop flag.
const RECV_TICK: Duration = Duration::from_millis(250);

/// Starts the server on listeners that are already bound (tests bind port 0).
///
/// # Errors
/// When the database cannot be reached, migrations are pending, or a
/// listener cannot be used: one line saying what to do.
pub fn start(config: Config, http_listener: TcpListener, ws_listener: TcpListener) -> Result<Running, String> {
    let mut client = migrate::connect(&config.database_url)?;
    let pending = migrate::pending(&mut client, &config.migrations).map_err(|e| e.to_string())?;
    if !pending.is_empty() {
        return Err(format!("{} migration(s) pending ({}): run `make migrate`", pending.len(), pending.join(", ")));
    }
    drop(client);

    let http_addr = http_listener.local_addr().map_err(|e| e.to_string())?;
    let ws_addr = ws_listener.local_addr().map_err(|e| e.to_string())?;
    let listeners = [http_listener.try_clone(), ws_listener.try_clone()];
    let [Ok(http_handle), Ok(ws_handle)] = listeners else { return Err("cannot duplicate a listening socket".into()) };
    let http = tiny_http::Server::from_listener_with_limits(http_listener, None, config.http_limits.clone());
    let http = Arc::new(http.map_err(|e| e.to_string())?);
    let process_id = i64::from_le_bytes(auth::random_bytes()) & i64::MAX;
    let log = Log::new(config.log);
    let stop = Stop::default();
    let (watch, deaths) = Watch::new(stop.clone(), log, config.fault.clone());
    let url = &config.database_url;
    let metrics = Arc::new(Metrics::default());
    let jobs = Jobs::start(url, (config.workers / 2).max(2), log, &metrics, &watch)?;
    let silent = config.fault.as_deref() == Some("silent-notifier");
    let notifier = Notifier::start(url, process_id, log, &metrics, &watch, silent)?;
    let hub = Hub::start(jobs.clone(), notifier.clone(), log, metrics.clone(), &watch)?;
    let presence = Arc::new(Presence::new(process_id, hub.clone(), notifier.clone(), log));
    presence::register_process(url, process_id, &metrics)?;
    let sessions = Arc::new(SessionCache::default());
    let confirmations = Arc::new(Confirmations::default());
    let recipients = listen::Recipients {
        hub: hub.clone(),
        notifier: notifier.clone(),
        sessions: sessions.clone(),
        confirmations: confirmations.clone(),
    };
    listen::start(Db::new(url, &metrics)?, process_id, recipients, stop.clone(), log, &watch)?;
    presence::start(presence.clone(), Db::new(url, &metrics)?, stop.clone(), &watch)?;
    let app = Arc::new(App {
        log,
        limits: Limits::new(&config),
        decoy_password_hash: OnceLock::new(),
        ws_url: format!("ws://{ws_addr}/ws"),
        presence,
        hub,
        notifier,
        jobs,
        stop,
        sessions,
        confirmations,
        metrics,
        process_id,
        config,
    });
    let sockets = ws::listen(app.clone(), ws_listener, &watch)?;
    let mut workers = Vec::new();
    for idx in 0..app.config.workers {
        let (http, app) = (http.clone(), app.clone());
        let mut db = Db::new(&app.config.database_url, &app.metrics)?;
        let worker = watch.spawn(&format!("http-{idx}"), move || {
            while !app.stop.is_set() {
                match http.recv_timeout(RECV_TICK) {
                    Ok(Some(request)) => {
                        db.begin();
                        handle(&app, &mut db, request)
                    }
                    Ok(None) => {}
                    // The first accept error of a run (out of descriptors, say): the
                    // patched accept loop waits and tries again (vendor/tiny_http/PATCHES.md, 12).
                    // Stopping shuts the listener, which is no failure.
                    Err(error) if !app.stop.is_set() => app.log.error("HTTP accept failed", &[("error", &error)]),
                    Err(_) => {}
                }
            }
            // Stopping: what tiny_http has already read is answered too (an
            // error here is the shut listener's, and skipped). The last worker
            // to end drops the server, which closes the listener.
            loop {
                match http.try_recv() {
                    Ok(Some(request)) => {
                        db.begin();
                        handle(&app, &mut db, request);
                    }
                    Ok(None) => break,
                    Err(_) => {}
                }
            }
        })?;
        workers.push(worker);
    }
    let listeners = [http_handle, ws_handle];
    Ok(Running { app, process_id, http_addr, ws_addr, workers, listeners, deaths, sockets })
}

/// One request, start to finish. Never panics out: the worker lives on.
fn handle(app: &App, db: &mut Db, mut request: tiny_http::Request) {
    let started = Instant::now();
    let _busy = app.metrics.busy();
    let request_id = request_id(http::header(&request, "X-Request-Id"));
    let method = request.method().as_str().to_string();
    let mut route = None;
    let mut ctx = Ctx { app, db, request: &mut request, user_id: None };
    let outcome = catch_unwind(AssertUnwindSafe(|| dispatch(&mut ctx, &mut route)));
    let user_id = ctx.user_id;
    let (reply, failure) = match outcome {
        Ok(Ok(reply)) => (reply, None),
        Ok(Err(error)) => (Reply::error(&error), Some(error)),
        Err(panic) => {
            let cause = format!("handler panicked: {}", panic_message(panic.as_ref()));
            (Reply::error(&ApiError::Internal(String::new())), Some(ApiError::Internal(cause)))
        }
    };
    if matches!(failure, Some(ApiError::Internal(_) | ApiError::Unavailable(_))) {
        db.disconnect();
    }
    let status = reply.status;
    let path: String = request.url().split('?').next().unwrap_or("").chars().take(200).collect();
    // Counted before the answer goes out, so a client that reads it and then
    // scrapes `/metrics` finds its request there.
    app.metrics.request(route.map_or(metrics::UNMATCHED, |r| r.name()), status, started.elapsed());
    let _ = request.respond(tiny_response(reply, &request_id));
    let level = failure.as_ref().map_or(Level::Info, ApiError::log_level);
    if !app.log.enabled(level) {
        return;
    }
    let (route, user, us) = (OrDash(route.map(|r: Route| r.name())), OrDash(user_id), started.elapsed().as_micros());
    let mut fields: Vec<(&str, &dyn std::fmt::Display)> = vec![
        ("req", &request_id),
        ("method", &method),
        ("path", &path),
        ("route", &route),
        ("status", &status),
        ("us", &us),
        ("user", &user),
    ];
    if let Some(error) = failure.as_ref().filter(|_| level < Level::Info) {
        fields.push(("error", error));
    }
    app.log.write(level, "request", &fields);
}

/// The client's `X-Request-Id` when it is a plain token (a proxy's, say),
/// else a fresh one: 16 hex digits.
pub(crate) fn request_id(given: Option<&str>) -> String {
    let plain =
        |id: &str| (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    match given {
        Some(id) if plain(id) => id.to_string(),
        _ => auth::random_bytes::<8>().iter().map(|b| format!("{b:02x}")).collect(),
    }
}

/// Routes the request and runs its handler. Public routes are answered in the
/// first `match`; every route past it needs a live session. The route is
/// left in `matched` for the log line.
fn dispatch(ctx: &mut Ctx, matched: &mut Option<Route>) -> Result<Reply, ApiError> {
    let route = router::route(ctx.request.method().as_str(), ctx.request.url())?;
    *matched = Some(route);
    match route {
        Route::Healthz => return ops::healthz(),
        Route::Readyz => return ops::readyz(ctx),
        Route::Metrics => return ops::metrics(&ctx.app.metrics),
        Route::OpenApi => return ops::openapi(),
        Route::WsOnHttpPort => return Err(ApiError::UpgradeRequired { ws_url: ctx.app.ws_url.clone() }),
        Route::CreateUser => return accounts::create_user(ctx),
        Route::CreateSession => return accounts::create_session(ctx),
        Route::LegacySignup => return legacy::signup(ctx),
        Route::LegacyLogin => return legacy::login(ctx),
        Route::WebClient => return webclient::get_web_client(),
        _ => {}
    }
    let session = ctx.authenticate()?;
    let user_id = session.user.id;
    match route {
        Route::GetMe => accounts::get_me(&session),
        Route::DeleteCurrentSession => accounts::delete_current_session(ctx, &session),
        Route::DeleteAllSessions => accounts::delete_all_sessions(ctx, &session),
        Route::ListSessions => accounts::list_sessions(ctx, &session),
        Route::DeleteSession(session_id) => accounts::delete_session(ctx, &session, session_id),
        Route::ChangePassword => accounts::change_password(ctx, &session),
        Route::SearchUsers => accounts::search_users(ctx),
        Route::GetUser(user) => accounts::get_user(ctx, user),
        Route::CreateWsTicket => accounts::create_ws_ticket(ctx, &session),
        Route::CreateChat => chats::create_chat(ctx, user_id),
        Route::ListChats => chats::list_chats(ctx, user_id),
        Route::GetChat(chat) => chats::get_chat(ctx, user_id, chat),
        Route::UpdateChat(chat) => chats::update_chat(ctx, user_id, chat),
        Route::AddMember(chat) => chats::add_member(ctx, user_id, chat),
        Route::RemoveMember(chat, user) => chats::remove_member(ctx, user_id, chat, user),
        Route::SendMessage(chat) => messages::send_message(ctx, user_id, chat),
        Route::ListMessages(chat) => messages::list_messages(ctx, user_id, chat),
        Route::EditMessage(chat, message) => messages::edit_message(ctx, user_id, chat, message),
        Route::DeleteMessage(chat, message) => messages::delete_message(ctx, user_id, chat, message),
        Route::AddReaction(chat, message, emoji) => {
            messages::change_reaction(ctx, user_id, chat, message, emoji, EventKind::ReactionAdded)
        }
        Route::RemoveReaction(chat, message, emoji) => {
            messages::change_reaction(ctx, user_id, chat, message, emoji, EventKind::ReactionRemoved)
        }
        Route::MarkRead(chat) => messages::mark_read(ctx, user_id, chat),
        Route::ListEvents(chat) => events::list_events(ctx, user_id, chat),
        Route::SearchMessages => search::search_messages(ctx, user_id),
        Route::LegacyLogout => legacy::logout(ctx, &session),
        Route::LegacyCreateChat => legacy::create_chat(ctx, user_id),
        Route::LegacyListMessages(chat) => legacy::list_messages(ctx, user_id, chat),
        Route::LegacyListChats => legacy::list_chats(ctx, user_id),
        Route::Healthz
        | Route::Readyz
        | Route::Metrics
        | Route::OpenApi
        | Route::WsOnHttpPort
        | Route::CreateUser
        | Route::CreateSession
        | Route::LegacySignup
        | Route::LegacyLogin
        | Route::WebClient => unreachable!("public routes are answered above"),
    }
}

/// The reply as tiny_http writes it, with its request id.
pub(crate) fn tiny_response(reply: Reply, request_id: &str) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    // A body is JSON unless the reply names its type (`Reply::text`).
    let json_body = !reply.body.is_empty() && !reply.headers.iter().any(|(name, _)| *name == "Content-Type");
    let mut response = tiny_http::Response::from_data(reply.body).with_status_code(reply.status);
    response.add_header(header("X-Request-Id", request_id));
    if json_body {
        response.add_header(header("Content-Type", "application/json"));
    }
    for (name, value) in &reply.headers {
        response.add_header(header(name, value));
    }
    response
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("header names and values we set are ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_client_request_id_is_kept_and_anything_else_replaced() {
        assert_eq!(request_id(Some("abc-123_x.y")), "abc-123_x.y");
        for given in [None, Some(""), Some("has space"), Some("quote\""), Some(&*"x".repeat(65))] {
            let made = request_id(given);
            assert!(made.len() == 16 && made.bytes().all(|b| b.is_ascii_hexdigit()), "{given:?} gave {made}");
        }
        assert_ne!(request_id(None), request_id(None));
    }
}
