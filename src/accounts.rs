//! Handlers for accounts and sessions: sign up, log in, who am I, log out,
//! find users (contract section 2).
//!
//! A wrong password and an unknown login take the same time and give the
//! same body: an unknown login still pays for one password hash.

use serde_json::json;
use time::OffsetDateTime;

use crate::app::Ctx;
use crate::auth;
use crate::error::ApiError;
use crate::http::{Body, Reply};
use crate::model::{rfc3339, Me, Session, UserId};
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
        if !(8..=1024).contains(&password.len()) {
            return Err(ApiError::invalid("password", "password must be 8 to 1024 bytes"));
        }
        Ok(NewUser { username, email, password })
    }
}

/// The longest login that can name an account: an email of 254 characters, in UTF-8.
const MAX_LOGIN_BYTES: usize = 254 * 4;

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
    let address = ctx.client_address();
    let limiter = &ctx.app.limits.logins;
    if login.len() > MAX_LOGIN_BYTES {
        // No account has such a login: it fails at once, counted against the
        // address only, which keeps the limiter's keys small.
        if let Err(retry_after_secs) = limiter.check(None, &address) {
            return Err(ApiError::RateLimited { retry_after_secs });
        }
        limiter.record_failure(None, &address);
        return Err(ApiError::InvalidCredentials);
    }
    if let Err(retry_after_secs) = limiter.check(Some(login), &address) {
        return Err(ApiError::RateLimited { retry_after_secs });
    }
    let found = store::find_user_by_login(&mut ctx.db.sql()?, login)?;
    let verified = match &found {
        Some((_, password_hash)) => auth::verify_password(password, password_hash),
        None => {
            let iterations = ctx.app.config.password_iterations;
            let decoy = ctx.app.decoy_password_hash.get_or_init(|| auth::hash_password("decoy password", iterations));
            auth::verify_password(password, decoy);
            false
        }
    };
    let Some((user, _)) = found.filter(|_| verified) else {
        ctx.app.limits.logins.record_failure(Some(login), &address);
        return Err(ApiError::InvalidCredentials);
    };
    let (token, token_hash) = auth::new_token();
    let ttl = ctx.app.config.token_ttl;
    let expires_at = store::insert_session(&mut ctx.db.sql()?, &token_hash, user.id, ttl)?;
    ctx.user_id = Some(user.id);
    Ok(LoggedIn { token, expires_at, user })
}

/// `GET /api/users/me`
pub fn get_me(session: &Session) -> Result<Reply, ApiError> {
    Ok(Reply::json(200, &session.user))
}

/// `DELETE /api/sessions/current`
pub fn delete_current_session(ctx: &mut Ctx, session: &Session) -> Result<Reply, ApiError> {
    ctx.app.end_sessions(ctx.db, |tx| store::delete_session(tx, session.id).map(|()| vec![session.id]))?;
    Ok(Reply::no_content())
}

/// `DELETE /api/sessions`
pub fn delete_all_sessions(ctx: &mut Ctx, session: &Session) -> Result<Reply, ApiError> {
    ctx.app.end_sessions(ctx.db, |tx| store::delete_user_sessions(tx, session.user.id))?;
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
