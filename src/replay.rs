//! Replay and what-if over stored events: reads them from the store, evaluates them (on a
//! blocking thread) against the running rules (replay) or a candidate rules directory (what-if),
//! and reports; a real replay queues new jobs under keys that never collide with the first run.
//! Events whose stored row cannot be read back are skipped and named in the answer.

use crate::evaluation::{HistoricCounters, finished, on_evaluation_thread};
use crate::rules::whatif::{Comparison, EventRef, Report};
use crate::rules::{CompileError, EvalContext, Evaluation, RuleEnv, RuleSet, RuleSettings, Rules};
use crate::store::{EvaluationRecord, EventQuery, Store, StoreError, StoredEvent, Unreadable};
use crate::time::{Millis, now_millis};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a replay or what-if could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no event with id {0}")]
    NoSuchEvent(i64),
    #[error("candidate rules directory `{0}` does not exist or is not a directory")]
    NoRulesDir(PathBuf),
    #[error("evaluation failed: {0}")]
    Evaluation(String),
    #[error("event {} cannot be evaluated: {}", .0.id, .0.reason)]
    Unreadable(Unreadable),
}

/// Stored events received in `[since, until)`, newest first, at most `limit`.
async fn events_between(
    store: &dyn Store,
    since: Millis,
    until: Millis,
    limit: u32,
    mut each_page: impl FnMut(Vec<StoredEvent>),
) -> Result<bool, StoreError> {
    let mut before_id = None;
    let mut left = limit;
    loop {
        let want = left.min(500);
        if want == 0 {
            // The limit was reached: there may be more.
            return Ok(true);
        }
        let page = store
            .list_events(&EventQuery {
                since: Some(since),
                until: Some(until),
                before_id,
                limit: want,
                ..Default::default()
            })
            .await?;
        let n = u32::try_from(page.len()).unwrap_or(u32::MAX);
        before_id = page.last().map(|e| e.id);
        if n > 0 {
            each_page(page);
        }
        left = left.saturating_sub(n);
        if n < want {
            return Ok(false);
        }
    }
}

/// Splits events into those that can be evaluated and those whose stored row could not be read
/// back.
fn readable(events: Vec<StoredEvent>) -> (Vec<StoredEvent>, Vec<Unreadable>) {
    let mut unreadable = Vec::new();
    let events = events
        .into_iter()
        .filter(|event| match event.readable() {
            Ok(_) => true,
            Err(skipped) => {
                unreadable.push(skipped);
                false
            }
        })
        .collect();
    (events, unreadable)
}

/// Evaluates events (readable ones only: see [`readable`]) against `ruleset` on a blocking
/// thread; windowed counters count what each event saw when it came in (the hits of earlier
/// events), and no hit is stored.
async fn evaluate_all(
    store: Arc<dyn Store>,
    ruleset: Arc<RuleSet>,
    events: Vec<StoredEvent>,
) -> Result<Vec<(StoredEvent, Evaluation)>, ReplayError> {
    let handle = tokio::runtime::Handle::current();
    on_evaluation_thread(move || {
        events
            .into_iter()
            .map(|event| {
                let counters = Arc::new(HistoricCounters {
                    store: store.clone(),
                    runtime: handle.clone(),
                    event_id: event.id,
                });
                let ctx = EvalContext {
                    counters,
                    at_ms: event.received_at,
                    record_stats: false,
                    prefilter: true,
                };
                let evaluation = ruleset.evaluate(&event.event, &ctx);
                (event, evaluation)
            })
            .collect()
    })
    .await
    .map_err(|e| ReplayError::Evaluation(e.to_string()))
}

/// The result of replaying one event.
#[derive(Debug, Serialize)]
pub(crate) struct Replayed {
    pub(crate) event_id: i64,
    pub(crate) dry_run: bool,
    /// The evaluation against the running rules.
    pub(crate) evaluation: Evaluation,
    /// The actions it asks for (kind, rule, action).
    pub(crate) actions: Vec<serde_json::Value>,
    /// A real replay's run id: its jobs' keys end with it.
    pub(crate) run: Option<String>,
    /// Jobs queued (0 for a dry run).
    pub(crate) queued: u64,
}

/// Replays events against the running rules: a dry run reports only; a real run queues the
/// actions as new jobs (run id `replay-<unix ms>`). Events that cannot be read back are left
/// out: see [`readable`].
pub(crate) async fn replay(
    store: Arc<dyn Store>,
    rules: &Rules,
    events: Vec<StoredEvent>,
    dry_run: bool,
) -> Result<Vec<Replayed>, ReplayError> {
    let run = format!("replay-{}", now_millis());
    let (events, _) = readable(events);
    let evaluated = evaluate_all(store.clone(), rules.current(), events).await?;
    let mut replayed = Vec::with_capacity(evaluated.len());
    for (event, evaluation) in evaluated {
        let record = finished(event.id, event.received_at, &evaluation)
            .map_err(|e| ReplayError::Evaluation(format!("event {}: {e}", event.id)))?;
        let actions = record
            .jobs
            .iter()
            .map(|j| serde_json::json!({ "rule": j.rule, "kind": j.kind, "action": j.spec }))
            .collect();
        let queued = if dry_run {
            0
        } else {
            store
                .insert_replay_jobs(event.id, &run, &record.jobs, now_millis())
                .await?
        };
        replayed.push(Replayed {
            event_id: event.id,
            dry_run,
            evaluation,
            actions,
            run: (!dry_run).then(|| run.clone()),
            queued,
        });
    }
    Ok(replayed)
}

/// Replays one stored event.
pub(crate) async fn replay_event(
    store: Arc<dyn Store>,
    rules: &Rules,
    id: i64,
    dry_run: bool,
) -> Result<Replayed, ReplayError> {
    let event = store
        .get_event(id)
        .await?
        .ok_or(ReplayError::NoSuchEvent(id))?;
    event.readable().map_err(ReplayError::Unreadable)?;
    let mut replayed = replay(store, rules, vec![event], dry_run).await?;
    replayed.pop().ok_or(ReplayError::NoSuchEvent(id))
}

/// A replay of a time range.
#[derive(Debug)]
pub(crate) struct RangeReplay {
    pub(crate) replayed: Vec<Replayed>,
    /// The limit cut the range short.
    pub(crate) truncated: bool,
    /// Events of the range that could not be read back, so were not replayed.
    pub(crate) unreadable: Vec<Unreadable>,
}

/// Replays the events received in `[since, until)` (at most `limit`, newest first); also says
/// whether the limit cut the range short, and which events could not be read back.
pub(crate) async fn replay_range(
    store: Arc<dyn Store>,
    rules: &Rules,
    since: Millis,
    until: Millis,
    limit: u32,
    dry_run: bool,
) -> Result<RangeReplay, ReplayError> {
    let mut events = Vec::new();
    let truncated =
        events_between(&*store, since, until, limit, |page| events.extend(page)).await?;
    let (events, unreadable) = readable(events);
    Ok(RangeReplay {
        replayed: replay(store, rules, events, dry_run).await?,
        truncated,
        unreadable,
    })
}

/// A what-if run: which stored events, and the candidate rules.
#[derive(Debug, Clone)]
pub struct WhatIf {
    pub rules_dir: PathBuf,
    pub settings: RuleSettings,
    /// The limits the candidate rules run under (the running rules' own).
    pub limits: crate::rules::RuleLimits,
    pub since: Millis,
    pub until: Millis,
    /// Most events compared.
    pub limit: u32,
    /// Example events per rule and kind of change.
    pub examples: usize,
}

/// The what-if report with what was compared.
#[derive(Debug, Serialize)]
pub struct WhatIfReport {
    pub rules_dir: String,
    pub candidate_version: String,
    /// Candidate rule files that do not compile (they are left out of the comparison).
    pub candidate_errors: Vec<CompileError>,
    pub since: Millis,
    pub until: Millis,
    /// The event limit cut the range short (the newest events were compared).
    pub truncated: bool,
    /// Events of the range left out because their stored row could not be read back.
    pub unreadable: Vec<Unreadable>,
    #[serde(flatten)]
    pub report: Report,
}

/// Evaluates the stored events of a time range against a candidate rules directory and compares
/// with what their stored evaluations recorded.
pub async fn what_if(store: Arc<dyn Store>, request: &WhatIf) -> Result<WhatIfReport, ReplayError> {
    if !Path::new(&request.rules_dir).is_dir() {
        return Err(ReplayError::NoRulesDir(request.rules_dir.clone()));
    }
    let candidate = Rules::load_with(
        &request.rules_dir,
        RuleEnv::with_settings(request.settings.clone()),
        request.limits,
    );
    let candidate_errors: Vec<CompileError> = candidate
        .statuses()
        .into_iter()
        .filter_map(|s| s.error)
        .collect();
    let ruleset = candidate.current();
    let mut comparison = Comparison::new(request.examples);
    let mut pages = Vec::new();
    let mut unreadable = Vec::new();
    let truncated = events_between(
        &*store,
        request.since,
        request.until,
        request.limit,
        |page| pages.push(page),
    )
    .await?;
    for page in pages {
        let (page, skipped) = readable(page);
        unreadable.extend(skipped);
        let ids: Vec<i64> = page.iter().map(|e| e.id).collect();
        // Each evaluated event's record, or why it cannot be read back.
        let stored: HashMap<i64, Result<EvaluationRecord, String>> = store
            .list_evaluations(&ids)
            .await?
            .into_iter()
            .filter_map(|(id, evaluation)| match evaluation.unreadable {
                Some(reason) => Some((id, Err(reason))),
                None => evaluation.record.map(|record| (id, Ok(record))),
            })
            .collect();
        let mut with_record = Vec::new();
        for event in page {
            match stored.get(&event.id) {
                Some(Ok(_)) => with_record.push(event),
                Some(Err(reason)) => unreadable.push(Unreadable {
                    id: event.id,
                    reason: reason.clone(),
                }),
                None => comparison.skip(),
            }
        }
        for (event, evaluation) in evaluate_all(store.clone(), ruleset.clone(), with_record).await?
        {
            let Some(Ok(record)) = stored.get(&event.id) else {
                continue;
            };
            let reference = EventRef {
                event_id: event.id,
                received_at: event.received_at,
                customer_phone: event.event.customer_phone.clone(),
                outcome: event.event.outcome.map(|o| o.as_str().to_string()),
            };
            let matched = record.verdicts.iter().filter(|v| v.matched);
            let matched = matched.map(|v| (v.rule.as_str(), v.actions.as_slice()));
            comparison.add(reference, matched, &evaluation);
        }
    }
    let names: Vec<String> = ruleset.rules().iter().map(|r| r.name.clone()).collect();
    Ok(WhatIfReport {
        rules_dir: request.rules_dir.display().to_string(),
        candidate_version: ruleset.version.clone(),
        candidate_errors,
        since: request.since,
        until: request.until,
        truncated,
        unreadable,
        report: comparison.finish(names.iter().map(String::as_str)),
    })
}
