//! The untyped packets a client sends before authentication: a big-endian `i32` length (counting
//! itself), then a request code. StartupMessage carries the protocol version and `name\0value\0`
//! pairs; SSLRequest, GSSENCRequest and CancelRequest are fixed-size.

use bytes::{Buf, BytesMut};

use super::frame::Fields;
use crate::ProtocolError;

/// PostgreSQL's own limit on a startup packet.
pub const MAX_STARTUP_LEN: usize = 10_000;
/// Request code of SSLRequest.
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
/// Request code of GSSENCRequest.
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
/// Request code of CancelRequest.
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;

/// A request that opens a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupRequest {
    /// The client asks for TLS.
    Ssl,
    /// The client asks for GSSAPI encryption.
    GssEnc,
    /// Cancel the query running on the session with this key.
    Cancel {
        /// Process id the proxy handed out.
        pid: i32,
        /// Secret key the proxy handed out (protocol 3.0: four bytes).
        secret: i32,
    },
    /// A StartupMessage.
    Startup(Startup),
}

/// A StartupMessage: protocol version and parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Startup {
    /// Major protocol version (3).
    pub major: u16,
    /// Minor protocol version (0; 3.2 clients are answered with NegotiateProtocolVersion).
    pub minor: u16,
    /// Parameters in the order sent (`user`, `database`, `options`, GUCs...).
    pub params: Vec<(String, String)>,
}

impl Startup {
    /// The value of parameter `name`, if sent.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Protocol options (`_pq_.*`) the client asked for; the proxy supports none.
    pub fn protocol_options(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|(k, _)| k.as_str()).filter(|k| k.starts_with("_pq_."))
    }
}

/// Takes one startup packet off the front of `buf`; `None` when more bytes are needed.
///
/// # Errors
/// Bad length, oversize, malformed parameters, or a major version other than 3.
pub fn decode(buf: &mut BytesMut) -> Result<Option<StartupRequest>, ProtocolError> {
    let Some(&[a, b, c, d]) = buf.get(..4) else {
        return Ok(None);
    };
    let len = i32::from_be_bytes([a, b, c, d]);
    if len < 8 {
        return Err(ProtocolError::BadLength { len: i64::from(len) });
    }
    let len = usize::try_from(len).map_err(|_| ProtocolError::BadLength { len: i64::from(len) })?;
    if len > MAX_STARTUP_LEN {
        return Err(ProtocolError::TooLarge { len, max: MAX_STARTUP_LEN });
    }
    if buf.len() < len {
        return Ok(None);
    }
    let mut packet = buf.split_to(len);
    packet.advance(4);
    let code = packet.get_i32();
    match code {
        SSL_REQUEST_CODE if packet.is_empty() => Ok(Some(StartupRequest::Ssl)),
        GSSENC_REQUEST_CODE if packet.is_empty() => Ok(Some(StartupRequest::GssEnc)),
        CANCEL_REQUEST_CODE => {
            // Protocol 3.2 allows longer secrets; the proxy hands out four-byte keys only, so any
            // other shape cannot match one of ours.
            if packet.len() != 8 {
                return Err(ProtocolError::Malformed { what: "CancelRequest" });
            }
            let pid = packet.get_i32();
            let secret = packet.get_i32();
            Ok(Some(StartupRequest::Cancel { pid, secret }))
        }
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => Err(ProtocolError::Malformed { what: "encryption request" }),
        version => {
            let major = u16::try_from(version >> 16).unwrap_or(u16::MAX);
            let minor = u16::try_from(version & 0xffff).unwrap_or(u16::MAX);
            if major != 3 {
                return Err(ProtocolError::UnsupportedVersion { major, minor });
            }
            let params = parse_params(&packet)?;
            Ok(Some(StartupRequest::Startup(Startup { major, minor, params })))
        }
    }
}

fn parse_params(body: &[u8]) -> Result<Vec<(String, String)>, ProtocolError> {
    const WHAT: &str = "startup parameters";
    let mut fields = Fields::new(body);
    let mut params = Vec::new();
    loop {
        let name = fields.cstr(WHAT)?;
        if name.is_empty() {
            break;
        }
        let value = fields.cstr(WHAT)?;
        params.push((name.to_owned(), value.to_owned()));
    }
    if !fields.rest().is_empty() {
        return Err(ProtocolError::Malformed { what: WHAT });
    }
    Ok(params)
}

/// Whether the `options` startup parameter sets `name` to an "on" value (`-c name=on` or
/// `--name=on`), as libpq's `options` does.
pub fn options_set(options: &str, name: &str) -> Option<bool> {
    let mut found = None;
    let mut words = options.split_ascii_whitespace();
    while let Some(word) = words.next() {
        let setting = if word == "-c" {
            words.next()
        } else if let Some(rest) = word.strip_prefix("-c") {
            Some(rest)
        } else {
            word.strip_prefix("--")
        };
        if let Some((key, value)) = setting.and_then(|s| s.split_once('=')) {
            if key.replace('-', "_").eq_ignore_ascii_case(name) {
                found = Some(parse_bool(value));
            }
        }
    }
    found.flatten()
}

/// PostgreSQL's boolean spellings (`on`, `true`, `yes`, `1` and their opposites, any prefix
/// PostgreSQL accepts is not needed: clients send whole words).
pub fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" | "t" | "y" => Some(true),
        "off" | "false" | "no" | "0" | "f" | "n" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn packet(code: i32, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_i32(i32::try_from(body.len() + 8).unwrap());
        b.put_i32(code);
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn parses_startup_with_params() {
        let mut b = packet(196_608, b"user\0app\0database\0db\0\0");
        let Some(StartupRequest::Startup(s)) = decode(&mut b).unwrap() else { panic!() };
        assert_eq!((s.major, s.minor), (3, 0));
        assert_eq!(s.param("user"), Some("app"));
        assert_eq!(s.param("database"), Some("db"));
        assert!(b.is_empty());
    }

    #[test]
    fn parses_fixed_requests() {
        assert_eq!(decode(&mut packet(SSL_REQUEST_CODE, b"")).unwrap(), Some(StartupRequest::Ssl));
        assert_eq!(decode(&mut packet(GSSENC_REQUEST_CODE, b"")).unwrap(), Some(StartupRequest::GssEnc));
        assert_eq!(
            decode(&mut packet(CANCEL_REQUEST_CODE, &[0, 0, 0, 7, 0, 0, 0, 9])).unwrap(),
            Some(StartupRequest::Cancel { pid: 7, secret: 9 })
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert!(decode(&mut packet(196_608, b"user\0app")).is_err());
        assert!(decode(&mut packet(196_608, b"user\0app\0\0junk")).is_err());
        assert!(matches!(decode(&mut packet(2 << 16, b"\0")), Err(ProtocolError::UnsupportedVersion { major: 2, .. })));
        let mut huge = BytesMut::from(&[0x7f, 0xff, 0xff, 0xff][..]);
        assert!(matches!(decode(&mut huge), Err(ProtocolError::TooLarge { .. })));
        let mut neg = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert!(decode(&mut neg).is_err());
        assert_eq!(decode(&mut BytesMut::from(&[0, 0][..])).unwrap(), None);
    }

    #[test]
    fn reads_options() {
        assert_eq!(options_set("-c default_transaction_read_only=on", "default_transaction_read_only"), Some(true));
        assert_eq!(options_set("-cdefault_transaction_read_only=off", "default_transaction_read_only"), Some(false));
        assert_eq!(options_set("--default-transaction-read-only=true", "default_transaction_read_only"), Some(true));
        assert_eq!(options_set("-c search_path=x", "default_transaction_read_only"), None);
    }
}
