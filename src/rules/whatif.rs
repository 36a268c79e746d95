//! What-if (PURE): compares what stored events actually got (their evaluation records) with what
//! a candidate rule set would give them, per rule: events that would newly match or stop
//! matching, and actions added or removed, with a few example events each.

use super::Evaluation;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// One stored event as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct EventRef {
    pub event_id: i64,
    pub received_at: i64,
    pub customer_phone: Option<String>,
    pub outcome: Option<String>,
}

/// What one rule did to one event: whether it matched, and its actions (each as compact JSON).
type RuleEffects = BTreeMap<String, Vec<String>>;

/// How one event changed for one rule.
#[derive(Debug, Clone, Serialize)]
pub struct Example {
    #[serde(flatten)]
    pub event: EventRef,
    /// `newly_matches`, `stops_matching` or `actions_change`.
    pub change: &'static str,
    pub actions_before: Vec<serde_json::Value>,
    pub actions_after: Vec<serde_json::Value>,
}

/// The change for one rule across the events compared.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RuleChange {
    pub rule: String,
    /// Events it matched when they were processed.
    pub matched_before: u64,
    /// Events it matches under the candidate rules.
    pub matched_after: u64,
    pub newly_matching: u64,
    pub stops_matching: u64,
    /// Actions the candidate adds / no longer asks for (over all events).
    pub actions_added: u64,
    pub actions_removed: u64,
    /// Events on which the candidate rule fails.
    pub errors_after: u64,
    /// A few events of each kind of change.
    pub examples: Vec<Example>,
}

impl RuleChange {
    fn changed(&self) -> bool {
        self.newly_matching
            + self.stops_matching
            + self.actions_added
            + self.actions_removed
            + self.errors_after
            > 0
    }
}

/// The what-if report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub events_compared: u64,
    /// Events without a stored evaluation (not processed yet): skipped.
    pub events_skipped: u64,
    /// Events whose set of matched rules or actions changes.
    pub events_changed: u64,
    /// Rules that change anything, most changes first.
    pub changed_rules: Vec<RuleChange>,
    /// Rules that change nothing.
    pub unchanged_rules: Vec<String>,
}

/// Builds the report as events are fed in.
#[derive(Debug)]
pub(crate) struct Comparison {
    examples_per_kind: usize,
    report: Report,
    rules: BTreeMap<String, RuleChange>,
}

impl Comparison {
    pub(crate) fn new(examples_per_kind: usize) -> Self {
        Comparison {
            examples_per_kind,
            report: Report::default(),
            rules: BTreeMap::new(),
        }
    }

    /// An event with no stored evaluation to compare against.
    pub(crate) fn skip(&mut self) {
        self.report.events_skipped += 1;
    }

    /// Compares one event: the rules its stored evaluation record says matched (each with the
    /// actions recorded) and the candidate's evaluation.
    pub(crate) fn add<'a>(
        &mut self,
        event: EventRef,
        stored: impl IntoIterator<Item = (&'a str, &'a [serde_json::Value])>,
        candidate: &Evaluation,
    ) {
        self.report.events_compared += 1;
        let before: RuleEffects = stored
            .into_iter()
            .map(|(rule, actions)| {
                (
                    rule.to_string(),
                    actions.iter().map(|a| a.to_string()).collect(),
                )
            })
            .collect();
        let mut after = RuleEffects::new();
        for verdict in &candidate.verdicts {
            if verdict.error.is_some() {
                self.entry(&verdict.rule).errors_after += 1;
            }
            if verdict.matched {
                let actions = verdict
                    .actions
                    .iter()
                    // Through `Value`, so keys are ordered as in the stored record.
                    .map(|a| serde_json::to_value(a).unwrap_or_default().to_string())
                    .collect();
                after.insert(verdict.rule.clone(), actions);
            }
        }
        let mut event_changed = false;
        let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
        for rule in names {
            let (was, now) = (before.get(rule), after.get(rule));
            let examples_per_kind = self.examples_per_kind;
            let change = self.entry(rule);
            change.matched_before += u64::from(was.is_some());
            change.matched_after += u64::from(now.is_some());
            let empty = Vec::new();
            let (was_actions, now_actions) = (was.unwrap_or(&empty), now.unwrap_or(&empty));
            let added = multiset_minus(now_actions, was_actions);
            let removed = multiset_minus(was_actions, now_actions);
            change.actions_added += added;
            change.actions_removed += removed;
            let kind = match (was, now) {
                (None, Some(_)) => {
                    change.newly_matching += 1;
                    Some("newly_matches")
                }
                (Some(_), None) => {
                    change.stops_matching += 1;
                    Some("stops_matching")
                }
                _ if added + removed > 0 => Some("actions_change"),
                _ => None,
            };
            if let Some(kind) = kind {
                event_changed = true;
                let shown = change.examples.iter().filter(|e| e.change == kind).count();
                if shown < examples_per_kind {
                    change.examples.push(Example {
                        event: event.clone(),
                        change: kind,
                        actions_before: parse_all(was_actions),
                        actions_after: parse_all(now_actions),
                    });
                }
            }
        }
        self.report.events_changed += u64::from(event_changed);
    }

    fn entry(&mut self, rule: &str) -> &mut RuleChange {
        self.rules
            .entry(rule.to_string())
            .or_insert_with(|| RuleChange {
                rule: rule.to_string(),
                ..Default::default()
            })
    }

    /// The report; `known_rules` (the rules of both sets) lists unchanged rules that never
    /// matched too.
    pub(crate) fn finish<'a>(mut self, known_rules: impl IntoIterator<Item = &'a str>) -> Report {
        for rule in known_rules {
            self.entry(rule);
        }
        let (mut changed, unchanged): (Vec<RuleChange>, Vec<RuleChange>) =
            self.rules.into_values().partition(RuleChange::changed);
        changed.sort_by_key(|c| {
            std::cmp::Reverse(
                c.newly_matching
                    + c.stops_matching
                    + c.actions_added
                    + c.actions_removed
                    + c.errors_after,
            )
        });
        self.report.changed_rules = changed;
        self.report.unchanged_rules = unchanged.into_iter().map(|c| c.rule).collect();
        self.report
    }
}

/// How many of `a` are not matched by one of `b` (multiset difference size).
fn multiset_minus(a: &[String], b: &[String]) -> u64 {
    let mut left: Vec<&String> = b.iter().collect();
    let mut extra = 0;
    for item in a {
        match left.iter().position(|x| *x == item) {
            Some(i) => {
                left.swap_remove(i);
            }
            None => extra += 1,
        }
    }
    extra
}

fn parse_all(actions: &[String]) -> Vec<serde_json::Value> {
    actions
        .iter()
        .map(|a| serde_json::from_str(a).unwrap_or(serde_json::Value::Null))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::ActionRequest;
    use crate::rules::RuleVerdict;
    use serde_json::json;

    fn event(id: i64) -> EventRef {
        EventRef {
            event_id: id,
            received_at: id * 1000,
            customer_phone: Some("13800138000".into()),
            outcome: Some("queue_abandoned".into()),
        }
    }

    fn verdict(rule: &str, matched: bool, actions: Vec<ActionRequest>) -> RuleVerdict {
        RuleVerdict {
            rule: rule.into(),
            file: format!("{rule}.rhai"),
            matched,
            actions,
            throttle: None,
            error: None,
        }
    }

    fn evaluation(verdicts: Vec<RuleVerdict>) -> Evaluation {
        Evaluation {
            ruleset_version: "candidate".into(),
            evaluated: verdicts.len(),
            verdicts,
            not_matched: Vec::new(),
            counter_hits: Vec::new(),
            elapsed_us: 0,
        }
    }

    fn hook(n: i64) -> ActionRequest {
        ActionRequest::Webhook {
            target: Some("chat".into()),
            url: None,
            body: Some(json!({ "n": n })),
        }
    }

    #[test]
    fn newly_matching_stopping_and_changed_actions_are_counted_per_rule() {
        // As the stored record has them: the matched rules, each with its actions.
        let stored = |verdicts: Vec<RuleVerdict>| -> Vec<(String, Vec<serde_json::Value>)> {
            let actions = |v: &RuleVerdict| v.actions.iter().map(|a| json!(a)).collect();
            let matched = verdicts.iter().filter(|v| v.matched);
            matched.map(|v| (v.rule.clone(), actions(v))).collect()
        };
        fn matched(s: &[(String, Vec<serde_json::Value>)]) -> Vec<(&str, &[serde_json::Value])> {
            s.iter().map(|(r, a)| (r.as_str(), a.as_slice())).collect()
        }
        let mut cmp = Comparison::new(1);
        // Event 1: `a` matched before and still does, same action: no change.
        cmp.add(
            event(1),
            matched(&stored(vec![verdict("a", true, vec![hook(1)])])),
            &evaluation(vec![verdict("a", true, vec![hook(1)])]),
        );
        // Event 2: `a` stops matching, `b` newly matches.
        cmp.add(
            event(2),
            matched(&stored(vec![verdict("a", true, vec![hook(2)])])),
            &evaluation(vec![verdict("b", true, vec![hook(2), hook(3)])]),
        );
        // Event 3: `a` matches with a different action; another newly-matching `b` (example cap 1).
        cmp.add(
            event(3),
            matched(&stored(vec![verdict("a", true, vec![hook(3)])])),
            &evaluation(vec![
                verdict("a", true, vec![hook(4)]),
                verdict("b", true, vec![]),
            ]),
        );
        cmp.skip();
        let report = cmp.finish(["a", "b", "c"]);
        assert_eq!(
            (
                report.events_compared,
                report.events_skipped,
                report.events_changed
            ),
            (3, 1, 2)
        );
        let a = report.changed_rules.iter().find(|c| c.rule == "a").unwrap();
        assert_eq!((a.matched_before, a.matched_after), (3, 2));
        assert_eq!((a.newly_matching, a.stops_matching), (0, 1));
        assert_eq!((a.actions_added, a.actions_removed), (1, 2));
        assert_eq!(
            a.examples
                .iter()
                .map(|e| (e.event.event_id, e.change))
                .collect::<Vec<_>>(),
            [(2, "stops_matching"), (3, "actions_change")]
        );
        let b = report.changed_rules.iter().find(|c| c.rule == "b").unwrap();
        assert_eq!((b.newly_matching, b.actions_added), (2, 2));
        assert_eq!(b.examples.len(), 1, "examples are capped per kind");
        assert_eq!(report.unchanged_rules, ["c"]);
    }
}
