-- make bench, P1's baseline (benches/perf/send.rs): the one statement a send cannot avoid, the insert of
-- store::insert_message as the server runs it for a message without client_id, prepared (pgbench -M prepared).
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
), next AS (
    UPDATE chats SET last_seq = last_seq + 1, message_count = message_count + 1, last_activity_at = now()
    WHERE id = :chat_id AND EXISTS (SELECT 1 FROM member)
    RETURNING id, last_seq, message_count
), message AS (
    INSERT INTO messages (chat_id, seq, ordinal, sender_id, content, client_id, words)
    SELECT id, last_seq, message_count, :sender_id, :content, NULL, array_to_tsvector(ARRAY(
        SELECT DISTINCT w FROM regexp_split_to_table(lower(:content), '[^a-z0-9]+') AS w WHERE w <> ''))
    FROM next
    RETURNING id, chat_id, seq, sender_id, content, client_id, created_at, edited_at, deleted
), event AS (
    INSERT INTO chat_events (chat_id, seq, type, actor_id, message_id, created_at)
    SELECT chat_id, seq, 'message.created', sender_id, id, created_at FROM message
)
SELECT id, chat_id, seq, sender_id, content, client_id, created_at, edited_at, deleted FROM message;
