//! Identifiers as the server reads them, so that every spelling of a function's or schema's
//! name is looked up as the name it denotes: `nextval`, `NEXTVAL`, `"nextval"`,
//! `U&"n\0065xtval"` and `pg_catalog."nextval"` are one function to PostgreSQL, as are
//! `GET_LOCK`, `` `get_lock` `` and (under `ANSI_QUOTES`) `"get_lock"` to MySQL.
//!
//! PostgreSQL folds unquoted names to lower case and keeps quoted ones exactly; MySQL function
//! names ignore case however they are quoted. A name is normalised into a small stack buffer
//! (no allocation); one that cannot be decoded, or is longer than any built-in name, yields
//! `None`, which the classifier reads as "some other function": the primary.

use super::lexer::Token;

/// Longest name normalised. PostgreSQL truncates names at 63 bytes (`NAMEDATALEN - 1`) and
/// MySQL's are at most 64; no built-in function or schema name comes near.
pub const MAX_NAME: usize = 64;

/// A name normalised into a stack buffer.
pub struct NameBuf {
    buf: [u8; MAX_NAME],
    len: usize,
}

impl NameBuf {
    fn new() -> Self {
        Self { buf: [0; MAX_NAME], len: 0 }
    }

    fn push(&mut self, bytes: &[u8]) -> Option<()> {
        let end = self.len.checked_add(bytes.len()).filter(|e| *e <= MAX_NAME)?;
        self.buf.get_mut(self.len..end)?.copy_from_slice(bytes);
        self.len = end;
        Some(())
    }

    fn push_char(&mut self, c: char) -> Option<()> {
        let mut utf8 = [0u8; 4];
        self.push(c.encode_utf8(&mut utf8).as_bytes())
    }

    fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(self.buf.get(..self.len)?).ok()
    }
}

/// The name `tok` denotes, in lower case where the server ignores case, or `None` when it is
/// not a name the built-in lists could hold: a quoted PostgreSQL name with upper-case letters
/// (it names another function than the lower-case one), one that does not decode, or one longer
/// than [`MAX_NAME`]. `mysql` selects the dialect.
pub fn normalize(tok: Token<'_>, mysql: bool) -> Option<NameBuf> {
    let mut out = NameBuf::new();
    match tok {
        Token::Word(w) => {
            out.push(w.as_bytes())?;
            out.buf.get_mut(..out.len)?.make_ascii_lowercase();
        }
        Token::QuotedIdent(q) if mysql => {
            // Backticks: a doubled backtick is one.
            unquote(&mut out, q.strip_prefix('`')?.strip_suffix('`')?, '`')?;
            out.buf.get_mut(..out.len)?.make_ascii_lowercase();
        }
        // `ANSI_QUOTES` makes `"name"` an identifier; without it, `"name"(` is a syntax error
        // wherever it runs, so reading it as a name costs nothing.
        Token::Str(s) if mysql && s.starts_with('"') => {
            let inner = s.strip_prefix('"')?.strip_suffix('"')?;
            if inner.contains('\\') {
                return None;
            }
            unquote(&mut out, inner, '"')?;
            out.buf.get_mut(..out.len)?.make_ascii_lowercase();
        }
        Token::QuotedIdent(q) if !mysql => {
            if let Some(rest) = q.strip_prefix("U&\"").or_else(|| q.strip_prefix("u&\"")) {
                unicode_escapes(&mut out, rest.strip_suffix('"')?)?;
            } else {
                unquote(&mut out, q.strip_prefix('"')?.strip_suffix('"')?, '"')?;
            }
            // Quoted names keep their case: `"NEXTVAL"` is not `nextval`.
            if out.buf.get(..out.len)?.iter().any(u8::is_ascii_uppercase) {
                return None;
            }
        }
        _ => return None,
    }
    Some(out)
}

/// Whether `tok` names exactly `name` (lower case), as the server reads it.
pub fn names(tok: Token<'_>, mysql: bool, name: &str) -> bool {
    normalize(tok, mysql).is_some_and(|n| n.as_str() == Some(name))
}

/// Runs `f` with the normalised name of `tok`, or returns `None`.
pub fn with_name<R>(tok: Token<'_>, mysql: bool, f: impl FnOnce(&str) -> R) -> Option<R> {
    let n = normalize(tok, mysql)?;
    n.as_str().map(f)
}

/// Copies `inner`, with each doubled `quote` read as one.
fn unquote(out: &mut NameBuf, inner: &str, quote: char) -> Option<()> {
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c == quote && chars.next_if_eq(&quote).is_none() {
            return None; // a lone quote cannot be inside a quoted name
        }
        out.push_char(c)?;
    }
    Some(())
}

/// Decodes the body of `U&"..."` with the default escape character: `\XXXX` and `\+XXXXXX`
/// (hexadecimal code points), `\\` for a backslash, `""` for a double quote. A `UESCAPE`
/// clause after the name changes the escape character; the classifier never reaches here then
/// (the token before `(` is the clause's string), and treats the call as unknown.
fn unicode_escapes(out: &mut NameBuf, body: &str) -> Option<()> {
    let bytes = body.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'\\' if bytes.get(i + 1) == Some(&b'\\') => {
                out.push(b"\\")?;
                i += 2;
            }
            b'\\' => {
                let (digits, skip) = if bytes.get(i + 1) == Some(&b'+') { (6, 2) } else { (4, 1) };
                let hex = body.get(i + skip..i + skip + digits)?;
                if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                    return None;
                }
                out.push_char(char::from_u32(u32::from_str_radix(hex, 16).ok()?)?)?;
                i += skip + digits;
            }
            b'"' if bytes.get(i + 1) == Some(&b'"') => {
                out.push(b"\"")?;
                i += 2;
            }
            b'"' => return None,
            _ => {
                let c = body.get(i..)?.chars().next()?;
                out.push_char(c)?;
                i += c.len_utf8();
            }
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use Token::{QuotedIdent, Str, Word};

    fn pg(tok: Token<'_>) -> Option<String> {
        with_name(tok, false, str::to_owned)
    }

    fn my(tok: Token<'_>) -> Option<String> {
        with_name(tok, true, str::to_owned)
    }

    #[test]
    fn postgres_folds_unquoted_and_keeps_quoted() {
        assert_eq!(pg(Word("NextVal")).as_deref(), Some("nextval"));
        assert_eq!(pg(QuotedIdent("\"nextval\"")).as_deref(), Some("nextval"));
        assert_eq!(pg(QuotedIdent("\"NEXTVAL\"")), None, "a quoted upper-case name is another function");
        assert_eq!(pg(QuotedIdent("\"a\"\"b\"")).as_deref(), Some("a\"b"));
        assert_eq!(pg(QuotedIdent("U&\"n\\0065xtval\"")).as_deref(), Some("nextval"));
        assert_eq!(pg(QuotedIdent("U&\"\\+00006Eextval\"")).as_deref(), Some("nextval"));
        assert_eq!(pg(QuotedIdent("U&\"a\\\\b\"")).as_deref(), Some("a\\b"));
        assert_eq!(pg(QuotedIdent("U&\"\\00zz\"")), None, "a bad escape");
        assert_eq!(pg(QuotedIdent("U&\"\\D800\"")), None, "not a character");
        assert_eq!(pg(QuotedIdent("U&\"\\004E\"")), None, "an escaped upper-case letter keeps its case");
        assert_eq!(pg(Str("'nextval'")), None, "a string is not a name");
        assert_eq!(pg(Word(&"x".repeat(65))), None, "longer than any built-in");
    }

    #[test]
    fn mysql_ignores_case_however_quoted() {
        assert_eq!(my(Word("GET_LOCK")).as_deref(), Some("get_lock"));
        assert_eq!(my(QuotedIdent("`Get_Lock`")).as_deref(), Some("get_lock"));
        assert_eq!(my(QuotedIdent("`a``b`")).as_deref(), Some("a`b"));
        assert_eq!(my(Str("\"GET_LOCK\"")).as_deref(), Some("get_lock"), "ANSI_QUOTES");
        assert_eq!(my(Str("'get_lock'")), None);
        assert!(names(QuotedIdent("`pg_catalog`"), true, "pg_catalog"));
    }
}
