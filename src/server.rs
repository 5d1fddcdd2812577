//! Starts the server on listeners it is given, and runs the HTTP workers.
//!
//! `WORKERS` threads share one tiny_http `Server`; each calls `recv()` and
//! owns one `Db`. A request's whole life is in `handle`: route, authenticate
//! where the route needs it, run the handler under `catch_unwind`, respond,
//! log one line. A panic answers `500` and costs the worker only its
//! database connection, which it opens again on the next request.

use std::net::{SocketAddr, TcpListener};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::accounts;
use crate::auth::{self, Session};
use crate::chats;
use crate::config::{Config, LogLevel};
use crate::db::{self, Db};
use crate::error::ApiError;
use crate::events;
use crate::http::{self, Body, Query, Reply};
use crate::hub::Hub;
use crate::jobs::Jobs;
use crate::legacy;
use crate::messages;
use crate::migrate;
use crate::notify::{self, Notifier};
use crate::ops;
use crate::presence::{self, Presence};
use crate::ratelimit::FailureLimiter;
use crate::router::{self, Route, UserId};
use crate::ws;

/// What every worker shares: configuration and process-wide state.
pub struct App {
    pub config: Config,
    pub login_failures: FailureLimiter,
    /// Verified against when a login is unknown, so that case costs the same;
    /// made on first use, so start-up does not pay for a slow hash.
    pub decoy_password_hash: OnceLock<String>,
    /// The WebSocket endpoint, as clients should dial it.
    pub ws_url: String,
    /// This process among the others sharing the database (random, positive).
    pub process_id: i64,
    pub presence: Presence,
    pub hub: Hub,
    pub notifier: Notifier,
    pub jobs: Jobs,
    pub next_conn: AtomicU64,
    /// WebSockets open now, against `WS_MAX_CONNECTIONS`.
    pub ws_open: AtomicUsize,
    pub stopping: AtomicBool,
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
        let session = auth::require(self.db, http::header(self.request, "Authorization"))?;
        self.user_id = Some(UserId(session.user.id));
        Ok(session)
    }

    /// The peer's IP address (the key of per-address limits).
    pub fn client_address(&self) -> String {
        self.request.remote_addr().map_or_else(|| "unknown".into(), |addr| addr.ip().to_string())
    }
}

/// A started server. Dropping it stops the server: workers finish their
/// requests, WebSockets are closed with 1001, background threads end.
pub struct Running {
    app: Arc<App>,
    http_addr: SocketAddr,
    ws_addr: SocketAddr,
    workers: Vec<JoinHandle<()>>,
}

impl Running {
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn ws_addr(&self) -> SocketAddr {
        self.ws_addr
    }

    /// Blocks until the server stops (it does not stop on its own).
    pub fn wait(mut self) {
        for worker in std::mem::take(&mut self.workers) {
            let _ = worker.join();
        }
    }

    /// Stops the server and waits for the HTTP workers.
    pub fn shutdown(self) {}
}

impl Drop for Running {
    fn drop(&mut self) {
        self.app.stopping.store(true, Ordering::SeqCst);
        self.app.hub.shutdown();
        // Wakes the WebSocket accept loop so it sees the flag.
        let _ = std::net::TcpStream::connect_timeout(&self.ws_addr, Duration::from_secs(1));
        for worker in std::mem::take(&mut self.workers) {
            let _ = worker.join();
        }
        presence::forget_process(&self.app.config.database_url, self.app.process_id);
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
    let mut client = db::connection_config(&config.database_url)?
        .connect(postgres::NoTls)
        .map_err(|e| format!("cannot connect to DATABASE_URL: {}", db::describe(&e)))?;
    let pending = migrate::pending(&mut client, &config.migrations).map_err(|e| e.to_string())?;
    if !pending.is_empty() {
        return Err(format!("{} migration(s) pending ({}): run `make migrate`", pending.len(), pending.join(", ")));
    }
    drop(client);

    let http_addr = http_listener.local_addr().map_err(|e| e.to_string())?;
    let ws_addr = ws_listener.local_addr().map_err(|e| e.to_string())?;
    let http = Arc::new(tiny_http::Server::from_listener(http_listener, None).map_err(|e| e.to_string())?);
    let process_id = i64::from_le_bytes(auth::random_bytes()) & i64::MAX;
    let jobs = Jobs::start(&config.database_url, (config.workers / 2).max(2))?;
    let notifier = Notifier::start(&config.database_url, process_id)?;
    let hub = Hub::start(jobs.clone(), notifier.clone())?;
    presence::register_process(&config.database_url, process_id)?;
    let app = Arc::new(App {
        login_failures: FailureLimiter::new(config.rate_limits),
        decoy_password_hash: OnceLock::new(),
        ws_url: format!("ws://{ws_addr}/ws"),
        process_id,
        presence: Presence::new(process_id),
        hub,
        notifier,
        jobs,
        next_conn: AtomicU64::new(1),
        ws_open: AtomicUsize::new(0),
        stopping: AtomicBool::new(false),
        config,
    });
    notify::listen(app.clone())?;
    presence::start_heartbeat(app.clone())?;
    ws::listen(app.clone(), ws_listener)?;
    let mut workers = Vec::new();
    for idx in 0..app.config.workers {
        let (http, app) = (http.clone(), app.clone());
        let mut db = Db::new(&app.config.database_url)?;
        let worker = std::thread::Builder::new()
            .name(format!("http-{idx}"))
            .spawn(move || {
                while !app.stopping.load(Ordering::SeqCst) {
                    match http.recv_timeout(RECV_TICK) {
                        Ok(Some(request)) => handle(&app, &mut db, request),
                        Ok(None) => {}
                        Err(error) => log(&app, LogLevel::Error, &format!("accept failed: {error}")),
                    }
                }
            })
            .map_err(|e| format!("cannot start a worker thread: {e}"))?;
        workers.push(worker);
    }
    Ok(Running { app, http_addr, ws_addr, workers })
}

/// One request, start to finish. Never panics out: the worker lives on.
fn handle(app: &App, db: &mut Db, mut request: tiny_http::Request) {
    let started = Instant::now();
    let method = request.method().as_str().to_string();
    let mut ctx = Ctx { app, db, request: &mut request, user_id: None };
    let outcome = catch_unwind(AssertUnwindSafe(|| dispatch(&mut ctx)));
    let user_id = ctx.user_id;
    let (reply, failure) = match outcome {
        Ok(Ok(reply)) => (reply, None),
        Ok(Err(error)) => (Reply::error(&error), Some(error)),
        Err(_) => {
            (Reply::error(&ApiError::Internal(String::new())), Some(ApiError::Internal("handler panicked".into())))
        }
    };
    if matches!(failure, Some(ApiError::Internal(_) | ApiError::Unavailable)) {
        db.disconnect();
    }
    let status = reply.status;
    let path: String = request.url().split('?').next().unwrap_or("").chars().take(200).collect();
    let _ = request.respond(tiny_response(reply));
    let user = user_id.map_or_else(|| "-".to_string(), |id| id.0.to_string());
    let line = format!("{method} {path} {status} {}us user={user}", started.elapsed().as_micros());
    match failure {
        Some(error @ ApiError::Internal(_)) => log(app, LogLevel::Error, &format!("{line} {error}")),
        _ => log(app, LogLevel::Info, &line),
    }
}

/// Routes the request and runs its handler. Public routes are answered in the
/// first `match`; every route past it needs a live session.
fn dispatch(ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let route = router::route(ctx.request.method().as_str(), ctx.request.url())?;
    match route {
        Route::Healthz => return ops::healthz(),
        Route::Readyz => return ops::readyz(ctx),
        Route::WsOnHttpPort => return Err(ApiError::UpgradeRequired { ws_url: ctx.app.ws_url.clone() }),
        Route::CreateUser => return accounts::create_user(ctx),
        Route::CreateSession => return accounts::create_session(ctx),
        Route::LegacySignup => return legacy::signup(ctx),
        Route::LegacyLogin => return legacy::login(ctx),
        _ => {}
    }
    let session = ctx.authenticate()?;
    let user_id = session.user.id;
    match route {
        Route::GetMe => accounts::get_me(&session),
        Route::DeleteCurrentSession => accounts::delete_current_session(ctx, &session),
        Route::DeleteAllSessions => accounts::delete_all_sessions(ctx, &session),
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
        Route::MarkRead(chat) => messages::mark_read(ctx, user_id, chat),
        Route::ListEvents(chat) => events::list_events(ctx, user_id, chat),
        Route::LegacyLogout => legacy::logout(ctx, &session),
        Route::LegacyCreateChat => legacy::create_chat(ctx, user_id),
        Route::LegacyListMessages(chat) => legacy::list_messages(ctx, user_id, chat),
        Route::LegacyListChats => legacy::list_chats(ctx, user_id),
        Route::Healthz
        | Route::Readyz
        | Route::WsOnHttpPort
        | Route::CreateUser
        | Route::CreateSession
        | Route::LegacySignup
        | Route::LegacyLogin => unreachable!("public routes are answered above"),
    }
}

fn tiny_response(reply: Reply) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let has_body = !reply.body.is_empty();
    let mut response = tiny_http::Response::from_data(reply.body).with_status_code(reply.status);
    if has_body {
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

/// Writes one line to stderr if the configured level lets it through.
pub fn log(app: &App, level: LogLevel, line: &str) {
    if app.config.log >= level {
        eprintln!("{line}");
    }
}
