//! What both protocols share about backend connections: the error of connecting to or using
//! one (whose fault, whether it may be retried), and the login deadline.

use std::time::Duration;

use bytes::Bytes;
use sqlswitch_protocol::pg::backend as msg;

use crate::metrics::BackendMetrics;

/// Why a backend connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// TCP connect or I/O failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Connect and login took longer than `connect_timeout`.
    #[error("timed out")]
    Timeout,
    /// The backend refused the session; the ErrorResponse is relayed to the client as it is.
    #[error("backend refused the session: {message}")]
    Refused {
        /// The backend's ErrorResponse, whole.
        error: Bytes,
        /// Its message, for logs.
        message: String,
    },
    /// Every connection `max_backend_connections` allows to the backend stayed in use for as
    /// long as a session waits (`connect_timeout`): PostgreSQL 53300, MySQL 1040 to the client.
    #[error("all {max} connections to the backend ({limit}) stayed in use for {waited:?}")]
    Full {
        /// The limit.
        max: usize,
        /// Its setting: `max_backend_connections`, or `pool_size` (per pool key).
        limit: &'static str,
        /// How long the session waited.
        waited: Duration,
    },
    /// The backend asked for something the proxy does not do, or broke the protocol.
    #[error("{0}")]
    Protocol(String),
    /// The server closed a session's connection that held an open transaction: the
    /// transaction is gone, and the client must hear it.
    #[error("the server closed the connection, and the open transaction with it")]
    Closed,
    /// The primary changed (a switchover, a failover followed) under a session whose state
    /// lives only on the old one (`why`: a temporary table, a lock, ...): it cannot move, and
    /// is ended as a server restart would end it.
    #[error("the primary changed, and this session's state on the old one cannot move: {0}")]
    Unmovable(&'static str),
    /// The session's open transaction cannot go on (`why`: its server stopped being the
    /// primary, or this instance lost its fleet lease): its connection was closed, so the
    /// server rolled it back, and nothing of it reached another server. The session ends as on
    /// a lost connection.
    #[error("{0}")]
    Ended(&'static str),
}

/// Whose fault a [`BackendError`] is: what an operator looks at first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The session asked for something the server refused (its login, its state).
    Session,
    /// The server or the network: down, slow, closed.
    Backend,
    /// The proxy and the server disagree on the protocol.
    Proxy,
}

impl BackendError {
    /// Whose fault it is.
    pub fn fault(&self) -> Fault {
        match self {
            BackendError::Refused { .. } | BackendError::Unmovable(_) => Fault::Session,
            BackendError::Io(_)
            | BackendError::Timeout
            | BackendError::Closed
            | BackendError::Ended(_)
            | BackendError::Full { .. } => Fault::Backend,
            BackendError::Protocol(_) => Fault::Proxy,
        }
    }

    /// Whether the same work may be tried again on another connection or backend: nothing of
    /// it reached a server that could have acted on it, as far as the proxy can tell.
    pub fn retryable(&self) -> bool {
        matches!(self, BackendError::Io(_) | BackendError::Timeout | BackendError::Full { .. })
            || self.too_many_connections()
    }

    /// Whether the server refused a login because it, or the user, has too many connections
    /// (PostgreSQL 53300 for both; MySQL/MariaDB 1040, and 1226 for `MAX_USER_CONNECTIONS`).
    pub fn too_many_connections(&self) -> bool {
        let BackendError::Refused { error, .. } = self else { return false };
        match error.first() {
            Some(&msg::ERROR_RESPONSE) => msg::error_fields(error.get(5..).unwrap_or_default()).0 == Some("53300"),
            Some(&0xFF) => {
                let code = error.get(1..3).and_then(|c| <[u8; 2]>::try_from(c).ok()).map(u16::from_le_bytes);
                matches!(code, Some(1040 | 1226))
            }
            _ => false,
        }
    }
}

/// Where and under what deadline a backend connection is opened.
#[derive(Clone, Copy)]
pub struct Dialing<'a> {
    /// `host:port` or a socket path.
    pub addr: &'a str,
    /// Connect and login deadline.
    pub timeout: Duration,
    /// The backend's metrics (failures are counted there).
    pub metrics: &'a BackendMetrics,
}

impl Dialing<'_> {
    /// Runs `login` (a connect and login to [`Dialing::addr`]) within the deadline.
    ///
    /// # Errors
    /// The login's own error, or [`BackendError::Timeout`].
    pub async fn run<T>(
        &self,
        login: impl std::future::Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        timed_login(self.timeout, self.metrics, login).await
    }
}

/// Runs a connect-and-login within `timeout`, counting failures in the backend's metrics.
///
/// # Errors
/// The login's own error, or [`BackendError::Timeout`].
pub async fn timed_login<T>(
    timeout: Duration,
    metrics: &BackendMetrics,
    login: impl std::future::Future<Output = Result<T, BackendError>>,
) -> Result<T, BackendError> {
    let result = tokio::time::timeout(timeout, login).await.unwrap_or(Err(BackendError::Timeout));
    if result.is_err() {
        metrics.connect_failures.increment(1);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whose_fault_and_whether_to_try_again() {
        let refused =
            |error: &[u8]| BackendError::Refused { error: Bytes::copy_from_slice(error), message: String::new() };
        let mut full = vec![msg::ERROR_RESPONSE, 0, 0, 0, 0];
        full.extend_from_slice(b"SERROR\0C53300\0Msorry, too many clients already\0\0");
        let mut mysql_full = vec![0xFF];
        mysql_full.extend_from_slice(&1040u16.to_le_bytes());
        let mut denied = vec![msg::ERROR_RESPONSE, 0, 0, 0, 0];
        denied.extend_from_slice(b"SFATAL\0C28P01\0Mpassword authentication failed\0\0");
        let cases = [
            (BackendError::Io(std::io::ErrorKind::ConnectionRefused.into()), Fault::Backend, true),
            (BackendError::Timeout, Fault::Backend, true),
            (BackendError::Closed, Fault::Backend, false),
            (BackendError::Protocol("odd".into()), Fault::Proxy, false),
            (refused(&denied), Fault::Session, false),
            (refused(&full), Fault::Session, true),
            (refused(&mysql_full), Fault::Session, true),
        ];
        for (e, fault, retry) in cases {
            assert_eq!(e.fault(), fault, "{e}");
            assert_eq!(e.retryable(), retry, "{e}");
        }
    }
}
