-- Events that cannot be processed: each failed attempt is counted with its reason and retried
-- after a backoff (lease_until); after too many the event is quarantined, left out of claims
-- until an operator retries it. The rest of the queue goes on.
ALTER TABLE event_queue ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE event_queue ADD COLUMN last_error TEXT;
ALTER TABLE event_queue ADD COLUMN quarantined_at INTEGER;
CREATE INDEX event_queue_quarantined ON event_queue (event_id) WHERE quarantined_at IS NOT NULL;
