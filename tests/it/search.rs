//! Message search (contract section 9): every word of `q` in the caller's
//! chats, whole words with the last also a prefix, case-insensitive in any
//! script, newest first, paged by `before`; the limits on `q`, `chat_id`,
//! `before` and `limit`; and the back-fill of messages stored before the
//! search migration.

use serde_json::{json, Value};

use messaging::migrate::{self, Source};

use crate::chats::{create_group, id_of, NO_SUCH_CHAT};
use crate::messages::{assert_message_shape, send};
use crate::support::{assert_keys, check_error, spawn_app, spawn_app_on, TestApp, TestUser};

/// `q` (or any parameter value) percent-encoded: every byte but ASCII letters and digits.
fn encoded(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => (byte as char).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// `GET /api/search?q=<q>&<rest>` as `user`.
fn get_search(app: &TestApp, user: &TestUser, q: &str, rest: &str) -> crate::support::Resp {
    app.get(&format!("/api/search?q={}&{rest}", encoded(q)), Some(&user.token))
}

/// One page of results, asserting `200`, the shape and newest first.
fn search(app: &TestApp, user: &TestUser, q: &str, rest: &str) -> (Vec<Value>, bool) {
    let resp = get_search(app, user, q, rest);
    resp.assert_status(200, &format!("{} searches {q:?} with {rest:?}", user.username));
    let body = resp.json();
    assert_keys(&body, &["messages", "has_more"], "a search page");
    let has_more = body["has_more"].as_bool().unwrap_or_else(|| panic!("has_more not a boolean: {body}"));
    let messages = body["messages"].as_array().unwrap_or_else(|| panic!("messages: {body}")).clone();
    for message in &messages {
        assert_message_shape(message, &format!("a result of {q:?}"));
    }
    let ids = ids_of(&messages);
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{q:?}: ids not descending: {ids:?}");
    (messages, has_more)
}

/// The contents found by `q` (first page, default limit), newest first.
fn found(app: &TestApp, user: &TestUser, q: &str) -> Vec<String> {
    search(app, user, q, "").0.iter().map(|m| m["content"].as_str().unwrap().to_string()).collect()
}

fn ids_of(messages: &[Value]) -> Vec<i64> {
    messages.iter().map(id_of).collect()
}

/// A group of `owner` and `members`, returning its id.
fn group(app: &TestApp, owner: &TestUser, members: &[&TestUser]) -> i64 {
    id_of(&create_group(app, owner, "Search", members))
}

#[test]
fn every_word_must_match_and_results_come_newest_first() {
    let app = spawn_app();
    let (alice, bob) = (app.create_user(), app.create_user());
    let chat_id = group(&app, &alice, &[&bob]);
    for content in ["red apple pie", "green apple", "an apple, red and ripe", "red wine", "Red Apples!"] {
        send(&app, &bob, chat_id, content);
    }

    assert_eq!(found(&app, &alice, "red apple"), ["Red Apples!", "an apple, red and ripe", "red apple pie"]);
    assert_eq!(
        found(&app, &alice, "apple red"),
        ["an apple, red and ripe", "red apple pie"],
        "apple is not last, so whole: Apples is not apple"
    );
    assert_eq!(found(&app, &alice, "green red apple"), Vec::<String>::new(), "every word, not any word");
    assert_eq!(found(&app, &bob, "wine"), ["red wine"], "the sender finds their own messages too");
}

#[test]
fn whole_words_match_and_the_last_word_also_as_a_prefix() {
    let app = spawn_app();
    let alice = app.create_user();
    let chat_id = group(&app, &alice, &[]);
    for content in ["concatenate dog", "cat doghouse", "the cathedral bell", "a cat"] {
        send(&app, &alice, chat_id, content);
    }

    // (q, found, why)
    let cases: [(&str, &[&str], &str); 6] = [
        ("cat", &["a cat", "the cathedral bell", "cat doghouse"], "the last word is a prefix"),
        ("cat dog", &["cat doghouse"], "cat is whole: concatenate holds it only inside"),
        ("bell cat", &["the cathedral bell"], "the last word, cat, a prefix of cathedral"),
        ("cat bell", &[], "cat not last, so whole: cathedral is not cat"),
        ("athedral", &[], "a word inside another is not a prefix of it"),
        ("doghouses", &[], "a prefix is of the query's word, not of the message's"),
    ];
    for (q, want, why) in cases {
        assert_eq!(found(&app, &alice, q), want, "{why}: {q:?}");
    }
}

#[test]
fn case_does_not_matter_in_any_script() {
    let app = spawn_app();
    let alice = app.create_user();
    let chat_id = group(&app, &alice, &[]);
    for content in ["ÄPFEL und Birnen", "Καλημέρα ΚΌΣΜΕ", "Привет, МИР", "ΟΔΟΣΤΡΩΜΑ"] {
        send(&app, &alice, chat_id, content);
    }

    // (q, found, why)
    let cases: [(&str, &[&str], &str); 7] = [
        ("äpfel", &["ÄPFEL und Birnen"], "German: upper-case umlaut stored, lower-case searched"),
        ("BIRNEN ÄPF", &["ÄPFEL und Birnen"], "German: upper-case searched, the last as a prefix"),
        ("κόσμε", &["Καλημέρα ΚΌΣΜΕ"], "Greek, with its accent"),
        ("ΚΑΛΗΜΈΡΑ", &["Καλημέρα ΚΌΣΜΕ"], "Greek, upper case searched"),
        ("мир привет", &["Привет, МИР"], "Cyrillic, in either order"),
        ("οδος", &["ΟΔΟΣΤΡΩΜΑ"], "a final sigma searches as a prefix like any sigma"),
        ("kosme", &[], "no transliteration"),
    ];
    for (q, want, why) in cases {
        assert_eq!(found(&app, &alice, q), want, "{why}: {q:?}");
    }
}

#[test]
fn punctuation_splits_words() {
    let app = spawn_app();
    let alice = app.create_user();
    let chat_id = group(&app, &alice, &[]);
    for content in ["mail bob@example.com today", "see https://docs.rs/serde_json/1.5", "version 1.5"] {
        send(&app, &alice, chat_id, content);
    }

    // (q, found, why)
    let cases: [(&str, &[&str], &str); 6] = [
        ("example", &["mail bob@example.com today"], "an address's domain is a word"),
        ("bob@example.com", &["mail bob@example.com today"], "the address searches as its words"),
        ("json", &["see https://docs.rs/serde_json/1.5"], "an underscore splits"),
        ("1.5", &["version 1.5", "see https://docs.rs/serde_json/1.5"], "a number's point splits"),
        ("5", &["version 1.5", "see https://docs.rs/serde_json/1.5"], "so its digits are a word"),
        ("example.org", &[], "every word, com is not org"),
    ];
    for (q, want, why) in cases {
        assert_eq!(found(&app, &alice, q), want, "{why}: {q:?}");
    }
}

#[test]
fn only_chats_the_caller_is_in_now_are_searched() {
    let app = spawn_app();
    let (alice, bob, carol) = (app.create_user(), app.create_user(), app.create_user());
    let shared = group(&app, &alice, &[&bob]);
    let carols = group(&app, &carol, &[&bob]);
    send(&app, &bob, shared, "walrus in the shared chat");
    send(&app, &carol, carols, "walrus where alice never was");

    assert_eq!(found(&app, &alice, "walrus"), ["walrus in the shared chat"], "never in carol's chat");
    assert_eq!(found(&app, &bob, "walrus").len(), 2, "bob is in both");

    app.delete(&format!("/api/chats/{shared}/members/{}", alice.id), Some(&alice.token)).assert_status(204, "leave");
    assert_eq!(found(&app, &alice, "walrus"), Vec::<String>::new(), "a chat she left is not searched");
    check_error(&get_search(&app, &alice, "walrus", &format!("chat_id={shared}")), 404, "not_found", None);

    let add = json!({ "user_id": alice.id });
    app.post(&format!("/api/chats/{carols}/members"), Some(&carol.token), add).assert_status(200, "alice joins");
    assert_eq!(
        found(&app, &alice, "walrus"),
        ["walrus where alice never was"],
        "joining shows what was sent before she joined"
    );
}

#[test]
fn chat_id_searches_one_chat_and_a_chat_the_caller_is_not_in_is_404() {
    let app = spawn_app();
    let (alice, bob) = (app.create_user(), app.create_user());
    let first = group(&app, &alice, &[]);
    let second = group(&app, &alice, &[]);
    let bobs = group(&app, &bob, &[]);
    send(&app, &alice, first, "otter one");
    send(&app, &alice, second, "otter two");
    send(&app, &bob, bobs, "otter three");

    let (messages, _) = search(&app, &alice, "otter", &format!("chat_id={first}"));
    assert_eq!(messages.iter().map(|m| m["content"].clone()).collect::<Vec<_>>(), [json!("otter one")]);
    assert_eq!(found(&app, &alice, "otter"), ["otter two", "otter one"]);
    let (nothing, has_more) = search(&app, &alice, "badger", &format!("chat_id={first}"));
    assert_eq!((nothing.len(), has_more), (0, false), "a member's chat without a match is 200 and empty");

    for (chat_id, why) in [(bobs, "a chat she is not in"), (NO_SUCH_CHAT, "a chat that does not exist")] {
        let resp = get_search(&app, &alice, "otter", &format!("chat_id={chat_id}"));
        check_error(&resp, 404, "not_found", None);
        assert!(!resp.text().contains("otter"), "{why}: nothing of it shows: {}", resp.text());
    }
    for bad in ["abc", "0", "-1", "1.5", ""] {
        check_error(
            &get_search(&app, &alice, "otter", &format!("chat_id={bad}")),
            400,
            "invalid_request",
            Some("chat_id"),
        );
    }
}

#[test]
fn deleted_messages_are_never_found_and_an_edit_is_found_by_its_new_words() {
    let app = spawn_app();
    let (alice, bob) = (app.create_user(), app.create_user());
    let chat_id = group(&app, &alice, &[&bob]);
    let deleted = send(&app, &bob, chat_id, "orange juice");
    let edited = send(&app, &bob, chat_id, "old words");
    send(&app, &bob, chat_id, "orange peel");

    app.delete(&format!("/api/chats/{chat_id}/messages/{}", id_of(&deleted)), Some(&bob.token))
        .assert_status(204, "delete");
    let edit = json!({ "content": "fresh words" });
    app.patch(&format!("/api/chats/{chat_id}/messages/{}", id_of(&edited)), Some(&bob.token), edit)
        .assert_status(200, "edit");

    assert_eq!(found(&app, &alice, "orange"), ["orange peel"], "the deleted message is gone");
    assert_eq!(found(&app, &alice, "juice"), Vec::<String>::new());
    assert_eq!(found(&app, &alice, "old"), Vec::<String>::new(), "not by the words it had");
    let (messages, _) = search(&app, &alice, "fresh", "");
    assert_eq!(ids_of(&messages), [id_of(&edited)], "by its new words");
    assert_eq!(messages[0]["content"], json!("fresh words"));
    assert!(messages[0]["edited_at"].is_string(), "the message as it is now: {}", messages[0]);
}

#[test]
fn before_pages_back_with_has_more() {
    let app = spawn_app();
    let alice = app.create_user();
    let chat_id = group(&app, &alice, &[]);
    let mut matching = Vec::new();
    for n in 1..=7 {
        matching.push(id_of(&send(&app, &alice, chat_id, &format!("heron number {n}"))));
        send(&app, &alice, chat_id, &format!("filler number {n}"));
    }
    matching.reverse();

    let mut pages = Vec::new();
    let mut rest = "limit=3".to_string();
    loop {
        let (messages, has_more) = search(&app, &alice, "heron", &rest);
        pages.push((ids_of(&messages), has_more));
        let Some(oldest) = messages.last() else { break };
        if !has_more {
            break;
        }
        rest = format!("limit=3&before={}", id_of(oldest));
    }

    let want = vec![(matching[0..3].to_vec(), true), (matching[3..6].to_vec(), true), (matching[6..7].to_vec(), false)];
    assert_eq!(pages, want, "pages of 3, newest first");
    let (exact, has_more) = search(&app, &alice, "heron", &format!("limit=3&before={}", matching[3]));
    assert_eq!((ids_of(&exact), has_more), (matching[4..7].to_vec(), false), "a last page that is exactly full");
    let (none, has_more) = search(&app, &alice, "heron", &format!("before={}", matching[6]));
    assert_eq!((none.len(), has_more), (0, false), "before the oldest match");
    for bad in ["0", "-5", "x", ""] {
        check_error(
            &get_search(&app, &alice, "heron", &format!("before={bad}")),
            400,
            "invalid_request",
            Some("before"),
        );
    }
}

#[test]
fn limit_defaults_to_20_and_must_be_1_to_100() {
    let app = spawn_app();
    let alice = app.create_user();
    let chat_id = group(&app, &alice, &[]);
    for n in 1..=25 {
        send(&app, &alice, chat_id, &format!("puffin {n}"));
    }

    let (default, has_more) = search(&app, &alice, "puffin", "");
    assert_eq!((default.len(), has_more), (20, true), "20 by default");
    let (all, has_more) = search(&app, &alice, "puffin", "limit=100");
    assert_eq!((all.len(), has_more), (25, false));
    let (one, has_more) = search(&app, &alice, "puffin", "limit=1");
    assert_eq!((one[0]["content"].clone(), has_more), (json!("puffin 25"), true));
    for bad in ["0", "101", "-1", "ten", ""] {
        check_error(
            &get_search(&app, &alice, "puffin", &format!("limit={bad}")),
            400,
            "invalid_request",
            Some("limit"),
        );
    }
}

#[test]
fn q_must_be_1_to_200_characters_with_a_letter_or_digit() {
    let app = spawn_app();
    let alice = app.create_user();
    let chat_id = group(&app, &alice, &[]);
    let long_word = "é".repeat(200);
    send(&app, &alice, chat_id, &long_word);

    // (path, why)
    let refused = [
        ("/api/search".to_string(), "no q"),
        ("/api/search?q=".to_string(), "an empty q"),
        (format!("/api/search?q={}", encoded(&"a".repeat(201))), "201 characters"),
        (format!("/api/search?q={}", encoded("?! ... -- @")), "punctuation and spaces only"),
        ("/api/search?q=cat%00".to_string(), "a NUL"),
    ];
    for (path, why) in refused {
        let resp = app.get(&path, Some(&alice.token));
        assert_eq!(resp.status, 400, "{why}: {}", resp.describe());
        check_error(&resp, 400, "invalid_request", Some("q"));
    }
    assert_eq!(found(&app, &alice, &long_word), [long_word.as_str()], "200 characters (400 bytes) are fine");
    assert_eq!(found(&app, &alice, "…É…"), [long_word.as_str()], "one letter among punctuation is enough");
}

#[test]
fn search_needs_a_session() {
    let app = spawn_app();
    check_error(&app.get("/api/search?q=cat", None), 401, "unauthorized", None);
    check_error(&app.get("/api/search?q=cat", Some("not-a-token")), 401, "unauthorized", None);
}

#[test]
fn a_match_older_than_the_newest_ten_thousand_messages_is_still_found() {
    // The server reads the newest 10,000 messages first and the word index only when they hold
    // too few matches (store::search_recent_messages): both halves must agree.
    let app = spawn_app();
    let (alice, bob) = (app.create_user(), app.create_user());
    let chat_id = group(&app, &alice, &[]);
    let old = send(&app, &alice, chat_id, "needle in the old days");
    let busy = group(&app, &bob, &[]);
    app.db()
        .execute(
            "WITH bump AS (UPDATE chats SET last_seq = last_seq + 10000, message_count = message_count + 10000
                           WHERE id = $1 RETURNING last_seq - 10000 AS seq0)
             INSERT INTO messages (chat_id, seq, ordinal, sender_id, content, words)
             SELECT $1, seq0 + n, seq0 + n, $2, 'needle elsewhere', array_to_tsvector('{needle,elsewhere}')
             FROM bump, generate_series(1, 10000) AS n",
            &[&busy, &bob.id],
        )
        .expect("insert 10,000 messages");
    let new = send(&app, &alice, chat_id, "needle of today");

    let (first, has_more) = search(&app, &alice, "needle", "limit=1");
    assert_eq!((ids_of(&first), has_more), (vec![id_of(&new)], true));
    let (second, has_more) = search(&app, &alice, "needle", &format!("limit=1&before={}", id_of(&new)));
    assert_eq!((ids_of(&second), has_more), (vec![id_of(&old)], false), "past 10,000 newer messages");
    let (both, has_more) = search(&app, &alice, "needle", "");
    assert_eq!((ids_of(&both), has_more), (vec![id_of(&new), id_of(&old)], false));
    let (bobs, has_more) = search(&app, &bob, "needle", "limit=100");
    assert_eq!((bobs.len(), has_more), (100, true), "bob's 10,000 are found, and not alice's");
    assert!(bobs.iter().all(|m| m["content"] == json!("needle elsewhere")), "only bob's chat");
}

#[test]
fn messages_stored_before_the_search_migration_are_found_after_it() {
    let app = spawn_app();
    let (alice, bob) = (app.create_user(), app.create_user());
    let chat_id = group(&app, &alice, &[&bob]);
    send(&app, &bob, chat_id, "Mail BOB@Example.com, please");
    let gone = send(&app, &bob, chat_id, "example of a deleted message");
    app.delete(&format!("/api/chats/{chat_id}/messages/{}", id_of(&gone)), Some(&bob.token))
        .assert_status(204, "delete");
    let db_url = app.db_url.clone();
    drop(app);

    // Roll back to just before sql/0009_search (and whatever came after it), then apply it again.
    let mut client = crate::support::pg::connect(&db_url);
    let stems = migrate::status(&mut client, &Source::Embedded).expect("migration status");
    let from_search = stems.iter().filter(|(stem, _)| stem.as_str() >= "0009_search").count();
    let rolled_back = migrate::down(&mut client, &Source::Embedded, from_search).expect("migrate down");
    assert_eq!(rolled_back.last().map(String::as_str), Some("0009_search"));
    let words_column =
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'messages' AND column_name = 'words'";
    assert_eq!(client.query_one(words_column, &[]).unwrap().get::<_, i64>(0), 0, "down drops the column");
    migrate::up(&mut client, &Source::Embedded).expect("migrate up");

    let app = spawn_app_on(&db_url, &[]);
    let alice = TestUser { token: app.login_token(&alice.username, &alice.password), ..alice };
    assert_eq!(found(&app, &alice, "example"), ["Mail BOB@Example.com, please"], "back-filled, deleted left out");
    assert_eq!(found(&app, &alice, "bob exam"), ["Mail BOB@Example.com, please"], "lower-cased, split, prefix");
    assert_eq!(found(&app, &alice, "deleted"), Vec::<String>::new());
}
