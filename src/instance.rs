//! This instance's row in the store's `instances` table, refreshed every few seconds and on each
//! rule reload, so that every instance sharing a database can see which rule set each one runs.

use crate::health::{WriteHealth, op};
use crate::rules::Rules;
pub(crate) use crate::store::InstanceInfo;
use crate::store::Store;
use crate::time::now_millis;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often an instance refreshes its row.
pub(crate) const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// Keeps `me` current in the store (its rule set version and `seen_at`) until `shutdown`. A rule
/// set change is reported within a second; a failed write is tried again a second later. Each
/// outcome goes to `health` (after an idle spell a success is the probe that writes work).
pub(crate) async fn heartbeat(
    store: Arc<dyn Store>,
    rules: Arc<Rules>,
    health: Arc<WriteHealth>,
    mut me: InstanceInfo,
    shutdown: CancellationToken,
) {
    let mut last_beat: Option<std::time::Instant> = None;
    loop {
        let version = rules.current().version.clone();
        let due = last_beat.is_none_or(|at| at.elapsed() >= HEARTBEAT_EVERY);
        if due || version != me.ruleset_version {
            me.ruleset_version = version;
            me.seen_at = now_millis();
            let beat = store.heartbeat(&me).await;
            health.record(op::HEARTBEAT, &beat);
            match beat {
                Ok(()) => last_beat = Some(std::time::Instant::now()),
                Err(error) => tracing::warn!(%error, "recording this instance's heartbeat failed"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => break,
        }
    }
}

/// This instance's id, unique to this process: host, pid and start time. Its processors and
/// workers take their lease owner names from it.
pub(crate) fn new_id() -> String {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    format!("{host}-pid{}-{started:x}", std::process::id())
}
