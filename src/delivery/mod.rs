//! Delivery of the actions matching rules ask for: a durable, retrying job queue and the senders
//! (email, webhook, callback tasks). So far: the pure retry policy and request signing.

pub mod email;
pub mod retry;
pub mod signing;
pub mod webhook;
pub mod worker;
