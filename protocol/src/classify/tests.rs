//! The classifier's table: every pitfall of routing (README, "Routing"), and the lexer traps
//! (comments, quotes, dollar quotes) that fool naive splitters.

use super::*;

/// Expected routing: R = provably a read (replica), P = primary but not refused in a read-only
/// session, W = known write (refused in a read-only session), T = transaction control,
/// S = session state, M = several statements.
fn check(sql: &str, want: char) {
    let v = classify_pg(sql);
    let got = match v.class {
        Class::Read if v.pin.is_none() && !v.writes => 'R',
        Class::Multi => 'M',
        _ if v.writes => 'W',
        Class::Tx(_) => 'T',
        Class::Session => 'S',
        Class::Empty => 'E',
        _ => 'P',
    };
    assert_eq!(got, want, "{sql:?} classified as {v:?}");
}

#[test]
fn reads() {
    for sql in [
        "select 1",
        "SELECT * FROM users WHERE id = $1",
        "  select count(*) from t",
        "(select 1) union (select 2)",
        "with x as (select 1) select * from x",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n+1 FROM r WHERE n < 5) SELECT * FROM r",
        "values (1), (2)",
        "table users",
        "show search_path",
        "SHOW ALL",
        "explain select * from t",
        "EXPLAIN (ANALYZE, BUFFERS) SELECT 1",
        "explain analyze select * from t",
        "select now(), current_timestamp, pg_catalog.now()",
        "select * from t where name = 'insert into x'",
        "select * from t where name = $$ delete from t $$",
        "select /* update t set x = 1 */ 1",
        "select 1 -- ; drop table t",
        "select 'a;b'",
        "select E'it\\'s; delete'",
        "select \"update\" from t",
        "select coalesce(a, b), nullif(a, b) from t",
        "select * from t where exists (select 1 from u)",
        "select * from t where id in (1, 2, 3)",
        "select x::varchar(10) from t",
        "select cast(x as numeric(10,2)) from t",
        "select row_number() over (partition by a order by b) from t",
        "select count(*) filter (where a > 1) from t",
        "select * from generate_series(1, 10) as g(n)",
        "select * from t as a(x, y)",
        "select pg_is_in_recovery()",
        "select string_agg(name, ',') from t group by k",
        "select jsonb_build_object('a', 1)",
        "select * from t limit 10 offset 5",
        "select * from t order by a desc nulls last",
        "select lower(upper(name)) from t",
        "select 1;",
        ";select 1;;",
        "select * from t for_update_col",
        "select pg_sleep(0.1)",
        "select a.update from t a",
        "select date_trunc('day', now())",
        "select * from t1 join t2 on (t1.id = t2.id)",
        "select * from t where a = any(array[1,2])",
        "select current_setting('transaction_isolation')",
        "select version()",
        "SELECT U&'\\0041'",
        "select $1::int",
        "select 1 from t tablesample system (10)",
        "SELECT DISTINCT ON (a) a, b FROM t ORDER BY a, b",
        "select a, count(*) from t group by rollup (a)",
        "select * from t where a between 1 and 10",
        "select * from t where name like 'a%' or name ilike 'B%'",
        "select * from t where a is not null and b is distinct from c",
        "select array[1,2,3] || array[4]",
        "select t.* from t natural join u",
        "select * from t left join lateral (select * from u where u.id = t.id) x on true",
        "select coalesce(sum(a), 0) from t having count(*) > 1",
        "select extract(epoch from now())",
        "select substring('abc' from 1 for 2)",
        "select position('b' in 'abc')",
        "select trim(both ' ' from name) from t",
        "select x from t where a = any(select b from u)",
        "select exists(select 1)",
        "select 'a' || 'b' as ab",
        "select * from t order by random() limit 1",
        "select json_agg(t) from t",
        "select a::text, b::int8 from t",
        "with a as (select 1), b as (select 2) select * from a, b",
        "SELECT * FROM \"Users\" WHERE \"Name\" = 'x'",
        "select * from public.t",
        "select t.a from s.t as t",
        "select 1 union all select 2 except select 3",
        "values (1, 'a'), (2, 'b') order by 1",
        "show transaction_isolation",
        "explain verbose select * from t",
        "explain (costs off) select 1",
        "select now() at time zone 'utc'",
        "select interval '1 day' + now()",
        "select case when a > 1 then 'x' else 'y' end from t",
        "select greatest(1, 2), least(3, 4)",
        "select count(distinct a) from t",
        "select percentile_cont(0.5) within group (order by a) from t",
        "select * from t fetch first 10 rows only",
        "select * from t window w as (partition by a)",
        "select $$it's$$",
        "select /* nested /* comment */ still */ 1",
        "select 1 -- trailing comment",
    ] {
        check(sql, 'R');
    }
}

#[test]
fn primary_not_refused() {
    for sql in [
        "select nextval('s')",
        "select currval('s')",
        "select lastval()",
        "SELECT txid_current()",
        "select pg_notify('c', 'x')",
        "select my_function(1)",
        "select public.lower('x')",
        "select myschema.f()",
        "select * from t for update",
        "select * from t for share",
        "select * from t for no key update",
        "select * from t for key share",
        "select * from t FOR UPDATE SKIP LOCKED",
        "select * from t where id = 1 for update of t nowait",
        "select pg_advisory_lock(1)",
        "select pg_try_advisory_lock(1)",
        "select pg_advisory_unlock(1)",
        "select pg_advisory_xact_lock(1)",
        "select pg_current_wal_lsn()",
        "call proc()",
        "do $$ begin perform 1; end $$",
        "notify c, 'x'",
        "lock table t in access exclusive mode",
        "explain insert into t values (1)",
        "explain update t set a = 1",
        "copy t to stdout",
        "copy (select 1) to stdout",
        "checkpoint",
        "fetch 10 from c",
        "declare c cursor for select 1",
        "select 'unterminated",
        "select /* unterminated",
        "select $a$ unterminated",
        "frobnicate the database",
        "@@@",
        "select dblink_exec('x')",
        "select set_config('search_path', 'x', false)",
        "select * from t where f(a) > 1",
        "select * from t where a = 1 for update",
        "listen channel",
        "select setval('s', 10)",
        "SELECT nextval('public.items_id_seq'::regclass)",
        "select * from t where id = (select nextval('s'))",
        "select pg_advisory_lock_shared(1)",
        "select pg_try_advisory_xact_lock(1)",
        "select txid_current_if_assigned()",
        "select pg_current_xact_id()",
        "select pg_terminate_backend(123)",
        "select pg_cancel_backend(123)",
        "select pg_reload_conf()",
        "select lo_import('/tmp/x')",
        "select * from t where a = my_schema.my_fn(1)",
        "select * from dblink('x', 'select 1') as t(a int)",
        "select a from t for update of t skip locked",
        "execute p(1)",
        "move next in c",
        "close c",
        "load 'auto_explain'",
        "reindex index i",
    ] {
        let want = if sql.starts_with("listen") {
            'S'
        } else if sql.starts_with("reindex") {
            'W'
        } else {
            'P'
        };
        check(sql, want);
    }
}

#[test]
fn writes() {
    for sql in [
        "insert into t values (1)",
        "INSERT INTO t SELECT * FROM u",
        "update t set a = 1",
        "delete from t",
        "merge into t using u on t.id = u.id when matched then delete",
        "create table t (a int)",
        "create temp table t (a int)",
        "CREATE TEMPORARY TABLE t AS SELECT 1",
        "create index on t (a)",
        "drop table t",
        "alter table t add column b int",
        "truncate t",
        "grant select on t to u",
        "revoke select on t from u",
        "comment on table t is 'x'",
        "vacuum t",
        "analyze t",
        "cluster t",
        "reindex table t",
        "refresh materialized view v",
        "copy t from stdin",
        "copy t (a, b) from '/tmp/x'",
        "select * into newtable from t",
        "select a into temp t2 from t",
        "with d as (delete from t returning *) select * from d",
        "with u as (update t set a = 1 returning *) select * from u",
        "with i as (insert into t values (1) returning id) select id from i",
        "explain analyze insert into t values (1)",
        "explain (analyze) delete from t",
        "EXPLAIN ANALYZE UPDATE t SET a = 1",
        "/* c */ insert into t values (1)",
        "-- comment\ninsert into t values (1)",
        "  \n\tINSERT into t values (1)",
        "create function f() returns int as $$ select 1 $$ language sql",
        "security label on table t is 'x'",
        "reassign owned by a to b",
        "import foreign schema s from server x into y",
        "set default_transaction_read_only = off",
        "SET default_transaction_read_only TO false",
        "set session default_transaction_read_only = 'off'",
        "set transaction_read_only = 0",
        "set \"default_transaction_read_only\" = off",
        "set default_transaction_read_only to default",
        "set session characteristics as transaction read write",
        "set transaction read write",
        "begin read write",
        "begin isolation level serializable read write",
        "start transaction read write",
        "select set_config('default_transaction_read_only', 'off', false)",
        "select set_config('transaction_read_only', 'off', true)",
        "insert into t default values",
        "INSERT INTO t (a) VALUES (1) ON CONFLICT (a) DO UPDATE SET a = excluded.a",
        "update t set a = a + 1 where id in (select id from u)",
        "delete from t using u where t.id = u.id",
        "create view v as select 1",
        "create materialized view mv as select 1",
        "create schema s",
        "create sequence s",
        "create extension pgcrypto",
        "drop index i",
        "alter sequence s restart",
        "alter role r password 'x'",
        "create role r",
        "truncate table a, b cascade",
        "with x as (select 1) insert into t select * from x",
        "with x as (select 1) update t set a = 1",
        "with x as (select 1) delete from t",
        "/*+ hint */ delete from t",
        "explain analyse delete from t",
        "select * into unlogged t2 from t",
        "grant all on all tables in schema public to r",
    ] {
        check(sql, 'W');
    }
}

#[test]
fn transaction_control_and_session_state() {
    for (sql, want) in [
        ("begin", 'T'),
        ("BEGIN READ ONLY", 'T'),
        ("start transaction read only", 'T'),
        ("start transaction isolation level serializable", 'T'),
        ("commit", 'T'),
        ("end", 'T'),
        ("rollback", 'T'),
        ("abort", 'T'),
        ("savepoint a", 'T'),
        ("release savepoint a", 'T'),
        ("rollback to savepoint a", 'T'),
        ("set transaction read only", 'T'),
        ("set transaction isolation level serializable", 'T'),
        ("set session characteristics as transaction read only", 'S'),
        ("set search_path = a, b", 'S'),
        ("SET statement_timeout TO 1000", 'S'),
        ("set local work_mem = '64MB'", 'S'),
        ("set default_transaction_read_only = on", 'S'),
        ("set time zone 'UTC'", 'S'),
        ("reset all", 'S'),
        ("reset search_path", 'S'),
        ("discard all", 'S'),
        ("prepare p as select 1", 'S'),
        ("deallocate p", 'S'),
        ("deallocate all", 'S'),
        ("unlisten *", 'S'),
        ("", 'E'),
        ("  -- only a comment", 'E'),
        (";;", 'E'),
    ] {
        check(sql, want);
    }
}

#[test]
fn multi_statement_strings() {
    check("select 1; select 2", 'M');
    check("begin; select 1; commit", 'M');
    let v = classify_pg("select 1; insert into t values (1)");
    assert_eq!(v.class, Class::Multi);
    assert!(v.writes, "a write anywhere in the string is refused in read-only sessions");
    assert_eq!(v.statements, 2);
    check("select ';'; ", 'R');
    let v = classify_pg("(select 1) ; delete from t");
    assert_eq!((v.class, v.writes), (Class::Multi, true));
    check("select $$;$$", 'R');
}

#[test]
fn transaction_options_are_read() {
    let opts = |sql| match classify_pg(sql).class {
        Class::Tx(TxControl::Begin(o) | TxControl::SetTransaction(o)) => o,
        c => panic!("{sql}: {c:?}"),
    };
    assert_eq!(opts("begin read only").read_only, Some(true));
    assert_eq!(opts("begin transaction isolation level serializable, read only").read_only, Some(true));
    assert!(opts("begin isolation level serializable").serializable);
    assert_eq!(opts("begin").read_only, None);
    assert!(opts("set transaction isolation level serializable").serializable);
}

#[test]
fn pins() {
    let pin = |sql| classify_pg(sql).pin;
    assert_eq!(pin("create temp table t (a int)"), Some(Pin::TempTable));
    assert_eq!(pin("CREATE TEMPORARY TABLE t (a int)"), Some(Pin::TempTable));
    assert_eq!(pin("select pg_advisory_lock(1)"), Some(Pin::AdvisoryLock));
    assert_eq!(pin("listen c"), Some(Pin::Listen));
    assert_eq!(pin("lock table t"), Some(Pin::Lock));
    assert_eq!(pin("create table t (a int)"), None);
}

#[test]
fn statements_that_may_release_a_pin() {
    for sql in [
        "select pg_advisory_unlock(1)",
        "SELECT pg_catalog.PG_ADVISORY_UNLOCK_ALL()",
        "select pg_advisory_unlock_shared(1, 2)",
        "select pg_try_advisory_lock(1)",
        "UNLISTEN *",
        "unlisten c",
        "CLOSE ALL",
        "close c",
        "DISCARD TEMP",
        "drop table scratch",
        "select 1; select pg_advisory_unlock(7)",
    ] {
        assert!(classify_pg(sql).releases, "{sql}");
    }
    for sql in
        ["select pg_advisory_lock(1)", "listen c", "select 1", "insert into t values (1)", "select closed from t"]
    {
        assert!(!classify_pg(sql).releases, "{sql}");
    }
    let m = |sql| classify_mysql_with(sql, &[]);
    for sql in ["SELECT RELEASE_LOCK('x')", "select release_all_locks()", "UNLOCK TABLES", "DROP TEMPORARY TABLE t"] {
        assert!(m(sql).releases, "{sql}");
    }
    assert!(!m("SELECT GET_LOCK('x', 1)").releases);
}

#[test]
fn session_and_serializable_flags() {
    assert!(classify_pg("set search_path = a").session);
    assert!(classify_pg("select 1; set search_path = a").session);
    assert!(!classify_pg("select 1").session);
    assert!(classify_pg("set default_transaction_isolation = 'serializable'").serializable);
    assert!(classify_pg("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE").serializable);
    assert!(classify_pg("begin isolation level serializable").serializable);
    assert!(!classify_pg("begin isolation level repeatable read").serializable);
}

#[test]
fn mysql_dialect() {
    let m = |sql| classify_mysql_with(sql, &[]);
    for sql in [
        "SELECT * FROM `users` WHERE `id` = ?",
        "select * from t # trailing\n",
        "select 'it\\'s; delete' from t",
        "SELECT @v",
        "select ifnull(a, 0), date_format(now(), '%Y') from t",
        "SHOW TABLES",
        "DESCRIBE t",
        "select @@version",
    ] {
        assert!(m(sql).is_read(), "{sql}: {:?}", m(sql));
    }
    for sql in [
        "SELECT * FROM t LOCK IN SHARE MODE",
        "SELECT * FROM t FOR UPDATE",
        "SELECT LAST_INSERT_ID()",
        "SELECT @@identity",
        "select @@last_insert_id",
        "SELECT FOUND_ROWS()",
        "SELECT GET_LOCK('x', 1)",
        "SELECT /*!40001 SQL_NO_CACHE */ * FROM t",
        "/*M!100100 select 1 */",
        "SELECT a INTO @v FROM t",
        "select 1; select 2",
    ] {
        assert!(!m(sql).is_read(), "{sql} must go to the primary");
    }
    assert_eq!(m("SELECT GET_LOCK('x', 1)").pin, Some(Pin::AdvisoryLock));
    assert_eq!(m("LOCK TABLES t READ").pin, Some(Pin::Lock));
    assert_eq!(m("USE app").class, Class::Session);
    assert_eq!(m("SET NAMES utf8mb4").class, Class::Session);
    assert_eq!(m("SET @v = 1").class, Class::Session);
    assert!(m("INSERT INTO t VALUES (1) ON DUPLICATE KEY UPDATE a = 1").writes);
    assert!(m("REPLACE INTO t VALUES (1)").writes);
    assert!(matches!(
        m("START TRANSACTION READ ONLY").class,
        Class::Tx(TxControl::Begin(TxOptions { read_only: Some(true), .. }))
    ));
}

#[test]
fn config_extends_the_read_only_list() {
    let extra = vec!["my_pure_fn".to_owned()];
    assert!(classify_pg_with("select my_pure_fn(1)", &extra).is_read());
    assert!(!classify_pg("select my_pure_fn(1)").is_read());
}

#[test]
fn session_and_server_local_state_stays_with_the_session() {
    for sql in [
        "select * from pg_cursors",
        "SELECT name FROM PG_PREPARED_STATEMENTS",
        "select * from pg_catalog.pg_stat_wal_receiver",
        "select count(*) from pg_stat_activity where pid = 1",
        "select * from pg_locks",
        "select * from pg_temp.t",
        "select pg_backend_pid()",
    ] {
        check(sql, 'P');
    }
    check("select * from pg_class", 'R');
    check("select * from pgbench_accounts where aid = 1", 'R');
    assert_eq!(classify_pg("select * into temp t from x").pin, Some(Pin::TempTable));
    assert_eq!(classify_pg("SELECT 1 INTO TEMPORARY TABLE t").pin, Some(Pin::TempTable));
    assert_eq!(classify_pg("declare c cursor with hold for select 1").pin, Some(Pin::Cursor));
    assert_eq!(classify_pg("declare c cursor for select 1").pin, None);
    let characteristics = classify_pg("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ");
    assert_eq!(characteristics.class, Class::Session);
    let mysql = classify_mysql_with("SET SESSION TRANSACTION READ ONLY", &[]);
    assert_eq!((mysql.class, mysql.session_read_only), (Class::Session, Some(true)));
    assert!(matches!(classify_mysql_with("SET TRANSACTION READ ONLY", &[]).class, Class::Tx(_)));
    assert!(matches!(classify_mysql_with("SET GLOBAL TRANSACTION READ ONLY", &[]).class, Class::Tx(_)));
    for sql in [
        "SHOW WARNINGS",
        "show count(*) errors",
        "SHOW GLOBAL STATUS LIKE 'aborted%'",
        "SHOW FULL PROCESSLIST",
        "SHOW SLAVE STATUS",
        "SHOW VARIABLES LIKE 'read_only'",
        "SELECT VARIABLE_VALUE FROM INFORMATION_SCHEMA.GLOBAL_STATUS WHERE VARIABLE_NAME = 'x'",
        "SELECT * FROM performance_schema.threads",
        "SELECT @@warning_count",
    ] {
        assert!(!classify_mysql_with(sql, &[]).is_read(), "{sql}: the session's own connection answers");
    }
    for sql in ["SHOW WARNINGS", "show count(*) errors", "SELECT @@warning_count"] {
        assert!(classify_mysql_with(sql, &[]).about_last_statement, "{sql}");
    }
    assert!(!classify_mysql_with("SHOW STATUS", &[]).about_last_statement);
    for sql in ["SHOW TABLES", "SHOW CREATE TABLE t", "SHOW COLUMNS FROM t", "SELECT status, open FROM orders"] {
        assert!(classify_mysql_with(sql, &[]).is_read(), "{sql}");
    }
    // set_config is replayable session state when it is all a statement does.
    assert!(classify_pg("SELECT set_config('search_path', 'x', false)").sets_config_only);
    assert!(classify_pg("select pg_catalog.set_config('a', 'b', false), lower('x')").sets_config_only);
    for sql in [
        "select set_config('a', 'b', false), nextval('s')",
        "select set_config('a', 'b', false); select 1",
        "select set_config('a', 'b', false) from t for update",
        "select x.set_config('a', 'b', false)",
        "select set_config('app.tenant', $1, false)",
    ] {
        assert!(!classify_pg(sql).sets_config_only, "{sql}");
    }
}

#[test]
fn every_spelling_of_a_function_is_that_function() {
    for sql in [
        "select \"nextval\"('s')",
        "select pg_catalog.\"nextval\"('s')",
        "select \"pg_catalog\".\"nextval\"('s')",
        "select U&\"n\\0065xtval\"('s')",
        "select PG_CATALOG . NEXTVAL('s')",
        "select \"NEXTVAL\"('s')",
        "select public.lower('s')",
        "select \"PG_CATALOG\".lower('s')",
        "select U&\"l\\0077er\" UESCAPE '!' ('s')",
        "select x.y.nextval('s')",
        "select (1).lower('s')",
    ] {
        check(sql, 'P');
    }
    for sql in [
        "select \"lower\"('S')",
        "select pg_catalog.\"lower\"('S')",
        "select \"pg_catalog\".lower('S')",
        "select U&\"l\\006Fwer\"('S')",
        "select PG_CATALOG.LOWER('S')",
        "with \"t\"(a) as (select 1) select * from \"t\"",
    ] {
        check(sql, 'R');
    }
    assert_eq!(classify_pg("select \"pg_advisory_lock\"(1)").pin, Some(Pin::AdvisoryLock));
    // `recursive` is not reserved: a schema of that name is no `WITH RECURSIVE name(col)`.
    check("select recursive.nextval('s')", 'P');
    for sql in ["SET myapp.tenant = 1", "set local a.b to 'x'", "RESET a.b", "select set_config('a.b', 'x', false)"] {
        assert!(classify_pg(sql).custom_setting, "{sql}");
    }
    for sql in ["SET search_path = a", "SET x = 1.5", "select 'set_config(' from t", "select t.a from t"] {
        assert!(!classify_pg(sql).custom_setting, "{sql}");
    }
    let m = |sql| classify_mysql_with(sql, &[]);
    for sql in ["SELECT `GET_LOCK`('x', 1)", "SELECT \"get_lock\"('x', 1)", "SELECT `Get_Lock` ('x', 1)"] {
        assert!(!m(sql).is_read(), "{sql}");
        assert_eq!(m(sql).pin, Some(Pin::AdvisoryLock), "{sql}");
    }
    for sql in
        ["SELECT `app`.`lower`('x')", "SELECT app.lower('x')", "SELECT @@session.identity", "SELECT @@`identity`"]
    {
        assert!(!m(sql).is_read(), "{sql}: a stored function or the primary's state");
    }
    for sql in ["SELECT `LOWER`('x')", "SELECT \"lower\"('x')", "SELECT `ifnull`(a, 0) FROM `t`"] {
        assert!(m(sql).is_read(), "{sql}");
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Functions the built-in list holds, and functions it must not (sequences, locks, ids).
    const READ_ONLY: [&str; 6] = ["lower", "abs", "length", "md5", "now", "upper"];
    const NOT_READ_ONLY: [&str; 7] =
        ["nextval", "setval", "pg_advisory_lock", "txid_current", "pg_notify", "get_lock", "last_insert_id"];

    /// A PostgreSQL spelling of lower-case `name` that the server reads as that same name.
    fn pg_spelling(name: &str, how: u8, escape_mask: u64) -> String {
        let escaped: String = name
            .chars()
            .enumerate()
            .map(
                |(i, c)| {
                    if (escape_mask >> (i % 64)) & 1 == 1 {
                        format!("\\{:04X}", u32::from(c))
                    } else {
                        c.to_string()
                    }
                },
            )
            .collect();
        match how % 8 {
            0 => name.to_owned(),
            1 => name.to_ascii_uppercase(),
            2 => format!("\"{name}\""),
            3 => format!("pg_catalog.{name}"),
            4 => format!("PG_CATALOG.\"{name}\""),
            5 => format!("\"pg_catalog\" . {}", name.to_ascii_uppercase()),
            6 => format!("U&\"{escaped}\""),
            _ => format!("pg_catalog.U&\"{escaped}\""),
        }
    }

    /// A MySQL spelling of `name` that the server reads as that same function.
    fn mysql_spelling(name: &str, how: u8) -> String {
        match how % 4 {
            0 => name.to_owned(),
            1 => name.to_ascii_uppercase(),
            2 => format!("`{}`", name.to_ascii_uppercase()),
            _ => format!("\"{name}\""),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Nothing a client sends can panic the classifier, in either dialect.
        #[test]
        fn arbitrary_text_never_panics(sql in any::<String>()) {
            let _ = classify_pg(&sql);
            let _ = lexer::Lexer::mysql(&sql).count();
        }

        /// SQL-shaped junk (quotes, comments, dollar signs, keywords) never panics either.
        #[test]
        fn sql_shaped_junk_never_panics(sql in "[sSeElLcCtTiInNrR ;'\"$()/*\n\\.,:?@#`0-9-]{0,60}") {
            let _ = classify_pg(&sql);
        }

        /// Whatever a read-only-looking prefix says, a write after a semicolon is seen.
        #[test]
        fn a_write_after_a_semicolon_is_never_a_read(prefix in "[a-z0-9 ,()*]{0,30}") {
            let v = classify_pg(&format!("select {prefix}; delete from t"));
            prop_assert!(!v.is_read());
        }

        /// A comment before a write hides nothing.
        #[test]
        fn a_comment_never_hides_a_write(comment in "[a-z0-9 ;'\"$]{0,30}") {
            let v = classify_pg(&format!("/* {comment} */ insert into t values (1)"));
            prop_assert!(v.writes, "{:?}", v);
        }

        /// Every spelling of a function gets the verdict of its plain spelling: a read stays a
        /// read, and no spelling turns a sequence, lock or id function into one.
        #[test]
        fn every_spelling_gets_the_plain_verdict(
            pick in 0usize..13, how in any::<u8>(), mask in any::<u64>(), arg in "[a-z0-9 ]{0,8}"
        ) {
            let name = READ_ONLY.iter().chain(NOT_READ_ONLY.iter()).nth(pick).copied().unwrap_or("lower");
            let plain = classify_pg(&format!("select {name}('{arg}') from t"));
            let spelled_sql = format!("select {}('{arg}') from t", pg_spelling(name, how, mask));
            let spelled = classify_pg(&spelled_sql);
            prop_assert_eq!(plain.is_read(), spelled.is_read(), "{}", spelled_sql);
            prop_assert_eq!(plain.pin, spelled.pin, "{}", spelled_sql);
            if NOT_READ_ONLY.contains(&name) {
                prop_assert!(!spelled.is_read(), "{}", spelled_sql);
            }
            let plain = classify_mysql_with(&format!("select {name}('{arg}') from t"), &[]);
            let spelled_sql = format!("select {}('{arg}') from t", mysql_spelling(name, how));
            let spelled = classify_mysql_with(&spelled_sql, &[]);
            prop_assert_eq!(plain.is_read(), spelled.is_read(), "{}", spelled_sql);
            prop_assert_eq!(plain.pin, spelled.pin, "{}", spelled_sql);
        }

        /// A name in any schema other than pg_catalog is some other function: never a read.
        #[test]
        fn another_schema_is_never_a_built_in(schema in "[a-z_]{1,12}", pick in 0usize..6) {
            prop_assume!(schema != "pg_catalog");
            let name = READ_ONLY[pick];
            for sql in [format!("select {schema}.{name}(1)"), format!("select \"{schema}\".\"{name}\"(1)")] {
                prop_assert!(!classify_pg(&sql).is_read(), "{}", sql);
            }
            let sql = format!("select `{schema}`.`{name}`(1)");
            prop_assert!(!classify_mysql_with(&sql, &[]).is_read(), "{}", sql);
        }

        /// Text inside a string literal never changes a read into something else.
        #[test]
        fn string_contents_are_inert(body in "[a-z0-9 ;()]{0,30}") {
            let v = classify_pg(&format!("select '{body}' as x"));
            prop_assert!(v.is_read(), "{:?}", v);
        }
    }
}

/// `current_setting(x)` reads on a replica only when the name is a literal whose value does
/// not depend on the server's role.
#[test]
fn current_setting_of_a_parameter_or_a_role_setting_goes_to_the_primary() {
    assert!(classify_pg("select current_setting('search_path')").is_read());
    assert!(classify_pg("select current_setting('TimeZone', true)").is_read());
    assert!(!classify_pg("select current_setting($1)").is_read());
    assert!(!classify_pg("select current_setting(name) from t").is_read());
    assert!(!classify_pg("select current_setting('transaction_read_only')").is_read());
    assert!(!classify_pg("select pg_catalog.current_setting('in_hot_standby')").is_read());
    assert!(classify_pg("select lower($1)").is_read(), "other calls with parameters are reads");
}

/// MySQL/MariaDB builtins that only compute (issue 31's misses: `RAND()` and `SLEEP()` sent
/// reads to the primary and made the session count as having written) are reads; the
/// connection-local ones stay with the session's connection.
#[test]
fn mysql_builtins_that_only_compute_are_reads() {
    for sql in [
        "SELECT GROUP_CONCAT(name ORDER BY name SEPARATOR ',') FROM t",
        "SELECT FLOOR(RAND() * 10)",
        "SELECT SLEEP(2)",
        "SELECT SUBSTRING_INDEX(email, '@', -1), FIND_IN_SET('a', tags) FROM t",
        "SELECT JSON_LENGTH(doc), JSON_KEYS(doc), JSON_VALUE(doc, '$.a') FROM t",
        "SELECT TIMESTAMPADD(DAY, 1, d), DAYNAME(d), TIMEDIFF(a, b), SEC_TO_TIME(3600)",
        "SELECT JSON_ARRAYAGG(id), STD(x), BIT_XOR(flags) FROM t",
    ] {
        assert!(classify_mysql_with(sql, &[]).is_read(), "{sql}");
    }
    for sql in ["SELECT LAST_INSERT_ID()", "SELECT FOUND_ROWS()"] {
        assert!(!classify_mysql_with(sql, &[]).is_read(), "{sql} stays with the session's connection");
    }
    // Words that name a function here and a statement elsewhere stay writes as statements.
    for sql in ["TRUNCATE t", "TRUNCATE TABLE t", "INSERT INTO t VALUES (1)"] {
        assert!(!classify_mysql_with(sql, &[]).is_read(), "{sql}");
        assert!(!classify_pg(sql).is_read(), "{sql}");
    }
}

/// PostgreSQL's SQL/JSON path functions and the json_* twins of the jsonb ones (issue 31:
/// `jsonb_path_query_array` was a miss) are reads.
#[test]
fn postgres_json_functions_are_reads() {
    for sql in [
        "SELECT jsonb_path_query_array(doc, '$.tags[*]') FROM t",
        "SELECT jsonb_path_query_first(doc, '$.a'), jsonb_path_match(doc, 'exists($.b)') FROM t",
        "SELECT * FROM jsonb_to_recordset('[{\"a\":1}]') AS x(a int)",
        "SELECT json_agg_strict(x), jsonb_set_lax(doc, '{a}', NULL) FROM t",
    ] {
        assert!(classify_pg(sql).is_read(), "{sql}");
    }
}

/// Every built-in of the servers' own lists (`builtins/*.txt`) is routed as a read when a
/// `SELECT` calls it; every function with side effects, or that answers for the connection it
/// runs on, is not. (`pg_is_in_recovery()` and `pg_sleep()` are reads by choice, in the
/// reviewed list: they change nothing, and the first shows a client which server answered.)
#[test]
fn the_servers_builtins_are_reads_and_side_effects_are_not() {
    let mut not_read = Vec::new();
    for name in functions::builtins(false) {
        if !classify_pg(&format!("SELECT {name}(1)")).is_read() {
            not_read.push(format!("postgres {name}"));
        }
    }
    for name in functions::builtins(true) {
        if !classify_mysql_with(&format!("SELECT {name}(1)"), &[]).is_read() {
            not_read.push(format!("mariadb {name}"));
        }
    }
    assert!(not_read.is_empty(), "listed but not read: {not_read:?}");
    let pg_effects = [
        "nextval('s')",
        "setval('s', 1)",
        "pg_advisory_lock(1)",
        "pg_advisory_xact_lock(1)",
        "pg_try_advisory_lock(1)",
        "set_config('a.b', 'c', false)",
        "pg_notify('c', 'x')",
        "txid_current()",
        "pg_current_wal_lsn()",
        "pg_backend_pid()",
        "lo_unlink(1)",
        "pg_terminate_backend(1)",
        "pg_listening_channels()",
        "currval('s')",
        "lastval()",
    ];
    for call in pg_effects {
        assert!(!classify_pg(&format!("SELECT {call}")).is_read(), "postgres {call}");
    }
    let my_effects = [
        "GET_LOCK('x', 1)",
        "RELEASE_LOCK('x')",
        "RELEASE_ALL_LOCKS()",
        "IS_USED_LOCK('x')",
        "LAST_INSERT_ID(5)",
        "LAST_INSERT_ID()",
        "FOUND_ROWS()",
        "ROW_COUNT()",
        "CONNECTION_ID()",
        "NEXTVAL(s)",
        "SETVAL(s, 1)",
        "LASTVAL(s)",
        "MASTER_GTID_WAIT('0-1-1')",
        "LOAD_FILE('/etc/passwd')",
        "BENCHMARK(10, 1)",
    ];
    for call in my_effects {
        assert!(!classify_mysql_with(&format!("SELECT {call}"), &[]).is_read(), "mariadb {call}");
    }
    // What the issue found: MariaDB's own functions are reads now.
    for sql in
        ["SELECT SLEEP(0)", "SELECT RAND()", "SELECT GROUP_CONCAT(note) FROM items", "SELECT SLEEP(2), @@read_only"]
    {
        assert!(classify_mysql_with(sql, &[]).is_read(), "{sql}");
    }
}
