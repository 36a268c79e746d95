//! The deliverers: for each job kind, what one attempt of a job does.

mod callback_task;
mod dispatch;
mod email;
mod webhook;

pub use callback_task::CallbackDeliverer;
pub use dispatch::DispatchDeliverer;
pub use email::EmailDeliverer;
pub use webhook::{WebhookDeliverer, WebhookSettings};
