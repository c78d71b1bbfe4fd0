//! `loadbench` (run by `scripts/bench`): real PostgreSQL primary and replicas, the release
//! `sqlswitch` binary in front, and `pgbench` against both, alternating A/B rounds so that both
//! see the same machine. Prints every round, the medians and the ratio proxy/direct.
//!
//! Then it switches the primary over under TPC-B-like load and prints the longest transaction
//! (the stall a client saw), the failed transactions and the switchover's own report.
//!
//! Options (environment): `BENCH_SECONDS` per round (default 10), `BENCH_ROUNDS` (default 3),
//! `BENCH_CLIENTS` (default 8).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sqlswitch_tests::pg::{free_ports, pgbench, Topology};
use sqlswitch_tests::proxy::config_text;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> Result<()> {
    let seconds = env_num("BENCH_SECONDS", 10);
    let rounds = env_num("BENCH_ROUNDS", 3);
    let clients = env_num("BENCH_CLIENTS", 8);
    let sqlswitch = std::env::current_exe()?.parent().context("no parent")?.join("sqlswitch");
    if !sqlswitch.exists() {
        bail!("{} not found: build it with `cargo build --release -p sqlswitch`", sqlswitch.display());
    }
    eprintln!("starting PostgreSQL (primary + 2 replicas)...");
    let topo = Topology::start(2)?;
    let ports = free_ports(2)?;
    let (port, metrics_port) = (ports[0], ports[1]);
    let listen = format!("127.0.0.1:{port}");
    let metrics = format!("127.0.0.1:{metrics_port}");
    let config = topo.dir.join("bench.toml");
    let socket = topo.dir.join("admin.sock");
    let text = config_text(&topo, "bench", &listen, "127.0.0.1:0", Some(&metrics), "")
        .replace("/tmp/sqlswitch-test.sock", &socket.display().to_string());
    std::fs::write(&config, text)?;
    let mut daemon = Daemon(
        Command::new(&sqlswitch)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()?,
    );
    std::thread::sleep(Duration::from_millis(500));
    let primary = topo.primary().port;
    pgbench(&topo, primary, &["-i", "-q", "-s", "10"])?;

    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    println!("pgbench -S -M simple, {clients} clients, {seconds} s per round, {rounds} rounds, {cores} cores");
    println!("{:<8} {:>14} {:>14}", "round", "direct TPS", "sqlswitch TPS");
    let (mut direct, mut proxied) = (Vec::new(), Vec::new());
    let c = clients.to_string();
    let t = seconds.to_string();
    let args = ["-S", "-M", "simple", "-c", &c, "-j", "2", "-T", &t];
    for round in 1..=rounds {
        direct.push(tps(&pgbench(&topo, primary, &args)?)?);
        proxied.push(tps(&pgbench(&topo, port, &args)?)?);
        println!("{round:<8} {:>14.0} {:>14.0}", direct[direct.len() - 1], proxied[proxied.len() - 1]);
    }
    let (d, p) = (median(&mut direct), median(&mut proxied));
    println!("{:<8} {d:>14.0} {p:>14.0}", "median");
    println!("ratio sqlswitch/direct: {:.2}", p / d);
    println!("statements routed through sqlswitch (target, reason: count):");
    for line in scrape(&metrics)?.lines().filter(|l| l.starts_with("sqlswitch_statements_total") && !l.ends_with(" 0"))
    {
        println!("  {line}");
    }

    // A switchover under TPC-B-like load: the longest any transaction took is the stall a
    // client saw.
    println!("\nswitchover under pgbench TPC-B-like load, {clients} clients:");
    let log_prefix = topo.dir.join("tpcb");
    let load_topo = &topo;
    let (report, switched) = std::thread::scope(|scope| -> Result<(String, String)> {
        let load = scope.spawn(|| {
            let prefix = format!("--log-prefix={}", log_prefix.display());
            pgbench(load_topo, port, &["-c", &c, "-j", "2", "-T", "8", "-l", &prefix])
        });
        std::thread::sleep(Duration::from_secs(3));
        let out = Command::new(&sqlswitch)
            .args(["ctl", "--json", "--socket"])
            .arg(&socket)
            .args(["switchover", "bench", "replica1", "promote"])
            .output()?;
        let switched = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("").to_owned();
        let report = load.join().map_err(|_| anyhow::anyhow!("pgbench thread panicked"))??;
        Ok((report, switched))
    })?;
    let failed = report
        .lines()
        .find(|l| l.starts_with("number of failed transactions"))
        .unwrap_or("number of failed transactions: ?");
    let stall_us = longest_latency(&topo.dir)?;
    println!("  {failed}");
    println!("  longest transaction (client-visible stall): {:.1} ms", stall_us as f64 / 1000.0);
    println!("  switchover: {switched}");
    daemon.stop();
    topo.stop();
    Ok(())
}

/// The largest per-transaction latency in pgbench's `-l` logs under `dir`, in microseconds.
fn longest_latency(dir: &std::path::Path) -> Result<u64> {
    let mut longest = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("tpcb")) {
            for line in std::fs::read_to_string(&path)?.lines() {
                // client_id transaction_no time_us script_no epoch epoch_us
                if let Some(us) = line.split_whitespace().nth(2).and_then(|v| v.parse::<u64>().ok()) {
                    longest = longest.max(us);
                }
            }
        }
    }
    Ok(longest)
}

/// The proxy process, stopped on drop.
struct Daemon(Child);

impl Daemon {
    fn stop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
            let _ = self.0.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The proxy's `/metrics` text.
fn scrape(addr: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

fn tps(report: &str) -> Result<f64> {
    report
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.trim_start_matches("tps = ").split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no tps line in:\n{report}"))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
