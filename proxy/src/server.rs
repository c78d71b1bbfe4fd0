//! The daemon: builds the run-time clusters, binds every listener, accepts connections and
//! shuts down gracefully. Each accepted connection is one task, tracked so that shutdown can
//! wait for sessions to finish what they are doing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlswitch_config::{Config, Protocol};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use crate::cancel;
use crate::cluster::Cluster;
use crate::metrics::Registry;
use crate::pg;
use crate::workers::Workers;

/// A bound listener.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    /// Cluster name.
    pub cluster: String,
    /// Whether every session on it is read-only.
    pub read_only: bool,
    /// The bound address (the real port when the config said 0).
    pub addr: SocketAddr,
}

/// What the monitor last saw of one backend.
#[derive(Debug, Clone)]
pub struct BackendStatus {
    /// Name from the config.
    pub name: String,
    /// `primary` or `replica`.
    pub role: &'static str,
    /// `up` or `down`.
    pub state: &'static str,
    /// Replication delay at the last check, in milliseconds (`None` when unknown).
    pub lag_ms: Option<u64>,
    /// WAL bytes behind the primary's last sample.
    pub lag_bytes: u64,
    /// Idle pooled connections.
    pub idle_connections: usize,
}

/// A cluster's state.
#[derive(Debug, Clone)]
pub struct ClusterStatus {
    /// Name from the config.
    pub name: String,
    /// Its backends.
    pub backends: Vec<BackendStatus>,
}

/// A running daemon.
pub struct Daemon {
    /// Every listener, bound.
    pub listeners: Vec<ListenerInfo>,
    clusters: Vec<Arc<Cluster>>,
    /// The operations behind the admin commands.
    pub control: Arc<crate::control::Control>,
    /// Renders `/metrics`.
    pub metrics: crate::metrics::Exposition,
    /// The admin socket this daemon bound, removed when it stops.
    admin_socket: Option<std::path::PathBuf>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// Stopped when the daemon is dropped.
    _workers: Arc<Workers>,
}

impl Daemon {
    /// Binds every listener of `config` and starts serving. The config must be validated.
    ///
    /// # Errors
    /// A listener or the metrics endpoint could not be bound.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        Self::start_with(config, true).await
    }

    /// As [`Daemon::start`]; `bind_admin` false leaves the admin socket out (tests drive
    /// [`Daemon::control`] directly).
    ///
    /// # Errors
    /// A listener, the admin socket or the metrics endpoint could not be bound.
    pub async fn start_with(config: Config, bind_admin: bool) -> anyhow::Result<Self> {
        Self::launch(config, bind_admin, crate::workers::default_threads()).await
    }

    /// As [`Daemon::start_with`], with `threads` session threads.
    ///
    /// # Errors
    /// A listener, the admin socket, the metrics endpoint or a thread could not be started.
    pub async fn launch(config: Config, bind_admin: bool, threads: usize) -> anyhow::Result<Self> {
        let workers = Arc::new(Workers::start(threads).context("cannot start the session threads")?);
        // The admin socket first: a second daemon on the same config stops here, before it
        // binds or starts anything.
        let admin = if bind_admin { Some(crate::admin::bind(&config.admin.socket)?) } else { None };
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let started = Self::start_clusters(&config, &shutdown, &tracker, &workers).await;
        let (listeners, clusters, registry) = match started {
            Ok(v) => v,
            Err(e) => {
                // Stop whatever was spawned, and leave no socket behind.
                shutdown.cancel();
                if admin.is_some() {
                    let _ = std::fs::remove_file(&config.admin.socket);
                }
                return Err(e);
            }
        };
        if let Some(fleet) = &config.fleet {
            let fleet = crate::fleet::Fleet::new(&config, fleet, &clusters, &registry);
            info!(instance = %fleet.instance(), etcd = ?config.fleet.as_ref().map(|f| &f.etcd), "fleet mode: routing is shared through etcd");
            tokio::spawn(fleet.run(shutdown.clone()));
        }
        let control = crate::control::Control::new(clusters.clone(), config.clone(), Arc::clone(&registry));
        let admin_socket = admin.map(|listener| {
            let path = config.admin.socket.clone();
            tokio::spawn(crate::admin::serve(listener, path.clone(), Arc::clone(&control), shutdown.clone()));
            path
        });
        Ok(Self {
            listeners,
            clusters,
            control,
            metrics: registry.handle(),
            admin_socket,
            shutdown,
            tracker,
            _workers: workers,
        })
    }

    async fn start_clusters(
        config: &Config,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
        workers: &Arc<Workers>,
    ) -> anyhow::Result<(Vec<ListenerInfo>, Vec<Arc<Cluster>>, Arc<Registry>)> {
        let registry = Arc::new(Registry::start(config.admin.metrics)?);
        let cancels = Arc::new(cancel::Registry::default());
        let mut listeners = Vec::new();
        let mut clusters = Vec::new();
        for cluster_config in config.clusters.clone() {
            let cluster = Cluster::new(cluster_config, &registry);
            if let Some(fleet) = &config.fleet {
                // Fenced from the first connection until the fleet's routing is read.
                cluster.gate.lease_until.store(0, std::sync::atomic::Ordering::Relaxed);
                let limit = u64::try_from((fleet.ttl * 3).as_micros()).unwrap_or(u64::MAX);
                cluster.gate.fleet_hold_limit.store(limit, std::sync::atomic::Ordering::Relaxed);
                cluster.gate.set(|h| h.fenced = true);
            }
            if let Some(tls) = &cluster.config.tls {
                let acceptor = crate::tls::acceptor(tls, cluster.config.protocol)
                    .map_err(|e| anyhow::anyhow!("cluster {:?}: {e}", cluster.config.name))?;
                cluster.tls.store(Some(Arc::new(acceptor)));
            }
            if let Some(b) = &cluster.config.backend_tls {
                let tls = crate::tls::BackendTls::new(b)
                    .map_err(|e| anyhow::anyhow!("cluster {:?}: {e}", cluster.config.name))?;
                cluster.backend_tls.store(tls.map(Arc::new));
            }
            if let Some(mut monitor) = crate::monitor::Monitor::new(Arc::clone(&cluster)) {
                // One round before listening, so the first sessions already know which
                // replicas are up and caught up.
                monitor.warm_up().await;
                tokio::spawn(monitor.run(cluster.config.monitor_interval, shutdown.clone()));
            }
            tokio::spawn(close_idle_connections(Arc::clone(&cluster), shutdown.clone()));
            clusters.push(Arc::clone(&cluster));
            let addrs = std::iter::once((cluster.config.listen, false))
                .chain(cluster.config.read_only_listen.map(|a| (a, true)));
            for (addr, read_only) in addrs {
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cluster {:?}: cannot listen on {addr}", cluster.config.name))?;
                let addr = listener.local_addr()?;
                info!(cluster = %cluster.config.name, %addr, read_only, "listening");
                listeners.push(ListenerInfo { cluster: cluster.config.name.clone(), read_only, addr });
                let accept = Accept {
                    listener,
                    cluster: Arc::clone(&cluster),
                    read_only,
                    cancels: Arc::clone(&cancels),
                    shutdown: shutdown.clone(),
                    tracker: tracker.clone(),
                    workers: Arc::clone(workers),
                };
                tracker.spawn(accept.run());
            }
        }
        let ready = clusters.clone();
        registry.set_readiness(Box::new(move || readiness(&ready)));
        Ok((listeners, clusters, registry))
    }

    /// The address of `cluster`'s read-write (or read-only) listener.
    pub fn addr(&self, cluster: &str, read_only: bool) -> Option<SocketAddr> {
        self.listeners.iter().find(|l| l.cluster == cluster && l.read_only == read_only).map(|l| l.addr)
    }

    /// What the monitor last saw of every backend.
    pub fn status(&self) -> Vec<ClusterStatus> {
        use std::sync::atomic::Ordering::Relaxed;
        self.clusters
            .iter()
            .map(|c| ClusterStatus {
                name: c.config.name.clone(),
                backends: c
                    .backends
                    .iter()
                    .map(|b| {
                        let lag = b.health.lag_micros.load(Relaxed);
                        BackendStatus {
                            name: b.name.clone(),
                            role: if b.role == sqlswitch_config::Role::Primary { "primary" } else { "replica" },
                            state: if b.health.is_up() { "up" } else { "down" },
                            lag_ms: (b.role == sqlswitch_config::Role::Replica && lag != u64::MAX)
                                .then_some(lag / 1000),
                            lag_bytes: b.health.lag_bytes.load(Relaxed),
                            idle_connections: b.idle_count(),
                        }
                    })
                    .collect(),
            })
            .collect()
    }

    /// Stops accepting, lets each session end at its next idle moment, and waits up to `grace`.
    /// Returns whether every session ended in time.
    pub async fn shutdown(self, grace: Duration) -> bool {
        self.shutdown.cancel();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait()).await.is_ok()
    }
}

impl Drop for Daemon {
    /// However the daemon stops, it stops accepting and removes its admin socket.
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(path) = &self.admin_socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// One listener's accept loop.
struct Accept {
    listener: TcpListener,
    cluster: Arc<Cluster>,
    read_only: bool,
    cancels: Arc<cancel::Registry>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    workers: Arc<Workers>,
}

impl Accept {
    async fn run(self) {
        loop {
            let accepted = tokio::select! {
                () = self.shutdown.cancelled() => break,
                r = self.listener.accept() => r,
            };
            let (stream, peer) = match accepted {
                Ok(v) => v,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before accept: never fatal.
                    warn!(cluster = %self.cluster.config.name, error = %e, "accept failed");
                    if matches!(e.raw_os_error(), Some(23 | 24)) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            };
            let Some(cluster) = crate::cluster::Admitted::new(&self.cluster) else {
                let (protocol, max) = (self.cluster.config.protocol, self.cluster.config.max_client_connections);
                self.tracker.spawn(too_many(stream, protocol, max));
                continue;
            };
            // The session runs on a worker thread: move the socket to that thread's reactor.
            let stream = match stream.into_std() {
                Ok(s) => s,
                Err(e) => {
                    warn!(cluster = %self.cluster.config.name, error = %e, "cannot hand the connection over");
                    continue;
                }
            };
            // A debug span: at the default level it is not created, and the session's task is
            // not wrapped in it at all (see `spawn_session`); the session's own events name
            // what they need (`session started`: cluster, peer, user).
            let span = tracing::debug_span!("session", cluster = %self.cluster.config.name, %peer);
            let (read_only, cancels, shutdown) = (self.read_only, Arc::clone(&self.cancels), self.shutdown.clone());
            // One task type per protocol: a task is as large as its future, and an idle
            // PostgreSQL session should not carry the size of a MySQL one (or the reverse).
            match cluster.config.protocol {
                Protocol::Postgres => {
                    let accepted =
                        pg::Accepted { stream, peer, cluster, read_only_listener: read_only, cancels, shutdown };
                    self.spawn_session(pg::serve(Box::new(accepted)), span);
                }
                Protocol::Mysql => {
                    let session = async move {
                        let Ok(stream) = TcpStream::from_std(stream) else { return };
                        crate::mysql::serve(stream, peer, cluster, read_only, shutdown).await;
                    };
                    self.spawn_session(session, span);
                }
            }
        }
    }

    /// Runs a session on a session thread, in `span` when that is enabled. A disabled span is
    /// not kept: a task is as large as its future for its whole life, and an idle session's
    /// task is most of what it costs.
    fn spawn_session<F: std::future::Future<Output = ()> + Send + 'static>(&self, session: F, span: tracing::Span) {
        if span.is_disabled() {
            self.workers.spawn(self.tracker.track_future(session));
        } else {
            self.workers.spawn(self.tracker.track_future(session.instrument(span)));
        }
    }
}

/// `/readyz`: each cluster's service, and whether every one can serve. A cluster serves
/// `read-write` while its primary answers the monitor and it is not in maintenance,
/// `read-only` while a replica serves reads or the primary answers (maintenance), and is
/// `unavailable` otherwise; without `monitor` nothing is known (`unmonitored`), and it counts
/// as serving.
fn readiness(clusters: &[Arc<Cluster>]) -> (bool, String) {
    let mut all = true;
    let mut states = serde_json::Map::new();
    for c in clusters {
        let table = c.table.load();
        let primary_up = c.backends.at(table.primary).is_some_and(|b| b.health.is_up());
        let replica_serves = c.backends.iter().enumerate().any(|(i, b)| i != table.primary && b.health.serves_reads());
        let state = if c.config.monitor.is_none() {
            "unmonitored"
        } else if primary_up && c.maintenance().is_none() {
            "read-write"
        } else if primary_up || replica_serves {
            "read-only"
        } else {
            all = false;
            "unavailable"
        };
        states.insert(c.config.name.clone(), serde_json::Value::from(state));
    }
    (all, serde_json::json!({ "ready": all, "clusters": states }).to_string())
}

/// Refuses a connection beyond `max_client_connections` in the client's own protocol: SQLSTATE
/// 53300, or MySQL error 1040 in place of the handshake.
async fn too_many(stream: TcpStream, protocol: Protocol, max: usize) {
    let mut stream = crate::tls::ClientStream::Plain(stream);
    match protocol {
        Protocol::Postgres => {
            let text = format!("sorry, too many clients already (max_client_connections = {max})");
            pg::client::send_fatal(&mut stream, sqlswitch_protocol::pg::sqlstate::TOO_MANY_CONNECTIONS, &text).await;
        }
        Protocol::Mysql => {
            let text = format!("Too many connections (max_client_connections = {max})");
            let code = sqlswitch_protocol::mysql::code::TOO_MANY_CONNECTIONS;
            crate::mysql::send_err(&mut stream, 0, code, "08004", &text).await;
        }
    }
}

/// Closes pooled connections idle for longer than `pool_idle_timeout`, checking a few times
/// per timeout (at least once a second, at most every 30 s), until `shutdown`.
async fn close_idle_connections(cluster: Arc<Cluster>, shutdown: CancellationToken) {
    let timeout = cluster.config.pool_idle_timeout;
    let every = (timeout / 4).clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(30));
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        for b in cluster.backends.iter() {
            let closed = b.close_expired(timeout, cluster.config.min_pool_size).await;
            if closed > 0 {
                tracing::debug!(cluster = %cluster.config.name, backend = %b.name, closed, "closed idle pooled connections");
            }
        }
    }
}
