//! Transaction pooling on MariaDB: sysbench `oltp_read_only` and `oltp_read_write` with
//! hundreds of threads, directly (the server's `max_connections` raised for it) and through
//! sqlswitch with `pool_mode = "transaction"` and `pool_size = 20`: TPS and the most server
//! connections each held.
//!
//! Options (environment): `BENCH_POOL_MYSQL_THREADS` (default `300`). Each run lasts
//! `BENCH_SECONDS`.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sqlswitch_tests::mysql::Topology;
use sqlswitch_tests::pg::free_ports;

use crate::list;
use crate::measure::{self, median};
use crate::report::{Row, DIRECT, N, PRIMARY_ONLY};
use crate::targets::{self, ClusterSpec};
use crate::txpool::{server_connections, POOL_SIZE};

/// Starts a MariaDB primary and sqlswitch in transaction pooling, prepares sysbench's tables
/// and pushes a TPS and a server-connections row per workload and thread count.
///
/// # Errors
/// sysbench is missing, or a server, sqlswitch or sysbench could not run.
pub fn run(sqlswitch: &Path, seconds: u64, rounds: u64, rows: &mut Vec<Row>, notes: &mut Vec<String>) -> Result<()> {
    if Command::new("sysbench").arg("--version").output().is_err() {
        bail!("sysbench is not installed (apt-get install sysbench)");
    }
    eprintln!("transaction pooling (MariaDB): starting a primary...");
    let topo = Topology::start(0)?;
    // Directly, 300 threads need more connections and prepared statements than the defaults.
    topo.sql(topo.primary(), "SET GLOBAL max_connections = 5000")?;
    topo.sql(topo.primary(), "SET GLOBAL max_prepared_stmt_count = 1048576")?;
    let port = free_ports(1)?[0];
    let config = topo.dir.join("txpool-mysql.toml");
    let extra = format!("pool_mode = \"transaction\"\npool_size = {POOL_SIZE}\nmax_client_connections = 20000");
    let nodes = vec![(topo.primary().name.clone(), topo.primary().port)];
    let spec = ClusterSpec { name: "pooled", protocol: "mysql", port, nodes, extra: &extra };
    targets::write_private(&config, &targets::config_text(&topo.dir.join("admin.sock"), None, &[spec]))?;
    let mut daemon = targets::start_sqlswitch(sqlswitch, &config, port, &[])?;
    let direct = topo.primary().port;
    let server_pid = Topology::pid(topo.primary());
    let result = (|| {
        sysbench("oltp_read_write", direct, &["prepare".into()])?;
        for threads in list("BENCH_POOL_MYSQL_THREADS", "300") {
            for workload in ["oltp_read_only", "oltp_read_write"] {
                let label = format!(
                    "sysbench {workload}, {threads} threads, pool_size {POOL_SIZE} (MariaDB, transaction pooling)"
                );
                eprintln!("{label}:");
                let args = [format!("--threads={threads}"), format!("--time={seconds}"), "run".to_owned()];
                let mut tps: [Vec<f64>; N] = Default::default();
                let mut servers: [Vec<f64>; N] = Default::default();
                let mut by_round = Vec::new();
                let mut errors = 0;
                for round in 0..rounds {
                    let mut this = [None; N];
                    let order = if round % 2 == 0 { [DIRECT, PRIMARY_ONLY] } else { [PRIMARY_ONLY, DIRECT] };
                    for column in order {
                        let (target, holder) = if column == DIRECT { (direct, None) } else { (port, Some(daemon.pid)) };
                        let watch = Watch { holder, server_pid, pooler_pid: daemon.pid, port: direct };
                        let (report, most) = watch.sampled(|| sysbench(workload, target, &args))?;
                        let (t, e) = measure::sysbench_tps(&report)?;
                        eprintln!("  round {}: port {target} tps={t:.0} servers={most} errors={e}", round + 1);
                        errors += e;
                        tps[column].push(t);
                        servers[column].push(most as f64);
                        this[column] = Some(t);
                    }
                    by_round.push(this);
                }
                let med = |v: &[Vec<f64>; N]| std::array::from_fn(|i| (!v[i].is_empty()).then(|| median(&v[i])));
                let note = if errors > 0 { format!("{errors} ignored errors") } else { String::new() };
                rows.push(Row {
                    workload: label.clone(),
                    unit: "tps",
                    values: med(&tps),
                    by_round,
                    higher_is_better: true,
                    note,
                });
                rows.push(Row {
                    workload: format!("{label}: most server connections"),
                    unit: "connections",
                    values: med(&servers),
                    by_round: Vec::new(),
                    higher_is_better: false,
                    note: String::new(),
                });
            }
        }
        Ok(())
    })();
    if result.is_err() {
        notes.push("the MariaDB transaction-pooling rows are incomplete: a run failed".into());
    }
    daemon.stop();
    drop(topo);
    result
}

/// Whose connections to the server at `port` a run counts.
struct Watch {
    /// The pooler under test, or `None` for the clients' own (direct).
    holder: Option<u32>,
    /// The server's process.
    server_pid: u32,
    /// The idle pooler's process, whose connections a direct run does not count.
    pooler_pid: u32,
    port: u16,
}

impl Watch {
    /// The connections counted now.
    fn count(&self) -> Option<u64> {
        match self.holder {
            Some(pid) => server_connections(pid, self.port),
            None => {
                let all = accepted(self.server_pid, self.port)?;
                Some(all.saturating_sub(server_connections(self.pooler_pid, self.port).unwrap_or(0)))
            }
        }
    }

    /// Runs `f` while sampling [`Watch::count`] every 100 ms; returns its output and the most.
    fn sampled<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<(T, u64)> {
        let stop = AtomicBool::new(false);
        let most = AtomicU64::new(0);
        let out = std::thread::scope(|scope| {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(n) = self.count() {
                        most.fetch_max(n, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
            let out = f();
            stop.store(true, Ordering::Relaxed);
            out
        });
        Ok((out?, most.load(Ordering::Relaxed)))
    }
}

/// The TCP connections the server process `pid` has accepted on `port`.
fn accepted(pid: u32, port: u16) -> Option<u64> {
    let out =
        Command::new("ss").args(["-tnpH", "state", "established", "sport", "=", &format!(":{port}")]).output().ok()?;
    let mine = format!("pid={pid},");
    Some(String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(&mine)).count() as u64)
}

/// One sysbench command against `port` (the app user, 8 tables of 10,000 rows).
fn sysbench(workload: &str, port: u16, extra: &[String]) -> Result<String> {
    let out = Command::new("sysbench")
        .args([workload, "--db-driver=mysql", "--mysql-host=127.0.0.1", "--mysql-db=app"])
        .args(["--mysql-user=app", "--mysql-password=app", "--tables=8", "--table-size=10000"])
        .arg(format!("--mysql-port={port}"))
        .args(extra)
        .output()
        .context("running sysbench")?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("sysbench {workload} on {port} failed:\n{text}");
    }
    Ok(text)
}
