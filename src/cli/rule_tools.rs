//! `switchboard check`, `try` and `test`: the rule tools, on a rules directory without a
//! database. `check` and `test` exit 1 when the rules fail them.

use anyhow::Context;
use std::path::{Path, PathBuf};
use switchboard::rules::{RuleEnv, RuleLimits, RuleSettings, Rules, tools};

/// Compiles every rule and prints each error as `file:line:col: message`.
pub fn check(rules: &Path, settings: RuleSettings) -> ! {
    let report = tools::check(rules, settings);
    println!("{report}");
    std::process::exit(if report.errors.is_empty() { 0 } else { 1 });
}

/// Dry-runs each payload file against the rules: which rules match, and their actions.
pub fn try_payloads(
    rules: &Path,
    settings: RuleSettings,
    limits: RuleLimits,
    payloads: Vec<PathBuf>,
) -> anyhow::Result<()> {
    let rules = Rules::load_with(rules, RuleEnv::with_settings(settings), limits);
    for status in rules.statuses() {
        if let Some(error) = status.error {
            eprintln!("warning: {error}");
        }
    }
    for path in payloads {
        let body = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        match tools::try_payload(&rules, &body) {
            Ok(evaluation) => {
                println!(
                    "{}: {}",
                    path.display(),
                    serde_json::to_string_pretty(&evaluation)?
                )
            }
            Err(error) => println!("{}: not a notification: {error}", path.display()),
        }
    }
    Ok(())
}

/// Runs the test cases in `<rules>/tests/*.toml`.
pub fn test(rules: &Path, settings: &RuleSettings, limits: RuleLimits) -> ! {
    let report = tools::run_tests(rules, settings, limits);
    println!("{report}");
    std::process::exit(if report.passed() { 0 } else { 1 });
}
