DROP INDEX audio_jobs_author_open_idx;
ALTER TABLE audio_jobs DROP COLUMN author_id;
DROP INDEX auth_tokens_expires_at_idx;
