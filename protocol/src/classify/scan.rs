//! The scan of one statement's tokens: what it is (`Stmt`), found word by word as the lexer
//! gives them, without a parse tree.

use super::*;

/// The outcome of one statement.
pub(super) struct Stmt {
    pub(super) class: Class,
    pub(super) writes: bool,
    pub(super) pin: Option<Pin>,
    pub(super) serializable: bool,
    pub(super) custom_setting: bool,
    pub(super) sets_config_only: bool,
    pub(super) session_read_only: Option<bool>,
    pub(super) about_last_statement: bool,
    pub(super) releases: bool,
}

/// The per-statement state machine fed one token at a time.
pub(super) struct Scan<'a, 'x> {
    extra: &'x [String],
    /// MySQL dialect: how names are read.
    mysql: bool,
    lead: Lead,
    /// Words seen so far in this statement (saturating), for position-dependent rules.
    words: u32,
    prev: Option<Token<'a>>,
    prev_word: &'a str,
    prev2_word: &'a str,
    /// The name before the dot, when the name being read came as `schema.name` (any token
    /// there that is not a name makes the qualified name unknown).
    qualifier: Option<Token<'a>>,
    /// The token before the last `.`.
    before_dot: Option<Token<'a>>,
    depth: u32,
    /// EXPLAIN ANALYZE: the inner statement runs.
    analyze: bool,
    /// A token made this statement unreadable or unprovable.
    unknown: bool,
    /// A data-modifying word inside a query (CTE with INSERT, ...).
    dml: bool,
    /// `SELECT ... INTO`.
    into: bool,
    /// `FOR UPDATE` / `FOR SHARE` / `FOR NO KEY UPDATE` / `FOR KEY SHARE`.
    locking: bool,
    /// A call to a function not on the read-only list.
    unsafe_call: bool,
    /// A string literal mentions a read-only setting (with a call: `set_config(...)`).
    mentions_read_only: bool,
    temp: bool,
    advisory: bool,
    opts: TxOptions,
    /// SET: the parameter's name and whether its value is not clearly "on".
    set_target_read_only: bool,
    set_value_on: Option<bool>,
    set_transaction: bool,
    copy_from: bool,
    /// The word (or string) `serializable` appears.
    serializable: bool,
    /// A dotted name in `SET`/`RESET`, or a `set_config` call.
    custom_setting: bool,
    /// A `set_config` call.
    set_config: bool,
    /// It may release what keeps a session on its connection ([`Verdict::releases`]).
    releases: bool,
    /// The last word alone made the statement DML (`insert`): MySQL's `INSERT(str, ...)`
    /// string function, when a `(` follows, takes it back.
    dml_by_last_word: bool,
    /// The previous token opened a `current_setting(` call: its argument is next.
    setting_arg: bool,
    /// A call, other than `set_config`, to a function not on the read-only list.
    other_unsafe_call: bool,
    /// A relation whose rows depend on the session or the server answering
    /// (`pg_cursors`, `pg_stat_*`, ...): only the session's primary connection answers as a
    /// direct client's would.
    local_relation: bool,
    /// `SET SESSION CHARACTERISTICS AS TRANSACTION ...`: the session's defaults.
    characteristics: bool,
    /// `DECLARE ... WITH HOLD`.
    hold: bool,
    /// A `$n` or `?` parameter: the text alone cannot be replayed.
    param: bool,
    /// MySQL `SHOW WARNINGS` / `SHOW ERRORS`.
    last_statement: bool,
}

impl<'a, 'x> Scan<'a, 'x> {
    pub(super) fn new(extra: &'x [String], mysql: bool) -> Self {
        Self {
            extra,
            mysql,
            lead: Lead::None,
            words: 0,
            prev: None,
            prev_word: "",
            prev2_word: "",
            qualifier: None,
            before_dot: None,
            depth: 0,
            analyze: false,
            unknown: false,
            dml: false,
            into: false,
            locking: false,
            unsafe_call: false,
            mentions_read_only: false,
            temp: false,
            advisory: false,
            opts: TxOptions::default(),
            set_target_read_only: false,
            set_value_on: None,
            set_transaction: false,
            copy_from: false,
            serializable: false,
            custom_setting: false,
            set_config: false,
            releases: false,
            dml_by_last_word: false,
            setting_arg: false,
            other_unsafe_call: false,
            local_relation: false,
            characteristics: false,
            hold: false,
            param: false,
            last_statement: false,
        }
    }

    pub(super) fn feed(&mut self, tok: Token<'a>) {
        if std::mem::take(&mut self.setting_arg) {
            // `current_setting(x)`: a replica answers for itself where the setting depends on
            // the server's role, and cannot be trusted with a name it is not shown.
            let named = match tok {
                Token::Str(s) => Some(s),
                _ => None,
            };
            if named.is_none_or(functions::depends_on_role) {
                self.unsafe_call = true;
                self.other_unsafe_call = true;
            }
        }
        match tok {
            Token::Unterminated | Token::Op if self.lead == Lead::None => self.unknown = true,
            Token::Unterminated => self.unknown = true,
            Token::Open => {
                match self.prev {
                    Some(name @ (Token::Word(_) | Token::QuotedIdent(_))) => self.call(name),
                    Some(name @ Token::Str(s)) if self.mysql && s.starts_with('"') => self.call(name),
                    // `U&"name" UESCAPE '!' (` in PostgreSQL, or nonsense: not a call we know.
                    Some(Token::Str(_)) => self.unsafe_call = true,
                    _ => {}
                }
                self.depth += 1;
            }
            Token::Dot => {
                self.before_dot = self.prev;
                self.custom_setting |= matches!(self.lead, Lead::Set | Lead::SessionOther);
            }
            Token::Close => self.depth = self.depth.saturating_sub(1),
            Token::Str(s) => {
                if contains_ci(s, "read_only") {
                    self.mentions_read_only = true;
                }
                if contains_ci(s, "serializable") {
                    self.serializable = true;
                }
                if self.lead == Lead::Set && self.words >= 2 {
                    self.set_value(s.trim_matches(|c| c == '\'' || c == '"'));
                }
            }
            Token::Number if self.lead == Lead::Set && self.words >= 2 => self.set_value("number"),
            Token::Param => self.param = true,
            Token::Word(w) => {
                self.qualifier = self.qualifier_of_next();
                self.word(w);
            }
            Token::QuotedIdent(q) => {
                self.qualifier = self.qualifier_of_next();
                if contains_ci(q, "read_only") {
                    self.mentions_read_only = true;
                    if self.lead == Lead::Set {
                        self.set_target_read_only = true;
                    }
                }
                self.words = self.words.saturating_add(1);
            }
            _ => {}
        }
        self.prev = Some(tok);
    }

    /// The qualifier of a name that comes next: the token before the dot, if one precedes it.
    fn qualifier_of_next(&self) -> Option<Token<'a>> {
        match self.prev {
            Some(Token::Dot) => Some(self.before_dot.unwrap_or(Token::Op)),
            _ => None,
        }
    }

    fn word(&mut self, w: &'a str) {
        self.words = self.words.saturating_add(1);
        let dml_before = std::mem::replace(&mut self.dml_by_last_word, false) || self.dml;
        if w.len() == 12 && is(w, "serializable") {
            self.serializable = true;
        }
        if self.lead == Lead::None {
            self.lead = lead_of(w);
            self.releases = ["unlisten", "close", "discard", "drop", "unlock"].iter().any(|k| is(w, k));
        } else {
            self.keyword(w);
            self.dml_by_last_word = self.mysql && !dml_before && self.dml && is(w, "insert");
        }
        self.prev2_word = self.prev_word;
        self.prev_word = w;
    }

    fn keyword(&mut self, w: &'a str) {
        match self.lead {
            Lead::Explain => {
                if is(w, "analyze") || is(w, "analyse") {
                    self.analyze = true;
                } else if self.depth == 0 && !is(w, "verbose") && !is(w, "costs") {
                    // The inner statement starts here; an option word inside `( ... )` does not.
                    let inner = lead_of(w);
                    if inner != Lead::Unknown {
                        self.lead = if inner == Lead::Query { Lead::Query } else { inner };
                        if !self.analyze && inner != Lead::Query {
                            // EXPLAIN of a write without ANALYZE does not run it, but it is not
                            // a read either: the primary, not refused.
                            self.lead = Lead::Unknown;
                        }
                    }
                }
            }
            // `alias.update` is a column, never a keyword.
            Lead::Query | Lead::Show
                if self.qualifier.is_some()
                    && !starts_with_pg(w)
                    && !(self.mysql && functions::is_mysql_local(w, false)) => {}
            // `SELECT ... INTO TEMP t` makes a temporary table.
            Lead::Query if self.into && (is(w, "temp") || is(w, "temporary")) => self.temp = true,
            Lead::Query | Lead::Show if starts_with_pg(w) => self.local_relation |= functions::is_local_relation(w),
            // MySQL: what the session's connection or its server answers for itself
            // (`SHOW WARNINGS`, `SHOW STATUS`, `information_schema.PROCESSLIST`, ...).
            Lead::Query | Lead::Show if self.mysql && functions::is_mysql_local(w, self.lead == Lead::Show) => {
                self.local_relation = true;
                self.last_statement |= self.lead == Lead::Show && (is(w, "warnings") || is(w, "errors"));
            }
            // Most words of a query are names: only these letters start a word checked below.
            Lead::Query | Lead::Show
                if !matches!(w.as_bytes().first().map(|c| c | 0x20), Some(b'i' | b'u' | b'd' | b'm' | b's' | b'l')) => {
            }
            Lead::Query | Lead::Show => {
                if is(w, "insert") || is(w, "update") || is(w, "delete") || is(w, "merge") {
                    if !is(self.prev_word, "for") && !is(self.prev_word, "no") && !is(self.prev_word, "key") {
                        self.dml = true;
                    } else {
                        self.locking = true;
                    }
                } else if is(w, "share") && (is(self.prev_word, "for") || is(self.prev_word, "key")) {
                    self.locking = true;
                } else if is(w, "into") {
                    self.into = true;
                } else if is(w, "lock") && is(self.prev_word, "for") {
                    self.locking = true;
                } else if is(w, "mode") && is(self.prev_word, "share") {
                    self.locking = true; // MySQL `LOCK IN SHARE MODE`
                }
            }
            Lead::CreateOrAlter if is(w, "temp") || is(w, "temporary") => self.temp = true,
            Lead::Copy if is(w, "from") && self.depth == 0 => self.copy_from = true,
            Lead::Begin => self.tx_option(w),
            Lead::Declare if is(w, "hold") && is(self.prev_word, "with") => self.hold = true,
            Lead::Set => {
                if self.words == 2 && (is(w, "transaction") || is(w, "session") || is(w, "local")) {
                    self.set_transaction |= is(w, "transaction");
                } else if self.words == 3 && is(w, "characteristics") {
                    self.set_transaction = true;
                    self.characteristics = true;
                } else if self.words == 3 && is(w, "transaction") && !is(self.prev_word, "local") {
                    // MySQL `SET SESSION TRANSACTION ...` (the session's defaults, like
                    // PostgreSQL's characteristics) and `SET GLOBAL TRANSACTION ...`.
                    self.set_transaction = true;
                    self.characteristics = is(self.prev_word, "session");
                }
                if self.set_transaction {
                    self.tx_option(w);
                } else if !self.set_target_read_only && self.set_value_on.is_none() && ends_with_ci(w, "read_only") {
                    self.set_target_read_only = true;
                } else if self.set_target_read_only && !is(w, "to") {
                    self.set_value(w);
                }
            }
            _ => {}
        }
    }

    fn set_value(&mut self, v: &str) {
        if self.set_value_on.is_none() {
            self.set_value_on = Some(crate::pg::startup::parse_bool(v) == Some(true));
        }
    }

    fn tx_option(&mut self, w: &str) {
        if is(self.prev_word, "read") {
            if is(w, "only") {
                self.opts.read_only = Some(true);
            } else if is(w, "write") {
                self.opts.read_only = Some(false);
            }
        } else if is(w, "serializable") {
            self.opts.serializable = true;
        }
    }

    /// `name (`: a call, unless it is syntax. The name is read as the server reads it
    /// ([`ident`]), so every spelling of a function is the same function.
    fn call(&mut self, name: Token<'a>) {
        const COLUMN_LIST: [&str; 4] = ["as", "with", "recursive", "tablesample"];
        if std::mem::take(&mut self.dml_by_last_word) {
            // MySQL `INSERT(str, pos, len, newstr)`, a string function: not a statement.
            self.dml = false;
        }
        // Syntax, `AS alias(col, ...)`, `WITH name(col, ...)`, `TABLESAMPLE method(n)`. The
        // word before a name is `prev2_word` for a bare name and `prev_word` for a quoted one
        // (quoted names are not words); a quoted name is never a keyword.
        let syntax = match name {
            // A qualified name is never `AS alias(col)`: `recursive` is a schema's name too.
            _ if self.qualifier.is_some() => false,
            Token::Word(w) => {
                self.words <= 1 || COLUMN_LIST.iter().any(|kw| is(self.prev2_word, kw)) || functions::is_syntax(w)
            }
            _ => COLUMN_LIST.iter().any(|kw| is(self.prev_word, kw)),
        };
        if syntax {
            return;
        }
        // A qualified name is a built-in only in PostgreSQL's pg_catalog; in MySQL it is a
        // stored function of that database.
        let builtin = self.qualifier.is_none_or(|q| !self.mysql && ident::names(q, false, "pg_catalog"));
        let (mysql, extra) = (self.mysql, self.extra);
        let known = ident::with_name(name, mysql, |name| {
            const USER_LOCKS: [&str; 4] = ["get_lock", "release_lock", "release_all_locks", "is_used_lock"];
            let lock =
                USER_LOCKS.contains(&name) || name.starts_with("pg_advisory_") || name.starts_with("pg_try_advisory_");
            // A try that failed takes nothing: the server is asked, as after an unlock.
            let release =
                lock && (name.contains("unlock") || name.starts_with("release") || name.starts_with("pg_try_"));
            (
                lock,
                release,
                name == "set_config",
                functions::is_read_only(name, mysql, extra),
                name == "current_setting",
            )
        });
        let Some((lock, release, set_config, read_only, setting)) = known else {
            self.unsafe_call = true; // a name no built-in has
            self.other_unsafe_call = true;
            return;
        };
        self.advisory |= lock;
        self.releases |= release;
        self.custom_setting |= set_config;
        self.setting_arg = setting && builtin;
        if !builtin || !read_only {
            self.unsafe_call = true;
            if set_config && builtin {
                self.set_config = true;
            } else {
                self.other_unsafe_call = true;
            }
        }
    }

    pub(super) fn finish(&mut self) -> Stmt {
        let pin = if self.temp {
            Some(Pin::TempTable)
        } else if self.advisory {
            Some(Pin::AdvisoryLock)
        } else if self.lead == Lead::Listen {
            Some(Pin::Listen)
        } else if self.lead == Lead::Lock {
            Some(Pin::Lock)
        } else if self.hold {
            Some(Pin::Cursor)
        } else {
            None
        };
        let enables_writes = self.opts.read_only == Some(false)
            || (self.set_target_read_only && self.set_value_on != Some(true))
            || (self.unsafe_call && self.mentions_read_only);
        let class = match self.lead {
            Lead::None if self.unknown => Class::Unknown,
            Lead::None => Class::Empty,
            _ if self.unknown => Class::Unknown,
            Lead::Query | Lead::Show => {
                if self.into || self.dml {
                    Class::Write
                } else if self.locking || self.unsafe_call || self.local_relation {
                    Class::Unknown
                } else {
                    Class::Read
                }
            }
            Lead::Write => Class::Write,
            Lead::CreateOrAlter => Class::Write,
            Lead::Copy if self.copy_from => Class::Write,
            Lead::Begin => Class::Tx(TxControl::Begin(self.opts)),
            Lead::End => Class::Tx(TxControl::End),
            Lead::TxOther => Class::Tx(TxControl::Other),
            // The session's defaults: state to replay, not a transaction's options.
            Lead::Set if self.characteristics => Class::Session,
            Lead::Set if self.set_transaction => Class::Tx(TxControl::SetTransaction(self.opts)),
            Lead::Set | Lead::SessionOther | Lead::Listen => Class::Session,
            Lead::Explain | Lead::Copy | Lead::Lock | Lead::Declare | Lead::Unknown => Class::Unknown,
        };
        let writes = class == Class::Write || enables_writes;
        Stmt {
            class,
            writes,
            pin,
            serializable: self.serializable || self.opts.serializable,
            custom_setting: self.custom_setting,
            sets_config_only: self.lead == Lead::Query
                && self.set_config
                && !self.other_unsafe_call
                && !self.into
                && !self.dml
                && !self.locking
                && !self.unknown
                && !self.local_relation
                && !self.param,
            session_read_only: if self.characteristics { self.opts.read_only } else { None },
            about_last_statement: self.last_statement,
            releases: self.releases,
        }
    }
}
