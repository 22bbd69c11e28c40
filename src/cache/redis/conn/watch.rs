//! Sentinel mode's check of the master connection, every
//! [`HEALTH_EVERY`]: a PING on it, and a sentinel asked which master it
//! names, so that a failover is followed even while no request fails on
//! the old master.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{ConnectionAddr, ErrorKind, RedisError, Value};

use super::{async_config, Connector, Live};
use crate::cache::redis::Limits;
use crate::cache::storage::StorageError;

/// How often the sentinel-mode connection is checked: a PING, and the
/// sentinels asked which master they name.
pub(super) const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// Sentinel mode: asks a sentinel which address the master has now. A
/// PING alone does not notice a failover: the demoted master answers, and
/// still calls itself master, until the sentinels reconfigure it (about
/// 10 s, measured), and whatever is written or purged there meanwhile is
/// lost when it resyncs from the new master.
pub(super) struct Watch {
    pub(super) master: String,
    /// A connection to one sentinel, made again after an error.
    pub(super) sentinel: Option<MultiplexedConnection>,
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

impl Watch {
    /// Checks the master connection `live`, made to `master`: an error if
    /// its PING fails or the sentinels name another master.
    pub(super) async fn check(
        &mut self,
        live: &Live,
        connector: &mut Connector,
        limits: &Limits,
        master: Option<&ConnectionAddr>,
    ) -> Result<(), StorageError> {
        let mut conn = live.conn.clone();
        let ping = redis::cmd("PING");
        match tokio::time::timeout(limits.write, ping.query_async::<Value>(&mut conn)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(StorageError::Redis(e)),
            Err(_) => return Err(StorageError::Timeout),
        }
        if let (Some(named), Some(at)) = (self.named_master(connector, limits).await, master) {
            if !is_at(at, &named) {
                return Err(StorageError::Redis(RedisError::from((
                    ErrorKind::Io,
                    "the sentinels name another master",
                    format!("{}:{}", named.0, named.1),
                ))));
            }
        }
        Ok(())
    }
}
