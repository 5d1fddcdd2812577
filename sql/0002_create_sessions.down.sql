-- Undoes 0002: drops the sessions table, which logs everyone out.
DROP TABLE sessions;
