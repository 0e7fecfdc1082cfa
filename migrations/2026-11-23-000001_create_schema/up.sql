-- Trigram indexes make the case-insensitive substring search of titles and usernames cheap.
-- pg_trgm is a trusted extension: the database owner may create it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE users (
    id            uuid PRIMARY KEY,
    username      text NOT NULL,
    email         text NOT NULL,
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
-- Usernames keep the case they were registered with but are unique without regard to it.
CREATE UNIQUE INDEX users_username_lower_key ON users (lower(username));
-- Emails are stored lower-cased by the application.
CREATE UNIQUE INDEX users_email_key ON users (email);
CREATE INDEX users_username_trgm_idx ON users USING gin (lower(username) gin_trgm_ops);

-- Bearer tokens: only a SHA-256 of the token is stored.
CREATE TABLE auth_tokens (
    token_hash bytea PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX auth_tokens_user_id_idx ON auth_tokens (user_id);

CREATE TABLE posts (
    id            uuid PRIMARY KEY,
    author_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title         text NOT NULL CHECK (char_length(title) BETWEEN 1 AND 200),
    description   text,
    bpm           integer CHECK (bpm BETWEEN 1 AND 999),
    musical_key   text,
    daw           text,
    genre         text,
    tags          text[] NOT NULL DEFAULT '{}',
    -- Counters kept in the same transaction as the like/comment rows, so a post read or a
    -- trending page never counts rows.
    like_count    bigint NOT NULL DEFAULT 0 CHECK (like_count >= 0),
    comment_count bigint NOT NULL DEFAULT 0 CHECK (comment_count >= 0),
    created_at    timestamptz NOT NULL DEFAULT now()
);
-- A user's posts and the timeline, newest first, keyset-paginated on (created_at, id).
CREATE INDEX posts_author_created_idx ON posts (author_id, created_at DESC, id DESC);
-- The global feed, and the recent window of trending.
CREATE INDEX posts_created_idx ON posts (created_at DESC, id DESC);
-- Trending: most liked first within the window.
CREATE INDEX posts_trending_idx ON posts (like_count DESC, created_at DESC, id DESC);
CREATE INDEX posts_title_trgm_idx ON posts USING gin (title gin_trgm_ops);
CREATE INDEX posts_tags_idx ON posts USING gin (tags);

CREATE TABLE follows (
    follower_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    followee_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (follower_id, followee_id),
    CHECK (follower_id <> followee_id)
);
-- Follower counts.
CREATE INDEX follows_followee_idx ON follows (followee_id);

CREATE TABLE likes (
    post_id    uuid NOT NULL REFERENCES posts (id) ON DELETE CASCADE,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (post_id, user_id)
);
CREATE INDEX likes_user_idx ON likes (user_id, created_at DESC);

CREATE TABLE comments (
    id         uuid PRIMARY KEY,
    post_id    uuid NOT NULL REFERENCES posts (id) ON DELETE CASCADE,
    author_id  uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    body       text NOT NULL CHECK (char_length(body) BETWEEN 1 AND 2000),
    created_at timestamptz NOT NULL DEFAULT now()
);
-- A post's comments, oldest first, keyset-paginated on (created_at, id).
CREATE INDEX comments_post_created_idx ON comments (post_id, created_at, id);
CREATE INDEX comments_author_idx ON comments (author_id);
