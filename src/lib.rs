//! A small messaging server: REST over tiny_http, WebSocket over tungstenite,
//! PostgreSQL as the only source of truth, threads instead of async.
//!
//! Modules in reading order, roughly from the bottom layer up: plain data,
//! the database and the SQL, the pieces a request is made of, the real-time
//! threads, what the process shares, the handlers by resource, the server
//! that starts it all, and what the fuzz targets call; `client`, the terminal
//! client, imports nothing of ours and sits at the bottom. A module imports only
//! from lower layers, as `LAYERS` below lists them
//! (`tests::modules_import_only_from_lower_layers` checks it);
//! ARCHITECTURE.md has the map and the invariants.

pub mod model;
pub mod client;
pub mod log;
mod error;
mod ratelimit;
mod forwarded;
mod confirm;
mod words;
mod metrics;
pub mod config;
mod db;
mod router;
mod http;
pub mod watch;
mod sequencer;
mod session_cache;
mod reactions;
mod directory;
pub mod migrate;
mod store;
pub mod auth;
mod jobs;
mod notify;
mod hub;
mod listen;
mod presence;
mod app;
mod accounts;
mod chats;
mod messages;
mod search;
mod events;
mod ops;
mod webclient;
mod legacy;
mod ws;
pub mod server;
#[doc(hidden)]
pub mod fuzzing;

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// Each module's layer, from the bottom up: a module may import only from
    /// layers below its own, so no two modules import each other, however
    /// indirectly. ARCHITECTURE.md draws the same picture.
    const LAYERS: [&[&str]; 12] = [
        &["model", "client", "log", "ratelimit", "forwarded", "confirm", "words", "metrics"],
        &["error", "watch", "sequencer", "session_cache", "reactions"],
        &["db", "router", "http", "directory"],
        &["store", "migrate"],
        &["config", "auth", "jobs", "notify"],
        &["hub"],
        &["listen", "presence"],
        &["app"],
        &["accounts", "chats", "messages", "search", "events", "ops", "webclient"],
        &["legacy", "ws"],
        &["server"],
        &["fuzzing"],
    ];

    fn layer(module: &str) -> Option<usize> {
        LAYERS.iter().position(|layer| layer.contains(&module))
    }

    /// The modules a source file names as `crate::<module>`.
    fn imports(source: &str) -> BTreeSet<String> {
        source
            .match_indices("crate::")
            .map(|(idx, _)| {
                let rest = &source[idx + "crate::".len()..];
                rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
            })
            .collect()
    }

    #[test]
    fn modules_import_only_from_lower_layers() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
        let declared: Vec<&str> = lib
            .lines()
            .filter_map(|line| line.strip_prefix("pub mod ").or(line.strip_prefix("mod ")))
            .filter_map(|rest| rest.strip_suffix(';'))
            .collect();
        let mut problems = Vec::new();
        for module in &declared {
            let Some(own) = layer(module) else {
                problems.push(format!("{module} is in no layer"));
                continue;
            };
            let source = std::fs::read_to_string(src.join(format!("{module}.rs"))).unwrap();
            for imported in imports(&source) {
                match layer(&imported) {
                    Some(theirs) if theirs < own => {}
                    _ => problems.push(format!("{module} (layer {own}) imports {imported} ({:?})", layer(&imported))),
                }
            }
        }
        assert_eq!(declared.len(), LAYERS.concat().len(), "every layered module is declared once");
        assert!(problems.is_empty(), "imports against the layers:\n{}", problems.join("\n"));
    }

    #[test]
    fn the_layer_check_sees_imports() {
        let source = "use crate::store;\nuse crate::model::{ChatId, UserId};\nlet x = crate::error::describe(&e);";
        assert_eq!(imports(source), BTreeSet::from(["store".into(), "model".into(), "error".into()]));
    }
}
