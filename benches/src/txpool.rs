//! Transaction pooling against PgBouncer in transaction mode: hundreds to thousands of pgbench
//! clients over `pool_size = 20` server connections, TPS, latency percentiles (from pgbench's
//! per-transaction log) and the most server connections seen while it ran.
//!
//! Options (environment): `BENCH_POOL_CLIENTS` (default `500,2000,10000`),
//! `BENCH_POOL_WORKLOADS` (`select-simple`, `select-prepared`, `tpcb-simple`, `tpcb-prepared`;
//! default all), `BENCH_POOL_BIG_WORKLOADS` (those for 5,000 clients or more, default
//! `select-simple,tpcb-simple`). Each run lasts `BENCH_SECONDS` plus a second per 200 clients:
//! pgbench logs its clients in first (a SCRAM exchange each, on its own two threads).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use sqlswitch_tests::pg::{free_ports, pgbench, pgbench_failed, Topology};

use crate::list;
use crate::measure::{self, median};
use crate::report::{Row, N, PGBOUNCER, PRIMARY_ONLY};
use crate::targets::{self, ClusterSpec};

/// Server connections per pool, for both poolers.
pub const POOL_SIZE: usize = 20;

/// One pooler under test: its column in the table and its port.
pub struct Pooler {
    /// Column ([`PGBOUNCER`] or [`PRIMARY_ONLY`]).
    pub column: usize,
    /// Listening port.
    pub port: u16,
    /// Its process: the server connections counted are those it holds.
    pub pid: u32,
}

/// What one pgbench run gave.
#[derive(Debug, Default, Clone, Copy)]
struct Run {
    tps: f64,
    p50_ms: f64,
    p99_ms: f64,
    servers: u64,
    failed: u64,
}

/// The pgbench arguments of a workload name.
fn workload_args(name: &str) -> Option<(&'static str, &'static [&'static str])> {
    Some(match name {
        "select-simple" => ("pgbench -S -M simple", &["-S", "-M", "simple"]),
        "select-prepared" => ("pgbench -S -M prepared", &["-S", "-M", "prepared"]),
        "tpcb-simple" => ("pgbench TPC-B-like -M simple", &["-M", "simple"]),
        "tpcb-prepared" => ("pgbench TPC-B-like -M prepared", &["-M", "prepared"]),
        _ => return None,
    })
}

/// Starts a primary, sqlswitch with a transaction-pooling cluster and PgBouncer in transaction
/// mode (both `pool_size = 20`), initialises pgbench's tables, and runs [`suite`].
///
/// # Errors
/// A server or pooler could not start, or pgbench could not initialise.
pub fn run(sqlswitch: &Path, seconds: u64, rounds: u64, rows: &mut Vec<Row>, notes: &mut Vec<String>) -> Result<()> {
    eprintln!("transaction pooling: starting PostgreSQL (a primary)...");
    let topo = Topology::start(0)?;
    let p = free_ports(3)?;
    let (ours, bouncer, metrics) = (p[0], p[1], p[2]);
    let config = topo.dir.join("txpool.toml");
    let extra = format!(
        "pool_mode = \"transaction\"\npool_size = {POOL_SIZE}\nmax_client_connections = 20000\nconnect_timeout = \"30s\""
    );
    let nodes = vec![(topo.primary().name.clone(), topo.primary().port)];
    let spec = ClusterSpec { name: "pooled", protocol: "postgres", port: ours, nodes, extra: &extra };
    targets::write_private(&config, &targets::config_text(&topo.dir.join("admin.sock"), Some(metrics), &[spec]))?;
    let mut daemon = targets::start_sqlswitch(sqlswitch, &config, ours, &[])?;
    let mut poolers = vec![Pooler { column: PRIMARY_ONLY, port: ours, pid: daemon.pid }];
    let mut bouncer_proc = match targets::pgbouncer_bin() {
        Some(bin) => {
            let dir = topo.dir.join("pgbouncer-tx");
            let p = targets::start_pgbouncer_pooling(
                &bin,
                &dir,
                bouncer,
                topo.primary().port,
                &[],
                "transaction",
                POOL_SIZE,
            )?;
            poolers.push(Pooler { column: PGBOUNCER, port: bouncer, pid: p.pid });
            Some(p)
        }
        None => {
            notes.push("PgBouncer is not installed: the transaction-pooling rows have no PgBouncer column.".into());
            None
        }
    };
    pgbench(&topo, topo.primary().port, &["-i", "-q", "-s", "10"])?;
    let result = suite(&topo, &poolers, seconds, rounds, rows, notes);
    if let Some(p) = bouncer_proc.as_mut() {
        p.stop();
    }
    daemon.stop();
    topo.stop();
    result
}

/// Runs every workload and client count against each pooler, `rounds` times in alternating
/// order, `seconds` each; pushes TPS, p50, p99 and server-connection rows.
///
/// # Errors
/// pgbench or the server could not be run (a pooler's failed run is a note, not an error).
pub fn suite(
    topo: &Topology,
    poolers: &[Pooler],
    seconds: u64,
    rounds: u64,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let log_dir = topo.dir.join("txpool-logs");
    for clients in list("BENCH_POOL_CLIENTS", "500,2000,10000") {
        let all = "select-simple,select-prepared,tpcb-simple,tpcb-prepared";
        let big = clients.parse::<usize>().is_ok_and(|c| c >= 5000);
        let names = if big {
            list("BENCH_POOL_BIG_WORKLOADS", "select-simple,tpcb-simple")
        } else {
            list("BENCH_POOL_WORKLOADS", all)
        };
        for name in names {
            let Some((label, args)) = workload_args(&name) else {
                notes.push(format!("unknown BENCH_POOL_WORKLOADS entry {name:?}"));
                continue;
            };
            let workload = format!("{label}, {clients} clients, pool_size {POOL_SIZE} (transaction pooling)");
            eprintln!("{workload}:");
            let mut runs: [Vec<Run>; N] = Default::default();
            let mut by_round = Vec::new();
            for round in 0..rounds {
                let mut this = [None; N];
                for k in 0..poolers.len() {
                    let p = &poolers[(k + round as usize) % poolers.len()];
                    match one_run(topo, p, &clients, args, seconds, &log_dir) {
                        Ok(run) => {
                            eprintln!(
                                "  round {}: port {} tps={:.0} p50={:.1}ms p99={:.1}ms servers={} failed={}",
                                round + 1,
                                p.port,
                                run.tps,
                                run.p50_ms,
                                run.p99_ms,
                                run.servers,
                                run.failed
                            );
                            this[p.column] = Some(run.tps);
                            runs[p.column].push(run);
                        }
                        Err(e) => {
                            let first = format!("{e:#}").lines().rev().take(3).collect::<Vec<_>>().join(" / ");
                            notes.push(format!("{workload}: the run on port {} failed: {first}", p.port));
                        }
                    }
                }
                by_round.push(this);
            }
            rows.extend(rows_of(&workload, &runs, by_round));
        }
    }
    let _ = std::fs::remove_dir_all(&log_dir);
    Ok(())
}

/// The TPS, p50, p99 and server-connection rows of one workload.
fn rows_of(workload: &str, runs: &[Vec<Run>; N], by_round: Vec<[Option<f64>; N]>) -> Vec<Row> {
    let med = |f: fn(&Run) -> f64| -> [Option<f64>; N] {
        std::array::from_fn(|i| {
            let v: Vec<f64> = runs[i].iter().map(f).collect();
            (!v.is_empty()).then(|| median(&v))
        })
    };
    let failed: u64 = runs.iter().flatten().map(|r| r.failed).sum();
    let note = if failed > 0 { format!("{failed} failed transactions") } else { String::new() };
    let row = |suffix: &str, unit: &'static str, values, by_round, higher_is_better, note: String| Row {
        workload: format!("{workload}{suffix}"),
        unit,
        values,
        by_round,
        higher_is_better,
        note,
    };
    vec![
        row("", "tps", med(|r| r.tps), by_round, true, note),
        row(": p50 latency", "ms", med(|r| r.p50_ms), Vec::new(), false, String::new()),
        row(": p99 latency", "ms", med(|r| r.p99_ms), Vec::new(), false, String::new()),
        row(": most server connections", "connections", med(|r| r.servers as f64), Vec::new(), false, String::new()),
    ]
}

/// One pgbench run of `clients` against `pooler`, with its per-transaction log and the most
/// connections the pooler held to the server meanwhile (sampled every 100 ms).
fn one_run(topo: &Topology, pooler: &Pooler, clients: &str, args: &[&str], seconds: u64, logs: &Path) -> Result<Run> {
    let _ = std::fs::remove_dir_all(logs);
    std::fs::create_dir_all(logs)?;
    let prefix = logs.join("tx");
    let prefix = prefix.to_string_lossy().into_owned();
    let t = (seconds + clients.parse::<u64>().unwrap_or(0) / 200).to_string();
    let threads = pgbench_threads(clients, args).to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-c", clients, "-j", &threads, "-T", &t, "-l", "--log-prefix", &prefix]);
    let stop = AtomicBool::new(false);
    let most = AtomicU64::new(0);
    let out = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                if let Some(n) = server_connections(pooler.pid, topo.primary().port) {
                    most.fetch_max(n, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let out = pgbench(topo, pooler.port, &all);
        stop.store(true, Ordering::Relaxed);
        out
    });
    let out = out?;
    let (p50_ms, p99_ms) = latencies(logs)?;
    Ok(Run {
        tps: measure::pgbench_tps(&out)?,
        p50_ms,
        p99_ms,
        servers: most.load(Ordering::Relaxed),
        failed: pgbench_failed(&out),
    })
}

/// pgbench threads for `clients` running `args`: 2, but for TPC-B with `-M prepared`, where
/// pgbench prepares each statement with libpq's blocking `PQprepare` in the middle of a
/// client's first transaction: the whole thread waits for a server connection there while its
/// other clients hold theirs mid-transaction, and with more clients per thread than the pool
/// has connections every connection can end up held by clients of waiting threads (through
/// any transaction pooler that prepares on a server connection). Ten clients per thread keep
/// most of the pool with clients that are not waiting.
fn pgbench_threads(clients: &str, args: &[&str]) -> usize {
    let clients: usize = clients.parse().unwrap_or(2);
    if args.contains(&"-S") || !args.contains(&"prepared") {
        return 2;
    }
    clients.div_ceil(POOL_SIZE / 2).max(2)
}

/// The TCP connections process `pid` holds to `port` on loopback (`ss`), if it can tell.
pub fn server_connections(pid: u32, port: u16) -> Option<u64> {
    let out = std::process::Command::new("ss")
        .args(["-tnpH", "state", "established", "dport", "=", &format!(":{port}")])
        .output()
        .ok()?;
    let mine = format!("pid={pid},");
    Some(String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(&mine)).count() as u64)
}

/// p50 and p99 of the transaction latencies in pgbench's logs under `dir` (third field, µs),
/// in milliseconds.
fn latencies(dir: &Path) -> Result<(f64, f64)> {
    let mut micros = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let text = std::fs::read_to_string(entry?.path())?;
        micros.extend(text.lines().filter_map(|l| l.split_whitespace().nth(2)?.parse::<f64>().ok()));
    }
    micros.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let i = ((micros.len() as f64 - 1.0) * q).round() as usize;
        micros.get(i).map(|us| us / 1000.0)
    };
    Ok((at(0.5).context("no transactions logged")?, at(0.99).context("no transactions logged")?))
}
