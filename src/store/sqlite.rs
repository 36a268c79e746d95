//! The embedded SQLite backend: one database file in WAL mode with `synchronous=FULL`, so a
//! commit is on disk before the call returns.

use super::{
    EventId, EventQuery, Inserted, Lease, Millis, NewEvent, Store, StoreError, StoredEvent,
    row::{EVENT_COLUMNS, EventRow},
};
use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Sqlite};
use std::str::FromStr;
use std::time::Duration;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// The SQLite store. Cheap to share: it is a connection pool.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens `sqlite://PATH` (creating the file and its folder on first run) and applies
    /// migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let path = options.get_filename();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_events(&self, batch: &[NewEvent]) -> Result<Vec<Inserted>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut results = Vec::with_capacity(batch.len());
        for new in batch {
            let row = EventRow::columns_of(new)?;
            let inserted: Option<(EventId,)> = sqlx::query_as(
                "INSERT INTO events (dedupe_key, received_at, source_addr, content_type, raw_body, \
                 decoded, warnings, call_id, customer_phone, outcome) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (dedupe_key) DO NOTHING RETURNING id",
            )
            .bind(&new.dedupe_key)
            .bind(new.received_at)
            .bind(&new.source_addr)
            .bind(&new.content_type)
            .bind(&new.raw_body)
            .bind(&row.decoded)
            .bind(&row.warnings)
            .bind(&new.event.call_id)
            .bind(&new.event.customer_phone)
            .bind(new.event.outcome.map(|o| o.as_str()))
            .fetch_optional(&mut *tx)
            .await?;
            let result = match inserted {
                Some((id,)) => Inserted {
                    id,
                    duplicate: false,
                },
                None => {
                    let (id,): (EventId,) =
                        sqlx::query_as("SELECT id FROM events WHERE dedupe_key = ?")
                            .bind(&new.dedupe_key)
                            .fetch_one(&mut *tx)
                            .await?;
                    Inserted {
                        id,
                        duplicate: true,
                    }
                }
            };
            results.push(result);
        }
        tx.commit().await?;
        Ok(results)
    }

    async fn get_event(&self, id: EventId) -> Result<Option<StoredEvent>, StoreError> {
        let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ?");
        let row: Option<EventRow> = sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(EventRow::into_stored).transpose()
    }

    async fn list_events(&self, query: &EventQuery) -> Result<Vec<StoredEvent>, StoreError> {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new(format!("SELECT {EVENT_COLUMNS} FROM events WHERE 1 = 1"));
        if let Some(call_id) = &query.call_id {
            qb.push(" AND call_id = ").push_bind(call_id);
        }
        if let Some(phone) = &query.customer_phone {
            qb.push(" AND customer_phone = ").push_bind(phone);
        }
        if let Some(since) = query.since {
            qb.push(" AND received_at >= ").push_bind(since);
        }
        if let Some(until) = query.until {
            qb.push(" AND received_at < ").push_bind(until);
        }
        if let Some(before) = query.before_id {
            qb.push(" AND id < ").push_bind(before);
        }
        qb.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(query.limit));
        let rows: Vec<EventRow> = qb.build_query_as().fetch_all(&self.pool).await?;
        rows.into_iter().map(EventRow::into_stored).collect()
    }

    async fn claim_events(
        &self,
        lease: &Lease,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        // `state <> 'processed'` is spelled as in the partial index so SQLite uses it.
        let sql = format!(
            "UPDATE events SET state = 'processing', lease_owner = ?, lease_until = ?, \
             attempts = attempts + 1 \
             WHERE id IN (SELECT id FROM events WHERE state <> 'processed' \
             AND (state = 'pending' OR lease_until < ?) ORDER BY id LIMIT ?) \
             RETURNING {EVENT_COLUMNS}"
        );
        let rows: Vec<EventRow> = sqlx::query_as(&sql)
            .bind(&lease.owner)
            .bind(lease.until)
            .bind(lease.now)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        let mut events = rows
            .into_iter()
            .map(EventRow::into_stored)
            .collect::<Result<Vec<_>, _>>()?;
        events.sort_by_key(|e| e.id);
        Ok(events)
    }

    async fn finish_event(
        &self,
        id: EventId,
        owner: &str,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE events SET state = 'processed', processed_at = ?, lease_owner = NULL, \
             lease_until = NULL, last_error = NULL \
             WHERE id = ? AND state = 'processing' AND lease_owner = ?",
        )
        .bind(now)
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
