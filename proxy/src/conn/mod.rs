//! Backend connections, below the cluster that pools them and the sessions and control paths
//! that use them: a PostgreSQL connection ([`pg`], with its own SCRAM client, [`scram`]) and a
//! MySQL/MariaDB one ([`mysql`]). Each logs in, relays bytes and resets for the pool; none
//! knows the cluster, the routing or a session's rules.

pub mod mysql;
pub mod pg;
pub mod scram;
pub mod scramble;
