//! Delivers `email` jobs: the message built from the job and sent.

use crate::action::{ActionRequest, JobKind};
use crate::delivery::email::{Mailer, build_message};
use crate::delivery::retry::AttemptResult;
use crate::delivery::worker::Deliver;
use crate::store::StoredJob;

/// Delivers `email` jobs.
pub(crate) struct EmailDeliverer {
    pub(crate) mailer: Mailer,
    pub(crate) from: lettre::message::Mailbox,
}

#[async_trait::async_trait]
impl Deliver for EmailDeliverer {
    fn kind(&self) -> JobKind {
        JobKind::Email
    }

    async fn attempt(&self, job: &StoredJob) -> (AttemptResult, Option<i64>) {
        let permanent = |reason: String| (AttemptResult::Permanent { reason }, None);
        let Ok(ActionRequest::Email(spec)) = serde_json::from_value(job.spec.clone()) else {
            return permanent(format!("job {} is not an email action", job.id));
        };
        match build_message(&self.from, &spec, &job.idempotency_key) {
            Ok(message) => self.mailer.send(message).await,
            Err(error) => permanent(error.to_string()),
        }
    }
}
