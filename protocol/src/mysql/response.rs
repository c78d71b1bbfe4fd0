//! Following an answer packet by packet to find where it ends and the server status it ends
//! with (`SERVER_STATUS_IN_TRANS`, `SERVER_MORE_RESULTS_EXISTS`). Rows are never decoded: a row
//! packet is recognised by not being a terminator, which needs its first byte and its length.

use super::command::Answer;
use super::status;
use crate::ProtocolError;

/// Where an answer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting the first packet of a (next) result.
    Start,
    /// Column definitions left to read, then the EOF that follows them (without
    /// `CLIENT_DEPRECATE_EOF`), then rows.
    Columns { left: u64, eof_after: bool },
    /// Rows until a terminator.
    Rows,
    /// The prepare answer: parameter then column definitions, each block followed by an EOF
    /// without `CLIENT_DEPRECATE_EOF`.
    PrepareDefs { params: u64, columns: u64, eof_after_params: bool },
    /// Column definitions of `COM_FIELD_LIST` until EOF.
    FieldList,
    /// One packet ends it.
    Single,
    /// Complete.
    Done,
}

/// What one packet meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// More packets belong to this answer.
    More,
    /// The answer is complete; its last status flags if it carried any.
    Done(Option<u16>),
}

/// Follows one answer.
#[derive(Debug, Clone, Copy)]
pub struct Tracker {
    state: State,
    deprecate_eof: bool,
    /// The previous physical packet was 2^24-1 bytes: this one continues it.
    continuation: bool,
    /// The answer is an error: ERR seen.
    pub failed: bool,
    /// The class (first two characters) of the ERR's SQLSTATE; `HY` when it names none.
    pub error_class: [u8; 2],
    /// The last insert id an OK packet of the answer carried (0: none): what the session's
    /// `LAST_INSERT_ID()` answers from then on.
    pub insert_id: u64,
}

/// How many leading payload bytes [`Tracker::feed`] needs for a packet starting with `first`.
/// Terminators and headers are small and read whole; rows only by their first byte.
pub fn needs_whole(first: u8) -> bool {
    matches!(first, 0x00 | 0xFE | 0xFF | 0xFB)
}

impl Tracker {
    /// A tracker for the answer to a command of shape `answer`.
    pub fn new(answer: Answer, deprecate_eof: bool) -> Self {
        let state = match answer {
            Answer::None => State::Done,
            Answer::Single => State::Single,
            Answer::ResultSet => State::Start,
            Answer::Rows => State::Rows,
            Answer::Prepare => State::PrepareDefs { params: u64::MAX, columns: 0, eof_after_params: false },
            Answer::FieldList => State::FieldList,
        };
        Self { state, deprecate_eof, continuation: false, failed: false, error_class: *b"HY", insert_id: 0 }
    }

    /// Whether the answer is complete.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes one physical packet of payload length `len`; `payload` holds its first bytes
    /// (all of them when [`needs_whole`] says so, at least one otherwise).
    ///
    /// # Errors
    /// A packet that cannot belong to the answer.
    pub fn feed(&mut self, len: usize, payload: &[u8]) -> Result<Step, ProtocolError> {
        let continued = self.continuation;
        self.continuation = len == super::packet::MAX_PAYLOAD;
        if continued {
            return Ok(Step::More); // the rest of a large row or definition
        }
        let first = payload.first().copied();
        let bad = || ProtocolError::Malformed { what: "answer packet" };
        match self.state {
            State::Done => Err(bad()),
            State::Single => {
                self.state = State::Done;
                if first == Some(0xFF) {
                    self.note_error(payload);
                }
                Ok(Step::Done(terminator_status(payload)))
            }
            State::Start => match first {
                Some(0x00) => {
                    if let Some(id) = ok_insert_id(payload).filter(|id| *id != 0) {
                        self.insert_id = id;
                    }
                    self.end_of_result(ok_status(payload))
                }
                Some(0xFF) => self.error(payload),
                Some(0xFB) => Err(ProtocolError::Malformed { what: "LOCAL INFILE request (not supported)" }),
                Some(_) => {
                    let (count, _) = lenenc(payload).ok_or_else(bad)?;
                    self.state = State::Columns { left: count, eof_after: !self.deprecate_eof };
                    Ok(Step::More)
                }
                None => Err(bad()),
            },
            State::Columns { left, eof_after } => {
                if left > 0 {
                    self.state = if left == 1 && !eof_after {
                        State::Rows
                    } else {
                        State::Columns { left: left - 1, eof_after }
                    };
                } else {
                    // The EOF after the column definitions. When it says a cursor was opened
                    // (an execute with a cursor flag), the answer ends here: the rows come
                    // with COM_STMT_FETCH. (With CLIENT_DEPRECATE_EOF that OK ends the rows.)
                    let flags = eof_status(payload);
                    if flags.is_some_and(|f| f & status::CURSOR_EXISTS != 0) {
                        self.state = State::Done;
                        return Ok(Step::Done(flags));
                    }
                    self.state = State::Rows;
                }
                Ok(Step::More)
            }
            State::Rows => match first {
                Some(0xFF) => self.error(payload),
                Some(0xFE) if (self.deprecate_eof && len < super::packet::MAX_PAYLOAD) || len < 9 => {
                    let flags = if self.deprecate_eof { ok_status(payload) } else { eof_status(payload) };
                    self.end_of_result(flags)
                }
                Some(_) => Ok(Step::More),
                None => Err(bad()),
            },
            State::PrepareDefs { params: u64::MAX, .. } => match first {
                Some(0x00) if payload.len() >= 9 => {
                    let Some(&[c0, c1, p0, p1]) = payload.get(5..9) else { return Err(bad()) };
                    let columns = u64::from(u16::from_le_bytes([c0, c1]));
                    let params = u64::from(u16::from_le_bytes([p0, p1]));
                    self.state = State::PrepareDefs { params, columns, eof_after_params: false };
                    Ok(self.prepare_progress())
                }
                Some(0xFF) => self.error(payload),
                _ => Err(bad()),
            },
            State::PrepareDefs { params, columns, eof_after_params } => {
                self.state = if eof_after_params {
                    State::PrepareDefs { params: 0, columns, eof_after_params: false }
                } else if params > 0 {
                    let left = params - 1;
                    State::PrepareDefs { params: left, columns, eof_after_params: left == 0 && !self.deprecate_eof }
                } else if columns > 0 {
                    let left = columns - 1;
                    if left == 0 && !self.deprecate_eof {
                        State::Columns { left: 0, eof_after: true } // one EOF then done: reuse below
                    } else {
                        State::PrepareDefs { params: 0, columns: left, eof_after_params: false }
                    }
                } else {
                    return Err(bad());
                };
                if let State::Columns { left: 0, eof_after: true } = self.state {
                    self.state = State::FieldList; // the next packet is the closing EOF
                    return Ok(Step::More);
                }
                Ok(self.prepare_progress())
            }
            State::FieldList => match first {
                Some(0xFE) if len < 9 => {
                    self.state = State::Done;
                    Ok(Step::Done(eof_status(payload)))
                }
                Some(0xFF) => self.error(payload),
                Some(_) => Ok(Step::More),
                None => Err(bad()),
            },
        }
    }

    fn prepare_progress(&mut self) -> Step {
        if let State::PrepareDefs { params: 0, columns: 0, eof_after_params: false } = self.state {
            self.state = State::Done;
            return Step::Done(None);
        }
        Step::More
    }

    fn error(&mut self, payload: &[u8]) -> Result<Step, ProtocolError> {
        self.state = State::Done;
        self.note_error(payload);
        Ok(Step::Done(None))
    }

    /// An ERR packet: `0xFF`, the code (2 bytes), then `#` and the 5-character SQLSTATE.
    fn note_error(&mut self, payload: &[u8]) {
        self.failed = true;
        if let (Some(b'#'), Some(&[a, b])) = (payload.get(3), payload.get(4..6)) {
            self.error_class = [a, b];
        }
    }

    fn end_of_result(&mut self, flags: Option<u16>) -> Result<Step, ProtocolError> {
        if flags.is_some_and(|f| f & status::MORE_RESULTS != 0) {
            self.state = State::Start;
            return Ok(Step::More);
        }
        self.state = State::Done;
        Ok(Step::Done(flags))
    }
}

/// A length-encoded integer at the start of `b`, and its size.
pub fn lenenc(b: &[u8]) -> Option<(u64, usize)> {
    let first = *b.first()?;
    match first {
        0..=0xFA => Some((u64::from(first), 1)),
        0xFC => Some((u64::from(u16::from_le_bytes([*b.get(1)?, *b.get(2)?])), 3)),
        0xFD => Some((u64::from(*b.get(1)?) | u64::from(*b.get(2)?) << 8 | u64::from(*b.get(3)?) << 16, 4)),
        0xFE => {
            let bytes: [u8; 8] = b.get(1..9)?.try_into().ok()?;
            Some((u64::from_le_bytes(bytes), 9))
        }
        _ => None,
    }
}

/// Status flags of an OK packet (header, affected rows, last insert id, status).
pub fn ok_status(p: &[u8]) -> Option<u16> {
    let mut at = 1;
    for _ in 0..2 {
        let (_, n) = lenenc(p.get(at..)?)?;
        at += n;
    }
    Some(u16::from_le_bytes([*p.get(at)?, *p.get(at + 1)?]))
}

/// The last insert id of an OK packet (header, affected rows, last insert id, ...).
pub fn ok_insert_id(p: &[u8]) -> Option<u64> {
    let (_, n) = lenenc(p.get(1..)?)?;
    lenenc(p.get(1 + n..)?).map(|(id, _)| id)
}

/// Status flags of a (pre-4.1-style deprecated) EOF packet: `0xFE`, warnings, status.
pub fn eof_status(p: &[u8]) -> Option<u16> {
    Some(u16::from_le_bytes([*p.get(3)?, *p.get(4)?]))
}

/// The warning count of whatever terminator `p` is (OK after its status flags, EOF before
/// them); 0 when it has none.
pub fn terminator_warnings(p: &[u8]) -> u16 {
    let at = match p.first() {
        Some(0xFE) if p.len() < 9 => 1,
        Some(0x00 | 0xFE) => {
            let mut at = 1;
            for _ in 0..2 {
                let Some((_, n)) = p.get(at..).and_then(lenenc) else { return 0 };
                at += n;
            }
            at + 2
        }
        _ => return 0,
    };
    match (p.get(at), p.get(at + 1)) {
        (Some(lo), Some(hi)) => u16::from_le_bytes([*lo, *hi]),
        _ => 0,
    }
}

/// Status flags of whatever terminator `p` is (OK, EOF), if any.
pub fn terminator_status(p: &[u8]) -> Option<u16> {
    match p.first() {
        Some(0x00) => ok_status(p),
        Some(0xFE) if p.len() < 9 => eof_status(p),
        Some(0xFE) => ok_status(p),
        _ => None,
    }
}

/// Whether a transaction is open after status `flags`, as the server says
/// (`SERVER_STATUS_IN_TRANS`). With autocommit off none is open between a `COMMIT` and the next
/// statement.
pub fn in_transaction(flags: u16) -> bool {
    flags & status::IN_TRANS != 0
}

/// Whether autocommit is off after status `flags`: every statement then opens a transaction.
pub fn autocommit_off(flags: u16) -> bool {
    flags & status::AUTOCOMMIT == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK_AUTOCOMMIT: &[u8] = &[0x00, 0, 0, 0x02, 0x00, 0, 0];
    const OK_MORE: &[u8] = &[0x00, 0, 0, 0x0a, 0x00, 0, 0];
    const EOF_AUTOCOMMIT: &[u8] = &[0xFE, 0, 0, 0x02, 0x00];
    const EOF_IN_TX: &[u8] = &[0xFE, 0, 0, 0x03, 0x00];

    fn run(t: &mut Tracker, packets: &[&[u8]]) -> Vec<Step> {
        packets.iter().map(|p| t.feed(p.len(), p).unwrap()).collect()
    }

    #[test]
    fn ok_and_err_end_a_query() {
        let mut t = Tracker::new(Answer::ResultSet, false);
        assert_eq!(run(&mut t, &[OK_AUTOCOMMIT]), [Step::Done(Some(2))]);
        let mut t = Tracker::new(Answer::ResultSet, false);
        assert_eq!(run(&mut t, &[b"\xff\x10\x04#42S02oops"]), [Step::Done(None)]);
        assert!(t.failed);
        assert_eq!(&t.error_class, b"42", "the class of the ERR's SQLSTATE");
        let mut t = Tracker::new(Answer::Single, false);
        run(&mut t, &[b"\xff\x10\x04no state"]);
        assert!(t.failed);
        assert_eq!(&t.error_class, b"HY", "an ERR without a SQLSTATE");
    }

    /// An OK packet's insert id is kept (a two-byte length-encoded one here: 300); one
    /// without any leaves it.
    #[test]
    fn warnings_of_terminators() {
        // OK: header, affected rows 1, insert id 0, status 0x0002, warnings 3.
        assert_eq!(terminator_warnings(&[0x00, 1, 0, 0x02, 0x00, 3, 0]), 3);
        // EOF: 0xFE, warnings 2, status.
        assert_eq!(terminator_warnings(&[0xFE, 2, 0, 0x02, 0x00]), 2);
        assert_eq!(terminator_warnings(&[0xFF, 0x10, 0x04]), 0, "an ERR is not a terminator");
        assert_eq!(terminator_warnings(&[0x00, 1]), 0, "cut short");
    }

    #[test]
    fn the_insert_id_of_an_ok_packet_is_kept() {
        let mut t = Tracker::new(Answer::ResultSet, false);
        run(&mut t, &[&[0x00, 1, 0xfc, 0x2c, 0x01, 0x02, 0x00, 0, 0]]);
        assert_eq!(t.insert_id, 300);
        let mut t = Tracker::new(Answer::ResultSet, false);
        run(&mut t, &[OK_AUTOCOMMIT]);
        assert_eq!(t.insert_id, 0);
        assert_eq!(ok_insert_id(&[0x00, 0]), None, "cut short");
    }

    #[test]
    fn a_result_set_with_eof_packets() {
        let mut t = Tracker::new(Answer::ResultSet, false);
        let steps =
            run(&mut t, &[b"\x02", b"coldef1", b"coldef2", EOF_AUTOCOMMIT, b"\x011\x012", b"\x013\x014", EOF_IN_TX]);
        assert_eq!(steps.last(), Some(&Step::Done(Some(3))));
        assert!(steps[..steps.len() - 1].iter().all(|s| *s == Step::More));
        assert!(in_transaction(3));
        assert!(!in_transaction(0), "autocommit off, between transactions");
        assert!(autocommit_off(0) && !autocommit_off(2));
    }

    #[test]
    fn a_result_set_with_deprecate_eof_and_more_results() {
        let mut t = Tracker::new(Answer::ResultSet, true);
        let ok_fe_more = [0xFE, 0, 0, 0x0a, 0x00, 0, 0];
        let ok_fe = [0xFE, 0, 0, 0x02, 0x00, 0, 0];
        let steps = run(&mut t, &[b"\x01", b"coldef", b"\x01a", &ok_fe_more, OK_MORE, b"\x01", b"coldef", &ok_fe]);
        assert_eq!(steps.last(), Some(&Step::Done(Some(2))));
        assert_eq!(steps.iter().filter(|s| **s != Step::More).count(), 1);
    }

    /// `COM_STMT_EXECUTE` with a cursor flag: column definitions, then an EOF saying a cursor
    /// exists, and no rows: the answer ends there. The rows come with `COM_STMT_FETCH`.
    #[test]
    fn an_execute_that_opens_a_cursor_ends_after_its_columns() {
        let eof_cursor: &[u8] = &[0xFE, 0, 0, 0x42, 0x00];
        let mut t = Tracker::new(Answer::ResultSet, false);
        assert_eq!(run(&mut t, &[b"\x01", b"coldef", eof_cursor]).last(), Some(&Step::Done(Some(0x42))));
        let ok_fe_cursor = [0xFE, 0, 0, 0x42, 0x00, 0, 0];
        let mut t = Tracker::new(Answer::ResultSet, true);
        assert_eq!(run(&mut t, &[b"\x01", b"coldef", &ok_fe_cursor]).last(), Some(&Step::Done(Some(0x42))));
        // The fetch: rows, then an EOF (last row sent).
        let mut t = Tracker::new(Answer::Rows, false);
        let steps = run(&mut t, &[b"\x00\x00\x01", b"\x00\x00\x02", &[0xFE, 0, 0, 0xC2, 0x00]]);
        assert_eq!(steps, [Step::More, Step::More, Step::Done(Some(0xC2))]);
    }

    #[test]
    fn rows_that_start_like_terminators_are_rows() {
        let mut t = Tracker::new(Answer::ResultSet, false);
        let mut long_row = vec![0xFE];
        long_row.extend_from_slice(&[0; 20]);
        let steps = run(&mut t, &[b"\x01", b"coldef", EOF_AUTOCOMMIT, &long_row, EOF_AUTOCOMMIT]);
        assert_eq!(steps[3], Step::More);
        assert_eq!(steps[4], Step::Done(Some(2)));
    }

    #[test]
    fn prepare_answers() {
        // 1 column, 2 params, with EOFs.
        let ok = [0x00, 1, 0, 0, 0, 1, 0, 2, 0, 0, 0, 0];
        let mut t = Tracker::new(Answer::Prepare, false);
        let steps = run(&mut t, &[&ok, b"param1", b"param2", EOF_AUTOCOMMIT, b"col1", EOF_AUTOCOMMIT]);
        assert_eq!(steps.last(), Some(&Step::Done(Some(2))));
        assert!(t.done());
        // No params, no columns (a SET).
        let ok = [0x00, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut t = Tracker::new(Answer::Prepare, true);
        assert_eq!(run(&mut t, &[&ok]), [Step::Done(None)]);
        // DEPRECATE_EOF: no EOFs.
        let ok = [0x00, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0];
        let mut t = Tracker::new(Answer::Prepare, true);
        let steps = run(&mut t, &[&ok, b"param1", b"col1"]);
        assert_eq!(steps.last(), Some(&Step::Done(None)));
    }

    #[test]
    fn single_and_field_list() {
        let mut t = Tracker::new(Answer::Single, false);
        assert_eq!(run(&mut t, &[OK_AUTOCOMMIT]), [Step::Done(Some(2))]);
        let mut t = Tracker::new(Answer::FieldList, false);
        assert_eq!(run(&mut t, &[b"col", b"col", EOF_AUTOCOMMIT]).last(), Some(&Step::Done(Some(2))));
    }

    #[test]
    fn continuations_are_not_packets() {
        let mut t = Tracker::new(Answer::Rows, true);
        assert_eq!(t.feed(super::super::packet::MAX_PAYLOAD, b"\x01").unwrap(), Step::More);
        // The continuation starts with 0xFE by chance: still part of the row.
        assert_eq!(t.feed(5, &[0xFE, 0, 0, 2, 0]).unwrap(), Step::More);
        assert_eq!(t.feed(7, &[0xFE, 0, 0, 2, 0, 0, 0]).unwrap(), Step::Done(Some(2)));
    }

    #[test]
    fn lenenc_ints() {
        assert_eq!(lenenc(&[5]), Some((5, 1)));
        assert_eq!(lenenc(&[0xFC, 1, 1]), Some((257, 3)));
        assert_eq!(lenenc(&[0xFD, 1, 0, 1]), Some((65537, 4)));
        assert_eq!(lenenc(&[0xFC, 1]), None);
        assert_eq!(lenenc(&[0xFF]), None);
    }
}
