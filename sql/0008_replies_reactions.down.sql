-- Undoes 0008: forgets replies and reactions. Servers older than 0008 cannot read reaction events,
-- so they are deleted, which leaves holes in those chats' logs where they were: a client catching
-- up across a hole sees the seq jump. Roll back only when the reactions may go.
DELETE FROM chat_events WHERE type IN ('reaction.added', 'reaction.removed');
ALTER TABLE chat_events DROP CONSTRAINT chat_events_type_check;
ALTER TABLE chat_events ADD CONSTRAINT chat_events_type_check
    CHECK (type IN ('chat.created', 'chat.updated', 'member.added', 'member.removed',
                    'message.created', 'message.updated', 'message.deleted'));
ALTER TABLE messages DROP CONSTRAINT messages_deleted_reactions_check;
ALTER TABLE messages DROP COLUMN reactions;
ALTER TABLE messages DROP COLUMN reply_to_seq;
