DROP TABLE comments;
DROP TABLE likes;
DROP TABLE follows;
DROP TABLE posts;
DROP TABLE auth_tokens;
DROP TABLE users;
