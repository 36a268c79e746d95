-- A replayed job names its replay run (the replay's id, `replay-<unix ms>`); the jobs of an
-- event's own evaluation have none. Jobs replayed before carry the run only at the end of their
-- key (`{event}:{index}:{rule}:{run}`): it is copied from there.
ALTER TABLE jobs ADD COLUMN replay_run TEXT;
UPDATE jobs SET replay_run = substr(idempotency_key, instr(idempotency_key, ':replay-') + 1)
WHERE idempotency_key LIKE '%:replay-%';
