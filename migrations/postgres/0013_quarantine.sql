-- Events that cannot be processed: each failed attempt is counted with its reason and retried
-- after a backoff (lease_until); after too many the event is quarantined, left out of claims
-- until an operator retries it. The rest of the queue goes on.
ALTER TABLE event_queue ADD COLUMN failures BIGINT NOT NULL DEFAULT 0;
ALTER TABLE event_queue ADD COLUMN last_error TEXT;
ALTER TABLE event_queue ADD COLUMN quarantined_at BIGINT;
CREATE INDEX event_queue_quarantined ON event_queue (event_id) WHERE quarantined_at IS NOT NULL;

-- An event an operator puts back in the queue wakes the processors of every instance, as a new
-- one does (migration 0009).
CREATE TRIGGER event_queue_release_notify AFTER UPDATE OF quarantined_at ON event_queue
    FOR EACH ROW WHEN (NEW.quarantined_at IS NULL AND OLD.quarantined_at IS NOT NULL)
    EXECUTE FUNCTION switchboard_notify_events();
