//! Charts people would rather look at than read, drawn by gnuplot (Debian's `gnuplot-nox`,
//! installed by `scripts/bench` when root) next to `benches/RESULTS.md`: the client-visible
//! latency of every transaction across a switchover under load, with the switchover's steps
//! marked, and the TPS ratios of the table as bars. Without gnuplot the suite says so and
//! draws nothing.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::report::{Row, DIRECT, PGBOUNCER, PRIMARY_ONLY, SPLIT};

/// Runs `script` through gnuplot.
fn gnuplot(script: &str) -> Result<()> {
    let mut child = Command::new("gnuplot")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("gnuplot is not installed (apt-get install gnuplot-nox): no charts")?;
    child.stdin.take().context("gnuplot's input")?.write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("gnuplot failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A gnuplot string literal.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Each transaction as a point (`(start in seconds, latency in ms)`) across a switchover whose
/// steps ended at the given times (seconds, same origin), to `png`; `data` is a scratch file.
///
/// # Errors
/// gnuplot is missing or failed, or a file could not be written.
pub fn switchover_latency(points: &[(f64, f64)], steps: &[(String, f64)], data: &Path, png: &Path) -> Result<()> {
    let mut text = String::with_capacity(points.len() * 16);
    for (t, ms) in points {
        text.push_str(&format!("{t:.6} {ms:.3}\n"));
    }
    std::fs::write(data, text)?;
    let mut script = format!(
        "set terminal pngcairo size 1200,600 font ',10' noenhanced\nset output {}\n\
         set title 'Client-visible latency of each pgbench TPC-B-like transaction across a switchover (8 clients)'\n\
         set xlabel 'seconds since the load started (transaction start)'\nset ylabel 'latency (ms, log scale)'\n\
         set logscale y\nset grid\nset key top left\n",
        quoted(&png.display().to_string())
    );
    // The switchover's span shaded, and its steps listed with their durations (they take
    // milliseconds: at this scale their lines would sit on each other).
    let mut listed = Vec::new();
    let mut previous = None;
    for (name, at) in steps {
        let took = previous.map_or(0.0, |p: f64| (at - p) * 1000.0);
        listed.push(format!("{name} {took:.1} ms"));
        previous = Some(*at);
    }
    if let (Some((_, first)), Some((_, last))) = (steps.first(), steps.last()) {
        script.push_str(&format!(
            "set object 1 rect from {first:.6}, graph 0 to {:.6}, graph 1 fc rgb '#cc4444' fs transparent solid 0.25 noborder behind\n\
             set arrow from {first:.6}, graph 0 to {first:.6}, graph 1 nohead lc rgb '#cc4444' dt 2\n\
             set label {} at graph 0.99, graph 0.95 right tc rgb '#cc4444'\n",
            last.max(first + 0.01),
            quoted(&format!("switchover steps: {}", listed.join(", ")))
        ));
    }
    script.push_str(&format!(
        "plot {} using 1:2 with points pt 7 ps 0.3 lc rgb '#3366aa' title 'one transaction'\n",
        quoted(&data.display().to_string())
    ));
    gnuplot(&script)
}

/// The table's TPS rows as grouped bars of their ratios (primary-only / direct,
/// primary-only / PgBouncer, split / direct), to `png`; `data` is a scratch file. `None` when
/// no row is a TPS row.
///
/// # Errors
/// gnuplot is missing or failed, or a file could not be written.
pub fn tps_ratios(rows: &[Row], data: &Path, png: &Path) -> Result<Option<()>> {
    let mut text = String::new();
    for r in rows.iter().filter(|r| r.unit == "tps") {
        let v = |a, b| r.ratio_value(a, b).map_or("-".to_owned(), |x| format!("{x:.3}"));
        text.push_str(&format!(
            "{} {} {} {}\n",
            quoted(&r.workload),
            v(PRIMARY_ONLY, DIRECT),
            v(PRIMARY_ONLY, PGBOUNCER),
            v(SPLIT, DIRECT)
        ));
    }
    if text.is_empty() {
        return Ok(None);
    }
    let highest = rows
        .iter()
        .filter(|r| r.unit == "tps")
        .flat_map(|r| {
            [r.ratio_value(PRIMARY_ONLY, DIRECT), r.ratio_value(PRIMARY_ONLY, PGBOUNCER), r.ratio_value(SPLIT, DIRECT)]
        })
        .flatten()
        .fold(1.0f64, f64::max);
    std::fs::write(data, text)?;
    let file = quoted(&data.display().to_string());
    let script = format!(
        "set terminal pngcairo size 1200,600 font ',10' noenhanced\nset output {}\n\
         set title 'TPS ratios, medians of the within-round ratios (1.0 = parity)'\n\
         set style data histograms\nset style histogram clustered gap 1\nset style fill solid 0.8 border -1\n\
         set datafile missing '-'\nset yrange [0:{:.2}]\nset grid ytics\nset xtics rotate by -25\n\
         set key outside top center horizontal\nset bmargin 8\n\
         set arrow from graph 0, first 1 to graph 1, first 1 nohead dt 2\n\
         plot {file} using 2:xtic(1) title 'sqlswitch primary-only / direct', \
         '' using 3 title 'sqlswitch primary-only / PgBouncer', '' using 4 title 'sqlswitch split / direct'\n",
        quoted(&png.display().to_string()),
        highest * 1.15
    );
    gnuplot(&script).map(Some)
}
