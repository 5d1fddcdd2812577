-- Undoes 0009: no message search.
DROP INDEX messages_words_idx;
ALTER TABLE messages DROP COLUMN words;
