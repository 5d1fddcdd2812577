-- An exact unread count whose cost does not grow with the backlog: each message gets its
-- ordinal among its chat's messages and each chat counts its messages, so the messages after a
-- read marker are a subtraction; the reader's own and deleted ones among them, which the count
-- leaves out, are counted through the two indexes below.
-- Stop servers older than this migration before applying it: their sends do not set `ordinal`,
-- which this makes NOT NULL, so they fail until those servers are replaced.
ALTER TABLE chats ADD COLUMN message_count bigint NOT NULL DEFAULT 0 CHECK (message_count >= 0);
ALTER TABLE messages ADD COLUMN ordinal bigint CHECK (ordinal > 0);

UPDATE messages m SET ordinal = o.n
FROM (SELECT id, row_number() OVER (PARTITION BY chat_id ORDER BY seq) AS n FROM messages) o
WHERE o.id = m.id;
UPDATE chats c SET message_count = (SELECT count(*) FROM messages m WHERE m.chat_id = c.id);
ALTER TABLE messages ALTER COLUMN ordinal SET NOT NULL;

CREATE INDEX messages_sender_seq_idx ON messages (chat_id, sender_id, seq);
CREATE INDEX messages_deleted_seq_idx ON messages (chat_id, seq) WHERE deleted;
