//! `loadbench` (run by `scripts/bench`): the load-bench suite. It starts real PostgreSQL and
//! MariaDB topologies (a primary and two replicas each); when installed, HAProxy in TCP mode in
//! front of each primary (the floor any relay pays), PgBouncer in session pooling mode and
//! Pgpool-II load balancing over the replicas (the splitting peer); and the release `sqlswitch`
//! binary twice over — a primary-only cluster (the proxy's own cost, comparable to PgBouncer and
//! HAProxy) and a splitting cluster (what users get) — and runs every workload against each
//! target in alternating rounds, so that all of them see the same machine. It prints the medians
//! and ratios and writes them to `benches/RESULTS.md`.
//!
//! Options (environment): `BENCH_SECONDS` per round (default 5), `BENCH_ROUNDS` (default 5),
//! `BENCH_IDLE_CONNS` (default 5000), `BENCH_ONLY` (comma-separated groups: `pgbench`, `tpcb`,
//! `connect`, `idle`, `syscalls`, `callgrind`, `switchover`, `sysbench`, `txpool`, `txpool-mysql`; default
//! all), `BENCH_CLIENTS` (pgbench -S client counts, default `8,64`), `BENCH_MODES` (default
//! `simple,extended,prepared`), `BENCH_RESULTS` (the file under `benches/` written, default
//! `RESULTS.md`); `txpool`'s own in `benches/src/txpool.rs`, `txpool-mysql`'s in
//! `benches/src/txpool_mysql.rs`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sqlswitch_benches::list;
use sqlswitch_benches::measure::{self, median};
use sqlswitch_benches::peers;
use sqlswitch_benches::report::{self, Row, DIRECT, HAPROXY, N, PGBOUNCER, PRIMARY_ONLY, SPLIT};
use sqlswitch_benches::targets::{self, ClusterSpec};
use sqlswitch_tests::pg::{free_ports, pgbench, pgbench_failed, Topology};

struct Options {
    seconds: u64,
    rounds: u64,
    idle_conns: usize,
    only: Option<Vec<String>>,
}

impl Options {
    fn from_env() -> Self {
        let num = |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
        let only = std::env::var("BENCH_ONLY")
            .ok()
            .filter(|s| !s.is_empty())
            .map(|s| s.split(',').map(|g| g.trim().to_owned()).collect());
        Self {
            seconds: num("BENCH_SECONDS", 5),
            rounds: num("BENCH_ROUNDS", 5),
            idle_conns: usize::try_from(num("BENCH_IDLE_CONNS", 5000)).unwrap_or(5000),
            only,
        }
    }

    fn wants(&self, group: &str) -> bool {
        self.only.as_ref().is_none_or(|g| g.iter().any(|g| g == group))
    }
}

/// The PostgreSQL side: targets as ports (`None` when absent).
struct PgSide<'a> {
    topo: &'a Topology,
    ports: [Option<u16>; N],
}

fn main() -> Result<()> {
    let opts = Options::from_env();
    let exe = std::env::current_exe()?;
    let sqlswitch = exe.parent().context("no parent")?.join("sqlswitch");
    if !sqlswitch.exists() {
        bail!("{} not found: build it with `cargo build --release -p sqlswitch`", sqlswitch.display());
    }
    let machine = measure::machine();
    println!("{machine}");
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let pg_groups = ["pgbench", "tpcb", "connect", "idle", "syscalls", "callgrind", "switchover"];
    if pg_groups.iter().any(|g| opts.wants(g)) {
        postgres_suite(&opts, &sqlswitch, &mut rows, &mut notes)?;
    }
    if opts.wants("sysbench") {
        mysql_suite(&opts, &sqlswitch, &mut rows, &mut notes)?;
    }
    if opts.wants("txpool") {
        sqlswitch_benches::txpool::run(&sqlswitch, opts.seconds, opts.rounds.min(3), &mut rows, &mut notes)?;
    }
    if opts.wants("txpool-mysql") {
        sqlswitch_benches::txpool_mysql::run(&sqlswitch, opts.seconds, opts.rounds.min(3), &mut rows, &mut notes)?;
    }
    let table = report::markdown(&rows);
    println!("\n{table}");
    for n in &notes {
        println!("{n}");
    }
    let text = format!(
        "# sqlswitch load-bench results\n\nWritten by `scripts/bench` (benches/src/bin/loadbench.rs); medians of {} \
         alternating rounds of {} s; each ratio is the median of the ratios within a round (the targets of \
         a round run back to back), and the notes give their spread. See `benches/NOTES.md` for what was \
         tried.\n\n{machine}\n{table}\n{}\n",
        opts.rounds,
        opts.seconds,
        notes.iter().map(|n| format!("- {n}\n")).collect::<String>()
    );
    let ratios_png = Path::new(env!("CARGO_MANIFEST_DIR")).join("tps-ratios.png");
    let ratios_data = std::env::temp_dir().join(format!("sqlswitch-bench-ratios-{}.dat", std::process::id()));
    let charts = match sqlswitch_benches::charts::tps_ratios(&rows, &ratios_data, &ratios_png) {
        Ok(Some(())) => "\nThe TPS ratios as bars: [tps-ratios.png](tps-ratios.png).\n".to_owned(),
        Ok(None) => String::new(),
        Err(e) => format!("\nNo chart of the TPS ratios: {e:#}.\n"),
    };
    let _ = std::fs::remove_file(&ratios_data);
    let text = text + &charts;
    let name = std::env::var("BENCH_RESULTS").unwrap_or_else(|_| "RESULTS.md".into());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    println!("written to {}", path.display());
    Ok(())
}

fn postgres_suite(opts: &Options, sqlswitch: &Path, rows: &mut Vec<Row>, notes: &mut Vec<String>) -> Result<()> {
    eprintln!("starting PostgreSQL (primary + 2 replicas)...");
    let topo = Topology::start(2)?;
    let p = free_ports(6)?;
    let (primary_only, split, bouncer, metrics, haproxy, pgpool) = (p[0], p[1], p[2], p[3], p[4], p[5]);
    let nodes: Vec<(String, u16)> = topo.nodes.iter().map(|n| (n.name.clone(), n.port)).collect();
    let socket = topo.dir.join("admin.sock");
    let config = topo.dir.join("bench.toml");
    let extra = "max_client_connections = 20000\npool_max_idle = 200";
    targets::write_private(
        &config,
        &targets::config_text(
            &socket,
            Some(metrics),
            &[
                ClusterSpec {
                    name: "primary",
                    protocol: "postgres",
                    port: primary_only,
                    nodes: nodes[..1].to_vec(),
                    extra,
                },
                ClusterSpec { name: "split", protocol: "postgres", port: split, nodes: nodes.clone(), extra },
            ],
        ),
    )?;
    let mut daemon = targets::start_sqlswitch(sqlswitch, &config, split, &[])?;
    let mut bouncer_proc = match targets::pgbouncer_bin() {
        Some(bin) => Some(targets::start_pgbouncer(&bin, &topo.dir, bouncer, topo.primary().port, &[])?),
        None => {
            notes.push("PgBouncer is not installed (`apt-get install pgbouncer`): its column is empty.".into());
            None
        }
    };
    let mut haproxy_proc = match peers::haproxy_bin() {
        Some(bin) => Some(peers::start_haproxy(&bin, &topo.dir, "pg", haproxy, topo.primary().port)?),
        None => {
            notes.push("HAProxy is not installed (`apt-get install haproxy`): its column is empty.".into());
            None
        }
    };
    pgbench(&topo, topo.primary().port, &["-i", "-q", "-s", "10"])?;
    topo.wait_replicas_caught_up()?;
    // Pgpool-II serves at most `num_init_children` clients at once: the most pgbench opens, and
    // some to spare.
    let most_clients = list("BENCH_CLIENTS", "8,64").iter().filter_map(|c| c.parse::<usize>().ok()).max().unwrap_or(8);
    let mut pgpool_proc = match peers::pgpool_bin() {
        Some(bin) => Some(peers::start_pgpool(&bin, &topo.dir, pgpool, &nodes, most_clients.max(8) + 8)?),
        None => {
            notes.push("Pgpool-II is not installed (`apt-get install pgpool2`): its column is empty.".into());
            None
        }
    };
    let side = PgSide {
        topo: &topo,
        ports: [
            Some(topo.primary().port),
            haproxy_proc.as_ref().map(|_| haproxy),
            bouncer_proc.as_ref().map(|_| bouncer),
            pgpool_proc.as_ref().map(|_| pgpool),
            Some(primary_only),
            Some(split),
        ],
    };
    let t = opts.seconds.to_string();
    if opts.wants("pgbench") {
        for clients in list("BENCH_CLIENTS", "8,64") {
            for mode in list("BENCH_MODES", "simple,extended,prepared") {
                let (clients, mode) = (clients.as_str(), mode.as_str());
                let args = ["-S", "-M", mode, "-c", clients, "-j", "2", "-T", &t];
                rows.push(side.rounds(opts, &format!("pgbench -S -M {mode}, {clients} clients"), "tps", &args)?);
            }
        }
        let reads = measure::scrape(metrics)?;
        let routed: Vec<&str> = reads
            .lines()
            .filter(|l| {
                l.starts_with("sqlswitch_statements_total") && l.contains("cluster=\"split\"") && !l.ends_with(" 0")
            })
            .collect();
        notes.push(format!("split cluster, statements by target and reason: {}", routed.join("; ")));
    }
    if opts.wants("tpcb") {
        let args = ["-M", "prepared", "-c", "8", "-j", "2", "-T", &t];
        rows.push(side.rounds(opts, "pgbench TPC-B-like -M prepared, 8 clients", "tps", &args)?);
    }
    if opts.wants("connect") {
        let args = ["-S", "-C", "-c", "8", "-j", "2", "-T", &t];
        rows.push(side.rounds(opts, "connect + 1 query + disconnect (pgbench -S -C), 8 clients", "conn/s", &args)?);
    }
    if opts.wants("idle") {
        let mut values = [None; N];
        values[PRIMARY_ONLY] = Some(idle_bytes_per_conn(daemon.pid, primary_only, opts.idle_conns)?);
        if let Some(b) = &bouncer_proc {
            values[PGBOUNCER] = Some(idle_bytes_per_conn(b.pid, bouncer, opts.idle_conns)?);
        }
        rows.push(Row {
            workload: format!("memory per idle client connection ({} connections, RSS)", opts.idle_conns),
            unit: "bytes",
            values,
            by_round: Vec::new(),
            higher_is_better: false,
            note: String::new(),
        });
    }
    if opts.wants("syscalls") {
        let pids = [
            (HAPROXY, haproxy_proc.as_ref().map(|p| p.pid)),
            (PGBOUNCER, bouncer_proc.as_ref().map(|p| p.pid)),
            (PRIMARY_ONLY, Some(daemon.pid)),
        ];
        match side.spent_per_transaction(opts, &pids) {
            Ok(spent) => rows.extend(spent),
            Err(e) => notes.push(format!("system calls and context switches not counted: {e:#}")),
        }
    }
    for p in [bouncer_proc.as_mut(), haproxy_proc.as_mut(), pgpool_proc.as_mut()].into_iter().flatten() {
        p.stop();
    }
    if opts.wants("callgrind") {
        match callgrind_per_transaction(sqlswitch, &topo) {
            Ok(row) => rows.push(row),
            Err(e) => notes.push(format!("callgrind count skipped: {e:#}")),
        }
    }
    if opts.wants("switchover") {
        notes.push(switchover_stall(sqlswitch, &socket, &topo, split)?);
    }
    daemon.stop();
    topo.stop();
    Ok(())
}

impl PgSide<'_> {
    /// Runs pgbench `args` against every target, `opts.rounds` times in rotating order.
    fn rounds(&self, opts: &Options, workload: &str, unit: &'static str, args: &[&str]) -> Result<Row> {
        eprintln!("{workload}:");
        let mut samples: [Vec<f64>; N] = Default::default();
        let mut by_round = Vec::new();
        let mut failed = 0;
        let present: Vec<usize> = (0..N).filter(|&i| self.ports[i].is_some()).collect();
        for round in 0..opts.rounds {
            let mut line = format!("  round {}:", round + 1);
            let mut this = [None; N];
            for k in 0..present.len() {
                let i = present[(k + round as usize) % present.len()];
                let Some(port) = self.ports[i] else { continue };
                let out = pgbench(self.topo, port, args)?;
                failed += pgbench_failed(&out);
                let v = measure::pgbench_tps(&out)?;
                samples[i].push(v);
                this[i] = Some(v);
                line += &format!(" {}={v:.0}", report::TARGETS[i]);
            }
            by_round.push(this);
            eprintln!("{line}");
        }
        let values = std::array::from_fn(|i| (!samples[i].is_empty()).then(|| median(&samples[i])));
        let note = if failed > 0 { format!("{failed} failed transactions") } else { String::new() };
        Ok(Row { workload: workload.into(), unit, values, by_round, higher_is_better: true, note })
    }

    /// CPU time, system calls and context switches per forwarded `pgbench -S` transaction
    /// (simple protocol, 8 clients), of each relay process in `pids` (`(column, pid)`), counted
    /// by `perf stat` attached to the process over one run of `opts.seconds`.
    fn spent_per_transaction(&self, opts: &Options, pids: &[(usize, Option<u32>)]) -> Result<[Row; 3]> {
        let t = opts.seconds.to_string();
        let args = ["-S", "-M", "simple", "-c", "8", "-j", "2", "-T", &t];
        let mut per = [[None; N]; 3];
        for &(i, pid) in pids {
            let (Some(pid), Some(port)) = (pid, self.ports[i]) else { continue };
            eprintln!("perf stat: {} ...", report::TARGETS[i]);
            let (spent, out) = measure::perf_during(pid, || pgbench(self.topo, port, &args))?;
            let tx = measure::pgbench_transactions(&out)?;
            if tx > 0.0 {
                per[0][i] = Some(spent.cpu_ms * 1000.0 / tx);
                per[1][i] = Some(spent.syscalls / tx);
                per[2][i] = Some(spent.switches / tx);
            }
        }
        let row = |workload: &str, unit: &'static str, values| Row {
            workload: format!("{workload} per forwarded pgbench -S transaction, 8 clients (perf stat on the relay)"),
            unit,
            values,
            by_round: Vec::new(),
            higher_is_better: false,
            note: String::new(),
        };
        Ok([
            row("relay CPU (user + system)", "µs", per[0]),
            row("relay system calls", "calls", per[1]),
            row("relay context switches", "switches", per[2]),
        ])
    }
}

/// Opens `n` idle, authenticated client connections to `port` and returns the growth of `pid`'s
/// resident memory divided by `n`.
fn idle_bytes_per_conn(pid: u32, port: u16, n: usize) -> Result<f64> {
    use futures::StreamExt;
    eprintln!("memory: {n} idle connections to port {port}...");
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let conn_str = sqlswitch_tests::proxy::conn_str(port, sqlswitch_tests::pg::APP);
        // Warm up (pools, allocator arenas) before the baseline.
        let mut warm = Vec::new();
        for _ in 0..16 {
            warm.push(connect(&conn_str).await?);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = measure::rss_bytes(pid)?;
        let clients: Vec<_> = futures::stream::iter(0..n)
            .map(|_| connect(&conn_str))
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_>>()?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = measure::rss_bytes(pid)?;
        drop(clients);
        drop(warm);
        #[allow(clippy::cast_precision_loss)]
        Ok((after.saturating_sub(before)) as f64 / n as f64)
    })
}

async fn connect(conn_str: &str) -> Result<tokio_postgres::Client> {
    let login = tokio_postgres::connect(conn_str, tokio_postgres::NoTls);
    let (client, conn) = tokio::time::timeout(Duration::from_secs(30), login)
        .await
        .context("no answer to a login within 30 s (file-descriptor limit?)")??;
    tokio::spawn(conn);
    Ok(client)
}

/// User-space instructions per forwarded `pgbench -S` transaction, for sqlswitch (primary-only)
/// and PgBouncer: two runs under callgrind with different transaction counts, the difference
/// divided by the difference. Repeatable on a noisy machine, unlike seconds.
fn callgrind_per_transaction(sqlswitch: &Path, topo: &Topology) -> Result<Row> {
    if Command::new("valgrind").arg("--version").output().is_err() {
        bail!("valgrind is not installed");
    }
    let mut values = [None; N];
    let all: Vec<(String, u16)> = topo.nodes.iter().map(|n| (n.name.clone(), n.port)).collect();
    // Primary-only (the relay's own cost), then splitting (the classifier and routing included,
    // reads sent to the replicas).
    for (column, name, nodes) in
        [(PRIMARY_ONLY, "sqlswitch", all[..1].to_vec()), (SPLIT, "sqlswitch-split", all.clone())]
    {
        values[column] = Some(per_transaction(topo, name, |port, wrapper| {
            let config = topo.dir.join(format!("callgrind-{name}.toml"));
            let socket = topo.dir.join(format!("callgrind-{name}.sock"));
            // Splitting needs the monitor's replica positions: it checks once a second (its
            // per-second work spreads over the run's transactions; the primary-only run does
            // without).
            let extra = if column == SPLIT { "monitor_interval = \"1s\"" } else { "monitor_interval = \"1h\"" };
            let spec = ClusterSpec { name: "cg", protocol: "postgres", port, nodes: nodes.clone(), extra };
            targets::write_private(&config, &targets::config_text(&socket, None, &[spec]))?;
            targets::start_sqlswitch(sqlswitch, &config, port, wrapper)
        })?);
    }
    if let Some(bin) = targets::pgbouncer_bin() {
        values[PGBOUNCER] = Some(per_transaction(topo, "pgbouncer", |port, wrapper| {
            targets::start_pgbouncer(&bin, &topo.dir, port, topo.primary().port, wrapper)
        })?);
    }
    Ok(Row {
        workload:
            "user-space instructions per forwarded pgbench -S transaction (callgrind; split: reads to the replicas)"
                .into(),
        unit: "instr",
        values,
        by_round: Vec::new(),
        higher_is_better: false,
        note: String::new(),
    })
}

fn per_transaction(
    topo: &Topology,
    name: &str,
    start: impl Fn(u16, &[&str]) -> Result<targets::Process>,
) -> Result<f64> {
    let (few, many) = (1000u64, 4000u64);
    let mut totals = Vec::new();
    for n in [few, many] {
        eprintln!("callgrind: {name}, {n} transactions...");
        let port = free_ports(1)?[0];
        let out = topo.dir.join(format!("callgrind.{name}.{n}.out"));
        // Callgrind creates its output as the user it starts as; PgBouncer then becomes
        // `postgres` and must still be able to write it at exit.
        std::fs::write(&out, "")?;
        if sqlswitch_tests::pg::is_root() {
            sqlswitch_tests::pg::run(Command::new("chown").arg("postgres").arg(&out))?;
        }
        let out_arg = format!("--callgrind-out-file={}", out.display());
        let mut proc = start(port, &["valgrind", "--tool=callgrind", &out_arg])?;
        pgbench(topo, port, &["-S", "-M", "simple", "-c", "1", "-t", &n.to_string()])?;
        proc.stop();
        totals.push(callgrind_total(&out)?);
    }
    #[allow(clippy::cast_precision_loss)]
    Ok((totals[1].saturating_sub(totals[0])) as f64 / (many - few) as f64)
}

fn callgrind_total(path: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("summary:").or_else(|| l.strip_prefix("totals:")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no summary line in the callgrind output")
}

/// A switchover under TPC-B-like load: the longest any transaction took is the stall a
/// client saw. Every transaction's latency is drawn across the switchover, its steps marked
/// (`benches/switchover-latency.png`).
fn switchover_stall(sqlswitch: &Path, socket: &Path, topo: &Topology, port: u16) -> Result<String> {
    eprintln!("switchover under load...");
    let log_prefix = topo.dir.join("tpcb");
    let (report, switched, launched) = std::thread::scope(|scope| -> Result<(String, String, f64)> {
        let load = scope.spawn(|| {
            let prefix = format!("--log-prefix={}", log_prefix.display());
            pgbench(topo, port, &["-c", "8", "-j", "2", "-T", "8", "-l", &prefix])
        });
        std::thread::sleep(Duration::from_secs(3));
        let launched = epoch_seconds();
        let out = Command::new(sqlswitch)
            .args(["ctl", "--json", "--socket"])
            .arg(socket)
            .args(["switchover", "split", "replica1", "promote"])
            .output()?;
        let switched = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("").to_owned();
        let report = load.join().map_err(|_| anyhow::anyhow!("pgbench thread panicked"))??;
        Ok((report, switched, launched))
    })?;
    let transactions = transactions(&topo.dir)?;
    let stall_us = transactions.iter().map(|(_, us)| *us).max().unwrap_or(0);
    let chart = match draw_switchover(&transactions, &switched, launched, &topo.dir) {
        Ok(()) => {
            "; every transaction's latency across it: [switchover-latency.png](switchover-latency.png)".to_owned()
        }
        Err(e) => format!("; no chart: {e:#}"),
    };
    #[allow(clippy::cast_precision_loss)]
    Ok(format!(
        "switchover under pgbench TPC-B-like load (8 clients, split cluster): {} failed transactions, longest \
         transaction (the stall a client saw) {:.1} ms; the switchover reported: `{switched}`{chart}",
        pgbench_failed(&report),
        stall_us as f64 / 1000.0
    ))
}

/// Seconds since the epoch, now.
fn epoch_seconds() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Every transaction in pgbench's `-l` logs under `dir`: its start (epoch seconds) and its
/// latency in microseconds.
fn transactions(dir: &Path) -> Result<Vec<(f64, u64)>> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("tpcb")) {
            for line in std::fs::read_to_string(&path)?.lines() {
                // client_id transaction_no time_us script_no epoch epoch_us
                let f: Vec<&str> = line.split_whitespace().collect();
                let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
                if let (Some(us), Some(secs), Some(micros)) = (num(2), num(4), num(5)) {
                    #[allow(clippy::cast_precision_loss)]
                    let end = secs as f64 + micros as f64 / 1e6;
                    #[allow(clippy::cast_precision_loss)]
                    all.push((end - us as f64 / 1e6, us));
                }
            }
        }
    }
    Ok(all)
}

/// Draws the transactions and the switchover's steps (from its JSON answer, started at
/// `launched`) to `benches/switchover-latency.png`.
fn draw_switchover(transactions: &[(f64, u64)], switched: &str, launched: f64, dir: &Path) -> Result<()> {
    let t0 = transactions.iter().map(|(t, _)| *t).fold(f64::INFINITY, f64::min);
    #[allow(clippy::cast_precision_loss)]
    let points: Vec<(f64, f64)> = transactions.iter().map(|(t, us)| (t - t0, *us as f64 / 1000.0)).collect();
    let answer: serde_json::Value = serde_json::from_str(switched).context("the switchover's answer")?;
    let mut at = launched - t0;
    let mut steps = Vec::new();
    for step in answer["steps"].as_array().into_iter().flatten() {
        at += step["ms"].as_f64().unwrap_or(0.0) / 1000.0;
        steps.push((step["step"].as_str().unwrap_or("?").to_owned(), at));
    }
    let png = Path::new(env!("CARGO_MANIFEST_DIR")).join("switchover-latency.png");
    sqlswitch_benches::charts::switchover_latency(&points, &steps, &dir.join("switchover.dat"), &png)
}

fn mysql_suite(opts: &Options, sqlswitch: &Path, rows: &mut Vec<Row>, notes: &mut Vec<String>) -> Result<()> {
    if Command::new("sysbench").arg("--version").output().is_err() {
        bail!("sysbench is not installed (apt-get install sysbench)");
    }
    eprintln!("starting MariaDB (primary + 2 replicas)...");
    let topo = sqlswitch_tests::mysql::Topology::start(2)?;
    let p = free_ports(3)?;
    let nodes: Vec<(String, u16)> = topo.nodes.iter().map(|n| (n.name.clone(), n.port)).collect();
    let config = topo.dir.join("bench.toml");
    let socket = topo.dir.join("admin.sock");
    let extra = "max_client_connections = 20000";
    targets::write_private(
        &config,
        &targets::config_text(
            &socket,
            None,
            &[
                ClusterSpec { name: "my-primary", protocol: "mysql", port: p[0], nodes: nodes[..1].to_vec(), extra },
                ClusterSpec { name: "my-split", protocol: "mysql", port: p[1], nodes, extra },
            ],
        ),
    )?;
    let mut daemon = targets::start_sqlswitch(sqlswitch, &config, p[1], &[])?;
    let mut haproxy = match peers::haproxy_bin() {
        Some(bin) => Some(peers::start_haproxy(&bin, &topo.dir, "mariadb", p[2], topo.primary().port)?),
        None => {
            notes.push("HAProxy is not installed (`apt-get install haproxy`): no MariaDB floor.".into());
            None
        }
    };
    let mut ports = [None; N];
    ports[DIRECT] = Some(topo.primary().port);
    ports[HAPROXY] = haproxy.as_ref().map(|_| p[2]);
    ports[PRIMARY_ONLY] = Some(p[0]);
    ports[SPLIT] = Some(p[1]);
    let sysbench = |workload: &str, port: u16, extra: &[String]| -> Result<String> {
        let mut cmd = Command::new("sysbench");
        cmd.args([workload, "--db-driver=mysql", "--mysql-host=127.0.0.1", "--mysql-db=app"])
            .args(["--mysql-user=app", "--mysql-password=app", "--tables=8", "--table-size=10000"])
            .arg(format!("--mysql-port={port}"))
            .args(extra);
        let out = cmd.output().context("running sysbench")?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            bail!("sysbench {workload} on {port} failed:\n{text}");
        }
        Ok(text)
    };
    sysbench("oltp_read_write", topo.primary().port, &["prepare".into()])?;
    topo.wait_replicas_caught_up()?;
    let run = ["--threads=8".to_owned(), format!("--time={}", opts.seconds), "run".to_owned()];
    for workload in ["oltp_read_only", "oltp_read_write"] {
        eprintln!("sysbench {workload}:");
        let mut samples: [Vec<f64>; N] = Default::default();
        let mut by_round = Vec::new();
        let mut errors = 0;
        let present: Vec<usize> = (0..N).filter(|&i| ports[i].is_some()).collect();
        for round in 0..opts.rounds {
            let mut line = format!("  round {}:", round + 1);
            let mut this = [None; N];
            for k in 0..present.len() {
                let i = present[(k + round as usize) % present.len()];
                let Some(port) = ports[i] else { continue };
                let (tps, e) = measure::sysbench_tps(&sysbench(workload, port, &run)?)?;
                errors += e;
                samples[i].push(tps);
                this[i] = Some(tps);
                line += &format!(" {}={tps:.0}", report::TARGETS[i]);
            }
            by_round.push(this);
            eprintln!("{line}");
        }
        let values = std::array::from_fn(|i| (!samples[i].is_empty()).then(|| median(&samples[i])));
        let note = if errors > 0 { format!("{errors} ignored errors") } else { String::new() };
        rows.push(Row {
            workload: format!("sysbench {workload}, 8 threads (MariaDB)"),
            unit: "tps",
            values,
            by_round,
            higher_is_better: true,
            note,
        });
    }
    if let Some(h) = haproxy.as_mut() {
        h.stop();
    }
    daemon.stop();
    drop(topo);
    Ok(())
}
