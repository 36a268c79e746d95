-- Times are unix milliseconds (UTC), so that SQLite and PostgreSQL compare them alike.

-- Accepted notifications, immutable once written: the raw push and its decoded view.
CREATE TABLE events (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    dedupe_key     TEXT    NOT NULL UNIQUE,
    received_at    INTEGER NOT NULL,
    source_addr    TEXT,
    content_type   TEXT,
    raw_body       BLOB    NOT NULL,
    decoded        TEXT    NOT NULL,
    warnings       TEXT    NOT NULL,
    call_id        TEXT,
    customer_phone TEXT,
    outcome        TEXT
);
CREATE INDEX events_call_id ON events (call_id);
CREATE INDEX events_customer_phone ON events (customer_phone);
CREATE INDEX events_received_at ON events (received_at);

-- Events waiting to be processed (written with the event). A processor leases rows; an expired
-- lease (lease_until in the past; 0 = never leased) lets another processor take the event.
CREATE TABLE event_queue (
    event_id    INTEGER PRIMARY KEY REFERENCES events (id),
    lease_owner TEXT,
    lease_until INTEGER NOT NULL DEFAULT 0,
    attempts    INTEGER NOT NULL DEFAULT 0
);

-- One row per processed event, written in the transaction that removes it from the queue.
CREATE TABLE evaluations (
    event_id     INTEGER PRIMARY KEY REFERENCES events (id),
    processed_at INTEGER NOT NULL,
    attempts     INTEGER NOT NULL
);
