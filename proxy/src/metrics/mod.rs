//! Prometheus metrics. The recorder is built per daemon (no global recorder), and every handle
//! the hot path touches is registered once, up front: a statement costs one atomic add, never a
//! label lookup.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// Each cluster's statement latencies, by cluster name.
type Latencies = Arc<std::sync::Mutex<Vec<(String, Arc<Latency>)>>>;

mod latency;
pub use latency::{latency_bounds_ms, Latency};
mod open;
mod pins;
pub use open::{OpenCount, OpenGuard, Place, Waiting};
pub use pins::PIN_REASONS;

/// The daemon's recorder, and its HTTP exporter when `[admin] metrics` is set.
pub struct Registry {
    recorder: Arc<PrometheusRecorder>,
    /// Each cluster's statement latencies, rendered after the recorder's families.
    latencies: Latencies,
    /// What `/readyz` answers, once the clusters exist.
    readiness: Arc<std::sync::OnceLock<Readiness>>,
}

/// Whether the daemon can serve (`/readyz`: 200 or 503), and why, as a JSON text.
pub type Readiness = Box<dyn Fn() -> (bool, String) + Send + Sync>;

const META: Metadata<'static> = Metadata::new(module_path!(), metrics::Level::INFO, None);

impl Registry {
    /// Builds the recorder; with an address, spawns the `/metrics` HTTP exporter there.
    ///
    /// # Errors
    /// The exporter could not be built (for example, the address is in use).
    pub fn start(listen: Option<SocketAddr>) -> anyhow::Result<Self> {
        // Histograms as Prometheus histograms (buckets), not summaries: they aggregate across
        // instances and `histogram_quantile` reads them.
        let builder = PrometheusBuilder::new().set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)?;
        let r =
            Self { recorder: Arc::new(builder.build_recorder()), latencies: Arc::default(), readiness: Arc::default() };
        r.describe();
        r.gauge("sqlswitch_build_info", &[("version", env!("CARGO_PKG_VERSION"))]).set(1.0);
        if let Some(addr) = listen {
            let listener =
                std::net::TcpListener::bind(addr).map_err(|e| anyhow::anyhow!("metrics endpoint {addr}: {e}"))?;
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            tokio::spawn(serve(listener, r.handle()));
        }
        Ok(r)
    }

    /// What renders the current metrics in Prometheus text format.
    pub fn handle(&self) -> Exposition {
        Exposition {
            handle: self.recorder.handle(),
            latencies: Arc::clone(&self.latencies),
            readiness: Arc::clone(&self.readiness),
        }
    }

    /// What `/readyz` answers from now on (set once, when the clusters exist).
    pub fn set_readiness(&self, readiness: Readiness) {
        let _ = self.readiness.set(readiness);
    }

    /// The statement latency histograms of `cluster`.
    pub fn latency(&self, cluster: &str) -> Arc<Latency> {
        let latency = Arc::new(Latency::default());
        let mut all = self.latencies.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        all.push((cluster.to_owned(), Arc::clone(&latency)));
        latency
    }

    fn describe(&self) {
        let counters: &[(&'static str, &'static str)] = &[
            ("sqlswitch_client_sessions_started_total", "Client sessions started (logged in)."),
            ("sqlswitch_auth_failures_total", "Client authentications refused."),
            (
                "sqlswitch_statements_total",
                "Statements (Query and Execute messages) routed, by target role and reason.",
            ),
            ("sqlswitch_statements_refused_total", "Writes refused in read-only sessions."),
            (
                "sqlswitch_stale_plans_rerun_total",
                "Batches of prepared statements whose plan a schema change made stale (0A000), prepared and run again.",
            ),
            (
                "sqlswitch_replica_reruns_total",
                "Reads a replica refused as not runnable on a standby (25006, 0A000, 40001), run again on the primary.",
            ),
            ("sqlswitch_backend_connect_failures_total", "Failed attempts to connect or log in to a backend."),
            (
                "sqlswitch_backend_wait_timeouts_total",
                "Sessions refused a backend connection after waiting connect_timeout for room under max_backend_connections.",
            ),
            (
                "sqlswitch_primary_changes_total",
                "Primary changes the monitor made to follow the servers (an external failover or switchover).",
            ),
            ("sqlswitch_switchovers_total", "Switchovers and failovers, by kind and outcome (completed, failed)."),
            (
                "sqlswitch_session_pins_total",
                "Sessions that came to hold state no other connection can be given (they keep their connection; a change of primary ends them), by reason.",
            ),
            (
                "sqlswitch_statements_prepared_again_total",
                "Named prepared statements prepared again on another connection than the client's first (the replica, a new primary, transaction pooling).",
            ),
            (
                "sqlswitch_client_errors_total",
                "Errors sent to clients, by source (server: relayed; sqlswitch: its own) and SQLSTATE class.",
            ),
        ];
        for (name, help) in counters {
            self.recorder.describe_counter(KeyName::from(*name), Some(Unit::Count), SharedString::from(*help));
        }
        let gauges: &[(&'static str, Unit, &'static str)] = &[
            ("sqlswitch_build_info", Unit::Count, "1, labelled with the running sqlswitch's version."),
            ("sqlswitch_client_sessions", Unit::Count, "Client sessions open now."),
            (
                "sqlswitch_pinned_sessions",
                Unit::Count,
                "Client sessions open now that hold state no other connection can be given.",
            ),
            ("sqlswitch_backend_connections", Unit::Count, "Backend connections, by state (open, idle)."),
            (
                "sqlswitch_backend_waiting_clients",
                Unit::Count,
                "Sessions waiting now for room under the backend's max_backend_connections.",
            ),
            (
                "sqlswitch_primary_known",
                Unit::Count,
                "1 when exactly one backend takes writes, as the servers last said; else 0.",
            ),
            (
                "sqlswitch_split_brain",
                Unit::Count,
                "1 when more than one backend takes writes, as the servers last said; else 0.",
            ),
            ("sqlswitch_routing_generation", Unit::Count, "The routing table's generation (bumped by every change)."),
            ("sqlswitch_read_only_mode", Unit::Count, "1 while the operator's `mode read-only` is set; else 0."),
            (
                "sqlswitch_maintenance",
                Unit::Count,
                "1 while the cluster serves without its primary (read-only mode, detached, primary unreachable); else 0.",
            ),
            ("sqlswitch_max_replica_lag_seconds", Unit::Seconds, "The cluster's max_replica_lag."),
            ("sqlswitch_statements_held", Unit::Count, "Statements waiting now at the gate (pause, switchover, doubt)."),
            (
                "sqlswitch_last_switchover_pause_seconds",
                Unit::Seconds,
                "How long clients' primary work waited in the last completed switchover or failover.",
            ),
            ("sqlswitch_fleet_generation", Unit::Count, "Fleet mode: the shared routing generation this instance applies."),
            ("sqlswitch_fleet_instances", Unit::Count, "Fleet mode: instances with a live lease, as this instance sees them."),
            (
                "sqlswitch_fleet_fenced",
                Unit::Count,
                "Fleet mode: 1 while this instance refuses writes (lease not renewed, or routing not read yet); else 0.",
            ),
            ("sqlswitch_backend_up", Unit::Count, "1 when the monitor reached the backend at its last check; else 0."),
            (
                "sqlswitch_backend_role",
                Unit::Count,
                "1 for the backend's role now (primary, replica, or inactive: another group); 0 for the others.",
            ),
            (
                "sqlswitch_replica_lag_seconds",
                Unit::Seconds,
                "How far behind its group's primary a replica is (+Inf: not replaying); 0 for a primary.",
            ),
            ("sqlswitch_replica_lag_bytes", Unit::Bytes, "PostgreSQL: WAL bytes a replica is behind."),
            (
                "sqlswitch_replica_lag_transactions",
                Unit::Count,
                "MySQL/MariaDB: transactions a replica is behind (GTID sequence numbers summed).",
            ),
            (
                "sqlswitch_backend_last_seen_age_seconds",
                Unit::Seconds,
                "Time since the monitor last heard from the backend (+Inf: never).",
            ),
        ];
        for (name, unit, help) in gauges {
            self.recorder.describe_gauge(KeyName::from(*name), Some(*unit), SharedString::from(*help));
        }
        self.recorder.describe_histogram(
            KeyName::from("sqlswitch_hold_seconds"),
            Some(Unit::Seconds),
            SharedString::from("How long each held statement waited at the gate."),
        );
        self.recorder.describe_histogram(
            KeyName::from("sqlswitch_backend_wait_seconds"),
            Some(Unit::Seconds),
            SharedString::from("How long each session that had to wait for room under max_backend_connections waited."),
        );
    }

    fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.recorder.register_counter(&key(name, labels), &META)
    }

    fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.recorder.register_gauge(&key(name, labels), &META)
    }

    /// The fleet gauges of one cluster.
    pub fn fleet(&self, cluster: &str) -> FleetMetrics {
        let c = [("cluster", cluster)];
        FleetMetrics {
            generation: self.gauge("sqlswitch_fleet_generation", &c),
            instances: self.gauge("sqlswitch_fleet_instances", &c),
            fenced: self.gauge("sqlswitch_fleet_fenced", &c),
        }
    }

    /// The handles of one cluster.
    pub fn cluster(&self, cluster: &str) -> ClusterMetrics {
        let c = [("cluster", cluster)];
        // Only the label combinations that occur: a replica runs only reads and the
        // transactions they began.
        let routed = ["primary", "replica"].map(|target| {
            crate::route::Reason::ALL.map(|reason| {
                (target == "primary" || reason.on_replica()).then(|| {
                    self.counter(
                        "sqlswitch_statements_total",
                        &[("cluster", cluster), ("target", target), ("reason", reason.label())],
                    )
                })
            })
        });
        let changes = ["switchover", "failover"].map(|kind| {
            ["completed", "failed"].map(|outcome| {
                self.counter(
                    "sqlswitch_switchovers_total",
                    &[("cluster", cluster), ("kind", kind), ("outcome", outcome)],
                )
            })
        });
        ClusterMetrics {
            errors: Errors { recorder: Arc::clone(&self.recorder), cluster: cluster.into() },
            routed,
            changes,
            generation: self.gauge("sqlswitch_routing_generation", &c),
            read_only_mode: self.gauge("sqlswitch_read_only_mode", &c),
            maintenance: self.gauge("sqlswitch_maintenance", &c),
            max_lag: self.gauge("sqlswitch_max_replica_lag_seconds", &c),
            held: self.gauge("sqlswitch_statements_held", &c),
            hold_seconds: self.recorder.register_histogram(&key("sqlswitch_hold_seconds", &c), &META),
            last_pause: self.gauge("sqlswitch_last_switchover_pause_seconds", &c),
            sessions: self.gauge("sqlswitch_client_sessions", &c),
            sessions_total: self.counter("sqlswitch_client_sessions_started_total", &c),
            auth_failures: self.counter("sqlswitch_auth_failures_total", &c),
            refused: self.counter("sqlswitch_statements_refused_total", &c),
            reruns: self.counter("sqlswitch_replica_reruns_total", &c),
            replans: self.counter("sqlswitch_stale_plans_rerun_total", &c),
            pins: PIN_REASONS.map(|reason| {
                (reason, self.counter("sqlswitch_session_pins_total", &[("cluster", cluster), ("reason", reason)]))
            }),
            pinned: self.gauge("sqlswitch_pinned_sessions", &c),
            prepared_again: self.counter("sqlswitch_statements_prepared_again_total", &c),
            role_changes: self.counter("sqlswitch_primary_changes_total", &c),
            primary_known: self.gauge("sqlswitch_primary_known", &c),
            split_brain: self.gauge("sqlswitch_split_brain", &c),
        }
    }

    /// The handles of one backend; `monitored`: its cluster has a monitor, which exports its
    /// health (without one nothing is known of it, and no health series exist).
    pub fn backend(&self, cluster: &str, backend: &str, monitored: bool, mysql: bool) -> BackendMetrics {
        let state = |s| [("cluster", cluster), ("backend", backend), ("state", s)];
        let b = [("cluster", cluster), ("backend", backend)];
        let health = monitored.then(|| HealthMetrics {
            up: self.gauge("sqlswitch_backend_up", &b),
            role: ["primary", "replica", "inactive"].map(|role| {
                self.gauge("sqlswitch_backend_role", &[("cluster", cluster), ("backend", backend), ("role", role)])
            }),
            lag_seconds: self.gauge("sqlswitch_replica_lag_seconds", &b),
            // What the lag is counted in: WAL bytes, or transactions.
            lag_bytes: self
                .gauge(if mysql { "sqlswitch_replica_lag_transactions" } else { "sqlswitch_replica_lag_bytes" }, &b),
            last_seen: self.gauge("sqlswitch_backend_last_seen_age_seconds", &b),
        });
        BackendMetrics {
            health,
            open: self.gauge("sqlswitch_backend_connections", &state("open")),
            count: std::sync::Arc::default(),
            idle: self.gauge("sqlswitch_backend_connections", &state("idle")),
            waiting: self.gauge("sqlswitch_backend_waiting_clients", &b),
            waited: self.recorder.register_histogram(&key("sqlswitch_backend_wait_seconds", &b), &META),
            wait_timeouts: self.counter("sqlswitch_backend_wait_timeouts_total", &b),
            connect_failures: self
                .counter("sqlswitch_backend_connect_failures_total", &[("cluster", cluster), ("backend", backend)]),
        }
    }
}

/// Renders `/metrics`: the recorder's families, then the statement latencies.
#[derive(Clone)]
pub struct Exposition {
    handle: PrometheusHandle,
    latencies: Latencies,
    readiness: Arc<std::sync::OnceLock<Readiness>>,
}

impl Exposition {
    /// The whole exposition, in Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = self.handle.render();
        let latencies = self.latencies.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if !latencies.is_empty() {
            text.push_str(
                "# HELP sqlswitch_statement_duration_seconds From a client's statement (or pipeline) to the end of its answer, by target role.\n\
                 # TYPE sqlswitch_statement_duration_seconds histogram\n",
            );
            for (cluster, latency) in &latencies {
                latency.render(cluster, &mut text);
            }
            for (i, (name, help)) in [
                ("sqlswitch_client_received_bytes_total", "Bytes received from clients."),
                ("sqlswitch_backend_received_bytes_total", "Bytes received from backends (answers, forwarded)."),
            ]
            .iter()
            .enumerate()
            {
                text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
                for (cluster, latency) in &latencies {
                    text.push_str(&format!("{name}{{cluster=\"{}\"}} {}\n", escape(cluster), latency.bytes(i)));
                }
            }
        }
        text
    }
}

/// Serves `GET /metrics` (HTTP/1.x, one request per connection); anything else gets 404.
async fn serve(listener: tokio::net::TcpListener, exposition: Exposition) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let exposition = exposition.clone();
        tokio::spawn(async move {
            let mut request = Vec::with_capacity(512);
            let mut chunk = [0u8; 512];
            // The request head, within 5 s and 8 KiB.
            let head = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => request.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                    }
                }
                true
            });
            if !matches!(head.await, Ok(true)) {
                return;
            }
            let line = request.split(|b| *b == b'\n').next().unwrap_or_default();
            let mut words = line.split(|b| *b == b' ');
            let (method, path) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
            let path = path.split(|b| *b == b'?').next().unwrap_or_default();
            let (status, body) = match (method, path) {
                (b"GET", b"/metrics") => ("200 OK", exposition.render()),
                // Alive: the process answers.
                (b"GET", b"/healthz") => ("200 OK", "ok\n".to_owned()),
                // Ready: every cluster can serve (a primary, or replicas in maintenance).
                (b"GET", b"/readyz") => match exposition.readiness.get().map(|ready| ready()) {
                    Some((true, body)) => ("200 OK", body + "\n"),
                    Some((false, body)) => ("503 Service Unavailable", body + "\n"),
                    None => ("503 Service Unavailable", "{\"ready\":false,\"starting\":true}\n".to_owned()),
                },
                _ => ("404 Not Found", "not found: GET /metrics, /healthz or /readyz\n".to_owned()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Whole milliseconds, saturating.
pub fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A label value, escaped: backslash, double quote and newline.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels.iter().map(|(k, v)| Label::new(*k, (*v).to_owned())).collect();
    Key::from_parts(name, labels)
}

/// Buckets of every `_seconds` histogram: a held statement waits milliseconds to seconds.
const SECONDS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// `sqlswitch_client_errors_total`, whose series are registered as errors occur (a class that
/// never happens is never exported).
#[derive(Clone)]
pub struct Errors {
    recorder: Arc<PrometheusRecorder>,
    cluster: Arc<str>,
}

impl Errors {
    /// Counts an error sent to a client, relayed from a server (`server`) or sqlswitch's own,
    /// of SQLSTATE class `class` (its first two characters; anything else counts as `other`).
    pub fn count(&self, server: bool, class: &[u8]) {
        let class = match class {
            [a, b] if a.is_ascii_alphanumeric() && b.is_ascii_alphanumeric() => {
                String::from_utf8_lossy(&[a.to_ascii_uppercase(), b.to_ascii_uppercase()]).into_owned()
            }
            _ => "other".to_owned(),
        };
        let source = if server { "server" } else { "sqlswitch" };
        let labels = [("cluster", &*self.cluster), ("source", source), ("class", class.as_str())];
        self.recorder.register_counter(&key("sqlswitch_client_errors_total", &labels), &META).increment(1);
    }

    /// As [`Errors::count`], from a whole SQLSTATE (PostgreSQL).
    pub fn count_state(&self, server: bool, sqlstate: Option<&str>) {
        self.count(server, sqlstate.and_then(|s| s.as_bytes().get(..2)).unwrap_or(b"??"));
    }
}

/// Fleet mode's gauges of one cluster.
pub struct FleetMetrics {
    /// The shared routing generation applied.
    pub generation: Gauge,
    /// Instances with a live lease.
    pub instances: Gauge,
    /// 1 while fenced.
    pub fenced: Gauge,
}

/// Per-cluster handles.
#[derive(Clone)]
pub struct ClusterMetrics {
    /// Errors sent to clients.
    pub errors: Errors,
    /// Statements routed, by `[primary, replica]` and [`crate::route::Reason`] index (`None`:
    /// a combination that cannot occur, not exported).
    pub routed: [[Option<Counter>; 8]; 2],
    /// Switchovers and failovers: `[switchover, failover]` x `[completed, failed]`.
    pub changes: [[Counter; 2]; 2],
    /// The routing table's generation.
    pub generation: Gauge,
    /// `mode read-only` (1) or not.
    pub read_only_mode: Gauge,
    /// Serving without the primary (1) or not.
    pub maintenance: Gauge,
    /// `max_replica_lag`, in seconds.
    pub max_lag: Gauge,
    /// Statements held now.
    pub held: Gauge,
    /// How long held statements waited.
    pub hold_seconds: Histogram,
    /// The last completed switchover's client pause, in seconds.
    pub last_pause: Gauge,
    /// Sessions open now.
    pub sessions: Gauge,
    /// Sessions accepted.
    pub sessions_total: Counter,
    /// Failed client logins.
    pub auth_failures: Counter,
    /// Writes refused in read-only sessions.
    pub refused: Counter,
    /// Reads a replica refused as not on a standby, run again on the primary.
    pub reruns: Counter,
    /// Batches run again after a stale plan (0A000) was prepared again.
    pub replans: Counter,
    /// Sessions pinned, by reason ([`PIN_REASONS`]).
    pub pins: [(&'static str, Counter); PIN_REASONS.len()],
    /// Pinned sessions open now.
    pub pinned: Gauge,
    /// Named statements prepared again on another connection.
    pub prepared_again: Counter,
    /// Primary changes made to follow the servers.
    pub role_changes: Counter,
    /// Exactly one backend takes writes (1) or not (0).
    pub primary_known: Gauge,
    /// More than one backend takes writes (1) or not (0).
    pub split_brain: Gauge,
}

impl ClusterMetrics {
    /// Counts `n` statements routed to a replica (or the primary) for `reason`.
    pub fn count_routed(&self, replica: bool, reason: crate::route::Reason, n: u64) {
        if let Some(Some(counter)) = self.routed.get(usize::from(replica)).and_then(|r| r.get(reason.index())) {
            counter.increment(n);
        }
    }

    /// Counts a switchover (or failover) that completed with `pause`, or failed.
    pub fn count_change(&self, failover: bool, pause: Option<std::time::Duration>) {
        if let Some(counter) = self.changes.get(usize::from(failover)).and_then(|k| k.get(usize::from(pause.is_none())))
        {
            counter.increment(1);
        }
        if let Some(pause) = pause {
            self.last_pause.set(pause.as_secs_f64());
        }
    }
}

/// What the monitor exports of one backend.
#[derive(Clone)]
pub struct HealthMetrics {
    /// Reached at the last check (1) or not.
    pub up: Gauge,
    /// `[primary, replica, inactive]`: 1 for its role now.
    pub role: [Gauge; 3],
    /// Replica lag, seconds.
    pub lag_seconds: Gauge,
    /// Replica lag, bytes (MariaDB: transactions).
    pub lag_bytes: Gauge,
    /// Seconds since the monitor last heard from it.
    pub last_seen: Gauge,
}

/// Per-backend handles.
#[derive(Clone)]
pub struct BackendMetrics {
    /// Its health, when its cluster has a monitor.
    pub health: Option<HealthMetrics>,
    /// Open connections.
    pub open: Gauge,
    /// Open connections, as `max_backend_connections` counts them.
    pub count: std::sync::Arc<OpenCount>,
    /// Idle pooled connections.
    pub idle: Gauge,
    /// Sessions waiting for room under `max_backend_connections`.
    pub waiting: Gauge,
    /// How long each session that waited for room waited.
    pub waited: Histogram,
    /// Sessions refused after waiting for room.
    pub wait_timeouts: Counter,
    /// Failed connects or logins.
    pub connect_failures: Counter,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn latency_buckets_are_cumulative_and_count_every_statement() {
        let latency = super::Latency::default();
        latency.record(0, false, Duration::from_micros(50));
        latency.record(0, false, Duration::from_micros(100)); // a bound is inclusive (le)
        latency.record(0, false, Duration::from_micros(101));
        latency.record(1, true, Duration::from_secs(60)); // past the last bound: +Inf only
        let mut out = String::new();
        latency.render("a\"b", &mut out);
        let value = |series: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("{series} in\n{out}"))
                .to_owned()
        };
        let p = r#"cluster="a\"b",target="primary""#;
        assert_eq!(value(&format!("sqlswitch_statement_duration_seconds_bucket{{{p},le=\"0.0001\"}}")), "2");
        assert_eq!(value(&format!("sqlswitch_statement_duration_seconds_bucket{{{p},le=\"0.00025\"}}")), "3");
        assert_eq!(value(&format!("sqlswitch_statement_duration_seconds_bucket{{{p},le=\"+Inf\"}}")), "3");
        assert_eq!(value(&format!("sqlswitch_statement_duration_seconds_count{{{p}}}")), "3");
        assert_eq!(value(&format!("sqlswitch_statement_duration_seconds_sum{{{p}}}")), "0.000251");
        let r = r#"cluster="a\"b",target="replica""#;
        assert_eq!(value(&format!("sqlswitch_statement_duration_seconds_bucket{{{r},le=\"10\"}}")), "0");
        assert_eq!(value(&format!("sqlswitch_statement_duration_seconds_bucket{{{r},le=\"+Inf\"}}")), "1");
    }
}
