-- Chats and their members. A chat row carries last_seq, the counter its event log takes numbers from under the row's lock.
CREATE TABLE chats (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    is_group         boolean NOT NULL,
    title            text CHECK (title IS NULL OR char_length(title) BETWEEN 1 AND 100),
    created_at       timestamptz NOT NULL DEFAULT now(),
    last_seq         bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    last_activity_at timestamptz NOT NULL DEFAULT now(),
    -- A direct chat's two members, lower id first: the unique pair makes creation race-free.
    direct_low       bigint REFERENCES users (id) ON DELETE CASCADE,
    direct_high      bigint REFERENCES users (id) ON DELETE CASCADE,
    CHECK (is_group = (direct_low IS NULL) AND (direct_low IS NULL) = (direct_high IS NULL)),
    CHECK (direct_low < direct_high),
    CHECK (NOT is_group OR title IS NOT NULL),
    UNIQUE (direct_low, direct_high)
);

CREATE TABLE chat_members (
    chat_id       bigint NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    user_id       bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role          text NOT NULL CHECK (role IN ('owner', 'member')),
    joined_at     timestamptz NOT NULL DEFAULT now(),
    last_read_seq bigint NOT NULL DEFAULT 0 CHECK (last_read_seq >= 0),
    PRIMARY KEY (chat_id, user_id)
);

-- A user's chats; the chat list then sorts them by chats.last_activity_at.
CREATE INDEX chat_members_user_id_idx ON chat_members (user_id, chat_id);
-- At most one owner per chat.
CREATE UNIQUE INDEX chat_members_one_owner ON chat_members (chat_id) WHERE role = 'owner';
