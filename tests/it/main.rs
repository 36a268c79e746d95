//! The integration tests: one binary, one module per area.

mod browser;
mod console;
mod counters;
mod crash;
mod delivery;
mod dispatch;
mod email;
mod faults;
mod intake;
mod props;
mod rules;
mod scale;
mod store;
mod util;
