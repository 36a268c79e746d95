//! `switchboard what-if`: what a candidate rules directory would change on stored events.

use super::{DatabaseArg, time};
use std::path::PathBuf;
use switchboard::replay::WhatIf;
use switchboard::rules::{RuleLimits, RuleSettings};
use switchboard::time::{parse_instant, parse_since};

#[derive(Debug, clap::Args)]
pub struct WhatIfArgs {
    #[command(flatten)]
    pub db: DatabaseArg,
    /// The candidate rules directory
    #[arg(long, value_name = "DIR")]
    rules: PathBuf,
    /// Start of the range: a duration back from now (7d, 12h) or a time
    #[arg(long, default_value = "7d")]
    since: String,
    /// End of the range (default: now)
    #[arg(long)]
    until: Option<String>,
    /// Most events compared (the newest)
    #[arg(long, default_value_t = 10_000)]
    limit: u32,
    /// Example events per rule and kind of change
    #[arg(long, default_value_t = 3)]
    examples: usize,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

/// Runs the comparison on the database at `url` with the rules' `settings` and `limits` (those
/// of the configuration, as in `serve`), and prints the report.
pub async fn run(
    url: String,
    args: WhatIfArgs,
    settings: RuleSettings,
    limits: RuleLimits,
) -> anyhow::Result<()> {
    let now = switchboard::time::now_millis();
    let request = WhatIf {
        rules_dir: args.rules,
        settings,
        limits,
        since: parse_since(&args.since, now).map_err(|e| anyhow::anyhow!("--since {e}"))?,
        until: match args.until {
            Some(until) => parse_instant(&until).map_err(|e| anyhow::anyhow!("--until {e}"))?,
            None => now,
        },
        limit: args.limit,
        examples: args.examples,
    };
    let store = switchboard::store::open(&url).await?;
    let report = switchboard::replay::what_if(store.clone(), &request).await;
    store.close().await;
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "What-if: {} (version {}) against {} stored events from {} to {} UTC{}",
        report.rules_dir,
        report.candidate_version,
        report.report.events_compared,
        time(report.since),
        time(report.until),
        if report.truncated {
            " (the newest only: --limit reached)"
        } else {
            ""
        }
    );
    println!(
        "{} events would change; {} not processed yet were skipped",
        report.report.events_changed, report.report.events_skipped
    );
    for skipped in &report.unreadable {
        println!("event {} skipped: {}", skipped.id, skipped.reason);
    }
    for error in &report.candidate_errors {
        println!("candidate rule does not compile: {error}");
    }
    for change in &report.report.changed_rules {
        println!(
            "\n{}: matched {} -> {} (+{} newly, -{} no longer); actions +{} / -{}{}",
            change.rule,
            change.matched_before,
            change.matched_after,
            change.newly_matching,
            change.stops_matching,
            change.actions_added,
            change.actions_removed,
            if change.errors_after > 0 {
                format!("; fails on {} events", change.errors_after)
            } else {
                String::new()
            }
        );
        for example in &change.examples {
            println!(
                "    event {} at {} ({}, {}): {}",
                example.event.event_id,
                time(example.event.received_at),
                example
                    .event
                    .customer_phone
                    .as_deref()
                    .unwrap_or("no phone"),
                example.event.outcome.as_deref().unwrap_or("no outcome"),
                example.change.replace('_', " ")
            );
        }
    }
    if !report.report.unchanged_rules.is_empty() {
        println!("\nunchanged: {}", report.report.unchanged_rules.join(", "));
    }
    Ok(())
}
