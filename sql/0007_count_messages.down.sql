-- Undoes 0007: the unread count walks the messages again.
DROP INDEX messages_deleted_seq_idx;
DROP INDEX messages_sender_seq_idx;
ALTER TABLE messages DROP COLUMN ordinal;
ALTER TABLE chats DROP COLUMN message_count;
