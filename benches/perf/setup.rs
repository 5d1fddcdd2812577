//! The data scenarios measure: accounts and chats made through the API as clients make them, and bulk history
//! written with SQL into the server's own tables (sql/*.up.sql), the way the server itself writes a message
//! (its row, its `message.created` event, the chat's `last_seq`).

use std::net::SocketAddr;
use std::thread;

use postgres::Client;
use serde_json::json;

use crate::http::Conn;
use crate::BenchResult;

const PASSWORD: &str = "correct horse battery";
/// Sign-ups and logins in flight while creating accounts.
const SETUP_THREADS: usize = 8;

#[derive(Clone)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub token: String,
}

/// Signs up and logs in `{prefix}{n}` for each `n` in `range`, several at a time; returns them in order.
pub fn create_users(http: SocketAddr, prefix: &str, range: std::ops::Range<usize>) -> BenchResult<Vec<User>> {
    let names: Vec<String> = range.map(|n| format!("{prefix}{n}")).collect();
    let per_thread = names.len().div_ceil(SETUP_THREADS).max(1);
    thread::scope(|scope| {
        let workers: Vec<_> = names
            .chunks(per_thread)
            .map(|chunk| {
                scope.spawn(move || -> BenchResult<Vec<User>> {
                    let mut conn = Conn::open(http)?;
                    chunk.iter().map(|name| create_user(&mut conn, name)).collect()
                })
            })
            .collect();
        let mut users = Vec::with_capacity(names.len());
        for worker in workers {
            users.extend(worker.join().map_err(|_| "a setup thread panicked".to_string())??);
        }
        Ok(users)
    })
}

fn create_user(conn: &mut Conn, username: &str) -> BenchResult<User> {
    let signup = json!({ "username": username, "email": format!("{username}@example.com"), "password": PASSWORD });
    let me = conn.call("POST", "/api/users", None, Some(&signup), 201)?;
    let login = json!({ "login": username, "password": PASSWORD });
    let session = conn.call("POST", "/api/sessions", None, Some(&login), 201)?;
    Ok(User {
        id: me["id"].as_i64().ok_or("signup answered no id")?,
        username: username.to_string(),
        token: session["token"].as_str().ok_or("login answered no token")?.to_string(),
    })
}

/// A group owned by `owner` with `members` (the owner among them or not); returns its id.
pub fn create_group(http: SocketAddr, owner: &User, title: &str, members: &[User]) -> BenchResult<i64> {
    let member_ids: Vec<i64> = members.iter().map(|user| user.id).filter(|&id| id != owner.id).collect();
    let body = json!({ "is_group": true, "title": title, "member_ids": member_ids });
    let chat = Conn::open(http)?.call("POST", "/api/chats", Some(&owner.token), Some(&body), 201)?;
    chat["id"].as_i64().ok_or_else(|| format!("the new chat {title:?} has no id"))
}

/// Appends `count` messages from `sender_id` to a chat in one transaction, with their events and the chat's
/// new `last_seq`, then lets autovacuum's work happen now (statistics and visibility) instead of mid-measurement.
pub fn bulk_messages(db: &mut Client, chat_id: i64, sender_id: i64, count: i64) -> BenchResult<()> {
    let fail = |e: postgres::Error| format!("bulk insert into chat {chat_id}: {}", describe(&e));
    let mut tx = db.transaction().map_err(fail)?;
    let row = tx.query_one("SELECT last_seq, message_count FROM chats WHERE id = $1 FOR UPDATE", &[&chat_id]);
    let row = row.map_err(fail)?;
    let (last_seq, message_count): (i64, i64) = (row.get(0), row.get(1));
    tx.execute(
        "WITH message AS (
            INSERT INTO messages (chat_id, seq, ordinal, sender_id, content)
            SELECT $1, $2 + n, $5 + n, $3, 'bulk message number ' || n FROM generate_series(1, $4::bigint) AS n
            RETURNING id, chat_id, seq, sender_id, created_at
         )
         INSERT INTO chat_events (chat_id, seq, type, actor_id, message_id, created_at)
         SELECT chat_id, seq, 'message.created', sender_id, id, created_at FROM message",
        &[&chat_id, &last_seq, &sender_id, &count, &message_count],
    )
    .map_err(fail)?;
    tx.execute(
        "UPDATE chats SET last_seq = $2, message_count = $3, last_activity_at = now() WHERE id = $1",
        &[&chat_id, &(last_seq + count), &(message_count + count)],
    )
    .map_err(fail)?;
    tx.commit().map_err(fail)?;
    // Separate statements: VACUUM cannot run in the implicit transaction of a multi-statement query.
    db.batch_execute("VACUUM ANALYZE messages, chat_events").map_err(fail)?;
    db.batch_execute("CHECKPOINT").map_err(fail)
}

/// A PostgreSQL error with the server's message, which `postgres::Error`'s own text leaves out.
pub fn describe(error: &postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => error.to_string(),
    }
}
