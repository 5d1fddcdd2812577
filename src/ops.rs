//! Operations endpoints: liveness, readiness, metrics and the API's
//! description (contract section 7).
//!
//! `healthz` answers while the process runs, without touching the database;
//! `readyz` asks the database, within `READY_TIMEOUT`, so a load balancer
//! stops sending work to a process whose database is gone or frozen;
//! `metrics` shows the process's counts (`metrics.rs`), also without the database.
//! `openapi` serves docs/openapi.json, compiled in, so the document a server
//! describes is the one of its own build; the tests below hold it and the
//! router to the same set of routes.

use std::time::Duration;

use serde_json::json;

use crate::app::Ctx;
use crate::error::ApiError;
use crate::http::Reply;
use crate::metrics::{self, Metrics, Process};

/// The OpenAPI 3.1 document of every HTTP route, as written in the repository.
const OPENAPI: &str = include_str!("../docs/openapi.json");

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

/// `GET /openapi.json`
pub fn openapi() -> Result<Reply, ApiError> {
    Ok(Reply { status: 200, body: OPENAPI.as_bytes().to_vec(), headers: Vec::new() })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::OPENAPI;
    use crate::router::Route;

    fn document() -> Value {
        serde_json::from_str(OPENAPI).expect("docs/openapi.json is JSON")
    }

    /// Every operation as `METHOD /path`, the way `Route::name` writes it.
    fn operations(document: &Value) -> BTreeSet<String> {
        let paths = document["paths"].as_object().expect("paths is an object");
        paths
            .iter()
            .flat_map(|(path, item)| {
                let methods = item.as_object().expect("a path item is an object");
                methods.keys().map(move |method| format!("{} {path}", method.to_uppercase()))
            })
            .collect()
    }

    #[test]
    fn the_document_is_openapi_3_1() {
        let document = document();
        assert_eq!(document["openapi"], "3.1.0");
        assert_eq!(document["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
        assert!(document["components"]["schemas"]["Error"].is_object());
    }

    #[test]
    fn the_document_and_the_router_have_the_same_routes() {
        let documented = operations(&document());
        let routed: BTreeSet<String> = Route::all().iter().map(|route| route.name().to_string()).collect();
        let undocumented: Vec<&String> = routed.difference(&documented).collect();
        assert!(undocumented.is_empty(), "routes missing from docs/openapi.json: {undocumented:?}");
        let unrouted: Vec<&String> = documented.difference(&routed).collect();
        assert!(unrouted.is_empty(), "docs/openapi.json documents routes the router lacks: {unrouted:?}");
    }

    #[test]
    fn every_operation_lists_the_errors_every_route_of_its_kind_can_answer() {
        let document = document();
        for (path, item) in document["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let responses = operation["responses"].as_object().expect("responses is an object");
                let public = operation["security"].as_array().is_some_and(Vec::is_empty);
                let mut expected = vec!["500"];
                if !public {
                    expected.push("401");
                }
                if operation.get("requestBody").is_some() {
                    expected.extend(["400", "413", "415"]);
                }
                for status in expected {
                    assert!(responses.contains_key(status), "{method} {path} does not list {status}");
                }
            }
        }
    }

    #[test]
    fn every_path_placeholder_is_a_declared_path_parameter() {
        let document = document();
        for (path, item) in document["paths"].as_object().unwrap() {
            let placeholders: BTreeSet<&str> =
                path.split('/').filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}')).collect();
            for (method, operation) in item.as_object().unwrap() {
                let declared: BTreeSet<&str> = operation["parameters"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .filter(|parameter| parameter["in"] == "path")
                    .filter_map(|parameter| parameter["name"].as_str())
                    .collect();
                assert_eq!(declared, placeholders, "{method} {path}");
            }
        }
    }
}
