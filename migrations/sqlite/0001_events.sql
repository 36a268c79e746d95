-- Accepted notifications: the raw push, its decoded view, and where processing stands.
-- Times are unix milliseconds (UTC) so that SQLite and PostgreSQL compare them alike.
CREATE TABLE events (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    dedupe_key    TEXT    NOT NULL UNIQUE,
    received_at   INTEGER NOT NULL,
    source_addr   TEXT,
    content_type  TEXT,
    raw_body      BLOB    NOT NULL,
    decoded       TEXT    NOT NULL,
    warnings      TEXT    NOT NULL,
    call_id       TEXT,
    customer_phone TEXT,
    outcome       TEXT,
    state         TEXT    NOT NULL DEFAULT 'pending',
    attempts      INTEGER NOT NULL DEFAULT 0,
    lease_owner   TEXT,
    lease_until   INTEGER,
    processed_at  INTEGER,
    last_error    TEXT
);

CREATE INDEX events_call_id ON events (call_id);
CREATE INDEX events_customer_phone ON events (customer_phone);
CREATE INDEX events_received_at ON events (received_at);
CREATE INDEX events_unprocessed ON events (id) WHERE state <> 'processed';
