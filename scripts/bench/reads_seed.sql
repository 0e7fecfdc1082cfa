-- Benchmark data for scripts/bench/reads.sh: :posts posts (psql -v posts=N) by :posts / 10
-- users (at least 2,500), over two years, shaped against the reads of issue 24:
--   - titles of three generated words (with a few hundred words in all, so common words match
--     about a tenth of the posts), half with a description, two tags each; the word
--     `zephyrine` in one post of 5,000 (a rare term);
--   - old posts hold the likes: the oldest tenth has 100 to 10,099 likes, the rest 0 to 9
--     (counters only: the reads never count like rows);
--   - `quiet` posted 5 times, two years ago; `reader_quiet` follows only them, `reader_20` 20
--     active accounts and `reader_2000` 2,000 of them (token `bench-token-{reader}`).
-- Run against a database the backend has already migrated. Deterministic; empties the tables.

BEGIN;
TRUNCATE users, auth_tokens, posts, follows, likes, comments CASCADE;

INSERT INTO users (id, username, email, password_hash)
SELECT md5('user' || i)::uuid,
       (ARRAY['beat', 'lofi', 'dj', 'synth', 'tape', 'keys', 'sub', 'loop', 'mpc', 'vinyl'])[1 + i % 10]
         || '_' || substr(md5('name' || i), 1, 8),
       'user' || i || '@example.com',
       '$argon2id$v=19$m=19456,t=2,p=1$YmVuY2hzYWx0YmVuY2g$ZmFrZWhhc2hmb3JiZW5jaG1hcmtzb25seTAwMDAwMDA'
FROM generate_series(1, greatest(:posts / 10, 2500)) AS i;
INSERT INTO users (id, username, email, password_hash)
VALUES (md5('quiet')::uuid, 'quiet', 'quiet@example.com', 'x'),
       (md5('reader_quiet')::uuid, 'reader_quiet', 'reader_quiet@example.com', 'x'),
       (md5('reader_20')::uuid, 'reader_20', 'reader_20@example.com', 'x'),
       (md5('reader_2000')::uuid, 'reader_2000', 'reader_2000@example.com', 'x');

-- Pseudo-random picks from a multiplicative hash of the post number, so that words do not
-- repeat in lockstep.
INSERT INTO posts (id, author_id, title, description, bpm, musical_key, daw, genre, tags,
                   like_count, created_at)
SELECT md5('post' || i)::uuid,
       md5('user' || (1 + (h % greatest(:posts / 10, 2500))))::uuid,
       (ARRAY['late', 'dusty', 'sub', 'tape', 'rainy', 'granular', 'swing', 'chopped', 'warm',
              'broken', 'velvet', 'midnight', 'hazy', 'golden', 'frozen', 'neon', 'lazy', 'deep',
              'bright', 'heavy'])[1 + h % 20] || ' '
       || (ARRAY['night', 'keys', 'pressure', 'warble', 'pad', 'study', 'soul', 'groove', 'bells',
                 'drums', 'chords', 'melody', 'bassline', 'vocal', 'strings', 'horns', 'guitar',
                 'piano', 'organ', 'choir', 'break', 'rhodes', 'flute', 'sample', 'texture'])[1 + (h / 20) % 25] || ' '
       || (ARRAY['loop', 'sketch', 'demo', 'jam', 'take', 'idea', 'bounce', 'flip', 'edit', 'mix'])[1 + (h / 500) % 10]
       || CASE WHEN i % 5000 = 0 THEN ' zephyrine' ELSE '' END,
       CASE WHEN h % 2 = 0 THEN
         (ARRAY['Made in one evening with a tape saturator, stems on request.',
                'Chopped from an old record, resampled twice, mixed quiet on purpose.',
                'First take of a groove I keep coming back to; feedback welcome.',
                'Everything through one delay and a lot of patience.'])[1 + (h / 7) % 4]
       END,
       60 + h % 120,
       (ARRAY['C minor', 'F# minor', 'A minor', 'D major', 'E minor', 'G major'])[1 + h % 6],
       (ARRAY['Ableton Live', 'FL Studio', 'Logic Pro', 'Bitwig', 'Reaper'])[1 + h % 5],
       (ARRAY['lo-fi', 'house', 'techno', 'hip-hop', 'ambient', 'drum and bass'])[1 + h % 6],
       ARRAY[(ARRAY['chill', 'keys', 'drums', 'vocal', 'bass', 'synth', 'dusty', 'boom-bap'])[1 + (h / 3) % 8],
             (ARRAY['loop', 'sample', 'wip', 'final', 'stems', 'collab'])[1 + (h / 11) % 6]],
       CASE WHEN i <= :posts / 10 THEN 100 + h % 10000 ELSE h % 10 END,
       now() - interval '730 days' + i * (interval '730 days' / :posts)
FROM (SELECT i, (i::bigint * 2654435761) % 4294967296 AS h FROM generate_series(1, :posts) AS i) AS s;

INSERT INTO posts (id, author_id, title, created_at)
SELECT md5('quiet post' || i)::uuid, md5('quiet')::uuid, 'quiet old idea ' || i,
       now() - interval '740 days' + i * interval '1 day'
FROM generate_series(1, 5) AS i;

INSERT INTO follows (follower_id, followee_id)
VALUES (md5('reader_quiet')::uuid, md5('quiet')::uuid);
INSERT INTO follows (follower_id, followee_id)
SELECT md5('reader_20')::uuid, md5('user' || (1 + i * 37 % greatest(:posts / 10, 2500)))::uuid
FROM generate_series(1, 20) AS i;
INSERT INTO follows (follower_id, followee_id)
SELECT md5('reader_2000')::uuid, md5('user' || (1 + (i * 7919) % greatest(:posts / 10, 2500)))::uuid
FROM generate_series(1, 2000) AS i
ON CONFLICT DO NOTHING;

INSERT INTO auth_tokens (token_hash, user_id, created_at, expires_at)
SELECT sha256(convert_to('bench-token-' || r, 'UTF8')), md5(r)::uuid, now(), now() + interval '30 days'
FROM unnest(ARRAY['reader_quiet', 'reader_20', 'reader_2000']) AS r;
COMMIT;

-- As autovacuum would, soon: statistics, the visibility map, and the GIN pending lists moved
-- into their indexes.
VACUUM ANALYZE;
