//! The integration tests: one binary, one module per area.

mod browser;
mod console;
mod crash;
mod delivery;
mod dispatch;
mod email;
mod intake;
mod props;
mod rules;
mod scale;
mod store;
mod util;
