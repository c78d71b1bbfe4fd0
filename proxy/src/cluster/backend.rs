//! One backend at run time: its name and address, its pool of idle connections (of the
//! cluster's protocol), its metrics and the monitor's view of its health.

use super::*;

/// One backend at run time.
pub struct Backend {
    /// Name from the config.
    pub name: String,
    /// `host:port`.
    pub address: String,
    /// Primary or replica: the config's starting hint.
    pub role: Role,
    /// Its group's name.
    pub group: String,
    /// Its group's index in [`Cluster::groups`]: only the primary's group serves.
    pub group_id: usize,
    /// Idle connections, of the cluster's protocol.
    pub pool: Pools,
    /// Metrics handles.
    pub metrics: BackendMetrics,
    /// What the monitor last saw.
    pub health: Health,
    /// Session connections open to it now.
    pub sessions: AtomicUsize,
    /// Statements sent to it.
    pub queries: AtomicU64,
}

/// A backend's idle connections: one pool, of its cluster's protocol.
pub enum Pools {
    /// PostgreSQL connections.
    Pg(Pool<PoolKey, BackendConn>),
    /// MySQL/MariaDB connections.
    My(Pool<PoolKey, MyConn>),
}

/// A connection type a backend pools: where its pool is.
pub trait PoolOf: crate::pool::Pooled {
    /// Its pool among `pools`; `None` when the backend speaks the other protocol.
    fn pool_in(pools: &Pools) -> Option<&Pool<PoolKey, Self>>;
}

impl PoolOf for BackendConn {
    fn pool_in(pools: &Pools) -> Option<&Pool<PoolKey, Self>> {
        match pools {
            Pools::Pg(p) => Some(p),
            Pools::My(_) => None,
        }
    }
}

impl PoolOf for MyConn {
    fn pool_in(pools: &Pools) -> Option<&Pool<PoolKey, Self>> {
        match pools {
            Pools::My(p) => Some(p),
            Pools::Pg(_) => None,
        }
    }
}

impl Backend {
    /// Where and how a connection to this backend is opened, with `timeout` to connect and log in.
    pub fn dialing(&self, timeout: std::time::Duration) -> crate::backend::Dialing<'_> {
        crate::backend::Dialing { addr: &self.address, timeout, metrics: &self.metrics }
    }

    /// A connection for `key`: a pooled one, or one `open` makes (see [`Pool::checkout`]).
    ///
    /// # Errors
    /// As [`Pool::checkout`]; a protocol error if this backend pools the other protocol.
    pub async fn checkout<C, F, Fut>(
        &self,
        key: &PoolKey,
        limits: crate::pool::Limits,
        open: F,
    ) -> Result<C, BackendError>
    where
        C: PoolOf,
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<C, BackendError>>,
    {
        match C::pool_in(&self.pool) {
            Some(pool) => pool.checkout(key, limits, open).await,
            None => Err(BackendError::Protocol("a connection of the other protocol was asked of this backend".into())),
        }
    }

    /// An idle connection for `key` taken without waiting, if there is one (see
    /// [`Pool::take_idle`]): the common case of a checkout under transaction pooling.
    pub fn take_idle<C: PoolOf + Send + 'static>(&self, key: &PoolKey, limits: crate::pool::Limits) -> Option<C> {
        C::pool_in(&self.pool)?.take_idle(key, limits)
    }

    /// Pools `conn`; returns a connection the caller must close (the pool is full, or speaks the
    /// other protocol).
    pub fn put<C: PoolOf>(&self, key: &PoolKey, conn: C) -> Option<C> {
        match C::pool_in(&self.pool) {
            Some(pool) => pool.put(key, conn),
            None => Some(conn),
        }
    }

    /// Whether a client waits for one of `key`'s connections now (transaction pooling).
    pub fn contended(&self, key: &PoolKey) -> bool {
        match &self.pool {
            Pools::Pg(pool) => pool.contended(key),
            Pools::My(pool) => pool.contended(key),
        }
    }

    /// Closes the pooled connections idle for longer than `timeout`, but the last `keep` of
    /// each key; returns how many.
    pub async fn close_expired(&self, timeout: std::time::Duration, keep: usize) -> usize {
        async fn close_all<C: crate::pool::Pooled>(conns: Vec<C>) -> usize {
            let n = conns.len();
            for c in conns {
                c.close().await;
            }
            n
        }
        match &self.pool {
            Pools::Pg(pool) => close_all(pool.expired(timeout, keep)).await,
            Pools::My(pool) => close_all(pool.expired(timeout, keep)).await,
        }
    }

    /// Sessions waiting now for room (under `max_backend_connections` or `pool_size`).
    pub fn waiting(&self) -> usize {
        match &self.pool {
            Pools::Pg(pool) => pool.waiting(),
            Pools::My(pool) => pool.waiting(),
        }
    }

    /// Connections open to it now (sessions', pooled and the monitor's).
    pub fn open_count(&self) -> usize {
        self.metrics.count.get()
    }

    /// How many idle connections its pool keeps.
    pub fn idle_count(&self) -> usize {
        match &self.pool {
            Pools::Pg(pool) => pool.idle_count(),
            Pools::My(pool) => pool.idle_count(),
        }
    }

    /// A backend of `cluster` from its config entry, in the group numbered `group_id`.
    pub fn new(cluster: &ClusterConfig, b: &sqlswitch_config::Backend, group_id: usize, registry: &Registry) -> Self {
        let mysql = cluster.protocol == sqlswitch_config::Protocol::Mysql;
        let metrics = registry.backend(&cluster.name, &b.name, cluster.monitor.is_some(), mysql);
        Backend {
            name: b.name.clone(),
            address: b.address.clone(),
            role: b.role,
            group: b.group.clone(),
            group_id,
            pool: {
                let max_idle = cluster.pool_max_idle;
                let counted = crate::pool::PoolMetrics {
                    idle: metrics.idle.clone(),
                    waiting: metrics.waiting.clone(),
                    waited: metrics.waited.clone(),
                    timeouts: metrics.wait_timeouts.clone(),
                    count: Arc::clone(&metrics.count),
                };
                match cluster.protocol {
                    sqlswitch_config::Protocol::Postgres => Pools::Pg(Pool::new(max_idle, counted)),
                    sqlswitch_config::Protocol::Mysql => Pools::My(Pool::new(max_idle, counted)),
                }
            },
            metrics,
            health: Health::default(),
            sessions: AtomicUsize::new(0),
            queries: AtomicU64::new(0),
        }
    }
}
