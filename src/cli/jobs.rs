//! `switchboard jobs`: list, retry or cancel delivery jobs.

use super::time;
use clap::Subcommand;
use switchboard::store::JobStatus;

#[derive(Debug, Subcommand)]
pub enum JobsAction {
    /// Newest first
    List {
        /// pending, retrying, done, dead, suppressed, muted or cancelled
        #[arg(long)]
        status: Option<JobStatus>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Give a dead job another attempt now
    Retry { id: i64 },
    /// Cancel a pending, retrying or dead job
    Cancel {
        id: i64,
        #[arg(long, default_value = "cancelled by an operator")]
        note: String,
    },
}

/// Runs `action` on the database at `url`, printing a table of jobs or what was done.
pub async fn run(url: String, action: JobsAction) -> anyhow::Result<()> {
    let store = switchboard::store::open(&url).await?;
    let now = switchboard::time::now_millis();
    match action {
        JobsAction::List { status, limit } => {
            println!(
                "{:>8}  {:<10}  {:<20}  {:>8}  {:<19}  rule / note",
                "id", "status", "kind", "attempts", "next or finished"
            );
            for job in store.list_jobs(status, None, limit).await? {
                let when = job
                    .finished_at
                    .map(time)
                    .unwrap_or_else(|| time(job.next_attempt_at.max(job.created_at)));
                let note = job
                    .note
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default();
                println!(
                    "{:>8}  {:<10}  {:<20}  {:>8}  {:<19}  {}{note}",
                    job.id, job.status, job.kind, job.attempts, when, job.rule
                );
            }
        }
        JobsAction::Retry { id } => {
            anyhow::ensure!(
                store.retry_job(id, now).await?,
                "job {id} is not dead (or does not exist)"
            );
            println!("job {id} will be tried again now");
        }
        JobsAction::Cancel { id, note } => {
            anyhow::ensure!(
                store.cancel_job(id, &note, now).await?,
                "job {id} cannot be cancelled (done, cancelled or missing)"
            );
            println!("job {id} cancelled");
        }
    }
    store.close().await;
    Ok(())
}
