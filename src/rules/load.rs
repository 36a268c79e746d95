//! Loading the rules directory and keeping it current: every `.rhai` file under it (subfolders
//! too, hidden entries such as Kubernetes' `..data` skipped) is compiled; a file that fails to
//! compile never replaces the last good version of its rule; each change builds a new `RuleSet`
//! that is swapped in whole. Only regular files inside the directory are read: a symlink counts
//! when it resolves inside it (a ConfigMap's `..data` links do), and one that points outside, a
//! loop, or anything that is not a regular file is reported as that entry's error.

use super::budget::RuleLimits;
use super::compile::{CompileError, CompiledRule, RuleStats, build_engine, compile};
use super::env::RuleEnv;
use super::eval::RuleSet;
use arc_swap::ArcSwap;
use rhai::Engine;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
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
    pub(crate) fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.changed.is_empty()
            && self.removed.is_empty()
            && self.errors.is_empty()
    }
}

/// What the rules were compiled with, and each file's state: one lock, so a rescan and a
/// reconfiguration never interleave.
struct Loaded {
    env: RuleEnv,
    engine: Arc<Engine>,
    files: BTreeMap<String, FileState>,
}

/// The live rules of a directory.
pub struct Rules {
    dir: PathBuf,
    limits: RuleLimits,
    current: ArcSwap<RuleSet>,
    loaded: Mutex<Loaded>,
    /// Rescans that changed the rule set, and files that failed to compile, since start.
    pub reloads: AtomicU64,
    pub reload_errors: AtomicU64,
}

impl Rules {
    /// Loads `dir` (which may not exist yet: the set is then empty until it does), with the
    /// default limits.
    pub fn load(dir: impl Into<PathBuf>, env: RuleEnv) -> Rules {
        Rules::load_with(dir, env, RuleLimits::default())
    }

    /// Loads `dir` against the configuration `env`; every rule runs under `limits`.
    pub fn load_with(dir: impl Into<PathBuf>, env: RuleEnv, limits: RuleLimits) -> Rules {
        let engine = Arc::new(build_engine(Arc::new(env.settings.clone())));
        let rules = Rules {
            dir: dir.into(),
            current: ArcSwap::from_pointee(RuleSet::empty(engine.clone(), limits)),
            limits,
            loaded: Mutex::new(Loaded {
                env,
                engine,
                files: BTreeMap::new(),
            }),
            reloads: AtomicU64::new(0),
            reload_errors: AtomicU64::new(0),
        };
        rules.rescan();
        rules
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The rule set to evaluate an event against (one version, whatever reloads happen meanwhile).
    pub fn current(&self) -> Arc<RuleSet> {
        self.current.load_full()
    }

    /// The configuration the rules are compiled against.
    pub fn env(&self) -> RuleEnv {
        self.lock().env.clone()
    }

    /// Compiles every rule again against a new configuration (a configuration reload): a rule
    /// that no longer compiles keeps its last good version running, as on a file change.
    pub fn reconfigure(&self, env: RuleEnv) -> ReloadOutcome {
        let mut loaded = self.lock();
        if loaded.env == env {
            return ReloadOutcome::default();
        }
        loaded.engine = Arc::new(build_engine(Arc::new(env.settings.clone())));
        loaded.env = env;
        for state in loaded.files.values_mut() {
            state.text_hash.clear(); // compile each file again
        }
        self.rescan_locked(&mut loaded, true)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Loaded> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the directory again and applies what changed.
    pub(crate) fn rescan(&self) -> ReloadOutcome {
        let mut loaded = self.lock();
        self.rescan_locked(&mut loaded, false)
    }

    /// Reads the directory and applies what changed; `new_engine` swaps the set in even when no
    /// file changed (its engine did).
    fn rescan_locked(&self, loaded: &mut Loaded, new_engine: bool) -> ReloadOutcome {
        let texts = read_rule_files(&self.dir);
        let engine = loaded.engine.clone();
        let files = &mut loaded.files;
        let mut outcome = ReloadOutcome::default();
        let now = crate::time::now_millis();
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
            let compiled = compile(&engine, file, text);
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
        let version = set_version(files);
        if new_engine || version != self.current.load().version {
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
                engine,
                limits: self.limits,
            }));
            self.reloads.fetch_add(1, Ordering::Relaxed);
            outcome.new_version = Some(version);
        }
        outcome
    }

    /// Every rule file's status, by file.
    pub fn statuses(&self) -> Vec<RuleStatus> {
        self.lock()
            .files
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

/// Rule files larger than this are refused rather than read.
pub(crate) const MAX_RULE_FILE_BYTES: u64 = 1024 * 1024;

/// Every `.rhai` file under `dir`, by path relative to it (with `/` separators), with its text
/// or why it could not be read. Hidden entries (names starting with `.`) are skipped; symlinks
/// count only when they resolve inside `dir`; an entry refused for that reason (or a loop, or a
/// `.rhai` entry that is not a regular file) appears with its error, so it is not silently
/// missing.
pub(crate) fn read_rule_files(dir: &Path) -> BTreeMap<String, Result<String, String>> {
    let mut out = BTreeMap::new();
    let Ok(root) = dir.canonicalize() else {
        return out; // no directory (yet): no rules
    };
    let mut walker = Walker {
        root: root.clone(),
        seen_dirs: HashSet::from([root.clone()]),
        out: &mut out,
    };
    walker.walk(&root, "");
    out
}

struct Walker<'a> {
    /// The rules directory, resolved.
    root: PathBuf,
    /// Directories read so far, resolved: a second way into one is a loop or a duplicate.
    seen_dirs: HashSet<PathBuf>,
    out: &'a mut BTreeMap<String, Result<String, String>>,
}

impl Walker<'_> {
    /// Reads `dir` (resolved), whose path relative to the root is `prefix`. Plain entries come
    /// before symlinks, each in name order, so which way into a directory counts is stable.
    fn walk(&mut self, dir: &Path, prefix: &str) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<(bool, String, PathBuf)> = entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let is_link = entry.file_type().ok()?.is_symlink();
                (!name.starts_with('.')).then(|| (is_link, name, entry.path()))
            })
            .collect();
        entries.sort();
        for (is_link, name, path) in entries {
            let relative = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            let is_rule = name.ends_with(".rhai");
            let resolved = if is_link {
                match path.canonicalize() {
                    Ok(target) => target,
                    // Dangling (mid-swap, or a loop of links): the next scan sees the new target.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        if is_rule {
                            self.out
                                .insert(relative, Err(format!("cannot follow the symlink: {e}")));
                        }
                        continue;
                    }
                }
            } else {
                path.clone()
            };
            let Ok(meta) = std::fs::metadata(&resolved) else {
                continue; // removed meanwhile
            };
            if is_link && !resolved.starts_with(&self.root) {
                if is_rule || meta.is_dir() {
                    self.out.insert(
                        relative,
                        Err("a symlink to outside the rules directory: not read".into()),
                    );
                }
                continue;
            }
            if meta.is_dir() {
                if self.seen_dirs.insert(resolved.clone()) {
                    self.walk(&resolved, &relative);
                } else {
                    self.out.insert(
                        relative,
                        Err(
                            "a symlink to a directory already read (a loop or a second way in): \
                             not read again"
                                .into(),
                        ),
                    );
                }
            } else if is_rule {
                self.out.insert(relative, read_rule_file(&resolved, &meta));
            }
        }
    }
}

fn read_rule_file(path: &Path, meta: &std::fs::Metadata) -> Result<String, String> {
    if !meta.is_file() {
        return Err("not a regular file: not read".into());
    }
    if meta.len() > MAX_RULE_FILE_BYTES {
        return Err(format!(
            "{} bytes: a rule file may be at most {MAX_RULE_FILE_BYTES} bytes",
            meta.len()
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "not UTF-8 (first bad byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}
