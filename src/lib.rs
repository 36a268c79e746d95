//! Switchboard: receives Udesk call-trigger notifications, matches them against Rhai rules and
//! runs the actions they ask for.
pub mod event;
