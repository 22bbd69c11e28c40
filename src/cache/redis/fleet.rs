//! Fleet-wide invalidation over Redis pub/sub: the message format on the
//! `{prefix}purge` channel and the subscriber that forwards other
//! instances' purges into the `invalidations` channel.
//!
//! A message is JSON: `{"v":1,"from":"<instance id>","selector":{..}}` with
//! the selector as `{"key":"http://h/p?q"}`, `{"path":"/p?q"}`,
//! `{"prefix":"/a/"}` or `{"tags":["a","b"]}`, and `"soft":true` for a soft
//! purge (entries marked stale, not removed; absent = a hard purge, so
//! older instances read new hard purges unchanged). An instance ignores its
//! own messages and anything it cannot parse (logged at debug).
//!
//! Each instance holds one dedicated RESP2 `PubSub` connection, made again
//! with backoff whenever its message stream ends or a PING (every 5 s)
//! fails, so the subscription survives Redis restarts and failovers:
//! - **standalone**: the one server;
//! - **cluster**: one node, since a cluster delivers every `PUBLISH` to the
//!   subscribers of every node: the first configured URL that answers; a
//!   failed node makes the subscriber move to the next one, and after a full
//!   round also to the nodes `CLUSTER NODES` reports. (The library's own
//!   RESP3 cluster pub/sub with a periodic PING, as NOTES.md suggests, was
//!   tried first and lost the subscription for good when the channel's
//!   master failed over: once the client drops the dead primary, PING only
//!   reaches the live ones, and after the slot refresh it did not
//!   resubscribe.)
//! - **sentinel**: the master the sentinels name at each (re)subscription,
//!   and again whenever the data connection moves to another master (a
//!   failover; checked every second): the demoted master still answers
//!   PINGs for seconds while the fleet publishes on the new one.
//!
//! Messages published while an instance was not subscribed are lost, so
//! every (re)subscription after a gap forwards `Selector::Prefix("")`,
//! which selects everything: the memory tier empties and refills from
//! Redis, which the lost purges did reach.
//!
//! While there is no subscription the tier is not in use as the README
//! defines it ([`Fleet::is_subscribed`] is false, and `/health` says
//! `connected: false`). A lost subscription and each failed attempt to
//! make it again count as Redis errors (`strata_redis_errors_total`), and
//! each sends a PING through the circuit breaker on the data connection:
//! an instance that gets no traffic (so makes no other Redis call) still
//! opens its breaker within `breaker_threshold` attempts when Redis is
//! down, and the breaker's own prober closes it once Redis is back. A
//! subscription that fails while Redis otherwise answers (the PINGs pass)
//! leaves the breaker closed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::{RedisResult, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use super::backoff::{pause, Backoff};
use super::conn::{sentinel_client, Backend};
use super::store::Core;
use crate::cache::key::CacheKey;
use crate::cache::storage::{Invalidation, Selector};
use crate::config::{RedisConfig, RedisMode};

const WIRE_VERSION: u32 = 1;
/// PING on the subscription, to notice a dead peer whose socket never
/// closed.
const PING_EVERY: Duration = Duration::from_secs(5);

/// Sentinel mode: how often the subscription checks that it is on the
/// master the data connection uses. After a failover the old master keeps
/// answering (the PING passes) for about 10 s until the sentinels demote
/// it, while the fleet publishes its purges on the new one: the
/// subscription follows the data connection, which asks the sentinels
/// every second.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum WireSelector {
    Key(String),
    Path(String),
    Prefix(String),
    Tags(Vec<String>),
}

#[derive(Debug, Serialize, Deserialize)]
struct Message {
    v: u32,
    from: String,
    selector: WireSelector,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    soft: bool,
}

/// Who we are on the channel, and where received purges go.
pub(crate) struct Fleet {
    id: String,
    channel: String,
    invalidations: UnboundedSender<Invalidation>,
    /// Whether the subscription is up now (set by the subscriber only).
    subscribed: AtomicBool,
    /// Purges received, for the write lanes (`received`).
    pub(crate) received: super::received::Received,
}

impl Fleet {
    pub(crate) fn new(
        id: String,
        channel: String,
        invalidations: UnboundedSender<Invalidation>,
    ) -> Fleet {
        Fleet {
            id,
            channel,
            invalidations,
            subscribed: AtomicBool::new(false),
            received: Default::default(),
        }
    }

    /// Whether this instance is subscribed to the purge channel now, so
    /// receives the fleet's purges. False until the first subscription.
    pub(crate) fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed)
    }

    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }

    /// The message announcing `selector` to the other instances (`soft`:
    /// mark stale instead of removing).
    pub(crate) fn encode(&self, selector: &Selector, soft: bool) -> Vec<u8> {
        let selector = match selector {
            Selector::Key(k) => WireSelector::Key(k.url().to_string()),
            Selector::PathAnyHost(p) => WireSelector::Path(p.clone()),
            Selector::Prefix(p) => WireSelector::Prefix(p.clone()),
            Selector::Tags(t) => WireSelector::Tags(t.clone()),
        };
        let msg = Message {
            v: WIRE_VERSION,
            from: self.id.clone(),
            selector,
            soft,
        };
        // Serializing plain strings into a Vec cannot fail.
        serde_json::to_vec(&msg).unwrap_or_default()
    }

    /// Handles one payload received on the channel.
    pub(crate) fn receive(&self, payload: &[u8]) {
        let msg: Message = match serde_json::from_slice(payload) {
            Ok(m) => m,
            Err(error) => {
                tracing::debug!(%error, len = payload.len(), "redis purge channel: unreadable message ignored");
                return;
            }
        };
        if msg.v != WIRE_VERSION {
            tracing::debug!(
                version = msg.v,
                "redis purge channel: other message version ignored"
            );
            return;
        }
        if msg.from == self.id {
            return;
        }
        let selector = match msg.selector {
            WireSelector::Key(url) => match CacheKey::from_url(&url) {
                Some(k) => Selector::Key(k),
                None => {
                    tracing::debug!(url, "redis purge channel: bad URL ignored");
                    return;
                }
            },
            WireSelector::Path(p) => Selector::PathAnyHost(p),
            WireSelector::Prefix(p) => Selector::Prefix(p),
            WireSelector::Tags(t) => Selector::Tags(t),
        };
        tracing::debug!(from = msg.from, selector = ?selector, soft = msg.soft, "redis purge channel: purge from another instance");
        self.forward(Invalidation {
            selector,
            soft: msg.soft,
            purge: true,
        });
    }

    /// Purges may have been missed: select everything.
    fn resubscribed(&self) {
        tracing::info!(
            "redis purge channel: resubscribed after a gap; dropping the memory tier's entries"
        );
        self.forward(Invalidation {
            selector: Selector::Prefix(String::new()),
            soft: false,
            purge: false,
        });
    }

    fn forward(&self, invalidation: Invalidation) {
        self.received.record(&invalidation.selector);
        if self.invalidations.send(invalidation).is_err() {
            tracing::debug!("redis purge channel: invalidation receiver gone");
        }
    }
}

/// Subscribes to the purge channel and keeps the subscription until `stop`.
pub(crate) async fn run_subscriber(config: RedisConfig, core: Arc<Core>, stop: CancellationToken) {
    let result = subscribe_loop(&config, &core, &stop).await;
    if let Err(error) = result {
        tracing::error!(%error, mode = config.mode.as_str(), "redis purge channel: invalid configuration; fleet purges are not received");
    }
}

enum Source {
    /// Standalone: the one server.
    Client(redis::Client),
    /// Cluster: any node receives every `PUBLISH`. Subscribe on the first
    /// configured node that answers; when it fails move to the next one,
    /// and after a full round also to the nodes the cluster reports.
    Nodes {
        configured: Vec<redis::Client>,
        discovered: Vec<redis::Client>,
        next: usize,
        backend: Arc<Backend>,
    },
    /// Sentinel: the master the sentinels name now.
    Sentinel(Box<redis::sentinel::SentinelClient>),
}

impl Source {
    fn new(config: &RedisConfig, backend: Arc<Backend>) -> RedisResult<Source> {
        let first = config
            .urls
            .first()
            .ok_or((redis::ErrorKind::InvalidClientConfig, "no Redis URL"))?;
        Ok(match config.mode {
            RedisMode::Standalone => Source::Client(redis::Client::open(first.as_str())?),
            RedisMode::Sentinel => Source::Sentinel(Box::new(sentinel_client(config)?)),
            RedisMode::Cluster => Source::Nodes {
                configured: config
                    .urls
                    .iter()
                    .map(|u| redis::Client::open(u.as_str()))
                    .collect::<RedisResult<Vec<_>>>()?,
                discovered: Vec::new(),
                next: 0,
                backend,
            },
        })
    }

    /// A subscription to `channel`, and in sentinel mode the address of
    /// the master it is on.
    async fn subscribe(
        &mut self,
        channel: &str,
    ) -> RedisResult<(redis::aio::PubSub, Option<redis::ConnectionAddr>)> {
        let client = match self {
            Source::Client(c) => c.clone(),
            Source::Nodes {
                configured,
                discovered,
                next,
                ..
            } => {
                let all = configured.len() + discovered.len();
                let i = *next % all.max(1);
                configured
                    .iter()
                    .chain(discovered.iter())
                    .nth(i)
                    .cloned()
                    .ok_or((redis::ErrorKind::InvalidClientConfig, "no Redis URL"))?
            }
            Source::Sentinel(s) => s.async_get_client().await?,
        };
        let at = matches!(self, Source::Sentinel(_))
            .then(|| client.get_connection_info().addr().clone());
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok((pubsub, at))
    }

    /// The current node failed: move to the next one (cluster mode).
    async fn advance(&mut self, bound: Duration) {
        if let Source::Nodes {
            configured,
            discovered,
            next,
            backend,
        } = self
        {
            *next += 1;
            if *next >= configured.len() + discovered.len() {
                *next = 0;
                if let Some(found) = discover(configured, backend, bound).await {
                    *discovered = found;
                }
            }
        }
    }
}

/// The live cluster nodes (masters and replicas) that are not among the
/// configured ones, from `CLUSTER NODES` on the data connection. Only plain
/// TCP URLs are supported; they inherit the first URL's settings.
async fn discover(
    configured: &[redis::Client],
    backend: &Backend,
    bound: Duration,
) -> Option<Vec<redis::Client>> {
    let live = backend.current()?;
    let mut conn = live.conn.clone();
    let text: String = tokio::time::timeout(
        bound,
        redis::cmd("CLUSTER").arg("NODES").query_async(&mut conn),
    )
    .await
    .ok()?
    .ok()?;
    let base = configured.first()?.get_connection_info().clone();
    let known: Vec<&redis::ConnectionAddr> = configured
        .iter()
        .map(|c| c.get_connection_info().addr())
        .collect();
    let mut found = Vec::new();
    for (host, port) in cluster_node_addrs(&text) {
        let addr = redis::ConnectionAddr::Tcp(host, port);
        if !matches!(base.addr(), redis::ConnectionAddr::Tcp(..)) || known.contains(&&addr) {
            continue;
        }
        if let Ok(client) = redis::Client::open(base.clone().set_addr(addr)) {
            found.push(client);
        }
    }
    tracing::debug!(
        nodes = found.len(),
        "redis purge channel: discovered cluster nodes"
    );
    Some(found)
}

/// `host:port` of every node in `CLUSTER NODES` output not flagged as
/// failing, without an address or in handshake.
fn cluster_node_addrs(text: &str) -> Vec<(String, u16)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let addr = fields.nth(1)?;
            let flags = fields.next()?;
            if flags
                .split(',')
                .any(|f| matches!(f, "fail" | "fail?" | "noaddr" | "handshake"))
            {
                return None;
            }
            let hostport = addr.split(['@', ',']).next()?;
            let (host, port) = hostport.rsplit_once(':')?;
            if host.is_empty() {
                return None;
            }
            Some((host.to_string(), port.parse().ok()?))
        })
        .collect()
}

/// The subscription is down (the caller logged why): not subscribed,
/// counted as a Redis error, and a PING through the breaker on the data
/// connection, whose failure feeds the breaker as any operation's does
/// (skipped while it is open: its prober probes). The PING ends early at
/// `stop`; false then.
async fn down(core: &Core, stop: &CancellationToken) -> bool {
    core.fleet.subscribed.store(false, Ordering::Relaxed);
    core.metrics.redis_error();
    tokio::select! {
        _ = stop.cancelled() => false,
        // Failures are counted and logged inside; an open breaker skips it.
        _ = core.ping() => true,
    }
}

/// A dedicated RESP2 pub/sub connection, made again whenever it ends or a
/// PING fails.
async fn subscribe_loop(
    config: &RedisConfig,
    core: &Core,
    stop: &CancellationToken,
) -> RedisResult<()> {
    let (fleet, limits) = (&*core.fleet, &core.limits);
    let mut source = Source::new(config, core.backend.clone())?;
    let bound = match config.mode {
        // Resolving through sentinels tries each in turn with fixed timeouts.
        RedisMode::Sentinel => {
            limits.connect * 2 + Duration::from_secs(2) * config.urls.len() as u32
        }
        _ => limits.connect * 2 + limits.write,
    };
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    let mut gap = false;
    let mut failures = 0u32;
    loop {
        let attempt = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            r = tokio::time::timeout(bound, source.subscribe(fleet.channel())) => r,
        };
        let (pubsub, at) = match attempt {
            Ok(Ok(p)) => p,
            failed => {
                failures += 1;
                let error = match failed {
                    Ok(Err(error)) => error.to_string(),
                    _ => "subscribe timed out".to_string(),
                };
                // The first failure and every 20th at warn: a subscription
                // Redis refuses (an ACL without channel permission) leaves
                // this instance deaf to fleet purges, and said so nowhere.
                if failures == 1 || failures.is_multiple_of(20) {
                    tracing::warn!(
                        %error,
                        failures,
                        "redis purge channel: subscribe failed; purges made on other instances are not received here until it succeeds (retrying)"
                    );
                } else {
                    tracing::debug!(%error, failures, "redis purge channel: subscribe failed; retrying");
                }
                gap = true;
                if !down(core, stop).await {
                    return Ok(());
                }
                source.advance(limits.write).await;
                if !pause(stop, backoff.next_delay()).await {
                    return Ok(());
                }
                continue;
            }
        };
        if failures > 0 {
            tracing::info!(
                channel = fleet.channel(),
                failures,
                "redis purge channel: subscribed"
            );
        } else {
            tracing::debug!(channel = fleet.channel(), "redis purge channel: subscribed");
        }
        failures = 0;
        fleet.subscribed.store(true, Ordering::Relaxed);
        if gap {
            fleet.resubscribed();
        }
        backoff.reset();
        let (mut sink, mut stream) = pubsub.split();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        // Sentinel mode: the master the data connection went to when this
        // subscription was made; a change means a failover.
        let data_master = || core.backend.current().and_then(|l| l.master.clone());
        let data_at_start = data_master();
        let mut follow = tokio::time::interval(FOLLOW_EVERY);
        follow.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        follow.tick().await;
        loop {
            tokio::select! {
                _ = follow.tick(), if at.is_some() => {
                    if let Some(now) = data_master() {
                        if Some(&now) != data_at_start.as_ref() && Some(&now) != at.as_ref() {
                            tracing::warn!(
                                "redis purge channel: the data connection follows another master (sentinel failover); resubscribing there"
                            );
                            break;
                        }
                    }
                }
                _ = stop.cancelled() => return Ok(()),
                msg = stream.next() => match msg {
                    Some(msg) => fleet.receive(msg.get_payload_bytes()),
                    None => {
                        tracing::warn!("redis purge channel: subscription lost; resubscribing");
                        break;
                    }
                },
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(limits.write, sink.ping::<Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        tracing::warn!("redis purge channel: PING failed; resubscribing");
                        break;
                    }
                }
            }
        }
        gap = true;
        if !down(core, stop).await {
            return Ok(());
        }
        source.advance(limits.write).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    #[test]
    fn messages_round_trip_and_own_are_ignored() {
        let (tx_a, mut rx_a) = mpsc::unbounded_channel();
        let (tx_b, mut rx_b) = mpsc::unbounded_channel();
        let a = Fleet::new("a".into(), "p:purge".into(), tx_a);
        let b = Fleet::new("b".into(), "p:purge".into(), tx_b);
        let selectors = [
            Selector::Key(CacheKey::new(true, "H", "/x?y")),
            Selector::PathAnyHost("/x?y".into()),
            Selector::Prefix("/assets/".into()),
            Selector::Tags(vec!["t1".into(), "t2".into()]),
        ];
        for (i, s) in selectors.iter().enumerate() {
            let soft = i % 2 == 1;
            let wire = a.encode(s, soft);
            a.receive(&wire);
            b.receive(&wire);
            let got = rx_b.try_recv().expect("b receives a's purge");
            assert_eq!(format!("{:?}", got.selector), format!("{s:?}"));
            assert_eq!(got.soft, soft);
        }
        assert!(rx_a.try_recv().is_err(), "own messages are ignored");
        b.receive(b"not json");
        b.receive(br#"{"v":2,"from":"a","selector":{"prefix":"/"}}"#);
        b.receive(br#"{"v":1,"from":"a","selector":{"key":"/relative"}}"#);
        assert!(rx_b.try_recv().is_err());
    }

    #[test]
    fn parses_cluster_nodes() {
        let text = "\
07c3 127.0.0.1:30004@31004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@31002,host.example master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@31003 master,fail - 0 1426238318243 3 disconnected 10923-16383
6ec2 :0@0 master,noaddr - 0 0 0 disconnected
e7d1 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460
";
        assert_eq!(
            cluster_node_addrs(text),
            vec![
                ("127.0.0.1".to_string(), 30004),
                ("127.0.0.1".to_string(), 30002),
                ("127.0.0.1".to_string(), 30001),
            ]
        );
    }
}
