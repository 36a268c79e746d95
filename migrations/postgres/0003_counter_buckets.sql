-- Windowed counters, summed per second: counting a window reads at most one row per second of
-- it (plus the raw hits of its first, partial second), however many hits it holds.
CREATE TABLE counter_buckets (
    key    TEXT   NOT NULL,
    second BIGINT NOT NULL,
    hits   BIGINT NOT NULL,
    PRIMARY KEY (key, second)
);
