CREATE INDEX posts_tags_idx ON posts USING gin (tags);
CREATE INDEX posts_trending_idx ON posts (like_count DESC, created_at DESC, id DESC);
DROP INDEX users_username_prefix_idx;
DROP INDEX posts_search_idx;
ALTER TABLE posts DROP COLUMN search_vector;
DROP FUNCTION sidechain_tags_text(text[]);
