-- Real-time bookkeeping shared by every server process: used WebSocket tickets, live processes, who is connected where.
CREATE TABLE ws_ticket_uses (
    nonce      text PRIMARY KEY CHECK (char_length(nonce) <= 64),
    expires_at timestamptz NOT NULL
);

CREATE INDEX ws_ticket_uses_expires_at_idx ON ws_ticket_uses (expires_at);

-- Each server process beats here every few seconds; a process whose heartbeat is stale is dead, and so is its presence.
CREATE TABLE server_processes (
    id           bigint PRIMARY KEY,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- A row while a user has at least one WebSocket open on a process.
CREATE TABLE presence (
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    process_id bigint NOT NULL REFERENCES server_processes (id) ON DELETE CASCADE,
    PRIMARY KEY (user_id, process_id)
);
