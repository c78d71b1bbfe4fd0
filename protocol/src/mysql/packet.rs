//! Packet framing: a 3-byte little-endian payload length and a sequence id, then the payload.
//! A payload of 2^24-1 bytes continues in the next packet; a logical packet ends with a
//! shorter one (possibly empty).

use bytes::{BufMut, BytesMut};

use crate::ProtocolError;

/// Header size.
pub const HEADER_LEN: usize = 4;
/// Largest payload of one physical packet; a packet this long continues in the next.
pub const MAX_PAYLOAD: usize = 0xFF_FFFF;

/// A physical packet's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Payload length.
    pub len: usize,
    /// Sequence id.
    pub seq: u8,
}

impl Header {
    /// Header and payload on the wire.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + self.len
    }

    /// Whether the logical packet continues in the next physical one.
    pub fn continues(&self) -> bool {
        self.len == MAX_PAYLOAD
    }
}

/// The header at the front of `buf`, if four bytes are there.
pub fn peek_header(buf: &[u8]) -> Option<Header> {
    let &[a, b, c, seq] = buf.get(..HEADER_LEN)? else { return None };
    Some(Header { len: usize::from(a) | usize::from(b) << 8 | usize::from(c) << 16, seq })
}

/// A whole logical packet: its first sequence id, the last one, and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Sequence id of its first physical packet.
    pub seq: u8,
    /// Sequence id of its last physical packet.
    pub last_seq: u8,
    /// Payload, continuations joined.
    pub payload: BytesMut,
}

/// Takes a whole logical packet off the front of `buf`; `None` when more bytes are needed.
///
/// # Errors
/// The logical packet would exceed `max` bytes (checked before buffering it).
pub fn decode(buf: &mut BytesMut, max: usize) -> Result<Option<Packet>, ProtocolError> {
    let mut at = 0;
    let mut total = 0usize;
    let mut first_seq = None;
    let last_seq = loop {
        let Some(h) = buf.get(at..).and_then(peek_header) else { return Ok(None) };
        total += h.len;
        if total > max {
            return Err(ProtocolError::TooLarge { len: total, max });
        }
        first_seq.get_or_insert(h.seq);
        if buf.len() < at + h.total_len() {
            buf.reserve(at + h.total_len() - buf.len());
            return Ok(None);
        }
        at += h.total_len();
        if !h.continues() {
            break h.seq;
        }
    };
    let mut wire = buf.split_to(at);
    if at == HEADER_LEN + total {
        // One physical packet (nearly always): the payload is the wire bytes past the header,
        // without a copy or an allocation.
        bytes::Buf::advance(&mut wire, HEADER_LEN);
        return Ok(Some(Packet { seq: last_seq, last_seq, payload: wire }));
    }
    let mut payload = BytesMut::with_capacity(total);
    let mut rest = &wire[..];
    while let Some(h) = peek_header(rest) {
        payload.extend_from_slice(rest.get(HEADER_LEN..h.total_len()).unwrap_or_default());
        rest = rest.get(h.total_len()..).unwrap_or_default();
    }
    Ok(Some(Packet { seq: first_seq.unwrap_or(0), last_seq, payload }))
}

/// Appends `payload` as one logical packet starting at sequence id `seq`; returns the next id.
pub fn encode(buf: &mut BytesMut, mut seq: u8, payload: &[u8]) -> u8 {
    let mut chunks = payload.chunks(MAX_PAYLOAD).peekable();
    if payload.is_empty() {
        buf.put_slice(&[0, 0, 0, seq]);
        return seq.wrapping_add(1);
    }
    while let Some(chunk) = chunks.next() {
        let len = chunk.len();
        buf.put_slice(&[(len & 0xff) as u8, (len >> 8 & 0xff) as u8, (len >> 16) as u8, seq]);
        buf.put_slice(chunk);
        seq = seq.wrapping_add(1);
        if chunks.peek().is_none() && len == MAX_PAYLOAD {
            buf.put_slice(&[0, 0, 0, seq]);
            seq = seq.wrapping_add(1);
        }
    }
    seq
}

/// An ERR packet payload: `0xFF`, code, `#`, SQLSTATE, message.
pub fn err_payload(code: u16, sqlstate: &str, message: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(9 + message.len());
    p.push(0xFF);
    p.extend_from_slice(&code.to_le_bytes());
    p.push(b'#');
    let mut state = [b'H', b'Y', b'0', b'0', b'0'];
    for (d, s) in state.iter_mut().zip(sqlstate.bytes()) {
        *d = s;
    }
    p.extend_from_slice(&state);
    p.extend_from_slice(message.as_bytes());
    p
}

/// A minimal OK packet payload with `status` flags.
pub fn ok_payload(status: u16) -> Vec<u8> {
    let mut p = vec![0x00, 0, 0];
    p.extend_from_slice(&status.to_le_bytes());
    p.extend_from_slice(&[0, 0]);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_small_and_continued_packets() {
        for len in [0, 1, 100, MAX_PAYLOAD - 1, MAX_PAYLOAD, MAX_PAYLOAD + 5] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut buf = BytesMut::new();
            let next = encode(&mut buf, 3, &payload);
            let p = decode(&mut buf, 64 << 20).unwrap().unwrap();
            assert_eq!(p.payload.len(), len);
            assert_eq!(&p.payload[..], &payload[..]);
            assert_eq!(p.seq, 3);
            assert_eq!(p.last_seq.wrapping_add(1), next);
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn waits_for_whole_packets_and_enforces_the_limit() {
        let mut buf = BytesMut::new();
        encode(&mut buf, 0, b"\x03select 1");
        let mut partial = BytesMut::from(&buf[..6]);
        assert_eq!(decode(&mut partial, 1024).unwrap(), None);
        let mut huge = BytesMut::from(&[0xff, 0xff, 0xff, 0][..]);
        assert!(matches!(decode(&mut huge, 1024), Err(ProtocolError::TooLarge { .. })));
    }

    #[test]
    fn err_packets_carry_code_and_state() {
        let p = err_payload(1290, "HY000", "read only");
        assert_eq!(&p[..9], b"\xff\x0a\x05#HY000");
    }
}
