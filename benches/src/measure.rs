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

/// `number of transactions actually processed: N` from a pgbench report.
///
/// # Errors
/// No such line.
pub fn pgbench_transactions(report: &str) -> Result<f64> {
    report
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed:"))
        .and_then(|v| v.trim().split(['/', ' ']).next()?.parse().ok())
        .with_context(|| format!("no transaction count in:\n{report}"))
}

/// What a process spent over a span, from `perf stat` attached to all its threads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spent {
    /// CPU time, user and system (`task-clock`), in milliseconds.
    pub cpu_ms: f64,
    /// System calls entered (`raw_syscalls:sys_enter`).
    pub syscalls: f64,
    /// Context switches (`context-switches`).
    pub switches: f64,
}

/// The events `perf stat` counts for [`Spent`].
const PERF_EVENTS: &str = "task-clock,raw_syscalls:sys_enter,context-switches";

/// Runs `work` with `perf stat` attached to `pid`, and returns what `pid` spent meanwhile.
///
/// # Errors
/// perf is missing or may not count (not root, or the kernel's tracepoints are off), or `work`
/// failed.
pub fn perf_during<T>(pid: u32, work: impl FnOnce() -> Result<T>) -> Result<(Spent, T)> {
    use std::process::{Command, Stdio};
    let out = std::env::temp_dir().join(format!("sqlswitch-bench-perf-{pid}.csv"));
    let mut perf = Command::new("perf")
        .args(["stat", "-x", ",", "-e", PERF_EVENTS, "-o"])
        .arg(&out)
        .args(["-p", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("perf is not installed (apt-get install linux-perf)")?;
    // perf attaches to every thread before it counts.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let result = work();
    let _ = Command::new("kill").args(["-INT", &perf.id().to_string()]).status();
    perf.wait()?;
    let text = std::fs::read_to_string(&out).with_context(|| format!("perf wrote no {}", out.display()))?;
    let _ = std::fs::remove_file(&out);
    Ok((parse_perf(&text)?, result?))
}

/// [`Spent`] from `perf stat -x ,` output.
///
/// # Errors
/// An event is missing or was not counted.
pub fn parse_perf(text: &str) -> Result<Spent> {
    let event = |name: &str| -> Result<f64> {
        text.lines()
            .find(|l| l.split(',').nth(2) == Some(name))
            .and_then(|l| l.split(',').next()?.trim().parse().ok())
            .with_context(|| {
                format!("perf did not count {name} (root, and the kernel's tracepoints, are needed):\n{text}")
            })
    };
    Ok(Spent {
        cpu_ms: event("task-clock")?,
        syscalls: event("raw_syscalls:sys_enter")?,
        switches: event("context-switches")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_output_is_read() {
        let text = "# started on Wed Dec  2 06:40:00 2026\n\n\
                    1503.25,msec,task-clock,1503250000,100.00,0.751,CPUs utilized\n\
                    120034,,raw_syscalls:sys_enter,1503250000,100.00,,\n\
                    3301,,context-switches,1503250000,100.00,2.196,K/sec\n";
        let s = parse_perf(text).expect("parsed");
        assert_eq!(s, Spent { cpu_ms: 1503.25, syscalls: 120_034.0, switches: 3301.0 });
        let uncounted = "<not counted>,,raw_syscalls:sys_enter,0,0.00,,\n1.0,msec,task-clock,1,100.00,,\n";
        assert!(parse_perf(uncounted).is_err());
    }

    #[test]
    fn pgbench_transaction_count() {
        let report = "scaling factor: 10\nnumber of transactions actually processed: 148765\ntps = 29753.0\n";
        assert!((pgbench_transactions(report).expect("count") - 148_765.0).abs() < f64::EPSILON);
        let fixed = "number of transactions actually processed: 1000/1000\n";
        assert!((pgbench_transactions(fixed).expect("count") - 1000.0).abs() < f64::EPSILON);
    }
}
