//! Handlers for messages: send (with replies), history, edit, delete,
//! reactions, read markers (contract sections 4 and 9).
//!
//! A send is one SQL statement that takes the chat's next seq under its row
//! lock, stores the message and appends its event, so it is atomic without a
//! transaction block. A retried send with the same `client_id` returns the
//! stored message: found up front, or caught by the unique index when two
//! retries race (the loser's statement rolls back whole, seq included).

use postgres::GenericClient;

use crate::app::{App, Ctx};
use crate::db::{Db, Sql};
use crate::error::ApiError;
use crate::http::{Body, Reply};
use crate::model::{ChatId, EventKind, Live, Message, MessageId, MessagePage, Payload, ReactionChange, UserId};
use crate::reactions;
use crate::router::EmojiSegment;
use crate::store;

/// Message text: 1 to 4000 characters, not only white space.
pub fn parse_content(content: &str) -> Result<&str, ApiError> {
    if content.chars().count() > 4000 || content.trim().is_empty() {
        return Err(ApiError::invalid("content", "content must be 1 to 4000 characters and not only white space"));
    }
    Ok(content)
}

/// A client's idempotency key: 1 to 64 characters.
pub fn parse_client_id(client_id: Option<&str>) -> Result<Option<&str>, ApiError> {
    match client_id {
        Some(id) if !(1..=64).contains(&id.chars().count()) => {
            Err(ApiError::invalid("client_id", "client_id must be 1 to 64 characters"))
        }
        other => Ok(other),
    }
}

/// A message to send, its fields checked: what REST and WebSocket sends carry.
pub struct Draft {
    pub content: String,
    pub client_id: Option<String>,
    /// The seq of the message this one answers; whether it is one of the
    /// chat's messages is checked by the send's statement.
    pub reply_to_seq: Option<i64>,
}

impl Draft {
    pub fn parse(body: &Body) -> Result<Draft, ApiError> {
        let content = parse_content(body.str("content")?)?.to_string();
        let client_id = parse_client_id(body.opt_str("client_id")?)?.map(String::from);
        let reply_to_seq = body.opt_i64("reply_to_seq")?;
        if reply_to_seq.is_some_and(|seq| seq < 1) {
            return Err(ApiError::invalid("reply_to_seq", store::REPLY_TO_SEQ_RULE));
        }
        Ok(Draft { content, client_id, reply_to_seq })
    }

    /// Only text: what the seed's clients send.
    pub fn text(content: &str) -> Result<Draft, ApiError> {
        Ok(Draft { content: parse_content(content)?.to_string(), client_id: None, reply_to_seq: None })
    }
}

/// Whether a send stored a new message or found the one a retry refers to.
pub enum Sent {
    New(Message),
    Retried(Message),
}

/// `POST /api/chats/{id}/messages`
pub fn send_message(ctx: &mut Ctx, user_id: UserId, chat_id: ChatId) -> Result<Reply, ApiError> {
    let draft = Draft::parse(&ctx.body()?)?;
    match send(ctx.app, ctx.db, user_id, chat_id, &draft)? {
        Sent::New(message) => Ok(Reply::json(201, &message)),
        Sent::Retried(message) => Ok(Reply::json(200, &message)),
    }
}

/// Stores a message and publishes its event; shared by REST, WebSocket and
/// seed routes, so one budget per user (`MESSAGE_RATE`) covers them all.
pub fn send(app: &App, db: &mut Db, user_id: UserId, chat_id: ChatId, draft: &Draft) -> Result<Sent, ApiError> {
    let client_id = draft.client_id.as_deref();
    let sql = &mut db.sql()?;
    if let Some(client_id) = client_id {
        if let Some(message) = store::find_message_by_client_id(sql, chat_id, user_id, client_id)? {
            return Ok(Sent::Retried(message));
        }
    }
    // Only a new message spends the budget: a retry that finds its message is always answered.
    if let Err(retry_after_secs) = app.limits.messages.take(&user_id) {
        return Err(ApiError::RateLimited { retry_after_secs });
    }
    match store::insert_message(sql, chat_id, user_id, &draft.content, client_id, draft.reply_to_seq) {
        Ok(Some(message)) => {
            app.publish(&[message.event(EventKind::MessageCreated, user_id, message.seq, message.created_at)]);
            Ok(Sent::New(message))
        }
        Ok(None) => Err(ApiError::NotFound),
        // The insert lost a race to a retry with the same client_id.
        Err(ApiError::Conflict { .. }) => {
            store::find_message_by_client_id(sql, chat_id, user_id, client_id.unwrap_or(""))?
                .map(Sent::Retried)
                .ok_or(ApiError::NotFound)
        }
        Err(error) => Err(error),
    }
}

/// `GET /api/chats/{id}/messages?before=&after=&limit=`
pub fn list_messages(ctx: &mut Ctx, user_id: UserId, chat_id: ChatId) -> Result<Reply, ApiError> {
    let query = ctx.query();
    let before = query.int("before", 1, i64::MAX)?;
    let after = query.int("after", 0, i64::MAX)?;
    let limit = query.int("limit", 1, 200)?.unwrap_or(50);
    if before.is_some() && after.is_some() {
        return Err(ApiError::invalid("after", "give before or after, not both"));
    }
    let sql = &mut ctx.db.sql()?;
    let page = match after {
        Some(after) => store::Page::After(after),
        None => store::Page::Before(before.unwrap_or(i64::MAX)),
    };
    let mut messages =
        store::list_messages_as_member(sql, chat_id, user_id, page, limit + 1)?.ok_or(ApiError::NotFound)?;
    let has_more = messages.len() as i64 > limit;
    messages.truncate(limit as usize);
    if after.is_none() {
        messages.reverse();
    }
    Ok(Reply::json(200, &MessagePage { messages: &messages, has_more }))
}

/// `PATCH /api/chats/{id}/messages/{message_id}`: the sender only; a deleted message is `409`.
pub fn edit_message(ctx: &mut Ctx, user_id: UserId, chat_id: ChatId, message_id: MessageId) -> Result<Reply, ApiError> {
    let body = ctx.body()?;
    let content = parse_content(body.str("content")?)?;
    let (message, event) = ctx.db.transaction(|tx| {
        let message = lock_message_as_member(tx, user_id, chat_id, message_id)?;
        if message.sender_id != user_id {
            return Err(ApiError::Forbidden("only the sender can edit a message"));
        }
        if message.deleted {
            return Err(deleted());
        }
        let (seq, _) = take_seq_as_member(tx, user_id, chat_id)?;
        let message = store::update_message_content(tx, message_id, content)?;
        let payload = Payload::Message(message.clone());
        let event = store::insert_event(tx, chat_id, seq, EventKind::MessageUpdated, user_id, payload)?;
        Ok((message, event))
    })?;
    ctx.app.publish(&[event]);
    Ok(Reply::json(200, &message))
}

/// `DELETE /api/chats/{id}/messages/{message_id}`: the sender, or the group's
/// owner; deleting a deleted message again changes nothing.
pub fn delete_message(
    ctx: &mut Ctx,
    user_id: UserId,
    chat_id: ChatId,
    message_id: MessageId,
) -> Result<Reply, ApiError> {
    let event = ctx.db.transaction(|tx| {
        let message = lock_message_as_member(tx, user_id, chat_id, message_id)?;
        if message.deleted {
            return Ok(None);
        }
        let (seq, role) = take_seq_as_member(tx, user_id, chat_id)?;
        if message.sender_id != user_id && role != "owner" {
            return Err(ApiError::Forbidden("only the sender or the group's owner can delete a message"));
        }
        let payload = Payload::Message(store::tombstone_message(tx, message_id)?);
        store::insert_event(tx, chat_id, seq, EventKind::MessageDeleted, user_id, payload).map(Some)
    })?;
    ctx.app.publish(event.as_slice());
    Ok(Reply::no_content())
}

/// `PUT` (`kind` is `ReactionAdded`) and `DELETE` (`ReactionRemoved`)
/// `/api/chats/{id}/messages/{message_id}/reactions/{emoji}`: any member adds
/// or removes their reaction under the message's row lock, and the event is
/// appended only when something changed. Reacting again, or removing what is
/// not there (a deleted message has nothing), is `204` and writes nothing; a
/// `PUT` on a deleted message is `409`, and so is a 21st distinct emoji. A
/// change spends the caller's message budget, as a send does: each is an
/// event every member gets.
pub fn change_reaction(
    ctx: &mut Ctx,
    user_id: UserId,
    chat_id: ChatId,
    message_id: MessageId,
    emoji: EmojiSegment,
    kind: EventKind,
) -> Result<Reply, ApiError> {
    let emoji = emoji.map_err(|_| ApiError::invalid("emoji", reactions::EMOJI_RULE))?;
    let emoji = emoji.as_str();
    let limits = &ctx.app.limits;
    let event = ctx.db.transaction(|tx| {
        let message = lock_message_as_member(tx, user_id, chat_id, message_id)?;
        let mut list = message.reaction_list().map_err(|e| ApiError::Internal(format!("stored reactions: {e}")))?;
        let changed = match kind {
            EventKind::ReactionAdded if message.deleted => return Err(deleted()),
            EventKind::ReactionAdded => reactions::add(&mut list, emoji, user_id).map_err(|reactions::TooMany| {
                ApiError::Conflict { field: None, message: "a message carries at most 20 distinct emoji".into() }
            })?,
            _ => reactions::remove(&mut list, emoji, user_id),
        };
        if !changed {
            return Ok(None);
        }
        if let Err(retry_after_secs) = limits.messages.take(&user_id) {
            return Err(ApiError::RateLimited { retry_after_secs });
        }
        let (seq, _) = take_seq_as_member(tx, user_id, chat_id)?;
        store::update_reactions(tx, message_id, &list)?;
        let payload = Payload::Reaction(ReactionChange { message_id, emoji: emoji.to_string(), user_id });
        store::insert_event(tx, chat_id, seq, kind, user_id, payload).map(Some)
    })?;
    ctx.app.publish(event.as_slice());
    Ok(Reply::no_content())
}

/// The `409` for a change to a deleted message.
fn deleted() -> ApiError {
    ApiError::Conflict { field: None, message: "the message is deleted".into() }
}

/// Locks a chat's message for a member. Membership is read first, so an
/// outsider locks nothing. The message row is locked before the chat row
/// (`take_seq_as_member`), and nothing locks them the other way round.
fn lock_message_as_member(
    tx: &mut Sql<impl GenericClient>,
    user_id: UserId,
    chat_id: ChatId,
    message_id: MessageId,
) -> Result<Message, ApiError> {
    store::find_role(tx, chat_id, user_id)?.ok_or(ApiError::NotFound)?;
    store::lock_message(tx, chat_id, message_id)?.ok_or(ApiError::NotFound)
}

/// Takes the chat's next seq and reads the caller's role again under the
/// chat's lock, so a member removed meanwhile is seen.
fn take_seq_as_member(
    tx: &mut Sql<impl GenericClient>,
    user_id: UserId,
    chat_id: ChatId,
) -> Result<(i64, String), ApiError> {
    let seq = store::take_seq(tx, chat_id)?;
    let role = store::find_role(tx, chat_id, user_id)?.ok_or(ApiError::NotFound)?;
    Ok((seq, role))
}

/// `POST /api/chats/{id}/read`: the marker only moves forward.
pub fn mark_read(ctx: &mut Ctx, user_id: UserId, chat_id: ChatId) -> Result<Reply, ApiError> {
    let body = ctx.body()?;
    let seq = body.i64("seq")?;
    if seq < 0 {
        return Err(ApiError::invalid("seq", "seq must not be negative"));
    }
    mark_read_up_to(ctx.app, ctx.db, user_id, chat_id, seq)?;
    Ok(Reply::no_content())
}

/// Moves the caller's read marker and tells the chat's members; shared by REST and WebSocket.
pub fn mark_read_up_to(app: &App, db: &mut Db, user_id: UserId, chat_id: ChatId, seq: i64) -> Result<(), ApiError> {
    let seq = store::move_read_marker(&mut db.sql()?, chat_id, user_id, seq)?.ok_or(ApiError::NotFound)?;
    app.publish_live(Live::Read { chat_id, user_id, seq });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_counts_characters_not_bytes() {
        assert!(parse_content(&"é".repeat(4000)).is_ok());
        assert!(parse_content(&"é".repeat(4001)).is_err());
        assert!(parse_content(" \n\t ").is_err());
        assert!(parse_content("").is_err());
    }

    #[test]
    fn client_id_is_one_to_sixty_four_characters() {
        assert!(parse_client_id(Some(&"x".repeat(64))).is_ok());
        assert!(parse_client_id(Some(&"x".repeat(65))).is_err());
        assert!(parse_client_id(Some("")).is_err());
        assert_eq!(parse_client_id(None).unwrap(), None);
    }
}
