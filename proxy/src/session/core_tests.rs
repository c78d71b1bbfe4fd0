//! The session core's rules over a fake connection: a transaction never moves to another
//! server, a release never hangs, a connection is replaced only between transactions; the gate
//! holds primary work and lets reads through; a failed replica is kept out and a refused
//! replay pins the session; reads wait for a replica that has the session's last write; and
//! whenever `settled` says so, `ready` does nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::pool::{PoolKey, Pooled};

/// A connection that records what the core asked of it; `frozen` makes its reset hang, as on
/// a server stopped with SIGSTOP.
struct Fake {
    backend: usize,
    frozen: bool,
    released: Arc<AtomicUsize>,
    /// Replays, read-only settings and clears asked of it.
    asked: Arc<AtomicUsize>,
    /// What it holds of a session's state as it comes from the pool (`None`: another's).
    held: Option<usize>,
    /// Whether the server would say it still holds unmovable state.
    holding: bool,
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

    fn hold(&mut self, _: crate::pool::Place) {}
}

impl Link for Fake {
    const WATCHED: bool = true;
    const CHECKED: u8 = crate::session::state::Held::PG_CHECKED;

    async fn holds_unmovable(&mut self, _aside: &mut bytes::BytesMut) -> Result<bool, BackendError> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        Ok(self.holding)
    }

    fn holds(&self, _replay: &[String]) -> Option<usize> {
        self.held
    }

    async fn clear(&mut self) -> Result<(), BackendError> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        self.held = Some(0);
        Ok(())
    }

    fn take_statements(&mut self) -> Vec<(String, bytes::Bytes)> {
        Vec::new()
    }

    async fn give_back(self, _cluster: &Cluster, _backend: usize, _key: &PoolKey, _held: Held, _reset: bool) {
        self.released.fetch_add(1, Ordering::SeqCst);
    }

    async fn replay(&mut self, _sql: &[String]) -> Result<(), BackendError> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn set_read_only(&mut self, _on: bool) -> Result<(), BackendError> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    const GIVES_BACK_NOW: bool = true;

    fn give_back_now(self, _cluster: &Cluster, _backend: usize, _key: &PoolKey, _held: Held) {
        self.released.fetch_add(1, Ordering::SeqCst);
    }

    async fn release(self, _cluster: &Cluster, _backend: usize, _key: &PoolKey, _state: &SessionState) {
        if self.frozen {
            std::future::pending::<()>().await;
        }
        self.released.fetch_add(1, Ordering::SeqCst);
    }
}

fn cluster() -> Arc<Cluster> {
    cluster_with("")
}

/// A cluster of a primary (backend 0) and a replica (backend 1), with `extra` cluster keys.
fn cluster_with(extra: &str) -> Arc<Cluster> {
    let text = "[[cluster]]\nname = \"app\"\nprotocol = \"postgres\"\nlisten = \"127.0.0.1:0\"\n".to_owned()
        + extra
        + "\
                [[cluster.user]]\nname = \"app\"\npassword = \"app\"\n\
                [[cluster.backend]]\nname = \"one\"\naddress = \"127.0.0.1:1\"\nrole = \"primary\"\n\
                [[cluster.backend]]\nname = \"two\"\naddress = \"127.0.0.1:2\"\nrole = \"replica\"\n";
    let config = sqlswitch_config::Config::parse(&text, std::path::Path::new("t.toml"), |_| None).expect("config");
    let registry = crate::metrics::Registry::start(None).expect("registry");
    let cluster_config = config.clusters.into_iter().next().expect("a cluster");
    Cluster::new(cluster_config, &registry)
}

/// A core whose primary connection (to backend 0) is active, with `released` counting resets.
fn on_primary<'a>(cluster: &'a Cluster, released: &Arc<AtomicUsize>, frozen: bool) -> Core<'a, Fake> {
    let mut core = Core::new(cluster, false, "app");
    let conn =
        Fake { backend: 0, frozen, released: Arc::clone(released), asked: Arc::default(), held: None, holding: false };
    core.slots[Side::Primary] = Some(Box::new(Slot::new(cluster, 0, conn)));
    core.active = Some(Side::Primary);
    core
}

/// A connection to backend 1 (the replica), its releases counted in `released`.
fn replica(released: &Arc<AtomicUsize>) -> Fake {
    Fake {
        backend: 1,
        frozen: false,
        released: Arc::clone(released),
        asked: Arc::default(),
        held: None,
        holding: false,
    }
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
        async move { Ok(Fake { backend, frozen: false, released, asked: Arc::default(), held: None, holding: false }) }
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
    let open = move |backend| async move {
        Ok(Fake { backend, frozen: false, released: r, asked: Arc::default(), held: None, holding: false })
    };
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
    let open = move |backend| async move {
        Ok(Fake { backend, frozen: false, released: r, asked: Arc::default(), held: None, holding: false })
    };
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

const READ: route::Batch = route::Batch { read: true, begins_read_only_tx: false, session_state: false };

/// Backend 1, the replica, as the monitor sees it after a check: up, caught up to `t`.
fn replica_caught_up_to(cluster: &Cluster, t: u64) {
    let health = &cluster.backends[1].health;
    health.up.store(true, Ordering::Relaxed);
    health.caught_up_to.store(t, Ordering::Relaxed);
    health.lag_micros.store(0, Ordering::Relaxed);
}

#[tokio::test(start_paused = true)]
async fn the_gate_holds_primary_work_and_lets_reads_through() {
    let cluster = cluster();
    let mut writer = Core::<Fake>::new(&cluster, false, "app");
    let mut reader = Core::<Fake>::new(&cluster, false, "app");
    cluster.gate.set(|h| h.primary = true);
    assert!(matches!(reader.pass(false, true).await, Ok(true)), "a replica read passes a switchover's hold");
    let held = tokio::time::timeout(Duration::from_millis(500), writer.pass(true, false)).await;
    assert!(held.is_err(), "primary work waits while the hold lasts");
    assert!(!writer.in_primary_work(), "a waiting session is not counted in flight: the drain does not wait for it");
    assert_eq!(cluster.gate.primary_busy.load(Ordering::SeqCst), 0);
    cluster.gate.set(|h| h.primary = false);
    let through = tokio::time::timeout(Duration::from_millis(500), writer.pass(true, false)).await;
    assert!(matches!(through, Ok(Ok(true))), "through once the hold ends");
    assert!(writer.in_primary_work());
    assert_eq!(cluster.gate.primary_busy.load(Ordering::SeqCst), 1, "counted while in flight");
    writer.leave_primary();
    assert_eq!(cluster.gate.primary_busy.load(Ordering::SeqCst), 0, "counted out when it is over");
}

#[test]
fn a_failed_replica_is_kept_out_and_a_refused_replay_pins_the_session() {
    let cluster = cluster();
    let released = Arc::new(AtomicUsize::new(0));
    let mut core = on_primary(&cluster, &released, false);
    core.slots[Side::Replica] = Some(Box::new(Slot::new(&cluster, 1, replica(&released))));
    core.fall_back(&BackendError::Timeout);
    assert!(core.slots[Side::Replica].is_none(), "the replica's connection is dropped");
    assert!(!cluster.backends[1].health.is_up(), "and the replica is out until the monitor sees it again");
    assert!(!core.state.pinned(), "the replica, not the session, was the problem");
    let refused = BackendError::Refused { error: bytes::Bytes::new(), message: "no such setting".into() };
    core.fall_back(&refused);
    assert!(core.state.pinned(), "a replica refused the session's own state: the session stays on the primary");
    let d = core.route(&READ, Tx::None);
    assert_eq!((d.side, d.reason), (Side::Primary, Reason::Pinned));
}

#[test]
fn reads_wait_for_a_replica_that_has_the_sessions_last_write() {
    let cluster = cluster_with("monitor = { user = \"m\", password = \"m\" }\n");
    let mut core = Core::<Fake>::new(&cluster, false, "app");
    let before = cluster.clock.now().max(1);
    replica_caught_up_to(&cluster, before);
    let d = core.route(&READ, Tx::None);
    assert_eq!((d.side, d.backend, d.reason), (Side::Replica, 1, Reason::Read));
    std::thread::sleep(Duration::from_millis(1));
    core.wrote();
    let d = core.route(&READ, Tx::None);
    assert_eq!((d.side, d.reason), (Side::Primary, Reason::ReadYourWrites), "the replica lacks the write");
    std::thread::sleep(Duration::from_millis(1));
    replica_caught_up_to(&cluster, cluster.clock.now());
    let d = core.route(&READ, Tx::None);
    assert_eq!((d.side, d.reason), (Side::Replica, Reason::Read), "it has replayed past the write");
    let d = core.route(&route::Batch { read: false, ..READ }, Tx::None);
    assert_eq!((d.side, d.reason), (Side::Primary, Reason::Write));
    let d = core.route(&READ, Tx::Open);
    assert_eq!((d.side, d.reason), (Side::Primary, Reason::Transaction), "a read inside a transaction stays there");
}

/// For every combination of a slot's backend, staleness and maintenance setting, the
/// session's maintenance and read-only flags, its state to replay and the transaction:
/// whenever [`Core::settled`] holds, [`Core::ready`] opens, replays and sets nothing, and keeps
/// the slot.
#[tokio::test]
async fn whenever_settled_holds_ready_does_nothing() {
    let cluster = cluster();
    let released = Arc::new(AtomicUsize::new(0));
    let mut settled_cases = 0;
    for case in 0u32..256 {
        let bit = |b: u32| case & (1 << b) != 0;
        let mut core = on_primary(&cluster, &released, false);
        let asked = Arc::new(AtomicUsize::new(0));
        let slot_backend = usize::from(bit(0));
        let conn = Fake {
            backend: slot_backend,
            frozen: false,
            released: Arc::clone(&released),
            asked: Arc::clone(&asked),
            held: None,
            holding: false,
        };
        let mut slot = Slot::new(&cluster, slot_backend, conn);
        slot.stale = bit(1);
        slot.maintenance = bit(2);
        if bit(3) {
            core.state.replay.push("SET x = 1".into());
            slot.applied.replayed = usize::from(bit(4));
        }
        core.slots[Side::Primary] = Some(Box::new(slot));
        core.maintenance = bit(5).then_some("maintenance");
        core.read_only = bit(6);
        let tx = if bit(7) { Tx::Open } else { Tx::None };
        if !core.settled(Side::Primary, 0, tx) {
            continue;
        }
        settled_cases += 1;
        let serial = core.slots[Side::Primary].as_ref().map(|s| s.serial);
        let open = |_backend| async { Err::<Fake, _>(BackendError::Protocol("opened".into())) };
        let slot = core.ready(Side::Primary, 0, &key(), tx, open).await.expect("nothing to do");
        assert_eq!(Some(slot.serial), serial, "case {case:#b}: the same slot");
        assert_eq!(asked.load(Ordering::SeqCst), 0, "case {case:#b}: nothing replayed or set");
    }
    assert!(settled_cases >= 8, "the common case is covered: {settled_cases}");
    assert_eq!(released.load(Ordering::SeqCst), 0, "nothing released");
}

#[test]
fn a_statements_note_pins_and_an_unmovable_one_stays_unmovable_until_discard_all() {
    let cluster = cluster();
    let released = Arc::new(AtomicUsize::new(0));
    let mut core = on_primary(&cluster, &released, false);
    core.note(Note::default());
    assert!(!core.state().pinned(), "a plain statement leaves the session free");
    core.note(Note { pins: true, unmovable: None, releases: false });
    assert!(core.state().pinned() && core.state().unmovable().is_none(), "pinned to the primary, still movable");
    core.note(Note { pins: false, unmovable: Some("a temporary table"), releases: false });
    assert_eq!(core.state().unmovable(), Some("a temporary table"), "an unmovable note implies the pin");
    core.note(Note { pins: true, unmovable: Some("LISTEN"), releases: false });
    assert_eq!(core.state().unmovable(), Some("a temporary table"), "the first reason is the one told");
    core.discarded(Side::Replica);
    assert!(core.state().unmovable().is_some(), "a DISCARD ALL elsewhere leaves the primary's state");
    core.discarded(Side::Primary);
    assert!(!core.state().pinned(), "a DISCARD ALL on the primary connection leaves nothing that pins");
    let pooled = cluster_with("pool_mode = \"transaction\"\n");
    let mut core = on_primary(&pooled, &released, false);
    core.note(Note { pins: true, unmovable: Some("an advisory lock"), releases: false });
    let key = PoolKey::new("app", Vec::<(&str, &str)>::new());
    assert!(!core.transaction_ended(&key), "the lock keeps the connection");
    core.discarded(Side::Primary);
    assert!(core.transaction_ended(&key), "until a DISCARD ALL releases it");
}

#[test]
fn a_users_pool_mode_overrides_the_clusters() {
    let pooled = cluster_with("pool_mode = \"transaction\"\npool_size = 3\n");
    assert_eq!(pooled.limits("app").per_key, 3);
    assert_eq!(pooled.limits("looked-up").per_key, 3, "a user not listed pools as the cluster says");
    let text = "pool_mode = \"transaction\"\n[[cluster.user]]\nname = \"migrate\"\npassword = \"m\"\npool_mode = \"session\"\n";
    let mixed = cluster_with(text);
    assert_eq!(mixed.limits("migrate").per_key, 0, "a session-mode user's sessions keep their connections");
    let released = Arc::new(AtomicUsize::new(0));
    let key = PoolKey::new("migrate", Vec::<(&str, &str)>::new());
    let mut core = Core::<Fake>::new(&mixed, false, "migrate");
    let conn = Fake {
        backend: 0,
        frozen: false,
        released: Arc::clone(&released),
        asked: Arc::default(),
        held: None,
        holding: false,
    };
    core.slots[Side::Primary] = Some(Box::new(Slot::new(&mixed, 0, conn)));
    core.active = Some(Side::Primary);
    assert!(!core.transaction_ended(&key), "the session-mode user keeps its connection");
    let session = cluster_with("[[cluster.user]]\nname = \"web\"\npassword = \"w\"\npool_mode = \"transaction\"\n");
    assert!(session.config.pools_transactions());
    assert_eq!(session.limits("web").per_key, 20);
    let mut core = on_primary(&session, &released, false);
    let app = PoolKey::new("app", Vec::<(&str, &str)>::new());
    assert!(!core.transaction_ended(&app), "the cluster's session mode for users without their own");
}

#[test]
fn a_recorded_setting_is_replayed_on_the_other_connection_only_and_discard_forgets_it() {
    let cluster = cluster();
    let released = Arc::new(AtomicUsize::new(0));
    let mut core = on_primary(&cluster, &released, false);
    let conn = Fake {
        backend: 1,
        frozen: false,
        released: Arc::clone(&released),
        asked: Arc::default(),
        held: None,
        holding: false,
    };
    core.slots[Side::Replica] = Some(Box::new(Slot::new(&cluster, 1, conn)));
    core.recorded(Side::Primary, "SET TimeZone = 'UTC'".into());
    assert_eq!(core.slot(Side::Primary).map(|s| s.applied.replayed), Some(1), "the connection that ran it has it");
    assert!(!core.settled(Side::Replica, 1, Tx::None), "the replica's connection must be given it first");
    assert!(core.settled(Side::Primary, 0, Tx::None));
    core.discarded(Side::Replica);
    assert!(core.state().replay.is_empty(), "DISCARD ALL forgets the session's settings");
    assert!(core.slot(Side::Primary).is_some_and(|s| s.stale), "the connection that still holds them is replaced");
    assert!(core.slot(Side::Replica).is_some_and(|s| !s.stale && s.applied.replayed == 0));
}

#[test]
fn a_write_is_refused_for_the_session_first_then_for_maintenance() {
    let cluster = cluster();
    let mut core = Core::<Fake>::new(&cluster, true, "app");
    assert_eq!(core.refusal(true, true), Some(Refused::ReadOnly));
    assert_eq!(core.refusal(false, true), None, "a read-only session's unsure statement goes to a replica's refusal");
    core.maintenance = Some("the primary is away");
    assert_eq!(core.refusal(true, true), Some(Refused::ReadOnly), "the session's own standing is the reason given");
    core.set_read_only(false);
    assert_eq!(core.refusal(false, true), Some(Refused::Maintenance("the primary is away")));
    assert_eq!(core.refusal(false, false), None, "reads go on in maintenance");
}

#[test]
fn a_taken_connection_is_no_longer_active_and_a_start_makes_one_active() {
    let cluster = cluster();
    let released = Arc::new(AtomicUsize::new(0));
    let mut core = on_primary(&cluster, &released, false);
    assert_eq!(core.active(), Some(Side::Primary));
    assert!(core.take(Side::Primary).is_some());
    assert_eq!(core.active(), None, "no active side points at a connection the session gave up");
    core.activate(Side::Primary);
    assert_eq!(core.active(), None, "a side without a connection is never made active");
    let conn = Fake {
        backend: 1,
        frozen: false,
        released: Arc::clone(&released),
        asked: Arc::default(),
        held: None,
        holding: false,
    };
    core.start(Side::Replica, Slot::new(&cluster, 1, conn));
    assert_eq!(core.active(), Some(Side::Replica));
    assert!(core.take_all().into_iter().any(|(_, s)| s.is_some()) && core.active().is_none());
}

/// Transaction pooling: a session without unmovable state gives its connections back at each
/// transaction's end, but keeps them through the transaction after one that wrote (a
/// `currval` there reads its own value); a pin or a custom parameter keeps them for good;
/// session pooling never gives them back.
#[test]
fn connections_go_back_between_transactions_unless_the_session_holds_them() {
    let released = Arc::new(AtomicUsize::new(0));
    let key = PoolKey::new("app", Vec::<(&str, &str)>::new());
    let session_mode = cluster();
    let mut core = on_primary(&session_mode, &released, false);
    assert!(!core.transaction_ended(&key), "session pooling keeps the connections");

    let cluster = cluster_with("pool_mode = \"transaction\"\n");
    let mut core = on_primary(&cluster, &released, false);
    assert!(core.transaction_ended(&key), "a read-only transaction's end gives them back");
    core.wrote();
    assert!(!core.transaction_ended(&key), "kept through the next transaction after a write");
    assert!(core.slot(Side::Primary).is_some_and(|s| s.wrote), "and what the write left is discarded later");
    assert!(core.transaction_ended(&key), "given back after the next one");
    core.define("s1", bytes::Bytes::from_static(b"P"), true);
    assert!(core.transaction_ended(&key), "a named statement goes with its connection");
    core.note(Note { pins: true, unmovable: Some("a temporary table"), releases: false });
    assert!(!core.transaction_ended(&key), "unmovable state keeps the connection");
}

/// A connection from the pool that holds the start of the session's state is taken as it
/// is (only the rest is replayed); one holding another session's state is cleared first.
#[tokio::test]
async fn a_pooled_connection_keeps_what_the_session_shares_and_clears_the_rest() {
    let cluster = cluster_with("pool_mode = \"transaction\"\n");
    let released = Arc::new(AtomicUsize::new(0));
    // Asked of it: nothing when it holds the state; else a clear, then the replay.
    for (held, asked_of_it) in [(Some(1), 0), (None, 2)] {
        let mut core = Core::<Fake>::new(&cluster, false, "app");
        core.starts_with(vec!["SET application_name = 'a'".into()]);
        let asked = Arc::new(AtomicUsize::new(0));
        let (r, a) = (Arc::clone(&released), Arc::clone(&asked));
        let open = move |backend| async move {
            Ok(Fake { backend, frozen: false, released: r, asked: a, held, holding: false })
        };
        let slot = core.ready(Side::Primary, 0, &key(), Tx::None, open).await.expect("a connection");
        assert_eq!(slot.applied.replayed, 1, "the session's state is on it");
        assert_eq!(asked.load(Ordering::SeqCst), asked_of_it, "held {held:?}");
    }
}

/// Only each parameter's last setting is replayed (PostgreSQL): a `RESET ROLE` removes the
/// `SET ROLE` before it (replayed after the role is dropped, it would fail every statement of
/// the session), a new `search_path` the old one; `PREPARE` and the login's settings stay; the
/// other connection, which ran the removed setting, counts only what is left of what it ran.
#[test]
fn only_each_parameters_last_setting_is_replayed() {
    use super::super::state::parameter_of;
    for (sql, param) in [
        ("SET ROLE x", Some("role")),
        ("reset role;", Some("role")),
        ("set role regress_user;\n", Some("role")),
        ("SET SESSION search_path = a, b", Some("search_path")),
        ("SET TIME ZONE 'UTC'", Some("timezone")),
        ("SET SESSION AUTHORIZATION x", Some("session_authorization")),
        ("RESET ALL", Some("all")),
        ("SET LOCAL x = 1", None),
        ("PREPARE q AS SELECT 1", None),
        ("SELECT set_config('a', 'b', false)", None),
    ] {
        assert_eq!(parameter_of(sql).as_deref(), param, "{sql}");
    }
    let cluster = cluster();
    let released = Arc::new(AtomicUsize::new(0));
    let mut core = on_primary(&cluster, &released, false);
    core.starts_with(vec!["SET application_name = 'app'".into()]);
    let conn = Fake {
        backend: 1,
        frozen: false,
        released: Arc::clone(&released),
        asked: Arc::default(),
        held: None,
        holding: false,
    };
    core.slots[Side::Replica] = Some(Box::new(Slot::new(&cluster, 1, conn)));
    for sql in ["SET search_path = a", "PREPARE q AS SELECT 1", "SET ROLE x"] {
        core.recorded(Side::Primary, sql.into());
    }
    if let Some(replica) = core.slots[Side::Replica].as_mut() {
        replica.applied.replayed = 4;
    }
    core.recorded(Side::Primary, "RESET ROLE".into());
    core.recorded(Side::Primary, "SET search_path = b".into());
    let replay: Vec<&str> = core.state().replay.iter().map(String::as_str).collect();
    assert_eq!(replay, ["SET application_name = 'app'", "PREPARE q AS SELECT 1", "RESET ROLE", "SET search_path = b"]);
    assert_eq!(core.slot(Side::Primary).map(|s| s.applied.replayed), Some(4), "the connection that ran them has all");
    assert_eq!(
        core.slot(Side::Replica).map(|s| s.applied.replayed),
        Some(2),
        "the replica ran the login's setting and PREPARE of what is left; RESET ROLE and the new path follow"
    );
}

#[tokio::test]
async fn a_pin_ends_when_the_server_says_its_state_is_released() {
    use crate::session::state::Held;
    let pooled = cluster_with("pool_mode = \"transaction\"\n");
    let released = Arc::new(AtomicUsize::new(0));
    let key = PoolKey::new("app", Vec::<(&str, &str)>::new());
    let lock = Note { pins: true, unmovable: Some("an advisory lock"), releases: false };
    let unlock = Note { pins: true, unmovable: Some("an advisory lock"), releases: true };

    // Taken, then released: the server is asked once, and the session pools again.
    let mut core = on_primary(&pooled, &released, false);
    core.note(lock);
    assert!(!core.rechecks(), "nothing released yet: nothing to ask");
    core.note(unlock);
    assert!(core.rechecks());
    core.recheck_pins(&mut bytes::BytesMut::new()).await;
    assert!(!core.rechecks(), "asked once");
    assert_eq!(core.state().unmovable(), None);
    assert!(core.state().pinned(), "what pinned it may have pinned it to the primary too");
    assert!(core.transaction_ended(&key), "the connection goes back");

    // The server says something is still held (another lock, a LISTEN): the pin stays.
    let mut core = on_primary(&pooled, &released, false);
    if let Some(slot) = core.slots[Side::Primary].as_mut() {
        slot.conn.holding = true;
    }
    core.note(lock);
    core.note(Note { pins: true, unmovable: Some("LISTEN"), releases: true });
    core.recheck_pins(&mut bytes::BytesMut::new()).await;
    assert_eq!(core.state().unmovable(), Some("an advisory lock"));
    assert!(!core.transaction_ended(&key));

    // State the server cannot be asked about is never released by its answer.
    let mut core = on_primary(&pooled, &released, false);
    core.note(lock);
    core.note(Note { pins: true, unmovable: Some("session state that sqlswitch cannot replay"), releases: true });
    assert_eq!(core.state().held(), Held::ADVISORY | Held::OTHER);
    assert!(!core.rechecks(), "only a DISCARD ALL releases what the server cannot be asked about");

    // A statement that releases all of one kind (MySQL's UNLOCK TABLES) leaves the others.
    let mut core = on_primary(&pooled, &released, false);
    core.note(Note { pins: true, unmovable: Some("LOCK TABLES"), releases: false });
    core.note(Note { pins: true, unmovable: Some("a GET_LOCK() lock"), releases: false });
    core.released(Held::LOCK_TABLES);
    assert_eq!(core.state().unmovable(), Some("a GET_LOCK() lock"), "the reason left is the one told");
    core.released(Held::GET_LOCK);
    assert_eq!((core.state().unmovable(), core.state().held()), (None, 0));
}

/// Transaction pooling without awaiting: a connection the session only read on goes back at
/// once, one a transaction wrote on waits for `give_back_all` (its reset); an idle connection
/// is adopted only where the session has none and when it holds nothing another session left.
#[test]
fn read_connections_go_back_at_once_and_written_ones_wait_for_their_reset() {
    let cluster = cluster();
    let released = Arc::new(AtomicUsize::new(0));
    let mut core = on_primary(&cluster, &released, false);
    assert!(core.give_back_now(&key()));
    assert_eq!(released.load(Ordering::SeqCst), 1);
    assert!(core.slot(Side::Primary).is_none() && core.active().is_none());
    let fake = |held| Fake {
        backend: 0,
        frozen: false,
        released: Arc::clone(&released),
        asked: Arc::default(),
        held,
        holding: false,
    };
    assert!(core.adopt_idle(Side::Primary, 0, fake(None)).is_err(), "another session's state is cleared first");
    assert!(core.adopt_idle(Side::Primary, 0, fake(Some(0))).is_ok());
    assert!(core.adopt_idle(Side::Primary, 0, fake(Some(0))).is_err(), "the side has its connection");
    core.slots[Side::Primary].as_mut().expect("adopted").wrote = true;
    assert!(!core.give_back_now(&key()), "a connection a write ran on is reset first");
    assert!(core.slot(Side::Primary).is_some());
    assert_eq!(released.load(Ordering::SeqCst), 1);
}

/// A setting superseded while another connection of the session had run it: that connection
/// still has the old value beyond what its count says, so it goes back reset, never as it is
/// (another session with the same state would take it with the old setting).
#[test]
fn a_connection_holding_a_superseded_setting_goes_back_reset() {
    let cluster = cluster();
    let released = Arc::new(AtomicUsize::new(0));
    let mut core = on_primary(&cluster, &released, false);
    core.slots[Side::Replica] = Some(Box::new(Slot::new(&cluster, 1, replica(&released))));
    core.recorded(Side::Primary, "SET enable_bitmapscan = off".into());
    core.slots[Side::Replica].as_mut().expect("replica").applied.replayed = 1;
    core.recorded(Side::Primary, "RESET enable_bitmapscan".into());
    assert!(core.slot(Side::Replica).expect("replica").wrote, "the replica's connection still has it off");
    assert!(!core.slot(Side::Primary).expect("primary").wrote, "the primary ran the RESET itself");
    assert!(!core.give_back_now(&key()), "the replica's connection waits for its reset");
}
