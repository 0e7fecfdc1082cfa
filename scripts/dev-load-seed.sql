-- The users, posts and tokens `make dev-load` needs (service load-seed of
-- deploy/docker-compose.dev.yml): the benchmark's data set (scripts/bench/seed.sql, included
-- relative to this file) added once to the dev database, keeping whatever is in it.
-- Later runs only renew the load users' tokens (they expire after 30 days).
--   psql -v ON_ERROR_STOP=1 -f scripts/dev-load-seed.sql   (PGHOST, PGUSER, … as usual)

SELECT NOT EXISTS (SELECT 1 FROM users WHERE username = 'producer_1') AS seed_needed \gset
\if :seed_needed
  \echo 'dev-load-seed: adding the load users, posts, follows, likes, comments and tokens'
  \set keep_data 1
  \ir bench/seed.sql
\else
  \echo 'dev-load-seed: the load users are there; renewing their tokens'
  INSERT INTO auth_tokens (token_hash, user_id, created_at, expires_at)
  SELECT sha256(convert_to('bench-token-' || i, 'UTF8')), u.id, now(), now() + interval '30 days'
  FROM generate_series(1, 1000) AS i
  JOIN users u ON u.username = 'producer_' || i
  ON CONFLICT (token_hash) DO UPDATE SET expires_at = EXCLUDED.expires_at;
\endif
