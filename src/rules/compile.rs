//! Compiling rule files (PURE): the one sandboxed Rhai `Engine` with every limit set and the
//! helpers registered, and `compile`, which turns a file's text into a `CompiledRule` or a
//! `CompileError` naming file, line and column.

use super::{actions, stdlib};
use crate::action::ActionRequest;
use rhai::{AST, Dynamic, Engine, Map, Position, Scope};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// Sandbox limits. A rule that exceeds one fails (that rule only) with an error naming it.
pub(crate) mod limits {
    /// Operations per call of `when`, `then` or `throttle`: `loop {}` stops here (~1 ms).
    pub(crate) const OPERATIONS: u64 = 100_000;
    pub(crate) const CALL_LEVELS: usize = 16;
    pub(crate) const EXPR_DEPTH: usize = 64;
    pub(crate) const FN_EXPR_DEPTH: usize = 32;
    pub(crate) const STRING_SIZE: usize = 64 * 1024;
    pub(crate) const ARRAY_SIZE: usize = 10_000;
    pub(crate) const MAP_SIZE: usize = 1_000;
    pub(crate) const VARIABLES: usize = 256;
    pub(crate) const FUNCTIONS: usize = 64;
}

/// Values from the service's configuration that rules read with `setting("name")` (e.g. a
/// supervisor's address), so addresses live in config, not in rule files.
pub type RuleSettings = BTreeMap<String, String>;

/// Builds the engine every rule runs on: Rhai's standard library minus `eval`, modules and
/// the clock (features `no_module`, `no_time`), no output, explicit limits, and the helpers.
pub(crate) fn build_engine(vars: Arc<RuleSettings>) -> Engine {
    let mut engine = Engine::new();
    engine
        .set_max_operations(limits::OPERATIONS)
        .set_max_call_levels(limits::CALL_LEVELS)
        .set_max_expr_depths(limits::EXPR_DEPTH, limits::FN_EXPR_DEPTH)
        .set_max_string_size(limits::STRING_SIZE)
        .set_max_array_size(limits::ARRAY_SIZE)
        .set_max_map_size(limits::MAP_SIZE)
        .set_max_variables(limits::VARIABLES)
        .set_max_functions(limits::FUNCTIONS)
        .set_fail_on_invalid_map_property(false)
        .disable_symbol("eval");
    engine.on_progress(super::budget::on_progress);
    engine.on_print(|_| {});
    engine.on_debug(|_, _, _| {});

    engine
        .register_type_with_name::<ActionRequest>("Action")
        .register_fn("to_string", |a: &mut ActionRequest| {
            serde_json::to_string(a).unwrap_or_default()
        })
        .register_fn("email", actions::email)
        .register_fn("webhook", actions::webhook)
        .register_fn("callback_task", actions::callback_task)
        .register_fn("close_callback_tasks", actions::close_callback_tasks)
        .register_fn("count_in_window", |key: &str, window: &str| stdlib::count_in_window(key, window))
        .register_fn("count_in_window", |key: Dynamic, window: &str| {
            stdlib::count_in_window(&key.to_string(), window)
        })
        .register_fn("parse_time", stdlib::parse_time_secs)
        .register_fn("local_hour", stdlib::local_hour)
        .register_fn("weekday", stdlib::weekday)
        .register_fn("in_hours", stdlib::in_hours)
        .register_fn("matches", stdlib::matches)
        .register_fn("matches", |_: (), _: &str| false)
        .register_fn("setting", {
            let vars = vars.clone();
            move |name: &str| -> Result<String, Box<rhai::EvalAltResult>> {
                vars.get(name).cloned().ok_or_else(|| {
                    format!("setting(\"{name}\"): no such rule setting in the configuration ([rule_settings])").into()
                })
            }
        })
        .register_fn("setting", move |name: &str, default: &str| {
            vars.get(name).cloned().unwrap_or_else(|| default.to_string())
        });
    register_absent_comparisons(&mut engine);
    engine
}

/// Absent fields are `()`. Rhai's `==`/`!=` between different types already give
/// false/true; ordering comparisons would raise, so they are defined as false here: a rule
/// reading `ev.queue_time > 60` for a push without `queue_time` simply does not fire.
fn register_absent_comparisons(engine: &mut Engine) {
    macro_rules! never {
        ($($t:ty),*) => {$(
            for op in [">", ">=", "<", "<="] {
                engine.register_fn(op, |_: (), _: $t| false);
                engine.register_fn(op, |_: $t, _: ()| false);
            }
        )*};
    }
    never!(i64, f64, rhai::ImmutableString);
    for op in [">", ">=", "<", "<="] {
        engine.register_fn(op, |_: (), _: ()| false);
    }
}

/// A rule file that does not compile: where and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct CompileError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl CompileError {
    fn at(file: &str, pos: Position, message: impl Into<String>) -> Self {
        CompileError {
            file: file.to_string(),
            line: pos.line().unwrap_or(1),
            column: pos.position().unwrap_or(1),
            message: message.into(),
        }
    }
}

/// Per-rule counters, shared by every rule-set version the rule is part of.
#[derive(Debug, Default)]
pub struct RuleStats {
    pub evaluations: AtomicU64,
    pub matches: AtomicU64,
    pub errors: AtomicU64,
    /// Evaluations the prefilter answered without running the rule (included in `evaluations`).
    pub prefiltered: AtomicU64,
}

/// A compiled rule: its metadata, its functions, and its counters.
#[derive(Debug)]
pub struct CompiledRule {
    /// Path relative to the rules directory.
    pub file: String,
    /// `NAME`, or the file path.
    pub name: String,
    pub description: Option<String>,
    pub enabled: bool,
    /// Lower runs first; ties by name.
    pub priority: i64,
    /// SHA-256 of the file's text.
    pub version: String,
    pub(super) ast: AST,
    pub(super) has_throttle: bool,
    /// What `when` provably requires of an event (see `prefilter`).
    pub(super) requirements: Vec<super::prefilter::Requirement>,
    pub stats: Arc<RuleStats>,
}

/// Compiles one rule file. The file's top level may only declare its metadata constants (it is
/// run once, here, under the same limits); `when(ev)` and `then(ev)` are required, `throttle(ev)`
/// is optional.
pub(crate) fn compile(
    engine: &Engine,
    file: &str,
    source: &str,
) -> Result<CompiledRule, CompileError> {
    let ast = engine.compile(source).map_err(|e| {
        let pos = e.position();
        CompileError::at(file, pos, e.err_type().to_string())
    })?;
    let arity = |name: &str| {
        ast.iter_functions()
            .find(|f| f.name == name)
            .map(|f| f.params.len())
    };
    for required in ["when", "then"] {
        match arity(required) {
            Some(1) => {}
            Some(n) => {
                return Err(CompileError::at(
                    file,
                    Position::new(1, 1),
                    format!("`fn {required}` must take one parameter (the event), not {n}"),
                ));
            }
            None => {
                return Err(CompileError::at(
                    file,
                    Position::new(1, 1),
                    format!(
                        "missing `fn {required}(ev)`: a rule needs `fn when(ev)` (does it fire?) and `fn then(ev)` (its actions)"
                    ),
                ));
            }
        }
    }
    let has_throttle = match arity("throttle") {
        None => false,
        Some(1) => true,
        Some(n) => {
            return Err(CompileError::at(
                file,
                Position::new(1, 1),
                format!("`fn throttle` must take one parameter (the event), not {n}"),
            ));
        }
    };
    let mut scope = Scope::new();
    engine
        .run_ast_with_scope(&mut scope, &ast)
        .map_err(|e| CompileError::at(file, e.position(), format!("top level: {e}")))?;
    let text = |name: &str| -> Result<Option<String>, CompileError> {
        match scope.get(name) {
            None => Ok(None),
            Some(v) => v.clone().into_string().map(Some).map_err(|t| {
                CompileError::at(
                    file,
                    Position::new(1, 1),
                    format!("`{name}` must be a string, not {t}"),
                )
            }),
        }
    };
    let name = text("NAME")?.unwrap_or_else(|| file.to_string());
    let description = text("DESCRIPTION")?;
    let enabled = match scope.get("ENABLED") {
        None => true,
        Some(v) => v.as_bool().map_err(|t| {
            CompileError::at(
                file,
                Position::new(1, 1),
                format!("`ENABLED` must be true or false, not {t}"),
            )
        })?,
    };
    let priority = match scope.get("PRIORITY") {
        None => 100,
        Some(v) => v.as_int().map_err(|t| {
            CompileError::at(
                file,
                Position::new(1, 1),
                format!("`PRIORITY` must be an integer, not {t}"),
            )
        })?,
    };
    let when_param = ast
        .iter_functions()
        .find(|f| f.name == "when")
        .and_then(|f| f.params.first().map(|p| p.to_string()))
        .unwrap_or_default();
    let requirements = super::prefilter::requirements(&ast, &when_param);
    Ok(CompiledRule {
        requirements,
        file: file.to_string(),
        name,
        description,
        enabled,
        priority,
        version: hex::encode(Sha256::digest(source.as_bytes())),
        ast: ast.clone_functions_only(),
        has_throttle,
        stats: Arc::default(),
    })
}

/// A throttle a rule asked for: repeated actions under `key` within `window_ms` are suppressed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Throttle {
    pub key: String,
    pub window_ms: i64,
}

/// Reads `throttle(ev)`'s result: `#{ key, window }`; an absent key means no throttle.
pub(super) fn throttle_from(value: Dynamic) -> Result<Option<Throttle>, String> {
    let map: Map = value
        .try_cast::<Map>()
        .ok_or("`throttle` must return #{ key: …, window: \"30m\" }")?;
    let key = match map.get("key") {
        None => return Ok(None),
        Some(k) if k.is_unit() => return Ok(None),
        Some(k) => k.to_string(),
    };
    let window = map
        .get("window")
        .and_then(|w| w.clone().into_string().ok())
        .ok_or("`throttle` needs a `window` such as \"30m\"")?;
    let window: Duration = crate::time::parse_duration(&window)?;
    Ok(Some(Throttle {
        key,
        window_ms: i64::try_from(window.as_millis()).unwrap_or(i64::MAX),
    }))
}
