-- Exact windowed counters: each hit gets its ordinal atomically (numbered in the process that owns
-- the file, stored with the next batch it finishes) and keeps it.
--
-- seq:       the hit's place among its key's hits, in the order they were recorded (1, 2, …).
-- window_ms: the window of the `count_in_window` call that recorded it;
-- ordinal:   the count that call returned (the key's hits within the window, this one included).
-- Re-evaluating the event (after a crash, a replay, a what-if) finds its hit and answers the same
-- count: `ordinal` for the same window, or the hits within another window up to its `seq`.
ALTER TABLE counter_hits ADD COLUMN seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE counter_hits ADD COLUMN window_ms BIGINT;
ALTER TABLE counter_hits ADD COLUMN ordinal BIGINT;
-- Hits recorded before: numbered in time order (their ordinals were not kept).
UPDATE counter_hits SET seq = n.seq
FROM (SELECT key, event_id, ROW_NUMBER() OVER (PARTITION BY key ORDER BY at, event_id) AS seq
      FROM counter_hits) AS n
WHERE counter_hits.key = n.key AND counter_hits.event_id = n.event_id;
-- Two hits of one key never share a place.
CREATE UNIQUE INDEX counter_hits_key_seq ON counter_hits (key, seq);

-- A hit is added to its second's bucket by the statement that stores it (the second is the floor
-- of at / 1000, negative times included); a hit stored before is not inserted, so not added.
CREATE TRIGGER counter_hits_to_buckets AFTER INSERT ON counter_hits BEGIN
    INSERT INTO counter_buckets (key, second, hits)
    VALUES (NEW.key, (NEW.at - ((NEW.at % 1000) + 1000) % 1000) / 1000, 1)
    ON CONFLICT (key, second) DO UPDATE SET hits = hits + 1;
END;
