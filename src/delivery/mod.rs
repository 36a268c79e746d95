//! Delivery of the actions matching rules ask for: a durable, retrying job queue and the senders
//! (email, webhook, callback tasks). This module so far holds the pure retry policy.

pub mod retry;
