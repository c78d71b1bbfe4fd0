//! Reading figures: pgbench and sysbench reports, process memory, Prometheus text, medians.

use anyhow::{Context, Result};

/// `tps = N` from a pgbench report.
///
/// # Errors
/// No such line.
pub fn pgbench_tps(report: &str) -> Result<f64> {
    report
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.trim_start_matches("tps = ").split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no tps line in:\n{report}"))
}

/// `(transactions per second, errors)` from a sysbench report.
///
/// # Errors
/// No transactions line.
pub fn sysbench_tps(report: &str) -> Result<(f64, u64)> {
    let per_sec = |key: &str| {
        report.lines().find(|l| l.trim_start().starts_with(key)).and_then(|l| {
            let open = l.find('(')?;
            l[open + 1..].split_whitespace().next()?.parse::<f64>().ok()
        })
    };
    let tps = per_sec("transactions:").with_context(|| format!("no transactions line in:\n{report}"))?;
    let errors = report
        .lines()
        .find(|l| l.trim_start().starts_with("ignored errors:"))
        .and_then(|l| l.split(':').nth(1)?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Ok((tps, errors))
}

/// Resident memory of `pid` in bytes (`VmRSS`).
///
/// # Errors
/// The process is gone.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .context("no VmRSS")
}

/// The median (upper median for an even count); 0 for none.
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The daemon's `/metrics` text.
///
/// # Errors
/// The endpoint did not answer.
pub fn scrape(port: u16) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// The machine and software the figures came from.
pub fn machine() -> String {
    let cmd = |c: &str, args: &[&str]| {
        std::process::Command::new(c)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "not found".into())
    };
    let postgres =
        sqlswitch_tests::pg::find_bin().map(|b| b.join("postgres").display().to_string()).unwrap_or_default();
    let pgbouncer = crate::targets::pgbouncer_bin().map(|b| b.display().to_string()).unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let sysbench = format!("sysbench {}", cmd("sysbench", &["--version"]).trim_start_matches("sysbench "));
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "- machine: {cores} cores ({cpu}), load average at start {}\n- {}\n- {}\n- {}\n- {}\n- sqlswitch {} ({})\n- date: {}\n",
        load.join(" "),
        cmd(&postgres, &["--version"]),
        cmd(&pgbouncer, &["--version"]),
        cmd("mariadbd", &["--version"]),
        sysbench,
        env!("CARGO_PKG_VERSION"),
        cmd("git", &["rev-parse", "--short", "HEAD"]),
        cmd("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
    )
}
