//! Framing of typed messages: one type byte, then a big-endian `i32` length that counts itself
//! but not the type byte. The proxy looks at the header only; bodies are forwarded as `Bytes`.

use bytes::{Bytes, BytesMut};

use crate::ProtocolError;

/// Size of a typed message header (type byte + length).
pub const HEADER_LEN: usize = 5;

/// The header of a typed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The type byte.
    pub tag: u8,
    /// The whole message length on the wire, header included.
    pub total_len: usize,
}

/// Reads the header at the start of `buf`, if five bytes are there.
///
/// # Errors
/// A length below 4 or a message longer than `max` (checked before any buffer of that size exists).
pub fn peek_header(buf: &[u8], max: usize) -> Result<Option<Header>, ProtocolError> {
    let Some(&[tag, a, b, c, d]) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = i32::from_be_bytes([a, b, c, d]);
    if len < 4 {
        return Err(ProtocolError::BadLength { len: i64::from(len) });
    }
    // `len` is positive and at most i32::MAX, so this fits in usize on every target we build for.
    let len = usize::try_from(len).map_err(|_| ProtocolError::BadLength { len: i64::from(len) })?;
    let total_len = len + 1;
    if total_len > max {
        return Err(ProtocolError::TooLarge { len: total_len, max });
    }
    Ok(Some(Header { tag, total_len }))
}

/// One whole message: its type and its bytes, header included, ready to forward unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The type byte.
    pub tag: u8,
    /// The message as it came on the wire.
    pub bytes: Bytes,
}

impl Frame {
    /// The body, after the five header bytes.
    pub fn body(&self) -> &[u8] {
        self.bytes.get(HEADER_LEN..).unwrap_or_default()
    }
}

/// Takes one whole message off the front of `buf`; `None` when more bytes are needed.
///
/// # Errors
/// As [`peek_header`].
pub fn decode(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, ProtocolError> {
    let Some(header) = peek_header(buf, max)? else {
        return Ok(None);
    };
    if buf.len() < header.total_len {
        buf.reserve(header.total_len - buf.len());
        return Ok(None);
    }
    let bytes = buf.split_to(header.total_len).freeze();
    Ok(Some(Frame { tag: header.tag, bytes }))
}

/// A cursor over a message body that reads fields with checked lengths.
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    /// Starts reading `body`.
    pub fn new(body: &'a [u8]) -> Self {
        Self { rest: body }
    }

    /// A NUL-terminated string of bytes in any encoding (SQL text: [`crate::classify::text`]).
    ///
    /// # Errors
    /// No terminator.
    pub fn cbytes(&mut self, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        let nul = self.rest.iter().position(|&b| b == 0).ok_or(ProtocolError::Malformed { what })?;
        let (text, after) = self.rest.split_at(nul);
        self.rest = after.get(1..).unwrap_or_default();
        Ok(text)
    }

    /// A NUL-terminated UTF-8 string.
    ///
    /// # Errors
    /// No terminator, or invalid UTF-8.
    pub fn cstr(&mut self, what: &'static str) -> Result<&'a str, ProtocolError> {
        let nul = self.rest.iter().position(|&b| b == 0).ok_or(ProtocolError::Malformed { what })?;
        let (text, after) = self.rest.split_at(nul);
        let s = std::str::from_utf8(text).map_err(|_| ProtocolError::Malformed { what })?;
        self.rest = after.get(1..).unwrap_or_default();
        Ok(s)
    }

    /// A big-endian `i32`.
    ///
    /// # Errors
    /// Fewer than four bytes left.
    pub fn i32(&mut self, what: &'static str) -> Result<i32, ProtocolError> {
        let (head, rest) = self.rest.split_first_chunk::<4>().ok_or(ProtocolError::Malformed { what })?;
        self.rest = rest;
        Ok(i32::from_be_bytes(*head))
    }

    /// The next byte.
    ///
    /// # Errors
    /// None left.
    pub fn byte(&mut self, what: &'static str) -> Result<u8, ProtocolError> {
        let (&b, rest) = self.rest.split_first().ok_or(ProtocolError::Malformed { what })?;
        self.rest = rest;
        Ok(b)
    }

    /// The next `n` bytes.
    ///
    /// # Errors
    /// Fewer than `n` bytes left.
    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        if self.rest.len() < n {
            return Err(ProtocolError::Malformed { what });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    /// Everything not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.put_i32(i32::try_from(body.len() + 4).unwrap());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn decodes_whole_messages_and_waits_for_partial_ones() {
        let mut wire = msg(b'Q', b"select 1\0");
        wire.extend(msg(b'S', b""));
        let mut buf = BytesMut::from(&wire[..wire.len() - 2]);
        let first = decode(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(first.tag, b'Q');
        assert_eq!(first.body(), b"select 1\0");
        assert_eq!(decode(&mut buf, 1 << 20).unwrap(), None);
        buf.extend_from_slice(&wire[wire.len() - 2..]);
        let second = decode(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(second.tag, b'S');
        assert!(buf.is_empty());
    }

    #[test]
    fn rejects_bad_and_oversized_lengths_before_allocating() {
        let mut buf = BytesMut::from(&[b'Q', 0, 0, 0, 3][..]);
        assert_eq!(decode(&mut buf, 100), Err(ProtocolError::BadLength { len: 3 }));
        let mut buf = BytesMut::from(&[b'Q', 0x7f, 0xff, 0xff, 0xff][..]);
        let cap = buf.capacity();
        assert!(matches!(decode(&mut buf, 1 << 20), Err(ProtocolError::TooLarge { .. })));
        assert_eq!(buf.capacity(), cap);
        let mut buf = BytesMut::from(&[b'Q', 0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(decode(&mut buf, 1 << 20), Err(ProtocolError::BadLength { .. })));
    }

    #[test]
    fn fields_are_bounds_checked() {
        let mut f = Fields::new(b"abc\0\0\0\0\x07xy");
        assert_eq!(f.cstr("s").unwrap(), "abc");
        assert_eq!(f.i32("n").unwrap(), 7);
        assert!(f.bytes(3, "b").is_err());
        assert!(f.cstr("s").is_err());
        assert_eq!(f.bytes(2, "b").unwrap(), b"xy");
        assert!(f.i32("n").is_err());
    }
}
