//! wsfan's local stack. Today: the `@connections` server that tests, benchmarks and the local
//! stack share.

pub mod connections;
pub mod sources;
