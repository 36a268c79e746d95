//! Windowed counters and rule throttles (see docs/counters.md): counting a key's hits, an
//! event's ordinal as of its time, and the throttle windows a finished batch opens. Recording a
//! hit differs per backend: PostgreSQL numbers it under an advisory lock in the database,
//! SQLite in process (`sqlite_hits`).

use super::{Backend, Sql, Storable};
use crate::store::{EventId, Finished, JobStatus, Millis, RuleThrottle, StoreError};
use sqlx::{ColumnIndex, Encode, Executor, Pool, QueryBuilder, Transaction, Type};
use std::collections::{HashMap, HashSet};

/// The second a hit at `at_ms` is counted in.
pub(crate) fn bucket_of(at_ms: Millis) -> i64 {
    at_ms.div_euclid(1000)
}

/// Counts the hits of `key` at or after `since`: whole seconds from the buckets, the first
/// (partial) second from the raw hits. Binds: key, first second, key, since, end of first second.
const COUNT_HITS: &str = "SELECT CAST(\
     (SELECT COALESCE(SUM(hits), 0) FROM counter_buckets WHERE key = $1 AND second > $2) + \
     (SELECT COUNT(*) FROM counter_hits WHERE key = $3 AND at >= $4 AND at < $5) AS BIGINT)";

/// An event's own hit on a key: its place, and the window and ordinal it was recorded with
/// (both NULL for hits recorded before ordinals were kept). Binds: key, event id.
pub(crate) const HIT_OF_EVENT: &str =
    "SELECT seq, window_ms, ordinal FROM counter_hits WHERE key = $1 AND event_id = $2";

/// A key's hits within a window up to a place (raw hits: this is the rare path, an event
/// evaluated again). Binds: key, since, seq.
const COUNT_HITS_UP_TO: &str =
    "SELECT COUNT(*) FROM counter_hits WHERE key = $1 AND at >= $2 AND seq <= $3";

/// Hits of a key as an event that never hit it would have seen them (raw hits: history is
/// re-read rarely). Binds: key, since, until, the event's id.
const COUNT_HITS_AS_OF: &str = "SELECT COUNT(*) FROM counter_hits \
     WHERE key = $1 AND at >= $2 AND at <= $3 AND event_id < $4";

impl<DB: Backend> Sql<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    i64: Storable<DB>,
    String: Storable<DB>,
    usize: ColumnIndex<DB::Row>,
{
    /// The stored hits of `key` at or after `since` ([`COUNT_HITS`]).
    pub(crate) async fn count_hits(
        pool: &Pool<DB>,
        key: &str,
        since: Millis,
    ) -> Result<u64, StoreError> {
        let first = bucket_of(since);
        let (count,): (i64,) = sqlx::query_as(COUNT_HITS)
            .bind(key)
            .bind(first)
            .bind(key)
            .bind(since)
            .bind((first + 1) * 1000)
            .fetch_one(pool)
            .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// `Store::hit_ordinal_as_of` over the stored hits: the ordinal an event's hit got,
    /// recounted for another window up to its place, or for a key it never hit, one more than
    /// the earlier events' hits up to its time.
    pub(crate) async fn hit_ordinal_as_of(
        pool: &Pool<DB>,
        key: &str,
        event_id: EventId,
        at: Millis,
        window_ms: Millis,
    ) -> Result<u64, StoreError> {
        let since = at.saturating_sub(window_ms);
        let own: Option<(i64, Option<i64>, Option<i64>)> = sqlx::query_as(HIT_OF_EVENT)
            .bind(key)
            .bind(event_id)
            .fetch_optional(pool)
            .await?;
        let ordinal = match own {
            Some((_, Some(window), Some(ordinal))) if window == window_ms => ordinal,
            Some((seq, _, _)) => {
                let (count,): (i64,) = sqlx::query_as(COUNT_HITS_UP_TO)
                    .bind(key)
                    .bind(since)
                    .bind(seq)
                    .fetch_one(pool)
                    .await?;
                count
            }
            None => {
                let (count,): (i64,) = sqlx::query_as(COUNT_HITS_AS_OF)
                    .bind(key)
                    .bind(since)
                    .bind(at)
                    .bind(event_id)
                    .fetch_one(pool)
                    .await?;
                count + 1
            }
        };
        Ok(u64::try_from(ordinal).unwrap_or(0))
    }

    /// Applies the throttles of the rules that matched in `chunk` (finished events, in order):
    /// a rule whose window for the key is still open gets its jobs added to `held_back` as
    /// `suppressed`; otherwise its window opens. A rule already held back (muted) opens nothing.
    pub(crate) async fn apply_throttles(
        tx: &mut Transaction<'_, DB>,
        chunk: &[&Finished],
        held_back: &mut HashMap<(EventId, String), (JobStatus, String)>,
    ) -> Result<(), StoreError> {
        // Throttles apply in event order, so a later event of the batch sees an earlier one's:
        // round n opens the n-th request of each (rule, key) in one statement (keys are
        // independent of each other).
        let mut rounds: Vec<Vec<(EventId, &RuleThrottle)>> = Vec::new();
        let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
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
            // In one order in every transaction, so that processors opening windows of the same
            // keys at once wait for each other instead of deadlocking.
            round.sort_by(|(_, a), (_, b)| (&a.rule, &a.key).cmp(&(&b.rule, &b.key)));
            let requests: Vec<&RuleThrottle> = round.iter().map(|(_, t)| *t).collect();
            let opened: HashSet<(String, String)> =
                DB::build_query_as(&mut Self::open_throttles(&requests))
                    .fetch_all(&mut **tx)
                    .await?
                    .into_iter()
                    .collect();
            for (event_id, t) in round {
                if !opened.contains(&(t.rule.clone(), t.key.clone())) {
                    let note = format!(
                        "throttled: `{}` already acted for key `{}` within its window",
                        t.rule, t.key
                    );
                    held_back.insert((event_id, t.rule.clone()), (JobStatus::Suppressed, note));
                }
            }
        }
        Ok(())
    }

    /// Opens throttle windows, one per (rule, key) — no two alike in one call — unless one is
    /// open at the request's time: returns the (rule, key) of each window that was (re)opened,
    /// i.e. whose rule's actions go ahead.
    fn open_throttles<'a>(requests: &[&'a RuleThrottle]) -> QueryBuilder<'a, DB> {
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
}
