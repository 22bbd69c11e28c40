//! The data connection to Redis in each mode, made and kept in the
//! background so that no request ever waits for a connect.
//!
//! - **standalone**: a `ConnectionManager` tuned to fail fast (short connect
//!   timeout, one retry, 10–100 ms delays); once made it reconnects by
//!   itself, each command on a dead server failing in milliseconds.
//! - **cluster**: a `ClusterConnection` with connect and response timeouts;
//!   it follows MOVED/ASK and failovers by itself.
//! - **sentinel**: a `MultiplexedConnection` to the master the sentinels
//!   name. It does not follow a failover, so an error that means "this
//!   connection or node is unusable" (I/O, timeout, READONLY, ...) drops it
//!   and wakes the connector, which asks the sentinels again. Every second
//!   the connection gets a PING and a sentinel is asked which master it
//!   names ([`Watch`]); a failed PING or another address does the same, so
//!   a manual failover, whose old master keeps answering, is followed too.
//!
//! Until a connection exists every operation fails at once with a
//! "not connected" error (a miss).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ErrorKind, IntoConnectionInfo, Pipeline,
    RedisError, RedisFuture, RedisResult, ServerErrorKind, Value,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Limits;
use crate::cache::storage::StorageError;
use crate::config::{RedisConfig, RedisMode};

/// A usable data connection; cloning it is cheap (all are multiplexed).
#[derive(Clone)]
pub(crate) enum Conn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(MultiplexedConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Standalone(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Standalone(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(c) => c.get_db(),
        }
    }
}

/// The current connection and its generation (so a late error on an old
/// connection never drops a newer one).
pub(crate) struct Live {
    pub(crate) generation: u64,
    pub(crate) conn: Conn,
}

/// Holds the current connection, if any.
pub(crate) struct Backend {
    mode: RedisMode,
    current: ArcSwapOption<Live>,
    generations: AtomicU64,
    wake: Notify,
}

/// The error of an operation attempted while no connection exists.
pub(crate) fn not_connected() -> StorageError {
    StorageError::Redis(RedisError::from((
        ErrorKind::Io,
        "no Redis connection yet (connecting in the background)",
    )))
}

/// Whether an error means the sentinel-mode connection is unusable.
fn drops_connection(err: &StorageError) -> bool {
    match err {
        StorageError::Timeout => true,
        StorageError::Redis(e) => {
            e.is_io_error()
                || e.is_unrecoverable_error()
                || e.is_connection_dropped()
                || matches!(
                    e.kind(),
                    ErrorKind::Server(ServerErrorKind::ReadOnly)
                        | ErrorKind::Server(ServerErrorKind::MasterDown)
                        | ErrorKind::Server(ServerErrorKind::BusyLoading)
                )
        }
        StorageError::BreakerOpen | StorageError::Corrupt(_) | StorageError::Unencodable(_) => {
            false
        }
    }
}

impl Backend {
    pub(crate) fn new(mode: RedisMode) -> Backend {
        Backend {
            mode,
            current: ArcSwapOption::empty(),
            generations: AtomicU64::new(0),
            wake: Notify::new(),
        }
    }

    pub(crate) fn mode(&self) -> RedisMode {
        self.mode
    }

    pub(crate) fn current(&self) -> Option<Arc<Live>> {
        self.current.load_full()
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.current.load().is_some()
    }

    fn install(&self, conn: Conn) -> u64 {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        self.current
            .store(Some(Arc::new(Live { generation, conn })));
        generation
    }

    /// Reports an operation's error on connection `generation`. In sentinel
    /// mode an error that means the connection or node is unusable drops
    /// the connection and wakes the connector to ask the sentinels again;
    /// the other modes reconnect by themselves.
    pub(crate) fn failed(&self, generation: u64, err: &StorageError) {
        if self.mode != RedisMode::Sentinel || !drops_connection(err) {
            return;
        }
        let current = self.current.load();
        if current.as_ref().is_some_and(|l| l.generation == generation) {
            let old = self.current.compare_and_swap(&*current, None);
            if old.as_ref().is_some_and(|l| l.generation == generation) {
                tracing::info!(error = %err, "redis sentinel: dropping the master connection, re-resolving");
                self.wake.notify_one();
            }
        }
    }
}

/// Exponential backoff with jitter for reconnect loops.
pub(crate) struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            next: min,
            min,
            max,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }

    /// The next delay: between half and all of the current step.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        step / 2 + step.mul_f64(jitter() / 2.0)
    }
}

/// A number in [0, 1) that differs between calls and processes.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Sleeps, returning false if `stop` fired first.
pub(crate) async fn pause(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

pub(crate) fn manager_config(limits: &Limits) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(limits.connect))
        .set_response_timeout(Some(limits.write))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(10))
        .set_max_delay(Duration::from_millis(100))
}

pub(crate) fn async_config(limits: &Limits) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(limits.connect))
        .set_response_timeout(Some(limits.write))
}

/// A sentinel client for the configured master. Data nodes get the
/// database, user and password of the first sentinel URL.
pub(crate) fn sentinel_client(config: &RedisConfig) -> RedisResult<SentinelClient> {
    let master = config.sentinel_master.clone().ok_or((
        ErrorKind::InvalidClientConfig,
        "sentinel mode needs sentinel_master",
    ))?;
    let first = config
        .urls
        .first()
        .ok_or((ErrorKind::EmptySentinelList, "no sentinel URLs"))?
        .as_str()
        .into_connection_info()?;
    let node = SentinelNodeConnectionInfo::default()
        .set_redis_connection_info(first.redis_settings().clone());
    SentinelClient::build(
        config.urls.clone(),
        master,
        Some(node),
        SentinelServerType::Master,
    )
}

fn cluster_builder(config: &RedisConfig, limits: &Limits) -> redis::cluster::ClusterClientBuilder {
    ClusterClient::builder(config.urls.clone())
        .connection_timeout(limits.connect)
        .response_timeout(limits.write)
}

enum Connector {
    Standalone(Client),
    Cluster(Box<ClusterClient>),
    Sentinel(Box<SentinelClient>),
}

impl Connector {
    fn new(config: &RedisConfig, limits: &Limits) -> RedisResult<Connector> {
        Ok(match config.mode {
            RedisMode::Standalone => {
                let url = config
                    .urls
                    .first()
                    .ok_or((ErrorKind::InvalidClientConfig, "no Redis URL"))?;
                Connector::Standalone(Client::open(url.as_str())?)
            }
            RedisMode::Cluster => {
                Connector::Cluster(Box::new(cluster_builder(config, limits).build()?))
            }
            RedisMode::Sentinel => Connector::Sentinel(Box::new(sentinel_client(config)?)),
        })
    }

    /// A connection, and in sentinel mode the master's address it goes to.
    async fn connect(&mut self, limits: &Limits) -> RedisResult<(Conn, Option<ConnectionAddr>)> {
        match self {
            Connector::Standalone(client) => client
                .get_connection_manager_with_config(manager_config(limits))
                .await
                .map(|c| (Conn::Standalone(c), None)),
            Connector::Cluster(client) => client
                .get_async_connection()
                .await
                .map(|c| (Conn::Cluster(c), None)),
            Connector::Sentinel(sentinel) => {
                // The library's own `get_async_connection_with_config`, with
                // the address kept for [`Watch`].
                let client = sentinel.async_get_client().await?;
                let addr = client.get_connection_info().addr().clone();
                let conn = client
                    .get_multiplexed_async_connection_with_config(&async_config(limits))
                    .await?;
                Ok((Conn::Sentinel(conn), Some(addr)))
            }
        }
    }

    /// Whether the connection, once made, repairs itself.
    fn self_healing(&self) -> bool {
        !matches!(self, Connector::Sentinel(_))
    }
}

/// How often the sentinel-mode connection is checked: a PING, and the
/// sentinels asked which master they name.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// Sentinel mode: asks a sentinel which address the master has now. A
/// PING alone does not notice a failover: the demoted master answers, and
/// still calls itself master, until the sentinels reconfigure it (about
/// 10 s, measured), and whatever is written or purged there meanwhile is
/// lost when it resyncs from the new master.
struct Watch {
    master: String,
    /// A connection to one sentinel, made again after an error.
    sentinel: Option<MultiplexedConnection>,
}

impl Watch {
    /// The master the sentinels name, `None` if none answers (then the
    /// current connection is kept: sentinels down is no failover).
    async fn named_master(
        &mut self,
        connector: &mut Connector,
        limits: &Limits,
    ) -> Option<(String, u16)> {
        let Connector::Sentinel(client) = connector else {
            return None;
        };
        if self.sentinel.is_none() {
            let made = async {
                client
                    .async_get_sentinel_client()
                    .await?
                    .get_multiplexed_async_connection_with_config(&async_config(limits))
                    .await
            };
            self.sentinel = tokio::time::timeout(limits.connect * 4, made)
                .await
                .ok()
                .and_then(Result::ok);
        }
        let conn = self.sentinel.as_mut()?;
        let mut ask = redis::cmd("SENTINEL");
        ask.arg("GET-MASTER-ADDR-BY-NAME").arg(&self.master);
        match tokio::time::timeout(limits.write, ask.query_async::<Option<(String, u16)>>(conn))
            .await
        {
            Ok(Ok(named)) => named,
            _ => {
                self.sentinel = None;
                None
            }
        }
    }
}

/// Whether `addr` is `host:port`.
fn is_at(addr: &ConnectionAddr, (host, port): &(String, u16)) -> bool {
    match addr {
        ConnectionAddr::Tcp(h, p)
        | ConnectionAddr::TcpTls {
            host: h, port: p, ..
        } => h == host && p == port,
        _ => true,
    }
}

/// Makes the connection in the background and keeps it: retries with
/// backoff until it succeeds; in sentinel mode makes a new one whenever
/// [`Backend::failed`] dropped it.
pub(crate) async fn run_connector(
    config: RedisConfig,
    limits: Limits,
    backend: Arc<Backend>,
    stop: CancellationToken,
) {
    let mut connector = match Connector::new(&config, &limits) {
        Ok(c) => c,
        Err(error) => {
            tracing::error!(%error, mode = config.mode.as_str(), "redis: invalid configuration; the Redis tier stays off");
            return;
        }
    };
    // Resolving through sentinels uses the library's fixed 1 s / 500 ms
    // timeouts per sentinel; bound one attempt as a whole.
    let attempt_bound = limits.connect * 2 + Duration::from_secs(2) * config.urls.len() as u32;
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    let mut failures = 0u32;
    let mut master: Option<ConnectionAddr> = None;
    let mut watch = Watch {
        master: config.sentinel_master.clone().unwrap_or_default(),
        sentinel: None,
    };
    loop {
        if let Some(live) = backend.current() {
            // Sentinel mode only (the other modes returned once connected):
            // PING now and then, and ask the sentinels where the master is,
            // so a failover is followed even while no request fails on the
            // old master.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = backend.wake.notified() => {}
                _ = tokio::time::sleep(HEALTH_EVERY) => {
                    let mut conn = live.conn.clone();
                    let ping = redis::cmd("PING");
                    let mut result = match tokio::time::timeout(limits.write, ping.query_async::<Value>(&mut conn)).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(StorageError::Redis(e)),
                        Err(_) => Err(StorageError::Timeout),
                    };
                    if result.is_ok() {
                        if let (Some(named), Some(at)) = (watch.named_master(&mut connector, &limits).await, &master) {
                            if !is_at(at, &named) {
                                result = Err(StorageError::Redis(RedisError::from((
                                    ErrorKind::Io,
                                    "the sentinels name another master",
                                    format!("{}:{}", named.0, named.1),
                                ))));
                            }
                        }
                    }
                    if let Err(err) = result {
                        backend.failed(live.generation, &err);
                    }
                }
            }
            continue;
        }
        let attempt = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(attempt_bound, connector.connect(&limits)) => r,
        };
        match attempt {
            Ok(Ok((conn, addr))) => {
                master = addr;
                let generation = backend.install(conn);
                tracing::info!(
                    mode = config.mode.as_str(),
                    generation,
                    after_failures = failures,
                    "redis: connected"
                );
                failures = 0;
                backoff.reset();
                if connector.self_healing() {
                    return;
                }
            }
            Ok(Err(error)) => {
                failures += 1;
                log_connect_failure(failures, &error.to_string(), &config);
                if !pause(&stop, backoff.next_delay()).await {
                    return;
                }
            }
            Err(_) => {
                failures += 1;
                log_connect_failure(failures, "connect timed out", &config);
                if !pause(&stop, backoff.next_delay()).await {
                    return;
                }
            }
        }
    }
}

fn log_connect_failure(failures: u32, error: &str, config: &RedisConfig) {
    // First failure and then every 20th at warn, the rest at debug, so a
    // long outage does not flood the log.
    if failures == 1 || failures.is_multiple_of(20) {
        tracing::warn!(
            failures,
            error,
            mode = config.mode.as_str(),
            "redis: cannot connect; retrying in the background"
        );
    } else {
        tracing::debug!(failures, error, "redis: connect attempt failed");
    }
}
