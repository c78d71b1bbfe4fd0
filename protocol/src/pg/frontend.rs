//! Client-to-server messages: tag constants, and readers for the few bodies the proxy looks into.
//! Everything else is forwarded without being parsed.

use super::frame::Fields;
use crate::ProtocolError;

/// `Q` Query (simple protocol).
pub const QUERY: u8 = b'Q';
/// `P` Parse.
pub const PARSE: u8 = b'P';
/// `B` Bind.
pub const BIND: u8 = b'B';
/// `D` Describe.
pub const DESCRIBE: u8 = b'D';
/// `E` Execute.
pub const EXECUTE: u8 = b'E';
/// `C` Close.
pub const CLOSE: u8 = b'C';
/// `S` Sync.
pub const SYNC: u8 = b'S';
/// `H` Flush.
pub const FLUSH: u8 = b'H';
/// `X` Terminate.
pub const TERMINATE: u8 = b'X';
/// `p` PasswordMessage / SASLInitialResponse / SASLResponse.
pub const PASSWORD: u8 = b'p';
/// `F` FunctionCall.
pub const FUNCTION_CALL: u8 = b'F';
/// `d` CopyData.
pub const COPY_DATA: u8 = b'd';
/// `c` CopyDone.
pub const COPY_DONE: u8 = b'c';
/// `f` CopyFail.
pub const COPY_FAIL: u8 = b'f';

/// The SQL of a Query body, in the client's encoding (read it with
/// [`crate::classify::text::Text::read`]).
///
/// # Errors
/// No terminator.
pub fn query_text(body: &[u8]) -> Result<&[u8], ProtocolError> {
    Fields::new(body).cbytes("Query")
}

/// A Parse body: statement name and SQL, in the client's encoding.
///
/// # Errors
/// Missing fields, or a name that is not UTF-8.
pub fn parse(body: &[u8]) -> Result<(&str, &[u8]), ProtocolError> {
    let mut f = Fields::new(body);
    let name = f.cstr("Parse name")?;
    let query = f.cbytes("Parse query")?;
    Ok((name, query))
}

/// A Close body: `S` (statement) or `P` (portal) and the name.
///
/// # Errors
/// Missing fields or invalid UTF-8.
pub fn close(body: &[u8]) -> Result<(u8, &str), ProtocolError> {
    let mut f = Fields::new(body);
    let kind = *f.bytes(1, "Close kind")?.first().ok_or(ProtocolError::Malformed { what: "Close" })?;
    let name = f.cstr("Close name")?;
    Ok((kind, name))
}

/// A SASLInitialResponse body: mechanism and client-first data (empty when length is -1).
///
/// # Errors
/// Missing fields or a length that does not match.
pub fn sasl_initial_response(body: &[u8]) -> Result<(&str, &[u8]), ProtocolError> {
    const WHAT: &str = "SASLInitialResponse";
    let mut f = Fields::new(body);
    let mechanism = f.cstr(WHAT)?;
    let len = f.i32(WHAT)?;
    let data = if len < 0 {
        &[][..]
    } else {
        f.bytes(usize::try_from(len).map_err(|_| ProtocolError::Malformed { what: WHAT })?, WHAT)?
    };
    Ok((mechanism, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bodies() {
        assert_eq!(query_text(b"select 1\0").unwrap(), b"select 1");
        assert_eq!(query_text(b"select '\xe9'\0").unwrap(), b"select '\xe9'", "any encoding");
        assert!(query_text(b"select 1").is_err());
        assert_eq!(parse(b"s1\0select $1\0\0\0").unwrap(), ("s1", &b"select $1"[..]));
        assert_eq!(close(b"Ss1\0").unwrap(), (b'S', "s1"));
        assert!(close(b"").is_err());
        assert_eq!(sasl_initial_response(b"SCRAM-SHA-256\0\0\0\0\x03abc").unwrap(), ("SCRAM-SHA-256", &b"abc"[..]));
        assert!(sasl_initial_response(b"SCRAM-SHA-256\0\0\0\0\x09abc").is_err());
        assert!(sasl_initial_response(b"SCRAM-SHA-256\0\x80\0\0\0").is_ok());
    }
}
