-- Undoes 0003: drops chats and their members.
DROP TABLE chat_members;
DROP TABLE chats;
