//! A SQL lexer that knows just enough to never be fooled: comments (nested `/* */` and `--`),
//! string literals (standard, `E''` with backslash escapes, `B''`, `X''`, `U&''`), quoted
//! identifiers, dollar quotes and parameters. It allocates nothing; tokens borrow the input.
//! Anything it cannot close (an unterminated string, comment or dollar quote) is reported as
//! [`Token::Unterminated`], which the classifier reads as "unknown".

/// One token. Words keep their original spelling; compare with `eq_ignore_ascii_case`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token<'a> {
    /// A keyword or unquoted identifier.
    Word(&'a str),
    /// A `"quoted identifier"`, with its quotes.
    QuotedIdent(&'a str),
    /// A string literal of any kind, with its quotes (and prefix).
    Str(&'a str),
    /// A number.
    Number,
    /// `$1`, `?` or `:name`-style parameter.
    Param,
    /// `;`
    Semicolon,
    /// `(`
    Open,
    /// `)`
    Close,
    /// `.`
    Dot,
    /// `,`
    Comma,
    /// Any other operator or punctuation.
    Op,
    /// An unterminated string, comment or quote: the rest of the input is unreadable.
    Unterminated,
}

/// Iterator over the tokens of `sql`.
#[derive(Debug, Clone)]
pub struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    /// MySQL dialect: `#` comments, backtick identifiers, backslash escapes in every string.
    mysql: bool,
}

impl<'a> Lexer<'a> {
    /// A PostgreSQL-dialect lexer.
    pub fn new(src: &'a str) -> Self {
        Self { src, pos: 0, mysql: false }
    }

    /// A MySQL-dialect lexer.
    pub fn mysql(src: &'a str) -> Self {
        Self { src, pos: 0, mysql: true }
    }

    fn bytes(&self) -> &'a [u8] {
        self.src.as_bytes()
    }

    fn peek(&self, at: usize) -> Option<u8> {
        self.bytes().get(at).copied()
    }

    /// Skips white space and comments; returns false on an unterminated comment.
    fn skip_trivia(&mut self) -> bool {
        let b = self.bytes();
        loop {
            match b.get(self.pos) {
                Some(&c) if is_space(c) => self.pos += 1,
                Some(b'-') if self.peek(self.pos + 1) == Some(b'-') => {
                    // MySQL needs white space after `--`; `1--1` is arithmetic there.
                    if self.mysql && !matches!(self.peek(self.pos + 2), None | Some(b' ' | b'\t' | b'\n' | b'\r')) {
                        return true;
                    }
                    self.skip_line();
                }
                Some(b'#') if self.mysql => self.skip_line(),
                Some(b'/') if self.peek(self.pos + 1) == Some(b'*') => {
                    // `/*!` and `/*M!` are executable in MySQL: the caller sees them as an operator.
                    if self.mysql && matches!(self.peek(self.pos + 2), Some(b'!' | b'M')) {
                        return true;
                    }
                    if !self.skip_block_comment() {
                        return false;
                    }
                }
                _ => return true,
            }
        }
    }

    fn skip_line(&mut self) {
        let b = self.bytes();
        while let Some(&c) = b.get(self.pos) {
            self.pos += 1;
            if c == b'\n' {
                break;
            }
        }
    }

    fn skip_block_comment(&mut self) -> bool {
        let b = self.bytes();
        let mut depth = 0usize;
        while let Some(&c) = b.get(self.pos) {
            if c == b'/' && self.peek(self.pos + 1) == Some(b'*') {
                depth += 1;
                self.pos += 2;
                // MySQL block comments do not nest.
                if self.mysql && depth > 1 {
                    depth -= 1;
                }
            } else if c == b'*' && self.peek(self.pos + 1) == Some(b'/') {
                depth -= 1;
                self.pos += 2;
                if depth == 0 {
                    return true;
                }
            } else {
                self.pos += 1;
            }
        }
        false
    }

    /// Scans a quoted run starting at the opening quote; `backslash` makes `\x` an escape.
    /// Returns false when the closing quote is missing.
    fn skip_quoted(&mut self, quote: u8, backslash: bool) -> bool {
        let b = self.bytes();
        self.pos += 1;
        while let Some(&c) = b.get(self.pos) {
            if backslash && c == b'\\' {
                self.pos += 2;
                continue;
            }
            self.pos += 1;
            if c == quote {
                if b.get(self.pos) == Some(&quote) {
                    self.pos += 1;
                    continue;
                }
                return true;
            }
        }
        false
    }

    /// At a `$`: a dollar-quoted string, or a `$n` parameter.
    fn dollar(&mut self, start: usize) -> Token<'a> {
        let b = self.bytes();
        let mut end = start + 1;
        if b.get(end).is_some_and(u8::is_ascii_digit) {
            while b.get(end).is_some_and(u8::is_ascii_digit) {
                end += 1;
            }
            self.pos = end;
            return Token::Param;
        }
        while b.get(end).is_some_and(|&c| is_ident_char(c) && c != b'$') {
            end += 1;
        }
        if b.get(end) != Some(&b'$') {
            self.pos = start + 1;
            return Token::Op;
        }
        let tag = &self.src[start..=end];
        let body_start = end + 1;
        match self.src.get(body_start..).and_then(|rest| rest.find(tag)) {
            Some(off) => {
                self.pos = body_start + off + tag.len();
                Token::Str(&self.src[start..self.pos])
            }
            None => {
                self.pos = b.len();
                Token::Unterminated
            }
        }
    }

    fn string(&mut self, start: usize, quote_at: usize, backslash: bool) -> Token<'a> {
        self.pos = quote_at;
        let quote = self.peek(quote_at).unwrap_or(b'\'');
        if self.skip_quoted(quote, backslash) {
            Token::Str(&self.src[start..self.pos])
        } else {
            self.pos = self.src.len();
            Token::Unterminated
        }
    }
}

/// Character classes, one table lookup per byte on the hot path: white space, the bytes that
/// start and go on a word (any byte from 0x80 on counts, as PostgreSQL reads names), and for
/// the classifier's shortcut (`super::quick`) the ASCII bytes that go on a word and on a number.
pub(super) const WS: u8 = 1;
const IDENT_START: u8 = 2;
const IDENT: u8 = 4;
pub(super) const ASCII_WORD: u8 = 8;
pub(super) const NUMBER: u8 = 16;
#[allow(clippy::indexing_slicing, reason = "c < 256 indexes a 256-entry table, at compile time")]
const CLASSES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        let mut class = 0;
        if b.is_ascii_whitespace() {
            class |= WS;
        }
        if b.is_ascii_alphabetic() || b == b'_' || b >= 0x80 {
            class |= IDENT_START | IDENT;
        }
        if b.is_ascii_digit() || b == b'$' {
            class |= IDENT;
        }
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'$' {
            class |= ASCII_WORD;
        }
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' {
            class |= NUMBER;
        }
        t[c] = class;
        c += 1;
    }
    t
};

fn is_ident_start(c: u8) -> bool {
    class(c) & IDENT_START != 0
}

fn is_ident_char(c: u8) -> bool {
    class(c) & IDENT != 0
}

fn is_space(c: u8) -> bool {
    class(c) & WS != 0
}

/// Whether byte `c` is in `class` (one of the constants above).
pub(super) fn in_class(c: u8, class: u8) -> bool {
    self::class(c) & class != 0
}

/// The classes of byte `c` (a `u8` always indexes the table: no bounds check is compiled).
fn class(c: u8) -> u8 {
    CLASSES.get(usize::from(c)).copied().unwrap_or(0)
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Token<'a>;

    #[inline]
    fn next(&mut self) -> Option<Token<'a>> {
        if !self.skip_trivia() {
            self.pos = self.src.len();
            return Some(Token::Unterminated);
        }
        let b = self.bytes();
        let start = self.pos;
        let c = *b.get(start)?;
        let next = self.peek(start + 1);
        // The common case first: a word that is not a string prefix (`E'`, `U&'`, ...).
        if is_ident_start(c) && !matches!(next, Some(b'\'' | b'&')) {
            let rest = b.get(start + 1..).unwrap_or_default();
            let end = start + 1 + rest.iter().position(|&c| !is_ident_char(c)).unwrap_or(rest.len());
            self.pos = end;
            return Some(Token::Word(&self.src[start..end]));
        }
        let tok = match c {
            b'\'' => self.string(start, start, self.mysql),
            b'"' if self.mysql => self.string(start, start, true),
            b'"' => {
                if self.skip_quoted(b'"', false) {
                    Token::QuotedIdent(&self.src[start..self.pos])
                } else {
                    self.pos = b.len();
                    Token::Unterminated
                }
            }
            b'`' if self.mysql => {
                if self.skip_quoted(b'`', false) {
                    Token::QuotedIdent(&self.src[start..self.pos])
                } else {
                    self.pos = b.len();
                    Token::Unterminated
                }
            }
            b'E' | b'e' if next == Some(b'\'') => self.string(start, start + 1, true),
            b'B' | b'b' | b'X' | b'x' | b'N' | b'n' if next == Some(b'\'') => self.string(start, start + 1, self.mysql),
            b'U' | b'u' if next == Some(b'&') && matches!(self.peek(start + 2), Some(b'\'' | b'"')) => {
                if self.peek(start + 2) == Some(b'"') {
                    self.pos = start + 2;
                    if self.skip_quoted(b'"', false) {
                        Token::QuotedIdent(&self.src[start..self.pos])
                    } else {
                        self.pos = b.len();
                        Token::Unterminated
                    }
                } else {
                    self.string(start, start + 2, false)
                }
            }
            b'$' if !self.mysql => self.dollar(start),
            c if is_ident_start(c) => {
                let rest = b.get(start + 1..).unwrap_or_default();
                let end = start + 1 + rest.iter().position(|&c| !is_ident_char(c)).unwrap_or(rest.len());
                self.pos = end;
                Token::Word(&self.src[start..end])
            }
            c if c.is_ascii_digit() => {
                let mut end = start + 1;
                while b.get(end).is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_') {
                    end += 1;
                }
                self.pos = end;
                Token::Number
            }
            b';' => {
                self.pos += 1;
                Token::Semicolon
            }
            b'(' => {
                self.pos += 1;
                Token::Open
            }
            b')' => {
                self.pos += 1;
                Token::Close
            }
            b',' => {
                self.pos += 1;
                Token::Comma
            }
            b'.' if next.is_some_and(|d| d.is_ascii_digit()) => {
                let mut end = start + 1;
                while b.get(end).is_some_and(u8::is_ascii_alphanumeric) {
                    end += 1;
                }
                self.pos = end;
                Token::Number
            }
            b'.' => {
                self.pos += 1;
                Token::Dot
            }
            b'?' => {
                self.pos += 1;
                Token::Param
            }
            _ => {
                // Advance by one whole UTF-8 character so slices stay on boundaries.
                let width = self.src[start..].chars().next().map_or(1, char::len_utf8);
                self.pos += width;
                Token::Op
            }
        };
        Some(tok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Token::*;

    fn toks(s: &str) -> Vec<Token<'_>> {
        Lexer::new(s).collect()
    }

    #[test]
    fn skips_comments_and_reads_strings() {
        assert_eq!(toks("/* a /* nested */ b */ select -- x\n 'it''s'"), vec![Word("select"), Str("'it''s'")]);
        assert_eq!(toks("E'a\\'b' ;"), vec![Str("E'a\\'b'"), Semicolon]);
        assert_eq!(toks("$$ ; drop $$"), vec![Str("$$ ; drop $$")]);
        assert_eq!(toks("$fn$ x $$ y $fn$ $1"), vec![Str("$fn$ x $$ y $fn$"), Param]);
        assert_eq!(toks("\"a\"\"b\".c"), vec![QuotedIdent("\"a\"\"b\""), Dot, Word("c")]);
    }

    #[test]
    fn unterminated_is_reported() {
        assert_eq!(toks("select 'abc"), vec![Word("select"), Unterminated]);
        assert_eq!(toks("select /* x"), vec![Word("select"), Unterminated]);
        assert_eq!(toks("select $a$ x"), vec![Word("select"), Unterminated]);
        assert_eq!(toks("select \"x"), vec![Word("select"), Unterminated]);
    }

    #[test]
    fn mysql_dialect() {
        let t: Vec<_> = Lexer::mysql("select `a` # c\n, 'x\\'y' -- z\n").collect();
        assert_eq!(t, vec![Word("select"), QuotedIdent("`a`"), Comma, Str("'x\\'y'")]);
        let t: Vec<_> = Lexer::mysql("/*!40101 set x=1 */").collect();
        assert_eq!(t[0], Op);
    }

    #[test]
    fn multibyte_is_safe() {
        let t = toks("select 'ü' ≥ ü");
        assert_eq!(t, vec![Word("select"), Str("'ü'"), Word("≥"), Word("ü")]);
    }
}
