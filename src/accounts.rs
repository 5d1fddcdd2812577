//! Handlers for accounts and sessions: sign up, log in, who am I, log out,
//! find users (contract section 2), list and end sessions, change the
//! password (section 9).
//!
//! A wrong password and an unknown login take the same time and give the
//! same body: an unknown login still pays for one password hash. Every
//! password check, at login or at a password change, goes through the same
//! failure limits: a login counts under the name it gave, a password change
//! under both of the account's names (`ratelimit.rs`).

use postgres::GenericClient;
use serde_json::json;
use time::OffsetDateTime;

use crate::app::Ctx;
use crate::auth;
use crate::db::Sql;
use crate::error::ApiError;
use crate::http::{Body, Reply};
use crate::model::{rfc3339, Me, Session, SessionId, UserId};
use crate::ratelimit::MAX_LOGIN_BYTES;
use crate::store;

/// A valid sign-up, checked field by field.
pub struct NewUser<'a> {
    pub username: &'a str,
    pub email: &'a str,
    pub password: &'a str,
}

impl<'a> NewUser<'a> {
    pub fn parse(body: &'a Body) -> Result<NewUser<'a>, ApiError> {
        let username = body.str("username")?;
        let email = body.str("email")?;
        let password = body.str("password")?;
        let username_chars = username.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !(3..=32).contains(&username.chars().count()) || !username_chars {
            return Err(ApiError::invalid("username", "username must be 3 to 32 characters from a-z A-Z 0-9 _ . -"));
        }
        let at_parts: Vec<&str> = email.split('@').collect();
        let well_formed = matches!(at_parts.as_slice(), [local, domain] if !local.is_empty() && !domain.is_empty());
        if email.chars().count() > 254 || !well_formed {
            return Err(ApiError::invalid(
                "email",
                "email must be at most 254 characters with one @ and text on both sides",
            ));
        }
        check_password_length("password", password)?;
        Ok(NewUser { username, email, password })
    }
}

/// A new password's rule (contract section 2): 8 to 1024 bytes; else `400` naming `field`.
fn check_password_length(field: &'static str, password: &str) -> Result<(), ApiError> {
    if !(8..=1024).contains(&password.len()) {
        return Err(ApiError::invalid(field, format!("{field} must be 8 to 1024 bytes")));
    }
    Ok(())
}

/// A new session's token, expiry and user.
pub struct LoggedIn {
    pub token: String,
    pub expires_at: OffsetDateTime,
    pub user: Me,
}

/// `POST /api/users`
pub fn create_user(ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let body = ctx.body()?;
    let me = register(ctx, &NewUser::parse(&body)?)?;
    Ok(Reply::json(201, &me))
}

/// Stores a new account; `409` naming the field when username or email is
/// taken, `429` past the sign-ups allowed from the client's address (which
/// every valid attempt counts against, taken names included).
pub fn register(ctx: &mut Ctx, new_user: &NewUser) -> Result<Me, ApiError> {
    if let Err(retry_after_secs) = ctx.app.limits.signups.take(&ctx.client_address()) {
        return Err(ApiError::RateLimited { retry_after_secs });
    }
    let password_hash = auth::hash_password(new_user.password, ctx.app.config.password_iterations);
    store::insert_user(&mut ctx.db.sql()?, new_user.username, new_user.email, &password_hash)
}

/// `POST /api/sessions`
pub fn create_session(ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let body = ctx.body()?;
    let logged_in = log_in(ctx, body.str("login")?, body.str("password")?)?;
    Ok(Reply::json(
        201,
        &json!({ "token": logged_in.token, "expires_at": rfc3339(logged_in.expires_at), "user": logged_in.user }),
    ))
}

/// Checks a login (username or email) and password, under the failure limits.
pub fn log_in(ctx: &mut Ctx, login: &str, password: &str) -> Result<LoggedIn, ApiError> {
    // A login longer than any account's fails at once, counted against the
    // address only, which keeps the limiter's keys small.
    let (counted_as, found) = match login.len() <= MAX_LOGIN_BYTES {
        true => (&[login][..], store::find_user_by_login(&mut ctx.db.sql()?, login)?),
        false => (&[][..], None),
    };
    check_password(ctx, counted_as, password, found.as_ref().map(|(_, password_hash)| password_hash.as_str()))?;
    let Some((user, _)) = found else { return Err(ApiError::InvalidCredentials) };
    let (token, token_hash) = auth::new_token();
    let ttl = ctx.app.config.token_ttl;
    let expires_at = store::insert_session(&mut ctx.db.sql()?, &token_hash, user.id, ttl)?;
    ctx.user_id = Some(user.id);
    Ok(LoggedIn { token, expires_at, user })
}

/// Checks `password` against `stored` (`None`: no account) under the failure
/// limits: `429` while they apply to any of `logins` (empty: a login too long
/// to name an account) or to the client's address, and a failure counted
/// under each of them and the address when it is wrong (`401 invalid_credentials`).
/// Without an account it still pays for one hash, so both cases take as long,
/// except for a login too long to name an account, which fails at once.
fn check_password(ctx: &Ctx, logins: &[&str], password: &str, stored: Option<&str>) -> Result<(), ApiError> {
    let address = ctx.client_address();
    let limiter = &ctx.app.limits.logins;
    if let Err(retry_after_secs) = limiter.check(logins, &address) {
        return Err(ApiError::RateLimited { retry_after_secs });
    }
    let verified = match stored {
        Some(password_hash) => auth::verify_password(password, password_hash),
        None if logins.is_empty() => false,
        None => {
            let iterations = ctx.app.config.password_iterations;
            let decoy = ctx.app.decoy_password_hash.get_or_init(|| auth::hash_password("decoy password", iterations));
            auth::verify_password(password, decoy);
            false
        }
    };
    if !verified {
        limiter.record_failure(logins, &address);
        return Err(ApiError::InvalidCredentials);
    }
    Ok(())
}

/// `GET /api/users/me`
pub fn get_me(session: &Session) -> Result<Reply, ApiError> {
    Ok(Reply::json(200, &session.user))
}

/// `DELETE /api/sessions/current`
pub fn delete_current_session(ctx: &mut Ctx, session: &Session) -> Result<Reply, ApiError> {
    ctx.app.end_sessions(ctx.db, |tx| {
        lock_own_sessions(tx, session)?;
        store::delete_session(tx, session.id).map(|()| vec![session.id])
    })?;
    Ok(Reply::no_content())
}

/// `DELETE /api/sessions`
pub fn delete_all_sessions(ctx: &mut Ctx, session: &Session) -> Result<Reply, ApiError> {
    ctx.app.end_sessions(ctx.db, |tx| {
        lock_own_sessions(tx, session)?;
        store::delete_user_sessions(tx, session.user.id)
    })?;
    Ok(Reply::no_content())
}

/// `GET /api/sessions`: the caller's live sessions, newest first.
pub fn list_sessions(ctx: &mut Ctx, session: &Session) -> Result<Reply, ApiError> {
    let sessions = store::list_user_sessions(&mut ctx.db.sql()?, session.user.id, session.id)?;
    Ok(Reply::json(200, &json!({ "sessions": sessions })))
}

/// `DELETE /api/sessions/{id}`: one of the caller's live sessions, else `404`
/// (someone else's, ended, expired or unknown answer alike).
pub fn delete_session(ctx: &mut Ctx, session: &Session, session_id: SessionId) -> Result<Reply, ApiError> {
    ctx.app.end_sessions(ctx.db, |tx| {
        lock_own_sessions(tx, session)?;
        let ended = store::delete_user_session(tx, session.user.id, session_id)?;
        ended.map(|id| vec![id]).ok_or(ApiError::NotFound)
    })?;
    Ok(Reply::no_content())
}

/// Locks the caller's user row, so that the requests of one user that end
/// sessions happen one at a time (each locks that one row first, so they
/// never deadlock); `401` when the caller's own session has ended since the
/// request was authenticated (by another such request, say), so it ends nothing.
fn lock_own_sessions(tx: &mut Sql<impl GenericClient>, session: &Session) -> Result<(), ApiError> {
    store::lock_user(tx, session.user.id)?;
    match store::find_live_sessions(tx, &[session.id])?.is_empty() {
        true => Err(ApiError::Unauthorized),
        false => Ok(()),
    }
}

/// `PUT /api/users/me/password`: the current password, checked under the
/// login failure limits, then the new one stored and every other session
/// ended in one transaction.
pub fn change_password(ctx: &mut Ctx, session: &Session) -> Result<Reply, ApiError> {
    let body = ctx.body()?;
    let current_password = body.str("current_password")?;
    let new_password = body.str("new_password")?;
    check_password_length("new_password", new_password)?;
    let user_id = session.user.id;
    let stored = store::find_password_hash(&mut ctx.db.sql()?, user_id)?.ok_or(ApiError::Unauthorized)?;
    let names = [session.user.username.as_str(), session.user.email.as_str()];
    check_password(ctx, &names, current_password, Some(&stored))?;
    let new_hash = auth::hash_password(new_password, ctx.app.config.password_iterations);
    ctx.app.end_sessions(ctx.db, |tx| {
        lock_own_sessions(tx, session)?;
        // Unchanged since it was checked, or a concurrent change won: then
        // the current password given is no longer the current one.
        if !store::replace_password_hash(tx, user_id, &stored, &new_hash)? {
            return Err(ApiError::InvalidCredentials);
        }
        store::delete_other_sessions(tx, user_id, session.id)
    })?;
    Ok(Reply::no_content())
}

/// `POST /api/ws-tickets`: a signed pass for browsers, which cannot set headers on a WebSocket.
pub fn create_ws_ticket(ctx: &mut Ctx, session: &Session) -> Result<Reply, ApiError> {
    let expires_at = OffsetDateTime::now_utc() + time::Duration::seconds(auth::TICKET_TTL_SECS);
    let ticket = auth::sign_ticket(&ctx.app.config.secret_key, session.id, expires_at.unix_timestamp());
    let expires_at = expires_at.replace_nanosecond(0).unwrap_or(expires_at);
    Ok(Reply::json(201, &json!({ "ticket": ticket, "expires_at": rfc3339(expires_at), "ws_url": ctx.app.ws_url })))
}

/// `GET /api/users?q=<prefix>&limit=<n>`
pub fn search_users(ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let query = ctx.query();
    let limit = query.int("limit", 1, 100)?.unwrap_or(20);
    let prefix = query.text("q")?.unwrap_or("");
    let users = store::search_users(&mut ctx.db.sql()?, prefix, limit)?;
    Ok(Reply::json(200, &json!({ "users": users })))
}

/// `GET /api/users/{id}`
pub fn get_user(ctx: &mut Ctx, user_id: UserId) -> Result<Reply, ApiError> {
    let user = store::find_user(&mut ctx.db.sql()?, user_id)?.ok_or(ApiError::NotFound)?;
    Ok(Reply::json(200, &user))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_password_is_8_to_1024_bytes_else_400_naming_its_field() {
        let (longest, too_long) = ("x".repeat(1024), "x".repeat(1025));
        for password in ["12345678", "éééé", &longest] {
            assert!(check_password_length("new_password", password).is_ok(), "{} bytes", password.len());
        }
        for password in ["", "1234567", "ééé", &too_long] {
            let error = check_password_length("new_password", password).expect_err("outside 8 to 1024 bytes");
            assert_eq!((error.status(), error.field()), (400, Some("new_password")), "{} bytes", password.len());
        }
    }
}
