//! Hot reload: watches the rules directory (recursively, so editors' temp-file renames and
//! Kubernetes `..data` symlink swaps are seen), waits for a burst of changes to settle, then
//! rescans. A slow periodic rescan covers filesystems that send no events.

use super::load::{ReloadOutcome, Rules};
use notify::RecursiveMode;
use notify_debouncer_mini::new_debouncer;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

/// How long a burst of file events must be quiet before the rescan.
pub(crate) const DEBOUNCE: Duration = Duration::from_millis(150);
/// Rescan this often even without events.
pub(crate) const POLL: Duration = Duration::from_secs(2);

/// Stops the watcher when dropped.
pub struct WatchHandle {
    stop: Arc<AtomicBool>,
    wake: mpsc::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.wake.send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts watching `rules.dir()`; `on_reload` hears of every rescan that changed something.
pub fn watch(
    rules: Arc<Rules>,
    on_reload: impl Fn(&ReloadOutcome) + Send + 'static,
) -> WatchHandle {
    let stop = Arc::new(AtomicBool::new(false));
    let (wake, woken) = mpsc::channel::<()>();
    let events_wake = wake.clone();
    let thread_stop = stop.clone();
    let thread = std::thread::Builder::new()
        .name("rules-watch".into())
        .spawn(move || {
            let debouncer = new_debouncer(DEBOUNCE, move |_| {
                let _ = events_wake.send(());
            });
            let _debouncer = match debouncer {
                Ok(mut d) => match d.watcher().watch(rules.dir(), RecursiveMode::Recursive) {
                    Ok(()) => Some(d),
                    Err(error) => {
                        tracing::warn!(dir = %rules.dir().display(), %error, "cannot watch the rules directory; polling every {POLL:?}");
                        None
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, "file watching unavailable; polling every {POLL:?}");
                    None
                }
            };
            while !thread_stop.load(Ordering::Relaxed) {
                let _ = woken.recv_timeout(POLL);
                if thread_stop.load(Ordering::Relaxed) {
                    break;
                }
                while woken.try_recv().is_ok() {}
                let outcome = rules.rescan();
                if !outcome.is_empty() || outcome.new_version.is_some() {
                    on_reload(&outcome);
                }
            }
        })
        .expect("spawning the rules watcher thread");
    WatchHandle {
        stop,
        wake,
        thread: Some(thread),
    }
}
