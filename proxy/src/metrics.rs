//! Prometheus metrics. The recorder is built per daemon (no global recorder), and every handle
//! the hot path touches is registered once, up front: a statement costs one atomic add, never a
//! label lookup.

use std::net::SocketAddr;

use metrics::{Counter, Gauge, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

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
        let recorder = match listen {
            Some(addr) => {
                let (recorder, exporter) = PrometheusBuilder::new().with_http_listener(addr).build()?;
                tokio::spawn(async move {
                    if let Err(e) = exporter.await {
                        tracing::error!(error = ?e, "metrics exporter stopped");
                    }
                });
                recorder
            }
            None => PrometheusBuilder::new().build_recorder(),
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
        ];
        for (name, help) in counters {
            self.recorder.describe_counter(KeyName::from(*name), Some(Unit::Count), SharedString::from(*help));
        }
        let gauges: &[(&'static str, &'static str)] = &[
            ("sqlswitch_client_sessions", "Client sessions open now."),
            ("sqlswitch_backend_connections", "Backend connections, by state (open, idle)."),
            ("sqlswitch_primary_known", "1 when exactly one backend takes writes, as the servers last said; else 0."),
            ("sqlswitch_split_brain", "1 when more than one backend takes writes, as the servers last said; else 0."),
        ];
        for (name, help) in gauges {
            self.recorder.describe_gauge(KeyName::from(*name), Some(Unit::Count), SharedString::from(*help));
        }
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
        let routed = ["primary", "replica"].map(|target| {
            crate::route::Reason::ALL.map(|reason| {
                self.counter(
                    "sqlswitch_statements_total",
                    &[("cluster", cluster), ("target", target), ("reason", reason.label())],
                )
            })
        });
        ClusterMetrics {
            routed,
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

    /// The handles of one backend.
    pub fn backend(&self, cluster: &str, backend: &str) -> BackendMetrics {
        let state = |s| [("cluster", cluster), ("backend", backend), ("state", s)];
        BackendMetrics {
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

/// Per-cluster handles.
#[derive(Clone)]
pub struct ClusterMetrics {
    /// Statements routed, by `[primary, replica]` and [`crate::route::Reason`] index.
    pub routed: [[Counter; 8]; 2],
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
        if let Some(counter) = self.routed.get(usize::from(replica)).and_then(|r| r.get(reason.index())) {
            counter.increment(n);
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

/// Per-backend handles.
#[derive(Clone)]
pub struct BackendMetrics {
    /// Open connections.
    pub open: Gauge,
    /// Open connections, as `max_backend_connections` counts them.
    pub count: std::sync::Arc<crate::pool::OpenCount>,
    /// Idle pooled connections.
    pub idle: Gauge,
    /// Failed connects or logins.
    pub connect_failures: Counter,
}
