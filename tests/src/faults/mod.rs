//! The randomized fault loop (`scripts/faults`): a primary and two replicas, sqlswitch in front
//! through relays, clients recording every operation, and a schedule of faults drawn from a
//! seed; then everything is healed and the history is checked ([`checker`]). The same seed
//! gives the same schedule (the timing of a real system still varies from run to run).

pub mod checker;
pub mod elle;
pub mod history;
mod nemesis;
mod workload;
mod world;

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use rand::{Rng, SeedableRng};

use history::{Fault, Op, Row};
use world::{Servers, World};

/// Which wire protocol (and servers) a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// PostgreSQL 15 with streaming standbys.
    Postgres,
    /// MariaDB with GTID replicas.
    Mysql,
}

/// One run's settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// The protocol.
    pub protocol: Protocol,
    /// The schedule's seed.
    pub seed: u64,
    /// How long faults are applied.
    pub seconds: u64,
    /// Concurrent clients (spread over the instances).
    pub clients: u32,
    /// sqlswitch instances: more than one is a fleet through etcd.
    pub instances: usize,
    /// Where the history, the schedule and sqlswitch's log go.
    pub out: PathBuf,
}

/// What a run found.
#[derive(Debug)]
pub struct Summary {
    /// Client operations recorded.
    pub operations: usize,
    /// Faults applied.
    pub faults: usize,
    /// Broken invariants.
    pub anomalies: Vec<checker::Anomaly>,
}

/// One run: start everything, apply faults for `opts.seconds`, heal, check.
///
/// # Errors
/// The harness failed (a server did not start): no verdict on sqlswitch.
pub async fn run(opts: &Options) -> Result<Summary> {
    // A fresh directory: a run killed before it could stop its instances left their sockets.
    let _ = std::fs::remove_dir_all(&opts.out);
    std::fs::create_dir_all(&opts.out)?;
    let mut world = World::start(opts.protocol, opts.seed, opts.instances.max(1), &opts.out).await?;
    let start = Instant::now();
    let ms = move || u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Op>();
    let shared = workload::Shared {
        protocol: opts.protocol,
        ports: world.instances.iter().map(|i| i.port).collect(),
        login: world.login.clone(),
        start,
        stop: Arc::clone(&stop),
        history: tx,
    };
    let clients: Vec<_> =
        (1..=opts.clients).map(|id| tokio::spawn(workload::client(id, opts.seed, shared.clone()))).collect();
    drop(shared);

    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    let mut faults: Vec<Fault> = Vec::new();
    let mut schedule = std::fs::File::create(opts.out.join("faults.jsonl"))?;
    tokio::time::sleep(Duration::from_secs(2)).await; // the workload runs clean first
    while start.elapsed() < Duration::from_secs(opts.seconds) {
        let name = nemesis::pick(&mut rng, world.instances.len() > 1);
        let hold = Duration::from_millis(rng.gen_range(1_000..5_000));
        let gap = Duration::from_millis(rng.gen_range(1_000..3_000));
        let choice = rng.gen_range(0..1000);
        if let Some(fault) = nemesis::apply(&mut world, name, hold, choice, ms).await? {
            println!("{:>7} ms  {:<20} {}", fault.started_ms, fault.name, fault.detail);
            writeln!(schedule, "{}", serde_json::to_string(&fault)?)?;
            faults.push(fault);
        }
        tokio::time::sleep(gap).await;
    }

    let settled = settle(&mut world).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = tokio::time::timeout(Duration::from_secs(90), c).await;
    }
    let mut ops = Vec::new();
    while let Ok(op) = rx.try_recv() {
        ops.push(op);
    }
    let mut history = std::fs::File::create(opts.out.join("history.jsonl"))?;
    for op in &ops {
        writeln!(history, "{}", serde_json::to_string(op)?)?;
    }
    let rows = final_rows(&mut world).await?;
    let lists = final_lists(&mut world).await?;
    let fin = checker::Final {
        rows,
        lists,
        settled,
        output: format!("{}\n{}", world.log_text(), world.answers),
        secrets: world.secrets.clone(),
    };
    let anomalies = checker::check(&ops, &faults, &fin);
    Ok(Summary { operations: ops.len(), faults: faults.len(), anomalies })
}

/// After the last heal: within 60 s, every instance names the same primary with no problem
/// reported, and a write through each succeeds.
async fn settle(world: &mut World) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    'again: while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut primaries = std::collections::BTreeSet::new();
        for i in 0..world.instances.len() {
            let status = world.status_on(i).await;
            let problem = status["primary_problem"].as_str().map(str::to_owned);
            let maintenance = status["maintenance"].as_str().map(str::to_owned);
            if problem.is_some() || maintenance.is_some() {
                last = format!("instance {i}: problem {problem:?}, maintenance {maintenance:?}");
                continue 'again;
            }
            primaries.insert(status["primary"].to_string());
        }
        if primaries.len() != 1 {
            last = format!("the instances name different primaries: {primaries:?}");
            continue;
        }
        for i in 0..world.instances.len() {
            let login = (world.login.0.as_str(), world.login.1.as_str());
            if let Err(e) = probe_write(world.servers_protocol(), world.instances[i].port, login).await {
                last = format!("a write through instance {i} failed: {e}");
                continue 'again;
            }
        }
        return Ok(());
    }
    Err(format!("not settled 60 s after the last heal: {last}"))
}

async fn probe_write(protocol: Protocol, port: u16, login: (&str, &str)) -> Result<(), String> {
    let sql = "INSERT INTO faults (client, seq, part) VALUES (0, 0, 'settle')";
    match protocol {
        Protocol::Postgres => {
            let s = format!(
                "host=127.0.0.1 port={port} user={} password={} dbname={}",
                login.0,
                login.1,
                crate::pg::DATABASE
            );
            let c = crate::client::connect_str(&s).await.map_err(|e| e.to_string())?;
            c.batch_execute(sql).await.map_err(|e| e.to_string())
        }
        Protocol::Mysql => {
            use mysql_async::prelude::Queryable;
            let opts = mysql_async::Opts::from_url(&crate::proxy::mysql_url(port, login)).map_err(|e| e.to_string())?;
            let mut c = mysql_async::Conn::new(opts).await.map_err(|e| e.to_string())?;
            c.query_drop(sql).await.map_err(|e| e.to_string())
        }
    }
}

/// The answer of the final primary to `sql` (on the workload's table `table`), as text.
async fn on_final_primary(world: &mut World, sql: &str, table: &str) -> Result<String> {
    let (primary, _) = world.roles().await;
    Ok(match &world.servers {
        Servers::Pg(t) => t.psql_admin(&t.nodes[primary], sql, crate::pg::DATABASE)?,
        Servers::My(t) => {
            let qualified = format!("FROM {}.{table}", crate::pg::DATABASE);
            t.sql(&t.nodes[primary], &sql.replace(&format!("FROM {table}"), &qualified))?
        }
    })
}

/// Every list of the list-append table on the final primary.
async fn final_lists(world: &mut World) -> Result<HashMap<u32, Vec<String>>> {
    let text = on_final_primary(world, "SELECT k, v FROM appends", "appends").await?;
    let mut lists = HashMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once(['|', '\t']) {
            if let Ok(k) = k.trim().parse() {
                lists.insert(k, v.trim().split(',').map(str::to_owned).collect());
            }
        }
    }
    Ok(lists)
}

/// Every row of the workload's table on the final primary, counted.
async fn final_rows(world: &mut World) -> Result<HashMap<Row, usize>> {
    let sql = "SELECT client, seq, part, count(*) FROM faults WHERE client > 0 GROUP BY client, seq, part";
    let text = on_final_primary(world, sql, "faults").await?;
    let mut rows = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(['|', '\t']).collect();
        if let [c, s, p, n] = f.as_slice() {
            if let (Ok(c), Ok(s), Ok(n)) = (c.parse(), s.parse(), n.parse()) {
                rows.insert((c, s, (*p).to_owned()), n);
            }
        }
    }
    Ok(rows)
}
