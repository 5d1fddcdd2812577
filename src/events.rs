//! The per-chat event log: its shape, `GET /api/chats/{id}/events`, and the
//! one place a committed change leaves the handlers (`publish`).
//!
//! Every change to a chat appends one event in the same transaction that
//! makes the change, numbered by the chat row's `last_seq` under its lock, so
//! seqs run 1, 2, 3, … without gaps and in commit order. Read markers, typing
//! and presence are live only and never stored here.

use serde::Serialize;
use serde_json::json;
use time::OffsetDateTime;

use crate::chats::{ChatInfo, Member};
use crate::error::ApiError;
use crate::http::Reply;
use crate::hub::Live;
use crate::messages::Message;
use crate::notify::Signal;
use crate::router::ChatId;
use crate::server::{App, Ctx};
use crate::store;

/// One entry of a chat's log, as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub chat_id: i64,
    pub seq: i64,
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub actor_id: i64,
    #[serde(flatten)]
    pub payload: Payload,
}

/// What an event carries, under the key the contract gives its type.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Payload {
    Message(Message),
    Member(Member),
    Chat(ChatInfo),
}

/// Every event type, as stored in `chat_events.type`.
pub const KINDS: [&str; 7] = [
    "chat.created",
    "chat.updated",
    "member.added",
    "member.removed",
    "message.created",
    "message.updated",
    "message.deleted",
];

/// The `&'static str` for a stored type name.
pub fn kind(stored: &str) -> Option<&'static str> {
    KINDS.iter().copied().find(|kind| *kind == stored)
}

impl Event {
    /// The user this event makes a member: the added member, or a new chat's creator.
    pub fn joins(&self) -> Option<i64> {
        match (&self.payload, self.kind) {
            (Payload::Member(member), "member.added") => Some(member.id),
            (Payload::Chat(_), "chat.created") => Some(self.actor_id),
            _ => None,
        }
    }
}

/// Hands committed events to real-time delivery: to this process's hub at
/// once, and to other processes as `(chat_id, seq)` through the notifier.
/// Handlers call it after their transaction commits, never inside it.
pub fn publish(app: &App, events: &[Event]) {
    for event in events {
        app.notifier.signal(Signal::Event { chat_id: event.chat_id, seq: event.seq, added: event.joins() });
        app.hub.event(event.clone());
    }
}

/// Hands a typing or read frame to every process's members of the chat.
pub fn publish_live(app: &App, live: Live) {
    app.notifier.signal(live.clone().into());
    app.hub.live(live);
}

/// `GET /api/chats/{id}/events?after=<seq>&limit=<n>`
pub fn list_events(ctx: &mut Ctx, user_id: i64, chat_id: ChatId) -> Result<Reply, ApiError> {
    let query = ctx.query();
    let after = query.int("after", 0, i64::MAX)?.unwrap_or(0);
    let limit = query.int("limit", 1, 1000)?.unwrap_or(100);
    let sql = &mut ctx.db.sql()?;
    store::find_role(sql, chat_id, user_id)?.ok_or(ApiError::NotFound)?;
    let mut events = store::list_events(sql, chat_id, after, limit + 1)?;
    let has_more = events.len() as i64 > limit;
    events.truncate(limit as usize);
    Ok(Reply::json(200, &json!({ "events": events, "has_more": has_more })))
}
