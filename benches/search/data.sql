-- Synthetic data for benches/search/run.sh: 1,000 users, 1,000 group chats of 50 members (each user in 50 chats),
-- 1,000,000 messages interleaved over the chats (message n goes to chat n mod 1000, as if all chats were busy at once).
-- Content: 6 to 15 words from a skewed vocabulary of 10,000 (w0 the commonest), plus `lunch` in 10% of the messages
-- and `zyzzyva` in 20 (10 of them in chat 20, one of user search1's chats); 1% of the messages are deleted.
-- `words` is filled as it is inserted, by the migration's back-fill rule (sql/0009_search.up.sql), which is exact for
-- this ASCII text.
\set ON_ERROR_STOP on
BEGIN;
INSERT INTO users (username, email, password_hash)
SELECT 'search' || n, 'search' || n || '@example.com', 'pbkdf2-sha256$1$AAAA$AAAA' FROM generate_series(1, 1000) AS n;
INSERT INTO chats (is_group, title, last_seq, message_count)
SELECT true, 'chat ' || n, 1000, 1000 FROM generate_series(1, 1000) AS n;
CREATE TEMP TABLE ids ON COMMIT DROP AS
SELECT (SELECT min(id) - 1 FROM users) AS user0, (SELECT min(id) - 1 FROM chats) AS chat0;
-- Chat c (1-based) has the users (c + 20k) mod 1000 + 1 for k = 0..49, so each user is in exactly 50 chats;
-- search1's are the chats 20, 40, ..., 1000.
INSERT INTO chat_members (chat_id, user_id, role)
SELECT ids.chat0 + c, ids.user0 + (c + 20 * k) % 1000 + 1, CASE WHEN k = 0 THEN 'owner' ELSE 'member' END
FROM ids, generate_series(1, 1000) AS c, generate_series(0, 49) AS k;
INSERT INTO messages (chat_id, seq, ordinal, sender_id, content, deleted, created_at, words)
SELECT ids.chat0 + chat, seq, seq, ids.user0 + (chat + 20 * (n % 50)) % 1000 + 1,
       CASE WHEN deleted THEN '' ELSE content END, deleted,
       now() - make_interval(secs => 1000000 - n),
       CASE WHEN deleted THEN ''::tsvector ELSE array_to_tsvector(ARRAY(
           SELECT DISTINCT w FROM regexp_split_to_table(translate(lower(content), 'ς', 'σ'), '[^[:alnum:]]+') AS w
           WHERE w <> '' AND octet_length(w) <= 2047
       )) END
FROM ids, generate_series(1, 1000000) AS n,
     LATERAL (SELECT (n - 1) % 1000 + 1 AS chat, (n - 1) / 1000 + 1 AS seq, n % 100 = 7 AS deleted) AS place,
     LATERAL (
        SELECT concat_ws(' ',
                   array_to_string(ARRAY(SELECT 'w' || floor(10000 * random() ^ 4)::int
                                         FROM generate_series(1, 6 + (n * 7) % 10) AS i WHERE i > 0 * n), ' '),
                   CASE WHEN random() < 0.1 THEN 'lunch' END,
                   CASE WHEN n % 100000 IN (20, 21) THEN 'zyzzyva' END) AS content
     ) AS text;
COMMIT;
VACUUM ANALYZE users, chats, chat_members, messages;
