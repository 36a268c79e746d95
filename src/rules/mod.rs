//! Rules: Rhai scripts in the rules directory decide, per event, which actions to take.
//!
//! # The rule format
//! One rule per `.rhai` file (subfolders allowed; hidden files and folders are ignored):
//!
//! ```rhai
//! // Abandoned after waiting over a minute: tell ops, and make sure someone calls back.
//! const NAME = "abandoned-in-queue";     // optional; default: the file's path
//! const DESCRIPTION = "…";               // optional
//! const ENABLED = true;                  // optional (default true)
//! const PRIORITY = 10;                   // optional; lower runs first (default 100)
//!
//! fn when(ev) { ev.outcome == "queue_abandoned" && ev.queue_time > 60 }
//! fn then(ev) {[
//!     email(#{ to: "ops@example.com", subject: `Abandoned after ${ev.queue_time}s: ${ev.customer_phone}` }),
//!     callback_task(#{ phone: ev.customer_phone, reason: "abandoned in queue", due_in: "15m" }),
//! ]}
//! // optional: suppress repeats of this rule's actions for the same key within the window
//! fn throttle(ev) { #{ key: ev.customer_phone, window: "30m" } }
//! ```
//!
//! `ev` is the decoded event (`CallEvent`'s JSON view): absent fields are `()`, and ordering
//! comparisons with `()` are false, so a rule never fails on a missing field. See the README for
//! the actions and helpers.
//!
//! - [`compile`] (PURE): the sandboxed engine and compiling one file.
//! - [`env`] (PURE): what the configuration offers rules (settings, webhook targets).
//! - [`eval`] (PURE): evaluating an event against a rule set.
//! - [`actions`] (PURE): the Rhai constructors of the actions rules return ([`crate::action`]).
//! - [`budget`] (PURE): the time budget per rule call and the cap on actions per rule.
//! - [`stdlib`] (PURE): helpers (times, hours, regex, windowed counter).
//! - [`prefilter`] (PURE): what `when` provably requires, to skip rules that cannot fire.
//! - [`load`]: the rules directory, last good versions, atomic swaps.
//! - [`watch`]: hot reload.
//! - [`tools`]: `check`, `try`, `test`.
//! - [`whatif`] (PURE): what a candidate rule set would change on stored events.

mod actions;
mod budget;
mod compile;
mod env;
mod eval;
mod load;
mod prefilter;
mod stdlib;
pub mod tools;
pub mod watch;
pub(crate) mod whatif;

pub use budget::RuleLimits;
pub use compile::{CompileError, RuleSettings, Throttle};
pub use env::RuleEnv;
pub use eval::{EvalContext, Evaluation, RuleSet, RuleVerdict};
pub use load::{ReloadOutcome, RuleState, RuleStatus, Rules};
pub use stdlib::{CounterHit, CounterSource, FixedCounters};
