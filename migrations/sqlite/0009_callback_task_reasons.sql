-- Why each callback task exists, one row per (task, event, rule): merging a request appends a
-- row, instead of rewriting a list that grows with every merge.
CREATE TABLE callback_task_reasons (
    task_id  BIGINT NOT NULL REFERENCES callback_tasks (id),
    event_id BIGINT NOT NULL,
    rule     TEXT   NOT NULL,
    reason   TEXT   NOT NULL,
    at       BIGINT NOT NULL,
    PRIMARY KEY (task_id, event_id, rule)
);
INSERT OR IGNORE INTO callback_task_reasons (task_id, event_id, rule, reason, at)
SELECT t.id, json_extract(r.value, '$.event_id'), json_extract(r.value, '$.rule'),
       json_extract(r.value, '$.reason'), json_extract(r.value, '$.at')
FROM callback_tasks t, json_each(t.reasons) r;
ALTER TABLE callback_tasks DROP COLUMN reasons;
