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

-- One row per open WebSocket: a user is online while a row of a live process names it.
CREATE TABLE presence (
    process_id bigint NOT NULL REFERENCES server_processes (id) ON DELETE CASCADE,
    conn_id    bigint NOT NULL,
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    PRIMARY KEY (process_id, conn_id)
);

CREATE INDEX presence_user_id_idx ON presence (user_id);
