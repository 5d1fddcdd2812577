-- make bench, P2's baseline (benches/perf/history.rs): the three SELECTs GET /api/chats/{id}/messages runs
-- today for the newest page, prepared (pgbench -M prepared): the session (auth::require, store::find_session),
-- the membership (store::find_role) and the page, the columns of store::list_messages_as_member (before = i64::MAX,
-- limit 50 + 1).
-- Client N is the user :reader_prefix N with its own session, as wrk's connection N is.
\if :ready = 0
SELECT s.token_hash AS token_hash, u.id AS user_id, m.chat_id AS chat_id, 1 AS ready
FROM users u JOIN sessions s ON s.user_id = u.id JOIN chat_members m ON m.user_id = u.id
WHERE u.username = :reader_prefix || :client_id \gset
\endif
SELECT s.id, u.id, u.username, u.email, u.created_at
FROM sessions s JOIN users u ON u.id = s.user_id
WHERE s.token_hash = :token_hash AND s.expires_at > now();
SELECT role FROM chat_members WHERE chat_id = :chat_id AND user_id = :user_id;
SELECT id, chat_id, seq, sender_id, content, client_id, created_at, edited_at, deleted, reply_to_seq, reactions
FROM messages
WHERE chat_id = :chat_id AND seq < :before ORDER BY seq DESC LIMIT :page_rows;
