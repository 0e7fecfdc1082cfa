-- Hostile-client limits (CONTRACT.md §1 "Limits").

-- The periodic purge of expired tokens reads them by expiry.
CREATE INDEX auth_tokens_expires_at_idx ON auth_tokens (expires_at);

-- The author of each job: the per-user limit of unfinished jobs (AUDIO_PENDING_PER_USER) and
-- the fair claim (the oldest job of the author with the fewest running jobs) read open jobs by
-- author.
ALTER TABLE audio_jobs ADD COLUMN author_id uuid REFERENCES users (id) ON DELETE CASCADE;
UPDATE audio_jobs j SET author_id = p.author_id FROM posts p WHERE p.id = j.post_id;
ALTER TABLE audio_jobs ALTER COLUMN author_id SET NOT NULL;
CREATE INDEX audio_jobs_author_open_idx ON audio_jobs (author_id, created_at)
    WHERE state IN ('queued', 'running');
