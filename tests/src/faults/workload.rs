//! The fault loop's clients: each one session through sqlswitch (a new one after any error, as
//! applications reconnect), doing autocommit inserts followed by a read of the session's own
//! write, and two-statement transactions with think time between the statements. Every
//! operation is recorded with its outcome as the client can know it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

use super::history::{Kind, Op, Outcome};
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
                mysql_async::Conn::new(opts).await.map(Session::My).map_err(|e| e.to_string())
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

/// Runs client `id` until `shared.stop`.
pub async fn client(id: u32, seed: u64, shared: Shared) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut session: Option<Session> = None;
    let mut seq = 0u32;
    while !shared.stop.load(Ordering::Relaxed) {
        let Some(s) = session.as_mut() else {
            let login = (shared.login.0.as_str(), shared.login.1.as_str());
            let port = shared.ports[usize::try_from(id).unwrap_or(0) % shared.ports.len()];
            match Session::open(shared.protocol, port, login).await {
                Ok(s) => session = Some(s),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            continue;
        };
        seq += 1;
        let ok = if rng.gen_bool(0.6) {
            insert_then_read(s, id, seq, &shared).await
        } else {
            let think = Duration::from_millis(rng.gen_range(0..40));
            transaction(s, id, seq, think, &shared).await
        };
        if !ok {
            session = None; // as applications do: a new connection after an error
        }
    }
}

async fn insert_then_read(s: &mut Session, id: u32, seq: u32, shared: &Shared) -> bool {
    let invoked_ms = shared.ms();
    let sql = format!("INSERT INTO faults (client, seq, part) VALUES ({id}, {seq}, 'one')");
    let result = s.exec(&sql).await;
    let outcome = if result.is_ok() { Outcome::Ok } else { Outcome::Unknown };
    let op = Op {
        client: id,
        seq,
        kind: Kind::Insert,
        invoked_ms,
        completed_ms: shared.ms(),
        outcome,
        seen: None,
        error: result.err(),
    };
    let _ = shared.history.send(op);
    if outcome != Outcome::Ok {
        return false;
    }
    let invoked_ms = shared.ms();
    let read = s.count(&format!("SELECT count(*) FROM faults WHERE client = {id} AND seq = {seq}")).await;
    let op = Op {
        client: id,
        seq,
        kind: Kind::ReadOwn,
        invoked_ms,
        completed_ms: shared.ms(),
        outcome: if read.is_ok() { Outcome::Ok } else { Outcome::Failed },
        seen: read.as_ref().ok().copied(),
        error: read.as_ref().err().cloned(),
    };
    let _ = shared.history.send(op);
    read.is_ok()
}

async fn transaction(s: &mut Session, id: u32, seq: u32, think: Duration, shared: &Shared) -> bool {
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
    // Nothing that could commit was sent yet: a failure here is a failure.
    let (outcome, error) = match result {
        Err(e) => {
            let _ = s.exec("ROLLBACK").await;
            (Outcome::Failed, Some(e))
        }
        Ok(()) => match s.exec("COMMIT").await {
            Ok(()) => (Outcome::Ok, None),
            Err(e) => (Outcome::Unknown, Some(e)),
        },
    };
    let op = Op {
        client: id,
        seq,
        kind: Kind::Transaction,
        invoked_ms,
        completed_ms: shared.ms(),
        outcome,
        seen: None,
        error,
    };
    let _ = shared.history.send(op);
    outcome == Outcome::Ok
}
