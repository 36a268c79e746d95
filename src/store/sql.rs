//! SQL shared by both backends: the pieces whose text and binds are the same in SQLite and
//! PostgreSQL, built with `QueryBuilder` (which writes each backend's placeholders).

use super::row::JsonColumns;
use super::{EventId, EventQuery, Inserted, NewEvent, StoreError};
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
