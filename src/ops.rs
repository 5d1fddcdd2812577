//! Operations endpoints: liveness and readiness (contract section 7).
//!
//! `healthz` answers while the process runs, without touching the database;
//! `readyz` asks the database, so a load balancer stops sending work to a
//! process whose database is gone.

use serde_json::json;

use crate::app::Ctx;
use crate::error::ApiError;
use crate::http::Reply;
use crate::store;

/// `GET /healthz`
pub fn healthz() -> Result<Reply, ApiError> {
    Ok(Reply::json(200, &json!({ "status": "ok" })))
}

/// `GET /readyz`: `503 unavailable` unless the database answers.
pub fn readyz(ctx: &mut Ctx) -> Result<Reply, ApiError> {
    store::ping(&mut ctx.db.sql()?)?;
    Ok(Reply::json(200, &json!({ "status": "ready" })))
}
