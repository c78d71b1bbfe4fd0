//! The real-database harness shared by the integration tests, the demo and the benches.
//!
//! - [`pg`]: a real PostgreSQL primary with two streaming replicas on free loopback ports, in a
//!   temporary directory, with the roles the tests use. Started once per process; a reaper
//!   process stops the servers and removes the directory when the process that started them
//!   exits, however it exits.
//! - [`mysql`]: a real MariaDB primary with two GTID replicas, the same way.
//! - [`proxy`]: an in-process sqlswitch in front of it, on `127.0.0.1:0`.
//! - [`client`]: tokio-postgres helpers for the tests.
//! - [`etcd`]: a real etcd for fleet mode, and a relay in front of it that a test can cut.
//! - [`relay`]: a TCP relay that resets or blackholes its connections (network faults).
//! - [`faults`]: the randomized fault loop and its history checker (`scripts/faults`).
//! - [`upgrade`]: two PostgreSQL clusters, the new one subscribed to the old (upgrade cutover).
#![forbid(unsafe_code)]

pub mod client;
pub mod etcd;
pub mod faults;
pub mod fleet;
pub mod mysql;
pub mod mysql_raw;
pub mod pg;
pub mod pg_raw;
pub mod proxy;
pub mod relay;
pub mod upgrade;

/// How long one test binary may run before it is taken for hung, in seconds
/// (`SQLSWITCH_TEST_LIMIT_SECS` overrides it). Each binary takes well under a minute here.
const TEST_BINARY_LIMIT_SECS: u64 = 600;

/// Starts, once per process, a thread that ends a test binary that runs past its limit: a test
/// that hangs then fails the run in minutes, naming itself (the test runner reports each test
/// running for over 60 seconds), instead of holding CI until its own timeout. The servers are
/// stopped by their reapers as the process exits.
pub fn watchdog() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let limit = std::env::var("SQLSWITCH_TEST_LIMIT_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(TEST_BINARY_LIMIT_SECS);
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(limit));
            eprintln!(
                "\nthis test binary has run for {limit} s: a test hangs (see which ran for over 60 seconds above)"
            );
            std::process::exit(101);
        });
    });
}
