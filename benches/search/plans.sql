-- Query plans of message search (BENCHMARKS.md, "Search plans"), run by benches/search/run.sh on data.sql's data:
-- user search1, a member of 50 of the 1,000 chats, searches for `lunch` (in 10% of the messages) and for `zyzzyva`
-- (in 20 messages, 10 of them in search1's chat 20), as the first page of 20 (the server asks for limit + 1 = 21).
-- `recent` and `indexed` are store::SEARCH_RECENT_MESSAGES and store::SEARCH_MESSAGES, the text the server prepares
-- (a unit test in src/search.rs checks it); the server runs `recent`, then `indexed` when `recent` found 20 or fewer.
-- The server prepares each statement once per connection, and after five runs PostgreSQL may keep a generic plan
-- for it, so each case is explained on its first runs (custom plans), again after six more runs of both words,
-- and with the generic plan forced.
\set ON_ERROR_STOP on
\pset pager off
SELECT id AS uid FROM users WHERE username = 'search1' \gset

PREPARE recent(bigint, bigint, text, bigint, bigint) AS
SELECT id, chat_id, seq, sender_id, content, client_id, created_at, edited_at, deleted, reply_to_seq, reactions
FROM (SELECT * FROM messages WHERE id < $4 ORDER BY id DESC LIMIT 10000) AS recent
WHERE words @@ $3::text::tsquery AND NOT deleted
  AND chat_id = ANY (ARRAY(SELECT chat_id FROM chat_members WHERE user_id = $1 AND ($2::bigint IS NULL OR chat_id = $2)))
ORDER BY id DESC LIMIT $5;

PREPARE indexed(bigint, bigint, text, bigint, bigint) AS
WITH found AS MATERIALIZED (SELECT id, chat_id, seq, sender_id, content, client_id, created_at, edited_at, deleted,
                                   reply_to_seq, reactions
    FROM messages
    WHERE id < $4 AND words @@ $3::text::tsquery AND NOT deleted
      AND chat_id = ANY (ARRAY(SELECT chat_id FROM chat_members WHERE user_id = $1 AND ($2::bigint IS NULL OR chat_id = $2))))
SELECT * FROM found ORDER BY id DESC LIMIT $5;

\echo '== 1. First runs (custom plans)'
\echo '-- lunch, recent: 21 found, so the server answers with these'
EXPLAIN (ANALYZE, BUFFERS) EXECUTE recent(:uid, NULL, '''lunch'':*', 9223372036854775807, 21);
\echo '-- zyzzyva, recent: 10 found, too few'
EXPLAIN (ANALYZE, BUFFERS) EXECUTE recent(:uid, NULL, '''zyzzyva'':*', 9223372036854775807, 21);
\echo '-- zyzzyva, indexed: the answer'
EXPLAIN (ANALYZE, BUFFERS) EXECUTE indexed(:uid, NULL, '''zyzzyva'':*', 9223372036854775807, 21);

-- Six more runs of each statement with both words: PostgreSQL now picks generic or custom plans for good.
EXECUTE recent(:uid, NULL, '''lunch'':*', 9223372036854775807, 21) \g /dev/null
EXECUTE recent(:uid, NULL, '''zyzzyva'':*', 9223372036854775807, 21) \g /dev/null
EXECUTE recent(:uid, NULL, '''lunch'':*', 9223372036854775807, 21) \g /dev/null
EXECUTE recent(:uid, NULL, '''zyzzyva'':*', 9223372036854775807, 21) \g /dev/null
EXECUTE recent(:uid, NULL, '''lunch'':*', 9223372036854775807, 21) \g /dev/null
EXECUTE recent(:uid, NULL, '''zyzzyva'':*', 9223372036854775807, 21) \g /dev/null
EXECUTE indexed(:uid, NULL, '''lunch'':*', 9223372036854775807, 21) \g /dev/null
EXECUTE indexed(:uid, NULL, '''zyzzyva'':*', 9223372036854775807, 21) \g /dev/null
EXECUTE indexed(:uid, NULL, '''lunch'':*', 9223372036854775807, 21) \g /dev/null
EXECUTE indexed(:uid, NULL, '''zyzzyva'':*', 9223372036854775807, 21) \g /dev/null
EXECUTE indexed(:uid, NULL, '''lunch'':*', 9223372036854775807, 21) \g /dev/null
EXECUTE indexed(:uid, NULL, '''zyzzyva'':*', 9223372036854775807, 21) \g /dev/null

\echo '== 2. After six more runs of each (what the plan cache chose)'
\echo '-- lunch, recent'
EXPLAIN (ANALYZE, BUFFERS) EXECUTE recent(:uid, NULL, '''lunch'':*', 9223372036854775807, 21);
\echo '-- zyzzyva, recent'
EXPLAIN (ANALYZE, BUFFERS) EXECUTE recent(:uid, NULL, '''zyzzyva'':*', 9223372036854775807, 21);
\echo '-- zyzzyva, indexed'
EXPLAIN (ANALYZE, BUFFERS) EXECUTE indexed(:uid, NULL, '''zyzzyva'':*', 9223372036854775807, 21);

\echo '== 3. Generic plans, forced'
SET plan_cache_mode = force_generic_plan;
\echo '-- lunch, recent'
EXPLAIN (ANALYZE, BUFFERS) EXECUTE recent(:uid, NULL, '''lunch'':*', 9223372036854775807, 21);
\echo '-- zyzzyva, recent'
EXPLAIN (ANALYZE, BUFFERS) EXECUTE recent(:uid, NULL, '''zyzzyva'':*', 9223372036854775807, 21);
\echo '-- zyzzyva, indexed'
EXPLAIN (ANALYZE, BUFFERS) EXECUTE indexed(:uid, NULL, '''zyzzyva'':*', 9223372036854775807, 21);
\echo '-- lunch, indexed (the server does not run it: recent answers; for comparison)'
EXPLAIN (ANALYZE, BUFFERS) EXECUTE indexed(:uid, NULL, '''lunch'':*', 9223372036854775807, 21);
RESET plan_cache_mode;

\echo '== 4. Not adopted: one statement, ORDER BY id DESC LIMIT over the index and the membership'
PREPARE single(bigint, bigint, text, bigint, bigint) AS
SELECT id, chat_id, seq, sender_id, content, client_id, created_at, edited_at, deleted, reply_to_seq, reactions
FROM messages
WHERE id < $4 AND words @@ $3::text::tsquery AND NOT deleted
  AND chat_id = ANY (ARRAY(SELECT chat_id FROM chat_members WHERE user_id = $1 AND ($2::bigint IS NULL OR chat_id = $2)))
ORDER BY id DESC LIMIT $5;
\echo '-- lunch, first run (a custom plan)'
EXPLAIN (ANALYZE, BUFFERS) EXECUTE single(:uid, NULL, '''lunch'':*', 9223372036854775807, 21);
\echo '-- zyzzyva, second run (a custom plan)'
EXPLAIN (ANALYZE, BUFFERS) EXECUTE single(:uid, NULL, '''zyzzyva'':*', 9223372036854775807, 21);
EXECUTE single(:uid, NULL, '''lunch'':*', 9223372036854775807, 21) \g /dev/null
EXECUTE single(:uid, NULL, '''lunch'':*', 9223372036854775807, 21) \g /dev/null
EXECUTE single(:uid, NULL, '''lunch'':*', 9223372036854775807, 21) \g /dev/null
\echo '-- lunch, sixth run: the generic plan, estimated cheaper than the five custom ones, is kept from now on'
EXPLAIN (ANALYZE, BUFFERS) EXECUTE single(:uid, NULL, '''lunch'':*', 9223372036854775807, 21);

\echo '== 5. The worst case known: a last word that prefixes most words (w1: w1, w10, w100, ... in 89% of the messages)'
\echo '-- recent answers at once; indexed, which the server runs only when recent finds 20 or fewer, reads every match'
EXPLAIN (ANALYZE, BUFFERS) EXECUTE recent(:uid, NULL, '''w1'':*', 9223372036854775807, 21);
EXPLAIN (ANALYZE, BUFFERS) EXECUTE indexed(:uid, NULL, '''w1'':*', 9223372036854775807, 21);
