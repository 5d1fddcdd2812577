-- Undoes 0005: drops the event log.
DROP TABLE chat_events;
