//! Handlers for chats and their members (contract section 3).
//!
//! Membership is checked on every route, and a chat the caller is not in
//! answers the same `404` as one that does not exist. A direct chat has two
//! members and no owner, so renaming it or adding to it is `403` like any
//! non-owner's attempt; there is at most one per pair of users, enforced by a
//! unique index rather than a read-then-write.

use postgres::GenericClient;
use serde_json::json;

use crate::app::Ctx;
use crate::db::Sql;
use crate::error::ApiError;
use crate::http::Reply;
use crate::model::{Chat, ChatId, EventKind, Member, NewChat, Payload, UserId};
use crate::store;

/// The most members a group can have, its owner included.
pub const MAX_MEMBERS: usize = 1001;

/// A group title: 1 to 100 characters.
pub fn parse_title(title: &str) -> Result<String, ApiError> {
    if !(1..=100).contains(&title.chars().count()) {
        return Err(ApiError::invalid("title", "title must be 1 to 100 characters"));
    }
    Ok(title.to_string())
}

/// Checks a new chat's shape; whether the users exist is checked when storing.
pub fn parse_new_chat(
    creator: UserId,
    is_group: bool,
    title: Option<&str>,
    mut member_ids: Vec<UserId>,
) -> Result<NewChat, ApiError> {
    let title = title.map(parse_title).transpose()?;
    member_ids.sort_unstable();
    member_ids.dedup();
    member_ids.retain(|id| *id != creator);
    if is_group {
        if title.is_none() {
            return Err(ApiError::invalid("title", "a group needs a title"));
        }
        if member_ids.len() > MAX_MEMBERS - 1 {
            return Err(ApiError::invalid("member_ids", "a group takes at most 1000 other members"));
        }
    } else if member_ids.len() != 1 {
        return Err(ApiError::invalid("member_ids", "a direct chat needs exactly one other user"));
    }
    Ok(NewChat { is_group, title, member_ids })
}

/// `POST /api/chats`
pub fn create_chat(ctx: &mut Ctx, user_id: UserId) -> Result<Reply, ApiError> {
    let body = ctx.body()?;
    let is_group = body.bool("is_group")?;
    let title = body.opt_str("title")?;
    let mut member_ids = Vec::new();
    let listed =
        body.opt_array("member_ids")?.ok_or_else(|| ApiError::invalid("member_ids", "member_ids is required"))?;
    for id in listed {
        let id = id.as_i64().ok_or_else(|| ApiError::invalid("member_ids", "member_ids must hold user ids"))?;
        member_ids.push(UserId(id));
    }
    if member_ids.len() > MAX_MEMBERS * 2 {
        return Err(ApiError::invalid("member_ids", "a group takes at most 1000 other members"));
    }
    let new_chat = parse_new_chat(user_id, is_group, title, member_ids)?;
    let (chat_id, created) = create(ctx, user_id, &new_chat)?;
    let chat = load_chat(ctx, user_id, chat_id)?;
    Ok(Reply::json(if created { 201 } else { 200 }, &chat))
}

/// Stores a chat with its members and first events; a direct chat that
/// exists already is returned as it is (`false`).
pub fn create(ctx: &mut Ctx, user_id: UserId, new_chat: &NewChat) -> Result<(ChatId, bool), ApiError> {
    let (chat_id, events) = ctx.db.transaction(|tx| {
        if store::count_users(tx, &new_chat.member_ids)? != new_chat.member_ids.len() as i64 {
            return Err(ApiError::invalid("member_ids", "member_ids holds a user that does not exist"));
        }
        let Some((info, members)) = store::insert_chat(tx, user_id, new_chat)? else {
            let other = new_chat.member_ids[0];
            let existing = store::find_direct_chat(tx, user_id, other)?
                .ok_or_else(|| ApiError::unavailable("a direct chat that conflicted was not found"))?;
            return Ok((existing, Vec::new()));
        };
        let chat_id = info.id;
        let mut changes = vec![(EventKind::ChatCreated, Payload::Chat(info))];
        changes.extend(members.into_iter().map(|member| (EventKind::MemberAdded, Payload::Member(member))));
        Ok((chat_id, store::insert_events(tx, chat_id, 1, user_id, changes)?))
    })?;
    ctx.app.publish(&events);
    Ok((chat_id, !events.is_empty()))
}

/// `GET /api/chats`
pub fn list_chats(ctx: &mut Ctx, user_id: UserId) -> Result<Reply, ApiError> {
    let chats = store::list_chats(&mut ctx.db.sql()?, user_id, None)?;
    Ok(Reply::json(200, &json!({ "chats": chats })))
}

/// `GET /api/chats/{id}`
pub fn get_chat(ctx: &mut Ctx, user_id: UserId, chat_id: ChatId) -> Result<Reply, ApiError> {
    Ok(Reply::json(200, &load_chat(ctx, user_id, chat_id)?))
}

/// The chat as its member sees it; `404` for anyone else.
pub fn load_chat(ctx: &mut Ctx, user_id: UserId, chat_id: ChatId) -> Result<Chat, ApiError> {
    store::list_chats(&mut ctx.db.sql()?, user_id, Some(chat_id))?.pop().ok_or(ApiError::NotFound)
}

/// `PATCH /api/chats/{id}`: group only, owner only.
pub fn update_chat(ctx: &mut Ctx, user_id: UserId, chat_id: ChatId) -> Result<Reply, ApiError> {
    let body = ctx.body()?;
    let title = parse_title(body.str("title")?)?;
    let event = ctx.db.transaction(|tx| {
        lock_as_owner(tx, chat_id, user_id)?;
        let seq = store::take_seq(tx, chat_id)?;
        let info = store::update_chat_title(tx, chat_id, &title)?;
        store::insert_event(tx, chat_id, seq, EventKind::ChatUpdated, user_id, Payload::Chat(info))
    })?;
    ctx.app.publish(&[event]);
    get_chat(ctx, user_id, chat_id)
}

/// `POST /api/chats/{id}/members`: group only, owner only; adding a member twice changes nothing.
pub fn add_member(ctx: &mut Ctx, user_id: UserId, chat_id: ChatId) -> Result<Reply, ApiError> {
    let body = ctx.body()?;
    let new_member = UserId(body.i64("user_id")?);
    let event = ctx.db.transaction(|tx| {
        lock_as_owner(tx, chat_id, user_id)?;
        if store::find_role(tx, chat_id, new_member)?.is_some() {
            return Ok(None);
        }
        if store::count_members(tx, chat_id)? >= MAX_MEMBERS as i64 {
            return Err(ApiError::invalid("user_id", "the group has the most members it can have"));
        }
        let username = store::find_username(tx, new_member)?
            .ok_or_else(|| ApiError::invalid("user_id", "user_id is not an existing user"))?;
        store::insert_member(tx, chat_id, new_member, "member")?;
        let seq = store::take_seq(tx, chat_id)?;
        let member = Member { id: new_member, username, role: "member".into() };
        store::insert_event(tx, chat_id, seq, EventKind::MemberAdded, user_id, Payload::Member(member)).map(Some)
    })?;
    ctx.app.publish(event.as_slice());
    get_chat(ctx, user_id, chat_id)
}

/// `DELETE /api/chats/{id}/members/{user_id}`: the owner removes anyone; a
/// member removes only itself. An owner who leaves hands the group to the
/// longest-standing member.
///
/// The member's row is deleted (and so locked) before the chat row, the
/// order a send takes them in (`store::insert_message`), so the two cannot
/// deadlock; a second removal of the same member waits, then finds nothing.
pub fn remove_member(ctx: &mut Ctx, user_id: UserId, chat_id: ChatId, target: UserId) -> Result<Reply, ApiError> {
    let event = ctx.db.transaction(|tx| {
        let role = store::find_role(tx, chat_id, user_id)?.ok_or(ApiError::NotFound)?;
        if !store::is_group(tx, chat_id)? {
            return Err(ApiError::Forbidden("nobody can leave or be removed from a direct chat"));
        }
        if target != user_id && role != "owner" {
            // Refused before any lock; checked again below once the chat is locked.
            return Err(ApiError::Forbidden("only the owner can remove another member"));
        }
        let target_role = store::delete_member(tx, chat_id, target)?.ok_or(ApiError::NotFound)?;
        let seq = store::take_seq(tx, chat_id)?;
        if target != user_id {
            let role = store::find_role(tx, chat_id, user_id)?.ok_or(ApiError::NotFound)?;
            if role != "owner" {
                return Err(ApiError::Forbidden("only the owner can remove another member"));
            }
        }
        if target_role == "owner" {
            store::promote_longest_standing(tx, chat_id)?;
        }
        let username = store::find_username(tx, target)?.unwrap_or_default();
        let member = Member { id: target, username, role: target_role };
        store::insert_event(tx, chat_id, seq, EventKind::MemberRemoved, user_id, Payload::Member(member))
    })?;
    ctx.app.publish(&[event]);
    Ok(Reply::no_content())
}

/// Locks the chat row for its owner, so that member changes and renames of
/// one chat happen one at a time. The role is read before the lock, so an
/// outsider locks nothing, and again under it, so an owner who left
/// meanwhile is seen.
fn lock_as_owner(tx: &mut Sql<impl GenericClient>, chat_id: ChatId, user_id: UserId) -> Result<(), ApiError> {
    store::find_role(tx, chat_id, user_id)?.ok_or(ApiError::NotFound)?;
    store::lock_chat(tx, chat_id)?;
    match store::find_role(tx, chat_id, user_id)?.ok_or(ApiError::NotFound)?.as_str() {
        "owner" => Ok(()),
        _ => Err(ApiError::Forbidden("only the group's owner can do this")),
    }
}
