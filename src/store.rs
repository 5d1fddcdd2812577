//! Every SQL statement the handlers run, as typed functions.
//!
//! Each takes parameters; none formats SQL text. Every statement is a
//! `&'static str`, so `db.rs` prepares it once per connection and reuses it.

use std::collections::HashMap;
use std::error::Error;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::types::private::BytesMut;
use postgres::types::{to_sql_checked, FromSql, IsNull, Json, ToSql, Type};
use postgres::{GenericClient, Row};
use serde_json::Value;
use time::OffsetDateTime;

use crate::db::Sql;
use crate::error::ApiError;
use crate::model::{
    Chat, ChatId, ChatInfo, Event, EventKind, Me, Member, Message, MessageId, NewChat, Payload, Reaction, Reactions,
    Session, SessionId, SessionInfo, User, UserId,
};
use crate::words;

/// The id newtypes go to and from PostgreSQL as the `bigint` they wrap, so
/// every statement below takes and returns them typed.
macro_rules! sql_ids {
    ($($id:ident),*) => {$(
        impl ToSql for $id {
            fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
                self.0.to_sql(ty, out)
            }

            fn accepts(ty: &Type) -> bool {
                <i64 as ToSql>::accepts(ty)
            }

            to_sql_checked!();
        }

        impl<'a> FromSql<'a> for $id {
            fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<$id, Box<dyn Error + Sync + Send>> {
                i64::from_sql(ty, raw).map($id)
            }

            fn accepts(ty: &Type) -> bool {
                <i64 as FromSql>::accepts(ty)
            }
        }
    )*};
}

sql_ids!(UserId, ChatId, MessageId, SessionId);

fn me_from(row: &Row, first: usize) -> Me {
    Me { id: row.get(first), username: row.get(first + 1), email: row.get(first + 2), created_at: row.get(first + 3) }
}

/// A session from `s.id, <user columns>, s.expires_at`.
fn session_from(row: &Row) -> Session {
    Session { id: row.get(0), user: me_from(row, 1), expires_at: row.get(5) }
}

/// Inserts an account; a taken username or email is `409` naming the field.
pub fn insert_user(
    sql: &mut Sql<impl GenericClient>,
    username: &str,
    email: &str,
    password_hash: &str,
) -> Result<Me, ApiError> {
    let inserted = sql.query_one(
        "INSERT INTO users (username, email, password_hash) VALUES ($1, $2, $3)
         RETURNING id, username, email, created_at",
        &[&username, &email, &password_hash],
    );
    match inserted {
        Ok(row) => Ok(me_from(&row, 0)),
        Err(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            let constraint = error.as_db_error().and_then(|e| e.constraint()).unwrap_or("");
            if constraint == "users_email_key" {
                Err(ApiError::conflict("email", "email is already registered"))
            } else {
                Err(ApiError::conflict("username", "username is taken"))
            }
        }
        Err(error) => Err(error.into()),
    }
}

/// The account whose username or email is `login` (either case), with its password hash.
pub fn find_user_by_login(sql: &mut Sql<impl GenericClient>, login: &str) -> Result<Option<(Me, String)>, ApiError> {
    let row = sql.query_opt(
        "SELECT id, username, email, created_at, password_hash FROM users
         WHERE lower(username) = lower($1) OR lower(email) = lower($1)
         ORDER BY lower(username) = lower($1) DESC LIMIT 1",
        &[&login],
    )?;
    Ok(row.map(|row| (me_from(&row, 0), row.get(4))))
}

/// Stores a session for a token's hash; deletes the user's expired ones on the way.
pub fn insert_session(
    sql: &mut Sql<impl GenericClient>,
    token_hash: &[u8; 32],
    user_id: UserId,
    ttl: Duration,
) -> Result<OffsetDateTime, ApiError> {
    sql.execute("DELETE FROM sessions WHERE user_id = $1 AND expires_at <= now()", &[&user_id])?;
    let ttl_secs = ttl.as_secs() as f64;
    let row = sql.query_one(
        "INSERT INTO sessions (token_hash, user_id, expires_at)
         VALUES ($1, $2, now() + make_interval(secs => $3)) RETURNING expires_at",
        &[&token_hash.as_slice(), &user_id, &ttl_secs],
    )?;
    Ok(row.get(0))
}

/// The live (unexpired) session for a token's hash, with its user.
pub fn find_session(sql: &mut Sql<impl GenericClient>, token_hash: &[u8; 32]) -> Result<Option<Session>, ApiError> {
    let row = sql.query_opt(
        "SELECT s.id, u.id, u.username, u.email, u.created_at, s.expires_at
         FROM sessions s JOIN users u ON u.id = s.user_id
         WHERE s.token_hash = $1 AND s.expires_at > now()",
        &[&token_hash.as_slice()],
    )?;
    Ok(row.map(|row| session_from(&row)))
}

pub fn delete_session(sql: &mut Sql<impl GenericClient>, session_id: SessionId) -> Result<(), ApiError> {
    sql.execute("DELETE FROM sessions WHERE id = $1", &[&session_id])?;
    Ok(())
}

/// Deletes every session of a user; returns their ids.
pub fn delete_user_sessions(sql: &mut Sql<impl GenericClient>, user_id: UserId) -> Result<Vec<SessionId>, ApiError> {
    let rows = sql.query("DELETE FROM sessions WHERE user_id = $1 RETURNING id", &[&user_id])?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// A user's live sessions, newest first; `current` marks the one given.
pub fn list_user_sessions(
    sql: &mut Sql<impl GenericClient>,
    user_id: UserId,
    current: SessionId,
) -> Result<Vec<SessionInfo>, ApiError> {
    let rows = sql.query(
        "SELECT id, created_at, expires_at, id = $2 FROM sessions
         WHERE user_id = $1 AND expires_at > now() ORDER BY created_at DESC, id DESC",
        &[&user_id, &current],
    )?;
    Ok(rows
        .iter()
        .map(|row| SessionInfo { id: row.get(0), created_at: row.get(1), expires_at: row.get(2), current: row.get(3) })
        .collect())
}

/// Deletes one session if it is a live one of this user; returns its id then.
pub fn delete_user_session(
    sql: &mut Sql<impl GenericClient>,
    user_id: UserId,
    session_id: SessionId,
) -> Result<Option<SessionId>, ApiError> {
    let row = sql.query_opt(
        "DELETE FROM sessions WHERE id = $1 AND user_id = $2 AND expires_at > now() RETURNING id",
        &[&session_id, &user_id],
    )?;
    Ok(row.map(|row| row.get(0)))
}

/// Deletes every session of a user but `keep`; returns their ids.
pub fn delete_other_sessions(
    sql: &mut Sql<impl GenericClient>,
    user_id: UserId,
    keep: SessionId,
) -> Result<Vec<SessionId>, ApiError> {
    let rows = sql.query("DELETE FROM sessions WHERE user_id = $1 AND id <> $2 RETURNING id", &[&user_id, &keep])?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// A user's stored password hash.
pub fn find_password_hash(sql: &mut Sql<impl GenericClient>, user_id: UserId) -> Result<Option<String>, ApiError> {
    let row = sql.query_opt("SELECT password_hash FROM users WHERE id = $1", &[&user_id])?;
    Ok(row.map(|row| row.get(0)))
}

/// Replaces a user's password hash if it is still `old`; `false` when it was
/// changed meanwhile.
pub fn replace_password_hash(
    sql: &mut Sql<impl GenericClient>,
    user_id: UserId,
    old: &str,
    new: &str,
) -> Result<bool, ApiError> {
    let updated = sql
        .execute("UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2", &[&user_id, &old, &new])?;
    Ok(updated == 1)
}

/// Whether `users.id` has a WebSocket open on a live process.
macro_rules! online_column {
    () => {
        "EXISTS (SELECT 1 FROM presence p JOIN server_processes s ON s.id = p.process_id
                 WHERE p.user_id = users.id AND s.heartbeat_at > now() - interval '15 seconds')"
    };
}

/// Users whose username starts with `prefix`, ignoring case, by username.
pub fn search_users(sql: &mut Sql<impl GenericClient>, prefix: &str, limit: i64) -> Result<Vec<User>, ApiError> {
    let pattern = format!("{}%", like_escape(&prefix.to_lowercase()));
    let rows = sql.query(
        concat!(
            "SELECT id, username, ",
            online_column!(),
            " FROM users WHERE lower(username) LIKE $1 ORDER BY lower(username) LIMIT $2"
        ),
        &[&pattern, &limit],
    )?;
    Ok(rows.iter().map(|row| User { id: row.get(0), username: row.get(1), online: row.get(2) }).collect())
}

/// Another user as the API shows them.
pub fn find_user(sql: &mut Sql<impl GenericClient>, user_id: UserId) -> Result<Option<User>, ApiError> {
    let row =
        sql.query_opt(concat!("SELECT id, username, ", online_column!(), " FROM users WHERE id = $1"), &[&user_id])?;
    Ok(row.map(|row| User { id: row.get(0), username: row.get(1), online: row.get(2) }))
}

pub fn find_username(sql: &mut Sql<impl GenericClient>, user_id: UserId) -> Result<Option<String>, ApiError> {
    Ok(sql.query_opt("SELECT username FROM users WHERE id = $1", &[&user_id])?.map(|row| row.get(0)))
}

/// Escapes `\`, `%` and `_` so user text matches itself in a LIKE pattern.
fn like_escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

// Chats, members, messages and the event log. Every function that appends an
// event takes the seq from `take_seq` (or takes it itself) in the same
// transaction, so the chat row's lock orders the log.

/// The columns of a `Message`, in `message_from`'s order.
macro_rules! message_columns {
    () => {
        "id, chat_id, seq, sender_id, content, client_id, created_at, edited_at, deleted, reply_to_seq, reactions"
    };
}

fn message_from(row: &Row, first: usize) -> Message {
    Message {
        id: row.get(first),
        chat_id: row.get(first + 1),
        seq: row.get(first + 2),
        sender_id: row.get(first + 3),
        content: row.get(first + 4),
        client_id: row.get(first + 5),
        created_at: row.get(first + 6),
        edited_at: row.get(first + 7),
        deleted: row.get(first + 8),
        reply_to_seq: row.get(first + 9),
        reactions: row.get::<_, Json<Reactions>>(first + 10).0,
    }
}

/// How many of `ids` are existing users.
pub fn count_users(sql: &mut Sql<impl GenericClient>, ids: &[UserId]) -> Result<i64, ApiError> {
    Ok(sql.query_one("SELECT count(*) FROM users WHERE id = ANY($1)", &[&ids])?.get(0))
}

/// Stores a chat and its members, the creator first (a group's owner), and
/// takes seqs 1 to n + 1 for its first events, which the caller appends in
/// the same transaction (`chat.created`, then one `member.added` per member,
/// in the order returned). `None` when it is a direct chat that already exists.
pub fn insert_chat(
    sql: &mut Sql<impl GenericClient>,
    creator: UserId,
    new_chat: &NewChat,
) -> Result<Option<(ChatInfo, Vec<Member>)>, ApiError> {
    let mut member_ids = vec![creator];
    member_ids.extend_from_slice(&new_chat.member_ids);
    let (low, high) = match new_chat.is_group {
        true => (None, None),
        false => (Some(creator.min(new_chat.member_ids[0])), Some(creator.max(new_chat.member_ids[0]))),
    };
    let last_seq = 1 + member_ids.len() as i64;
    let row = sql.query_opt(
        "INSERT INTO chats (is_group, title, last_seq, direct_low, direct_high) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (direct_low, direct_high) DO NOTHING RETURNING id, is_group, title",
        &[&new_chat.is_group, &new_chat.title, &last_seq, &low, &high],
    )?;
    let Some(row) = row else { return Ok(None) };
    let info = ChatInfo { id: row.get(0), is_group: row.get(1), title: row.get(2) };
    let rows = sql.query(
        "WITH added AS (
            INSERT INTO chat_members (chat_id, user_id, role)
            SELECT $1, user_id, CASE WHEN ord = 1 AND $3 THEN 'owner' ELSE 'member' END
            FROM unnest($2::bigint[]) WITH ORDINALITY AS m (user_id, ord)
            RETURNING user_id, role
         )
         SELECT u.id, u.username, a.role
         FROM unnest($2::bigint[]) WITH ORDINALITY AS m (user_id, ord)
         JOIN added a ON a.user_id = m.user_id JOIN users u ON u.id = m.user_id
         ORDER BY m.ord",
        &[&info.id, &member_ids, &new_chat.is_group],
    )?;
    let members = rows.iter().map(|row| Member { id: row.get(0), username: row.get(1), role: row.get(2) }).collect();
    Ok(Some((info, members)))
}

/// The direct chat between two users, if any.
pub fn find_direct_chat(sql: &mut Sql<impl GenericClient>, a: UserId, b: UserId) -> Result<Option<ChatId>, ApiError> {
    let row =
        sql.query_opt("SELECT id FROM chats WHERE direct_low = $1 AND direct_high = $2", &[&a.min(b), &a.max(b)])?;
    Ok(row.map(|row| row.get(0)))
}

/// The user's chats (or one of them), most recent activity first, with
/// members, last message and unread count: two queries whatever the count.
/// The unread count subtracts ordinals (ARCHITECTURE.md), so a backlog of a
/// million messages costs an index lookup, not a million rows.
pub fn list_chats(
    sql: &mut Sql<impl GenericClient>,
    user_id: UserId,
    only: Option<ChatId>,
) -> Result<Vec<Chat>, ApiError> {
    let only = only.map(|chat| chat.0);
    let rows = sql.query(
        concat!(
            "SELECT c.id, c.is_group, c.title, c.created_at, c.last_seq, m.last_read_seq,
                    c.message_count
                    - coalesce((SELECT r.ordinal FROM messages r WHERE r.chat_id = c.id AND r.seq <= m.last_read_seq
                                ORDER BY r.seq DESC LIMIT 1), 0)
                    - (SELECT count(*) FROM messages x
                       WHERE x.chat_id = c.id AND x.sender_id = m.user_id AND x.seq > m.last_read_seq)
                    - (SELECT count(*) FROM messages x
                       WHERE x.chat_id = c.id AND x.deleted AND x.seq > m.last_read_seq AND x.sender_id <> m.user_id),
                    last.*
             FROM chat_members m
             JOIN chats c ON c.id = m.chat_id
             LEFT JOIN LATERAL (SELECT ",
            message_columns!(),
            " FROM messages WHERE chat_id = c.id ORDER BY seq DESC LIMIT 1) last ON true
             WHERE m.user_id = $1 AND ($2::bigint IS NULL OR m.chat_id = $2)
             ORDER BY c.last_activity_at DESC, c.id DESC"
        ),
        &[&user_id, &only],
    )?;
    let mut chats: Vec<Chat> = rows
        .iter()
        .map(|row| Chat {
            id: row.get(0),
            is_group: row.get(1),
            title: row.get(2),
            created_at: row.get(3),
            last_seq: row.get(4),
            last_read_seq: row.get(5),
            unread_count: row.get(6),
            last_message: row.get::<_, Option<MessageId>>(7).map(|_| message_from(row, 7)),
            members: Vec::new(),
        })
        .collect();
    let chat_ids: Vec<ChatId> = chats.iter().map(|chat| chat.id).collect();
    let position: HashMap<ChatId, usize> = chat_ids.iter().enumerate().map(|(idx, id)| (*id, idx)).collect();
    let members = sql.query(
        "SELECT cm.chat_id, u.id, u.username, cm.role FROM chat_members cm JOIN users u ON u.id = cm.user_id
         WHERE cm.chat_id = ANY($1) ORDER BY cm.chat_id, cm.joined_at, cm.user_id",
        &[&chat_ids],
    )?;
    for row in members {
        let chat_id: ChatId = row.get(0);
        if let Some(idx) = position.get(&chat_id) {
            chats[*idx].members.push(Member { id: row.get(1), username: row.get(2), role: row.get(3) });
        }
    }
    Ok(chats)
}

/// The caller's role in a chat; `None` for a non-member or a chat that does not exist.
pub fn find_role(
    sql: &mut Sql<impl GenericClient>,
    chat_id: ChatId,
    user_id: UserId,
) -> Result<Option<String>, ApiError> {
    let row =
        sql.query_opt("SELECT role FROM chat_members WHERE chat_id = $1 AND user_id = $2", &[&chat_id, &user_id])?;
    Ok(row.map(|row| row.get(0)))
}

pub fn is_group(sql: &mut Sql<impl GenericClient>, chat_id: ChatId) -> Result<bool, ApiError> {
    Ok(sql.query_one("SELECT is_group FROM chats WHERE id = $1", &[&chat_id])?.get(0))
}

pub fn count_members(sql: &mut Sql<impl GenericClient>, chat_id: ChatId) -> Result<i64, ApiError> {
    Ok(sql.query_one("SELECT count(*) FROM chat_members WHERE chat_id = $1", &[&chat_id])?.get(0))
}

pub fn insert_member(
    sql: &mut Sql<impl GenericClient>,
    chat_id: ChatId,
    user_id: UserId,
    role: &str,
) -> Result<(), ApiError> {
    sql.execute("INSERT INTO chat_members (chat_id, user_id, role) VALUES ($1, $2, $3)", &[&chat_id, &user_id, &role])?;
    Ok(())
}

/// Removes a member; returns the role it had, or `None` if it was not one.
pub fn delete_member(
    sql: &mut Sql<impl GenericClient>,
    chat_id: ChatId,
    user_id: UserId,
) -> Result<Option<String>, ApiError> {
    let row = sql.query_opt(
        "DELETE FROM chat_members WHERE chat_id = $1 AND user_id = $2 RETURNING role",
        &[&chat_id, &user_id],
    )?;
    Ok(row.map(|row| row.get(0)))
}

/// Makes the member who joined first the owner. A member whose row another
/// removal holds is passed over (`SKIP LOCKED`): waiting for it would take a
/// member row after the chat row, against the lock order, and deadlock.
pub fn promote_longest_standing(sql: &mut Sql<impl GenericClient>, chat_id: ChatId) -> Result<(), ApiError> {
    sql.execute(
        "UPDATE chat_members SET role = 'owner' WHERE chat_id = $1 AND user_id =
            (SELECT user_id FROM chat_members WHERE chat_id = $1
             ORDER BY joined_at, user_id LIMIT 1 FOR KEY SHARE SKIP LOCKED)",
        &[&chat_id],
    )?;
    Ok(())
}

pub fn update_chat_title(
    sql: &mut Sql<impl GenericClient>,
    chat_id: ChatId,
    title: &str,
) -> Result<ChatInfo, ApiError> {
    let row =
        sql.query_one("UPDATE chats SET title = $2 WHERE id = $1 RETURNING id, is_group, title", &[&chat_id, &title])?;
    Ok(ChatInfo { id: row.get(0), is_group: row.get(1), title: row.get(2) })
}

/// Locks the chat row without taking a seq, for changes that may turn out
/// to change nothing.
pub fn lock_chat(sql: &mut Sql<impl GenericClient>, chat_id: ChatId) -> Result<(), ApiError> {
    sql.query_one("SELECT id FROM chats WHERE id = $1 FOR UPDATE", &[&chat_id])?;
    Ok(())
}

/// Takes the chat's next seq. The row stays locked until the transaction
/// ends, so a later commit never gets a smaller seq.
pub fn take_seq(sql: &mut Sql<impl GenericClient>, chat_id: ChatId) -> Result<i64, ApiError> {
    let row = sql.query_one(
        "UPDATE chats SET last_seq = last_seq + 1, last_activity_at = now() WHERE id = $1 RETURNING last_seq",
        &[&chat_id],
    )?;
    Ok(row.get(0))
}

/// Appends events with consecutive seqs from `first_seq` to a chat's log,
/// in one statement, and returns them as stored. A message event stores only
/// the message's id, so a read shows the message's current state; a chat or
/// member event stores its payload's JSON, as serde writes it.
pub fn insert_events(
    sql: &mut Sql<impl GenericClient>,
    chat_id: ChatId,
    first_seq: i64,
    actor_id: UserId,
    changes: Vec<(EventKind, Payload)>,
) -> Result<Vec<Event>, ApiError> {
    let mut kinds = Vec::with_capacity(changes.len());
    let mut payloads: Vec<Option<Value>> = Vec::with_capacity(changes.len());
    let mut message_ids = Vec::with_capacity(changes.len());
    for (kind, payload) in &changes {
        kinds.push(kind.as_str());
        let (stored, message_id) = match payload {
            Payload::Message(message) => (None, Some(message.id)),
            Payload::Member(member) => (Some(encode(member)?), None),
            Payload::Chat(info) => (Some(encode(info)?), None),
            Payload::Reaction(change) => (Some(encode(change)?), None),
        };
        payloads.push(stored);
        message_ids.push(message_id);
    }
    let rows = sql.query(
        "INSERT INTO chat_events (chat_id, seq, type, actor_id, payload, message_id)
         SELECT $1, $2 + e.ord - 1, e.type, $3, e.payload, e.message_id
         FROM unnest($4::text[], $5::jsonb[], $6::bigint[]) WITH ORDINALITY AS e (type, payload, message_id, ord)
         RETURNING seq, created_at",
        &[&chat_id, &first_seq, &actor_id, &kinds, &payloads, &message_ids],
    )?;
    let created: HashMap<i64, OffsetDateTime> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    let mut events = Vec::with_capacity(changes.len());
    for (seq, (kind, payload)) in (first_seq..).zip(changes) {
        let created_at = *created.get(&seq).ok_or_else(|| ApiError::Internal(format!("event {seq} not stored")))?;
        events.push(Event { chat_id, seq, kind, created_at, actor_id, payload });
    }
    Ok(events)
}

/// Appends one event to a chat's log and returns it as stored.
pub fn insert_event(
    sql: &mut Sql<impl GenericClient>,
    chat_id: ChatId,
    seq: i64,
    kind: EventKind,
    actor_id: UserId,
    payload: Payload,
) -> Result<Event, ApiError> {
    let mut events = insert_events(sql, chat_id, seq, actor_id, vec![(kind, payload)])?;
    events.pop().ok_or_else(|| ApiError::Internal("an inserted event was not returned".into()))
}

/// Events with `seq > after`, ascending.
pub fn list_events(
    sql: &mut Sql<impl GenericClient>,
    chat_id: ChatId,
    after: i64,
    limit: i64,
) -> Result<Vec<Event>, ApiError> {
    let rows = sql.query(
        concat!(
            "SELECT e.chat_id, e.seq, e.type, e.created_at, e.actor_id, e.payload, m.*
             FROM chat_events e
             LEFT JOIN LATERAL (SELECT ",
            message_columns!(),
            " FROM messages WHERE id = e.message_id) m ON true
             WHERE e.chat_id = $1 AND e.seq > $2 ORDER BY e.seq LIMIT $3"
        ),
        &[&chat_id, &after, &limit],
    )?;
    rows.iter().map(event_from).collect()
}

fn event_from(row: &Row) -> Result<Event, ApiError> {
    let stored: &str = row.get(2);
    let kind = EventKind::parse(stored).ok_or_else(|| ApiError::Internal(format!("unknown event type {stored}")))?;
    let (json, message_id) = (row.get::<_, Option<Value>>(5), row.get::<_, Option<MessageId>>(6));
    let payload = match (kind, json, message_id) {
        (EventKind::MessageCreated | EventKind::MessageUpdated | EventKind::MessageDeleted, _, Some(_)) => {
            Payload::Message(message_from(row, 6))
        }
        (EventKind::MemberAdded | EventKind::MemberRemoved, Some(json), _) => Payload::Member(decode(json)?),
        (EventKind::ChatCreated | EventKind::ChatUpdated, Some(json), _) => Payload::Chat(decode(json)?),
        (EventKind::ReactionAdded | EventKind::ReactionRemoved, Some(json), _) => Payload::Reaction(decode(json)?),
        _ => return Err(ApiError::Internal(format!("event {stored} has no payload"))),
    };
    Ok(Event { chat_id: row.get(0), seq: row.get(1), kind, created_at: row.get(3), actor_id: row.get(4), payload })
}

fn encode(payload: &impl serde::Serialize) -> Result<Value, ApiError> {
    serde_json::to_value(payload).map_err(|e| ApiError::Internal(format!("event payload: {e}")))
}

fn decode<T: serde::de::DeserializeOwned>(json: Value) -> Result<T, ApiError> {
    serde_json::from_value(json).map_err(|e| ApiError::Internal(format!("stored payload: {e}")))
}

/// What the `400` for a `reply_to_seq` that names no message of the chat says.
pub const REPLY_TO_SEQ_RULE: &str = "reply_to_seq must be the seq of a message in this chat";

/// Takes the next seq, stores the message and appends `message.created`, in
/// one statement. `None` when the sender is not a member (nothing written);
/// `400` when `reply_to_seq` is not the seq of a message of this chat (nothing
/// written); `409` when the sender already used this `client_id` in this chat.
///
/// The sender's member row is locked (`FOR KEY SHARE`) before the chat row:
/// a removal that deleted it first makes the send find no member, and one
/// that comes later waits for the send. A plain `EXISTS` would read the
/// statement's snapshot and let a just-removed member post.
pub fn insert_message(
    sql: &mut Sql<impl GenericClient>,
    chat_id: ChatId,
    sender_id: UserId,
    content: &str,
    client_id: Option<&str>,
    reply_to_seq: Option<i64>,
) -> Result<Option<Message>, ApiError> {
    // A message's seq never goes away (a deleted one stays as a tombstone), so
    // a reply found valid here stays valid; the foreign key checks it again.
    let inserted = sql.query_one(
        concat!(
            "WITH member AS (
                SELECT 1 FROM chat_members WHERE chat_id = $1 AND user_id = $2 FOR KEY SHARE
            ), reply AS (
                SELECT $5::bigint IS NULL OR EXISTS (SELECT 1 FROM messages WHERE chat_id = $1 AND seq = $5) AS valid
            ), next AS (
                UPDATE chats SET last_seq = last_seq + 1, message_count = message_count + 1, last_activity_at = now()
                WHERE id = $1 AND EXISTS (SELECT 1 FROM member) AND (SELECT valid FROM reply)
                RETURNING id, last_seq, message_count
            ), message AS (
                INSERT INTO messages (chat_id, seq, ordinal, sender_id, content, client_id, reply_to_seq, words)
                SELECT id, last_seq, message_count, $2, $3, $4, $5, array_to_tsvector($6::text[]) FROM next
                RETURNING ",
            message_columns!(),
            "
            ), event AS (
                INSERT INTO chat_events (chat_id, seq, type, actor_id, message_id, created_at)
                SELECT chat_id, seq, 'message.created', sender_id, id, created_at FROM message
            )
            SELECT EXISTS (SELECT 1 FROM member), (SELECT valid FROM reply), message.*
            FROM (SELECT 1) AS one LEFT JOIN message ON true"
        ),
        &[&chat_id, &sender_id, &content, &client_id, &reply_to_seq, &words::index(content)],
    );
    match inserted {
        Ok(row) if !row.get::<_, bool>(0) => Ok(None),
        Ok(row) if !row.get::<_, bool>(1) => Err(ApiError::invalid("reply_to_seq", REPLY_TO_SEQ_RULE)),
        Ok(row) => Ok(Some(message_from(&row, 2))),
        Err(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            Err(ApiError::conflict("client_id", "client_id was already used"))
        }
        Err(error) => Err(error.into()),
    }
}

/// The message a sender stored with this `client_id`, if the sender is still a member.
pub fn find_message_by_client_id(
    sql: &mut Sql<impl GenericClient>,
    chat_id: ChatId,
    sender_id: UserId,
    client_id: &str,
) -> Result<Option<Message>, ApiError> {
    let row = sql.query_opt(
        concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE chat_id = $1 AND sender_id = $2 AND client_id = $3
              AND EXISTS (SELECT 1 FROM chat_members WHERE chat_id = $1 AND user_id = $2)"
        ),
        &[&chat_id, &sender_id, &client_id],
    )?;
    Ok(row.map(|row| message_from(&row, 0)))
}

/// Where a page of history starts.
pub enum Page {
    /// The newest messages with `seq` below this, newest first.
    Before(i64),
    /// The oldest messages with `seq` above this, oldest first.
    After(i64),
}

/// A page of at most `limit` messages of a chat, read with the caller's
/// membership in one statement (a round trip fewer on the busiest read);
/// `None` when `user_id` is not a member.
pub fn list_messages_as_member(
    sql: &mut Sql<impl GenericClient>,
    chat_id: ChatId,
    user_id: UserId,
    page: Page,
    limit: i64,
) -> Result<Option<Vec<Message>>, ApiError> {
    // The page joins a one-row table, so a member of a chat without messages gets a row too.
    macro_rules! page_query {
        ($condition:literal, $order:literal) => {
            concat!(
                "WITH member AS (SELECT 1 FROM chat_members WHERE chat_id = $1 AND user_id = $2)
                 SELECT EXISTS (SELECT 1 FROM member), page.*
                 FROM (SELECT 1) AS one
                 LEFT JOIN LATERAL (SELECT ",
                message_columns!(),
                " FROM messages WHERE chat_id = $1 AND ",
                $condition,
                " AND EXISTS (SELECT 1 FROM member) ORDER BY ",
                $order,
                " LIMIT $4) AS page ON true ORDER BY page.",
                $order
            )
        };
    }
    let rows = match page {
        Page::Before(before) => {
            sql.query(page_query!("seq < $3", "seq DESC"), &[&chat_id, &user_id, &before, &limit])?
        }
        Page::After(after) => sql.query(page_query!("seq > $3", "seq"), &[&chat_id, &user_id, &after, &limit])?,
    };
    if !rows.first().is_some_and(|row| row.get::<_, bool>(0)) {
        return Ok(None);
    }
    let messages = rows.iter().filter(|row| row.get::<_, Option<MessageId>>(1).is_some());
    Ok(Some(messages.map(|row| message_from(row, 1)).collect()))
}

/// A chat's message, locked for an edit, a delete or a reaction. Such a
/// transaction locks the message before the chat row (`take_seq`). A send
/// that replies to the message takes them the other way round (the chat row,
/// then the reply's foreign key check shares the message row), so the lock
/// is `FOR NO KEY UPDATE`, which that share does not wait for: the two cannot
/// deadlock. None of these changes touches a key column.
pub fn lock_message(
    sql: &mut Sql<impl GenericClient>,
    chat_id: ChatId,
    message_id: MessageId,
) -> Result<Option<Message>, ApiError> {
    let row = sql.query_opt(
        concat!("SELECT ", message_columns!(), " FROM messages WHERE id = $2 AND chat_id = $1 FOR NO KEY UPDATE"),
        &[&chat_id, &message_id],
    )?;
    Ok(row.map(|row| message_from(&row, 0)))
}

/// Replaces a message's content, and its words for search.
pub fn update_message_content(
    sql: &mut Sql<impl GenericClient>,
    message_id: MessageId,
    content: &str,
) -> Result<Message, ApiError> {
    let row = sql.query_one(
        concat!(
            "UPDATE messages SET content = $2, edited_at = now(), words = array_to_tsvector($3::text[])
             WHERE id = $1 RETURNING ",
            message_columns!()
        ),
        &[&message_id, &content, &words::index(content)],
    )?;
    Ok(message_from(&row, 0))
}

/// Empties a message, drops its reactions and marks it deleted; it keeps its place in history.
pub fn tombstone_message(sql: &mut Sql<impl GenericClient>, message_id: MessageId) -> Result<Message, ApiError> {
    let row = sql.query_one(
        concat!(
            "UPDATE messages SET content = '', deleted = true, reactions = '[]', words = '' WHERE id = $1 RETURNING ",
            message_columns!()
        ),
        &[&message_id],
    )?;
    Ok(message_from(&row, 0))
}

/// Stores a locked message's reactions, as `reactions.rs` changed them.
pub fn update_reactions(
    sql: &mut Sql<impl GenericClient>,
    message_id: MessageId,
    reactions: &[Reaction],
) -> Result<(), ApiError> {
    sql.execute("UPDATE messages SET reactions = $2 WHERE id = $1", &[&message_id, &Json(reactions)])?;
    Ok(())
}

/// Moves the read marker forward, never past the chat's last seq; returns
/// the marker, or `None` for a non-member.
pub fn move_read_marker(
    sql: &mut Sql<impl GenericClient>,
    chat_id: ChatId,
    user_id: UserId,
    seq: i64,
) -> Result<Option<i64>, ApiError> {
    let row = sql.query_opt(
        "UPDATE chat_members m SET last_read_seq = GREATEST(m.last_read_seq, LEAST($3, c.last_seq))
         FROM chats c WHERE c.id = m.chat_id AND m.chat_id = $1 AND m.user_id = $2
         RETURNING m.last_read_seq",
        &[&chat_id, &user_id, &seq],
    )?;
    Ok(row.map(|row| row.get(0)))
}

// Message search (contract section 9; BENCHMARKS.md, "Search plans"). A search is one or two
// statements: the newest messages first, then, when they hold too few matches, the word index.
// One statement cannot do both: its plan is chosen by the word's frequency, and after five runs a
// prepared statement may keep a generic plan that is slow for either frequent or rare words.

/// What a search matches, after `WHERE`: `$1` the caller, `$2` the one chat to search or `NULL`,
/// `$3` the `tsquery` text of `words::tsquery`. The caller's chats are read in the statement, so a
/// chat the caller has left is never searched.
macro_rules! search_condition {
    () => {
        "words @@ $3::text::tsquery AND NOT deleted
         AND chat_id = ANY (ARRAY(SELECT chat_id FROM chat_members WHERE user_id = $1 AND ($2::bigint IS NULL OR chat_id = $2)))"
    };
}

/// `Search::Recent`'s statement; benches/search/plans.sql prepares the same text.
pub const SEARCH_RECENT_MESSAGES: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM (SELECT * FROM messages WHERE id < $4 ORDER BY id DESC LIMIT 10000) AS recent WHERE ",
    search_condition!(),
    " ORDER BY id DESC LIMIT $5"
);

/// `Search::Indexed`'s statement; benches/search/plans.sql prepares the same text.
pub const SEARCH_MESSAGES: &str = concat!(
    "WITH found AS MATERIALIZED (SELECT ",
    message_columns!(),
    " FROM messages WHERE id < $4 AND ",
    search_condition!(),
    ") SELECT * FROM found ORDER BY id DESC LIMIT $5"
);

/// Which of the two search statements a search runs.
pub enum Search {
    /// `SEARCH_RECENT_MESSAGES`: the matches among the 10,000 newest messages
    /// with `id < before` (in every chat), newest first, at most `limit`. It
    /// walks the primary key back from `before`, whatever the words, so it
    /// costs at most 10,000 rows, and far fewer when matches are common;
    /// finding fewer than `limit` proves nothing about older messages
    /// (`Indexed` then answers).
    Recent,
    /// `SEARCH_MESSAGES`: the newest `limit` matches with `id < before`,
    /// through the word index (`messages_words_idx`) intersected with the
    /// caller's chats' messages (`messages_chat_seq_key`). Every match is read
    /// before the newest are picked: the `MATERIALIZED` fence keeps the
    /// planner from walking the primary key instead, which a frequent word
    /// would tempt it to and which reads every message when matches are sparse.
    Indexed,
}

/// The caller's messages that match `tsquery` (`words::tsquery`), in `only`
/// or in all the caller's chats, with `id < before`, newest first, at most `limit`.
pub fn search_messages(
    sql: &mut Sql<impl GenericClient>,
    search: Search,
    user_id: UserId,
    only: Option<ChatId>,
    tsquery: &str,
    before: i64,
    limit: i64,
) -> Result<Vec<Message>, ApiError> {
    let statement = match search {
        Search::Recent => SEARCH_RECENT_MESSAGES,
        Search::Indexed => SEARCH_MESSAGES,
    };
    let rows = sql.query(statement, &[&user_id, &only, &tsquery, &before, &limit])?;
    Ok(rows.iter().map(|row| message_from(row, 0)).collect())
}

// Real-time bookkeeping: tickets, processes, presence.

/// Marks a ticket's nonce used; `false` if it was used before or has expired
/// by the database's clock (the one the purge below goes by). Forgets expired
/// nonces on the way, so the table stays small.
pub fn use_ticket_nonce(sql: &mut Sql<impl GenericClient>, nonce: &str, expires_unix: i64) -> Result<bool, ApiError> {
    sql.execute("DELETE FROM ws_ticket_uses WHERE expires_at < now() - interval '1 minute'", &[])?;
    let inserted = sql.execute(
        "INSERT INTO ws_ticket_uses (nonce, expires_at) SELECT $1, to_timestamp($2)
         WHERE to_timestamp($2) > now() ON CONFLICT DO NOTHING",
        &[&nonce, &(expires_unix as f64)],
    )?;
    Ok(inserted == 1)
}

/// The live session with this id, with its user.
pub fn find_session_by_id(
    sql: &mut Sql<impl GenericClient>,
    session_id: SessionId,
) -> Result<Option<Session>, ApiError> {
    let row = sql.query_opt(
        "SELECT s.id, u.id, u.username, u.email, u.created_at, s.expires_at
         FROM sessions s JOIN users u ON u.id = s.user_id
         WHERE s.id = $1 AND s.expires_at > now()",
        &[&session_id],
    )?;
    Ok(row.map(|row| session_from(&row)))
}

/// Which of these sessions still exist and have not expired.
pub fn find_live_sessions(
    sql: &mut Sql<impl GenericClient>,
    session_ids: &[SessionId],
) -> Result<Vec<SessionId>, ApiError> {
    let rows = sql.query("SELECT id FROM sessions WHERE id = ANY($1) AND expires_at > now()", &[&session_ids])?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Each of the user's chats with its last seq: the `ready` snapshot.
pub fn list_chat_seqs(sql: &mut Sql<impl GenericClient>, user_id: UserId) -> Result<Vec<(ChatId, i64)>, ApiError> {
    let rows = sql.query(
        "SELECT c.id, c.last_seq FROM chat_members m JOIN chats c ON c.id = m.chat_id WHERE m.user_id = $1 ORDER BY c.id",
        &[&user_id],
    )?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// Each of these chats with its last seq (anti-entropy).
pub fn list_last_seqs(sql: &mut Sql<impl GenericClient>, chat_ids: &[ChatId]) -> Result<Vec<(ChatId, i64)>, ApiError> {
    let rows = sql.query("SELECT id, last_seq FROM chats WHERE id = ANY($1)", &[&chat_ids])?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// The chats each of these users is in.
pub fn list_memberships(
    sql: &mut Sql<impl GenericClient>,
    user_ids: &[UserId],
) -> Result<Vec<(UserId, ChatId)>, ApiError> {
    let rows = sql.query("SELECT user_id, chat_id FROM chat_members WHERE user_id = ANY($1)", &[&user_ids])?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// Records this process as alive, now.
pub fn beat_process(sql: &mut Sql<impl GenericClient>, process_id: i64) -> Result<(), ApiError> {
    sql.execute(
        "INSERT INTO server_processes (id) VALUES ($1) ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
        &[&process_id],
    )?;
    Ok(())
}

/// The other server processes that are alive: their heartbeat is recent.
pub fn list_live_processes(sql: &mut Sql<impl GenericClient>, except: i64) -> Result<Vec<i64>, ApiError> {
    let rows = sql.query(
        "SELECT id FROM server_processes WHERE id <> $1 AND heartbeat_at > now() - interval '15 seconds'",
        &[&except],
    )?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Forgets processes that stopped beating a minute ago, and their presence;
/// returns how many processes, and the users whose connections those were (each once).
pub fn delete_dead_processes(sql: &mut Sql<impl GenericClient>) -> Result<(i64, Vec<UserId>), ApiError> {
    let row = sql.query_one(
        "WITH dead AS (DELETE FROM server_processes WHERE heartbeat_at < now() - interval '1 minute' RETURNING id),
              gone AS (DELETE FROM presence p USING dead WHERE p.process_id = dead.id RETURNING p.user_id)
         SELECT (SELECT count(*) FROM dead), ARRAY(SELECT DISTINCT user_id FROM gone ORDER BY user_id)",
        &[],
    )?;
    Ok((row.get(0), row.get(1)))
}

pub fn delete_process(sql: &mut Sql<impl GenericClient>, process_id: i64) -> Result<(), ApiError> {
    sql.execute("DELETE FROM server_processes WHERE id = $1", &[&process_id])?;
    Ok(())
}

/// Locks a user's row, so that presence changes of one user, from any
/// process, happen one at a time, and so do the requests that end its sessions.
pub fn lock_user(sql: &mut Sql<impl GenericClient>, user_id: UserId) -> Result<(), ApiError> {
    sql.execute("SELECT id FROM users WHERE id = $1 FOR NO KEY UPDATE", &[&user_id])?;
    Ok(())
}

pub fn insert_presence(
    sql: &mut Sql<impl GenericClient>,
    process_id: i64,
    conn_id: i64,
    user_id: UserId,
) -> Result<(), ApiError> {
    sql.execute(
        "INSERT INTO presence (process_id, conn_id, user_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        &[&process_id, &conn_id, &user_id],
    )?;
    Ok(())
}

/// Forgets a connection's row; `false` if there was none.
pub fn delete_presence(sql: &mut Sql<impl GenericClient>, process_id: i64, conn_id: i64) -> Result<bool, ApiError> {
    let deleted =
        sql.execute("DELETE FROM presence WHERE process_id = $1 AND conn_id = $2", &[&process_id, &conn_id])?;
    Ok(deleted == 1)
}

/// How many WebSockets the user has open on live processes.
pub fn count_presence(sql: &mut Sql<impl GenericClient>, user_id: UserId) -> Result<i64, ApiError> {
    let row = sql.query_one(
        "SELECT count(*) FROM presence p JOIN server_processes s ON s.id = p.process_id
         WHERE p.user_id = $1 AND s.heartbeat_at > now() - interval '15 seconds'",
        &[&user_id],
    )?;
    Ok(row.get(0))
}

/// The ids of the chats a user is in.
pub fn list_chat_ids(sql: &mut Sql<impl GenericClient>, user_id: UserId) -> Result<Vec<ChatId>, ApiError> {
    let rows = sql.query("SELECT chat_id FROM chat_members WHERE user_id = $1", &[&user_id])?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Subscribes this connection to the processes' shared channel.
pub fn listen(sql: &mut Sql<impl GenericClient>) -> Result<(), ApiError> {
    sql.execute("LISTEN messaging", &[])?;
    Ok(())
}

/// Sends one payload on the processes' shared channel.
pub fn notify(sql: &mut Sql<impl GenericClient>, payload: &str) -> Result<(), ApiError> {
    sql.execute("SELECT pg_notify('messaging', $1)", &[&payload])?;
    Ok(())
}
