//! The pool's unit tests.

use super::*;

impl Rehome for u32 {
    fn rehome(self) -> std::io::Result<Self> {
        Ok(self)
    }
}

impl Pooled for u32 {
    fn is_reusable(&self) -> bool {
        true
    }

    async fn close(self) {}

    fn hold(&mut self, _: Place) {}
}

fn pool(max_idle: usize) -> Pool<&'static str, u32> {
    Pool::new(max_idle, super::PoolMetrics::default())
}

#[test]
fn keeps_per_key_and_caps() {
    let pool = pool(2);
    assert_eq!(pool.put(&"a", 1), None);
    assert_eq!(pool.put(&"a", 2), None);
    assert_eq!(pool.put(&"a", 3), Some(3));
    assert_eq!(pool.put(&"b", 4), None);
    assert_eq!(pool.take(&"a", false), Some(2));
    assert_eq!(pool.take(&"c", false), None);
    assert_eq!(pool.idle_count(), 2);
}

#[test]
fn take_idle_takes_what_a_checkout_would_without_waiting() {
    let pool = pool(8);
    let limits = |shuffle| Limits { max_open: 0, wait: Duration::from_secs(1), per_key: 2, shuffle };
    assert_eq!(pool.take_idle(&"a", limits(false)), None);
    assert_eq!(pool.put(&"a", 1), None);
    assert_eq!(pool.put(&"a", 2), None);
    assert_eq!(pool.take_idle(&"a", limits(true)), Some(1), "shuffling: the one returned longest ago");
    assert_eq!(pool.take_idle(&"a", limits(true)), None, "shuffling: never the only one idle");
    assert_eq!(pool.take_idle(&"a", limits(false)), Some(2), "the most recently returned");
    assert_eq!(pool.idle_count(), 0);
}

#[test]
fn evicts_the_oldest_of_any_key_and_expires_idle_ones() {
    let pool = pool(8);
    assert_eq!(pool.put(&"a", 1), None);
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(pool.put(&"b", 2), None);
    assert_eq!(pool.put(&"a", 3), None);
    assert_eq!(pool.evict_oldest(), Some(1));
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(pool.put(&"a", 4), None);
    let mut gone = pool.expired(Duration::from_millis(10), 0);
    gone.sort_unstable();
    assert_eq!(gone, vec![2, 3]);
    assert_eq!(pool.idle_count(), 1);
    assert_eq!(pool.take(&"a", true), None, "shuffling: not the only one idle");
    assert_eq!(pool.take(&"a", false), Some(4));
    assert_eq!(pool.evict_oldest(), None);
}

/// A connection that counts itself open, as the real ones do through their guard.
#[derive(Debug)]
struct Counted(u32, Arc<OpenCount>, Option<Place>);

impl Rehome for Counted {
    fn rehome(self) -> std::io::Result<Self> {
        Ok(self)
    }
}

impl Pooled for Counted {
    fn is_reusable(&self) -> bool {
        true
    }

    async fn close(self) {
        self.1.closed();
    }

    fn hold(&mut self, place: Place) {
        self.2 = Some(place);
    }
}

/// A pool of [`Counted`] connections and their count.
fn counted_pool() -> (Arc<OpenCount>, Pool<&'static str, Counted>) {
    let count = Arc::new(OpenCount::default());
    let metrics = super::PoolMetrics { count: Arc::clone(&count), ..Default::default() };
    (count, Pool::new(8, metrics))
}

/// What opens connection `n`, counted in `count`, at once.
fn opener(count: &Arc<OpenCount>, n: u32) -> impl Fn() -> std::future::Ready<Result<Counted, BackendError>> + use<> {
    let count = Arc::clone(count);
    move || {
        count.opened();
        std::future::ready(Ok(Counted(n, Arc::clone(&count), None)))
    }
}

#[tokio::test]
async fn a_full_backend_makes_room_from_idle_connections_or_waits() {
    let (count, pool) = counted_pool();
    let limits = Limits { max_open: 1, wait: Duration::from_millis(50), per_key: 0, shuffle: false };
    let open = |n: u32| opener(&count, n);
    // One open and idle under another key: closed to make room.
    count.opened();
    assert!(pool.put(&"other", Counted(7, Arc::clone(&count), None)).is_none());
    let first = pool.checkout(&"mine", limits, open(1)).await.ok();
    assert_eq!(first.as_ref().map(|c| c.0), Some(1));
    assert_eq!(count.get(), 1);
    // One open and in use: the client waits, then is told.
    let started = std::time::Instant::now();
    let err = pool.checkout(&"mine", limits, open(2)).await.err();
    assert!(err.is_some_and(|e| e.to_string().contains("max_backend_connections")));
    assert!(started.elapsed() >= Duration::from_millis(50));
    // The one in use going idle under the client's key is taken as soon as it is back.
    let waiting = pool.checkout(&"mine", Limits { wait: Duration::from_secs(5), ..limits }, open(3));
    assert_eq!(pool.waiting(), 0, "a refused session no longer counts as waiting");
    let (got, ()) = tokio::join!(waiting, async {
        while pool.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.waiting(), 1, "the session waiting for room is counted");
        if let Some(c) = first {
            assert!(pool.put(&"mine", c).is_none());
        }
    });
    assert_eq!(got.ok().map(|c| c.0), Some(1));
    assert_eq!(count.get(), 1);
    assert_eq!(pool.waiting(), 0, "nor one that got its connection");
}

/// Sessions opening connections at once never pass the limit together: the place is taken
/// before the login, in one atomic step (ten at once under a limit of two: two open, the
/// others wait and are told).
#[tokio::test]
async fn concurrent_opens_never_pass_the_limit() {
    let (count, pool) = counted_pool();
    let limits = Limits { max_open: 2, wait: Duration::from_millis(50), per_key: 0, shuffle: false };
    let open = |n: u32| {
        let count = Arc::clone(&count);
        move || {
            let count = Arc::clone(&count);
            async move {
                // A login takes a while: every session checks the limit before any is open.
                tokio::time::sleep(Duration::from_millis(5)).await;
                count.opened();
                Ok(Counted(n, count, None))
            }
        }
    };
    let all = futures::future::join_all((0..10).map(|n| pool.checkout(&"k", limits, open(n)))).await;
    let opened = all.iter().filter(|r| r.is_ok()).count();
    assert_eq!(opened, 2, "{all:?}");
    assert_eq!(count.get(), 2);
    assert!(all.iter().filter_map(|r| r.as_ref().err()).all(|e| matches!(e, BackendError::Full { .. })));
}

#[test]
fn a_pool_key_gives_back_its_user_and_parameters_in_order() {
    let key = PoolKey::new("app", [("database", "app"), ("options", "-c a=1:2"), ("empty", ""), ("10:x", "9:")]);
    assert_eq!(key.user(), "app");
    let params: Vec<_> = key.params().collect();
    assert_eq!(params, [("database", "app"), ("options", "-c a=1:2"), ("empty", ""), ("10:x", "9:")]);
    assert_eq!(PoolKey::new("", Vec::<(String, String)>::new()).params().count(), 0);
}

#[test]
fn pool_keys_differ_when_their_logins_differ() {
    // Lengths keep fields apart: no user or value can pass for a neighbouring field.
    let a = PoolKey::new("ab", [("c", "d")]);
    assert_ne!(a, PoolKey::new("a", [("bc", "d")]));
    assert_ne!(a, PoolKey::new("ab1:c1:d", Vec::<(&str, &str)>::new()));
    assert_ne!(PoolKey::new("u", [("a", "1:b1:c")]), PoolKey::new("u", [("a", ""), ("b", "c")]));
    assert_eq!(a, PoolKey::new("ab", [("c".to_owned(), "d".to_owned())]));
}

/// Past a key's `pool_size`, clients wait in line: each connection given back goes to the first
/// of them, and a client that gave up is skipped (three waiting, one connection: served in
/// the order they came, none opened).
#[tokio::test]
async fn a_full_key_serves_its_waiters_first_come_first_served() {
    let (count, pool) = counted_pool();
    let limits = Limits { max_open: 0, wait: Duration::from_secs(5), per_key: 1, shuffle: false };
    let open = |n: u32| opener(&count, n);
    let first = pool.checkout(&"k", limits, open(1)).await.ok();
    let gave_up = pool.checkout(&"k", Limits { wait: Duration::from_millis(1), ..limits }, open(8)).await;
    assert!(gave_up.is_err_and(|e| e.to_string().contains("pool_size")));
    let served = std::sync::Mutex::new(Vec::new());
    let waiter = |i: usize| {
        let (pool, served, open) = (&pool, &served, open(9));
        async move {
            let c = pool.checkout(&"k", limits, open).await.expect("served");
            served.lock().unwrap().push((i, c.0));
            assert!(pool.put(&"k", c).is_none());
        }
    };
    let driver = async {
        while pool.waiting() < 3 {
            tokio::task::yield_now().await;
        }
        if let Some(c) = first {
            assert!(pool.put(&"k", c).is_none());
        }
    };
    tokio::join!(waiter(0), waiter(1), waiter(2), driver);
    assert_eq!(*served.lock().unwrap(), [(0, 1), (1, 1), (2, 1)]);
    assert_eq!(count.get(), 1, "no connection opened past the key's limit");
}
