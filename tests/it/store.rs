//! The store contract, run against every backend available (a real database file for SQLite).

use serde_json::json;
use std::sync::Arc;
use switchboard::event::{decode, dedupe_key, parse_body};
use switchboard::store::{self, EventQuery, Lease, NewEvent, ProcessingState, Store};

/// Each backend under test, freshly created: a SQLite file, and a PostgreSQL database.
async fn backends() -> Vec<(&'static str, Arc<dyn Store>, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let mut backends = vec![("sqlite", store::open(&url).await.unwrap(), dir)];
    if let Some(url) = crate::util::postgres_database().await {
        backends.push((
            "postgres",
            store::open(&url).await.unwrap(),
            tempfile::tempdir().unwrap(),
        ));
    }
    backends
}

fn new_event(body: serde_json::Value, received_at: i64) -> NewEvent {
    let text = body.to_string();
    let parsed = parse_body(text.as_bytes(), None).unwrap();
    let decoded = decode(&parsed);
    NewEvent {
        dedupe_key: dedupe_key(&parsed.fields),
        received_at,
        source_addr: Some("127.0.0.1:1".into()),
        content_type: None,
        raw_body: text.into_bytes(),
        event: decoded.event,
        warnings: decoded.warnings,
    }
}

#[tokio::test]
async fn insert_dedupes_within_and_across_batches() {
    for (name, store, _dir) in backends().await {
        let a = new_event(json!({"call_id": "a"}), 1);
        let b = new_event(json!({"call_id": "b", "queue_time": "x"}), 2);
        let first = store
            .insert_events(&[a.clone(), b.clone(), a.clone()])
            .await
            .unwrap();
        assert!(!first[0].duplicate && !first[1].duplicate, "{name}");
        assert_eq!(first[2].id, first[0].id, "{name}");
        assert!(first[2].duplicate, "{name}");
        let again = store.insert_events(&[b]).await.unwrap();
        assert_eq!(again[0].id, first[1].id, "{name}");
        assert!(again[0].duplicate, "{name}");
        let stored = store.get_event(first[1].id).await.unwrap().unwrap();
        assert_eq!(stored.event.call_id.as_deref(), Some("b"), "{name}");
        assert_eq!(stored.warnings.len(), 1, "{name}");
        assert_eq!(stored.state, ProcessingState::Pending, "{name}");
        assert!(
            store.get_event(first[1].id + 100).await.unwrap().is_none(),
            "{name}"
        );
    }
}

#[tokio::test]
async fn leases_hand_events_to_one_processor_until_they_expire() {
    for (name, store, _dir) in backends().await {
        let batch: Vec<_> = (0..5).map(|i| new_event(json!({"n": i}), i)).collect();
        let ids: Vec<i64> = store
            .insert_events(&batch)
            .await
            .unwrap()
            .iter()
            .map(|i| i.id)
            .collect();
        let lease = |owner: &str, now: i64| Lease {
            owner: owner.into(),
            now,
            until: now + 1_000,
        };

        let a = store.claim_events(&lease("a", 10_000), 3).await.unwrap();
        assert_eq!(
            a.iter().map(|e| e.id).collect::<Vec<_>>(),
            ids[..3],
            "{name}"
        );
        let b = store.claim_events(&lease("b", 10_001), 10).await.unwrap();
        assert_eq!(
            b.iter().map(|e| e.id).collect::<Vec<_>>(),
            ids[3..],
            "{name}"
        );
        assert!(
            store
                .claim_events(&lease("c", 10_002), 10)
                .await
                .unwrap()
                .is_empty(),
            "{name}"
        );

        // `a` finishes one, then dies; after its lease expires `c` takes the other two.
        let finished = store.finish_events(&ids[..1], "a", 10_100).await.unwrap();
        assert_eq!(finished, ids[..1], "{name}");
        let c = store.claim_events(&lease("c", 11_001), 10).await.unwrap();
        let claimed: Vec<i64> = c.iter().map(|e| e.id).collect();
        assert_eq!(claimed, ids[1..3], "{name}");
        assert_eq!(c[0].attempts, 2, "{name}");
        assert_eq!(c[0].state, ProcessingState::Processing, "{name}");
        // `a` comes back too late: its finish is refused, `c`'s goes through, once.
        let late = store.finish_events(&ids[1..3], "a", 11_002).await.unwrap();
        assert!(late.is_empty(), "{name}");
        let finished = store.finish_events(&ids[1..2], "c", 11_003).await.unwrap();
        assert_eq!(finished, ids[1..2], "{name}");
        let twice = store.finish_events(&ids[1..2], "c", 11_004).await.unwrap();
        assert!(twice.is_empty(), "finishing twice: {name}");
        let done = store.get_event(ids[1]).await.unwrap().unwrap();
        assert_eq!(done.state, ProcessingState::Processed, "{name}");
        assert_eq!(done.processed_at, Some(11_003), "{name}");
    }
}

#[tokio::test]
async fn list_filters_combine() {
    for (name, store, _dir) in backends().await {
        let batch = vec![
            new_event(json!({"call_id": "x", "customer_phone": "1"}), 100),
            new_event(json!({"call_id": "x", "customer_phone": "2"}), 200),
            new_event(json!({"call_id": "y", "customer_phone": "1"}), 300),
        ];
        let ids: Vec<i64> = store
            .insert_events(&batch)
            .await
            .unwrap()
            .iter()
            .map(|i| i.id)
            .collect();
        let list = |q: EventQuery| {
            let store = store.clone();
            async move {
                store
                    .list_events(&q)
                    .await
                    .unwrap()
                    .iter()
                    .map(|e| e.id)
                    .collect::<Vec<_>>()
            }
        };
        let all = EventQuery {
            limit: 10,
            ..Default::default()
        };
        assert_eq!(
            list(all.clone()).await,
            vec![ids[2], ids[1], ids[0]],
            "{name}"
        );
        assert_eq!(
            list(EventQuery {
                call_id: Some("x".into()),
                ..all.clone()
            })
            .await,
            vec![ids[1], ids[0]],
            "{name}"
        );
        assert_eq!(
            list(EventQuery {
                customer_phone: Some("1".into()),
                ..all.clone()
            })
            .await,
            vec![ids[2], ids[0]],
            "{name}"
        );
        assert_eq!(
            list(EventQuery {
                since: Some(200),
                until: Some(300),
                ..all.clone()
            })
            .await,
            vec![ids[1]],
            "{name}"
        );
        assert_eq!(
            list(EventQuery {
                before_id: Some(ids[2]),
                limit: 1,
                ..all.clone()
            })
            .await,
            vec![ids[1]],
            "{name}"
        );
    }
}
