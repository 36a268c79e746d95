//! `switchboard tasks`: list, claim, complete or cancel callback tasks.

use super::time;
use clap::Subcommand;
use switchboard::store::{TaskStatus, TaskTransition};

#[derive(Debug, Subcommand)]
pub enum TasksAction {
    /// Most urgent first
    List {
        /// open, claimed, done or cancelled
        #[arg(long, default_value = "open")]
        status: TaskStatus,
        #[arg(long)]
        phone: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Take an open task
    Claim {
        id: i64,
        #[arg(long)]
        agent: String,
    },
    /// Mark a task done
    Complete {
        id: i64,
        #[arg(long)]
        outcome: String,
    },
    /// Cancel a task
    Cancel {
        id: i64,
        #[arg(long)]
        outcome: String,
    },
}

/// Runs `action` on the database at `url`, printing a table of tasks or what was done.
pub async fn run(url: String, action: TasksAction) -> anyhow::Result<()> {
    let store = switchboard::store::open(&url).await?;
    let now = switchboard::time::now_millis();
    let (id, transition, agent, outcome) = match action {
        TasksAction::List {
            status,
            phone,
            limit,
        } => {
            let query = switchboard::store::TaskQuery {
                status: Some(status),
                phone,
                due_before: None,
                limit,
            };
            println!(
                "{:>8}  {:<9}  {:>8}  {:<19}  {:<15}  reasons",
                "id", "status", "priority", "due", "phone"
            );
            for task in store.list_callback_tasks(&query).await? {
                let reasons: Vec<&str> = task
                    .reasons
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r["reason"].as_str())
                    .collect();
                println!(
                    "{:>8}  {:<9}  {:>8}  {:<19}  {:<15}  {}",
                    task.id,
                    task.status,
                    task.priority,
                    time(task.due_at),
                    task.phone,
                    reasons.join("; ")
                );
            }
            store.close().await;
            return Ok(());
        }
        TasksAction::Claim { id, agent } => (id, TaskTransition::Claim, Some(agent), None),
        TasksAction::Complete { id, outcome } => {
            (id, TaskTransition::Complete, None, Some(outcome))
        }
        TasksAction::Cancel { id, outcome } => (id, TaskTransition::Cancel, None, Some(outcome)),
    };
    let moved = store
        .update_callback_task(id, transition, agent.as_deref(), outcome.as_deref(), now)
        .await?;
    store.close().await;
    anyhow::ensure!(
        moved,
        "callback task {id} is not {} (or does not exist)",
        transition.from_names()
    );
    println!("callback task {id} is {}", transition.to());
    Ok(())
}
