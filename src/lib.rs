//! A small messaging server: REST over tiny_http, WebSocket over tungstenite,
//! PostgreSQL as the only source of truth, threads instead of async.
//!
//! Modules in reading order: how the process is configured and started, how a
//! request travels, the handlers by resource, and the storage beneath them.
//! ARCHITECTURE.md has the map and the invariants.

pub mod accounts;
pub mod auth;
pub mod chats;
pub mod config;
pub mod db;
pub mod error;
pub mod events;
pub mod http;
pub mod hub;
pub mod jobs;
pub mod legacy;
pub mod messages;
pub mod migrate;
pub mod notify;
pub mod ops;
pub mod presence;
pub mod ratelimit;
pub mod router;
pub mod server;
pub mod store;
pub mod ws;
