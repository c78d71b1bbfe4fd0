//! sqlswitch, the daemon: a read/write-splitting proxy in front of a primary and its replicas.
//!
//! - [`server`]: listeners, accept loops, graceful shutdown; [`Daemon`] is the running whole.
//! - [`cluster`]: a cluster at run time (backends, pools, users' SCRAM verifiers) and the choice
//!   of backend for a session.
//! - [`pg`]: PostgreSQL clients: startup and authentication ([`pg::client`]), backend
//!   connections ([`pg::backend`]), the byte-forwarding session ([`pg::session`]) that groups
//!   client messages into batches ([`pg::batch`]) and routes each ([`pg::dispatch`]).
//! - [`mysql`]: MySQL/MariaDB clients: handshake, login, backend connections and the relay.
//! - [`session`]: what both protocols' sessions share: the primary and replica connection slots,
//!   the per-backend session count, and the state that follows a session across connections
//!   ([`session::state`]).
//! - [`backend`]: the backend connection error (whose fault, whether retryable) and the login
//!   deadline, for both protocols.
//! - [`replication`]: positions and their parsers, the clock, a backend's health, each
//!   protocol's replication SQL, and the control connection the monitor and switchover use.
//! - [`pool`]: idle backend connections keyed by login.
//! - [`cancel`]: the proxy's own cancel keys, mapped to the backends running the queries.
//! - [`admin`], [`control`], [`switchover`], [`failover`]: the admin socket, the operations
//!   behind its commands, the zero-downtime switchover and the failover; both change the
//!   primary through `change::Change`, which holds new primary work and releases it once.
//! - [`fleet`]: several instances acting as one through etcd; [`upgrade`]: the cutover to a
//!   logical subscriber; [`tls`]: client and backend TLS.
//! - [`route`]: the routing decision, a pure function.
//! - [`monitor`]: health, lag and read-your-writes bookkeeping per backend.
//! - [`metrics`]: Prometheus handles, registered once.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic))]

pub(crate) mod admin;
pub(crate) mod backend;
pub(crate) mod buffers;
pub(crate) mod cancel;
mod change;
pub(crate) mod cluster;
pub(crate) mod conn;
pub mod control;
pub mod ctl;
pub mod failover;
pub(crate) mod fleet;
pub(crate) mod gate;
pub(crate) mod metrics;
pub(crate) mod monitor;
pub(crate) mod mysql;
pub(crate) mod pg;
pub(crate) mod pool;
pub mod replication;
pub(crate) mod repoint;
pub mod route;
pub mod server;
pub(crate) mod session;
pub mod switchover;
pub(crate) mod threads;
pub(crate) mod tls;
pub(crate) mod upgrade;
pub mod workers;

pub use server::Daemon;

#[cfg(test)]
#[path = "layers_tests.rs"]
mod layers_tests;
