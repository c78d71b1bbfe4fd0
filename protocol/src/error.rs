//! Errors raised while decoding bytes a peer sent. Every variant is a peer's fault: the caller
//! answers with a protocol error and closes that one connection; nothing here is fatal to the daemon.

use thiserror::Error;

/// A malformed or oversized message from a peer.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// The declared length is below the minimum for its message.
    #[error("invalid message length {len}")]
    BadLength {
        /// The length the peer declared.
        len: i64,
    },
    /// The declared length is above the configured maximum.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The length the peer declared.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A field was missing, truncated or not valid UTF-8.
    #[error("malformed {what}")]
    Malformed {
        /// Which message or field was malformed.
        what: &'static str,
    },
    /// The peer speaks a protocol version the proxy does not.
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0")]
    UnsupportedVersion {
        /// Major version requested.
        major: u16,
        /// Minor version requested.
        minor: u16,
    },
}
