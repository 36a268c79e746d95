-- Delivery of jobs: when a job is next due, who holds it, and every attempt made.
-- status: pending (never tried) → retrying (failed, will try again) → done | dead;
-- suppressed (throttled) and cancelled jobs are never run.
ALTER TABLE jobs ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN next_attempt_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
ALTER TABLE jobs ADD COLUMN lease_until BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN finished_at BIGINT;
CREATE INDEX jobs_due ON jobs (next_attempt_at) WHERE status IN ('pending', 'retrying');

CREATE TABLE job_attempts (
    job_id      BIGINT NOT NULL REFERENCES jobs (id),
    attempt     BIGINT NOT NULL,
    started_at  BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    -- success, transient or permanent
    outcome     TEXT   NOT NULL,
    -- HTTP status or SMTP reply code, when there was one
    code        BIGINT,
    detail      TEXT,
    PRIMARY KEY (job_id, attempt)
);
