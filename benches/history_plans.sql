-- Query plans of history paging and catch-up on a chat of one million messages (issue 3's check).
-- Run on a scratch database that `messaging migrate up` has prepared:
--   psql "$DATABASE_URL" -f benches/history_plans.sql
-- The three SELECTs below are the statements of store::list_messages_as_member and store::list_events,
-- with the parameters written in.
\set ON_ERROR_STOP on
BEGIN;
INSERT INTO users (username, email, password_hash)
SELECT 'plan' || n, 'plan' || n || '@example.com', 'pbkdf2-sha256$1$AAAA$AAAA' FROM generate_series(1, 2) AS n;
INSERT INTO chats (is_group, title, last_seq, message_count) VALUES (true, 'one million', 1000000, 1000000);
INSERT INTO chat_members (chat_id, user_id, role)
SELECT (SELECT max(id) FROM chats), id, CASE WHEN username = 'plan1' THEN 'owner' ELSE 'member' END
FROM users WHERE username IN ('plan1', 'plan2');
INSERT INTO messages (chat_id, seq, ordinal, sender_id, content)
SELECT (SELECT max(id) FROM chats), seq, seq, (SELECT min(id) FROM users WHERE username LIKE 'plan%'), 'message number ' || seq
FROM generate_series(1, 1000000) AS seq;
INSERT INTO chat_events (chat_id, seq, type, actor_id, message_id, created_at)
SELECT chat_id, seq, 'message.created', sender_id, id, created_at FROM messages WHERE chat_id = (SELECT max(id) FROM chats);
COMMIT;
ANALYZE users, chats, chat_members, messages, chat_events;

\echo 'newest 50'
EXPLAIN (ANALYZE, BUFFERS)
WITH member AS (SELECT 1 FROM chat_members WHERE chat_id = (SELECT max(id) FROM chats)
                AND user_id = (SELECT min(id) FROM users WHERE username LIKE 'plan%'))
SELECT EXISTS (SELECT 1 FROM member), page.*
FROM (SELECT 1) AS one
LEFT JOIN LATERAL (SELECT id, chat_id, seq, sender_id, content, client_id, created_at, edited_at, deleted, reply_to_seq, reactions
                   FROM messages WHERE chat_id = (SELECT max(id) FROM chats) AND seq < 9223372036854775807
                   AND EXISTS (SELECT 1 FROM member) ORDER BY seq DESC LIMIT 51) AS page ON true
ORDER BY page.seq DESC;

\echo 'a before= page in the middle'
EXPLAIN (ANALYZE, BUFFERS)
WITH member AS (SELECT 1 FROM chat_members WHERE chat_id = (SELECT max(id) FROM chats)
                AND user_id = (SELECT min(id) FROM users WHERE username LIKE 'plan%'))
SELECT EXISTS (SELECT 1 FROM member), page.*
FROM (SELECT 1) AS one
LEFT JOIN LATERAL (SELECT id, chat_id, seq, sender_id, content, client_id, created_at, edited_at, deleted, reply_to_seq, reactions
                   FROM messages WHERE chat_id = (SELECT max(id) FROM chats) AND seq < 500000
                   AND EXISTS (SELECT 1 FROM member) ORDER BY seq DESC LIMIT 51) AS page ON true
ORDER BY page.seq DESC;

\echo 'events after= in the middle'
EXPLAIN (ANALYZE, BUFFERS)
SELECT e.chat_id, e.seq, e.type, e.created_at, e.actor_id, e.payload, m.*
FROM chat_events e
LEFT JOIN LATERAL (SELECT id, chat_id, seq, sender_id, content, client_id, created_at, edited_at, deleted, reply_to_seq, reactions
                   FROM messages WHERE id = e.message_id) m ON true
WHERE e.chat_id = (SELECT max(id) FROM chats) AND e.seq > 500000 ORDER BY e.seq LIMIT 101;
