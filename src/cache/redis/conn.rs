//! The data connection to Redis in each mode, made and kept in the
//! background so that no request ever waits for a connect.
//!
//! - **standalone**: a `ConnectionManager` tuned to fail fast (short connect
//!   timeout, one retry, 10–100 ms delays); once made it reconnects by
//!   itself when the server closes or refuses, each command on a dead
//!   server failing in milliseconds.
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
//! The standalone and cluster clients do not notice a connection that
//! swallows commands without closing (a stuck proxy, a firewall or NAT
//! that lost its state and drops the packets): its commands time out, and
//! the client keeps it until the kernel gives up (about 15 min), so the
//! breaker's probes would fail all that time. So in those modes an
//! operation that times out marks its connection presumed dead
//! ([`Backend::failed`]) and wakes the connector, which makes a new one
//! and puts it in place; the old one keeps serving (its operations bounded
//! as ever) until then, and replacements are at most one per
//! [`REPLACE_EVERY`], so a Redis that is merely slow does not make Strata
//! reconnect in a loop. In those modes too the connection gets a PING
//! every second (cluster: every primary), so that a server-side idle
//! limit (Redis's `timeout`) never closes it between requests: the first
//! operation after each quiet spell failed.
//!
//! Until a connection exists every operation fails at once with a
//! "not connected" error (a miss). Data connections use TCP_NODELAY and keepalive
//! ([`keepalive`]), so an idle connection to a vanished peer is closed by
//! the kernel within about a minute.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::{socket2::TcpKeepalive, TcpSettings};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ErrorKind, IntoConnectionInfo, Pipeline,
    RedisError, RedisFuture, RedisResult, ServerErrorKind, Value,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

mod watch;

use self::watch::{Watch, HEALTH_EVERY};
use super::backoff::{pause, Backoff};
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
    /// Sentinel mode: the master's address the connection goes to (the
    /// purge subscriber follows it to a new master after a failover).
    pub(crate) master: Option<ConnectionAddr>,
}

/// Holds the current connection, if any.
pub(crate) struct Backend {
    mode: RedisMode,
    current: ArcSwapOption<Live>,
    generations: AtomicU64,
    /// The generation presumed dead (an operation on it timed out), which
    /// the connector replaces; 0: none. Standalone and cluster modes.
    stale: AtomicU64,
    wake: Notify,
}

/// The error of an operation attempted while no connection exists.
pub(crate) fn not_connected() -> StorageError {
    StorageError::Redis(RedisError::from((
        ErrorKind::Io,
        "no Redis connection yet (connecting in the background)",
    )))
}

/// How often at most a connection presumed dead is replaced.
const REPLACE_EVERY: Duration = Duration::from_secs(1);

/// Whether an operation timed out: under Strata's own bound, or the
/// client's response timeout.
fn timed_out(err: &StorageError) -> bool {
    match err {
        StorageError::Timeout => true,
        StorageError::Redis(e) => e.is_timeout(),
        _ => false,
    }
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
            stale: AtomicU64::new(0),
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

    /// Makes `conn` (to `master`, in sentinel mode) the current connection.
    fn install(&self, conn: Conn, master: Option<ConnectionAddr>) -> u64 {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        self.current.store(Some(Arc::new(Live {
            generation,
            conn,
            master,
        })));
        generation
    }

    /// Whether connection `generation` is presumed dead and to be replaced.
    fn is_stale(&self, generation: u64) -> bool {
        self.stale.load(Ordering::Relaxed) == generation
    }

    /// Reports an operation's error on connection `generation`. In sentinel
    /// mode an error that means the connection or node is unusable drops
    /// the connection and wakes the connector to ask the sentinels again.
    /// In the other modes, which reconnect by themselves when the server
    /// closes or refuses, a timeout marks the connection presumed dead and
    /// wakes the connector to replace it; the connection stays in use
    /// until the new one is made.
    pub(crate) fn failed(&self, generation: u64, err: &StorageError) {
        if self.mode != RedisMode::Sentinel {
            let current = self.current.load();
            if timed_out(err)
                && current.as_ref().is_some_and(|l| l.generation == generation)
                && self.stale.swap(generation, Ordering::Relaxed) != generation
            {
                tracing::info!(generation, error = %err, "redis: an operation timed out; replacing the connection, presumed dead");
                self.wake.notify_one();
            }
            return;
        }
        if !drops_connection(err) {
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

/// TCP settings of a data connection: `TCP_NODELAY` (a command is one
/// small write and its caller waits for the reply: with Nagle's algorithm
/// a write behind an unacknowledged one waits for the peer's delayed ACK,
/// up to 40 ms on Linux, longer than a typical `timeout`), and keepalive:
/// first probe after 30 s idle, then every 10 s, the connection closed
/// after 3 unanswered (on Linux and macOS; elsewhere the system's interval
/// and count).
pub(crate) fn keepalive(settings: &TcpSettings) -> TcpSettings {
    let keepalive = TcpKeepalive::new().with_time(Duration::from_secs(30));
    #[cfg(any(target_os = "linux", target_os = "macos"))]
    let keepalive = keepalive
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    settings.clone().set_keepalive(keepalive).set_nodelay(true)
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
        .set_redis_connection_info(first.redis_settings().clone())
        .set_tcp_settings(keepalive(first.tcp_settings()));
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
        .tcp_settings(keepalive(&TcpSettings::default()))
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
                let info = url.as_str().into_connection_info()?;
                let tcp = keepalive(info.tcp_settings());
                Connector::Standalone(Client::open(info.set_tcp_settings(tcp))?)
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

    /// Whether the connection, once made, repairs itself (except when
    /// presumed dead: [`Backend::failed`]).
    fn self_healing(&self) -> bool {
        !matches!(self, Connector::Sentinel(_))
    }
}

/// Makes the connection in the background and keeps it: retries with
/// backoff until it succeeds; in sentinel mode makes a new one whenever
/// [`Backend::failed`] dropped it, in the other modes whenever it marked
/// it presumed dead (at most once per [`REPLACE_EVERY`], the old one in
/// use until the new one is made).
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
    let mut installed = tokio::time::Instant::now();
    loop {
        if let Some(live) = backend.current() {
            if connector.self_healing() {
                if !backend.is_stale(live.generation) {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = backend.wake.notified() => {}
                        // A PING now and then keeps the connection from
                        // idling: a Redis `timeout` (server-side idle
                        // limit) closed it, and the first operation after
                        // every quiet spell failed (an error and a miss).
                        // Cluster mode routes it to every primary.
                        _ = tokio::time::sleep(HEALTH_EVERY) => {
                            let mut conn = live.conn.clone();
                            let ping = redis::cmd("PING");
                            let pong = tokio::time::timeout(limits.write, ping.query_async::<Value>(&mut conn)).await;
                            match pong {
                                Ok(Ok(_)) => {}
                                Ok(Err(e)) => backend.failed(live.generation, &StorageError::Redis(e)),
                                Err(_) => backend.failed(live.generation, &StorageError::Timeout),
                            }
                        }
                    }
                    continue;
                }
                // Presumed dead: replace it (below), but not more often
                // than REPLACE_EVERY.
                if !pause(&stop, REPLACE_EVERY.saturating_sub(installed.elapsed())).await {
                    return;
                }
            } else {
                // Sentinel mode: PING now and then, and ask the sentinels where the master is,
                // so a failover is followed even while no request fails on the
                // old master.
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = backend.wake.notified() => {}
                    _ = tokio::time::sleep(HEALTH_EVERY) => {
                        if let Err(err) = watch.check(&live, &mut connector, &limits, master.as_ref()).await {
                            backend.failed(live.generation, &err);
                        }
                    }
                }
                continue;
            }
        }
        let attempt = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(attempt_bound, connector.connect(&limits)) => r,
        };
        match attempt {
            Ok(Ok((conn, addr))) => {
                master = addr;
                tokio::spawn(super::eviction::warn_if_indexes_evictable(
                    conn.clone(),
                    limits.write,
                ));
                let generation = backend.install(conn, master.clone());
                installed = tokio::time::Instant::now();
                tracing::info!(
                    mode = config.mode.as_str(),
                    generation,
                    after_failures = failures,
                    "redis: connected"
                );
                failures = 0;
                backoff.reset();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Data connections had Nagle's algorithm on: with a Redis answering in
    /// 31 ms and `timeout = "50ms"`, a second command behind an
    /// unacknowledged one waited for the delayed ACK and 6 of 10 lookups
    /// timed out.
    #[test]
    fn data_connections_disable_nagle_and_keep_alive() {
        let tcp = keepalive(&TcpSettings::default());
        assert!(tcp.nodelay());
        assert!(tcp.keepalive().is_some());
        let info = "redis://127.0.0.1:6379/0".into_connection_info().unwrap();
        assert!(keepalive(info.tcp_settings()).nodelay());
    }
}
