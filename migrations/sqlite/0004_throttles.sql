-- Rule throttles: while a (rule, key) window is open, that rule's actions for the key are
-- recorded as suppressed instead of queued.
CREATE TABLE throttles (
    rule  TEXT   NOT NULL,
    key   TEXT   NOT NULL,
    until BIGINT NOT NULL,
    PRIMARY KEY (rule, key)
);

-- Why a job is in its status (e.g. which throttle suppressed it).
ALTER TABLE jobs ADD COLUMN note TEXT;
