-- Undoes 0001: drops the accounts table.
DROP TABLE users;
