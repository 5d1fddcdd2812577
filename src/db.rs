//! One PostgreSQL connection per worker, with its prepared statements.
//!
//! Each worker owns a `Db`: no pool, no locks. Every statement is prepared
//! once per connection and reused (a `&str` query would cost three round
//! trips). A connection found dead is dropped; the request that found it gets
//! `503 unavailable` and the next request connects again. Every wait has a
//! bound: connect timeout, statement timeout, lock timeout, TCP keepalives.

use std::collections::HashMap;
use std::time::Duration;

use postgres::types::ToSql;
use postgres::{Client, GenericClient, NoTls, Row, Statement, Transaction};

use crate::error::{describe, ApiError};

/// The server-side limits every connection runs under.
const SESSION_OPTIONS: &str =
    "-c statement_timeout=10000 -c lock_timeout=5000 -c idle_in_transaction_session_timeout=30000 -c TimeZone=UTC";

type Statements = HashMap<&'static str, Statement>;

pub struct Db {
    config: postgres::Config,
    client: Option<Client>,
    statements: Statements,
}

impl Db {
    /// Prepares a connection's settings; connects lazily on first use.
    pub fn new(url: &str) -> Result<Db, String> {
        Ok(Db { config: connection_config(url)?, client: None, statements: HashMap::new() })
    }

    /// The connection, opened again if it was lost.
    pub fn sql(&mut self) -> Result<Sql<'_, Client>, ApiError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.statements.clear();
            self.client = None;
            let client = self.config.connect(NoTls).map_err(|e| ApiError::unavailable(describe(&e)))?;
            self.client = Some(client);
        }
        let client = self.client.as_mut().expect("connected just above");
        Ok(Sql { client, statements: &mut self.statements })
    }

    /// Runs `work` in one transaction: committed if it returns `Ok`, rolled
    /// back if it returns `Err` or panics (dropping a `Transaction` rolls back).
    pub fn transaction<T>(
        &mut self,
        work: impl FnOnce(&mut Sql<'_, Transaction<'_>>) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let sql = self.sql()?;
        let mut tx = sql.client.transaction()?;
        let value = work(&mut Sql { client: &mut tx, statements: sql.statements })?;
        tx.commit()?;
        Ok(value)
    }

    /// Drops the connection, e.g. after a panic left it in an unknown state.
    pub fn disconnect(&mut self) {
        self.client = None;
        self.statements.clear();
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
        .options(SESSION_OPTIONS)
        .application_name("messaging");
    Ok(config)
}

/// A connection or a transaction, with the worker's statement cache.
pub struct Sql<'a, C> {
    client: &'a mut C,
    statements: &'a mut Statements,
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
        let statement = self.client.prepare(query)?;
        self.statements.insert(query, statement.clone());
        Ok(statement)
    }

    pub fn query(&mut self, query: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, postgres::Error> {
        let statement = self.prepared(query)?;
        self.client.query(&statement, params)
    }

    pub fn query_opt(
        &mut self,
        query: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, postgres::Error> {
        let statement = self.prepared(query)?;
        self.client.query_opt(&statement, params)
    }

    pub fn query_one(&mut self, query: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, postgres::Error> {
        let statement = self.prepared(query)?;
        self.client.query_one(&statement, params)
    }

    pub fn execute(&mut self, query: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, postgres::Error> {
        let statement = self.prepared(query)?;
        self.client.execute(&statement, params)
    }
}
