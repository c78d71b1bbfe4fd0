//! The fault loop's clients: each one session through sqlswitch (a new one after any error, as
//! applications reconnect), doing autocommit inserts followed by a read of the session's own
//! write, two-statement transactions with think time between the statements, serializable
//! list-append transactions and multi-key reads (for [`super::elle`]). Every
//! operation is recorded with its outcome as the client can know it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

use super::history::{Kind, Mop, Op, Outcome};
use super::Protocol;

/// How long one statement may take before the client gives up on it (and its outcome is
/// unknown): above [`super::checker::PENDING_BOUND_MS`], so that a hang is seen as one.
const STATEMENT_LIMIT: Duration = Duration::from_secs(60);

/// One client session.
enum Session {
    Pg(tokio_postgres::Client),
    My(mysql_async::Conn),
}

impl Session {
    async fn open(protocol: Protocol, port: u16, (user, password): (&str, &str)) -> Result<Self, String> {
        match protocol {
            Protocol::Postgres => {
                let s = format!(
                    "host=127.0.0.1 port={port} user={user} password={password} dbname={} connect_timeout=10",
                    crate::pg::DATABASE
                );
                crate::client::connect_str(&s).await.map(Session::Pg).map_err(|e| e.to_string())
            }
            Protocol::Mysql => {
                let url = crate::proxy::mysql_url(port, (user, password));
                let opts = mysql_async::Opts::from_url(&url).map_err(|e| e.to_string())?;
                let mut c = mysql_async::Conn::new(opts).await.map_err(|e| e.to_string())?;
                // Session state sqlswitch must carry to every server connection of the session
                // (the list-append transactions are checked for what serializable forbids).
                c.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Session::My(c))
            }
        }
    }

    async fn exec(&mut self, sql: &str) -> Result<(), String> {
        let run = async {
            match self {
                Session::Pg(c) => c.batch_execute(sql).await.map_err(|e| pg_error(&e)),
                Session::My(c) => c.query_drop(sql).await.map_err(|e| e.to_string()),
            }
        };
        tokio::time::timeout(STATEMENT_LIMIT, run).await.unwrap_or_else(|_| Err("no answer in time".into()))
    }

    async fn count(&mut self, sql: &str) -> Result<i64, String> {
        let run = async {
            match self {
                Session::Pg(c) => c.query_one(sql, &[]).await.map(|r| r.get::<_, i64>(0)).map_err(|e| pg_error(&e)),
                Session::My(c) => c
                    .query_first::<i64, _>(sql)
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|v| v.ok_or_else(|| "no row".to_owned())),
            }
        };
        tokio::time::timeout(STATEMENT_LIMIT, run).await.unwrap_or_else(|_| Err("no answer in time".into()))
    }

    /// The list-append values of `keys` (`SELECT k, v`): key and text, keys with no row absent.
    async fn lists(&mut self, sql: &str) -> Result<Vec<(i32, String)>, String> {
        let run = async {
            match self {
                Session::Pg(c) => c
                    .query(sql, &[])
                    .await
                    .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
                    .map_err(|e| pg_error(&e)),
                Session::My(c) => c.query::<(i32, String), _>(sql).await.map_err(|e| e.to_string()),
            }
        };
        tokio::time::timeout(STATEMENT_LIMIT, run).await.unwrap_or_else(|_| Err("no answer in time".into()))
    }
}

fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// What every client shares.
#[derive(Clone)]
pub struct Shared {
    /// The protocol.
    pub protocol: Protocol,
    /// The sqlswitch instances' ports (client `id` uses `ports[id % len]`).
    pub ports: Vec<u16>,
    /// Who the clients log in as.
    pub login: (String, String),
    /// When the run began (the history's clock).
    pub start: Instant,
    /// Set when the clients are to stop.
    pub stop: Arc<AtomicBool>,
    /// Where operations go.
    pub history: mpsc::UnboundedSender<Op>,
}

impl Shared {
    fn ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// What identifies one operation of one client.
#[derive(Clone, Copy)]
struct Who {
    client: u32,
    seq: u32,
    session: u32,
}

impl Who {
    fn op(self, kind: Kind, invoked_ms: u64, shared: &Shared, outcome: Outcome, error: Option<String>) -> Op {
        Op {
            client: self.client,
            seq: self.seq,
            session: self.session,
            kind,
            invoked_ms,
            completed_ms: shared.ms(),
            outcome,
            seen: None,
            error,
            mops: Vec::new(),
        }
    }
}

/// Runs client `id` until `shared.stop`.
pub async fn client(id: u32, seed: u64, shared: Shared) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut session: Option<Session> = None;
    let mut who = Who { client: id, seq: 0, session: 0 };
    while !shared.stop.load(Ordering::Relaxed) {
        let Some(s) = session.as_mut() else {
            let login = (shared.login.0.as_str(), shared.login.1.as_str());
            let port = shared.ports[usize::try_from(id).unwrap_or(0) % shared.ports.len()];
            match Session::open(shared.protocol, port, login).await {
                Ok(s) => {
                    session = Some(s);
                    who.session += 1;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            continue;
        };
        who.seq += 1;
        let ok = match rng.gen_range(0..100) {
            0..40 => insert_then_read(s, who, &shared).await,
            40..65 => {
                let think = Duration::from_millis(rng.gen_range(0..40));
                transaction(s, who, think, &shared).await
            }
            65..90 => list_append(s, who, &mut rng, &shared).await,
            _ => read_keys(s, who, &mut rng, &shared).await,
        };
        if !ok {
            session = None; // as applications do: a new connection after an error
        }
    }
}

/// The list table's keys change every ten seconds, so that a list stays short.
fn keys(rng: &mut impl Rng, shared: &Shared, n: usize) -> Vec<u32> {
    let epoch = u32::try_from(shared.ms() / 10_000).unwrap_or(u32::MAX);
    let mut keys: Vec<u32> = (0..LIST_KEYS).map(|k| epoch * 100 + k).collect();
    for i in 0..n.min(keys.len()) {
        let j = rng.gen_range(i..keys.len());
        keys.swap(i, j);
    }
    keys.truncate(n);
    keys
}

/// How many keys of the list table are in play at a time.
const LIST_KEYS: u32 = 8;

/// A serializable transaction over two or three distinct keys, appending to some (at least
/// one) and reading the others; each read is kept as its length and hash.
async fn list_append(s: &mut Session, who: Who, rng: &mut impl Rng, shared: &Shared) -> bool {
    let invoked_ms = shared.ms();
    let n = rng.gen_range(2..=3);
    let mut mops: Vec<Mop> =
        keys(rng, shared, n).into_iter().map(|key| Mop { key, append: rng.gen_bool(0.5), len: 0, hash: 0 }).collect();
    mops[0].append = true;
    let begin = match shared.protocol {
        Protocol::Postgres => "BEGIN ISOLATION LEVEL SERIALIZABLE",
        Protocol::Mysql => "START TRANSACTION",
    };
    let element = super::elle::element(who.client, who.seq);
    let mut result = s.exec(begin).await;
    for m in &mut mops {
        if result.is_err() {
            break;
        }
        result = if m.append {
            let sql = match shared.protocol {
                Protocol::Postgres => format!(
                    "INSERT INTO appends (k, v) VALUES ({}, '{element}') \
                     ON CONFLICT (k) DO UPDATE SET v = appends.v || ',' || EXCLUDED.v",
                    m.key
                ),
                Protocol::Mysql => format!(
                    "INSERT INTO appends (k, v) VALUES ({}, '{element}') \
                     ON DUPLICATE KEY UPDATE v = CONCAT(v, ',', VALUES(v))",
                    m.key
                ),
            };
            s.exec(&sql).await
        } else {
            s.lists(&format!("SELECT k, v FROM appends WHERE k = {}", m.key)).await.map(|rows| {
                let text = rows.first().map(|r| r.1.as_str()).unwrap_or_default();
                (m.len, m.hash) = seen(text);
            })
        };
    }
    let (outcome, error) = finish(s, result).await;
    let mut op = who.op(Kind::Append, invoked_ms, shared, outcome, error);
    op.mops = mops;
    let _ = shared.history.send(op);
    outcome == Outcome::Ok
}

/// Ends a transaction: COMMIT when every statement succeeded (its outcome unknown if COMMIT
/// fails), ROLLBACK otherwise (nothing that could commit was sent: failed).
async fn finish(s: &mut Session, result: Result<(), String>) -> (Outcome, Option<String>) {
    match result {
        Err(e) => {
            let _ = s.exec("ROLLBACK").await;
            (Outcome::Failed, Some(e))
        }
        Ok(()) => match s.exec("COMMIT").await {
            Ok(()) => (Outcome::Ok, None),
            Err(e) => (Outcome::Unknown, Some(e)),
        },
    }
}

/// One autocommit statement reading two or three keys (one snapshot, wherever it runs).
async fn read_keys(s: &mut Session, who: Who, rng: &mut impl Rng, shared: &Shared) -> bool {
    let invoked_ms = shared.ms();
    let n = rng.gen_range(2..=3);
    let keys = keys(rng, shared, n);
    let list = keys.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
    let result = s.lists(&format!("SELECT k, v FROM appends WHERE k IN ({list})")).await;
    let (outcome, error) = match &result {
        Ok(_) => (Outcome::Ok, None),
        Err(e) => (Outcome::Failed, Some(e.clone())),
    };
    let mut op = who.op(Kind::ReadKeys, invoked_ms, shared, outcome, error);
    if let Ok(rows) = &result {
        op.mops = keys
            .iter()
            .map(|&key| {
                let text = rows.iter().find(|r| u32::try_from(r.0).ok() == Some(key)).map(|r| r.1.as_str());
                let (len, hash) = seen(text.unwrap_or_default());
                Mop { key, append: false, len, hash }
            })
            .collect();
    }
    let _ = shared.history.send(op);
    result.is_ok()
}

/// A list's length and hash, from its text.
fn seen(text: &str) -> (u32, u64) {
    let len = if text.is_empty() { 0 } else { text.split(',').count() };
    (u32::try_from(len).unwrap_or(u32::MAX), super::elle::hash(text))
}

async fn insert_then_read(s: &mut Session, who: Who, shared: &Shared) -> bool {
    let (id, seq) = (who.client, who.seq);
    let invoked_ms = shared.ms();
    let sql = format!("INSERT INTO faults (client, seq, part) VALUES ({id}, {seq}, 'one')");
    let result = s.exec(&sql).await;
    let outcome = if result.is_ok() { Outcome::Ok } else { Outcome::Unknown };
    let _ = shared.history.send(who.op(Kind::Insert, invoked_ms, shared, outcome, result.err()));
    if outcome != Outcome::Ok {
        return false;
    }
    let invoked_ms = shared.ms();
    let read = s.count(&format!("SELECT count(*) FROM faults WHERE client = {id} AND seq = {seq}")).await;
    let outcome = if read.is_ok() { Outcome::Ok } else { Outcome::Failed };
    let mut op = who.op(Kind::ReadOwn, invoked_ms, shared, outcome, read.as_ref().err().cloned());
    op.seen = read.as_ref().ok().copied();
    let _ = shared.history.send(op);
    read.is_ok()
}

async fn transaction(s: &mut Session, who: Who, think: Duration, shared: &Shared) -> bool {
    let (id, seq) = (who.client, who.seq);
    let invoked_ms = shared.ms();
    let insert = |part: &str| format!("INSERT INTO faults (client, seq, part) VALUES ({id}, {seq}, '{part}')");
    let begin = match shared.protocol {
        Protocol::Postgres => "BEGIN",
        Protocol::Mysql => "START TRANSACTION",
    };
    // One statement after another, each only if the one before succeeded: an INSERT after a
    // failed BEGIN would commit on its own.
    let mut result = s.exec(begin).await;
    if result.is_ok() {
        result = s.exec(&insert("a")).await;
    }
    if result.is_ok() {
        tokio::time::sleep(think).await;
        result = s.exec(&insert("b")).await;
    }
    let (outcome, error) = finish(s, result).await;
    let _ = shared.history.send(who.op(Kind::Transaction, invoked_ms, shared, outcome, error));
    outcome == Outcome::Ok
}
