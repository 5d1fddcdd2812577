-- Messages. A message's seq is the seq of its message.created event; a deleted one stays as a tombstone.
CREATE TABLE messages (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chat_id    bigint NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    seq        bigint NOT NULL CHECK (seq > 0),
    sender_id  bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    content    text NOT NULL CHECK (char_length(content) <= 4000),
    client_id  text CHECK (char_length(client_id) BETWEEN 1 AND 64),
    created_at timestamptz NOT NULL DEFAULT now(),
    edited_at  timestamptz,
    deleted    boolean NOT NULL DEFAULT false,
    CHECK (deleted = (content = ''))
);

-- History in both directions, and the unread count, walk this index.
CREATE UNIQUE INDEX messages_chat_seq_key ON messages (chat_id, seq);
-- A retried send with the same client_id finds the first one instead of storing a second.
CREATE UNIQUE INDEX messages_client_id_key ON messages (chat_id, sender_id, client_id) WHERE client_id IS NOT NULL;
