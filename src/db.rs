//! One PostgreSQL connection per worker, with its prepared statements.
//!
//! Each worker owns a `Db`: no pool, no locks. Every statement is prepared
//! once per connection and reused (a `&str` query would cost three round
//! trips). A unit of work (a request, a job) starts with `begin`, and its
//! first use of the connection checks it with one round trip bounded by a
//! client-side timer: a connection the server ended (`pg_terminate_backend`,
//! a restart) is replaced before any statement is sent, so nothing needs a
//! retry, and a database that stopped answering costs `VALIDATE_TIMEOUT`
//! and a `503`, not a hang. Connecting is bounded as a whole (`CONNECT_DEADLINE`),
//! not just its socket. SECURITY.md, "Faults", has the bounds and their limits.
//! Failures and replaced connections are counted in the process's `Metrics`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError};
use postgres::types::ToSql;
use postgres::{Client, GenericClient, NoTls, Row, Statement, Transaction};

use crate::error::{describe, ApiError};
use crate::metrics::{DbError, Metrics};

/// The server-side limits every connection runs under, and no JIT: every
/// statement here is short, and PostgreSQL compiles one whose estimated cost
/// passes `jit_above_cost` (a chat list over a large chat, say) for about
/// 250 ms before running it in a few.
const SESSION_OPTIONS: &str = "-c statement_timeout=10000 -c lock_timeout=5000 \
     -c idle_in_transaction_session_timeout=30000 -c TimeZone=UTC -c jit=off";

/// How long the check at the start of a unit of work waits for its answer.
const VALIDATE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long connecting may take, startup and authentication included
/// (`connect_timeout` bounds only the socket's connect).
const CONNECT_DEADLINE: Duration = Duration::from_secs(5);

type Statements = HashMap<&'static str, Statement>;

pub struct Db {
    config: postgres::Config,
    client: Option<Client>,
    statements: Statements,
    /// Set by `begin`: the next use checks the connection first.
    check: bool,
    /// A connection attempt that outlived its deadline, picked up by the next
    /// use instead of starting another, so a frozen server costs one thread.
    connecting: Option<Receiver<Result<Client, postgres::Error>>>,
    metrics: Arc<Metrics>,
    /// Whether a connection was ever opened: the next one is a reconnect.
    connected_before: bool,
}

impl Db {
    /// Prepares a connection's settings; connects lazily on first use.
    /// Failures and reconnects are counted in `metrics`.
    pub fn new(url: &str, metrics: &Arc<Metrics>) -> Result<Db, String> {
        let config = connection_config(url)?;
        Ok(Db {
            config,
            client: None,
            statements: HashMap::new(),
            check: false,
            connecting: None,
            metrics: metrics.clone(),
            connected_before: false,
        })
    }

    /// Starts a unit of work: its first use of the connection checks it.
    pub fn begin(&mut self) {
        self.check = true;
    }

    /// The connection, checked if `begin` asked for it, opened again if it
    /// was lost. A check that is not answered in time is `503`.
    pub fn sql(&mut self) -> Result<Sql<'_, Client>, ApiError> {
        if std::mem::take(&mut self.check) {
            self.validate(VALIDATE_TIMEOUT)?;
        }
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.disconnect();
            self.client = Some(self.connect(CONNECT_DEADLINE)?);
        }
        let client = self.client.as_mut().expect("connected just above");
        Ok(Sql { client, statements: &mut self.statements, metrics: &self.metrics })
    }

    /// Whether the database answers a round trip within `within`, connecting
    /// first (within the same bound) when there is no connection: `/readyz`.
    pub fn check(&mut self, within: Duration) -> Result<(), ApiError> {
        self.check = false;
        self.validate(within)?;
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.disconnect();
            self.client = Some(self.connect(within)?);
        }
        Ok(())
    }

    /// Sends an empty query and waits `within` for its answer. A connection
    /// the server closed is dropped (the caller connects again); one that
    /// does not answer in time is abandoned and the unit of work gets `503`.
    fn validate(&mut self, within: Duration) -> Result<(), ApiError> {
        let Some(client) = self.client.as_mut() else { return Ok(()) };
        let started = Instant::now();
        match client.is_valid(within) {
            Ok(()) => Ok(()),
            Err(error) if started.elapsed() >= within => {
                self.metrics.db_error(DbError::Timeout);
                self.disconnect();
                Err(ApiError::unavailable(format!(
                    "the database did not answer within {within:?}: {}",
                    describe(&error)
                )))
            }
            Err(_) => {
                self.disconnect();
                Ok(())
            }
        }
    }

    /// Connects within `within`, counting a failure or a reconnect.
    fn connect(&mut self, within: Duration) -> Result<Client, ApiError> {
        let connected = self.try_connect(within);
        match &connected {
            Ok(_) if std::mem::replace(&mut self.connected_before, true) => self.metrics.db_reconnects.inc(),
            Ok(_) => {}
            Err(_) => self.metrics.db_error(DbError::Connect),
        }
        connected
    }

    /// Connects within `within`, on a thread of its own so the wait is
    /// bounded even when the server accepts the socket and then says nothing.
    fn try_connect(&mut self, within: Duration) -> Result<Client, ApiError> {
        let attempt = match self.connecting.take() {
            Some(attempt) => attempt,
            None => {
                let (done, attempt) = bounded(1);
                let config = self.config.clone();
                std::thread::Builder::new()
                    .name("db-connect".into())
                    .spawn(move || drop(done.send(config.connect(NoTls))))
                    .map_err(|e| ApiError::unavailable(format!("cannot start a connecting thread: {e}")))?;
                attempt
            }
        };
        match attempt.recv_timeout(within) {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(error)) => Err(ApiError::unavailable(describe(&error))),
            Err(RecvTimeoutError::Timeout) => {
                self.connecting = Some(attempt);
                Err(ApiError::unavailable(format!("could not connect to the database within {within:?}")))
            }
            Err(RecvTimeoutError::Disconnected) => Err(ApiError::unavailable("the connecting thread ended")),
        }
    }

    /// Runs `work` in one transaction: committed if it returns `Ok`, rolled
    /// back if it returns `Err` or panics (dropping a `Transaction` rolls back).
    pub fn transaction<T>(
        &mut self,
        work: impl FnOnce(&mut Sql<'_, Transaction<'_>>) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let sql = self.sql()?;
        let metrics = sql.metrics;
        let mut tx = counted(metrics, sql.client.transaction())?;
        let value = work(&mut Sql { client: &mut tx, statements: sql.statements, metrics })?;
        counted(metrics, tx.commit())?;
        Ok(value)
    }

    /// Drops the connection, e.g. after a panic left it in an unknown state.
    ///
    /// Dropping a `Client` waits for the answers to statements it sent, which
    /// a frozen server never gives, so a client is dropped on a thread of its
    /// own; that thread ends when the server answers or the socket dies.
    pub fn disconnect(&mut self) {
        self.statements.clear();
        if let Some(client) = self.client.take() {
            if client.is_closed() {
                return;
            }
            let dropped = std::thread::Builder::new().name("db-drop".into()).spawn(move || drop(client));
            if let Err(error) = dropped {
                // No thread to drop it on: leaking the connection beats blocking the caller.
                eprintln!("messaging: cannot start a thread to drop a database connection: {error}");
            }
        }
    }
}

/// Parses a URL and adds the timeouts every connection gets.
pub fn connection_config(url: &str) -> Result<postgres::Config, String> {
    let mut config: postgres::Config =
        url.parse().map_err(|_| "DATABASE_URL is not a valid connection string".to_string())?;
    config
        .connect_timeout(Duration::from_secs(5))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(10))
        .options(SESSION_OPTIONS)
        .application_name("messaging");
    Ok(config)
}

/// A connection or a transaction, with the worker's statement cache.
pub struct Sql<'a, C> {
    client: &'a mut C,
    statements: &'a mut Statements,
    metrics: &'a Metrics,
}

/// Passes `result` on, counting its error unless the request caused it.
fn counted<T>(metrics: &Metrics, result: Result<T, postgres::Error>) -> Result<T, postgres::Error> {
    if let Err(error) = &result {
        if is_failure(error.code().map(|state| state.code())) {
            metrics.db_error(DbError::Statement);
        }
    }
    result
}

/// Whether an error with this SQLSTATE is the database failing rather than
/// the request: an integrity constraint violation (class 23, a username
/// taken, a `client_id` used twice) is what `store.rs` answers as `409`, and
/// counts as no database error.
fn is_failure(sqlstate: Option<&str>) -> bool {
    !sqlstate.is_some_and(|code| code.starts_with("23"))
}

impl<C: GenericClient> Sql<'_, C> {
    /// The connection itself, for what statements cannot do (notifications).
    pub fn client(&mut self) -> &mut C {
        self.client
    }

    fn prepared(&mut self, query: &'static str) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.statements.get(query) {
            return Ok(statement.clone());
        }
        let statement = counted(self.metrics, self.client.prepare(query))?;
        self.statements.insert(query, statement.clone());
        Ok(statement)
    }

    pub fn query(&mut self, query: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, postgres::Error> {
        let statement = self.prepared(query)?;
        counted(self.metrics, self.client.query(&statement, params))
    }

    pub fn query_opt(
        &mut self,
        query: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, postgres::Error> {
        let statement = self.prepared(query)?;
        counted(self.metrics, self.client.query_opt(&statement, params))
    }

    pub fn query_one(&mut self, query: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, postgres::Error> {
        let statement = self.prepared(query)?;
        counted(self.metrics, self.client.query_one(&statement, params))
    }

    pub fn execute(&mut self, query: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, postgres::Error> {
        let statement = self.prepared(query)?;
        counted(self.metrics, self.client.execute(&statement, params))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraint_violations_are_the_requests_and_the_rest_are_failures() {
        for (sqlstate, failure) in [
            (Some("23505"), false),
            (Some("23503"), false),
            (Some("57014"), true),
            (Some("55P03"), true),
            (Some("42P01"), true),
            (None, true),
        ] {
            assert_eq!(is_failure(sqlstate), failure, "{sqlstate:?}");
        }
    }
}
