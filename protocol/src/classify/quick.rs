//! The common statements decided in one pass over their bytes, without tokens or the
//! per-statement state machine: a lone `SELECT`, or a lone `INSERT`/`UPDATE`/`DELETE`, made only
//! of ASCII names, numbers, `$n` parameters, white space and plain operators. Anything that could
//! change the verdict (a call, a string, a comment, a quote, a dot, a second statement, a word
//! the full classifier looks at) makes it answer `None`, and the full classifier decides. Where
//! it answers, it answers exactly what the full classifier does for the same text (a property
//! test holds it to that): it is a shortcut, never a second opinion.

use super::lexer::{in_class, ASCII_WORD, NUMBER, WS};
use super::{functions, starts_with_pg, Class, Verdict};

/// The verdict of a common PostgreSQL statement, or `None` for the full classifier.
pub(super) fn quick_pg(sql: &str) -> Option<Verdict> {
    let b = sql.as_bytes();
    let mut i = skip_space(b, 0);
    let start = i;
    while b.get(i).is_some_and(u8::is_ascii_alphabetic) {
        i += 1;
    }
    // A first word that goes on (`select1`, `select_x`, `sélect`) is another word.
    if b.get(i).is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80) {
        return None;
    }
    let first = b.get(start..i)?;
    let write = if first.eq_ignore_ascii_case(b"select") {
        false
    } else if [b"insert", b"update", b"delete"].iter().any(|w| first.eq_ignore_ascii_case(*w)) {
        true
    } else {
        return None;
    };
    let mut ended = false;
    while let Some(&c) = b.get(i) {
        if in_class(c, WS) {
            i += 1;
            continue;
        }
        if ended {
            return None; // a second statement
        }
        match c {
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                let from = i;
                i += 1;
                while b.get(i).is_some_and(|&c| in_class(c, ASCII_WORD)) {
                    i += 1;
                }
                if b.get(i).is_some_and(|&c| c >= 0x80) {
                    return None;
                }
                if !plain_word(sql, from, i, write) {
                    return None;
                }
            }
            b'0'..=b'9' => {
                i += 1;
                while b.get(i).is_some_and(|&c| in_class(c, NUMBER)) {
                    i += 1;
                }
            }
            b'$' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                i += 1;
                while b.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
            }
            b'=' | b'<' | b'>' | b'+' | b'*' | b'%' | b',' | b'!' | b'~' | b'^' | b'|' | b'&' | b':' | b'[' | b']' => {
                i += 1;
            }
            b';' => {
                ended = true;
                i += 1;
            }
            // `(`: a call or syntax; `-` and `/`: maybe a comment; quotes, dots, `$tag$`, `?`,
            // anything else: the full classifier.
            _ => return None,
        }
    }
    Some(Verdict {
        class: if write { Class::Write } else { Class::Read },
        statements: 1,
        writes: write,
        ..Verdict::EMPTY
    })
}

/// Whether the word at `sql[from..to]`, after the first, leaves the verdict as it is: in a
/// query, it is not one of the words the full classifier looks at (those starting `i u d m s l`:
/// `INTO`, `FOR UPDATE`, `FOR SHARE`, `LOCK IN SHARE MODE`, a data-modifying word,
/// `serializable`) and not a relation that answers for the session (`pg_stat_*`, ...); in a
/// write, it is not `serializable`.
fn plain_word(sql: &str, from: usize, to: usize, write: bool) -> bool {
    let word = sql.as_bytes().get(from..to).unwrap_or_default();
    if write {
        return !word.eq_ignore_ascii_case(b"serializable");
    }
    let first = word.first().map_or(0, |c| c | 0x20);
    if matches!(first, b'i' | b'u' | b'd' | b'm' | b's' | b'l') {
        return false;
    }
    // The word is ASCII, so its bounds are character boundaries.
    first != b'p' || !sql.get(from..to).is_some_and(|w| starts_with_pg(w) && functions::is_local_relation(w))
}

fn skip_space(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|&c| in_class(c, WS)) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::super::{classify_with, lexer::Lexer};
    use super::*;
    use proptest::prelude::*;

    fn full(sql: &str) -> Verdict {
        classify_with(Lexer::new(sql), false, &[])
    }

    #[test]
    fn the_common_statements_are_decided_and_agree() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
            "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;",
            "  select a, b from t where c >= 10 and c2 <> $2  ;  ",
            "DELETE FROM t WHERE id = 3",
            "select",
            "SELECT 1",
        ] {
            let v = quick_pg(sql);
            assert!(v.is_some(), "{sql} not decided");
            assert_eq!(v, Some(full(sql)), "{sql}");
        }
    }

    #[test]
    fn anything_else_goes_to_the_full_classifier() {
        for sql in [
            "select nextval('s')",
            "select * from t for update",
            "select * into t2 from t",
            "select * from pg_stat_activity",
            "select 1; delete from t",
            "select 1 -- x",
            "select /* x */ 1",
            "select a.b from a",
            "select 'x'",
            "select \"x\" from t",
            "select $$x$$",
            "select1 from t",
            "with x as (select 1) select * from x",
            "insert into t (a) values (1)",
            "update t set a = 1 where b in (select c from d)",
            "update t set isolation = serializable",
            "select sélect from t",
            "set x = 1",
            "",
        ] {
            assert_eq!(quick_pg(sql), None, "{sql} decided by the shortcut");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5000))]

        /// Where the shortcut answers, the full classifier answers the same, for SQL-shaped text
        /// built from the words and bytes that matter.
        #[test]
        fn the_shortcut_agrees_with_the_full_classifier(
            lead in prop::sample::select(vec!["select", "SELECT", "update", "insert", "delete", "with", "set", " select"]),
            words in prop::collection::vec(prop::sample::select(vec![
                "a", "from", "t", "where", "for", "update", "share", "into", "temp", "lock", "mode",
                "pg_stat_activity", "pg_class", "pgbench_accounts", "serializable", "nextval", "$1",
                "1", "1.5", "=", "+", "-", "--", "/*", "*/", "(", ")", ";", ".", ",", "'", "\"", "$$",
                "?", "::", "e'x'", "\n", "é", "select", "delete", "insert", "merge", "local",
            ]), 0..12),
        ) {
            let sql = format!("{lead} {}", words.join(" "));
            if let Some(v) = quick_pg(&sql) {
                prop_assert_eq!(v, full(&sql), "{}", sql);
            }
            let glued = format!("{lead} {}", words.concat());
            if let Some(v) = quick_pg(&glued) {
                prop_assert_eq!(v, full(&glued), "{}", glued);
            }
        }
    }
}
