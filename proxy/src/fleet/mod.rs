//! Fleet mode (`[fleet]`): several sqlswitch instances in front of the same clusters act as one
//! through etcd. Each cluster's routing (primary, mode, detached, drained backends, and a change
//! in progress) is one document, `<prefix>/<cluster>/routing`, changed only by a transaction that
//! compares its revision; every instance watches it and applies each generation. Each instance
//! keeps `<prefix>/<cluster>/instances/<instance>` on its lease, with the generation it applies
//! and the one whose hold it acknowledged; `<prefix>/<cluster>/lock`, on the driver's lease,
//! marks a switchover or failover in progress.
//!
//! A change of primary takes effect in two phases: the driver publishes the change (every
//! instance holds new primary work, lets its in-flight primary work finish and acknowledges;
//! an instance whose lease expires is no longer waited for), then changes the servers (fence,
//! catch-up, promote) and publishes the new primary; instances release only on that generation.
//! When the driver dies (its lock expires with its lease), another instance finishes the change
//! if the target was already promoted, or rolls it back (unfences the old primary) if not.
//!
//! Self-fencing: an instance that cannot renew its lease within `ttl` minus a margin holds new
//! primary work, then refuses it as read-only, and goes on serving reads; it starts that way and
//! stays so until it has read the routing. The deadline is checked by the gate itself with a
//! monotonic clock, so a process woken from `SIGSTOP` cannot write before it has rejoined.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cluster::Failure;
use crate::cluster::{BackendState, Cluster, Mode, RoutingTable};
mod change;
mod link;
mod store;

/// A cluster's routing as the fleet shares it: `<prefix>/<cluster>/routing`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routing {
    /// Bumped by every change.
    pub generation: u64,
    /// The primary's name.
    pub primary: String,
    /// `read-write` or `read-only`.
    pub mode: String,
    /// Serving without the primary (`detach`).
    #[serde(default)]
    pub detached: bool,
    /// Backends drained (`drain`).
    #[serde(default)]
    pub draining: Vec<String>,
    /// A switchover or failover in progress: every instance holds new primary work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<Change>,
}

/// A change of primary in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// `switchover` or `failover`.
    pub kind: String,
    /// The instance driving it.
    pub by: String,
    /// The primary before it.
    pub from: String,
    /// The new primary.
    pub target: String,
    /// `hold` until the promotion (or the cutover's point of no return) is asked for, then
    /// `promote`: an instance taking over finishes it only from `promote`, and only if the
    /// target answers as a primary.
    pub step: String,
    /// The driver's timeout: instances hold primary work for the change at most this long
    /// (plus two lease TTLs), then refuse it ([`crate::gate::Gate::fleet_hold_limit`]).
    #[serde(default)]
    pub timeout_ms: u64,
}

/// What an instance says of itself: `<prefix>/<cluster>/instances/<instance>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The routing generation it applies.
    pub generation: u64,
    /// The generation of the last change whose hold it acknowledged (its primary work drained).
    pub acked: u64,
    /// Whether it refuses writes (lease not renewed).
    pub fenced: bool,
    /// When it last renewed its lease (Unix millis).
    pub renewed_ms: u64,
    /// Its lease time.
    pub ttl_ms: u64,
}

/// The daemon's fleet membership: one etcd session (client and lease) for every cluster.
pub struct Fleet {
    shared: Arc<Shared>,
    links: Vec<Arc<Link>>,
}

struct Shared {
    config: sqlswitch_config::Fleet,
    instance: String,
    /// The current session's client and lease; `None` while etcd is not reached.
    session: Mutex<Option<(Client, i64)>>,
    /// When the lease was last renewed (Unix millis).
    renewed_ms: AtomicU64,
    /// The lease of this process's previous session (its keys may still be on it).
    last_lease: std::sync::atomic::AtomicI64,
}

/// One cluster's link to the fleet.
pub struct Link {
    /// The cluster.
    pub cluster: Arc<Cluster>,
    shared: Arc<Shared>,
    state: Mutex<State>,
    metrics: crate::metrics::FleetMetrics,
}

#[derive(Default)]
struct State {
    doc: Option<Routing>,
    revision: i64,
    acked: u64,
    lock: Option<String>,
    instances: BTreeMap<String, Member>,
}

/// Fleet mode: `cluster`'s link to the fleet (`None` outside fleet mode).
pub fn link_of(cluster: &Cluster) -> Option<Arc<Link>> {
    Arc::clone(cluster.fleet.get()?).as_any().downcast::<Link>().ok()
}

impl Fleet {
    /// The fleet of `clusters`: each starts fenced (writes held) until the routing is read.
    pub fn new(
        config: &sqlswitch_config::Config,
        fleet: &sqlswitch_config::Fleet,
        clusters: &[Arc<Cluster>],
        registry: &crate::metrics::Registry,
    ) -> Arc<Self> {
        let instance = fleet.instance.clone().unwrap_or_else(|| default_instance(config));
        let shared = Arc::new(Shared {
            config: fleet.clone(),
            instance,
            session: Mutex::new(None),
            renewed_ms: AtomicU64::new(0),
            last_lease: std::sync::atomic::AtomicI64::new(0),
        });
        let links = clusters
            .iter()
            .map(|c| {
                c.gate.lease_until.store(0, Ordering::Relaxed);
                c.gate.set(|h| h.fenced = true);
                let metrics = registry.fleet(&c.config.name);
                metrics.fenced.set(1.0);
                let link = Arc::new(Link {
                    cluster: Arc::clone(c),
                    shared: Arc::clone(&shared),
                    state: Mutex::new(State::default()),
                    metrics,
                });
                let _ = c.fleet.set(Arc::clone(&link) as Arc<dyn crate::cluster::RoutingStore>);
                link
            })
            .collect();
        Arc::new(Self { shared, links })
    }

    /// This instance's name in the fleet.
    pub fn instance(&self) -> &str {
        &self.shared.instance
    }

    /// Keeps this instance in the fleet until `shutdown`: connects, takes a lease, reads and
    /// watches the routing, renews the lease; after any failure, again. A lease that could not
    /// be renewed in time fences this instance ([`Fleet::fence_watch`]).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        tokio::spawn(Arc::clone(&self).fence_watch(shutdown.clone()));
        loop {
            let outcome = tokio::select! {
                () = shutdown.cancelled() => Ok(()),
                r = self.session() => r,
            };
            let was = lock(&self.shared.session).take();
            if shutdown.is_cancelled() {
                // Leave at once: the others stop waiting for this instance.
                if let Some((mut client, lease)) = was {
                    let _ = tokio::time::timeout(Duration::from_secs(1), client.lease_revoke(lease)).await;
                }
                return;
            }
            if let Err(e) = outcome {
                warn!(event = "fleet_disconnected", instance = %self.shared.instance, error = %e, "fleet: etcd session ended; reconnecting (writes stop when the lease runs out)");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(RETRY) => {}
            }
        }
    }

    /// Fences each cluster as soon as its lease deadline passes (the gate already holds writes
    /// from that moment; this makes it visible and lets held writes be refused in time).
    async fn fence_watch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            for link in &self.links {
                let gate = &link.cluster.gate;
                if gate.lease_lost() && !gate.hold().fenced {
                    gate.set(|h| h.fenced = true);
                    link.metrics.fenced.set(1.0);
                    warn!(event = "fleet_fenced", cluster = %link.cluster.config.name, instance = %self.shared.instance, "fleet: the lease was not renewed in time; writes are held, then refused, until this instance rejoins");
                }
            }
        }
    }

    /// One etcd session: join, then watch and renew until something fails.
    async fn session(&self) -> Result<(), String> {
        let config = &self.shared.config;
        let ttl = config.ttl;
        let mut client = tokio::time::timeout(ttl, connect(config))
            .await
            .map_err(|_| "connect: timed out".to_owned())?
            .map_err(|e| format!("connect: {e}"))?;
        let sent = Instant::now();
        let seconds = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let lease = timed(ttl, client.lease_grant(seconds, None)).await.map_err(|e| format!("lease: {e}"))?.id();
        let (mut keeper, mut renewals) =
            timed(ttl, client.lease_keep_alive(lease)).await.map_err(|e| format!("lease: {e}"))?;
        // Two instances of one name would overwrite each other's key: the second one stays out
        // (fenced) until the first one's key is gone.
        let previous = self.shared.last_lease.load(Ordering::Relaxed);
        for link in &self.links {
            let key = link.member_key();
            let got = timed(ttl, client.get(key.clone(), None)).await.map_err(|e| format!("join: {e}"))?;
            if let Some(other) =
                got.kvs().first().map(etcd_client::KeyValue::lease).filter(|l| *l != 0 && *l != previous)
            {
                let _ = timed(ttl, client.lease_revoke(lease)).await;
                return Err(format!(
                    "another live instance is named {:?} ({key} is on lease {other:x}): give each instance its \
                     own `instance` in [fleet]; this one stays fenced until that key expires",
                    self.shared.instance
                ));
            }
        }
        self.shared.last_lease.store(lease, Ordering::Relaxed);
        *lock(&self.shared.session) = Some((client.clone(), lease));
        self.shared.renewed_ms.store(unix_ms(), Ordering::Relaxed);
        // Join: read (or create) each cluster's routing, apply it, and only then take writes.
        // Watched from the first read on: what changed between the clusters' reads is seen
        // again (applying a revision twice is a no-op), never missed.
        let mut revision = i64::MAX;
        for link in &self.links {
            revision = revision.min(link.join(&mut client).await?);
        }
        let until = self.lease_deadline(sent);
        for link in &self.links {
            link.cluster.gate.lease_until.store(until, Ordering::Relaxed);
            link.cluster.gate.set(|h| h.fenced = false);
            link.metrics.fenced.set(0.0);
            link.report().await;
        }
        info!(event = "fleet_joined", instance = %self.shared.instance, lease, "fleet: joined; routing read from etcd");
        let options = WatchOptions::new().with_prefix().with_start_revision(revision.saturating_add(1));
        let mut watch = timed(ttl, client.watch(format!("{}/", config.prefix), Some(options)))
            .await
            .map_err(|e| format!("watch: {e}"))?;
        let mut renew = tokio::time::interval(ttl / 4);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut takeover = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = renew.tick() => {
                    let sent = Instant::now();
                    timed(ttl / 4, keeper.keep_alive()).await.map_err(|e| format!("lease: {e}"))?;
                    match tokio::time::timeout(ttl / 4, renewals.message()).await {
                        Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                        Ok(Ok(Some(_))) => return Err("lease: expired".into()),
                        Ok(Ok(None)) => return Err("lease: the keep-alive stream ended".into()),
                        Ok(Err(e)) => return Err(format!("lease: {e}")),
                        Err(_) => return Err("lease: no answer to the keep-alive".into()),
                    }
                    let until = self.lease_deadline(sent);
                    self.shared.renewed_ms.store(unix_ms(), Ordering::Relaxed);
                    for link in &self.links {
                        link.cluster.gate.lease_until.store(until, Ordering::Relaxed);
                        if link.cluster.gate.hold().fenced {
                            // Fenced while the session lived on (a process stopped past its
                            // lease): rejoin from a fresh read.
                            return Err("lease: renewed after the deadline; rejoining".into());
                        }
                        link.report().await;
                    }
                }
                message = watch.message() => {
                    let response = match message {
                        Ok(Some(r)) => r,
                        Ok(None) => return Err("watch: the stream ended".into()),
                        Err(e) => return Err(format!("watch: {e}")),
                    };
                    if response.canceled() {
                        return Err(format!("watch: canceled by etcd ({})", response.cancel_reason()));
                    }
                    for event in response.events() {
                        let Some(kv) = event.kv() else { continue };
                        let key = String::from_utf8_lossy(kv.key()).into_owned();
                        let put = event.event_type() == EventType::Put;
                        for link in &self.links {
                            link.event(&key, put, kv.value(), kv.mod_revision());
                        }
                    }
                }
                _ = takeover.tick() => {
                    for link in &self.links {
                        if link.orphaned() {
                            let link = Arc::clone(link);
                            tokio::spawn(async move { link.take_over().await });
                        }
                    }
                }
            }
        }
    }

    /// The lease is surely valid until `ttl` minus a margin after a renewal was sent (etcd
    /// renewed it at or after that moment).
    fn lease_deadline(&self, sent: Instant) -> u64 {
        let ttl = self.shared.config.ttl;
        let margin = (ttl / 4).max(Duration::from_millis(500));
        let sent_micros =
            crate::gate::now_micros().saturating_sub(u64::try_from(sent.elapsed().as_micros()).unwrap_or(0));
        sent_micros.saturating_add(u64::try_from((ttl - margin).as_micros()).unwrap_or(u64::MAX))
    }
}

async fn connect(config: &sqlswitch_config::Fleet) -> Result<Client, String> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(config.ttl / 4)
        .with_keep_alive(Duration::from_secs(1), config.ttl / 4);
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.with_user(user.clone(), password.expose().to_owned());
    }
    if let Some(ca) = &config.tls_ca {
        let pem = std::fs::read(ca).map_err(|e| format!("tls_ca {}: {e}", ca.display()))?;
        let mut tls = etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(pem));
        if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
            let cert = std::fs::read(cert).map_err(|e| format!("tls_cert {}: {e}", cert.display()))?;
            let key = std::fs::read(key).map_err(|e| format!("tls_key {}: {e}", key.display()))?;
            tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
        }
        options = options.with_tls(tls);
    }
    Client::connect(&config.etcd, Some(options)).await.map_err(|e| e.to_string())
}

/// An etcd call within `limit`.
async fn timed<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("etcd did not answer in time".into()),
    }
}

/// The default instance name: host name and the first listener's port.
fn default_instance(config: &sqlswitch_config::Config) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "sqlswitch".into());
    let port = config.clusters.first().map_or(0, |c| c.listen.port());
    format!("{host}:{port}")
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::ReadWrite => "read-write",
        Mode::ReadOnly => "read-only",
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How long after a failed etcd session the next is tried.
const RETRY: Duration = Duration::from_millis(500);

/// How long `mode`, `drain` and the like wait for every instance to apply their change.
const PROPAGATION: Duration = Duration::from_secs(5);

/// Why the end of a change was not published: another instance resolved it.
const TAKEN_OVER: &str = "fleet: the change was taken over by another instance";

/// How a takeover's connections are named where the server shows them.
const TAKEOVER: &str = "sqlswitch-fleet-takeover";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_routing_document_keeps_its_shape() {
        let doc = Routing {
            generation: 3,
            primary: "pg1".into(),
            mode: "read-write".into(),
            detached: false,
            draining: vec!["pg3".into()],
            change: Some(Change {
                kind: "switchover".into(),
                by: "a".into(),
                from: "pg1".into(),
                target: "pg2".into(),
                step: "hold".into(),
                timeout_ms: 30_000,
            }),
        };
        let text = serde_json::to_string(&doc).unwrap();
        assert_eq!(serde_json::from_str::<Routing>(&text).unwrap(), doc);
        // Without a change, none is written; an older document without the optional fields reads.
        let plain: Routing = serde_json::from_str(r#"{"generation":1,"primary":"pg1","mode":"read-only"}"#).unwrap();
        assert!(plain.change.is_none() && plain.draining.is_empty() && !plain.detached);
        assert!(!serde_json::to_string(&plain).unwrap().contains("change"));
    }
}
