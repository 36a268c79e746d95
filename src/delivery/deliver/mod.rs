//! The deliverers: for each job kind, what one attempt of a job does.

mod callback_task;
mod dispatch;
mod email;
mod webhook;

pub(crate) use callback_task::CallbackDeliverer;
pub(crate) use dispatch::DispatchDeliverer;
pub(crate) use email::EmailDeliverer;
pub(crate) use webhook::{WebhookDeliverer, WebhookSettings};
