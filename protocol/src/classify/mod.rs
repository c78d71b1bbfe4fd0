//! Statement classification: what the router needs to know about a SQL string, decided by a
//! lexer in one pass with no allocation. It fails closed: a statement is [`Class::Read`] only
//! when every token is accounted for; anything it cannot prove is [`Class::Unknown`] and goes to
//! the primary. [`Verdict::refused_read_only`] is the separate, deliberately narrow question
//! "is this known to write (or to turn writes back on)?", used to refuse statements in read-only
//! sessions before they reach any server.

pub mod functions;
pub mod ident;
pub mod lexer;
mod quick;
mod scan;
use scan::{Scan, Stmt};
#[cfg(test)]
mod tests;
pub mod text;

use lexer::{Lexer, Token};

/// What one statement (or a whole multi-statement string) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Provably reads and changes nothing: may run on a replica.
    Read,
    /// Known to change data or schema.
    Write,
    /// Transaction control.
    Tx(TxControl),
    /// Session state: applied to every backend connection of the session.
    Session,
    /// Nothing to run (empty string or only comments).
    Empty,
    /// Not proven to be a read: the primary.
    Unknown,
    /// More than one statement: the primary.
    Multi,
}

/// Transaction-control statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxControl {
    /// `BEGIN` / `START TRANSACTION`, with its options.
    Begin(TxOptions),
    /// `SET TRANSACTION ...` / `SET SESSION CHARACTERISTICS AS TRANSACTION ...`.
    SetTransaction(TxOptions),
    /// `COMMIT` / `END` / `ROLLBACK` / `ABORT` (and `... AND CHAIN`).
    End,
    /// `SAVEPOINT`, `RELEASE`, `ROLLBACK TO`, two-phase commands.
    Other,
}

/// Options of a transaction as declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TxOptions {
    /// `READ ONLY` (Some(true)) or `READ WRITE` (Some(false)).
    pub read_only: Option<bool>,
    /// `ISOLATION LEVEL SERIALIZABLE`.
    pub serializable: bool,
}

/// State a statement leaves behind that ties the session to the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// `CREATE TEMP TABLE`.
    TempTable,
    /// `LISTEN`.
    Listen,
    /// `pg_advisory_lock` and friends, MySQL `GET_LOCK`.
    AdvisoryLock,
    /// `LOCK TABLE`.
    Lock,
    /// `DECLARE ... WITH HOLD`: a cursor that outlives its transaction.
    Cursor,
}

/// The classifier's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The class of the statement, or [`Class::Multi`].
    pub class: Class,
    /// How many non-empty statements the string holds.
    pub statements: u32,
    /// Some statement is known to write, or to make the session writable again
    /// (`SET default_transaction_read_only = off`, `BEGIN READ WRITE`, ...).
    pub writes: bool,
    /// Some statement pins the session to the primary.
    pub pin: Option<Pin>,
    /// Some statement changes session state (SET, RESET, DISCARD, PREPARE, ...).
    pub session: bool,
    /// Some statement asks for SERIALIZABLE isolation, which a standby cannot give.
    pub serializable: bool,
    /// Some statement may set or reset a custom parameter (`SET myapp.tenant = ...`,
    /// `set_config(...)`): PostgreSQL keeps such a placeholder for the rest of the connection,
    /// even after `DISCARD ALL`, so only a new connection is as a fresh login makes it.
    pub custom_setting: bool,
    /// A single `SELECT` whose only calls that are not read-only are `set_config(...)`: it
    /// runs on the primary, and replaying it elsewhere sets the same session state.
    pub sets_config_only: bool,
    /// `SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY` (PostgreSQL) or `SET SESSION
    /// TRANSACTION READ ONLY` (MySQL): `Some(true)`; `... READ WRITE`: `Some(false)`.
    pub session_read_only: Option<bool>,
    /// MySQL `SHOW WARNINGS` / `SHOW ERRORS` / `@@warning_count` / `@@error_count`: about the
    /// last statement, so only the connection that ran it can answer.
    pub about_last_statement: bool,
    /// Some statement may release state that keeps a session on its connection: an
    /// advisory-lock unlock (`pg_advisory_unlock*`, `RELEASE_LOCK`, `RELEASE_ALL_LOCKS`), a
    /// `pg_try_advisory_lock*` (which may have taken nothing),
    /// `UNLISTEN`, `CLOSE`, `DISCARD`, `DROP`, `UNLOCK TABLES`.
    pub releases: bool,
}

impl Verdict {
    /// The verdict of a string with no statement in it: what statements add to.
    const EMPTY: Self = Self {
        class: Class::Empty,
        statements: 0,
        writes: false,
        pin: None,
        session: false,
        serializable: false,
        custom_setting: false,
        sets_config_only: false,
        session_read_only: None,
        about_last_statement: false,
        releases: false,
    };

    /// Whether a read-only session must refuse this string with SQLSTATE 25006.
    pub fn refused_read_only(&self) -> bool {
        self.writes
    }

    /// Whether the string may write: it writes, or is anything but a read, a transaction
    /// control, a session-state change or nothing. Read-only maintenance refuses these, and a
    /// session that runs one reads its own writes from then on.
    pub fn may_write(&self) -> bool {
        self.writes || !matches!(self.class, Class::Read | Class::Tx(_) | Class::Session | Class::Empty)
    }

    /// Whether the string may run on a replica in a read-write session.
    pub fn is_read(&self) -> bool {
        self.class == Class::Read && self.pin.is_none()
    }
}

/// Classifies PostgreSQL SQL text. The common statements (a lone plain `SELECT`, `INSERT`,
/// `UPDATE` or `DELETE` with no call, string or comment) are decided in one pass over their
/// bytes ([`quick`]); the rest by the lexer and the per-statement state machine.
pub fn classify_pg(sql: &str) -> Verdict {
    quick::quick_pg(sql).unwrap_or_else(|| classify_with(Lexer::new(sql), false, &[]))
}

/// Classifies PostgreSQL SQL text, with extra read-only functions from the config (lower-case,
/// sorted). Those name functions, and a statement the shortcut decides calls none.
pub fn classify_pg_with(sql: &str, extra_read_only: &[String]) -> Verdict {
    quick::quick_pg(sql).unwrap_or_else(|| classify_with(Lexer::new(sql), false, extra_read_only))
}

/// Classifies MySQL/MariaDB SQL text (backticks, `#` comments, backslash escapes). Executable
/// comments (`/*! ... */`, `/*M! ... */`) may hold anything: a string containing one is never a
/// provable read. `@@identity` and `@@last_insert_id` read per-connection state of the primary.
pub fn classify_mysql_with(sql: &str, extra_read_only: &[String]) -> Verdict {
    let mut v = classify_with(Lexer::mysql(sql), true, extra_read_only);
    // `@@identity`, `@@session.identity`, `` @@`identity` ``: any spelling reads the primary's;
    // so do `@@warning_count` and `@@error_count`, which belong to the last statement.
    let opaque = ["/*!", "/*M!"].iter().any(|needle| contains_ci(sql, needle))
        || (sql.contains("@@")
            && ["identity", "last_insert_id", "warning_count", "error_count"].iter().any(|n| contains_ci(sql, n)));
    if opaque && v.class == Class::Read {
        v.class = Class::Unknown;
    }
    if sql.contains("@@") && (contains_ci(sql, "warning_count") || contains_ci(sql, "error_count")) {
        v.about_last_statement = true;
    }
    v
}

fn classify_with(lexer: Lexer<'_>, mysql: bool, extra: &[String]) -> Verdict {
    let mut verdict = Verdict::EMPTY;
    let mut scan = Scan::new(extra, mysql);
    for tok in lexer {
        if tok == Token::Semicolon {
            verdict.add(scan.finish());
            scan = Scan::new(extra, mysql);
        } else {
            scan.feed(tok);
        }
    }
    verdict.add(scan.finish());
    verdict
}

impl Verdict {
    fn add(&mut self, s: Stmt) {
        if s.class != Class::Empty {
            self.statements += 1;
            self.class = if self.statements > 1 { Class::Multi } else { s.class };
            self.writes |= s.writes;
            self.pin = self.pin.or(s.pin);
            self.session |= s.class == Class::Session;
            self.serializable |= s.serializable;
            self.custom_setting |= s.custom_setting;
            self.sets_config_only = self.statements == 1 && s.sets_config_only;
            self.session_read_only = s.session_read_only.or(self.session_read_only);
            self.about_last_statement |= s.about_last_statement;
            self.releases |= s.releases;
        }
    }
}

/// What a statement's first keyword says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lead {
    None,
    Query,
    Show,
    Explain,
    Write,
    Copy,
    CreateOrAlter,
    Begin,
    End,
    TxOther,
    Set,
    SessionOther,
    Listen,
    Lock,
    Declare,
    Unknown,
}

fn lead_of(word: &str) -> Lead {
    // Lower-case into a stack buffer and match whole words: no keyword is longer than 10 bytes.
    let mut buf = [0u8; 10];
    let Some(lower) = buf.get_mut(..word.len()) else { return Lead::Unknown };
    for (d, s) in lower.iter_mut().zip(word.bytes()) {
        *d = s.to_ascii_lowercase();
    }
    match &*lower {
        b"select" | b"with" | b"values" | b"table" | b"desc" | b"describe" => Lead::Query,
        b"insert" | b"update" | b"delete" | b"merge" | b"replace" | b"truncate" | b"drop" | b"grant" | b"revoke"
        | b"comment" | b"cluster" | b"vacuum" | b"analyze" | b"analyse" | b"reindex" | b"refresh" | b"reassign"
        | b"import" | b"security" => Lead::Write,
        b"create" | b"alter" => Lead::CreateOrAlter,
        b"begin" | b"start" => Lead::Begin,
        b"commit" | b"end" | b"rollback" | b"abort" => Lead::End,
        b"savepoint" | b"release" => Lead::TxOther,
        b"set" => Lead::Set,
        b"reset" | b"discard" | b"deallocate" | b"prepare" | b"unlisten" | b"use" => Lead::SessionOther,
        b"show" => Lead::Show,
        b"explain" => Lead::Explain,
        b"copy" => Lead::Copy,
        b"listen" => Lead::Listen,
        b"lock" | b"unlock" => Lead::Lock,
        b"declare" => Lead::Declare,
        _ => Lead::Unknown,
    }
}

fn is(word: &str, kw: &str) -> bool {
    word.eq_ignore_ascii_case(kw)
}

fn contains_ci(hay: &str, needle: &str) -> bool {
    hay.as_bytes().windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// Whether `w` starts with `pg_` (a system relation's prefix), in any case.
fn starts_with_pg(w: &str) -> bool {
    w.as_bytes().get(..3).is_some_and(|p| p.eq_ignore_ascii_case(b"pg_"))
}

fn ends_with_ci(hay: &str, suffix: &str) -> bool {
    hay.len()
        .checked_sub(suffix.len())
        .and_then(|at| hay.as_bytes().get(at..))
        .is_some_and(|end| end.eq_ignore_ascii_case(suffix.as_bytes()))
}
