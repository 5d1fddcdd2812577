-- Undoes 0006: drops the real-time bookkeeping.
DROP TABLE presence;
DROP TABLE server_processes;
DROP TABLE ws_ticket_uses;
