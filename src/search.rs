//! Handler for message search (contract section 9): the caller's messages
//! that hold every word of `q`, newest first.
//!
//! The words are made by `words.rs`, not by PostgreSQL, so the contract's
//! word rule holds whatever the database's locale. The newest messages are
//! searched first and the word index only when they hold too few matches
//! (`store::Search::Recent`, then `store::Search::Indexed`): each plan is
//! fast in its own case, whatever PostgreSQL's plan cache decides.

use crate::app::Ctx;
use crate::error::ApiError;
use crate::http::Reply;
use crate::model::{ChatId, MessagePage, UserId};
use crate::store::{self, Search};
use crate::words;

/// The longest `q`, in characters.
const MAX_QUERY_CHARS: usize = 200;

/// A search's `q` as a `tsquery` text: 1 to 200 characters with at least
/// one letter or digit.
fn parse_query(q: Option<&str>) -> Result<String, ApiError> {
    let q = q.unwrap_or("");
    let tsquery = match q.chars().count() {
        1..=MAX_QUERY_CHARS => words::tsquery(q),
        _ => None,
    };
    tsquery.ok_or_else(|| ApiError::invalid("q", "q must be 1 to 200 characters with at least one letter or digit"))
}

/// `GET /api/search?q=&chat_id=&before=&limit=`
pub fn search_messages(ctx: &mut Ctx, user_id: UserId) -> Result<Reply, ApiError> {
    let query = ctx.query();
    let tsquery = parse_query(query.text("q")?)?;
    let only = query.int("chat_id", 1, i64::MAX)?.map(ChatId);
    let before = query.int("before", 1, i64::MAX)?.unwrap_or(i64::MAX);
    let limit = query.int("limit", 1, 100)?.unwrap_or(20);
    let sql = &mut ctx.db.sql()?;
    if let Some(chat_id) = only {
        store::find_role(sql, chat_id, user_id)?.ok_or(ApiError::NotFound)?;
    }
    let mut messages = store::search_messages(sql, Search::Recent, user_id, only, &tsquery, before, limit + 1)?;
    if messages.len() as i64 <= limit {
        messages = store::search_messages(sql, Search::Indexed, user_id, only, &tsquery, before, limit + 1)?;
    }
    let has_more = messages.len() as i64 > limit;
    messages.truncate(limit as usize);
    Ok(Reply::json(200, &MessagePage { messages: &messages, has_more }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q_is_one_to_two_hundred_characters_with_a_letter_or_digit() {
        // (q, accepted, why)
        let cases = [
            (None, false, "missing"),
            (Some(""), false, "empty"),
            (Some("?!. @"), false, "punctuation and space only"),
            (Some("a"), true, "one letter"),
            (Some("7"), true, "one digit"),
            (Some("…ж…"), true, "one Cyrillic letter among punctuation"),
        ];
        for (q, accepted, why) in cases {
            assert_eq!(parse_query(q).is_ok(), accepted, "{why}: {q:?}");
        }
        let longest = "é".repeat(MAX_QUERY_CHARS);
        assert!(parse_query(Some(&longest)).is_ok(), "200 characters (400 bytes)");
        let too_long = format!("{longest}a");
        match parse_query(Some(&too_long)) {
            Err(ApiError::InvalidRequest { field: Some("q"), .. }) => {}
            other => panic!("201 characters: {other:?}"),
        }
    }

    #[test]
    fn the_search_benchmark_prepares_the_server_s_statements() {
        let plans = include_str!("../benches/search/plans.sql");
        let flat = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
        for statement in [store::SEARCH_RECENT_MESSAGES, store::SEARCH_MESSAGES] {
            assert!(flat(plans).contains(&flat(statement)), "benches/search/plans.sql lacks {statement}");
        }
    }
}
