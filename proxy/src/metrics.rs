//! Prometheus metrics. The recorder is built per daemon (no global recorder), and every handle
//! the hot path touches is registered once, up front: a statement costs one atomic add, never a
//! label lookup.

use std::net::SocketAddr;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// The daemon's recorder, and its HTTP exporter when `[admin] metrics` is set.
pub struct Registry {
    recorder: PrometheusRecorder,
}

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
        let recorder = match listen {
            Some(addr) => {
                let (recorder, exporter) = builder.with_http_listener(addr).build()?;
                tokio::spawn(async move {
                    if let Err(e) = exporter.await {
                        tracing::error!(error = ?e, "metrics exporter stopped");
                    }
                });
                recorder
            }
            None => builder.build_recorder(),
        };
        let r = Self { recorder };
        r.describe();
        Ok(r)
    }

    /// A handle that renders the current metrics in Prometheus text format.
    pub fn handle(&self) -> PrometheusHandle {
        self.recorder.handle()
    }

    fn describe(&self) {
        let counters: &[(&'static str, &'static str)] = &[
            ("sqlswitch_client_sessions_total", "Client sessions accepted."),
            ("sqlswitch_auth_failures_total", "Client authentications refused."),
            (
                "sqlswitch_statements_total",
                "Statements (Query and Execute messages) routed, by target role and reason.",
            ),
            ("sqlswitch_statements_refused_total", "Writes refused in read-only sessions."),
            (
                "sqlswitch_replica_reruns_total",
                "Reads a replica refused as not runnable on a standby (25006, 0A000, 40001), run again on the primary.",
            ),
            ("sqlswitch_backend_connect_failures_total", "Failed attempts to connect or log in to a backend."),
            (
                "sqlswitch_primary_changes_total",
                "Primary changes the monitor made to follow the servers (an external failover or switchover).",
            ),
            ("sqlswitch_switchovers_total", "Switchovers and failovers, by kind and outcome (completed, failed)."),
        ];
        for (name, help) in counters {
            self.recorder.describe_counter(KeyName::from(*name), Some(Unit::Count), SharedString::from(*help));
        }
        let gauges: &[(&'static str, Unit, &'static str)] = &[
            ("sqlswitch_client_sessions", Unit::Count, "Client sessions open now."),
            ("sqlswitch_backend_connections", Unit::Count, "Backend connections, by state (open, idle)."),
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
            ("sqlswitch_replica_lag_bytes", Unit::Bytes, "WAL bytes (MariaDB: transactions) a replica is behind."),
            (
                "sqlswitch_backend_last_seen_seconds",
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
    }

    fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.recorder.register_counter(&key(name, labels), &META)
    }

    fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.recorder.register_gauge(&key(name, labels), &META)
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
            sessions_total: self.counter("sqlswitch_client_sessions_total", &c),
            auth_failures: self.counter("sqlswitch_auth_failures_total", &c),
            refused: self.counter("sqlswitch_statements_refused_total", &c),
            reruns: self.counter("sqlswitch_replica_reruns_total", &c),
            role_changes: self.counter("sqlswitch_primary_changes_total", &c),
            primary_known: self.gauge("sqlswitch_primary_known", &c),
            split_brain: self.gauge("sqlswitch_split_brain", &c),
        }
    }

    /// The handles of one backend; `monitored`: its cluster has a monitor, which exports its
    /// health (without one nothing is known of it, and no health series exist).
    pub fn backend(&self, cluster: &str, backend: &str, monitored: bool) -> BackendMetrics {
        let state = |s| [("cluster", cluster), ("backend", backend), ("state", s)];
        let b = [("cluster", cluster), ("backend", backend)];
        let health = monitored.then(|| HealthMetrics {
            up: self.gauge("sqlswitch_backend_up", &b),
            role: ["primary", "replica", "inactive"].map(|role| {
                self.gauge("sqlswitch_backend_role", &[("cluster", cluster), ("backend", backend), ("role", role)])
            }),
            lag_seconds: self.gauge("sqlswitch_replica_lag_seconds", &b),
            lag_bytes: self.gauge("sqlswitch_replica_lag_bytes", &b),
            last_seen: self.gauge("sqlswitch_backend_last_seen_seconds", &b),
        });
        BackendMetrics {
            health,
            open: self.gauge("sqlswitch_backend_connections", &state("open")),
            count: std::sync::Arc::default(),
            idle: self.gauge("sqlswitch_backend_connections", &state("idle")),
            connect_failures: self
                .counter("sqlswitch_backend_connect_failures_total", &[("cluster", cluster), ("backend", backend)]),
        }
    }
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels.iter().map(|(k, v)| Label::new(*k, (*v).to_owned())).collect();
    Key::from_parts(name, labels)
}

/// Buckets of every `_seconds` histogram: a held statement waits milliseconds to seconds.
const SECONDS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Per-cluster handles.
#[derive(Clone)]
pub struct ClusterMetrics {
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

/// Counts one open backend connection in `sqlswitch_backend_connections{state="open"}` for as
/// long as it lives.
pub struct OpenGuard(Gauge, std::sync::Arc<crate::pool::OpenCount>);

impl OpenGuard {
    /// Counts one more open connection.
    pub fn new(metrics: &BackendMetrics) -> Self {
        metrics.open.increment(1.0);
        metrics.count.opened();
        Self(metrics.open.clone(), std::sync::Arc::clone(&metrics.count))
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
        self.1.closed();
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
    pub count: std::sync::Arc<crate::pool::OpenCount>,
    /// Idle pooled connections.
    pub idle: Gauge,
    /// Failed connects or logins.
    pub connect_failures: Counter,
}
