//! (method, path) → `Route`, with typed ids; `404` and `405` with `Allow`.
//!
//! Routes are an enum so that dispatch is one `match`, and so that anything
//! that must name a route (the log line; later a metrics label or an OpenAPI
//! document) uses its pattern (`Route::name`), never a raw path.
//! An id that is not a positive integer matches nothing: `404`, as for a
//! resource that does not exist.

use crate::error::ApiError;
use crate::model::{ChatId, MessageId, SessionId, UserId};
use crate::reactions::{BadEmoji, Emoji};

/// A reaction route's emoji: checked here, refused with a `400` by the
/// handler, after authentication, like any other bad input.
pub type EmojiSegment = Result<Emoji, BadEmoji>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Healthz,
    Readyz,
    Metrics,
    OpenApi,
    WsOnHttpPort,
    CreateUser,
    SearchUsers,
    GetMe,
    GetUser(UserId),
    ChangePassword,
    CreateSession,
    ListSessions,
    DeleteCurrentSession,
    DeleteAllSessions,
    DeleteSession(SessionId),
    CreateWsTicket,
    CreateChat,
    ListChats,
    GetChat(ChatId),
    UpdateChat(ChatId),
    AddMember(ChatId),
    RemoveMember(ChatId, UserId),
    SendMessage(ChatId),
    ListMessages(ChatId),
    EditMessage(ChatId, MessageId),
    DeleteMessage(ChatId, MessageId),
    AddReaction(ChatId, MessageId, EmojiSegment),
    RemoveReaction(ChatId, MessageId, EmojiSegment),
    MarkRead(ChatId),
    ListEvents(ChatId),
    SearchMessages,
    LegacySignup,
    LegacyLogin,
    LegacyLogout,
    LegacyCreateChat,
    LegacyListMessages(ChatId),
    LegacyListChats,
    WebClient,
}

impl Route {
    /// One of each route (ids of 1), for whatever must walk them all.
    #[cfg(test)]
    pub fn all() -> [Route; 38] {
        let (chat, user, message) = (ChatId(1), UserId(1), MessageId(1));
        let emoji = Emoji::decode("%F0%9F%91%8D");
        [
            Route::Healthz,
            Route::Readyz,
            Route::Metrics,
            Route::OpenApi,
            Route::WsOnHttpPort,
            Route::CreateUser,
            Route::SearchUsers,
            Route::GetMe,
            Route::GetUser(user),
            Route::ChangePassword,
            Route::CreateSession,
            Route::ListSessions,
            Route::DeleteCurrentSession,
            Route::DeleteAllSessions,
            Route::DeleteSession(SessionId(1)),
            Route::CreateWsTicket,
            Route::CreateChat,
            Route::ListChats,
            Route::GetChat(chat),
            Route::UpdateChat(chat),
            Route::AddMember(chat),
            Route::RemoveMember(chat, user),
            Route::SendMessage(chat),
            Route::ListMessages(chat),
            Route::EditMessage(chat, message),
            Route::DeleteMessage(chat, message),
            Route::AddReaction(chat, message, emoji),
            Route::RemoveReaction(chat, message, emoji),
            Route::MarkRead(chat),
            Route::ListEvents(chat),
            Route::SearchMessages,
            Route::LegacySignup,
            Route::LegacyLogin,
            Route::LegacyLogout,
            Route::LegacyCreateChat,
            Route::LegacyListMessages(chat),
            Route::LegacyListChats,
            Route::WebClient,
        ]
    }

    /// The route's method and pattern, e.g. `GET /api/chats/{id}`: a label
    /// that never holds an id.
    pub fn name(&self) -> &'static str {
        match self {
            Route::Healthz => "GET /healthz",
            Route::Readyz => "GET /readyz",
            Route::Metrics => "GET /metrics",
            Route::OpenApi => "GET /openapi.json",
            Route::WsOnHttpPort => "GET /ws",
            Route::CreateUser => "POST /api/users",
            Route::SearchUsers => "GET /api/users",
            Route::GetMe => "GET /api/users/me",
            Route::GetUser(_) => "GET /api/users/{id}",
            Route::ChangePassword => "PUT /api/users/me/password",
            Route::CreateSession => "POST /api/sessions",
            Route::ListSessions => "GET /api/sessions",
            Route::DeleteCurrentSession => "DELETE /api/sessions/current",
            Route::DeleteAllSessions => "DELETE /api/sessions",
            Route::DeleteSession(_) => "DELETE /api/sessions/{id}",
            Route::CreateWsTicket => "POST /api/ws-tickets",
            Route::CreateChat => "POST /api/chats",
            Route::ListChats => "GET /api/chats",
            Route::GetChat(_) => "GET /api/chats/{id}",
            Route::UpdateChat(_) => "PATCH /api/chats/{id}",
            Route::AddMember(_) => "POST /api/chats/{id}/members",
            Route::RemoveMember(..) => "DELETE /api/chats/{id}/members/{user_id}",
            Route::SendMessage(_) => "POST /api/chats/{id}/messages",
            Route::ListMessages(_) => "GET /api/chats/{id}/messages",
            Route::EditMessage(..) => "PATCH /api/chats/{id}/messages/{message_id}",
            Route::DeleteMessage(..) => "DELETE /api/chats/{id}/messages/{message_id}",
            Route::AddReaction(..) => "PUT /api/chats/{id}/messages/{message_id}/reactions/{emoji}",
            Route::RemoveReaction(..) => "DELETE /api/chats/{id}/messages/{message_id}/reactions/{emoji}",
            Route::MarkRead(_) => "POST /api/chats/{id}/read",
            Route::ListEvents(_) => "GET /api/chats/{id}/events",
            Route::SearchMessages => "GET /api/search",
            Route::LegacySignup => "POST /user/signup",
            Route::LegacyLogin => "POST /user/login",
            Route::LegacyLogout => "POST /user/logout",
            Route::LegacyCreateChat => "POST /chat/message",
            Route::LegacyListMessages(_) => "GET /chat/messages/{id}",
            Route::LegacyListChats => "GET /chat/user",
            Route::WebClient => "GET /",
        }
    }
}

/// Matches a method and a URL (query string ignored) to a route.
pub fn route(method: &str, url: &str) -> Result<Route, ApiError> {
    let path = url.split(['?', '#']).next().unwrap_or("");
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let choices: Vec<(&str, Route)> = match segments.as_slice() {
        ["healthz"] => vec![("GET", Route::Healthz)],
        ["readyz"] => vec![("GET", Route::Readyz)],
        ["metrics"] => vec![("GET", Route::Metrics)],
        ["openapi.json"] => vec![("GET", Route::OpenApi)],
        ["ws"] => vec![("GET", Route::WsOnHttpPort)],
        ["api", "users"] => vec![("GET", Route::SearchUsers), ("POST", Route::CreateUser)],
        ["api", "users", "me"] => vec![("GET", Route::GetMe)],
        ["api", "users", id] => vec![("GET", Route::GetUser(UserId(id_from(id)?)))],
        ["api", "users", "me", "password"] => vec![("PUT", Route::ChangePassword)],
        ["api", "sessions"] => {
            vec![("GET", Route::ListSessions), ("POST", Route::CreateSession), ("DELETE", Route::DeleteAllSessions)]
        }
        ["api", "sessions", "current"] => vec![("DELETE", Route::DeleteCurrentSession)],
        ["api", "sessions", id] => vec![("DELETE", Route::DeleteSession(SessionId(id_from(id)?)))],
        ["api", "ws-tickets"] => vec![("POST", Route::CreateWsTicket)],
        ["api", "chats"] => vec![("GET", Route::ListChats), ("POST", Route::CreateChat)],
        ["api", "chats", id, rest @ ..] => chat_routes(ChatId(id_from(id)?), rest)?,
        ["api", "search"] => vec![("GET", Route::SearchMessages)],
        ["user", "signup"] => vec![("POST", Route::LegacySignup)],
        ["user", "login"] => vec![("POST", Route::LegacyLogin)],
        ["user", "logout"] => vec![("POST", Route::LegacyLogout)],
        ["chat", "message"] => vec![("POST", Route::LegacyCreateChat)],
        ["chat", "messages", id] => vec![("GET", Route::LegacyListMessages(ChatId(id_from(id)?)))],
        ["chat", "user"] => vec![("GET", Route::LegacyListChats)],
        [""] => vec![("GET", Route::WebClient)],
        _ => return Err(ApiError::NotFound),
    };
    match choices.iter().find(|(m, _)| *m == method) {
        Some((_, route)) => Ok(*route),
        None => {
            let allow = choices.iter().map(|(m, _)| *m).collect::<Vec<_>>().join(", ");
            Err(ApiError::MethodNotAllowed { allow })
        }
    }
}

fn chat_routes(chat: ChatId, rest: &[&str]) -> Result<Vec<(&'static str, Route)>, ApiError> {
    Ok(match rest {
        [] => vec![("GET", Route::GetChat(chat)), ("PATCH", Route::UpdateChat(chat))],
        ["members"] => vec![("POST", Route::AddMember(chat))],
        ["members", user] => vec![("DELETE", Route::RemoveMember(chat, UserId(id_from(user)?)))],
        ["messages"] => vec![("GET", Route::ListMessages(chat)), ("POST", Route::SendMessage(chat))],
        ["messages", message] => {
            let message = MessageId(id_from(message)?);
            vec![("PATCH", Route::EditMessage(chat, message)), ("DELETE", Route::DeleteMessage(chat, message))]
        }
        ["messages", message, "reactions", emoji] => {
            let (message, emoji) = (MessageId(id_from(message)?), Emoji::decode(emoji));
            vec![
                ("PUT", Route::AddReaction(chat, message, emoji)),
                ("DELETE", Route::RemoveReaction(chat, message, emoji)),
            ]
        }
        ["read"] => vec![("POST", Route::MarkRead(chat))],
        ["events"] => vec![("GET", Route::ListEvents(chat))],
        _ => return Err(ApiError::NotFound),
    })
}

/// A path id; anything else is `404`, as for an id that does not exist.
fn id_from(segment: &str) -> Result<i64, ApiError> {
    decimal_id(segment).ok_or(ApiError::NotFound)
}

/// An id written as text (a path segment, the seed's string ids): a positive
/// 64-bit integer in plain decimal digits, so no sign, space or other spelling.
pub fn decimal_id(text: &str) -> Option<i64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<i64>().ok().filter(|id| *id > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_routes_with_typed_ids() {
        let table = [
            ("GET", "/healthz", Route::Healthz),
            ("GET", "/metrics", Route::Metrics),
            ("GET", "/api/users?q=al", Route::SearchUsers),
            ("GET", "/api/users/me", Route::GetMe),
            ("GET", "/api/users/42", Route::GetUser(UserId(42))),
            ("DELETE", "/api/sessions", Route::DeleteAllSessions),
            ("GET", "/api/sessions", Route::ListSessions),
            ("DELETE", "/api/sessions/current", Route::DeleteCurrentSession),
            ("DELETE", "/api/sessions/12", Route::DeleteSession(SessionId(12))),
            ("PUT", "/api/users/me/password", Route::ChangePassword),
            ("DELETE", "/api/chats/7/members/9", Route::RemoveMember(ChatId(7), UserId(9))),
            ("PATCH", "/api/chats/7/messages/3", Route::EditMessage(ChatId(7), MessageId(3))),
            ("GET", "/api/chats/7/events?after=3", Route::ListEvents(ChatId(7))),
            (
                "PUT",
                "/api/chats/7/messages/3/reactions/%F0%9F%8E%89",
                Route::AddReaction(ChatId(7), MessageId(3), Emoji::decode("🎉")),
            ),
            (
                "DELETE",
                "/api/chats/7/messages/3/reactions/a%20b",
                Route::RemoveReaction(ChatId(7), MessageId(3), Err(BadEmoji)),
            ),
            ("PUT", "/api/chats/7/messages/3/reactions/", Route::AddReaction(ChatId(7), MessageId(3), Err(BadEmoji))),
            ("GET", "/api/search?q=lunch&chat_id=7", Route::SearchMessages),
            ("GET", "/chat/messages/5", Route::LegacyListMessages(ChatId(5))),
            ("GET", "/?from=bookmark", Route::WebClient),
        ];
        for (method, url, expected) in table {
            assert_eq!(route(method, url).unwrap(), expected, "{method} {url}");
        }
    }

    #[test]
    fn every_route_is_found_again_from_its_name() {
        for expected in Route::all() {
            let (method, pattern) = expected.name().split_once(' ').unwrap();
            let path = pattern.replace("{id}", "1").replace("{user_id}", "1").replace("{message_id}", "1");
            let path = path.replace("{emoji}", "%F0%9F%91%8D");
            assert_eq!(route(method, &path).unwrap(), expected, "{}", expected.name());
        }
        let mut names: Vec<&str> = Route::all().iter().map(Route::name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Route::all().len(), "names are distinct");
    }

    #[test]
    fn bad_ids_and_unknown_paths_are_not_found() {
        for url in [
            "/nope",
            "/api/users/0",
            "/api/users/-1",
            "/api/users/1x",
            "/api/users/+1",
            "/api/chats/99999999999999999999",
            "/api/chats/1/nope",
            "/api/chats/1/messages/x/reactions/a",
            "/api/chats/1/messages/1/reactions/a/b",
            "//",
            "/index.html",
        ] {
            assert!(matches!(route("GET", url), Err(ApiError::NotFound)), "{url}");
        }
        for url in ["/api/sessions/0", "/api/sessions/-3", "/api/sessions/abc", "/api/sessions/1.5", "/api/sessions/"] {
            assert!(matches!(route("DELETE", url), Err(ApiError::NotFound)), "DELETE {url}");
        }
        for url in ["/api/users/7/password", "/api/users/me/password/x"] {
            assert!(matches!(route("PUT", url), Err(ApiError::NotFound)), "PUT {url}");
        }
    }

    #[test]
    fn decimal_ids_are_plain_positive_digits() {
        for (text, expected) in [("1", Some(1)), ("007", Some(7)), ("9223372036854775807", Some(i64::MAX))] {
            assert_eq!(decimal_id(text), expected, "{text:?}");
        }
        for text in ["", "0", "00", "+1", "-1", " 1", "1 ", "1.0", "1e3", "9223372036854775808", "１"] {
            assert_eq!(decimal_id(text), None, "{text:?}");
        }
    }

    #[test]
    fn wrong_method_lists_the_allowed_ones() {
        match route("PUT", "/api/users/me") {
            Err(ApiError::MethodNotAllowed { allow }) => assert_eq!(allow, "GET"),
            other => panic!("{other:?}"),
        }
        match route("PUT", "/api/chats/1/messages/2") {
            Err(ApiError::MethodNotAllowed { allow }) => assert_eq!(allow, "PATCH, DELETE"),
            other => panic!("{other:?}"),
        }
        let table = [
            ("PUT", "/api/sessions", "GET, POST, DELETE"),
            ("GET", "/api/sessions/current", "DELETE"),
            ("GET", "/api/sessions/5", "DELETE"),
            ("POST", "/api/users/me/password", "PUT"),
            ("POST", "/", "GET"),
        ];
        for (method, url, expected) in table {
            match route(method, url) {
                Err(ApiError::MethodNotAllowed { allow }) => assert_eq!(allow, expected, "{method} {url}"),
                other => panic!("{method} {url}: {other:?}"),
            }
        }
    }
}
