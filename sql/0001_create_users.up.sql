-- Accounts. Usernames and emails are unique without regard to case; only a salted slow hash of the password is kept.
CREATE TABLE users (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username      text NOT NULL CHECK (char_length(username) BETWEEN 3 AND 32 AND username ~ '^[A-Za-z0-9_.-]+$'),
    email         text NOT NULL CHECK (char_length(email) <= 254 AND email LIKE '%_@_%'),
    password_hash text NOT NULL CHECK (password_hash LIKE 'pbkdf2-sha256$%'),
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- text_pattern_ops lets the same index serve equality and the prefix search of GET /api/users?q=.
CREATE UNIQUE INDEX users_username_key ON users (lower(username) text_pattern_ops);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));
