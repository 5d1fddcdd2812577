//! A small messaging server: REST over tiny_http, WebSocket over tungstenite,
//! PostgreSQL as the only source of truth, threads instead of async.
//!
//! Modules in reading order: how the process is configured and started, how a
//! request travels, the handlers by resource, and the storage beneath them.
//! ARCHITECTURE.md has the map and the invariants.

pub mod config;
pub mod server;
pub mod router;
pub mod http;
pub mod error;
pub mod auth;
pub mod ratelimit;
pub mod accounts;
pub mod chats;
pub mod messages;
pub mod events;
pub mod legacy;
pub mod ops;
pub mod ws;
pub mod hub;
pub mod notify;
pub mod presence;
pub mod jobs;
pub mod db;
pub mod store;
pub mod migrate;
