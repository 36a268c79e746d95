-- Times are unix milliseconds (UTC), so that SQLite and PostgreSQL compare them alike.
-- Integers are BIGINT throughout (they are i64 in Rust).

-- Accepted notifications, immutable once written: the raw push and its decoded view.
CREATE TABLE events (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dedupe_key     TEXT   NOT NULL UNIQUE,
    received_at    BIGINT NOT NULL,
    source_addr    TEXT,
    content_type   TEXT,
    raw_body       BYTEA  NOT NULL,
    decoded        TEXT   NOT NULL,
    warnings       TEXT   NOT NULL,
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
    event_id    BIGINT PRIMARY KEY REFERENCES events (id),
    lease_owner TEXT,
    lease_until BIGINT NOT NULL DEFAULT 0,
    attempts    BIGINT NOT NULL DEFAULT 0
);

-- One row per processed event, written in the transaction that removes it from the queue.
CREATE TABLE evaluations (
    event_id     BIGINT PRIMARY KEY REFERENCES events (id),
    processed_at BIGINT NOT NULL,
    attempts     BIGINT NOT NULL
);
