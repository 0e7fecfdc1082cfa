-- Benchmark data for scripts/bench/overhead.sh and mixed.sh: 1,000 users, 20,000 posts, 20,000
-- follows, ~100,000 likes and 20,000 comments, with the counters the application keeps in step,
-- and a token per user: `bench-token-{i}` logs in `producer_{i}` (stored hashed, as the app does).
--
-- Run against a database the backend has already migrated (overhead.sh starts it once first):
--   psql -v ON_ERROR_STOP=1 postgres://postgres@127.0.0.1:5432/sidechain_bench -f scripts/bench/seed.sql
-- Deterministic (ids are md5s of a counter) and idempotent: it empties the tables first, unless
-- psql's variable keep_data is set (`-v keep_data=1`, scripts/dev-load-seed.sql: the dev stack's
-- database keeps what is in it, and rows already there are left as they are).

BEGIN;

-- CASCADE: tables added since (audio_jobs) reference posts and are emptied with them.
\if :{?keep_data}
\else
TRUNCATE users, auth_tokens, posts, follows, likes, comments CASCADE;
\endif

-- Nobody logs in during the benchmark; the hash only has to look like Argon2id's PHC string.
INSERT INTO users (id, username, email, password_hash, created_at)
SELECT md5('user' || i)::uuid,
       'producer_' || i,
       'producer_' || i || '@example.com',
       '$argon2id$v=19$m=19456,t=2,p=1$YmVuY2hzYWx0YmVuY2g$ZmFrZWhhc2hmb3JiZW5jaG1hcmtzb25seTAwMDAwMDA',
       now() - interval '400 days' + i * interval '5 minutes'
FROM generate_series(1, 1000) AS i
ON CONFLICT DO NOTHING;

-- Posts: 20 per user, spread over the last 60 days, with the fields a producer fills in.
INSERT INTO posts (id, author_id, title, description, bpm, musical_key, daw, genre, tags, created_at)
SELECT md5('post' || i)::uuid,
       md5('user' || (1 + i % 1000))::uuid,
       (ARRAY['Late night loop', 'Dusty keys', 'Sub pressure', 'Tape warble', 'Rainy 808s',
              'Granular pad', 'Swing study', 'Chopped soul'])[1 + i % 8] || ' #' || i,
       CASE WHEN i % 3 = 0 THEN NULL
            ELSE 'Made in one evening; stems on request. Mixed at -14 LUFS, sidechained to the kick.'
       END,
       60 + i % 120,
       (ARRAY['C minor', 'F# minor', 'A minor', 'D major', 'E minor', 'G major'])[1 + i % 6],
       (ARRAY['Ableton Live', 'FL Studio', 'Logic Pro', 'Bitwig', 'Reaper'])[1 + i % 5],
       (ARRAY['lo-fi', 'house', 'techno', 'hip-hop', 'ambient', 'drum and bass'])[1 + i % 6],
       ARRAY[(ARRAY['chill', 'keys', 'drums', 'vocal', 'bass', 'synth'])[1 + i % 6],
             (ARRAY['loop', 'sample', 'wip', 'final'])[1 + i % 4]],
       now() - (i * interval '259 seconds')
FROM generate_series(1, 20000) AS i
ON CONFLICT DO NOTHING;

-- Follows: each user follows the next 20 users (wrapping), so no one follows themselves.
INSERT INTO follows (follower_id, followee_id)
SELECT md5('user' || u)::uuid, md5('user' || (1 + (u + k - 1) % 1000))::uuid
FROM generate_series(1, 1000) AS u, generate_series(1, 20) AS k
ON CONFLICT DO NOTHING;

-- Likes: each user likes ~100 posts, chosen by a multiplicative hash (duplicates skipped).
INSERT INTO likes (post_id, user_id, created_at)
SELECT md5('post' || (1 + ((u * 7919 + k * 104729) % 20000)))::uuid,
       md5('user' || u)::uuid,
       now() - (k * interval '7 minutes')
FROM generate_series(1, 1000) AS u, generate_series(1, 100) AS k
ON CONFLICT DO NOTHING;

-- Comments: one per post, by a user other than the author.
INSERT INTO comments (id, post_id, author_id, body, created_at)
SELECT md5('comment' || i)::uuid,
       md5('post' || i)::uuid,
       md5('user' || (1 + (i + 500) % 1000))::uuid,
       'Love the groove on this one, what did you use for the hats?',
       now() - (i * interval '250 seconds')
FROM generate_series(1, 20000) AS i
ON CONFLICT DO NOTHING;

UPDATE posts p SET like_count = l.n
FROM (SELECT post_id, count(*) AS n FROM likes GROUP BY post_id) AS l
WHERE p.id = l.post_id;

UPDATE posts p SET comment_count = c.n
FROM (SELECT post_id, count(*) AS n FROM comments GROUP BY post_id) AS c
WHERE p.id = c.post_id;

-- Tokens: the app stores the SHA-256 of a token; these are for the load driver only.
INSERT INTO auth_tokens (token_hash, user_id, created_at, expires_at)
SELECT sha256(convert_to('bench-token-' || i, 'UTF8')), md5('user' || i)::uuid, now(), now() + interval '30 days'
FROM generate_series(1, 1000) AS i
ON CONFLICT (token_hash) DO UPDATE SET expires_at = EXCLUDED.expires_at;

COMMIT;

ANALYZE;
