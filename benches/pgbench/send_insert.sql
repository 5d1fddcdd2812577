-- make bench, P1's baseline (benches/perf/send.rs): the one statement a send cannot avoid, the insert of
-- store::insert_message as the server runs it for a message without client_id or reply, prepared (pgbench -M prepared).
-- Client N sends into the chat titled :title_prefix N as its owner, as wrk's connection N does.
-- The server makes a message's words in Rust (src/words.rs); for this ASCII text the split below makes the same ones
-- (not sql/0009's [[:alnum:]], which pgbench would take for a variable).
\if :ready = 0
SELECT c.id AS chat_id, m.user_id AS sender_id, 1 AS ready
FROM chats c JOIN chat_members m ON m.chat_id = c.id AND m.role = 'owner'
WHERE c.title = :title_prefix || :client_id \gset
\endif
WITH member AS (
    SELECT 1 FROM chat_members WHERE chat_id = :chat_id AND user_id = :sender_id FOR KEY SHARE
), reply AS (
    SELECT NULL::bigint IS NULL OR EXISTS (SELECT 1 FROM messages WHERE chat_id = :chat_id AND seq = NULL) AS valid
), next AS (
    UPDATE chats SET last_seq = last_seq + 1, message_count = message_count + 1, last_activity_at = now()
    WHERE id = :chat_id AND EXISTS (SELECT 1 FROM member) AND (SELECT valid FROM reply)
    RETURNING id, last_seq, message_count
), message AS (
    INSERT INTO messages (chat_id, seq, ordinal, sender_id, content, client_id, reply_to_seq, words)
    SELECT id, last_seq, message_count, :sender_id, :content, NULL, NULL, array_to_tsvector(ARRAY(
        SELECT DISTINCT w FROM regexp_split_to_table(lower(:content), '[^a-z0-9]+') AS w WHERE w <> ''))
    FROM next
    RETURNING id, chat_id, seq, sender_id, content, client_id, created_at, edited_at, deleted, reply_to_seq, reactions
), event AS (
    INSERT INTO chat_events (chat_id, seq, type, actor_id, message_id, created_at)
    SELECT chat_id, seq, 'message.created', sender_id, id, created_at FROM message
)
SELECT EXISTS (SELECT 1 FROM member), (SELECT valid FROM reply), message.*
FROM (SELECT 1) AS one LEFT JOIN message ON true;
