-- Exact windowed counters: each hit gets its ordinal atomically, serialized per key, and keeps it.
--
-- seq:       the hit's place among its key's hits, in the order they were recorded (1, 2, …).
-- window_ms: the window of the `count_in_window` call that recorded it;
-- ordinal:   the count that call returned (the key's hits within the window, this one included).
-- Re-evaluating the event (after a crash, a replay, a what-if) finds its hit and answers the same
-- count: `ordinal` for the same window, or the hits within another window up to its `seq`.
ALTER TABLE counter_hits ADD COLUMN seq BIGINT;
ALTER TABLE counter_hits ADD COLUMN window_ms BIGINT;
ALTER TABLE counter_hits ADD COLUMN ordinal BIGINT;
-- Hits recorded before: numbered in time order (their ordinals were not kept).
UPDATE counter_hits h SET seq = n.seq
FROM (SELECT key, event_id, ROW_NUMBER() OVER (PARTITION BY key ORDER BY at, event_id) AS seq
      FROM counter_hits) n
WHERE h.key = n.key AND h.event_id = n.event_id;
ALTER TABLE counter_hits ALTER COLUMN seq SET NOT NULL;
-- Two hits of one key never share a place.
CREATE UNIQUE INDEX counter_hits_key_seq ON counter_hits (key, seq);

-- Records the hit of event p_event on counter p_key at p_at (unix ms) and returns its ordinal in
-- the window [p_since, …) of p_window_ms; p_first is the second p_since falls in, p_second the
-- second of p_at (the per-second buckets). Called once per hit in its own transaction (one round
-- trip), under a transaction-scoped advisory lock on the key's hash: hits of one key are numbered
-- one at a time, each seeing every hit committed before it; different keys do not wait on each
-- other (unless their hashes collide, which only makes them wait). A hit the event already has
-- is not recorded again: the count it had is returned.
--
-- The commit does not wait for the WAL flush (synchronous_commit off, for this transaction
-- only). That is safe: the evaluation that uses the ordinal is committed later, durably, and a
-- durable commit flushes the WAL up to itself, so a crash can only lose hits whose evaluations
-- were lost too (those events are evaluated again and numbered afresh), never a hit an
-- evaluation or an earlier ordinal relied on.
CREATE FUNCTION switchboard_counter_hit(
    p_key TEXT, p_event BIGINT, p_at BIGINT, p_window_ms BIGINT, p_since BIGINT,
    p_first BIGINT, p_second BIGINT
) RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    v_seq     BIGINT;
    v_window  BIGINT;
    v_ordinal BIGINT;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM pg_advisory_xact_lock(hashtext('switchboard.counter_hits'), hashtext(p_key));
    -- Statements below see every hit committed before the lock was granted.
    SELECT seq, window_ms, ordinal INTO v_seq, v_window, v_ordinal
    FROM counter_hits WHERE key = p_key AND event_id = p_event;
    IF FOUND THEN
        IF v_window = p_window_ms THEN
            RETURN v_ordinal;
        END IF;
        RETURN (SELECT COUNT(*) FROM counter_hits
                WHERE key = p_key AND at >= p_since AND seq <= v_seq);
    END IF;
    -- Whole seconds from the buckets, the first (partial) second from the raw hits.
    v_ordinal := 1
        + (SELECT COALESCE(SUM(hits), 0) FROM counter_buckets
           WHERE key = p_key AND second > p_first)
        + (SELECT COUNT(*) FROM counter_hits
           WHERE key = p_key AND at >= p_since AND at < (p_first + 1) * 1000);
    INSERT INTO counter_hits (key, event_id, at, seq, window_ms, ordinal)
    VALUES (p_key, p_event, p_at,
            (SELECT COALESCE(MAX(seq), 0) + 1 FROM counter_hits WHERE key = p_key),
            p_window_ms, v_ordinal);
    INSERT INTO counter_buckets (key, second, hits) VALUES (p_key, p_second, 1)
    ON CONFLICT (key, second) DO UPDATE SET hits = counter_buckets.hits + 1;
    RETURN v_ordinal;
END
$$;
