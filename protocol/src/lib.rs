//! Wire codecs and SQL classification for sqlswitch. No I/O, no tokio: every function here takes
//! bytes and returns values, so it is unit-tested without sockets and fuzzed without a runtime.
//!
//! - [`pg`]: the PostgreSQL v3 wire protocol as the proxy needs it. [`pg::frame`] splits a byte
//!   stream into messages (type byte + length) without decoding their bodies; [`pg::startup`]
//!   parses the untyped startup packets (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest);
//!   [`pg::frontend`] reads the few client messages the proxy looks into (`Q`, `P`, `p`, `C`);
//!   [`pg::backend`] encodes the control-path messages the proxy itself sends (authentication,
//!   ParameterStatus, BackendKeyData, ReadyForQuery, ErrorResponse).
//! - [`mysql`]: the MySQL/MariaDB protocol: packet framing, commands, and following an answer
//!   to its end without decoding rows.
//! - [`classify`]: a hand-written SQL lexer that decides whether a statement is provably a read,
//!   failing closed.
//! - [`error`]: the protocol error type.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic))]

pub mod classify;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod mysql;
pub mod pg;

pub use error::ProtocolError;
