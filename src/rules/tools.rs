//! Tools to test rules before they go live: `check` (does everything compile?), `try_payload`
//! (what would these pushes do?) and `run_tests` (the rule test cases kept in `tests/` beside
//! the rules). No side effects: counters are read from fixed values and nothing is stored.

use super::compile::{CompileError, RuleSettings};
use super::env::RuleEnv;
use super::eval::{EvalContext, Evaluation};
use super::load::{Rules, read_rule_files};
use super::stdlib::FixedCounters;
use crate::event::{BodyError, decode, parse_body};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The result of compiling every rule file of a directory.
#[derive(Debug)]
pub struct CheckReport {
    pub files: usize,
    pub errors: Vec<CompileError>,
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for error in &self.errors {
            writeln!(f, "{error}")?;
        }
        write!(
            f,
            "{} rule files, {} with errors",
            self.files,
            self.errors.len()
        )
    }
}

/// Compiles every rule file under `dir`.
pub fn check(dir: &Path, vars: RuleSettings) -> CheckReport {
    let files = read_rule_files(dir).len();
    let rules = Rules::load(dir, RuleEnv::with_settings(vars));
    let errors = rules
        .statuses()
        .into_iter()
        .filter_map(|s| s.error)
        .collect();
    CheckReport { files, errors }
}

/// A dry run of one payload against the rules, with empty counters.
pub fn try_payload(rules: &Rules, body: &[u8]) -> Result<Evaluation, BodyError> {
    try_payload_with(rules, body, Arc::new(FixedCounters::default()))
}

/// A dry run of one payload against the rules: counters are read from `counters`, and the hits
/// the evaluation would make are returned, never stored.
pub(crate) fn try_payload_with(
    rules: &Rules,
    body: &[u8],
    counters: Arc<dyn super::CounterSource>,
) -> Result<Evaluation, BodyError> {
    let parsed = parse_body(body, None)?;
    let decoded = decode(&parsed);
    let ctx = EvalContext {
        counters,
        at_ms: crate::time::now_millis(),
        record_stats: false,
        prefilter: true,
    };
    Ok(rules.current().evaluate(&decoded.event, &ctx))
}

/// A file of rule test cases (`<rules>/tests/*.toml`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    /// Rule settings (`setting("name")`) for these cases, over the configured ones.
    #[serde(default)]
    settings: RuleSettings,
    #[serde(rename = "case")]
    cases: Vec<TestCase>,
}

/// One case: a payload, and what must happen.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCase {
    name: String,
    /// A payload file, relative to the test file…
    payload: Option<PathBuf>,
    /// …or the body inline.
    body: Option<String>,
    /// Fields to set on the payload (over those of `payload`).
    #[serde(default)]
    set: toml::Table,
    /// Windowed-counter values already stored before this event, by key.
    #[serde(default)]
    counters: HashMap<String, u64>,
    /// Exactly these rules match (by name), in any order.
    matched: Vec<String>,
    /// Each of these must be among the actions (of `rule`, when given); only the fields given
    /// are compared.
    #[serde(default)]
    actions: Vec<toml::Table>,
    /// Rules whose errors are expected (by name); any other rule error fails the case.
    #[serde(default)]
    errors: Vec<String>,
}

/// The outcome of one test case.
#[derive(Debug)]
pub struct CaseResult {
    pub file: String,
    pub name: String,
    pub failures: Vec<String>,
}

/// The outcome of every test case.
#[derive(Debug, Default)]
pub struct TestReport {
    pub cases: Vec<CaseResult>,
    /// Test files that could not be read or parsed.
    pub file_errors: Vec<String>,
}

impl TestReport {
    pub fn passed(&self) -> bool {
        self.file_errors.is_empty() && self.cases.iter().all(|c| c.failures.is_empty())
    }
}

impl fmt::Display for TestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for error in &self.file_errors {
            writeln!(f, "ERROR {error}")?;
        }
        for case in &self.cases {
            let verdict = if case.failures.is_empty() {
                "ok  "
            } else {
                "FAIL"
            };
            writeln!(f, "{verdict} {}: {}", case.file, case.name)?;
            for failure in &case.failures {
                writeln!(f, "       {failure}")?;
            }
        }
        let failed = self.cases.iter().filter(|c| !c.failures.is_empty()).count();
        write!(
            f,
            "{} passed, {} failed",
            self.cases.len() - failed,
            failed + self.file_errors.len()
        )
    }
}

/// Runs every test case under `<dir>/tests/`.
pub fn run_tests(dir: &Path, vars: &RuleSettings, limits: super::RuleLimits) -> TestReport {
    let mut report = TestReport::default();
    let tests_dir = dir.join("tests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&tests_dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    if files.is_empty() {
        report
            .file_errors
            .push(format!("no test files (*.toml) in {}", tests_dir.display()));
    }
    for path in files {
        let label = path
            .strip_prefix(dir)
            .unwrap_or(&path)
            .display()
            .to_string();
        let file: TestFile = match std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| toml::from_str(&text).map_err(|e| e.to_string()))
        {
            Ok(file) => file,
            Err(error) => {
                report.file_errors.push(format!("{label}: {error}"));
                continue;
            }
        };
        let mut case_vars = vars.clone();
        case_vars.extend(file.settings);
        let rules = Rules::load_with(dir, RuleEnv::with_settings(case_vars), limits);
        for error in rules.statuses().into_iter().filter_map(|s| s.error) {
            report
                .file_errors
                .push(format!("{label}: rule does not compile: {error}"));
        }
        for case in &file.cases {
            let failures = run_case(&rules, path.parent().unwrap_or(dir), case)
                .unwrap_or_else(|error| vec![error]);
            report.cases.push(CaseResult {
                file: label.clone(),
                name: case.name.clone(),
                failures,
            });
        }
    }
    report
}

fn run_case(rules: &Rules, base: &Path, case: &TestCase) -> Result<Vec<String>, String> {
    let mut body: serde_json::Value = match (&case.payload, &case.body) {
        (Some(path), None) => {
            let text = std::fs::read(base.join(path))
                .map_err(|e| format!("payload {}: {e}", path.display()))?;
            serde_json::from_slice(&text).map_err(|e| format!("payload {}: {e}", path.display()))?
        }
        (None, Some(body)) => serde_json::from_str(body).map_err(|e| format!("body: {e}"))?,
        _ => return Err("give exactly one of `payload` and `body`".into()),
    };
    let object = body
        .as_object_mut()
        .ok_or("the payload must be a JSON object")?;
    for (key, value) in &case.set {
        object.insert(
            key.clone(),
            serde_json::to_value(value).map_err(|e| e.to_string())?,
        );
    }
    let parsed = parse_body(body.to_string().as_bytes(), None).map_err(|e| e.to_string())?;
    let ctx = EvalContext {
        counters: Arc::new(FixedCounters(case.counters.clone())),
        at_ms: crate::time::now_millis(),
        record_stats: false,
        prefilter: true,
    };
    let evaluation = rules.current().evaluate(&decode(&parsed).event, &ctx);
    let mut failures = Vec::new();
    let mut matched: Vec<&str> = evaluation.matched().map(|v| v.rule.as_str()).collect();
    let mut expected: Vec<&str> = case.matched.iter().map(String::as_str).collect();
    matched.sort_unstable();
    expected.sort_unstable();
    if matched != expected {
        failures.push(format!("matched {matched:?}, expected {expected:?}"));
    }
    for verdict in evaluation.verdicts.iter().filter(|v| v.error.is_some()) {
        if !case.errors.contains(&verdict.rule) {
            failures.push(format!(
                "rule {} failed: {}",
                verdict.rule,
                verdict.error.as_deref().unwrap_or("")
            ));
        }
    }
    for want in &case.actions {
        let rule = want.get("rule").and_then(|r| r.as_str());
        let want: BTreeMap<&String, serde_json::Value> = want
            .iter()
            .filter(|(k, _)| k.as_str() != "rule")
            .map(|(k, v)| (k, serde_json::to_value(v).unwrap_or_default()))
            .collect();
        let found = evaluation
            .matched()
            .filter(|v| rule.is_none_or(|r| r == v.rule))
            .flat_map(|v| &v.actions)
            .any(|action| {
                let actual = serde_json::to_value(action).unwrap_or_default();
                want.iter().all(|(k, v)| actual.get(k.as_str()) == Some(v))
            });
        if !found {
            let actual: Vec<String> = evaluation
                .matched()
                .flat_map(|v| {
                    v.actions.iter().map(move |a| {
                        format!(
                            "{}: {}",
                            v.rule,
                            serde_json::to_string(a).unwrap_or_default()
                        )
                    })
                })
                .collect();
            failures.push(format!(
                "no action{} matches {}; actions were: [{}]",
                rule.map(|r| format!(" of {r}")).unwrap_or_default(),
                serde_json::to_string(&want).unwrap_or_default(),
                actual.join("; ")
            ));
        }
    }
    Ok(failures)
}
