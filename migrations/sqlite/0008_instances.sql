-- Running instances (one row per process, refreshed while it runs): which rule set each one
-- evaluates with, so disagreement between instances shows.
CREATE TABLE instances (
    id              TEXT   PRIMARY KEY,
    started_at      BIGINT NOT NULL,
    seen_at         BIGINT NOT NULL,
    ruleset_version TEXT   NOT NULL,
    rules_dir       TEXT   NOT NULL,
    listen          TEXT   NOT NULL,
    version         TEXT   NOT NULL
);
