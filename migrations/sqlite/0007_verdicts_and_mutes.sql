-- What the console searches and counts: each rule that matched or failed on an event (a plain
-- "did not match" is not stored; it is in the evaluation record), and operators' mutes.

CREATE TABLE rule_verdicts (
    event_id BIGINT NOT NULL REFERENCES events (id),
    rule     TEXT   NOT NULL,
    -- matched or error
    verdict  TEXT   NOT NULL,
    -- the event's received_at
    at       BIGINT NOT NULL,
    PRIMARY KEY (event_id, rule)
);
CREATE INDEX rule_verdicts_rule ON rule_verdicts (rule, verdict, event_id);
CREATE INDEX rule_verdicts_at ON rule_verdicts (at);

CREATE INDEX events_outcome ON events (outcome, id);
CREATE INDEX jobs_created_at ON jobs (created_at);

-- Mutes: a rule's actions, or every action for a phone, are recorded as muted (not run) until
-- a time. scope: rule or phone.
CREATE TABLE mutes (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    scope      TEXT   NOT NULL,
    value      TEXT   NOT NULL,
    until      BIGINT NOT NULL,
    reason     TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    -- set when an operator lifts the mute early
    lifted_at  BIGINT
);
CREATE INDEX mutes_until ON mutes (until);
