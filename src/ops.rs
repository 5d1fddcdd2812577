//! Operations endpoints: liveness and readiness (contract section 7).
//!
//! `healthz` answers while the process runs, without touching the database;
//! `readyz` asks the database, within `READY_TIMEOUT`, so a load balancer
//! stops sending work to a process whose database is gone or frozen.

use std::time::Duration;

use serde_json::json;

use crate::app::Ctx;
use crate::error::ApiError;
use crate::http::Reply;

/// How long `readyz` waits for the database: to connect, then to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /healthz`
pub fn healthz() -> Result<Reply, ApiError> {
    Ok(Reply::json(200, &json!({ "status": "ok" })))
}

/// `GET /readyz`: `503 unavailable` unless the database answers within `READY_TIMEOUT`.
pub fn readyz(ctx: &mut Ctx) -> Result<Reply, ApiError> {
    ctx.db.check(READY_TIMEOUT)?;
    Ok(Reply::json(200, &json!({ "status": "ready" })))
}
