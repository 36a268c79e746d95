//! SQLite's windowed-counter hits, numbered in this process. The database file belongs to one
//! process, so a lock here serializes hits exactly, and each hit is stored by the next batch any
//! processor finishes, in that batch's transaction: before or with every evaluation that counted
//! it, durably, and without a write transaction per hit (which would queue behind intake's
//! commits on the one writer connection).

use super::sql::Sql;
use super::sql::counters::{HIT_OF_EVENT, bucket_of};
use super::{EventId, Millis, StoreError};
use sqlx::{QueryBuilder, Sqlite, SqlitePool, Transaction};
use std::collections::HashMap;
use tokio::sync::Mutex;

/// Rows per insert of pending hits: 6 parameters each stays far below SQLite's variable limit.
const ROWS_PER_STATEMENT: usize = 1024;

/// For a new hit: the place of the event's stored hit on the key (NULL when it has none), the
/// place of the key's last stored hit (0 for none), and the key's stored hits at or after
/// `since` (whole seconds from the buckets, the first second's raw hits), as
/// `Sql::count_hits` counts them. Binds: key, event id, the second `since` falls in, since,
/// the end of that second.
const HIT_CONTEXT: &str = "SELECT \
     (SELECT seq FROM counter_hits WHERE key = $1 AND event_id = $2), \
     (SELECT COALESCE(MAX(seq), 0) FROM counter_hits WHERE key = $1), \
     (SELECT COALESCE(SUM(hits), 0) FROM counter_buckets WHERE key = $1 AND second > $3) + \
     (SELECT COUNT(*) FROM counter_hits WHERE key = $1 AND at >= $4 AND at < $5)";

/// A hit numbered and not stored yet.
#[derive(Debug, Clone)]
pub(super) struct PendingHit {
    key: String,
    event_id: EventId,
    at: Millis,
    /// Its place among the key's hits: after every stored one.
    seq: i64,
    window_ms: Millis,
    ordinal: i64,
}

/// The hits numbered and not stored yet, per key, oldest first. Counting a key reads its stored
/// hits and these under one lock, and storing them commits and forgets them under the same
/// lock, so that no count sees a hit twice or misses it.
#[derive(Debug, Default)]
pub(super) struct PendingHits {
    by_key: Mutex<HashMap<String, Vec<PendingHit>>>,
}

impl PendingHits {
    /// `Store::record_hit`, reading stored hits through `reader`.
    pub(super) async fn record(
        &self,
        reader: &SqlitePool,
        key: &str,
        event_id: EventId,
        at: Millis,
        window_ms: Millis,
    ) -> Result<u64, StoreError> {
        let mut by_key = self.by_key.lock().await;
        let pending = by_key.get(key).map(Vec::as_slice).unwrap_or_default();
        if let Some(ordinal) =
            pending_ordinal(reader, pending, key, event_id, at, window_ms).await?
        {
            return Ok(ordinal);
        }
        // One read: whether an earlier batch stored its hit, the key's last place, and the
        // stored hits in the window.
        let since = at.saturating_sub(window_ms);
        let first = bucket_of(since);
        let (stored_seq, last_seq, stored): (Option<i64>, i64, i64) = sqlx::query_as(HIT_CONTEXT)
            .bind(key)
            .bind(event_id)
            .bind(first)
            .bind(since)
            .bind((first + 1) * 1000)
            .fetch_one(reader)
            .await?;
        if stored_seq.is_some() {
            // Stored by an earlier batch: the count it had.
            return Sql::hit_ordinal_as_of(reader, key, event_id, at, window_ms).await;
        }
        let seq = pending.last().map_or(last_seq, |last| last.seq) + 1;
        let pending_in_window = pending.iter().filter(|h| h.at >= since).count() as u64;
        let ordinal = u64::try_from(stored).unwrap_or(0) + pending_in_window + 1;
        by_key.entry(key.to_string()).or_default().push(PendingHit {
            key: key.to_string(),
            event_id,
            at,
            seq,
            window_ms,
            ordinal: i64::try_from(ordinal).unwrap_or(i64::MAX),
        });
        Ok(ordinal)
    }

    /// `Store::hit_ordinal_as_of`: a pending hit's, or as stored; for a key the event never hit,
    /// the pending hits of earlier events up to its time count too.
    pub(super) async fn ordinal_as_of(
        &self,
        reader: &SqlitePool,
        key: &str,
        event_id: EventId,
        at: Millis,
        window_ms: Millis,
    ) -> Result<u64, StoreError> {
        let by_key = self.by_key.lock().await;
        let pending = by_key.get(key).map(Vec::as_slice).unwrap_or_default();
        if let Some(ordinal) =
            pending_ordinal(reader, pending, key, event_id, at, window_ms).await?
        {
            return Ok(ordinal);
        }
        let stored: Option<(i64, Option<i64>, Option<i64>)> = sqlx::query_as(HIT_OF_EVENT)
            .bind(key)
            .bind(event_id)
            .fetch_optional(reader)
            .await?;
        let as_stored = Sql::hit_ordinal_as_of(reader, key, event_id, at, window_ms).await?;
        let earlier_pending = match stored {
            Some(_) => 0,
            None => {
                let since = at.saturating_sub(window_ms);
                pending
                    .iter()
                    .filter(|h| h.event_id < event_id && h.at >= since && h.at <= at)
                    .count() as u64
            }
        };
        Ok(as_stored + earlier_pending)
    }

    /// `Store::count_hits`: stored and pending.
    pub(super) async fn count(
        &self,
        reader: &SqlitePool,
        key: &str,
        since: Millis,
    ) -> Result<u64, StoreError> {
        let by_key = self.by_key.lock().await;
        let pending = by_key.get(key).map(Vec::as_slice).unwrap_or_default();
        let stored = Sql::count_hits(reader, key, since).await?;
        Ok(stored + pending.iter().filter(|h| h.at >= since).count() as u64)
    }

    /// Every pending hit, to store with a batch: all that were numbered before it finished, so
    /// every hit its evaluations counted.
    pub(super) async fn snapshot(&self) -> Vec<PendingHit> {
        self.by_key
            .lock()
            .await
            .values()
            .flatten()
            .cloned()
            .collect()
    }

    /// Stores `hits` (a [`Self::snapshot`]) in `tx`, commits it, and forgets them (they are
    /// stored now). A hit stored by an earlier batch is left as it is.
    pub(super) async fn commit_with(
        &self,
        mut tx: Transaction<'static, Sqlite>,
        hits: Vec<PendingHit>,
    ) -> Result<(), StoreError> {
        for chunk in hits.chunks(ROWS_PER_STATEMENT) {
            // The trigger of migration 0013 adds each inserted hit to its second's bucket.
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO counter_hits (key, event_id, at, seq, window_ms, ordinal) ",
            );
            qb.push_values(chunk, |mut row, hit| {
                row.push_bind(&hit.key)
                    .push_bind(hit.event_id)
                    .push_bind(hit.at)
                    .push_bind(hit.seq)
                    .push_bind(hit.window_ms)
                    .push_bind(hit.ordinal);
            });
            qb.push(" ON CONFLICT (key, event_id) DO NOTHING");
            qb.build().execute(&mut *tx).await?;
        }
        let mut by_key = self.by_key.lock().await;
        tx.commit().await?;
        for hit in &hits {
            if let Some(pending) = by_key.get_mut(&hit.key) {
                pending.retain(|h| h.event_id != hit.event_id);
                if pending.is_empty() {
                    by_key.remove(&hit.key);
                }
            }
        }
        Ok(())
    }
}

/// The ordinal of `event_id`'s pending hit on `key` within the window, if it has one: the one it
/// got (the same window), or the key's hits within the window up to its place (every stored
/// hit comes before it).
async fn pending_ordinal(
    reader: &SqlitePool,
    pending: &[PendingHit],
    key: &str,
    event_id: EventId,
    at: Millis,
    window_ms: Millis,
) -> Result<Option<u64>, StoreError> {
    let Some(hit) = pending.iter().find(|h| h.event_id == event_id) else {
        return Ok(None);
    };
    if hit.window_ms == window_ms {
        return Ok(Some(u64::try_from(hit.ordinal).unwrap_or(0)));
    }
    let since = at.saturating_sub(window_ms);
    let stored = Sql::count_hits(reader, key, since).await?;
    let before = pending
        .iter()
        .filter(|h| h.seq <= hit.seq && h.at >= since)
        .count() as u64;
    Ok(Some(stored + before))
}
