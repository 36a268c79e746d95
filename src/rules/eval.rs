//! Evaluating one event against one rule-set version (PURE): the event becomes Rhai values once,
//! each rule runs in the sandbox, and the result is an `Evaluation` record. A rule that errs or
//! hits a limit is recorded as such; every other rule still runs.

use super::actions;
use super::budget::{self, RuleLimits};
use super::compile::{CompiledRule, Throttle, throttle_from};
use super::stdlib::{self, CounterHit, CounterSource};
use crate::action::ActionRequest;
use crate::event::CallEvent;
use rhai::{CallFnOptions, Dynamic, Engine, EvalAltResult, Scope};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// One version of the rule set: compiled rules in evaluation order, and the engine they run on.
/// Immutable: a reload builds a new one and swaps it in whole.
pub struct RuleSet {
    /// Hash of every active rule's file and content.
    pub version: String,
    pub(super) rules: Vec<Arc<CompiledRule>>,
    pub(super) engine: Arc<Engine>,
    /// The time budget per call and the action cap every rule of this set runs under.
    pub(super) limits: RuleLimits,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet")
            .field("version", &self.version)
            .field("rules", &self.rules.len())
            .finish()
    }
}

/// What evaluation may read besides the event.
#[derive(Clone)]
pub struct EvalContext {
    /// Stored windowed counters (read only; the hits come back in the `Evaluation`).
    pub counters: Arc<dyn CounterSource>,
    /// The event's time (its receive time, unix ms): counter windows end here.
    pub at_ms: i64,
    /// Whether to count this evaluation in the rules' statistics (not for dry runs).
    pub record_stats: bool,
    /// Skip rules whose `when` provably cannot fire on this event (same results, less work).
    /// Only tests turn it off, to compare.
    pub prefilter: bool,
}

/// One rule's verdict on one event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleVerdict {
    pub rule: String,
    pub file: String,
    pub matched: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<ActionRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<Throttle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl RuleVerdict {
    fn not_matched(rule: &CompiledRule) -> Self {
        RuleVerdict {
            rule: rule.name.clone(),
            file: rule.file.clone(),
            matched: false,
            actions: Vec::new(),
            throttle: None,
            error: None,
        }
    }
}

/// The evaluation record of one event: the rules that matched (with their actions) or failed,
/// and the names of those that ran and did not match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub ruleset_version: String,
    /// How many rules ran (enabled rules of the version).
    pub evaluated: usize,
    pub verdicts: Vec<RuleVerdict>,
    /// Rules that ran and did not match (names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_matched: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub counter_hits: Vec<CounterHit>,
    pub elapsed_us: u64,
}

impl Evaluation {
    /// The verdicts of rules that matched.
    pub fn matched(&self) -> impl Iterator<Item = &RuleVerdict> {
        self.verdicts.iter().filter(|v| v.matched)
    }
}

impl RuleSet {
    /// An empty rule set (no rules directory yet).
    pub(crate) fn empty(engine: Arc<Engine>, limits: RuleLimits) -> Self {
        RuleSet {
            version: "empty".into(),
            rules: Vec::new(),
            engine,
            limits,
        }
    }

    /// The limits this set's rules run under.
    pub(crate) fn limits(&self) -> RuleLimits {
        self.limits
    }

    /// The rules in evaluation order.
    pub fn rules(&self) -> &[Arc<CompiledRule>] {
        &self.rules
    }

    /// The event fields some rule's prefilter reads.
    fn required_fields(&self) -> impl Iterator<Item = &str> {
        let mut fields: Vec<&str> = self
            .rules
            .iter()
            .flat_map(|r| r.requirements.iter().map(|q| q.field.as_str()))
            .collect();
        fields.sort_unstable();
        fields.dedup();
        fields.into_iter()
    }

    /// Evaluates `event` against every enabled rule, in order.
    pub fn evaluate(&self, event: &CallEvent, ctx: &EvalContext) -> Evaluation {
        let started = Instant::now();
        let ev = event_value(event);
        // The fields the prefilter looks at, copied out (the read lock is not held while rules run).
        let fields: rhai::Map = ev
            .read_lock::<rhai::Map>()
            .map(|map| {
                self.required_fields()
                    .filter_map(|f| map.get(f).map(|v| (f.into(), v.clone())))
                    .collect()
            })
            .unwrap_or_default();
        let state = stdlib::EvalState {
            counters: ctx.counters.clone(),
            at_ms: ctx.at_ms,
            hits: Vec::new(),
        };
        let ((verdicts, not_matched, evaluated), state) = stdlib::with_state(state, || {
            let mut scope = Scope::new();
            let mut verdicts = Vec::new();
            let mut not_matched = Vec::new();
            let mut evaluated = 0;
            for rule in self.rules.iter().filter(|r| r.enabled) {
                evaluated += 1;
                let cannot_fire =
                    ctx.prefilter && !rule.requirements.iter().all(|r| r.holds(&fields));
                let verdict = if cannot_fire {
                    RuleVerdict::not_matched(rule)
                } else {
                    self.evaluate_rule(rule, &ev, &mut scope)
                };
                if ctx.record_stats {
                    rule.stats.evaluations.fetch_add(1, Ordering::Relaxed);
                    if cannot_fire {
                        rule.stats.prefiltered.fetch_add(1, Ordering::Relaxed);
                    }
                    if verdict.matched {
                        rule.stats.matches.fetch_add(1, Ordering::Relaxed);
                    }
                    if verdict.error.is_some() {
                        rule.stats.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if verdict.matched || verdict.error.is_some() {
                    verdicts.push(verdict);
                } else {
                    not_matched.push(verdict.rule);
                }
            }
            (verdicts, not_matched, evaluated)
        });
        Evaluation {
            ruleset_version: self.version.clone(),
            evaluated,
            verdicts,
            not_matched,
            counter_hits: state.hits,
            elapsed_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        }
    }

    fn evaluate_rule(&self, rule: &CompiledRule, ev: &Dynamic, scope: &mut Scope) -> RuleVerdict {
        let mut verdict = RuleVerdict::not_matched(rule);
        // Rhai does not panic on bad scripts, but a rule must never take the service down.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.run_rule(rule, ev, scope)
        }))
        .unwrap_or_else(|_| Err("the rule engine panicked on this rule".into()));
        match outcome {
            Ok(None) => {}
            Ok(Some((actions, throttle))) => {
                verdict.matched = true;
                verdict.actions = actions;
                verdict.throttle = throttle;
            }
            Err(message) => verdict.error = Some(message),
        }
        verdict
    }

    /// `Ok(None)`: did not fire; `Ok(Some(..))`: fired, with its actions and throttle.
    #[allow(clippy::type_complexity)]
    fn run_rule(
        &self,
        rule: &CompiledRule,
        ev: &Dynamic,
        scope: &mut Scope,
    ) -> Result<Option<(Vec<ActionRequest>, Option<Throttle>)>, String> {
        let budget = self.limits.time_budget;
        let call = |scope: &mut Scope, name: &str| -> Result<Dynamic, String> {
            let options = CallFnOptions::new().eval_ast(false).rewind_scope(true);
            budget::run_with(budget, || {
                self.engine.call_fn_with_options::<Dynamic>(
                    options,
                    scope,
                    &rule.ast,
                    name,
                    (ev.clone(),),
                )
            })
            .map_err(|e| call_error(name, &e, budget))
        };
        let fired = call(scope, "when")?;
        let fired = fired
            .as_bool()
            .map_err(|t| format!("`when` must return true or false, not {t}"))?;
        if !fired {
            return Ok(None);
        }
        let returned = call(scope, "then")?;
        let list = if returned.is_array() {
            returned.into_array().unwrap_or_default()
        } else if returned.is_unit() {
            Vec::new()
        } else {
            vec![returned]
        };
        let max_actions = self.limits.max_actions;
        if list.len() > max_actions {
            return Err(format!(
                "`then` returned {} actions; a rule may ask for at most {max_actions} per event \
                 (rule_max_actions)",
                list.len()
            ));
        }
        let actions = list
            .iter()
            .map(actions::from_dynamic)
            .collect::<Result<Vec<_>, _>>()?;
        let throttle = if rule.has_throttle {
            throttle_from(call(scope, "throttle")?).map_err(|e| format!("in `throttle`: {e}"))?
        } else {
            None
        };
        Ok(Some((actions, throttle)))
    }
}

/// A failed call's message: where, and what. Running out of time is named as such (Rhai's own
/// text for a stopped script says nothing about why).
fn call_error(name: &str, error: &EvalAltResult, budget: std::time::Duration) -> String {
    let mut inner = error;
    while let EvalAltResult::ErrorInFunctionCall(_, _, cause, _) = inner {
        inner = cause;
    }
    match inner {
        EvalAltResult::ErrorTerminated(token, pos)
            if token.clone().into_string().ok().as_deref() == Some(budget::OUT_OF_TIME) =>
        {
            let at = if pos.is_none() {
                String::new()
            } else {
                format!(" (stopped at {pos})")
            };
            format!(
                "in `{name}`: the rule ran out of its time budget of {} ms per call{at} \
                 (rule_time_budget_ms)",
                budget.as_millis()
            )
        }
        _ => format!("in `{name}`: {error}"),
    }
}

/// The event as rules see it: its decoded JSON view as a read-only Rhai map, shared so that
/// passing it to each rule copies a pointer, not the map. Absent fields are `()`.
fn event_value(event: &CallEvent) -> Dynamic {
    rhai::serde::to_dynamic(event)
        .unwrap_or(Dynamic::UNIT)
        .into_read_only()
        .into_shared()
}
