-- Message search (contract section 9): each message's words, made by the server (src/words.rs), as a tsvector with a GIN index.
-- The server, not PostgreSQL's text-search parser, makes the words: the contract's word rule must hold whatever the
-- database's locale (ARCHITECTURE.md, "words.rs"). A send and an edit write `words` with array_to_tsvector, which takes
-- the lexemes verbatim; a delete empties it. Stop older servers before applying this: their sends would store no
-- words, and their edits would leave the old words, so a message would be found by words it no longer holds.
ALTER TABLE messages ADD COLUMN words tsvector NOT NULL DEFAULT ''::tsvector;

-- Back-fill. SQL cannot call Rust, so the messages stored before this migration get the closest SQL rule: runs of
-- [[:alnum:]] in lower(content), a final sigma made a sigma, without words over PostgreSQL's lexeme limit of 2047 bytes
-- (array_to_tsvector would store a longer one as a corrupt lexeme). Which characters are letters and how case folds
-- then follow the database's locale (under C, only ASCII), where the server's rule follows Unicode; docs/api.md says so.
UPDATE messages m SET words = array_to_tsvector(ARRAY(
    SELECT DISTINCT w FROM regexp_split_to_table(translate(lower(m.content), 'ς', 'σ'), '[^[:alnum:]]+') AS w
    WHERE w <> '' AND octet_length(w) <= 2047
))
WHERE NOT m.deleted;

-- Search reads the words through this index, intersected with the caller's chats (store::search_messages).
CREATE INDEX messages_words_idx ON messages USING gin (words);
