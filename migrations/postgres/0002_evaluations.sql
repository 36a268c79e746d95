-- What rule evaluation records: the evaluation of each processed event, the hits of windowed
-- counters, and the actions matching rules asked for (which delivery executes).

ALTER TABLE evaluations ADD COLUMN ruleset_version TEXT;
-- The evaluation record (JSON): each rule's verdict, actions, errors, and the time it took.
ALTER TABLE evaluations ADD COLUMN record TEXT;

-- One hit per counter key and event: re-evaluating an event cannot count it twice.
CREATE TABLE counter_hits (
    key      TEXT   NOT NULL,
    event_id BIGINT NOT NULL REFERENCES events (id),
    at       BIGINT NOT NULL,
    PRIMARY KEY (key, event_id)
);
CREATE INDEX counter_hits_key_at ON counter_hits (key, at);

-- Each action a matching rule asked for, written with the evaluation that produced it.
-- idempotency_key (event, rule, action index) makes each one exist once.
CREATE TABLE jobs (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    idempotency_key TEXT   NOT NULL UNIQUE,
    event_id        BIGINT NOT NULL REFERENCES events (id),
    rule            TEXT   NOT NULL,
    action_index    BIGINT NOT NULL,
    kind            TEXT   NOT NULL,
    spec            TEXT   NOT NULL,
    status          TEXT   NOT NULL DEFAULT 'pending',
    created_at      BIGINT NOT NULL
);
CREATE INDEX jobs_event_id ON jobs (event_id);
CREATE INDEX jobs_status ON jobs (status, id);
