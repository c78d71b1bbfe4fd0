//! SQL text as the classifier reads it, whatever the client's encoding.
//!
//! Clients may send SQL in any encoding the server accepts (PostgreSQL `client_encoding` LATIN9,
//! WIN1252, SJIS, BIG5, ...; MySQL `SET NAMES latin1`, `cp932`, `gbk`, ...). Text that is valid
//! UTF-8 is read as is. Otherwise each byte of 0x80 or more is read as `x`: in every
//! ASCII-compatible encoding a byte below 0x80 is that ASCII character, except the second byte
//! of a double-byte character in SJIS, BIG5, GBK, UHC and GB18030, which may be 0x40..=0x7E (a
//! backslash, a bracket or a letter). A high byte followed by such a byte makes the text
//! [`Text::ambiguous`]: its quotes and escapes cannot be found without knowing the encoding,
//! so a read verdict on it is not trusted (the statement goes to the primary). The text is never
//! refused: the server, which knows the encoding, judges it.

use std::borrow::Cow;

/// SQL text for the classifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text<'a> {
    /// The text, with every byte of a non-UTF-8 text of 0x80 or more read as `x`.
    pub sql: Cow<'a, str>,
    /// Not UTF-8: the text differs from the client's bytes, so it cannot be replayed from
    /// [`Text::sql`].
    pub legacy: bool,
    /// Not UTF-8, and a high byte is followed by one of 0x40..=0x7E: possibly a double-byte
    /// character whose second byte looks like ASCII.
    pub ambiguous: bool,
}

impl<'a> Text<'a> {
    /// Reads `bytes` as SQL text.
    pub fn read(bytes: &'a [u8]) -> Self {
        if let Ok(sql) = std::str::from_utf8(bytes) {
            return Self { sql: Cow::Borrowed(sql), legacy: false, ambiguous: false };
        }
        let ambiguous = bytes.windows(2).any(|w| matches!(w, [a, b] if *a >= 0x80 && (0x40..=0x7E).contains(b)));
        let sql: String = bytes.iter().map(|&b| if b >= 0x80 { 'x' } else { char::from(b) }).collect();
        Self { sql: Cow::Owned(sql), legacy: true, ambiguous }
    }
}

#[cfg(test)]
mod tests {
    use super::Text;
    use crate::classify::classify_pg;

    #[test]
    fn utf8_is_read_as_is() {
        let t = Text::read("SELECT 'café'".as_bytes());
        assert_eq!(t.sql, "SELECT 'café'");
        assert!(!t.legacy && !t.ambiguous);
    }

    #[test]
    fn single_byte_encodings_keep_their_structure() {
        // LATIN9: SELECT 'café €' with é = 0xE9 and € = 0xA4.
        let t = Text::read(b"SELECT 'caf\xe9 \xa4' AS n");
        assert_eq!(t.sql, "SELECT 'cafx x' AS n");
        assert!(t.legacy && !t.ambiguous);
        assert!(classify_pg(&t.sql).is_read());
        let t = Text::read(b"INSERT INTO t VALUES ('\xe9t\xe9')");
        assert!(!classify_pg(&t.sql).is_read());
    }

    #[test]
    fn a_possible_double_byte_character_with_an_ascii_second_byte_is_ambiguous() {
        // SJIS 0x95 0x5C is one character whose second byte is a backslash: read as ASCII, the
        // quote after it would look escaped (MySQL) and the rest of the text would be a string.
        let t = Text::read(b"SELECT '\x95\\'; DELETE FROM t; -- '");
        assert!(t.legacy && t.ambiguous);
        let t = Text::read(b"SELECT 1 FROM t WHERE n = '\x95\\' OR 1 = 1");
        assert!(t.ambiguous);
        // EUC-JP: both bytes high.
        assert!(!Text::read(b"SELECT '\xa4\xa2'").ambiguous);
    }
}
