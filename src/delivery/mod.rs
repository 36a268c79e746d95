//! Delivery of the actions matching rules ask for: the retry policy, request signing and where
//! requests may go (PURE), the senders (email, webhook, Udesk web callback), what an attempt of
//! each job kind does, and the workers that run the durable, retrying job queue.

pub mod address;
pub(crate) mod deliver;
pub mod email;
pub mod retry;
pub mod signing;
pub mod udesk;
pub mod webhook;
pub(crate) mod worker;
