-- Replies and reactions (contract section 9).
-- A reply names the seq of a message in the same chat; the foreign key keeps it one.
ALTER TABLE messages ADD COLUMN reply_to_seq bigint CHECK (reply_to_seq > 0);
ALTER TABLE messages ADD CONSTRAINT messages_reply_to_fkey FOREIGN KEY (chat_id, reply_to_seq)
    REFERENCES messages (chat_id, seq) ON DELETE SET NULL (reply_to_seq);

-- A message's reactions live with it, as the list the API shows ([{emoji, user_ids}], by first
-- use), so every read of a message has them without a join; the server changes them only under
-- the message's row lock (src/reactions.rs has the rules). A deleted message keeps none.
-- `json`, not `jsonb`: the server writes the text and reads it back into its replies as it is,
-- and PostgreSQL sends json text without converting it (BENCHMARKS.md, P11).
ALTER TABLE messages ADD COLUMN reactions json NOT NULL DEFAULT '[]'
    CHECK (json_typeof(reactions) = 'array' AND json_array_length(reactions) <= 20);
ALTER TABLE messages ADD CONSTRAINT messages_deleted_reactions_check CHECK (NOT deleted OR reactions::text = '[]');

-- Each reaction change is an event in the chat's log, its payload {message_id, emoji, user_id}.
ALTER TABLE chat_events DROP CONSTRAINT chat_events_type_check;
ALTER TABLE chat_events ADD CONSTRAINT chat_events_type_check
    CHECK (type IN ('chat.created', 'chat.updated', 'member.added', 'member.removed',
                    'message.created', 'message.updated', 'message.deleted',
                    'reaction.added', 'reaction.removed'));
