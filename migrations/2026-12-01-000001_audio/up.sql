-- A post's audio (CONTRACT.md §2 and §6). The fields live on the post because every listing
-- shows them; they are null until processing knows them.
ALTER TABLE posts
    ADD COLUMN audio_status text NOT NULL DEFAULT 'none'
        CHECK (audio_status IN ('none', 'pending', 'processing', 'ready', 'failed')),
    -- The current upload: it names the files, and is the id of its job.
    ADD COLUMN audio_upload_id uuid,
    ADD COLUMN audio_duration_ms bigint,
    ADD COLUMN audio_sample_rate integer,
    ADD COLUMN audio_channels integer,
    ADD COLUMN audio_source_format text,
    ADD COLUMN audio_waveform real[],
    ADD COLUMN audio_error text,
    -- Size of the processed MP3.
    ADD COLUMN audio_bytes bigint;

-- The durable queue of audio jobs. A job is claimed with FOR UPDATE SKIP LOCKED and held by a
-- lease (`leased_until`) that its worker renews; an expired lease lets any worker take it again.
-- `attempts` counts claims: it is also the claim's token, so a worker whose job was taken over
-- cannot finish it.
CREATE TABLE audio_jobs (
    id           uuid PRIMARY KEY,
    post_id      uuid NOT NULL REFERENCES posts (id) ON DELETE CASCADE,
    state        text NOT NULL DEFAULT 'queued'
        CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    attempts     integer NOT NULL DEFAULT 0,
    leased_until timestamptz,
    -- The upload's media type and size.
    source_type  text NOT NULL,
    source_bytes bigint NOT NULL,
    -- The W3C trace context of the upload request's span, so the job continues its trace.
    traceparent  text,
    tracestate   text,
    last_error   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
-- What the claim scans: only jobs still to do, oldest first.
CREATE INDEX audio_jobs_open_idx ON audio_jobs (created_at) WHERE state IN ('queued', 'running');
CREATE INDEX audio_jobs_post_idx ON audio_jobs (post_id);
