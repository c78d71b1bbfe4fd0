//! The session core's rules over a fake connection: a transaction never moves to another
//! server, a release never hangs, and a connection is replaced only between transactions.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::pool::PoolKey;

/// A connection that records what the core asked of it; `frozen` makes its reset hang, as on
/// a server stopped with SIGSTOP.
struct Fake {
    backend: usize,
    frozen: bool,
    released: Arc<AtomicUsize>,
}

impl crate::pool::Rehome for Fake {
    fn rehome(self) -> std::io::Result<Self> {
        Ok(self)
    }
}

impl Pooled for Fake {
    fn is_reusable(&self) -> bool {
        true
    }

    async fn close(self) {}
}

impl Link for Fake {
    const WATCHED: bool = true;

    async fn replay(&mut self, _sql: &[String]) -> Result<(), BackendError> {
        Ok(())
    }

    async fn set_read_only(&mut self, _on: bool) -> Result<(), BackendError> {
        Ok(())
    }

    async fn release(self, _cluster: &Cluster, _backend: usize, _key: &PoolKey, _state: &SessionState) {
        if self.frozen {
            std::future::pending::<()>().await;
        }
        self.released.fetch_add(1, Ordering::SeqCst);
    }
}

fn cluster() -> Arc<Cluster> {
    let text = "[[cluster]]\nname = \"app\"\nprotocol = \"postgres\"\nlisten = \"127.0.0.1:0\"\n\
                [[cluster.user]]\nname = \"app\"\npassword = \"app\"\n\
                [[cluster.backend]]\nname = \"one\"\naddress = \"127.0.0.1:1\"\nrole = \"primary\"\n\
                [[cluster.backend]]\nname = \"two\"\naddress = \"127.0.0.1:2\"\nrole = \"replica\"\n";
    let config = sqlswitch_config::Config::parse(text, std::path::Path::new("t.toml"), |_| None).expect("config");
    let registry = crate::metrics::Registry::start(None).expect("registry");
    let cluster_config = config.clusters.into_iter().next().expect("a cluster");
    Cluster::new(cluster_config, &registry)
}

/// A core whose primary connection (to backend 0) is active, with `released` counting resets.
fn on_primary<'a>(cluster: &'a Cluster, released: &Arc<AtomicUsize>, frozen: bool) -> Core<'a, Fake> {
    let mut core = Core::new(cluster, false);
    let conn = Fake { backend: 0, frozen, released: Arc::clone(released) };
    core.slots[Side::Primary] = Some(Box::new(Slot::new(cluster, 0, conn)));
    core.active = Some(Side::Primary);
    core
}

fn key() -> PoolKey {
    PoolKey::new("app", [("database", "app")])
}

#[tokio::test]
async fn an_open_transaction_never_moves_to_a_new_primary() {
    let cluster = cluster();
    let released = Arc::new(AtomicUsize::new(0));
    let mut core = on_primary(&cluster, &released, false);
    let opened = AtomicUsize::new(0);
    let open = |backend| {
        opened.fetch_add(1, Ordering::SeqCst);
        let released = Arc::clone(&released);
        async move { Ok(Fake { backend, frozen: false, released }) }
    };
    let e = core.ready(Side::Primary, 1, &key(), Tx::Open, open).await.err().expect("the transaction ends");
    assert!(matches!(e, BackendError::Ended(why) if why == DEPOSED), "{e:?}");
    assert_eq!(opened.load(Ordering::SeqCst), 0, "no connection to the new primary");
    assert_eq!(released.load(Ordering::SeqCst), 0, "closed, not reset and pooled");
    assert!(core.slots[Side::Primary].is_none() && core.active.is_none());
}

#[tokio::test]
async fn between_transactions_the_connection_moves() {
    let cluster = cluster();
    let released = Arc::new(AtomicUsize::new(0));
    let mut core = on_primary(&cluster, &released, false);
    let r = Arc::clone(&released);
    let open = move |backend| async move { Ok(Fake { backend, frozen: false, released: r }) };
    let slot = core.ready(Side::Primary, 1, &key(), Tx::None, open).await.expect("moves");
    assert_eq!((slot.backend, slot.conn.backend), (1, 1));
    assert_eq!(released.load(Ordering::SeqCst), 1, "the old connection was reset and pooled");
}

#[tokio::test]
async fn a_lost_lease_ends_an_open_transaction_even_on_the_same_primary() {
    let cluster = cluster();
    let released = Arc::new(AtomicUsize::new(0));
    let mut core = on_primary(&cluster, &released, false);
    // The lease ran out a moment ago (the clock starts at its first reading).
    let _ = crate::gate::now_micros();
    std::thread::sleep(Duration::from_millis(2));
    cluster.gate.lease_until.store(0, Ordering::Relaxed);
    assert!(!core.settled(Side::Primary, 0, Tx::Open), "the fast path does not skip the check");
    let r = Arc::clone(&released);
    let open = move |backend| async move { Ok(Fake { backend, frozen: false, released: r }) };
    let e = core.ready(Side::Primary, 0, &key(), Tx::Open, open).await.err().expect("the transaction ends");
    assert!(matches!(e, BackendError::Ended(why) if why == LEASE_LOST), "{e:?}");
    // Outside a transaction the gate, not the core, decides (the session waits there).
    let mut idle = on_primary(&cluster, &released, false);
    assert!(idle.may_go_on(Side::Primary, 0, Tx::None).is_ok());
    assert!(idle.may_go_on(Side::Primary, 0, Tx::Owed).is_ok(), "answers owed outside a transaction: reads go on");
    let moved = idle.may_go_on(Side::Primary, 1, Tx::Owed);
    assert!(matches!(moved, Err(BackendError::Ended(_))), "answers owed never move to another primary");
    idle.active = Some(Side::Replica);
    assert!(idle.may_go_on(Side::Primary, 1, Tx::Open).is_ok(), "a transaction on a replica is not the primary's");
}

#[tokio::test(start_paused = true)]
async fn a_release_to_a_frozen_server_is_bounded() {
    let cluster = cluster();
    let released = Arc::new(AtomicUsize::new(0));
    let mut core = on_primary(&cluster, &released, true);
    let started = tokio::time::Instant::now();
    core.release_all(&key()).await;
    let waited = started.elapsed();
    assert!(waited >= RELEASE_DEADLINE && waited < RELEASE_DEADLINE + Duration::from_secs(1), "{waited:?}");
    assert!(core.slots[Side::Primary].is_none());
}
