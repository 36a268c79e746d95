//! Loading the rules directory and keeping it current: every `.rhai` file under it (subfolders
//! too, hidden entries such as Kubernetes' `..data` skipped, symlinks followed) is compiled; a
//! file that fails to compile never replaces the last good version of its rule; each change
//! builds a new `RuleSet` that is swapped in whole.

use super::compile::{CompileError, CompiledRule, RuleSettings, RuleStats, build_engine, compile};
use super::eval::RuleSet;
use arc_swap::ArcSwap;
use rhai::Engine;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Where one rule file stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleState {
    /// Compiled and running.
    Active,
    /// The file's current text does not compile; its last good version (if any) keeps running.
    Error,
    /// `ENABLED = false`.
    Disabled,
}

/// One rule file's status, as `GET /v1/rules` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RuleStatus {
    pub file: String,
    pub name: String,
    pub description: Option<String>,
    pub status: RuleState,
    pub priority: Option<i64>,
    /// SHA-256 of the version that runs (the last good one).
    pub version: Option<String>,
    /// Whether an older good version runs while the file's current text has an error.
    pub running_last_good: bool,
    pub error: Option<CompileError>,
    /// When the running version was loaded (unix ms).
    pub loaded_at: Option<i64>,
    pub evaluations: u64,
    pub matches: u64,
    pub errors: u64,
}

#[derive(Debug)]
struct FileState {
    /// Hash of the text last read (good or not).
    text_hash: String,
    good: Option<(Arc<CompiledRule>, i64)>,
    error: Option<CompileError>,
}

/// What one rescan changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadOutcome {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    /// Files whose new text failed to compile (their last good version keeps running).
    pub errors: Vec<CompileError>,
    /// The rule-set version after the rescan, if it changed.
    pub new_version: Option<String>,
}

impl ReloadOutcome {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.changed.is_empty()
            && self.removed.is_empty()
            && self.errors.is_empty()
    }
}

/// The live rules of a directory.
pub struct Rules {
    dir: PathBuf,
    engine: Arc<Engine>,
    current: ArcSwap<RuleSet>,
    files: Mutex<BTreeMap<String, FileState>>,
    /// Rescans that changed the rule set, and files that failed to compile, since start.
    pub reloads: AtomicU64,
    pub reload_errors: AtomicU64,
}

impl Rules {
    /// Loads `dir` (which may not exist yet: the set is then empty until it does).
    pub fn load(dir: impl Into<PathBuf>, vars: RuleSettings) -> Rules {
        let engine = Arc::new(build_engine(Arc::new(vars)));
        let rules = Rules {
            dir: dir.into(),
            current: ArcSwap::from_pointee(RuleSet::empty(engine.clone())),
            engine,
            files: Mutex::new(BTreeMap::new()),
            reloads: AtomicU64::new(0),
            reload_errors: AtomicU64::new(0),
        };
        rules.rescan();
        rules
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The rule set to evaluate an event against (one version, whatever reloads happen meanwhile).
    pub fn current(&self) -> Arc<RuleSet> {
        self.current.load_full()
    }

    /// Reads the directory again and applies what changed.
    pub fn rescan(&self) -> ReloadOutcome {
        let texts = read_rule_files(&self.dir);
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let mut outcome = ReloadOutcome::default();
        let now = crate::store::now_millis();
        files.retain(|file, _| {
            let keep = texts.contains_key(file);
            if !keep {
                outcome.removed.push(file.clone());
            }
            keep
        });
        for (file, text) in &texts {
            let text = match text {
                Ok(text) => text,
                Err(message) => {
                    let error = CompileError {
                        file: file.clone(),
                        line: 1,
                        column: 1,
                        message: message.clone(),
                    };
                    let state = files.entry(file.clone()).or_insert_with(|| FileState {
                        text_hash: String::new(),
                        good: None,
                        error: None,
                    });
                    if state.error.as_ref() != Some(&error) {
                        outcome.errors.push(error.clone());
                    }
                    state.error = Some(error);
                    state.text_hash.clear();
                    continue;
                }
            };
            let hash = hex::encode(Sha256::digest(text.as_bytes()));
            if files.get(file).is_some_and(|s| s.text_hash == hash) {
                continue;
            }
            let compiled = compile(&self.engine, file, text);
            let state = files.entry(file.clone()).or_insert_with(|| {
                outcome.added.push(file.clone());
                FileState {
                    text_hash: String::new(),
                    good: None,
                    error: None,
                }
            });
            state.text_hash = hash;
            match compiled {
                Ok(mut rule) => {
                    if let Some((old, _)) = &state.good {
                        rule.stats = old.stats.clone(); // counts survive edits
                        if !outcome.added.contains(file) {
                            outcome.changed.push(file.clone());
                        }
                    }
                    state.good = Some((Arc::new(rule), now));
                    state.error = None;
                }
                Err(error) => {
                    outcome.errors.push(error.clone());
                    state.error = Some(error);
                }
            }
        }
        self.reload_errors
            .fetch_add(outcome.errors.len() as u64, Ordering::Relaxed);
        let version = set_version(&files);
        if version != self.current.load().version {
            let mut rules: Vec<Arc<CompiledRule>> = files
                .values()
                .filter_map(|s| s.good.as_ref().map(|(r, _)| r.clone()))
                .collect();
            rules.sort_by(|a, b| {
                a.priority
                    .cmp(&b.priority)
                    .then_with(|| a.name.cmp(&b.name))
            });
            self.current.store(Arc::new(RuleSet {
                version: version.clone(),
                rules,
                engine: self.engine.clone(),
            }));
            self.reloads.fetch_add(1, Ordering::Relaxed);
            outcome.new_version = Some(version);
        }
        outcome
    }

    /// Every rule file's status, by file.
    pub fn statuses(&self) -> Vec<RuleStatus> {
        let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        files
            .iter()
            .map(|(file, state)| {
                let good = state.good.as_ref();
                let stats = good
                    .map(|(r, _)| r.stats.clone())
                    .unwrap_or_else(|| Arc::new(RuleStats::default()));
                let status = match (&state.error, good) {
                    (Some(_), _) => RuleState::Error,
                    (None, Some((rule, _))) if !rule.enabled => RuleState::Disabled,
                    _ => RuleState::Active,
                };
                RuleStatus {
                    file: file.clone(),
                    name: good.map_or_else(|| file.clone(), |(r, _)| r.name.clone()),
                    description: good.and_then(|(r, _)| r.description.clone()),
                    status,
                    priority: good.map(|(r, _)| r.priority),
                    version: good.map(|(r, _)| r.version.clone()),
                    running_last_good: state.error.is_some() && good.is_some(),
                    error: state.error.clone(),
                    loaded_at: good.map(|(_, at)| *at),
                    evaluations: stats.evaluations.load(Ordering::Relaxed),
                    matches: stats.matches.load(Ordering::Relaxed),
                    errors: stats.errors.load(Ordering::Relaxed),
                }
            })
            .collect()
    }
}

/// The version of a set of files: a hash of each running rule's file and content.
fn set_version(files: &BTreeMap<String, FileState>) -> String {
    let mut hasher = Sha256::new();
    for (file, state) in files {
        if let Some((rule, _)) = &state.good {
            hasher.update(file.as_bytes());
            hasher.update([0]);
            hasher.update(rule.version.as_bytes());
            hasher.update([0]);
        }
    }
    hex::encode(&hasher.finalize()[..8])
}

/// Every `.rhai` file under `dir`, by path relative to it (with `/` separators), with its text
/// or why it could not be read. Hidden entries (names starting with `.`) are skipped.
pub fn read_rule_files(dir: &Path) -> BTreeMap<String, Result<String, String>> {
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out, 0);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Result<String, String>>, depth: usize) {
    if depth > 16 {
        return; // a symlink loop
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = std::fs::metadata(&path) else {
            continue; // a dangling symlink (mid-swap): the next scan sees the new target
        };
        if meta.is_dir() {
            walk(root, &path, out, depth + 1);
        } else if path.extension().is_some_and(|e| e == "rhai") {
            let relative = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            let text = std::fs::read(&path)
                .map_err(|e| format!("cannot read: {e}"))
                .and_then(|bytes| {
                    String::from_utf8(bytes).map_err(|e| {
                        format!(
                            "not UTF-8 (first bad byte at offset {})",
                            e.utf8_error().valid_up_to()
                        )
                    })
                });
            out.insert(relative, text);
        }
    }
}
