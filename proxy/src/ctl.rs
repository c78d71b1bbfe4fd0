//! `sqlswitch ctl`, the admin socket's client: sends one command, prints the answer for people
//! (or as JSON), and `status --watch`, a live view refreshed every second.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::OwnedReadHalf;
use tokio::net::UnixStream;

/// `println!` for `sqlswitch ctl`, which must not panic when its reader goes away
/// (`sqlswitch ctl status | head`): a closed pipe ends the output quietly.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `sqlswitch ctl`: sends `command` to the daemon at `socket` and prints the answer (and a
/// switchover's steps as they complete). Returns whether the daemon answered `ok`.
///
/// # Errors
/// The socket could not be reached.
pub async fn ctl(socket: &Path, command: &str, json_output: bool) -> anyhow::Result<bool> {
    let mut lines = send(socket, command).await?;
    while let Some(line) = lines.next_line().await? {
        let value: Value = serde_json::from_str(&line)?;
        if json_output {
            out!("{line}");
        } else {
            print_pretty(&value);
        }
        if let Some(ok) = value.get("ok").and_then(Value::as_bool) {
            return Ok(ok);
        }
    }
    anyhow::bail!(NO_ANSWER)
}

/// What the daemon closing the admin connection before its answer is called.
const NO_ANSWER: &str = "the daemon closed the admin connection without an answer";

/// Sends `command` to the daemon at `socket`; the answer's lines.
async fn send(socket: &Path, command: &str) -> anyhow::Result<Lines<BufReader<OwnedReadHalf>>> {
    let stream = UnixStream::connect(socket).await.map_err(|e| {
        anyhow::anyhow!("cannot reach the admin socket {}: {e} (is sqlswitch running?)", socket.display())
    })?;
    let (read, mut write) = stream.into_split();
    write.write_all(format!("{command}\n").as_bytes()).await?;
    Ok(BufReader::new(read).lines())
}

fn print_pretty(v: &Value) {
    if let Some(p) = v.get("progress") {
        out!(
            "  {:<12} {:>9.1} ms  {}",
            p["step"].as_str().unwrap_or(""),
            p["ms"].as_f64().unwrap_or(0.0),
            p["detail"].as_str().unwrap_or("")
        );
        return;
    }
    if v["ok"] == false {
        out!("error: {}", v["error"].as_str().unwrap_or("unknown"));
        return;
    }
    if v.get("clusters").is_some() {
        for line in status_lines(v, None) {
            out!("{line}");
        }
        return;
    }
    if let Some(findings) = v.get("findings").and_then(Value::as_array) {
        out!(
            "upgrade-check {} -> {}: {} blocking finding(s)",
            v["from"].as_str().unwrap_or(""),
            v["to"].as_str().unwrap_or(""),
            v["blocking"]
        );
        for f in findings {
            let todo = f["do"].as_str().filter(|t| !t.is_empty()).map(|t| format!(" -> {t}")).unwrap_or_default();
            out!("  {:<8} {}{todo}", f["level"].as_str().unwrap_or(""), f["what"].as_str().unwrap_or(""));
        }
        return;
    }
    if let Some(clusters) = v.get("reloaded").and_then(Value::as_array) {
        out!("config reloaded");
        for c in clusters {
            let changes: Vec<&str> = c["changes"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            let what = if changes.is_empty() { "no change".to_owned() } else { changes.join("; ") };
            out!("  cluster {} (routing generation {}): {what}", c["cluster"].as_str().unwrap_or(""), c["generation"]);
        }
        return;
    }
    if v.get("steps").is_some() {
        let (cluster, from, to) =
            (v["cluster"].as_str().unwrap_or(""), v["from"].as_str().unwrap_or(""), v["to"].as_str().unwrap_or(""));
        if v.get("possible_loss").is_some() {
            out!(
                "failed over {cluster} from {from} to {to}: routing generation {}; {to} is at least {} {} behind {from}'s last known position",
                v["generation"],
                v["possible_loss"],
                v["possible_loss_unit"].as_str().unwrap_or("")
            );
        } else {
            out!(
                "switched {cluster} from {from} to {to}: clients paused {} ms, {} statement(s) held, routing generation {}",
                v["pause_ms"],
                v["held"],
                v["generation"]
            );
        }
        if let Some(detail) = v.get("reverse").and_then(|r| r.get("detail")).and_then(Value::as_str) {
            out!("  way back: {detail}");
        }
        for r in v["replicas"].as_array().into_iter().flatten() {
            let mark = if r["ok"] == true { "ok " } else { "NOT" };
            out!("  {mark} {}: {}", r["backend"].as_str().unwrap_or(""), r["detail"].as_str().unwrap_or(""));
        }
        return;
    }
    let mut fields: Vec<String> = Vec::new();
    if let Some(obj) = v.as_object() {
        for (k, val) in obj {
            if k != "ok" && !(k == "fleet" && val.is_null()) {
                let text = if k == "fleet" {
                    // mode, drain and the like in fleet mode: who applied the change, how soon.
                    format!(
                        "applied by {}/{} instances in {:.1} ms (fleet generation {})",
                        val["applied_by"],
                        val["instances"],
                        val["propagation_ms"].as_f64().unwrap_or(0.0),
                        val["generation"]
                    )
                } else {
                    val.as_str().map_or_else(|| val.to_string(), str::to_owned)
                };
                fields.push(format!("{k}={text}"));
            }
        }
    }
    out!("ok {}", fields.join(" "));
}

/// Per backend (by cluster and name): what it did since the previous view.
type Rates = HashMap<(String, String), Rate>;

/// What a backend did between two views.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rate {
    /// Statements per second.
    per_second: f64,
    /// Latency quantiles (the upper bound of the bucket they fall in, ms); `None` when nothing
    /// was answered.
    p50: Option<f64>,
    p99: Option<f64>,
}

/// Per backend (by cluster and name): statements sent to it so far, and answers per latency
/// bucket.
type Counts = HashMap<(String, String), (u64, Vec<u64>)>;

/// The `q` quantile of the answers counted in `buckets` (per bucket, the last one unbounded):
/// the upper bound of the bucket it falls in, in ms (infinite for the last).
fn quantile(buckets: &[u64], bounds_ms: &[f64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(bounds_ms.get(i).copied().unwrap_or(f64::INFINITY));
        }
    }
    Some(f64::INFINITY)
}

/// Fleet mode: this instance, the change in progress, and every instance with the generation
/// it applies and its lease time left.
fn fleet_lines(f: &Value, lines: &mut Vec<String>) {
    if f.is_null() {
        return;
    }
    lines.push(format!(
        "  fleet: instance {}  generation {}  {}  lease {:.1} s left",
        f["instance"].as_str().unwrap_or(""),
        f["generation"],
        if f["fenced"] == true { "FENCED (writes refused)" } else { "active" },
        f["lease_left_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
    ));
    if let Some(c) = f["change"].as_object() {
        let text = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        lines.push(format!(
            "  fleet change: {} {} -> {} by {}, step {}{}",
            text("kind"),
            text("from"),
            text("target"),
            text("by"),
            text("step"),
            if f["lock"].is_null() { " (its driver is gone: being resolved)" } else { "" }
        ));
    }
    for i in f["instances"].as_array().into_iter().flatten() {
        lines.push(format!(
            "    {:<24} generation {:<6} {:<7} lease {:.1} s left",
            i["name"].as_str().unwrap_or(""),
            i["generation"],
            if i["fenced"] == true { "fenced" } else { "active" },
            i["lease_left_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
        ));
    }
}

/// The `status` answer as lines of text; with `rates`, a statements-per-second column.
fn status_lines(v: &Value, rates: Option<&Rates>) -> Vec<String> {
    let mut lines = Vec::new();
    for c in v.get("clusters").and_then(Value::as_array).into_iter().flatten() {
        let name = c["name"].as_str().unwrap_or("");
        lines.push(format!(
            "cluster {name}  mode {}  generation {}  primary {}{}",
            c["mode"].as_str().unwrap_or(""),
            c["generation"],
            if c["detached"] == true { "none (detached)" } else { c["primary"].as_str().unwrap_or("") },
            if c["paused"] == true { "  PAUSED" } else { "" }
        ));
        for (key, label) in [("maintenance", "maintenance"), ("primary_problem", "servers")] {
            if let Some(text) = c[key].as_str() {
                lines.push(format!("  {label}: {text}"));
            }
        }
        if let Some(ms) = c["primary_away_ms"].as_u64().filter(|ms| *ms > 0) {
            lines.push(format!("  primary away for {:.1} s", ms as f64 / 1000.0));
        }
        if let Some(n) = c["held_now"].as_u64().filter(|n| *n > 0) {
            lines.push(format!("  {n} statement(s) held now"));
        }
        fleet_lines(&c["fleet"], &mut lines);
        // Several groups (an upgrade): each backend's group, last.
        let grouped = c["backends"].as_array().into_iter().flatten().any(|b| b["group"] != "main");
        let group =
            |b: &Value| if grouped { format!("  {}", b["group"].as_str().unwrap_or("")) } else { String::new() };
        let rate_head =
            if rates.is_some() { format!(" {:>8} {:>7} {:>7}", "stmt/s", "p50 ms", "p99 ms") } else { String::new() };
        lines.push(format!(
            "  {:<12} {:<8} {:<10} {:<9} {:>8} {:>12} {:>9} {:>10}{rate_head} {:>6} {:>6} {:>7}{}",
            "backend",
            "role",
            "server",
            "state",
            "lag ms",
            "lag bytes",
            "sessions",
            "queries",
            "idle",
            "open",
            "waiting",
            if grouped { "  group" } else { "" }
        ));
        for b in c["backends"].as_array().into_iter().flatten() {
            let backend = b["name"].as_str().unwrap_or("");
            let lag = b["lag_ms"].as_u64().map_or("-".to_owned(), |l| l.to_string());
            let server =
                b["server_says"].as_str().map_or("?", |s| if s.starts_with("unknown") { "no answer" } else { s });
            let ms = |v: Option<f64>| match v {
                None => "-".to_owned(),
                Some(v) if v.is_infinite() => ">10000".to_owned(),
                Some(v) => format!("{v}"),
            };
            let rate = match rates {
                Some(r) => match r.get(&(name.to_owned(), backend.to_owned())) {
                    Some(rate) => format!(" {:>8.0} {:>7} {:>7}", rate.per_second, ms(rate.p50), ms(rate.p99)),
                    None => format!(" {:>8} {:>7} {:>7}", "-", "-", "-"),
                },
                None => String::new(),
            };
            lines.push(format!(
                "  {:<12} {:<8} {:<10} {:<9} {:>8} {:>12} {:>9} {:>10}{rate} {:>6} {:>6} {:>7}{}",
                backend,
                b["role"].as_str().unwrap_or(""),
                server,
                b["state"].as_str().unwrap_or(""),
                lag,
                b["lag_bytes"].to_string(),
                b["sessions"].to_string(),
                b["queries"].to_string(),
                b["idle_connections"].to_string(),
                b["open_connections"].to_string(),
                b["waiting_clients"].to_string(),
                group(b)
            ));
        }
    }
    lines
}

/// One `status` answer.
async fn status(socket: &Path) -> anyhow::Result<Value> {
    let line = send(socket, "status").await?.next_line().await?.ok_or_else(|| anyhow::anyhow!(NO_ANSWER))?;
    Ok(serde_json::from_str(&line)?)
}

/// `sqlswitch ctl status --watch`: the status every `every`, with statements per second per
/// backend, redrawn in place (plain ANSI: home and clear), until Ctrl-C. While the daemon cannot
/// be reached the view says so and keeps trying.
///
/// # Errors
/// The daemon could not be reached at the first try.
pub async fn watch(socket: &Path, every: Duration) -> anyhow::Result<bool> {
    let first = status(socket).await?;
    let mut previous: Option<(Instant, Counts)> = None;
    let mut answer = Ok(first);
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await; // the first tick is now
    loop {
        let now = Instant::now();
        let mut screen = String::from("\x1b[H\x1b[2J");
        match &answer {
            Ok(v) => {
                let counts = queries(v);
                let bounds: Vec<f64> = v
                    .get("clusters")
                    .and_then(|c| c.get(0))
                    .and_then(|c| c.get("latency_bounds_ms"))
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_f64)
                    .collect();
                let rates = previous.as_ref().map(|(at, before)| {
                    let secs = now.duration_since(*at).as_secs_f64().max(1e-3);
                    counts
                        .iter()
                        .filter_map(|(k, (n, buckets))| {
                            let (n0, buckets0) = before.get(k)?;
                            let delta: Vec<u64> = buckets
                                .iter()
                                .zip(buckets0.iter().chain(std::iter::repeat(&0)))
                                .map(|(a, b)| a.saturating_sub(*b))
                                .collect();
                            let rate = Rate {
                                per_second: n.saturating_sub(*n0) as f64 / secs,
                                p50: quantile(&delta, &bounds, 0.5),
                                p99: quantile(&delta, &bounds, 0.99),
                            };
                            Some((k.clone(), rate))
                        })
                        .collect::<Rates>()
                });
                for line in status_lines(v, Some(&rates.unwrap_or_default())) {
                    screen.push_str(&line);
                    screen.push('\n');
                }
                previous = Some((now, counts));
            }
            Err(e) => screen.push_str(&format!("{e:#}\n")),
        }
        screen.push_str(&format!("\nrefreshed every {} ms; Ctrl-C ends\n", every.as_millis()));
        {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            if out.write_all(screen.as_bytes()).and_then(|()| out.flush()).is_err() {
                return Ok(true); // the terminal went away
            }
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                out!("");
                return Ok(true);
            }
            _ = ticker.tick() => {}
        }
        answer = status(socket).await;
    }
}

/// Statements sent to each backend so far, by cluster and backend name.
fn queries(v: &Value) -> Counts {
    let mut counts = HashMap::new();
    for c in v.get("clusters").and_then(Value::as_array).into_iter().flatten() {
        for b in c["backends"].as_array().into_iter().flatten() {
            let key = (c["name"].as_str().unwrap_or("").to_owned(), b["name"].as_str().unwrap_or("").to_owned());
            let buckets = b["latency_buckets"].as_array().into_iter().flatten().filter_map(Value::as_u64).collect();
            counts.insert(key, (b["queries"].as_u64().unwrap_or(0), buckets));
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    #[test]
    fn quantiles_are_the_bucket_bounds_they_fall_in() {
        let bounds = [0.1, 0.25, 1.0];
        assert_eq!(super::quantile(&[0, 0, 0, 0], &bounds, 0.5), None);
        assert_eq!(super::quantile(&[10, 0, 0, 0], &bounds, 0.99), Some(0.1));
        // 98 fast answers and 2 slow ones: p50 fast, p99 in the slow bucket.
        assert_eq!(super::quantile(&[98, 0, 2, 0], &bounds, 0.5), Some(0.1));
        assert_eq!(super::quantile(&[98, 0, 2, 0], &bounds, 0.99), Some(1.0));
        assert_eq!(super::quantile(&[1, 0, 0, 1], &bounds, 0.99), Some(f64::INFINITY), "past the last bound");
    }
}
