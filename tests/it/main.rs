//! The integration tests: one binary, one module per area.

mod crash;
mod intake;
mod props;
mod store;
mod util;
