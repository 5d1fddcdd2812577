//! `GET /api/chats/{id}/events`: a chat's log, for clients catching up.
//!
//! Every change to a chat appends one event in the same transaction that
//! makes the change, numbered by the chat row's `last_seq` under its lock, so
//! seqs run 1, 2, 3, … without gaps and in commit order. Read markers, typing
//! and presence are live only and never stored here.

use crate::app::Ctx;
use crate::error::ApiError;
use crate::http::Reply;
use crate::model::{ChatId, EventPage, UserId};
use crate::store;

/// `GET /api/chats/{id}/events?after=<seq>&limit=<n>`
pub fn list_events(ctx: &mut Ctx, user_id: UserId, chat_id: ChatId) -> Result<Reply, ApiError> {
    let query = ctx.query();
    let after = query.int("after", 0, i64::MAX)?.unwrap_or(0);
    let limit = query.int("limit", 1, 1000)?.unwrap_or(100);
    let sql = &mut ctx.db.sql()?;
    store::find_role(sql, chat_id, user_id)?.ok_or(ApiError::NotFound)?;
    let mut events = store::list_events(sql, chat_id, after, limit + 1)?;
    let has_more = events.len() as i64 > limit;
    events.truncate(limit as usize);
    Ok(Reply::json(200, &EventPage { events: &events, has_more }))
}
