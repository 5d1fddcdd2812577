-- The per-chat event log: every change to a chat, numbered 1, 2, 3, … in commit order. Clients catch up from it.
CREATE TABLE chat_events (
    chat_id    bigint NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    seq        bigint NOT NULL CHECK (seq > 0),
    type       text NOT NULL CHECK (type IN ('chat.created', 'chat.updated', 'member.added', 'member.removed',
                                             'message.created', 'message.updated', 'message.deleted')),
    actor_id   bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- Message events point at the message, so a read shows its current state (a deleted one as a tombstone);
    -- chat and member events keep their payload as it was.
    message_id bigint REFERENCES messages (id) ON DELETE CASCADE,
    payload    jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chat_id, seq),
    CHECK ((message_id IS NULL) <> (payload IS NULL))
);
