//! Temporary tables of MySQL/MariaDB read-only sessions: a replica allows them (with
//! `read_only = 1`, and in a read-only transaction mode), so a read-only session may create,
//! fill, read and drop its own, on the replica it created them on. This module only reads the
//! statement's head: which table a `CREATE TEMPORARY TABLE` creates, and which table a write
//! names first. The server still refuses any write to a real table (the session's connections
//! run `SET SESSION TRANSACTION READ ONLY`).

/// The table a `CREATE TEMPORARY TABLE [IF NOT EXISTS] name` creates.
pub fn created(sql: &str) -> Option<String> {
    let mut words = Words::new(sql);
    words.keyword("create")?;
    words.keyword("temporary")?;
    words.keyword("table")?;
    words.skip_if(&["if", "not", "exists"]);
    words.table()
}

/// The tables a `DROP TEMPORARY TABLE [IF EXISTS] a, b` drops.
pub fn dropped(sql: &str) -> Option<Vec<String>> {
    let mut words = Words::new(sql);
    words.keyword("drop")?;
    words.keyword("temporary")?;
    words.keyword("table")?;
    words.skip_if(&["if", "exists"]);
    let mut tables = vec![words.table()?];
    while words.comma() {
        tables.push(words.table()?);
    }
    Some(tables)
}

/// The first table an `INSERT`, `REPLACE`, `UPDATE`, `DELETE` or `TRUNCATE` names.
pub fn written(sql: &str) -> Option<String> {
    let mut words = Words::new(sql);
    let verb = words.word()?.to_ascii_lowercase();
    let modifiers: &[&str] = &["low_priority", "delayed", "high_priority", "quick", "ignore"];
    while words.peek().is_some_and(|w| modifiers.iter().any(|m| w.eq_ignore_ascii_case(m))) {
        words.word();
    }
    match verb.as_str() {
        "insert" | "replace" => {
            words.skip_if(&["into"]);
            words.table()
        }
        // Only the single-table forms: a join could write to a real table too.
        "update" => {
            let table = words.table()?;
            let next = words.word()?;
            (next.eq_ignore_ascii_case("set") || words.keyword("set").is_some()).then_some(table)
        }
        "delete" => {
            words.keyword("from")?;
            let table = words.table()?;
            let ends = ["where", "order", "limit", "returning"];
            match words.peek() {
                None => words.rest.trim().is_empty().then_some(table),
                Some(w) => ends.iter().any(|e| w.eq_ignore_ascii_case(e)).then_some(table),
            }
        }
        "truncate" => {
            words.skip_if(&["table"]);
            words.table()
        }
        _ => None,
    }
}

/// A cursor over the words of a statement's head.
struct Words<'a> {
    rest: &'a str,
}

impl<'a> Words<'a> {
    fn new(sql: &'a str) -> Self {
        Self { rest: sql }
    }

    fn trim(&mut self) {
        self.rest = self.rest.trim_start();
    }

    /// The next bare word (letters, digits, `_`, `$`).
    fn peek(&mut self) -> Option<&'a str> {
        self.trim();
        let end = self.rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$')).unwrap_or(self.rest.len());
        (end > 0).then(|| self.rest.get(..end)).flatten()
    }

    fn word(&mut self) -> Option<&'a str> {
        let w = self.peek()?;
        self.rest = self.rest.get(w.len()..).unwrap_or_default();
        Some(w)
    }

    fn keyword(&mut self, k: &str) -> Option<()> {
        self.word().filter(|w| w.eq_ignore_ascii_case(k)).map(drop)
    }

    /// Consumes `seq` when the next words are exactly it.
    fn skip_if(&mut self, seq: &[&str]) {
        let saved = self.rest;
        if seq.iter().any(|k| self.keyword(k).is_none()) {
            self.rest = saved;
        }
    }

    fn comma(&mut self) -> bool {
        self.trim();
        match self.rest.strip_prefix(',') {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    /// A table name, `name`, `` `name` ``, `db.name`: the name, without its database.
    fn table(&mut self) -> Option<String> {
        let mut last = self.identifier()?;
        while let Some(rest) = self.rest.strip_prefix('.') {
            self.rest = rest;
            last = self.identifier()?;
        }
        Some(last)
    }

    fn identifier(&mut self) -> Option<String> {
        self.trim();
        if let Some(quoted) = self.rest.strip_prefix('`') {
            let mut name = String::new();
            let mut chars = quoted.char_indices();
            while let Some((at, c)) = chars.next() {
                if c == '`' {
                    if quoted.get(at + 1..).is_some_and(|r| r.starts_with('`')) {
                        name.push('`');
                        chars.next();
                        continue;
                    }
                    self.rest = quoted.get(at + 1..).unwrap_or_default();
                    return Some(name);
                }
                name.push(c);
            }
            return None;
        }
        self.word().map(str::to_owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_heads() {
        assert_eq!(created("CREATE TEMPORARY TABLE perms (id int)").as_deref(), Some("perms"));
        assert_eq!(created("create temporary table if not exists `my perms` like x").as_deref(), Some("my perms"));
        assert_eq!(created("CREATE TEMPORARY TABLE app.p SELECT 1").as_deref(), Some("p"));
        assert_eq!(created("CREATE TABLE perms (id int)"), None, "not temporary");
        assert_eq!(dropped("DROP TEMPORARY TABLE IF EXISTS a, `b`"), Some(vec!["a".to_owned(), "b".to_owned()]));
        assert_eq!(dropped("DROP TABLE a"), None);
        assert_eq!(written("INSERT INTO perms VALUES (1)").as_deref(), Some("perms"));
        assert_eq!(written("insert ignore perms select 1").as_deref(), Some("perms"));
        assert_eq!(written("REPLACE LOW_PRIORITY INTO app.`perms` VALUES (1)").as_deref(), Some("perms"));
        assert_eq!(written("UPDATE perms SET id = 2").as_deref(), Some("perms"));
        assert_eq!(written("DELETE QUICK FROM perms WHERE id = 1").as_deref(), Some("perms"));
        assert_eq!(written("TRUNCATE TABLE perms").as_deref(), Some("perms"));
        assert_eq!(written("SELECT 1"), None);
        assert_eq!(written("DELETE perms FROM perms"), None, "the multi-table form is not read");
        assert_eq!(written("UPDATE perms p SET p.id = 2").as_deref(), Some("perms"));
        assert_eq!(written("UPDATE perms JOIN items SET items.note = 'x'"), None, "a join may write elsewhere");
        assert_eq!(written("UPDATE perms, items SET items.note = 'x'"), None);
        assert_eq!(written("DELETE FROM perms USING perms JOIN items"), None);
        assert_eq!(written("DELETE FROM perms").as_deref(), Some("perms"));
        assert_eq!(written("INSERT INTO `unterminated"), None);
        assert_eq!(written(""), None);
    }
}
