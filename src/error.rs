//! The contract's error codes, and the only place that builds error bodies.
//!
//! A client sees a code and a sentence; the log sees the cause. `Internal`
//! and `Unavailable` keep their cause for the log line and never show it to
//! the client, so a 500 or 503 body holds no SQL text, type name or stack trace.

use std::fmt;

use serde_json::json;

use crate::log::Level;

/// Every way a request can fail, one variant per code of contract section 1.
/// `Internal` and `Unavailable` (a dependency such as the database cannot
/// answer now) carry their cause for the log.
#[derive(Debug)]
pub enum ApiError {
    InvalidRequest { field: Option<&'static str>, message: String },
    Unauthorized,
    InvalidCredentials,
    Forbidden(&'static str),
    NotFound,
    MethodNotAllowed { allow: String },
    Conflict { field: Option<&'static str>, message: String },
    PayloadTooLarge { limit: usize },
    UnsupportedMediaType,
    RateLimited { retry_after_secs: u64 },
    UpgradeRequired { ws_url: String },
    Internal(String),
    Unavailable(String),
}

impl ApiError {
    /// A `400 invalid_request` naming the field at fault.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::InvalidRequest { field: Some(field), message: message.into() }
    }

    /// A `400 invalid_request` that is not about one field (malformed JSON, say).
    pub fn malformed(message: impl Into<String>) -> ApiError {
        ApiError::InvalidRequest { field: None, message: message.into() }
    }

    /// A `503 unavailable` with its cause for the log.
    pub fn unavailable(cause: impl Into<String>) -> ApiError {
        ApiError::Unavailable(cause.into())
    }

    /// A `409 conflict` naming the field at fault.
    pub fn conflict(field: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::Conflict { field: Some(field), message: message.into() }
    }

    pub fn status(&self) -> u16 {
        match self {
            ApiError::InvalidRequest { .. } => 400,
            ApiError::Unauthorized | ApiError::InvalidCredentials => 401,
            ApiError::Forbidden(_) => 403,
            ApiError::NotFound => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::Conflict { .. } => 409,
            ApiError::PayloadTooLarge { .. } => 413,
            ApiError::UnsupportedMediaType => 415,
            ApiError::UpgradeRequired { .. } => 426,
            ApiError::RateLimited { .. } => 429,
            ApiError::Internal(_) => 500,
            ApiError::Unavailable(_) => 503,
        }
    }

    /// The machine-readable code of the contract.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest { .. } => "invalid_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::InvalidCredentials => "invalid_credentials",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::Conflict { .. } => "conflict",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::UpgradeRequired { .. } => "upgrade_required",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Internal(_) => "internal",
            ApiError::Unavailable(_) => "unavailable",
        }
    }

    /// The sentence for humans; never a cause from inside the server.
    pub fn message(&self) -> String {
        match self {
            ApiError::InvalidRequest { message, .. } | ApiError::Conflict { message, .. } => message.clone(),
            ApiError::Unauthorized => "a valid bearer token is required".into(),
            ApiError::InvalidCredentials => "login or password is wrong".into(),
            ApiError::Forbidden(why) => (*why).into(),
            ApiError::NotFound => "no such resource".into(),
            ApiError::MethodNotAllowed { allow } => format!("method not allowed; use {allow}"),
            ApiError::PayloadTooLarge { limit } => format!("body is larger than {limit} bytes"),
            ApiError::UnsupportedMediaType => "body must be sent as application/json".into(),
            ApiError::UpgradeRequired { ws_url } => format!("connect to {ws_url} for WebSocket"),
            ApiError::RateLimited { retry_after_secs } => {
                format!("too many attempts; retry in {retry_after_secs} seconds")
            }
            ApiError::Internal(_) => "internal error".into(),
            ApiError::Unavailable(_) => "service unavailable; try again".into(),
        }
    }

    /// How loudly the log reports this error: a server fault at `error`, an
    /// unavailable dependency at `warn`, a client's mistake at `info`.
    pub fn log_level(&self) -> Level {
        match self {
            ApiError::Internal(_) => Level::Error,
            ApiError::Unavailable(_) => Level::Warn,
            _ => Level::Info,
        }
    }

    /// The field at fault, when one is.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            ApiError::InvalidRequest { field, .. } | ApiError::Conflict { field, .. } => *field,
            _ => None,
        }
    }

    /// The contract's error body: `{"error": {"code", "message", "field"?}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut error = json!({ "code": self.code(), "message": self.message() });
        if let Some(field) = self.field() {
            error["field"] = json!(field);
        }
        if let ApiError::UpgradeRequired { ws_url } = self {
            // The contract's "error shape and a `ws_url` field": beside `error`, which keeps its shape.
            return json!({ "error": error, "ws_url": ws_url });
        }
        json!({ "error": error })
    }

    /// The WebSocket `error` frame: the same code and message, and the
    /// `client_id` of the frame at fault when it had one.
    pub fn to_frame(&self, client_id: Option<&str>) -> serde_json::Value {
        let mut frame = json!({ "type": "error", "code": self.code(), "message": self.message() });
        if let Some(field) = self.field() {
            frame["field"] = json!(field);
        }
        if let Some(client_id) = client_id {
            frame["client_id"] = json!(client_id);
        }
        frame
    }

    /// Headers the contract requires beside some codes.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            ApiError::Unauthorized => vec![("WWW-Authenticate", "Bearer".into())],
            ApiError::MethodNotAllowed { allow } => vec![("Allow", allow.clone())],
            ApiError::RateLimited { retry_after_secs } => {
                vec![("Retry-After", retry_after_secs.to_string())]
            }
            _ => vec![],
        }
    }
}

/// What the log line says: the code, and for internal and unavailable errors the cause.
impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Internal(cause) | ApiError::Unavailable(cause) => write!(f, "{}: {cause}", self.code()),
            other => f.write_str(other.code()),
        }
    }
}

/// A database error is `Unavailable` when the connection is gone (the worker
/// reconnects on its next request) and `Internal` otherwise.
impl From<postgres::Error> for ApiError {
    fn from(error: postgres::Error) -> ApiError {
        use postgres::error::SqlState;
        let transient = [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::QUERY_CANCELED,
            SqlState::LOCK_NOT_AVAILABLE,
        ];
        let io = std::error::Error::source(&error).is_some_and(|cause| cause.is::<std::io::Error>());
        if error.is_closed() || io || error.code().is_some_and(|code| transient.contains(code)) {
            return ApiError::Unavailable(describe(&error));
        }
        ApiError::Internal(describe(&error))
    }
}

/// A database error in words for a log line or an operator: the server's
/// message when the server sent one, else the underlying cause (the crate's
/// own `Display` says only "db error" or "error connecting to server").
pub fn describe(error: &postgres::Error) -> String {
    match (error.as_db_error(), std::error::Error::source(error)) {
        (Some(db), _) => format!("{} ({})", db.message(), db.code().code()),
        (None, Some(cause)) => format!("{error}: {cause}"),
        (None, None) => error.to_string(),
    }
}
