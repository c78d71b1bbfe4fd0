//! The load-bench suite for sqlswitch (`scripts/bench`): real databases, PgBouncer and the
//! sqlswitch binary as real processes, every workload against each in alternating rounds, and a
//! table of medians and ratios. `loadbench` is the entry point; these are its parts.
#![forbid(unsafe_code)]

pub mod charts;
pub mod measure;
pub mod peers;
pub mod report;
pub mod targets;
pub mod txpool;
pub mod txpool_mysql;

/// A comma-separated list from the environment variable `name`, else from `default`.
pub fn list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name).unwrap_or_else(|_| default.into()).split(',').map(|s| s.trim().to_owned()).collect()
}
