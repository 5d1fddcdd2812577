//! Every SQL statement the handlers run, as typed functions.
//!
//! Each takes parameters; none formats SQL text. Every statement is a
//! `&'static str`, so `db.rs` prepares it once per connection and reuses it.

use std::time::Duration;

use postgres::error::SqlState;
use postgres::{GenericClient, Row};
use time::OffsetDateTime;

use crate::accounts::Me;
use crate::auth::Session;
use crate::db::Sql;
use crate::error::ApiError;
use crate::router::UserId;

fn me_from(row: &Row, first: usize) -> Me {
    Me { id: row.get(first), username: row.get(first + 1), email: row.get(first + 2), created_at: row.get(first + 3) }
}

/// Inserts an account; a taken username or email is `409` naming the field.
pub fn insert_user(
    sql: &mut Sql<impl GenericClient>,
    username: &str,
    email: &str,
    password_hash: &str,
) -> Result<Me, ApiError> {
    let inserted = sql.query_one(
        "INSERT INTO users (username, email, password_hash) VALUES ($1, $2, $3)
         RETURNING id, username, email, created_at",
        &[&username, &email, &password_hash],
    );
    match inserted {
        Ok(row) => Ok(me_from(&row, 0)),
        Err(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            let constraint = error.as_db_error().and_then(|e| e.constraint()).unwrap_or("");
            if constraint == "users_email_key" {
                Err(ApiError::conflict("email", "email is already registered"))
            } else {
                Err(ApiError::conflict("username", "username is taken"))
            }
        }
        Err(error) => Err(error.into()),
    }
}

/// The account whose username or email is `login` (either case), with its password hash.
pub fn find_user_by_login(sql: &mut Sql<impl GenericClient>, login: &str) -> Result<Option<(Me, String)>, ApiError> {
    let row = sql.query_opt(
        "SELECT id, username, email, created_at, password_hash FROM users
         WHERE lower(username) = lower($1) OR lower(email) = lower($1)
         ORDER BY lower(username) = lower($1) DESC LIMIT 1",
        &[&login],
    )?;
    Ok(row.map(|row| (me_from(&row, 0), row.get(4))))
}

/// Stores a session for a token's hash; deletes the user's expired ones on the way.
pub fn insert_session(
    sql: &mut Sql<impl GenericClient>,
    token_hash: &[u8; 32],
    user_id: i64,
    ttl: Duration,
) -> Result<OffsetDateTime, ApiError> {
    sql.execute("DELETE FROM sessions WHERE user_id = $1 AND expires_at <= now()", &[&user_id])?;
    let ttl_secs = ttl.as_secs() as f64;
    let row = sql.query_one(
        "INSERT INTO sessions (token_hash, user_id, expires_at)
         VALUES ($1, $2, now() + make_interval(secs => $3)) RETURNING expires_at",
        &[&token_hash.as_slice(), &user_id, &ttl_secs],
    )?;
    Ok(row.get(0))
}

/// The live (unexpired) session for a token's hash, with its user.
pub fn find_session(sql: &mut Sql<impl GenericClient>, token_hash: &[u8; 32]) -> Result<Option<Session>, ApiError> {
    let row = sql.query_opt(
        "SELECT s.id, u.id, u.username, u.email, u.created_at
         FROM sessions s JOIN users u ON u.id = s.user_id
         WHERE s.token_hash = $1 AND s.expires_at > now()",
        &[&token_hash.as_slice()],
    )?;
    Ok(row.map(|row| Session { id: row.get(0), user: me_from(&row, 1) }))
}

pub fn delete_session(sql: &mut Sql<impl GenericClient>, session_id: i64) -> Result<(), ApiError> {
    sql.execute("DELETE FROM sessions WHERE id = $1", &[&session_id])?;
    Ok(())
}

/// Deletes every session of a user; returns their ids.
pub fn delete_user_sessions(sql: &mut Sql<impl GenericClient>, user_id: i64) -> Result<Vec<i64>, ApiError> {
    let rows = sql.query("DELETE FROM sessions WHERE user_id = $1 RETURNING id", &[&user_id])?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Users whose username starts with `prefix`, ignoring case, by username.
pub fn search_users(
    sql: &mut Sql<impl GenericClient>,
    prefix: &str,
    limit: i64,
) -> Result<Vec<(i64, String)>, ApiError> {
    let pattern = format!("{}%", like_escape(&prefix.to_lowercase()));
    let rows = sql.query(
        "SELECT id, username FROM users WHERE lower(username) LIKE $1
         ORDER BY lower(username) LIMIT $2",
        &[&pattern, &limit],
    )?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

pub fn find_username(sql: &mut Sql<impl GenericClient>, user_id: UserId) -> Result<Option<String>, ApiError> {
    Ok(sql.query_opt("SELECT username FROM users WHERE id = $1", &[&user_id.0])?.map(|row| row.get(0)))
}

/// Escapes `\`, `%` and `_` so user text matches itself in a LIKE pattern.
fn like_escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

/// Succeeds when the database answers.
pub fn ping(sql: &mut Sql<impl GenericClient>) -> Result<(), ApiError> {
    sql.query_one("SELECT 1", &[])?;
    Ok(())
}
