//! The store contract, run against every backend available (a real database file for SQLite).

use serde_json::json;
use std::sync::Arc;
use switchboard::event::{decode, dedupe_key, parse_body};
use switchboard::store::{
    self, EventQuery, Finished, JobKind, JobStatus, Lease, NewEvent, NewJob, ProcessingState,
    RuleThrottle, Store, TaskStatus,
};

/// Each backend under test, freshly created: a SQLite file, and a PostgreSQL database.
pub(crate) async fn backends() -> Vec<(&'static str, Arc<dyn Store>, tempfile::TempDir)> {
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

/// One-at-a-time forms of the store's batch writes, for readable tests.
#[async_trait::async_trait]
trait OneAtATime {
    async fn record_attempt(
        &self,
        job_id: i64,
        owner: &str,
        attempt: &switchboard::store::AttemptRecord,
        next: store::JobNext,
    ) -> Result<bool, store::StoreError>;
    async fn upsert_callback_task(
        &self,
        request: &switchboard::store::CallbackRequest,
        now: i64,
    ) -> Result<switchboard::store::UpsertedTask, store::StoreError>;
    async fn close_callback_tasks(
        &self,
        phone: &str,
        outcome: &str,
        now: i64,
    ) -> Result<u64, store::StoreError>;
}

#[async_trait::async_trait]
impl OneAtATime for Arc<dyn Store> {
    async fn record_attempt(
        &self,
        job_id: i64,
        owner: &str,
        attempt: &switchboard::store::AttemptRecord,
        next: store::JobNext,
    ) -> Result<bool, store::StoreError> {
        let batch = [switchboard::store::FinishedAttempt {
            job_id,
            attempt: attempt.clone(),
            next,
        }];
        Ok(self.record_attempts(owner, &batch).await?[0])
    }

    async fn upsert_callback_task(
        &self,
        request: &switchboard::store::CallbackRequest,
        now: i64,
    ) -> Result<switchboard::store::UpsertedTask, store::StoreError> {
        let requests = std::slice::from_ref(request);
        Ok(self.upsert_callback_tasks(requests, now).await?[0])
    }

    async fn close_callback_tasks(
        &self,
        phone: &str,
        outcome: &str,
        now: i64,
    ) -> Result<u64, store::StoreError> {
        let closes = [(phone.to_string(), outcome.to_string())];
        Ok(self.close_callback_tasks_many(&closes, now).await?[0])
    }
}

/// A processing result with nothing in it but the event id.
fn done(event_id: i64) -> Finished {
    Finished {
        event_id,
        ruleset_version: "v1".into(),
        record: Default::default(),
        jobs: Vec::new(),
        throttles: Vec::new(),
    }
}

fn done_all(ids: &[i64]) -> Vec<Finished> {
    ids.iter().copied().map(done).collect()
}

/// Stores a batch and returns the ids.
async fn insert_ids(store: &Arc<dyn Store>, batch: &[NewEvent]) -> Vec<i64> {
    let inserted = store.insert_events(batch).await.unwrap();
    inserted.iter().map(|i| i.id).collect()
}

pub(crate) fn new_event(body: serde_json::Value, received_at: i64) -> NewEvent {
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
        let ids: Vec<i64> = insert_ids(&store, &batch).await;
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
        let finished = store
            .finish_events(&done_all(&ids[..1]), "a", 10_100)
            .await
            .unwrap();
        assert_eq!(finished, ids[..1], "{name}");
        let c = store.claim_events(&lease("c", 11_001), 10).await.unwrap();
        let claimed: Vec<i64> = c.iter().map(|e| e.id).collect();
        assert_eq!(claimed, ids[1..3], "{name}");
        assert_eq!(c[0].attempts, 2, "{name}");
        assert_eq!(c[0].state, ProcessingState::Processing, "{name}");
        // `a` comes back too late: its finish is refused, `c`'s goes through, once.
        let late = store
            .finish_events(&done_all(&ids[1..3]), "a", 11_002)
            .await
            .unwrap();
        assert!(late.is_empty(), "{name}");
        let finished = store
            .finish_events(&done_all(&ids[1..2]), "c", 11_003)
            .await
            .unwrap();
        assert_eq!(finished, ids[1..2], "{name}");
        let twice = store
            .finish_events(&done_all(&ids[1..2]), "c", 11_004)
            .await
            .unwrap();
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
        let ids: Vec<i64> = insert_ids(&store, &batch).await;
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

#[tokio::test]
async fn finishing_records_evaluation_counters_and_jobs_once() {
    for (name, store, _dir) in backends().await {
        let batch: Vec<_> = (0..3)
            .map(|i| new_event(json!({"k": i}), 100 + i))
            .collect();
        let ids: Vec<i64> = insert_ids(&store, &batch).await;
        let lease = Lease {
            owner: "p".into(),
            now: 1_000,
            until: 2_000,
        };
        assert_eq!(
            store.claim_events(&lease, 10).await.unwrap().len(),
            3,
            "{name}"
        );
        let job = |rule: &str, index: u32| NewJob {
            rule: rule.into(),
            action_index: index,
            kind: JobKind::Email,
            spec: json!({"kind": "email", "to": ["ops@example.com"], "subject": "放弃排队"}),
        };
        // Hits are recorded while an event is evaluated, before it is finished; an event
        // counted twice under one key (two rules) has one hit.
        for &id in &ids {
            for _ in 0..2 {
                store
                    .record_hit("abandoned", id, 1_000 + id, 60_000)
                    .await
                    .unwrap();
            }
        }
        let results: Vec<Finished> = ids
            .iter()
            .map(|&id| Finished {
                jobs: vec![job("rules/a.rhai", 0), job("rules/a.rhai", 1), job("b", 0)],
                ..done(id)
            })
            .collect();
        let finished = store.finish_events(&results, "p", 1_500).await.unwrap();
        assert_eq!(finished, ids, "{name}");
        // Finishing again (a processor that lost its lease) writes nothing more.
        assert!(
            store
                .finish_events(&results, "p", 1_600)
                .await
                .unwrap()
                .is_empty(),
            "{name}"
        );

        let evaluation = store.get_evaluation(ids[1]).await.unwrap().unwrap();
        assert_eq!(evaluation.ruleset_version.as_deref(), Some("v1"), "{name}");
        assert_eq!(evaluation.record, Some(Default::default()), "{name}");
        assert_eq!(evaluation.unreadable, None, "{name}");
        assert_eq!(evaluation.processed_at, 1_500, "{name}");
        let jobs = store.list_event_jobs(ids[1]).await.unwrap();
        let keys: Vec<&str> = jobs.iter().map(|j| j.idempotency_key.as_str()).collect();
        let expected = [
            format!("{}:0:rules/a.rhai", ids[1]),
            format!("{}:1:rules/a.rhai", ids[1]),
            format!("{}:0:b", ids[1]),
        ];
        assert_eq!(keys, expected, "{name}");
        assert_eq!(jobs[0].spec["subject"], "放弃排队", "{name}");
        assert_eq!(jobs[0].status, JobStatus::Pending, "{name}");
        // One hit per key and event, however often the evaluation counted it.
        assert_eq!(store.count_hits("abandoned", 0).await.unwrap(), 3, "{name}");
        assert_eq!(
            store.count_hits("abandoned", 1_000 + ids[1]).await.unwrap(),
            2,
            "{name}"
        );
        assert_eq!(store.count_hits("other", 0).await.unwrap(), 0, "{name}");
        assert!(
            store.get_evaluation(ids[0] + 100).await.unwrap().is_none(),
            "{name}"
        );
    }
}

#[tokio::test]
async fn windowed_counts_are_exact_across_second_buckets() {
    for (name, store, _dir) in backends().await {
        let batch: Vec<_> = (0..6).map(|i| new_event(json!({"w": i}), i)).collect();
        let ids: Vec<i64> = insert_ids(&store, &batch).await;
        let lease = Lease {
            owner: "p".into(),
            now: 1,
            until: i64::MAX,
        };
        assert_eq!(
            store.claim_events(&lease, 10).await.unwrap().len(),
            6,
            "{name}"
        );
        // Hits at 10.100 s, 10.900 s, 11.500 s, 12.000 s, 14.999 s and -0.5 s.
        let times = [10_100, 10_900, 11_500, 12_000, 14_999, -500];
        for (&id, at) in ids.iter().zip(times) {
            store.record_hit("k", id, at, 60_000).await.unwrap();
        }
        for (since, expected) in [
            (i64::MIN / 2, 6),
            (-500, 6),
            (-499, 5),
            (10_100, 5),
            (10_101, 4),
            (10_900, 4),
            (10_901, 3),
            (12_000, 2),
            (12_001, 1),
            (15_000, 0),
        ] {
            assert_eq!(
                store.count_hits("k", since).await.unwrap(),
                expected,
                "{name}: since {since}"
            );
        }
    }
}

#[tokio::test]
async fn throttles_suppress_repeats_within_the_window() {
    for (name, store, _dir) in backends().await {
        let batch: Vec<_> = (0..5).map(|i| new_event(json!({"t": i}), i)).collect();
        let ids = insert_ids(&store, &batch).await;
        let lease = Lease {
            owner: "p".into(),
            now: 1,
            until: i64::MAX,
        };
        assert_eq!(
            store.claim_events(&lease, 10).await.unwrap().len(),
            5,
            "{name}"
        );
        let throttled = |id: i64, key: &str, at: i64| Finished {
            jobs: vec![NewJob {
                rule: "r".into(),
                action_index: 0,
                kind: JobKind::CallbackTask,
                spec: json!({"kind": "callback_task", "phone": key}),
            }],
            throttles: vec![RuleThrottle {
                rule: "r".into(),
                key: key.into(),
                window_ms: 1_000,
                at,
            }],
            ..done(id)
        };
        // Two events in one batch: the second is inside the first's window.
        let first = vec![throttled(ids[0], "k", 100), throttled(ids[1], "k", 500)];
        store.finish_events(&first, "p", 1).await.unwrap();
        // Later batches: another key; the same key after the window closed; and inside the new one.
        let later = vec![
            throttled(ids[2], "other", 600),
            throttled(ids[3], "k", 1_100),
            throttled(ids[4], "k", 1_500),
        ];
        store.finish_events(&later, "p", 1).await.unwrap();
        let mut statuses = Vec::new();
        for id in &ids {
            let jobs = store.list_event_jobs(*id).await.unwrap();
            statuses.push(jobs[0].status.as_str());
            if jobs[0].status == JobStatus::Suppressed {
                assert!(
                    jobs[0].note.as_deref().unwrap().contains("throttled"),
                    "{name}"
                );
            }
        }
        assert_eq!(
            statuses,
            ["pending", "suppressed", "pending", "pending", "suppressed"],
            "{name}"
        );
    }
}

#[tokio::test]
async fn jobs_are_claimed_when_due_and_attempts_recorded_once() {
    use switchboard::store::{AttemptRecord, JobNext};
    for (name, store, _dir) in backends().await {
        let batch: Vec<_> = (0..2).map(|i| new_event(json!({"j": i}), i)).collect();
        let ids = insert_ids(&store, &batch).await;
        let lease = |owner: &str, now: i64| Lease {
            owner: owner.into(),
            now,
            until: now + 1_000,
        };
        store.claim_events(&lease("p", 1), 10).await.unwrap();
        let job = |kind: &str, index: u32| NewJob {
            rule: "r".into(),
            action_index: index,
            kind: kind.parse().unwrap(),
            spec: json!({"kind": kind}),
        };
        let results = vec![
            Finished {
                jobs: vec![job("webhook", 0), job("email", 1)],
                ..done(ids[0])
            },
            Finished {
                jobs: vec![job("webhook", 0)],
                ..done(ids[1])
            },
        ];
        store.finish_events(&results, "p", 1).await.unwrap();

        let claimed = store
            .claim_jobs(&lease("w1", 10), JobKind::Webhook, 10)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 2, "{name}");
        assert!(
            claimed
                .iter()
                .all(|j| j.kind == JobKind::Webhook && j.attempts == 0),
            "{name}"
        );
        assert!(
            store
                .claim_jobs(&lease("w2", 11), JobKind::Webhook, 10)
                .await
                .unwrap()
                .is_empty(),
            "leased: {name}"
        );
        let attempt = |outcome: &str, code| AttemptRecord {
            started_at: 20,
            duration_ms: 5,
            outcome: outcome.into(),
            code,
            detail: Some("HTTP 503".into()),
        };
        // First job: fails, due again at 500; a stale worker cannot record it.
        let (a, b) = (claimed[0].id, claimed[1].id);
        assert!(
            !store
                .record_attempt(
                    a,
                    "w2",
                    &attempt("transient", Some(503)),
                    JobNext::RetryAt(500)
                )
                .await
                .unwrap(),
            "{name}"
        );
        assert!(
            store
                .record_attempt(
                    a,
                    "w1",
                    &attempt("transient", Some(503)),
                    JobNext::RetryAt(500)
                )
                .await
                .unwrap(),
            "{name}"
        );
        assert!(
            store
                .record_attempt(b, "w1", &attempt("success", Some(204)), JobNext::Done)
                .await
                .unwrap(),
            "{name}"
        );
        assert!(
            !store
                .record_attempt(b, "w1", &attempt("success", Some(204)), JobNext::Done)
                .await
                .unwrap(),
            "recorded twice: {name}"
        );
        assert!(
            store
                .claim_jobs(&lease("w2", 499), JobKind::Webhook, 10)
                .await
                .unwrap()
                .is_empty(),
            "not due yet: {name}"
        );
        let again = store
            .claim_jobs(&lease("w2", 500), JobKind::Webhook, 10)
            .await
            .unwrap();
        assert_eq!(
            again
                .iter()
                .map(|j| (j.id, j.attempts, j.status.as_str()))
                .collect::<Vec<_>>(),
            [(a, 1, "retrying")],
            "{name}"
        );
        assert!(
            store
                .record_attempt(a, "w2", &attempt("permanent", Some(404)), JobNext::Dead)
                .await
                .unwrap(),
            "{name}"
        );

        let jobs = store.list_event_jobs(ids[0]).await.unwrap();
        let webhook = jobs.iter().find(|j| j.id == a).unwrap();
        assert_eq!(
            (
                webhook.status.as_str(),
                webhook.attempts,
                webhook.finished_at
            ),
            ("dead", 2, Some(25)),
            "{name}"
        );
        let attempts = store.list_job_attempts(a).await.unwrap();
        let summary: Vec<_> = attempts
            .iter()
            .map(|t| (t.attempt, t.record.outcome.as_str(), t.record.code))
            .collect();
        assert_eq!(
            summary,
            [(1, "transient", Some(503)), (2, "permanent", Some(404))],
            "{name}"
        );
        // Other kinds are claimed separately: one dead webhook target holds up no email.
        assert_eq!(
            store
                .claim_jobs(&lease("m", 600), JobKind::Email, 10)
                .await
                .unwrap()
                .len(),
            1,
            "{name}"
        );
        // A worker that died: its lease expires and another takes the job.
        assert_eq!(
            store
                .claim_jobs(&lease("m2", 1_601), JobKind::Email, 10)
                .await
                .unwrap()
                .len(),
            1,
            "{name}"
        );
    }
}

#[tokio::test]
async fn one_open_callback_task_per_phone_merging_requests() {
    use switchboard::store::CallbackRequest;
    for (name, store, _dir) in backends().await {
        let batch: Vec<_> = (0..3).map(|i| new_event(json!({"c": i}), i)).collect();
        let ids = insert_ids(&store, &batch).await;
        let request = |event_id: i64, rule: &str, priority: i64, due_at: i64| CallbackRequest {
            phone: "13800138000".into(),
            customer_name: (priority == 1).then(|| "山田".to_string()),
            reason: format!("{rule} fired"),
            event_id,
            rule: rule.into(),
            priority,
            due_at,
            dispatch: true,
        };
        let first = store
            .upsert_callback_task(&request(ids[0], "a", 1, 5_000), 100)
            .await
            .unwrap();
        let merged = store
            .upsert_callback_task(&request(ids[1], "b", 3, 2_000), 200)
            .await
            .unwrap();
        let repeated = store
            .upsert_callback_task(&request(ids[1], "b", 3, 2_000), 300)
            .await
            .unwrap();
        assert_eq!((merged.id, repeated.id), (first.id, first.id), "{name}");
        assert_eq!(
            (first.created, merged.created, repeated.created),
            (true, false, false),
            "{name}"
        );
        let repeated = store.get_callback_task(first.id).await.unwrap().unwrap();
        assert_eq!(
            repeated.reasons.as_array().unwrap().len(),
            2,
            "a retried job adds no reason: {name}"
        );
        assert_eq!((repeated.priority, repeated.due_at), (3, 2_000), "{name}");
        assert_eq!(repeated.customer_name.as_deref(), Some("山田"), "{name}");
        let other = CallbackRequest {
            phone: "15000001111".into(),
            ..request(ids[2], "a", 1, 9_000)
        };
        let other = store.upsert_callback_task(&other, 300).await.unwrap();
        assert_ne!(other.id, first.id, "{name}");

        let open = store
            .list_callback_tasks(&switchboard::store::TaskQuery {
                status: Some(TaskStatus::Open),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            open.iter().map(|t| t.id).collect::<Vec<_>>(),
            [first.id, other.id],
            "most urgent first: {name}"
        );
        assert_eq!(
            store
                .close_callback_tasks("13800138000", "reached", 400)
                .await
                .unwrap(),
            1,
            "{name}"
        );
        assert_eq!(
            store
                .close_callback_tasks("13800138000", "reached", 401)
                .await
                .unwrap(),
            0,
            "{name}"
        );
        let done = store
            .list_callback_tasks(&switchboard::store::TaskQuery {
                status: Some(TaskStatus::Done),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            (done[0].id, done[0].outcome.as_deref(), done[0].closed_at),
            (first.id, Some("reached"), Some(400)),
            "{name}"
        );
        // After the close, a new request opens a new task.
        let again = store
            .upsert_callback_task(&request(ids[2], "a", 1, 9_000), 500)
            .await
            .unwrap();
        assert_ne!(again.id, first.id, "{name}");
        assert_eq!(
            store
                .list_callback_tasks(&switchboard::store::TaskQuery {
                    limit: 10,
                    ..Default::default()
                })
                .await
                .unwrap()
                .len(),
            3,
            "{name}"
        );
        // Each created task was queued for dispatch once, in its own transaction; merges were not.
        let mut dispatched: Vec<i64> = store
            .list_jobs(None, None, 100)
            .await
            .unwrap()
            .into_iter()
            .filter(|j| j.kind == JobKind::CallbackDispatch)
            .map(|j| j.spec["task_id"].as_i64().unwrap())
            .collect();
        dispatched.sort();
        let mut created = vec![first.id, other.id, again.id];
        created.sort();
        assert_eq!(dispatched, created, "{name}");
    }
}

#[tokio::test]
async fn pruning_drops_old_counter_hits_and_closed_throttles_only() {
    for (name, store, _dir) in backends().await {
        let batch: Vec<_> = (0..4).map(|i| new_event(json!({"p": i}), i)).collect();
        let ids = insert_ids(&store, &batch).await;
        let lease = Lease {
            owner: "p".into(),
            now: 1,
            until: i64::MAX,
        };
        store.claim_events(&lease, 10).await.unwrap();
        // Hits at 1 s, 2 s, 50 s and 60 s; a throttle window open until 31 s, another until 101 s.
        let times = [1_000, 2_000, 50_000, 60_000];
        for (&id, at) in ids.iter().zip(times) {
            store.record_hit("k", id, at, 60_000).await.unwrap();
        }
        let results: Vec<Finished> = ids
            .iter()
            .zip(times)
            .enumerate()
            .map(|(i, (&id, at))| Finished {
                throttles: if i % 2 == 0 {
                    vec![RuleThrottle {
                        rule: format!("r{i}"),
                        key: "t".into(),
                        window_ms: 30_000,
                        at: at + 1,
                    }]
                } else {
                    Vec::new()
                },
                ..done(id)
            })
            .collect();
        store.finish_events(&results, "p", 1).await.unwrap();
        // Keep hits from 10 s on; now is 40 s: the first window (until 31 s) has closed.
        let mut pruned = 0;
        loop {
            let n = store.prune(10_000, 40_000, 1).await.unwrap();
            pruned += n;
            if n == 0 {
                break;
            }
        }
        // Two hits, their two buckets, one throttle.
        assert_eq!(pruned, 5, "{name}");
        assert_eq!(store.count_hits("k", 0).await.unwrap(), 2, "{name}");
        assert_eq!(store.count_hits("k", 55_000).await.unwrap(), 1, "{name}");

        // An instance not seen for a week goes; one seen since stays.
        let week = 7 * 24 * 3600 * 1000;
        for (id, seen_at) in [("gone", 1_000), ("here", week + 5_000)] {
            let instance = switchboard::store::InstanceInfo {
                id: id.into(),
                started_at: 0,
                seen_at,
                ruleset_version: "v".into(),
                rules_dir: "rules".into(),
                listen: "127.0.0.1:1".into(),
                version: "0".into(),
            };
            store.heartbeat(&instance).await.unwrap();
        }
        while store.prune(10_000, week + 10_000, 100).await.unwrap() > 0 {}
        let left: Vec<String> = store
            .list_instances(0)
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(left, ["here"], "{name}");
    }
}
