//! The Go seed's routes, kept byte-for-byte in shape for its clients
//! (contract section 8): ids are JSON strings here, and success is `200`.
//!
//! Each handler parses the old shape and calls the same code as the `/api`
//! route it mirrors, so storage, limits and membership checks are shared.

use serde_json::{json, Value};

use crate::accounts::{self, NewUser};
use crate::app::Ctx;
use crate::chats;
use crate::error::ApiError;
use crate::http::Reply;
use crate::model::{rfc3339, Chat, ChatId, Session, UserId};
use crate::router;
use crate::store;

/// How many messages `GET /chat/messages/{id}` returns: the newest ones.
const MAX_MESSAGES: i64 = 1000;

/// `POST /user/signup`
pub fn signup(ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let body = ctx.body()?;
    let me = accounts::register(ctx, &NewUser::parse(&body)?)?;
    Ok(Reply::json(200, &json!({ "id": me.id.to_string(), "username": me.username, "email": me.email })))
}

/// `POST /user/login`
pub fn login(ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let body = ctx.body()?;
    let logged_in = accounts::log_in(ctx, body.str("email")?, body.str("password")?)?;
    Ok(Reply::json(200, &json!({ "token": logged_in.token })))
}

/// `POST /user/logout`
pub fn logout(ctx: &mut Ctx, session: &Session) -> Result<Reply, ApiError> {
    accounts::delete_current_session(ctx, session)?;
    Ok(Reply::json(200, &json!({ "message": "Successfully logged out" })))
}

/// `POST /chat/message`: creates a chat (a direct one is deduplicated).
pub fn create_chat(ctx: &mut Ctx, user_id: UserId) -> Result<Reply, ApiError> {
    let body = ctx.body()?;
    let title = body.str("title")?;
    if title.trim().is_empty() {
        return Err(ApiError::invalid("title", "title is required"));
    }
    let is_group = body.opt_bool("is_group")?.unwrap_or(false);
    let mut member_ids = Vec::new();
    for id in body.opt_array("user_ids")?.map_or(&[][..], Vec::as_slice) {
        let id = id.as_str().and_then(router::decimal_id).map(UserId);
        member_ids.push(id.ok_or_else(|| ApiError::invalid("user_ids", "user_ids must hold user ids as strings"))?);
    }
    if member_ids.len() > chats::MAX_MEMBERS * 2 {
        return Err(ApiError::invalid("user_ids", "a group takes at most 1000 other members"));
    }
    let new_chat = chats::parse_new_chat(user_id, is_group, Some(title), member_ids)
        .map_err(|error| rename_field(error, "member_ids", "user_ids"))?;
    let (chat_id, _) =
        chats::create(ctx, user_id, &new_chat).map_err(|error| rename_field(error, "member_ids", "user_ids"))?;
    Ok(Reply::json(200, &seed_chat(&chats::load_chat(ctx, user_id, chat_id)?)))
}

/// `GET /chat/messages/{id}`: the newest messages, oldest first, without tombstones.
pub fn list_messages(ctx: &mut Ctx, user_id: UserId, chat_id: ChatId) -> Result<Reply, ApiError> {
    let sql = &mut ctx.db.sql()?;
    let newest = store::Page::Before(i64::MAX);
    let mut messages =
        store::list_messages_as_member(sql, chat_id, user_id, newest, MAX_MESSAGES)?.ok_or(ApiError::NotFound)?;
    messages.reverse();
    let messages: Vec<Value> = messages
        .into_iter()
        .filter(|message| !message.deleted)
        .map(|message| {
            json!({
                "id": message.id.to_string(),
                "chat_id": message.chat_id.to_string(),
                "user_id": message.sender_id.to_string(),
                "content": message.content,
                "created_at": rfc3339(message.created_at),
                "updated_at": rfc3339(message.edited_at.unwrap_or(message.created_at)),
            })
        })
        .collect();
    Ok(Reply::json(200, &json!({ "count": messages.len(), "messages": messages })))
}

/// `GET /chat/user`: the caller's chats.
pub fn list_chats(ctx: &mut Ctx, user_id: UserId) -> Result<Reply, ApiError> {
    let chats: Vec<Value> = store::list_chats(&mut ctx.db.sql()?, user_id, None)?.iter().map(seed_chat).collect();
    Ok(Reply::json(200, &json!({ "count": chats.len(), "chats": chats })))
}

fn seed_chat(chat: &Chat) -> Value {
    let user_ids: Vec<String> = chat.members.iter().map(|member| member.id.to_string()).collect();
    json!({
        "id": chat.id.to_string(),
        "title": chat.title.clone().unwrap_or_default(),
        "user_ids": user_ids,
        "is_group": chat.is_group,
    })
}

/// The seed calls the member list `user_ids`; errors name the field it knows.
fn rename_field(error: ApiError, from: &str, to: &'static str) -> ApiError {
    match error {
        ApiError::InvalidRequest { field: Some(field), message } if field == from => {
            ApiError::InvalidRequest { field: Some(to), message: message.replace(from, to) }
        }
        other => other,
    }
}
