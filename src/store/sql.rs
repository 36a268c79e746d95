//! SQL shared by both backends: the pieces whose text and binds are the same in SQLite and
//! PostgreSQL, built with `QueryBuilder` (which writes each backend's placeholders).

use super::row::JsonColumns;
use super::{EventId, EventQuery, Finished, Inserted, Millis, NewEvent, StoreError};
use sqlx::{Database, Encode, QueryBuilder, Type};
use std::collections::HashMap;

/// The multi-row insert of new events; returns `(id, dedupe_key)` of the rows it inserted (a
/// dedupe key already stored, or repeated in the batch, inserts nothing).
pub(super) fn insert_events<'a, DB>(
    events: &'a [NewEvent],
    columns: &'a [JsonColumns],
) -> QueryBuilder<'a, DB>
where
    DB: Database,
    &'a String: Encode<'a, DB> + Type<DB>,
    &'a Option<String>: Encode<'a, DB> + Type<DB>,
    &'a Vec<u8>: Encode<'a, DB> + Type<DB>,
    Option<&'a str>: Encode<'a, DB> + Type<DB>,
    i64: Encode<'a, DB> + Type<DB>,
{
    let mut qb = QueryBuilder::new(
        "INSERT INTO events (dedupe_key, received_at, source_addr, content_type, raw_body, \
         decoded, warnings, call_id, customer_phone, outcome) ",
    );
    qb.push_values(events.iter().zip(columns), |mut row, (new, json)| {
        row.push_bind(&new.dedupe_key)
            .push_bind(new.received_at)
            .push_bind(&new.source_addr)
            .push_bind(&new.content_type)
            .push_bind(&new.raw_body)
            .push_bind(&json.decoded)
            .push_bind(&json.warnings)
            .push_bind(&new.event.call_id)
            .push_bind(&new.event.customer_phone)
            .push_bind(new.event.outcome.map(|o| -> &'a str { o.as_str() }));
    });
    qb.push(" ON CONFLICT (dedupe_key) DO NOTHING RETURNING id, dedupe_key");
    qb
}

/// Appends ` AND …` for every filter of `query`, then the order and limit.
pub(super) fn push_event_filters<'a, DB>(qb: &mut QueryBuilder<'a, DB>, query: &'a EventQuery)
where
    DB: Database,
    &'a String: Encode<'a, DB> + Type<DB>,
    i64: Encode<'a, DB> + Type<DB>,
{
    if let Some(call_id) = &query.call_id {
        qb.push(" AND e.call_id = ").push_bind(call_id);
    }
    if let Some(phone) = &query.customer_phone {
        qb.push(" AND e.customer_phone = ").push_bind(phone);
    }
    if let Some(since) = query.since {
        qb.push(" AND e.received_at >= ").push_bind(since);
    }
    if let Some(until) = query.until {
        qb.push(" AND e.received_at < ").push_bind(until);
    }
    if let Some(before) = query.before_id {
        qb.push(" AND e.id < ").push_bind(before);
    }
    if let Some(outcome) = &query.outcome {
        qb.push(" AND e.outcome = ").push_bind(outcome);
    }
    if let Some(rule) = &query.matched_rule {
        qb.push(
            " AND EXISTS (SELECT 1 FROM rule_verdicts v WHERE v.event_id = e.id \
             AND v.verdict = 'matched' AND v.rule = ",
        )
        .push_bind(rule)
        .push(")");
    }
    qb.push(" ORDER BY e.id DESC LIMIT ")
        .push_bind(i64::from(query.limit));
}

/// The answer for each event of a batch, from the keys the insert stored (`inserted`) and the
/// ids of keys that were stored before (`existing`). The first occurrence of a key inserted by
/// this batch is new; every other occurrence is a duplicate.
pub(super) fn resolve_inserted(
    batch: &[NewEvent],
    mut inserted: HashMap<String, EventId>,
    mut existing: HashMap<String, EventId>,
) -> Result<Vec<Inserted>, StoreError> {
    batch
        .iter()
        .map(|new| {
            if let Some(id) = inserted.remove(&new.dedupe_key) {
                existing.insert(new.dedupe_key.clone(), id);
                return Ok(Inserted {
                    id,
                    duplicate: false,
                });
            }
            existing
                .get(&new.dedupe_key)
                .map(|&id| Inserted {
                    id,
                    duplicate: true,
                })
                .ok_or_else(|| StoreError::Corrupt {
                    what: "dedupe key",
                    message: format!("{} neither inserted nor found", new.dedupe_key),
                })
        })
        .collect()
}

/// The evaluation rows of the events in `held` (event id → claim attempts).
pub(super) fn insert_evaluations<'a, DB>(
    finished: &'a [&'a Finished],
    records: &'a [String],
    held: &'a HashMap<EventId, i64>,
    now: Millis,
) -> QueryBuilder<'a, DB>
where
    DB: Database,
    &'a String: Encode<'a, DB> + Type<DB>,
    i64: Encode<'a, DB> + Type<DB>,
{
    let mut qb = QueryBuilder::new(
        "INSERT INTO evaluations (event_id, processed_at, attempts, ruleset_version, record) ",
    );
    qb.push_values(finished.iter().zip(records), |mut row, (f, record)| {
        row.push_bind(f.event_id)
            .push_bind(now)
            .push_bind(held.get(&f.event_id).copied().unwrap_or(1))
            .push_bind(&f.ruleset_version)
            .push_bind(record);
    });
    qb
}

/// The second a hit at `at_ms` is counted in.
pub(super) fn bucket_of(at_ms: Millis) -> i64 {
    at_ms.div_euclid(1000)
}

/// Counts the hits of `key` at or after `since`: whole seconds from the buckets, the first
/// (partial) second from the raw hits. Binds: key, first second, key, since, end of first second.
pub(super) const COUNT_HITS: &str = "SELECT CAST(\
     (SELECT COALESCE(SUM(hits), 0) FROM counter_buckets WHERE key = $1 AND second > $2) + \
     (SELECT COUNT(*) FROM counter_hits WHERE key = $3 AND at >= $4 AND at < $5) AS BIGINT)";

/// Counter hits older than the retention, a bounded number at a time. Binds: before, limit.
pub(super) const PRUNE_COUNTER_HITS: &str = "DELETE FROM counter_hits WHERE (key, event_id) IN \
     (SELECT key, event_id FROM counter_hits WHERE at < $1 LIMIT $2)";
/// Per-second buckets older than the retention. Binds: before (a second), limit.
pub(super) const PRUNE_COUNTER_BUCKETS: &str = "DELETE FROM counter_buckets WHERE (key, second) IN \
     (SELECT key, second FROM counter_buckets WHERE second < $1 LIMIT $2)";
/// Instances not seen for a week (a row per process that ever ran). Binds: before, limit.
pub(super) const PRUNE_INSTANCES: &str = "DELETE FROM instances WHERE id IN \
     (SELECT id FROM instances WHERE seen_at < $1 LIMIT $2)";
/// Throttle windows that have closed. Binds: now, limit.
pub(super) const PRUNE_THROTTLES: &str = "DELETE FROM throttles WHERE (rule, key) IN \
     (SELECT rule, key FROM throttles WHERE until < $1 LIMIT $2)";

/// An event's own hit on a key: its place, and the window and ordinal it was recorded with
/// (both NULL for hits recorded before ordinals were kept). Binds: key, event id.
pub(super) const HIT_OF_EVENT: &str =
    "SELECT seq, window_ms, ordinal FROM counter_hits WHERE key = $1 AND event_id = $2";

/// A key's hits within a window up to a place (raw hits: this is the rare path, an event
/// evaluated again). Binds: key, since, seq.
pub(super) const COUNT_HITS_UP_TO: &str =
    "SELECT COUNT(*) FROM counter_hits WHERE key = $1 AND at >= $2 AND seq <= $3";

/// Hits of a key as an event that never hit it would have seen them (raw hits: history is
/// re-read rarely). Binds: key, since, until, the event's id.
pub(super) const COUNT_HITS_AS_OF: &str = "SELECT COUNT(*) FROM counter_hits \
     WHERE key = $1 AND at >= $2 AND at <= $3 AND event_id < $4";

/// The body of `Store::hit_ordinal_as_of`, reading through `$exec` (a pool, or a transaction as
/// `&mut *tx`): the ordinal an event's hit got, recounted for another window up to its place,
/// or for a key it never hit, one more than the earlier events' hits up to its time.
macro_rules! hit_ordinal_as_of {
    ($exec:expr, $key:expr, $event_id:expr, $at:expr, $window_ms:expr) => {{
        let (key, event_id, at, window_ms): (&str, EventId, Millis, Millis) =
            ($key, $event_id, $at, $window_ms);
        let since = at.saturating_sub(window_ms);
        let own: Option<(i64, Option<i64>, Option<i64>)> = sqlx::query_as(sql::HIT_OF_EVENT)
            .bind(key)
            .bind(event_id)
            .fetch_optional($exec)
            .await?;
        let ordinal = match own {
            Some((_, Some(window), Some(ordinal))) if window == window_ms => ordinal,
            Some((seq, _, _)) => {
                let (count,): (i64,) = sqlx::query_as(sql::COUNT_HITS_UP_TO)
                    .bind(key)
                    .bind(since)
                    .bind(seq)
                    .fetch_one($exec)
                    .await?;
                count
            }
            None => {
                let (count,): (i64,) = sqlx::query_as(sql::COUNT_HITS_AS_OF)
                    .bind(key)
                    .bind(since)
                    .bind(at)
                    .bind(event_id)
                    .fetch_one($exec)
                    .await?;
                count + 1
            }
        };
        Ok::<u64, StoreError>(u64::try_from(ordinal).unwrap_or(0))
    }};
}
pub(super) use hit_ordinal_as_of;

/// Runs [`COUNT_HITS`] (the same text and binds on both backends).
macro_rules! count_hits {
    ($pool:expr, $key:expr, $since:expr) => {{
        let (key, since): (&str, Millis) = ($key, $since);
        let first = sql::bucket_of(since);
        let (count,): (i64,) = sqlx::query_as(sql::COUNT_HITS)
            .bind(key)
            .bind(first)
            .bind(key)
            .bind(since)
            .bind((first + 1) * 1000)
            .fetch_one($pool)
            .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }};
}
pub(super) use count_hits;

/// Jobs of finished events, each once by its idempotency key; `None` when there are none.
/// Jobs of the rules in `held_back` (event id, rule → status and note: `suppressed` by a
/// throttle, or `muted`) are recorded with that status instead of `pending`.
pub(super) fn insert_jobs<'a, DB>(
    finished: &'a [&'a Finished],
    held_back: &'a HashMap<(EventId, String), (&'static str, String)>,
    now: Millis,
    replay_run: Option<&str>,
) -> Result<Option<QueryBuilder<'a, DB>>, StoreError>
where
    DB: Database,
    &'a String: Encode<'a, DB> + Type<DB>,
    String: Encode<'a, DB> + Type<DB>,
    Option<&'a String>: Encode<'a, DB> + Type<DB>,
    &'a str: Encode<'a, DB> + Type<DB>,
    i64: Encode<'a, DB> + Type<DB>,
{
    let mut jobs = Vec::new();
    for f in finished {
        for job in &f.jobs {
            let spec = serde_json::to_string(&job.spec).map_err(|e| StoreError::Corrupt {
                what: "job spec",
                message: e.to_string(),
            })?;
            let held = held_back.get(&(f.event_id, job.rule.clone()));
            let key = match replay_run {
                Some(run) => format!("{}:{run}", job.idempotency_key(f.event_id)),
                None => job.idempotency_key(f.event_id),
            };
            jobs.push((key, f.event_id, job, spec, held));
        }
    }
    if jobs.is_empty() {
        return Ok(None);
    }
    let mut qb = QueryBuilder::new(
        "INSERT INTO jobs (idempotency_key, event_id, rule, action_index, kind, spec, status, \
         note, created_at) ",
    );
    qb.push_values(jobs, |mut row, (key, event_id, job, spec, held)| {
        row.push_bind(key)
            .push_bind(event_id)
            .push_bind(&job.rule)
            .push_bind(i64::from(job.action_index))
            .push_bind(&job.kind)
            .push_bind(spec)
            .push_bind::<&'a str>(held.map_or(super::job_status::PENDING, |(status, _)| status))
            .push_bind(held.map(|(_, note)| note))
            .push_bind(now);
    });
    qb.push(" ON CONFLICT (idempotency_key) DO NOTHING");
    Ok(Some(qb))
}

/// The rules that matched or failed on each finished event (from its evaluation record), for
/// search and counts; `None` when there are none.
pub(super) fn insert_verdicts<'a, DB>(
    finished: &'a [&'a Finished],
    now: Millis,
) -> Option<QueryBuilder<'a, DB>>
where
    DB: Database,
    String: Encode<'a, DB> + Type<DB>,
    &'a str: Encode<'a, DB> + Type<DB>,
    i64: Encode<'a, DB> + Type<DB>,
{
    let verdicts: Vec<(EventId, String, &'static str)> = finished
        .iter()
        .flat_map(|f| {
            let listed = f.record.get("verdicts").and_then(|v| v.as_array());
            listed.into_iter().flatten().filter_map(|v| {
                let rule = v.get("rule")?.as_str()?.to_string();
                if v.get("error").is_some_and(|e| !e.is_null()) {
                    Some((f.event_id, rule, "error"))
                } else if v.get("matched") == Some(&serde_json::Value::Bool(true)) {
                    Some((f.event_id, rule, "matched"))
                } else {
                    None
                }
            })
        })
        .collect();
    if verdicts.is_empty() {
        return None;
    }
    let mut qb = QueryBuilder::new("INSERT INTO rule_verdicts (event_id, rule, verdict, at) ");
    qb.push_values(verdicts, |mut row, (event_id, rule, verdict)| {
        row.push_bind(event_id)
            .push_bind(rule)
            .push_bind(verdict)
            .push_bind(now);
    });
    qb.push(" ON CONFLICT (event_id, rule) DO NOTHING");
    Some(qb)
}

/// The jobs of `$chunk` (finished events) that mutes in force hold back: (event, rule) →
/// (`muted`, the mute's note). Reads the events' phones through `$tx` when any mute is in force.
macro_rules! muted_jobs {
    ($db:ty, $tx:ident, $mutes:expr, $chunk:expr) => {{
        let (mutes, chunk): (&[(String, String, Millis, String)], &[&Finished]) = ($mutes, $chunk);
        let mut held_back: HashMap<(EventId, String), (&'static str, String)> = HashMap::new();
        if !mutes.is_empty() {
            let mut qb: QueryBuilder<$db> =
                QueryBuilder::new("SELECT id, customer_phone FROM events WHERE id IN (");
            let mut list = qb.separated(", ");
            for f in chunk {
                list.push_bind(f.event_id);
            }
            qb.push(")");
            let phones: HashMap<EventId, Option<String>> = qb
                .build_query_as()
                .fetch_all(&mut *$tx)
                .await?
                .into_iter()
                .collect();
            for f in chunk {
                let phone = phones.get(&f.event_id).cloned().flatten();
                for job in &f.jobs {
                    if let Some(note) = sql::mute_note(mutes, &job.rule, phone.as_deref()) {
                        held_back.insert((f.event_id, job.rule.clone()), ("muted", note));
                    }
                }
            }
        }
        held_back
    }};
}
pub(super) use muted_jobs;

/// Mutes in force. Bind: now.
pub(super) const ACTIVE_MUTES: &str = "SELECT scope, value, until, reason FROM mutes \
     WHERE until > $1 AND lifted_at IS NULL";

/// Why a rule's jobs for an event are muted, if they are: the rule's mute first, then the
/// phone's. `mutes` are (scope, value, until, reason).
pub(super) fn mute_note(
    mutes: &[(String, String, Millis, String)],
    rule: &str,
    phone: Option<&str>,
) -> Option<String> {
    let hit = |scope: &str, value: Option<&str>| {
        mutes
            .iter()
            .find(|(s, v, _, _)| s == scope && Some(v.as_str()) == value)
    };
    hit("rule", Some(rule))
        .or_else(|| hit("phone", phone))
        .map(|(scope, value, until, reason)| {
            format!("muted: {scope} `{value}` until {until} (unix ms): {reason}")
        })
}

/// Opens throttle windows, one per (rule, key) — no two alike in one call — unless one is
/// open at the request's time: returns the (rule, key) of each window that was (re)opened, i.e.
/// whose rule's actions go ahead.
pub(super) fn open_throttles<'a, DB>(requests: &[&'a super::RuleThrottle]) -> QueryBuilder<'a, DB>
where
    DB: Database,
    &'a String: Encode<'a, DB> + Type<DB>,
    i64: Encode<'a, DB> + Type<DB>,
{
    let mut qb = QueryBuilder::new("INSERT INTO throttles (rule, key, until, opened_at) ");
    qb.push_values(requests, |mut row, t| {
        row.push_bind(&t.rule)
            .push_bind(&t.key)
            .push_bind(t.at.saturating_add(t.window_ms))
            .push_bind(t.at);
    });
    qb.push(
        " ON CONFLICT (rule, key) DO UPDATE SET until = excluded.until, \
         opened_at = excluded.opened_at WHERE throttles.until <= excluded.opened_at \
         RETURNING rule, key",
    );
    qb
}

/// The JSON text of each finished event's evaluation record.
pub(super) fn record_texts(finished: &[&Finished]) -> Result<Vec<String>, StoreError> {
    finished
        .iter()
        .map(|f| {
            serde_json::to_string(&f.record).map_err(|e| StoreError::Corrupt {
                what: "evaluation record",
                message: e.to_string(),
            })
        })
        .collect()
}

/// The body of `Store::finish_events`, the same for both backends (a macro because the
/// transaction's executor types differ): remove the events `owner` still holds from the queue,
/// then write their evaluations and jobs, in one transaction, committed by `$commit` (a function
/// of the transaction; by default its `commit`).
macro_rules! finish_events {
    ($db:ty, $pool:expr, $finished:expr, $owner:expr, $now:expr) => {
        sql::finish_events!(
            $db,
            $pool,
            $finished,
            $owner,
            $now,
            |tx: sqlx::Transaction<'static, $db>| tx.commit()
        )
    };
    ($db:ty, $pool:expr, $finished:expr, $owner:expr, $now:expr, $commit:expr) => {{
        let (finished, owner, now): (&[Finished], &str, Millis) = ($finished, $owner, $now);
        if finished.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = $pool.begin().await?;
        let mut qb: QueryBuilder<$db> =
            QueryBuilder::new("DELETE FROM event_queue WHERE lease_owner = ");
        qb.push_bind(owner).push(" AND event_id IN (");
        let mut list = qb.separated(", ");
        for f in finished {
            list.push_bind(f.event_id);
        }
        qb.push(") RETURNING event_id, attempts");
        let held: std::collections::HashMap<EventId, i64> = qb
            .build_query_as::<(EventId, i64)>()
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
        let kept: Vec<&Finished> = finished
            .iter()
            .filter(|f| held.contains_key(&f.event_id))
            .collect();
        let mutes: Vec<(String, String, Millis, String)> = sqlx::query_as(sql::ACTIVE_MUTES)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
        // Chunks keep every statement well inside the backends' parameter limits.
        for chunk in kept.chunks(64) {
            let records = sql::record_texts(chunk)?;
            sql::insert_evaluations::<$db>(chunk, &records, &held, now)
                .build()
                .execute(&mut *tx)
                .await?;
            if let Some(mut qb) = sql::insert_verdicts::<$db>(chunk, now) {
                qb.build().execute(&mut *tx).await?;
            }
            let mut held_back = sql::muted_jobs!($db, tx, &mutes, chunk);
            // Throttles apply in event order, so a later event of the batch sees an earlier
            // one's: round n opens the n-th request of each (rule, key) in one statement (keys
            // are independent of each other). A muted rule's throttle does not open.
            let mut rounds: Vec<Vec<(EventId, &super::RuleThrottle)>> = Vec::new();
            let mut seen: std::collections::HashMap<(&str, &str), usize> =
                std::collections::HashMap::new();
            for f in chunk {
                for t in &f.throttles {
                    if held_back.contains_key(&(f.event_id, t.rule.clone())) {
                        continue;
                    }
                    let round = seen.entry((t.rule.as_str(), t.key.as_str())).or_insert(0);
                    if rounds.len() <= *round {
                        rounds.push(Vec::new());
                    }
                    rounds[*round].push((f.event_id, t));
                    *round += 1;
                }
            }
            for mut round in rounds {
                // In one order in every transaction, so that processors opening windows of the
                // same keys at once wait for each other instead of deadlocking.
                round.sort_by(|(_, a), (_, b)| (&a.rule, &a.key).cmp(&(&b.rule, &b.key)));
                let requests: Vec<&super::RuleThrottle> = round.iter().map(|(_, t)| *t).collect();
                let opened: std::collections::HashSet<(String, String)> =
                    sql::open_throttles::<$db>(&requests)
                        .build_query_as()
                        .fetch_all(&mut *tx)
                        .await?
                        .into_iter()
                        .collect();
                for (event_id, t) in round {
                    if !opened.contains(&(t.rule.clone(), t.key.clone())) {
                        let note = format!(
                            "throttled: `{}` already acted for key `{}` within its window",
                            t.rule, t.key
                        );
                        held_back.insert((event_id, t.rule.clone()), ("suppressed", note));
                    }
                }
            }
            if let Some(mut qb) = sql::insert_jobs::<$db>(chunk, &held_back, now, None)? {
                qb.build().execute(&mut *tx).await?;
            }
        }
        ($commit)(tx).await?;
        let mut ids: Vec<EventId> = kept.iter().map(|f| f.event_id).collect();
        ids.sort_unstable();
        Ok(ids)
    }};
}
pub(super) use finish_events;

/// The reads both backends run with the same text (`$N` placeholders work in SQLite too):
/// `fetch_one_row!(pool, RowType, SQL, bind)` gives `Option<Stored…>`,
/// `fetch_rows!(pool, RowType, SQL, bind)` gives `Vec<Stored…>`.
macro_rules! fetch_one_row {
    ($pool:expr, $row:ty, $sql:expr, $bind:expr) => {{
        let row: Option<$row> = sqlx::query_as($sql)
            .bind($bind)
            .fetch_optional($pool)
            .await?;
        row.map(<$row>::into_stored).transpose()
    }};
}
pub(super) use fetch_one_row;

macro_rules! fetch_rows {
    ($pool:expr, $row:ty, $sql:expr, $bind:expr) => {{
        let rows: Vec<$row> = sqlx::query_as($sql).bind($bind).fetch_all($pool).await?;
        rows.into_iter().map(<$row>::into_stored).collect()
    }};
}
pub(super) use fetch_rows;

/// One event by id.
pub(super) static GET_EVENT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{} WHERE e.id = $1", super::row::EVENT_SELECT));
/// One event's evaluation.
pub(super) static GET_EVALUATION: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{} WHERE event_id = $1", super::row::EVALUATION_SELECT));
/// One event's jobs, in order.
pub(super) static LIST_EVENT_JOBS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!("{} WHERE event_id = $1 ORDER BY id", super::row::JOB_SELECT)
});

/// A job's attempts, in order.
pub(super) static LIST_JOB_ATTEMPTS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{} WHERE job_id = $1 ORDER BY attempt",
        super::row::ATTEMPT_SELECT
    )
});

/// Jobs by id (after a claim), earliest due first. Bind: the ids.
macro_rules! jobs_by_id {
    ($db:ty, $pool:expr, $ids:expr) => {{
        let ids: &[i64] = $ids;
        let mut qb: QueryBuilder<$db> =
            QueryBuilder::new(format!("{} WHERE id IN (", super::row::JOB_SELECT));
        let mut list = qb.separated(", ");
        for id in ids {
            list.push_bind(*id);
        }
        qb.push(") ORDER BY next_attempt_at, id");
        let rows: Vec<super::row::JobRow> = qb.build_query_as().fetch_all($pool).await?;
        rows.into_iter()
            .map(super::row::JobRow::into_stored)
            .collect()
    }};
}
pub(super) use jobs_by_id;

/// The body of `Store::record_attempts`: one transaction for the whole batch. A job whose lease
/// `owner` no longer holds is left alone (its entry is false).
macro_rules! record_attempts {
    ($pool:expr, $owner:expr, $batch:expr) => {{
        let (owner, batch): (&str, &[super::FinishedAttempt]) = ($owner, $batch);
        let mut recorded = Vec::with_capacity(batch.len());
        let mut tx = $pool.begin().await?;
        for done in batch {
            let attempt = &done.attempt;
            let ended = attempt.started_at + attempt.duration_ms;
            let (status, next_at, finished_at) = match done.next {
                super::JobNext::Done => (super::job_status::DONE, 0, Some(ended)),
                super::JobNext::RetryAt(at) => (super::job_status::RETRYING, at, None),
                super::JobNext::Dead => (super::job_status::DEAD, 0, Some(ended)),
            };
            let updated: Option<(i64,)> = sqlx::query_as(
                "UPDATE jobs SET attempts = attempts + 1, status = $1, next_attempt_at = $2, \
                 finished_at = $3, lease_owner = NULL, lease_until = 0 \
                 WHERE id = $4 AND lease_owner = $5 RETURNING attempts",
            )
            .bind(status)
            .bind(next_at)
            .bind(finished_at)
            .bind(done.job_id)
            .bind(owner)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((number,)) = updated else {
                recorded.push(false);
                continue;
            };
            sqlx::query(
                "INSERT INTO job_attempts (job_id, attempt, started_at, duration_ms, outcome, \
                 code, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(done.job_id)
            .bind(number)
            .bind(attempt.started_at)
            .bind(attempt.duration_ms)
            .bind(&attempt.outcome)
            .bind(attempt.code)
            .bind(&attempt.detail)
            .execute(&mut *tx)
            .await?;
            recorded.push(true);
        }
        tx.commit().await?;
        Ok(recorded)
    }};
}
pub(super) use record_attempts;

/// Fills in the reasons of `$tasks` (a `Vec<CallbackTask>`) from `callback_task_reasons`,
/// oldest first, reading through `$exec` (a pool or a transaction).
macro_rules! with_reasons {
    ($db:ty, $exec:expr, $tasks:expr) => {{
        let mut tasks: Vec<super::CallbackTask> = $tasks;
        if !tasks.is_empty() {
            let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                "SELECT task_id, event_id, rule, reason, at FROM callback_task_reasons \
                 WHERE task_id IN (",
            );
            let mut list = qb.separated(", ");
            for task in &tasks {
                list.push_bind(task.id);
            }
            qb.push(") ORDER BY task_id, at, event_id, rule");
            let rows: Vec<super::row::ReasonRow> = qb.build_query_as().fetch_all($exec).await?;
            let mut by_task: std::collections::HashMap<i64, Vec<serde_json::Value>> =
                std::collections::HashMap::new();
            for row in rows {
                by_task
                    .entry(row.task_id)
                    .or_default()
                    .push(row.into_json());
            }
            for task in &mut tasks {
                task.reasons =
                    serde_json::Value::Array(by_task.remove(&task.id).unwrap_or_default());
            }
        }
        Ok::<_, StoreError>(tasks)
    }};
}
pub(super) use with_reasons;

/// The body of `Store::upsert_callback_tasks` (`$lock` is ` FOR UPDATE` where the backend has
/// it), all in one transaction: for each request, merge into the phone's open task, or insert one. A concurrent insert for the same phone by
/// another instance makes the insert do nothing; the second round then finds and merges into it.
/// A merge adds one row to `callback_task_reasons` (once per event and rule), whatever the
/// number of reasons before.
macro_rules! upsert_callback_tasks {
    ($pool:expr, $lock:expr, $requests:expr, $now:expr) => {{
        let (requests, now): (&[super::CallbackRequest], Millis) = ($requests, $now);
        let select = format!(
            "{} WHERE phone = $1 AND status IN ('open', 'claimed'){}",
            super::row::TASK_SELECT,
            $lock
        );
        // Phones in one order, so that two instances locking several never wait on each other
        // in a cycle.
        let mut order: Vec<usize> = (0..requests.len()).collect();
        order.sort_by(|a, b| requests[*a].phone.cmp(&requests[*b].phone));
        let mut results = vec![None; requests.len()];
        let mut tx = $pool.begin().await?;
        for index in order {
        let request = &requests[index];
        let mut task = None;
        for _ in 0..2 {
            let open: Option<super::row::TaskRow> =
                sqlx::query_as(&select).bind(&request.phone).fetch_optional(&mut *tx).await?;
            if let Some(row) = open {
                let current = row.into_stored()?;
                sqlx::query(
                    "UPDATE callback_tasks SET priority = $1, due_at = $2, \
                     customer_name = COALESCE(customer_name, $3), updated_at = $4 WHERE id = $5",
                )
                .bind(current.priority.max(request.priority))
                .bind(current.due_at.min(request.due_at))
                .bind(&request.customer_name)
                .bind(now)
                .bind(current.id)
                .execute(&mut *tx)
                .await?;
                task = Some(super::UpsertedTask {
                    id: current.id,
                    created: false,
                });
                break;
            }
            let inserted: Option<(i64,)> = sqlx::query_as(
                "INSERT INTO callback_tasks (phone, customer_name, status, priority, due_at, \
                 created_at, updated_at) VALUES ($1, $2, 'open', $3, $4, $5, $5) \
                 ON CONFLICT DO NOTHING RETURNING id",
            )
            .bind(&request.phone)
            .bind(&request.customer_name)
            .bind(request.priority)
            .bind(request.due_at)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((id,)) = inserted {
                if request.dispatch {
                    // The new task goes out (Udesk web callback or a webhook) through the job
                    // queue; queued in this transaction, so a task is never created without it.
                    sqlx::query(
                        "INSERT INTO jobs (idempotency_key, event_id, rule, action_index, kind, \
                         spec, status, created_at) VALUES ($1, $2, $3, 0, $4, $5, 'pending', $6) \
                         ON CONFLICT (idempotency_key) DO NOTHING",
                    )
                    .bind(format!("callback-task:{id}:dispatch"))
                    .bind(request.event_id)
                    .bind(&request.rule)
                    .bind(super::CALLBACK_DISPATCH_KIND)
                    .bind(serde_json::json!({ "task_id": id }).to_string())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                task = Some(super::UpsertedTask { id, created: true });
                break;
            }
        }
        let Some(task) = task else {
            return Err(StoreError::Corrupt {
                what: "callback task",
                message: format!("the open task for {} kept changing", request.phone),
            });
        };
        // Once per event and rule: a retried job adds nothing.
        sqlx::query(
            "INSERT INTO callback_task_reasons (task_id, event_id, rule, reason, at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(task.id)
        .bind(request.event_id)
        .bind(&request.rule)
        .bind(&request.reason)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        results[index] = Some(task);
        }
        tx.commit().await?;
        Ok(results.into_iter().flatten().collect())
    }};
}
pub(super) use upsert_callback_tasks;

/// Closes a phone's open and claimed tasks. Binds: outcome, now, phone.
pub(super) const CLOSE_CALLBACK_TASKS: &str = "UPDATE callback_tasks SET status = 'done', \
     outcome = $1, closed_at = $2, updated_at = $2 WHERE phone = $3 AND status IN ('open', 'claimed')";

/// Jobs, newest first. Binds: status or NULL, before id or NULL, limit.
pub(super) static LIST_JOBS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{} WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
        super::row::JOB_SELECT
    )
});
/// One job. Bind: id.
pub(super) static GET_JOB: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{} WHERE id = $1", super::row::JOB_SELECT));
/// Binds: now, id.
pub(super) const RETRY_JOB: &str = "UPDATE jobs SET status = 'pending', next_attempt_at = $1, \
     finished_at = NULL, note = 'retried by an operator' WHERE id = $2 AND status = 'dead'";
/// Binds: note, now, id.
pub(super) const CANCEL_JOB: &str = "UPDATE jobs SET status = 'cancelled', note = $1, \
     finished_at = $2, lease_owner = NULL WHERE id = $3 AND status IN ('pending', 'retrying', 'dead')";
/// One callback task. Bind: id.
pub(super) static GET_TASK: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{} WHERE id = $1", super::row::TASK_SELECT));

/// The body of `Store::update_callback_task`, the same on both backends.
macro_rules! update_callback_task {
    ($pool:expr, $id:expr, $from:expr, $status:expr, $agent:expr, $outcome:expr, $now:expr) => {{
        let (id, from, status, agent, outcome, now): (
            i64,
            &[&str],
            &str,
            Option<&str>,
            Option<&str>,
            Millis,
        ) = ($id, $from, $status, $agent, $outcome, $now);
        let closing = matches!(status, "done" | "cancelled");
        let mut qb = QueryBuilder::new("UPDATE callback_tasks SET status = ");
        qb.push_bind(status)
            .push(", updated_at = ")
            .push_bind(now)
            .push(", claimed_by = COALESCE(")
            .push_bind(agent)
            .push(", claimed_by), outcome = COALESCE(")
            .push_bind(outcome)
            .push(", outcome), closed_at = ")
            .push_bind(closing.then_some(now))
            .push(" WHERE id = ")
            .push_bind(id)
            .push(" AND status IN (");
        let mut list = qb.separated(", ");
        for state in from {
            list.push_bind(*state);
        }
        qb.push(")");
        let done = qb.build().execute(&$pool).await?;
        Ok(done.rows_affected() == 1)
    }};
}
pub(super) use update_callback_task;

/// Callback tasks, most urgent first. Binds: status, phone, due before (each NULL for any), limit.
pub(super) static LIST_TASKS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{} WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR phone = $2) \
         AND ($3 IS NULL OR due_at < $3) ORDER BY priority DESC, due_at, id LIMIT $4",
        super::row::TASK_SELECT
    )
});

/// The body of `Store::list_evaluations`.
macro_rules! list_evaluations {
    ($db:ty, $pool:expr, $ids:expr) => {{
        let ids: &[EventId] = $ids;
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                "SELECT event_id, processed_at, attempts, ruleset_version, record \
                 FROM evaluations WHERE event_id IN (",
            );
            let mut list = qb.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            qb.push(")");
            let rows: Vec<super::row::EvaluationWithIdRow> =
                qb.build_query_as().fetch_all($pool).await?;
            for row in rows {
                found.push((row.event_id, row.evaluation.into_stored()?));
            }
        }
        Ok(found)
    }};
}
pub(super) use list_evaluations;

/// The body of `Store::insert_replay_jobs`.
macro_rules! insert_replay_jobs {
    ($db:ty, $pool:expr, $event_id:expr, $run:expr, $jobs:expr, $now:expr) => {{
        let (event_id, run, jobs, now): (EventId, &str, &[super::NewJob], Millis) =
            ($event_id, $run, $jobs, $now);
        let replayed = Finished {
            event_id,
            ruleset_version: String::new(),
            record: serde_json::Value::Null,
            jobs: jobs.to_vec(),
            throttles: Vec::new(),
        };
        let chunk = [&replayed];
        let mut tx = $pool.begin().await?;
        let mutes: Vec<(String, String, Millis, String)> = sqlx::query_as(sql::ACTIVE_MUTES)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
        let held_back = sql::muted_jobs!($db, tx, &mutes, &chunk[..]);
        let mut queued = 0;
        if let Some(mut qb) = sql::insert_jobs::<$db>(&chunk, &held_back, now, Some(run))? {
            queued = qb.build().execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(queued)
    }};
}
pub(super) use insert_replay_jobs;

/// The body of `Store::overview` (reads only).
macro_rules! overview {
    ($pool:expr, $since:expr, $now:expr) => {{
        let (since, now): (Millis, Millis) = ($since, $now);
        let per_minute: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT (received_at / 60000) * 60000 AS minute, COUNT(*) FROM events \
             WHERE received_at >= $1 GROUP BY minute ORDER BY minute",
        )
        .bind(since)
        .fetch_all($pool)
        .await?;
        let (matched_events, rule_errors): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(DISTINCT CASE WHEN verdict = 'matched' THEN event_id END), \
             COUNT(CASE WHEN verdict = 'error' THEN 1 END) FROM rule_verdicts WHERE at >= $1",
        )
        .bind(since)
        .fetch_one($pool)
        .await?;
        let jobs: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, COUNT(*) FROM jobs WHERE created_at >= $1 GROUP BY status",
        )
        .bind(since)
        .fetch_all($pool)
        .await?;
        let (dead_jobs_total,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM jobs WHERE status = 'dead'")
                .fetch_one($pool)
                .await?;
        let (due_jobs, oldest_due_at): (i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), MIN(CASE WHEN next_attempt_at > created_at THEN next_attempt_at \
             ELSE created_at END) FROM jobs \
             WHERE status IN ('pending', 'retrying') AND next_attempt_at <= $1",
        )
        .bind(now)
        .fetch_one($pool)
        .await?;
        let (open_callback_tasks,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM callback_tasks WHERE status IN ('open', 'claimed')",
        )
        .fetch_one($pool)
        .await?;
        let (quarantined_events,): (i64,) = sqlx::query_as(super::quarantine::COUNT_QUARANTINED)
            .fetch_one($pool)
            .await?;
        Ok(super::Overview {
            quarantined_events,
            events: per_minute.iter().map(|(_, n)| n).sum(),
            events_per_minute: per_minute,
            matched_events,
            rule_errors,
            jobs: jobs.into_iter().collect(),
            dead_jobs_total,
            due_jobs,
            oldest_due_at,
            open_callback_tasks,
        })
    }};
}
pub(super) use overview;

const MUTE_COLUMNS: &str = "id, scope, value, until, reason, created_at, lifted_at";
/// Binds: scope, value, until, reason, now.
pub(super) static ADD_MUTE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "INSERT INTO mutes (scope, value, until, reason, created_at) VALUES ($1, $2, $3, $4, $5) \
         RETURNING {MUTE_COLUMNS}"
    )
});
/// Binds: 1 for mutes in force only (else 0), now.
pub(super) static LIST_MUTES: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {MUTE_COLUMNS} FROM mutes WHERE ($1 = 0 OR (until > $2 AND lifted_at IS NULL)) \
         ORDER BY id DESC LIMIT 500"
    )
});
/// Binds: now, id.
pub(super) const LIFT_MUTE: &str =
    "UPDATE mutes SET lifted_at = $1 WHERE id = $2 AND lifted_at IS NULL AND until > $1";
/// Binds: id, started_at, seen_at, ruleset_version, rules_dir, listen, version.
pub(super) const HEARTBEAT: &str = "INSERT INTO instances (id, started_at, seen_at, \
     ruleset_version, rules_dir, listen, version) VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at, \
     ruleset_version = excluded.ruleset_version";
/// Bind: seen since.
pub(super) const LIST_INSTANCES: &str = "SELECT id, started_at, seen_at, ruleset_version, \
     rules_dir, listen, version FROM instances WHERE seen_at >= $1 ORDER BY started_at, id";
