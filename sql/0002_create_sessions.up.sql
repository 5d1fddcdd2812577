-- Bearer sessions. Only the SHA-256 of a token is stored, so a copy of this table cannot be used to log in.
CREATE TABLE sessions (
    id         bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    token_hash bytea PRIMARY KEY CHECK (octet_length(token_hash) = 32),
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

CREATE INDEX sessions_user_id_idx ON sessions (user_id);
