-- Callback tasks: the promise that a person calls a customer back. At most one open (or claimed)
-- task per phone, enforced by the database; a new match for that phone merges into it.
CREATE TABLE callback_tasks (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    phone         TEXT   NOT NULL,
    customer_name TEXT,
    -- open, claimed, done, cancelled
    status        TEXT   NOT NULL DEFAULT 'open',
    priority      BIGINT NOT NULL,
    due_at        BIGINT NOT NULL,
    -- JSON array of {reason, event_id, rule, at}: why the task exists, oldest first
    reasons       TEXT   NOT NULL,
    claimed_by    TEXT,
    outcome       TEXT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    closed_at     BIGINT
);
CREATE UNIQUE INDEX callback_tasks_one_open_per_phone ON callback_tasks (phone)
    WHERE status IN ('open', 'claimed');
CREATE INDEX callback_tasks_status_due ON callback_tasks (status, due_at);
