//! The real-database harness shared by the integration tests, the demo and the benches.
//!
//! - [`pg`]: a real PostgreSQL primary with two streaming replicas on free loopback ports, in a
//!   temporary directory, with the roles the tests use. Started once per process; a reaper
//!   process stops the servers and removes the directory when the process that started them
//!   exits, however it exits.
//! - [`mysql`]: a real MariaDB primary with two GTID replicas, the same way.
//! - [`proxy`]: an in-process sqlswitch in front of it, on `127.0.0.1:0`.
//! - [`client`]: tokio-postgres helpers for the tests.
#![forbid(unsafe_code)]

pub mod client;
pub mod mysql;
pub mod pg;
pub mod proxy;
