//! The limits a rule runs under besides Rhai's own (PURE): a wall-clock time budget per call into
//! a rule (`when`, `then`, `throttle`), checked from Rhai's progress callback against the calling
//! thread's deadline, and a cap on the actions one rule may return for one event.
//!
//! The operation limit alone does not bound time: one operation can copy a 64 KB string, so a
//! rule well under the limit could still take hundreds of milliseconds per event while the
//! events behind it wait. Time that is not the rule's own is given back, up to a cap (four
//! budgets, at least a second), so neither a slow database nor a busy machine fails rules: time
//! waiting on the store (windowed counters), and time the thread was not running at all (when
//! the deadline passes, the thread's CPU time tells how much of it the rule really used).

use cpu_time::ThreadTime;
use rhai::Dynamic;
use std::cell::Cell;
use std::time::{Duration, Instant};

/// Limits applied to every rule call, the same in `serve`, `try`, `test` and what-if.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleLimits {
    /// Wall-clock time one call of `when`, `then` or `throttle` may take.
    pub time_budget: Duration,
    /// Actions one rule may return for one event.
    pub max_actions: usize,
}

impl RuleLimits {
    pub(crate) const DEFAULT_TIME_BUDGET: Duration = Duration::from_millis(20);
    pub(crate) const DEFAULT_MAX_ACTIONS: usize = 20;
}

impl Default for RuleLimits {
    fn default() -> Self {
        RuleLimits {
            time_budget: Self::DEFAULT_TIME_BUDGET,
            max_actions: Self::DEFAULT_MAX_ACTIONS,
        }
    }
}

/// How often, in operations, the clock is read (reading it costs far more than an operation).
const CHECK_EVERY: u64 = 64;

/// The value Rhai's `ErrorTerminated` carries when a call ran out of its budget.
pub(super) const OUT_OF_TIME: &str = "time budget exceeded";

#[derive(Clone, Copy)]
struct Deadline {
    at: Instant,
    budget: Duration,
    /// The thread's CPU clock when the call began (where the platform has one).
    cpu_start: Option<ThreadTime>,
    /// Time given back so far (store waits, time off the CPU), and its cap.
    given_back: Duration,
    max_given_back: Duration,
}

impl Deadline {
    /// Moves the deadline by up to `time`, within the cap; false when nothing is left to give.
    fn give_back(&mut self, time: Duration) -> bool {
        let give = time.min(self.max_given_back.saturating_sub(self.given_back));
        self.at += give;
        self.given_back += give;
        !give.is_zero()
    }
}

thread_local! {
    static DEADLINE: Cell<Option<Deadline>> = const { Cell::new(None) };
}

/// Runs one rule call with `budget` from now. Calls nest (a helper evaluating under another
/// deadline restores it afterwards).
pub(super) fn run_with<T>(budget: Duration, call: impl FnOnce() -> T) -> T {
    struct Restore(Option<Deadline>);
    impl Drop for Restore {
        fn drop(&mut self) {
            DEADLINE.with(|d| d.set(self.0));
        }
    }
    let deadline = Deadline {
        at: Instant::now() + budget,
        budget,
        cpu_start: ThreadTime::try_now().ok(),
        given_back: Duration::ZERO,
        max_given_back: (budget * 4).max(Duration::from_secs(1)),
    };
    let _restore = Restore(DEADLINE.with(|d| d.replace(Some(deadline))));
    call()
}

/// Rhai's progress callback: stops the script once the current call is past its deadline.
pub(super) fn on_progress(operations: u64) -> Option<Dynamic> {
    if operations % CHECK_EVERY != 0 {
        return None;
    }
    let mut deadline = DEADLINE.with(Cell::get)?;
    let now = Instant::now();
    if now <= deadline.at {
        return None;
    }
    // Past the deadline: charge the rule only for the time it actually ran.
    let ran = deadline
        .cpu_start
        .and_then(|start| start.try_elapsed().ok());
    if let Some(ran) = ran.filter(|ran| *ran < deadline.budget) {
        let owed = deadline.budget - ran;
        let late = now - deadline.at;
        if deadline.give_back(late + owed) {
            DEADLINE.with(|cell| cell.set(Some(deadline)));
            return None;
        }
    }
    Some(Dynamic::from(OUT_OF_TIME))
}

/// Whether the call in progress is past its deadline.
#[cfg(test)]
fn exceeded() -> bool {
    DEADLINE
        .with(Cell::get)
        .is_some_and(|deadline| Instant::now() > deadline.at)
}

/// Marks a wait on something outside the rule (the store): while the guard lives, the time
/// passing is given back to the rule's budget when it drops, up to the cap.
pub(super) fn pause() -> Pause {
    Pause {
        started: Instant::now(),
    }
}

pub(super) struct Pause {
    started: Instant,
}

impl Drop for Pause {
    fn drop(&mut self) {
        let waited = self.started.elapsed();
        DEADLINE.with(|cell| {
            if let Some(mut deadline) = cell.get() {
                deadline.give_back(waited);
                cell.set(Some(deadline));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_deadline_outside_a_call() {
        assert!(on_progress(CHECK_EVERY).is_none());
        assert!(!exceeded());
    }

    #[test]
    fn a_call_past_its_deadline_is_stopped_and_the_outer_deadline_restored() {
        run_with(Duration::from_secs(3600), || {
            run_with(Duration::ZERO, || {
                spin(Duration::from_millis(2));
                assert!(exceeded());
                assert!(
                    on_progress(CHECK_EVERY + 1).is_none(),
                    "clock read every N only"
                );
                assert!(on_progress(CHECK_EVERY).is_some());
            });
            assert!(!exceeded(), "the outer call's deadline is back");
        });
        assert!(!exceeded());
    }

    /// Keeps this thread on the CPU for `time` of its own CPU time (sleeping would not count as
    /// the rule's time, and neither would time the test thread waits for a core).
    fn spin(time: Duration) {
        let start = ThreadTime::now();
        while start.elapsed() < time {
            std::hint::black_box(0u64);
        }
    }

    #[test]
    fn time_off_the_cpu_is_not_charged_but_stays_bounded() {
        run_with(Duration::from_millis(10), || {
            // Asleep past the deadline: the rule ran for microseconds, so it may go on.
            std::thread::sleep(Duration::from_millis(15));
            assert!(on_progress(CHECK_EVERY).is_none());
            // Running for real past the budget stops it.
            spin(Duration::from_millis(12));
            assert!(on_progress(CHECK_EVERY).is_some());
        });
        run_with(Duration::from_millis(1), || {
            // However long it sleeps, past the cap (1 s here) it is stopped.
            std::thread::sleep(Duration::from_millis(1100));
            assert!(on_progress(CHECK_EVERY).is_none(), "first give-back");
            std::thread::sleep(Duration::from_millis(1100));
            assert!(on_progress(CHECK_EVERY).is_some(), "cap reached");
        });
    }

    #[test]
    fn store_waits_are_given_back_up_to_the_cap() {
        run_with(Duration::from_millis(0), || {
            let before = DEADLINE.with(Cell::get).unwrap().at;
            {
                let _waiting = pause();
                std::thread::sleep(Duration::from_millis(5));
            }
            let after = DEADLINE.with(Cell::get).unwrap();
            assert!(after.at >= before + Duration::from_millis(5));
            assert!(after.given_back <= after.max_given_back);
            assert_eq!(after.max_given_back, Duration::from_secs(1));
        });
    }
}
