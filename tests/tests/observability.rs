//! What operators look at, checked with the real tools: the live `/metrics` of a daemon under
//! load through `promtool check metrics`, the alert rules through `promtool check rules` and
//! `promtool test rules`, and the Grafana dashboard against the metrics the daemon exports.
//! `promtool` comes with Debian's `prometheus` package (scripts/test installs it when root).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use sqlswitch_tests::client::connect;
use sqlswitch_tests::pg::{Topology, ANON, APP};
use sqlswitch_tests::proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs promtool; its output, or a failure that says what to install.
fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new("promtool");
    cmd.args(args).current_dir(repo().join("deploy/prometheus"));
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("promtool cannot run ({e}): install Debian's prometheus package (scripts/test does, as root)")
    });
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        std::io::Write::write_all(&mut pipe, text.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

async fn scrape(port: u16) -> String {
    get(port, "/metrics").await.1
}

/// `GET path` on the metrics port: the status line and the body.
async fn get(port: u16, path: &str) -> (String, String) {
    for _ in 0..50 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let mut answer = String::new();
            s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
            s.read_to_string(&mut answer).await.unwrap();
            let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
            return (head.lines().next().unwrap_or_default().to_owned(), body.to_owned());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no metrics endpoint on port {port}");
}

/// `/healthz` answers while the process runs; `/readyz` says whether every cluster can serve:
/// 200 with the cluster `read-write` in front of a live primary, 503 with it `unavailable` when
/// no backend answers (what Kubernetes and compose health checks read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_readyz_answer_on_the_metrics_port() {
    let topo = Topology::shared();
    let ports = sqlswitch_tests::pg::free_ports(3).unwrap();
    let (live, dead, nobody) = (ports[0], ports[1], ports[2]);
    let text = proxy::config_text(topo, "app", "127.0.0.1:0", "127.0.0.1:0", Some(&format!("127.0.0.1:{live}")), "")
        .replace("/tmp/sqlswitch-test.sock", &format!("/tmp/sqlswitch-readyz-{live}.sock"));
    let config = sqlswitch_config::Config::parse(&text, Path::new("<test>"), |_| None).unwrap();
    let daemon = sqlswitch::Daemon::start(config).await.unwrap();
    assert_eq!(get(live, "/healthz").await, ("HTTP/1.1 200 OK".to_owned(), "ok\n".to_owned()));
    let version = format!("sqlswitch_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    assert!(scrape(live).await.contains(&version), "the running version is exported as {version}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(live, "/readyz").await;
        if status.contains("200") {
            assert!(body.contains("\"app\":\"read-write\""), "{body}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never ready: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(daemon);
    // Every backend address points where nothing listens.
    let mut unreachable = text
        .replace(&format!("127.0.0.1:{live}"), &format!("127.0.0.1:{dead}"))
        .replace(&format!("readyz-{live}"), &format!("readyz-{dead}"));
    for node in &topo.nodes {
        unreachable = unreachable.replace(&format!("127.0.0.1:{}\"", node.port), &format!("127.0.0.1:{nobody}\""));
    }
    let config = sqlswitch_config::Config::parse(&unreachable, Path::new("<test>"), |_| None).unwrap();
    let daemon = sqlswitch::Daemon::start(config).await.unwrap();
    let (status, body) = get(dead, "/readyz").await;
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable", "{body}");
    assert!(body.contains("\"app\":\"unavailable\""), "{body}");
    assert_eq!(get(dead, "/healthz").await.0, "HTTP/1.1 200 OK", "alive, if not ready");
    drop(daemon);
}

/// The value of the sample `series` (name and labels, as rendered).
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_metrics_rules_and_dashboard_pass_the_real_tools() {
    let topo = Topology::shared();
    let metrics_port = sqlswitch_tests::pg::free_ports(1).unwrap()[0];
    let text = proxy::config_text(
        topo,
        "observed",
        "127.0.0.1:0",
        "127.0.0.1:0",
        Some(&format!("127.0.0.1:{metrics_port}")),
        "max_replica_lag = \"2s\"",
    );
    let config = sqlswitch_config::Config::parse(&text, Path::new("<test>"), |_| None).unwrap();
    let daemon = sqlswitch::Daemon::start(config).await.unwrap();
    let port = daemon.addr("observed", false).unwrap().port();

    // Load: reads and writes from several sessions, a pause that holds a write, a mode change.
    let mut load = Vec::new();
    for i in 0..4 {
        load.push(tokio::spawn(async move {
            let client = connect(port, APP).await.unwrap();
            for n in 0..50 {
                client.query_one("SELECT count(*) FROM items", &[]).await.unwrap();
                if n % 10 == 0 {
                    client
                        .execute("INSERT INTO items (note) VALUES ($1)", &[&format!("metrics {i} {n}")])
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for task in load {
        task.await.unwrap();
    }
    let anon = connect(port, ANON).await.unwrap();
    assert!(anon.batch_execute("INSERT INTO items (note) VALUES ('refused')").await.is_err());
    let app = connect(port, APP).await.unwrap();
    assert!(app.batch_execute("SELECT 1/0").await.is_err(), "division by zero");
    drop(app);
    daemon.control.pause("observed", Duration::from_secs(5)).unwrap();
    let writer = connect(port, APP).await.unwrap();
    let held = tokio::spawn(async move { writer.execute("INSERT INTO items (note) VALUES ('held')", &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = scrape(metrics_port).await;
    daemon.control.resume("observed").unwrap();
    held.await.unwrap().expect("the held write runs after resume");
    daemon.control.mode("observed", "read-only").await.unwrap();
    daemon.control.mode("observed", "read-write").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let body = scrape(metrics_port).await;

    // promtool accepts the live exposition.
    let (ok, lint) = promtool(&["check", "metrics"], Some(&body));
    assert!(ok, "promtool check metrics:\n{lint}\n{body}");

    // What it says is true.
    let c = "cluster=\"observed\"";
    assert_eq!(sample(&during, &format!("sqlswitch_statements_held{{{c}}}")), Some(1.0), "{during}");
    assert_eq!(sample(&body, &format!("sqlswitch_statements_held{{{c}}}")), Some(0.0));
    assert!(sample(&body, &format!("sqlswitch_hold_seconds_count{{{c}}}")).unwrap_or(0.0) >= 1.0, "{body}");
    let held_for = sample(&body, &format!("sqlswitch_hold_seconds_sum{{{c}}}")).unwrap_or(0.0);
    assert!(held_for >= 0.2, "the held write waited about 300 ms: {held_for}");
    assert_eq!(sample(&body, &format!("sqlswitch_routing_generation{{{c}}}")), Some(3.0), "two mode changes");
    assert_eq!(sample(&body, &format!("sqlswitch_read_only_mode{{{c}}}")), Some(0.0));
    assert_eq!(sample(&body, &format!("sqlswitch_max_replica_lag_seconds{{{c}}}")), Some(2.0));
    for node in &topo.nodes {
        let b = format!("{c},backend=\"{}\"", node.name);
        assert_eq!(sample(&body, &format!("sqlswitch_backend_up{{{b}}}")), Some(1.0), "{}", node.name);
        let role = if node.name == "primary" { "primary" } else { "replica" };
        assert_eq!(sample(&body, &format!("sqlswitch_backend_role{{{b},role=\"{role}\"}}")), Some(1.0));
        assert_eq!(sample(&body, &format!("sqlswitch_backend_role{{{b},role=\"inactive\"}}")), Some(0.0));
        let lag = sample(&body, &format!("sqlswitch_replica_lag_seconds{{{b}}}")).expect("lag");
        assert!(lag.is_finite() && lag < 2.0, "{} lag {lag}", node.name);
        let seen = sample(&body, &format!("sqlswitch_backend_last_seen_age_seconds{{{b}}}")).expect("last seen");
        assert!(seen < 1.0, "{} last seen {seen} s ago", node.name);
    }
    assert!(sample(&body, &format!("sqlswitch_statements_refused_total{{{c}}}")).unwrap_or(0.0) >= 1.0);
    assert!(
        sample(&body, &format!("sqlswitch_statements_total{{{c},target=\"replica\",reason=\"read\"}}")).unwrap_or(0.0)
            > 0.0,
        "reads went to replicas"
    );
    for target in ["primary", "replica"] {
        let series = format!("sqlswitch_statement_duration_seconds_count{{{c},target=\"{target}\"}}");
        let answered = sample(&body, &series).unwrap_or(0.0);
        assert!(answered > 0.0, "{series}: {answered}");
        let inf = format!("sqlswitch_statement_duration_seconds_bucket{{{c},target=\"{target}\",le=\"+Inf\"}}");
        assert_eq!(sample(&body, &inf), Some(answered), "the +Inf bucket counts every statement");
    }
    for family in ["sqlswitch_client_received_bytes_total", "sqlswitch_backend_received_bytes_total"] {
        let bytes = sample(&body, &format!("{family}{{{c}}}")).unwrap_or(0.0);
        assert!(bytes > 1000.0, "{family}: {bytes}");
    }
    // Per backend, for `ctl status --watch`: answers per latency bucket.
    let status = daemon.control.status();
    let answered = |name: &str| -> u64 {
        let backends = status["clusters"][0]["backends"].as_array().unwrap();
        let b = backends.iter().find(|b| b["name"] == name).unwrap();
        b["latency_buckets"].as_array().unwrap().iter().map(|n| n.as_u64().unwrap()).sum()
    };
    assert!(answered("primary") > 0, "{status}");
    assert!(topo.replicas().iter().map(|r| answered(&r.name)).sum::<u64>() > 0, "{status}");
    // Errors sent to clients: sqlswitch's own refusal (25006), the server's division by zero (22012).
    let refused = format!("sqlswitch_client_errors_total{{{c},source=\"sqlswitch\",class=\"25\"}}");
    assert_eq!(sample(&body, &refused), Some(1.0), "{body}");
    let relayed = format!("sqlswitch_client_errors_total{{{c},source=\"server\",class=\"22\"}}");
    assert_eq!(sample(&body, &relayed), Some(1.0), "{body}");
    // Only combinations that can occur: a replica never runs a write.
    assert!(!body.contains("target=\"replica\",reason=\"write\""), "{body}");
    assert!(sample(&body, &format!("sqlswitch_switchovers_total{{{c},kind=\"switchover\",outcome=\"completed\"}}"))
        .is_some());

    // The rules load and their unit tests pass.
    let (ok, out) = promtool(&["check", "rules", "alerts.yml"], None);
    assert!(ok, "promtool check rules:\n{out}");
    let (ok, out) = promtool(&["test", "rules", "alerts_test.yml"], None);
    assert!(ok, "promtool test rules:\n{out}");

    // The rules and the dashboard name only metrics the daemon exports.
    let exported: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
    // The fleet's gauges exist only in fleet mode: tests/tests/fleet.rs checks them there.
    let fleet_only = ["sqlswitch_fleet_generation", "sqlswitch_fleet_instances", "sqlswitch_fleet_fenced"];
    // A MySQL cluster's lag is in transactions: tests/tests/mysql.rs checks it there.
    let mysql_only = ["sqlswitch_replica_lag_transactions"];
    let known = |name: &str| {
        let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        exported.contains(&name) || exported.contains(&base) || fleet_only.contains(&name) || mysql_only.contains(&name)
    };
    let rules = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).unwrap();
    let dashboard = std::fs::read_to_string(repo().join("deploy/grafana/sqlswitch.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let panels = json["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "a dashboard of the health, lag, statements, holds and switchovers");
    let mut named = 0;
    for text in [rules.as_str(), dashboard.as_str()] {
        for name in metric_names(text) {
            named += 1;
            assert!(known(&name), "{name} is named by deploy/ but not exported:\n{exported:?}");
        }
    }
    assert!(named > 20);
    for p in panels {
        let targets = p["targets"].as_array().expect("every panel has queries");
        assert!(targets.iter().all(|t| t["expr"].as_str().is_some_and(|e| e.contains("sqlswitch_"))), "{p}");
    }
    drop(anon);
    daemon.shutdown(Duration::from_secs(1)).await;
}

/// Every `sqlswitch_...` metric name in a text.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("sqlswitch_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}
