//! Periodic maintenance of the store: pruning the counter hits and throttle windows no window
//! needs any more.

use crate::health::{Backoff, WriteHealth, op};
use crate::store::Store;
use crate::time::now_millis;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Every ten minutes, deletes counter hits older than `retention` and closed throttle windows,
/// a bounded batch per statement (several instances doing it at once is harmless). After a
/// failed round the next one comes sooner: 30 s, doubling up to the ten minutes.
pub(crate) async fn prune(
    store: Arc<dyn Store>,
    retention: Duration,
    health: Arc<WriteHealth>,
    stop: CancellationToken,
) {
    const EVERY: Duration = Duration::from_secs(600);
    const BATCH: u32 = 5_000;
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let mut backoff = Backoff::new(Duration::from_secs(30), EVERY);
    let mut next = EVERY;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            _ = stop.cancelled() => break,
        }
        next = EVERY;
        let mut pruned = 0;
        loop {
            let now = now_millis();
            let round = store
                .prune(now.saturating_sub(retention_ms), now, BATCH)
                .await;
            health.record(op::PRUNE, &round);
            match round {
                Ok(n) => {
                    backoff.succeeded();
                    pruned += n;
                    if n < u64::from(BATCH) || stop.is_cancelled() {
                        break;
                    }
                }
                Err(error) => {
                    next = backoff.failed();
                    tracing::warn!(%error, retry_in_secs = next.as_secs(), "pruning old counter hits failed; will retry");
                    break;
                }
            }
        }
        if pruned > 0 {
            tracing::info!(
                rows = pruned,
                "pruned counter hits and throttle windows no window needs"
            );
        }
    }
}
