-- Undoes 0004: drops messages.
DROP TABLE messages;
