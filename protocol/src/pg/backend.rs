//! Server-to-client messages: the tags the proxy watches in the forwarded stream, and encoders for
//! the control-path messages it sends itself. Encoders append to a caller's buffer so one write
//! can carry several messages.

use bytes::{BufMut, BytesMut};

/// `R` Authentication*.
pub const AUTHENTICATION: u8 = b'R';
/// `S` ParameterStatus.
pub const PARAMETER_STATUS: u8 = b'S';
/// `K` BackendKeyData.
pub const BACKEND_KEY_DATA: u8 = b'K';
/// `Z` ReadyForQuery.
pub const READY_FOR_QUERY: u8 = b'Z';
/// `E` ErrorResponse.
pub const ERROR_RESPONSE: u8 = b'E';
/// `N` NoticeResponse.
pub const NOTICE_RESPONSE: u8 = b'N';
/// `A` NotificationResponse.
pub const NOTIFICATION_RESPONSE: u8 = b'A';
/// `v` NegotiateProtocolVersion.
pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
/// `1` ParseComplete.
pub const PARSE_COMPLETE: u8 = b'1';
/// `3` CloseComplete.
pub const CLOSE_COMPLETE: u8 = b'3';

/// Transaction status carried by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InTx,
    /// `E`: in a failed transaction block.
    Failed,
}

impl TxStatus {
    /// From the status byte; unknown bytes are treated as "in a transaction", the safe reading.
    pub fn from_byte(b: u8) -> Self {
        match b {
            b'I' => Self::Idle,
            b'E' => Self::Failed,
            _ => Self::InTx,
        }
    }

    /// The status byte.
    pub fn byte(self) -> u8 {
        match self {
            Self::Idle => b'I',
            Self::InTx => b'T',
            Self::Failed => b'E',
        }
    }
}

/// Writes a typed message: tag, length, then whatever `body` appends.
fn message(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let len_at = buf.len();
    buf.put_i32(0);
    body(buf);
    let len = i32::try_from(buf.len() - len_at).unwrap_or(i32::MAX);
    if let Some(at) = buf.get_mut(len_at..len_at + 4) {
        at.copy_from_slice(&len.to_be_bytes());
    }
}

fn cstr(buf: &mut BytesMut, s: &str) {
    // A NUL inside would end the field early; control-path strings never carry one, but a
    // client-chosen user name could, so replace it rather than corrupt the frame.
    if s.as_bytes().contains(&0) {
        buf.put_slice(s.replace('\0', "?").as_bytes());
    } else {
        buf.put_slice(s.as_bytes());
    }
    buf.put_u8(0);
}

/// AuthenticationOk.
pub fn authentication_ok(buf: &mut BytesMut) {
    message(buf, AUTHENTICATION, |b| b.put_i32(0));
}

/// AuthenticationSASL offering the given mechanisms.
pub fn authentication_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    message(buf, AUTHENTICATION, |b| {
        b.put_i32(10);
        for m in mechanisms {
            cstr(b, m);
        }
        b.put_u8(0);
    });
}

/// AuthenticationSASLContinue with server-first data.
pub fn authentication_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    message(buf, AUTHENTICATION, |b| {
        b.put_i32(11);
        b.put_slice(data);
    });
}

/// AuthenticationSASLFinal with server-final data.
pub fn authentication_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    message(buf, AUTHENTICATION, |b| {
        b.put_i32(12);
        b.put_slice(data);
    });
}

/// ParameterStatus.
pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    message(buf, PARAMETER_STATUS, |b| {
        cstr(b, name);
        cstr(b, value);
    });
}

/// BackendKeyData.
pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    message(buf, BACKEND_KEY_DATA, |b| {
        b.put_i32(pid);
        b.put_i32(secret);
    });
}

/// ReadyForQuery.
pub fn ready_for_query(buf: &mut BytesMut, status: TxStatus) {
    message(buf, READY_FOR_QUERY, |b| b.put_u8(status.byte()));
}

/// NegotiateProtocolVersion: the newest minor version supported and the options not recognised.
pub fn negotiate_protocol_version<'a>(buf: &mut BytesMut, minor: i32, unrecognised: impl Iterator<Item = &'a str>) {
    let unrecognised: Vec<&str> = unrecognised.collect();
    message(buf, NEGOTIATE_PROTOCOL_VERSION, |b| {
        b.put_i32((3 << 16) | minor);
        b.put_i32(i32::try_from(unrecognised.len()).unwrap_or(i32::MAX));
        for o in unrecognised {
            cstr(b, o);
        }
    });
}

/// Severity of an ErrorResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends.
    Fatal,
}

/// ErrorResponse with severity, SQLSTATE and message.
pub fn error_response(buf: &mut BytesMut, severity: Severity, code: &str, text: &str) {
    let sev = match severity {
        Severity::Error => "ERROR",
        Severity::Fatal => "FATAL",
    };
    message(buf, ERROR_RESPONSE, |b| {
        b.put_u8(b'S');
        cstr(b, sev);
        b.put_u8(b'V');
        cstr(b, sev);
        b.put_u8(b'C');
        cstr(b, code);
        b.put_u8(b'M');
        cstr(b, text);
        b.put_u8(0);
    });
}

/// Whether an ErrorResponse body reports a FATAL or PANIC error: the server is closing the
/// connection.
pub fn is_fatal(body: &[u8]) -> bool {
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        let Some(nul) = tail.iter().position(|&b| b == 0) else { return false };
        let (v, after) = tail.split_at(nul);
        if kind == b'V' || kind == b'S' {
            return v == b"FATAL" || v == b"PANIC";
        }
        rest = after.get(1..).unwrap_or_default();
    }
    false
}

/// Reads the fields of an ErrorResponse or NoticeResponse body: `(SQLSTATE, message)`.
pub fn error_fields(body: &[u8]) -> (Option<&str>, Option<&str>) {
    let mut code = None;
    let mut text = None;
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let Some(nul) = tail.iter().position(|&b| b == 0) else { break };
        let (value, after) = tail.split_at(nul);
        let value = std::str::from_utf8(value).ok();
        match kind {
            b'C' => code = value,
            b'M' => text = value,
            _ => {}
        }
        rest = after.get(1..).unwrap_or_default();
    }
    (code, text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::frame;

    #[test]
    fn error_response_round_trips() {
        let mut buf = BytesMut::new();
        error_response(&mut buf, Severity::Error, "25006", "cannot write");
        let f = frame::decode(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(f.tag, ERROR_RESPONSE);
        assert_eq!(error_fields(f.body()), (Some("25006"), Some("cannot write")));
        assert!(!is_fatal(f.body()));
        let mut buf = BytesMut::new();
        error_response(&mut buf, Severity::Fatal, "57P01", "bye");
        let f = frame::decode(&mut buf, 1 << 20).unwrap().unwrap();
        assert!(is_fatal(f.body()));
    }

    #[test]
    fn lengths_are_right() {
        let mut buf = BytesMut::new();
        ready_for_query(&mut buf, TxStatus::InTx);
        parameter_status(&mut buf, "a", "b");
        authentication_sasl(&mut buf, &["SCRAM-SHA-256"]);
        assert_eq!(&buf[..6], b"Z\0\0\0\x05T");
        let _ = frame::decode(&mut buf, 100).unwrap().unwrap();
        let ps = frame::decode(&mut buf, 100).unwrap().unwrap();
        assert_eq!(ps.body(), b"a\0b\0");
        let sasl = frame::decode(&mut buf, 100).unwrap().unwrap();
        assert_eq!(sasl.body(), b"\0\0\0\x0aSCRAM-SHA-256\0\0");
        assert!(buf.is_empty());
    }
}
