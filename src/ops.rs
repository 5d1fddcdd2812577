//! Operations endpoints: liveness, readiness and metrics (contract section 7).
//!
//! `healthz` answers while the process runs, without touching the database;
//! `readyz` asks the database, within `READY_TIMEOUT`, so a load balancer
//! stops sending work to a process whose database is gone or frozen;
//! `metrics` shows the process's counts (`metrics.rs`), also without the database.

use std::time::Duration;

use serde_json::json;

use crate::app::Ctx;
use crate::error::ApiError;
use crate::http::Reply;
use crate::metrics::{self, Metrics, Process};

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

/// `GET /metrics`: the Prometheus text exposition of `metrics`.
pub fn metrics(metrics: &Metrics) -> Result<Reply, ApiError> {
    Ok(Reply::text(200, metrics::CONTENT_TYPE, metrics.render(Process::read())))
}
