//! Prometheus metrics: the counters and histograms the service updates as it works, and the
//! gauges read from the store when `/metrics` is scraped; `Metrics::render` gives the text
//! exposition (OpenMetrics, which Prometheus reads).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotificationLabels {
    /// `accepted`, `duplicate` or `rejected`.
    pub result: &'static str,
    /// Why it was rejected (the error code), empty otherwise.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    pub kind: &'static str,
    /// `success`, `transient`, `permanent` or `skipped`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreOpLabels {
    /// The store call: `insert_events`, `claim_events`, `finish_events`, `claim_jobs`,
    /// `record_attempts` (failures also `heartbeat`, `prune`).
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RulesetLabels {
    pub version: String,
    pub instance: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs to ~6.5 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// Every metric of one running service.
pub struct Metrics {
    registry: Registry,
    pub notifications: Family<NotificationLabels, Counter>,
    pub decode_warnings: Counter,
    pub evaluation_seconds: Histogram,
    /// Failed attempts to load or process an event, and events quarantined after too many.
    pub event_failures: Counter,
    pub events_quarantined: Counter,
    /// Read at scrape time: events in quarantine now.
    pub quarantined_events: Gauge,
    pub rule_matches: Family<RuleLabels, Counter>,
    pub rule_errors: Family<RuleLabels, Counter>,
    pub job_attempts: Family<AttemptLabels, Counter>,
    pub job_retries: Family<KindLabels, Counter>,
    pub jobs_dead_lettered: Family<KindLabels, Counter>,
    pub store_seconds: HistogramFamily<StoreOpLabels>,
    pub store_failures: Family<StoreOpLabels, Counter>,
    // Read at scrape time.
    pub rule_reloads: Counter,
    pub rule_reload_errors: Counter,
    pub rules_broken: Gauge,
    pub ruleset: Family<RulesetLabels, Gauge>,
    pub jobs_due: Gauge,
    pub oldest_due_job_age_seconds: Gauge<f64, AtomicU64>,
    pub dead_jobs: Gauge,
    pub open_callback_tasks: Gauge,
    /// The HTTP server's connections and timeouts.
    pub http: HttpMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut metrics = Metrics {
            registry: Registry::with_prefix("switchboard"),
            notifications: Family::default(),
            decode_warnings: Counter::default(),
            evaluation_seconds: latency_histogram(),
            event_failures: Counter::default(),
            events_quarantined: Counter::default(),
            quarantined_events: Gauge::default(),
            rule_matches: Family::default(),
            rule_errors: Family::default(),
            job_attempts: Family::default(),
            job_retries: Family::default(),
            jobs_dead_lettered: Family::default(),
            store_seconds: Family::new_with_constructor(latency_histogram),
            store_failures: Family::default(),
            rule_reloads: Counter::default(),
            rule_reload_errors: Counter::default(),
            rules_broken: Gauge::default(),
            ruleset: Family::default(),
            jobs_due: Gauge::default(),
            oldest_due_job_age_seconds: Gauge::default(),
            dead_jobs: Gauge::default(),
            open_callback_tasks: Gauge::default(),
            http: HttpMetrics::default(),
        };
        let r = &mut metrics.registry;
        r.register(
            "notifications",
            "Notifications received, by result (accepted, duplicate, rejected) and rejection reason",
            metrics.notifications.clone(),
        );
        r.register(
            "decode_warnings",
            "Fields of accepted notifications that could not be decoded",
            metrics.decode_warnings.clone(),
        );
        r.register(
            "evaluation_seconds",
            "Time to evaluate one event against the rule set",
            metrics.evaluation_seconds.clone(),
        );
        r.register(
            "event_failures",
            "Failed attempts to load or process an event (each is retried after a backoff)",
            metrics.event_failures.clone(),
        );
        r.register(
            "events_quarantined",
            "Events quarantined after failing too many times",
            metrics.events_quarantined.clone(),
        );
        r.register(
            "quarantined_events",
            "Events in quarantine now, waiting for an operator's retry",
            metrics.quarantined_events.clone(),
        );
        r.register(
            "rule_matches",
            "Events each rule matched",
            metrics.rule_matches.clone(),
        );
        r.register(
            "rule_errors",
            "Events on which each rule failed",
            metrics.rule_errors.clone(),
        );
        r.register(
            "job_attempts",
            "Delivery attempts, by job kind and outcome",
            metrics.job_attempts.clone(),
        );
        r.register(
            "job_retries",
            "Failed attempts that will be retried, by job kind",
            metrics.job_retries.clone(),
        );
        r.register(
            "jobs_dead_lettered",
            "Jobs dead-lettered (no attempts left, or a permanent failure), by kind",
            metrics.jobs_dead_lettered.clone(),
        );
        r.register(
            "store_seconds",
            "Latency of the store calls on the hot paths",
            metrics.store_seconds.clone(),
        );
        r.register(
            "store_failures",
            "Store writes that failed (nothing of them was stored), by operation",
            metrics.store_failures.clone(),
        );
        r.register(
            "rule_reloads",
            "Rule set reloads (a rules directory change that changed the rule set)",
            metrics.rule_reloads.clone(),
        );
        r.register(
            "rule_reload_errors",
            "Rule files that failed to compile on reload",
            metrics.rule_reload_errors.clone(),
        );
        r.register(
            "rules_broken",
            "Rule files whose current text does not compile",
            metrics.rules_broken.clone(),
        );
        r.register(
            "ruleset",
            "The rule set version this instance evaluates with (value 1)",
            metrics.ruleset.clone(),
        );
        r.register(
            "jobs_due",
            "Jobs due now and not done (pending or retrying): the delivery queue depth",
            metrics.jobs_due.clone(),
        );
        r.register(
            "oldest_due_job_age_seconds",
            "How long the oldest due job has been waiting",
            metrics.oldest_due_job_age_seconds.clone(),
        );
        r.register(
            "dead_jobs",
            "Dead-lettered jobs waiting for an operator",
            metrics.dead_jobs.clone(),
        );
        r.register(
            "open_callback_tasks",
            "Callback tasks open or claimed",
            metrics.open_callback_tasks.clone(),
        );
        metrics.http.register(r);
        metrics
    }

    /// Counts a notification's result.
    pub fn notification(&self, result: &'static str, reason: &'static str) {
        self.notifications
            .get_or_create(&NotificationLabels { result, reason })
            .inc();
    }

    /// Times a store call.
    pub fn store_call(&self, op: &'static str, started: Instant) {
        self.store_seconds
            .get_or_create(&StoreOpLabels { op })
            .observe(started.elapsed().as_secs_f64());
    }

    /// Counts a failed store write.
    pub fn store_failed(&self, op: &'static str) {
        self.store_failures
            .get_or_create(&StoreOpLabels { op })
            .inc();
    }

    /// Sets a counter read from elsewhere (e.g. the rules' reload count) to `total`.
    pub fn catch_up(counter: &Counter, total: u64) {
        let seen = counter.get();
        if total > seen {
            counter.inc_by(total - seen);
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// `headers`, `body` or `request`.
    pub phase: &'static str,
}

/// The HTTP server's own metrics: open connections, and requests cut off by a timeout.
#[derive(Default)]
pub struct HttpMetrics {
    pub connections: Gauge,
    pub timeouts: Family<PhaseLabels, Counter>,
}

impl HttpMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "http_connections",
            "HTTP connections open now",
            self.connections.clone(),
        );
        registry.register(
            "http_timeouts",
            "Requests cut off by a timeout, by phase: headers (connection closed), body (408), request (503)",
            self.timeouts.clone(),
        );
    }

    /// Counts a timeout in `phase`.
    pub fn timeout(&self, phase: &'static str) {
        self.timeouts.get_or_create(&PhaseLabels { phase }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prefixed_metrics_with_labels() {
        let metrics = Metrics::new();
        metrics.notification("rejected", "invalid_json");
        metrics
            .rule_matches
            .get_or_create(&RuleLabels {
                rule: "abandoned".into(),
            })
            .inc();
        Metrics::catch_up(&metrics.rule_reloads, 3);
        Metrics::catch_up(&metrics.rule_reloads, 2);
        let text = metrics.render();
        assert!(
            text.contains(
                "switchboard_notifications_total{result=\"rejected\",reason=\"invalid_json\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("switchboard_rule_matches_total{rule=\"abandoned\"} 1"),
            "{text}"
        );
        assert!(text.contains("switchboard_rule_reloads_total 3"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
