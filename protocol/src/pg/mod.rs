//! The PostgreSQL v3 wire protocol: framing, startup packets, and the messages the proxy reads or
//! writes itself. Row data is never decoded here: the proxy forwards it as bytes.

pub mod backend;
pub mod frame;
pub mod frontend;
pub mod startup;

/// SQLSTATE codes the proxy sends itself.
pub mod sqlstate {
    /// `28P01` invalid_password.
    pub const INVALID_PASSWORD: &str = "28P01";
    /// `28000` invalid_authorization_specification.
    pub const INVALID_AUTHORIZATION: &str = "28000";
    /// `25006` read_only_sql_transaction.
    pub const READ_ONLY_SQL_TRANSACTION: &str = "25006";
    /// `08P01` protocol_violation.
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    /// `08006` connection_failure.
    pub const CONNECTION_FAILURE: &str = "08006";
    /// `0A000` feature_not_supported.
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    /// `53300` too_many_connections.
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    /// `54000` program_limit_exceeded.
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    /// `57P01` admin_shutdown.
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    /// `57P05` idle_session_timeout.
    pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
    /// `53400` configuration_limit_exceeded.
    pub const CONFIGURATION_LIMIT_EXCEEDED: &str = "53400";
    /// `58000` system_error (internal failures of the proxy itself).
    pub const SYSTEM_ERROR: &str = "58000";
}
