//! Plain data shared by every layer: ids, accounts, chats, messages, and the
//! events of a chat's log, each with the JSON shape the API gives it.
//!
//! Nothing here touches a database, a socket or another module of this crate.
//! The serde derives are the only definition of each shape: replies, frames
//! and the payloads stored in `chat_events` all go through them, so a renamed
//! field changes every one of them at once.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use time::OffsetDateTime;

macro_rules! ids {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {$(
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    )*};
}

ids! {
    /// A user's id.
    UserId,
    /// A chat's id.
    ChatId,
    /// A message's id.
    MessageId,
    /// A session's id: `GET /api/sessions` shows the caller's, and
    /// `DELETE /api/sessions/{id}`, tickets and logouts name them.
    SessionId,
}

/// The caller's own account.
#[derive(Clone, Debug, Serialize)]
pub struct Me {
    pub id: UserId,
    pub username: String,
    pub email: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Anyone else's account: never their email.
#[derive(Debug, Serialize)]
pub struct User {
    pub id: UserId,
    pub username: String,
    pub online: bool,
}

/// An authenticated caller: the session that made the request and its user.
#[derive(Clone, Debug)]
pub struct Session {
    pub id: SessionId,
    pub user: Me,
    pub expires_at: OffsetDateTime,
}

/// One of the caller's sessions, as `GET /api/sessions` lists it.
#[derive(Debug, Serialize)]
pub struct SessionInfo {
    pub id: SessionId,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Whether this is the session making the request.
    pub current: bool,
}

/// A chat as its member sees it.
#[derive(Debug, Serialize)]
pub struct Chat {
    pub id: ChatId,
    pub is_group: bool,
    pub title: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub members: Vec<Member>,
    pub last_seq: i64,
    pub last_read_seq: i64,
    pub unread_count: i64,
    pub last_message: Option<Message>,
}

/// A chat's member; what `member.*` events carry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Member {
    pub id: UserId,
    pub username: String,
    pub role: String,
}

/// What `chat.*` events carry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChatInfo {
    pub id: ChatId,
    pub is_group: bool,
    pub title: Option<String>,
}

/// A checked request to create a chat.
pub struct NewChat {
    pub is_group: bool,
    pub title: Option<String>,
    /// The other members, without the creator, without repeats.
    pub member_ids: Vec<UserId>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Message {
    pub id: MessageId,
    pub chat_id: ChatId,
    pub seq: i64,
    pub sender_id: UserId,
    pub content: String,
    pub client_id: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub edited_at: Option<OffsetDateTime>,
    pub deleted: bool,
    /// The seq of the message this one answers, in the same chat.
    pub reply_to_seq: Option<i64>,
    /// Each emoji by its first use, with who reacted, in order (`reactions.rs`).
    pub reactions: Reactions,
}

/// A message's reactions as stored, the JSON of a `[Reaction]`, carried
/// through unparsed: reading history copies them into the reply instead of
/// building and encoding a list per message (BENCHMARKS.md, P11). Only a
/// change parses them (`Message::reaction_list`).
pub type Reactions = Box<RawValue>;

/// One emoji on a message and the users who reacted with it, in reaction
/// order; also the shape a message's `reactions` column stores.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reaction {
    pub emoji: String,
    pub user_ids: Vec<UserId>,
}

/// What `reaction.*` events carry: who added or removed which emoji where.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReactionChange {
    pub message_id: MessageId,
    pub emoji: String,
    pub user_id: UserId,
}

impl Message {
    /// The message's reactions, parsed for a change.
    pub fn reaction_list(&self) -> Result<Vec<Reaction>, serde_json::Error> {
        serde_json::from_str(self.reactions.get())
    }

    /// The `message.*` event this message's current state makes.
    pub fn event(&self, kind: EventKind, actor_id: UserId, seq: i64, created_at: OffsetDateTime) -> Event {
        Event { chat_id: self.chat_id, seq, kind, created_at, actor_id, payload: Payload::Message(self.clone()) }
    }
}

/// The type of a chat's event, as the API and `chat_events.type` name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    ChatCreated,
    ChatUpdated,
    MemberAdded,
    MemberRemoved,
    MessageCreated,
    MessageUpdated,
    MessageDeleted,
    ReactionAdded,
    ReactionRemoved,
}

impl EventKind {
    pub const ALL: [EventKind; 9] = [
        EventKind::ChatCreated,
        EventKind::ChatUpdated,
        EventKind::MemberAdded,
        EventKind::MemberRemoved,
        EventKind::MessageCreated,
        EventKind::MessageUpdated,
        EventKind::MessageDeleted,
        EventKind::ReactionAdded,
        EventKind::ReactionRemoved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ChatCreated => "chat.created",
            EventKind::ChatUpdated => "chat.updated",
            EventKind::MemberAdded => "member.added",
            EventKind::MemberRemoved => "member.removed",
            EventKind::MessageCreated => "message.created",
            EventKind::MessageUpdated => "message.updated",
            EventKind::MessageDeleted => "message.deleted",
            EventKind::ReactionAdded => "reaction.added",
            EventKind::ReactionRemoved => "reaction.removed",
        }
    }

    /// The kind a stored type name stands for.
    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

impl Serialize for EventKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// One entry of a chat's log, as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub chat_id: ChatId,
    pub seq: i64,
    #[serde(rename = "type")]
    pub kind: EventKind,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub actor_id: UserId,
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
    Reaction(ReactionChange),
}

impl Event {
    /// The user this event makes a member: the added member, or a new chat's creator.
    pub fn joins(&self) -> Option<UserId> {
        match (&self.payload, self.kind) {
            (Payload::Member(member), EventKind::MemberAdded) => Some(member.id),
            (Payload::Chat(_), EventKind::ChatCreated) => Some(self.actor_id),
            _ => None,
        }
    }

    /// The user this event removes from the chat.
    pub fn leaves(&self) -> Option<UserId> {
        match (&self.payload, self.kind) {
            (Payload::Member(member), EventKind::MemberRemoved) => Some(member.id),
            _ => None,
        }
    }
}

/// A page of history or of search results, `{messages, has_more}`, encoded
/// straight from the messages (no `serde_json::Value` tree in between).
#[derive(Serialize)]
pub struct MessagePage<'a> {
    pub messages: &'a [Message],
    pub has_more: bool,
}

/// A page of a chat's log, `{events, has_more}`.
#[derive(Serialize)]
pub struct EventPage<'a> {
    pub events: &'a [Event],
    pub has_more: bool,
}

/// The frame that carries an event to a WebSocket, `{"type": "event", "event"}`.
#[derive(Serialize)]
pub struct EventFrame<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub event: &'a Event,
}

/// Typing and read frames: live only, never stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Live {
    Typing { chat_id: ChatId, user_id: UserId },
    Read { chat_id: ChatId, user_id: UserId, seq: i64 },
}

/// RFC 3339 in UTC with a `Z`, as every timestamp of the API.
pub fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339).expect("timestamps from PostgreSQL are in range")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kinds_round_trip_through_their_names() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
        assert_eq!(EventKind::parse("message.exploded"), None);
    }

    #[test]
    fn ids_serialize_as_plain_numbers() {
        let member = Member { id: UserId(7), username: "ann".into(), role: "owner".into() };
        assert_eq!(serde_json::to_string(&member).unwrap(), r#"{"id":7,"username":"ann","role":"owner"}"#);
        let back: Member = serde_json::from_str(r#"{"id":7,"username":"ann","role":"owner"}"#).unwrap();
        assert_eq!(back.id, UserId(7));
    }
}
