//! Real Redis topologies for integration tests: one standalone server, a 6-node cluster
//! (3 masters + 3 replicas) and a sentinel setup (1 master + 1 replica + 3 sentinels).
//!
//! Every topology lives in its own temp dir under `std::env::temp_dir()`, listens only on
//! 127.0.0.1 on ports picked at run time, keeps no data on disk (`save ""`, `appendonly no`)
//! and writes each process's stdout/stderr to `<node dir>/redis.log`. Dropping a topology
//! SIGKILLs and reaps its processes and removes its dir, so tests may run in parallel threads
//! and in concurrent test binaries.
//!
//! Every wait is a bounded poll (`WAIT_TIMEOUT`, 50 ms steps) that panics with the last
//! observed state and the tail of every node's log.
//!
//! Needs `redis-server` and `redis-cli` on `PATH` (Debian/Ubuntu: `apt-get install
//! redis-server redis-tools`); sentinels run as `redis-server <conf> --sentinel`, so no
//! `redis-sentinel` binary is needed. Environment overrides:
//! - `STRATA_REDIS_SERVER` / `STRATA_REDIS_CLI`: paths of the binaries;
//! - `STRATA_KEEP_REDIS_DIRS=1`: keep the temp dirs (configs and logs) after the test.
//!
//! The module depends only on `std` and `tokio` (features `net`, `time`, `process`, `io-util`),
//! not on the `redis` crate, so the client under test never takes part in managing the servers.
//! Processes left behind by a test binary that was killed (Ctrl-C, SIGKILL) are swept the next
//! time any test binary starts a topology.
#![allow(dead_code)] // each test binary uses only part of this module

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound of every wait in this module.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Step between two checks of a polled condition.
const POLL_STEP: Duration = Duration::from_millis(50);
/// Step while waiting for a freshly spawned process to answer (they start in ~10 ms).
const READY_STEP: Duration = Duration::from_millis(10);
/// Bound of one probe command (connect + request + reply).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// `cluster-node-timeout`: a master is flagged PFAIL after this long without answering.
pub const CLUSTER_NODE_TIMEOUT_MS: u64 = 1000;
/// `sentinel down-after-milliseconds`.
pub const SENTINEL_DOWN_AFTER_MS: u64 = 1000;
/// `sentinel failover-timeout`.
pub const SENTINEL_FAILOVER_TIMEOUT_MS: u64 = 3000;
/// Master name the sentinels monitor.
pub const SENTINEL_MASTER_NAME: &str = "mymaster";
const CLUSTER_SLOTS: usize = 16384;
const LOG_TAIL_LINES: usize = 25;
const DIR_PREFIX: &str = "strata-redis-";
/// The file name of a standalone server's Unix socket.
const SOCKET: &str = "redis.sock";
/// File marking a topology dir kept on purpose (`STRATA_KEEP_REDIS_DIRS`): swept of its
/// processes but not deleted.
const KEEP_MARKER: &str = "kept";

// ---------------------------------------------------------------------------------------------
// Standalone
// ---------------------------------------------------------------------------------------------

/// One standalone `redis-server` on `127.0.0.1:<port>`.
pub struct RedisServer {
    node: Node,
    _dir: TempDir,
}

impl RedisServer {
    /// Starts a server and waits until it answers.
    pub async fn start() -> RedisServer {
        let dir = TempDir::new("standalone");
        let node = Node::start(
            "standalone",
            dir.path().join("standalone"),
            NodeKind::Data,
            "",
        )
        .await;
        RedisServer { node, _dir: dir }
    }

    /// A server that also listens on a Unix socket, `<its dir>/redis.sock`
    /// (see [`RedisServer::socket`]).
    pub async fn start_with_socket() -> RedisServer {
        let dir = TempDir::new("standalone");
        let node_dir = dir.path().join("standalone");
        let conf = format!(
            "unixsocket \"{}\"\nunixsocketperm 700\n",
            node_dir.join(SOCKET).display()
        );
        let node = Node::start("standalone", node_dir, NodeKind::Data, &conf).await;
        RedisServer { node, _dir: dir }
    }

    /// The Unix socket of a server started by
    /// [`RedisServer::start_with_socket`].
    pub fn socket(&self) -> PathBuf {
        self.node.dir.join(SOCKET)
    }

    /// `redis://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        url(self.node.port)
    }

    /// `CONFIG SET key value` on this server.
    pub async fn config_set(&self, key: &str, value: &str) {
        query(self.node.port, &["CONFIG", "SET", key, value])
            .await
            .expect("CONFIG SET");
    }

    pub fn port(&self) -> u16 {
        self.node.port
    }

    /// SIGKILLs the server and reaps it. No-op when it is not running.
    pub fn kill(&mut self) {
        self.node.kill();
    }

    /// Starts the server again on the same port (killing it first if it still runs) and waits
    /// until it answers. The data set starts empty: there is no persistence.
    pub async fn restart(&mut self) {
        self.node.kill();
        self.node.restart_same_port().await;
    }

    pub fn is_running(&mut self) -> bool {
        self.node.is_running()
    }

    /// Stops the server with SIGSTOP, as a hung Redis: connections stay open and new ones are
    /// accepted (the kernel completes the handshake), but nothing is answered until the
    /// returned guard is dropped (SIGCONT) — also when the test panics meanwhile.
    pub fn pause(&self) -> Paused {
        let pid = self
            .node
            .child
            .as_ref()
            .map(Child::id)
            .expect("pause: the server is not running");
        assert!(signal(pid, "-STOP"), "kill -STOP {pid} failed");
        Paused(pid)
    }

    /// Last lines of the server's log.
    pub fn log_tail(&self) -> String {
        log_tails(&[&self.node])
    }
}

/// A server stopped by [`RedisServer::pause`]; resumed (SIGCONT) when dropped.
pub struct Paused(u32);

impl Drop for Paused {
    fn drop(&mut self) {
        // Never a panic here: it may run while a failed test unwinds.
        if !signal(self.0, "-CONT") {
            eprintln!("kill -CONT {} failed", self.0);
        }
    }
}

/// Sends `which` (`-STOP`, `-CONT`) to `pid`; whether `kill` succeeded.
fn signal(pid: u32, which: &str) -> bool {
    Command::new("kill")
        .arg(which)
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success())
}

// ---------------------------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------------------------

/// A 6-node Redis Cluster: 3 masters + 3 replicas, created with `redis-cli --cluster create`.
pub struct RedisCluster {
    nodes: Vec<Node>,
    /// Every failover started by `kill_a_master`; `wait_failover` checks all of them.
    pending: Vec<ClusterFailover>,
    create_log: PathBuf,
    _dir: TempDir,
}

#[derive(Clone, Debug)]
struct ClusterFailover {
    master_port: u16,
    master_id: String,
    replica_port: u16,
    replica_id: String,
}

/// One line of `CLUSTER NODES`.
#[derive(Clone, Debug)]
struct ClusterNodeLine {
    id: String,
    port: u16,
    flags: Vec<String>,
    master_id: Option<String>,
    link_connected: bool,
    /// Inclusive slot ranges served by this node (importing/migrating markers skipped).
    slots: Vec<(u16, u16)>,
    has_slots: bool,
}

impl ClusterNodeLine {
    fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
    fn is_master(&self) -> bool {
        self.has_flag("master")
    }
}

impl RedisCluster {
    /// Starts 6 nodes, creates the cluster and waits until every node reports
    /// `cluster_state:ok` with all 16384 slots ok, every node knows the 3 masters and 3 replicas
    /// and every replica's link to its master is up.
    pub async fn start() -> RedisCluster {
        let dir = TempDir::new("cluster");
        let body = format!(
            "cluster-enabled yes\n\
             cluster-config-file nodes.conf\n\
             cluster-node-timeout {CLUSTER_NODE_TIMEOUT_MS}\n\
             cluster-replica-validity-factor 0\n\
             cluster-allow-replica-migration no\n"
        );
        let mut nodes = Vec::with_capacity(6);
        for i in 0..6 {
            let name = format!("node-{i}");
            let node_dir = dir.path().join(&name);
            nodes.push(Node::start(&name, node_dir, NodeKind::ClusterData, &body).await);
        }
        let create_log = dir.path().join("cluster-create.log");
        let mut cluster = RedisCluster {
            nodes,
            pending: Vec::new(),
            create_log,
            _dir: dir,
        };
        cluster.create().await;
        let this = &cluster;
        poll_until("cluster to become ready", this.log_sources(), move || {
            this.check_ready()
        })
        .await;
        cluster
    }

    async fn create(&mut self) {
        let mut cmd = tokio::process::Command::new(cli_bin());
        cmd.arg("--cluster").arg("create");
        for n in &self.nodes {
            cmd.arg(format!("127.0.0.1:{}", n.port));
        }
        cmd.args(["--cluster-replicas", "1", "--cluster-yes"]);
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        let output = match tokio::time::timeout(WAIT_TIMEOUT, cmd.output()).await {
            Err(_) => panic!(
                "redis-cli --cluster create did not finish within {WAIT_TIMEOUT:?}\n{}",
                log_tails(&self.log_sources())
            ),
            Ok(Err(e)) => panic!(
                "cannot run {}: {e} (apt-get install redis-tools)",
                cli_bin()
            ),
            Ok(Ok(output)) => output,
        };
        let mut log = output.stdout;
        log.extend_from_slice(&output.stderr);
        let _ = fs::write(&self.create_log, &log);
        if !output.status.success() {
            panic!(
                "redis-cli --cluster create failed ({}):\n{}\n{}",
                output.status,
                String::from_utf8_lossy(&log),
                log_tails(&self.log_sources())
            );
        }
    }

    /// `redis://127.0.0.1:<port>` of every node that is running (killed nodes are left out).
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| url(n.port))
            .collect()
    }

    /// Ports of all 6 nodes, killed or not.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Ports of the nodes that currently serve slots as masters, as seen by a running node.
    pub async fn master_ports(&self) -> Vec<u16> {
        let lines = self.any_cluster_nodes().await;
        let mut ports: Vec<u16> = lines
            .iter()
            .filter(|l| l.is_master() && l.has_slots && !l.has_flag("fail"))
            .map(|l| l.port)
            .collect();
        ports.sort_unstable();
        ports
    }

    /// Port of the master that currently serves `key`'s slot (hash tags honoured).
    pub async fn master_for_key(&self, key: &str) -> u16 {
        let slot = key_slot(key.as_bytes());
        let lines = self.any_cluster_nodes().await;
        lines
            .iter()
            .filter(|l| l.is_master() && !l.has_flag("fail"))
            .find(|l| l.slots.iter().any(|&(a, b)| (a..=b).contains(&slot)))
            .map(|l| l.port)
            .unwrap_or_else(|| panic!("no master serves slot {slot} of {key:?}: {lines:#?}"))
    }

    /// Kills one master that has a live replica, after making sure (replication offsets) that
    /// the replica has acknowledged every write the master accepted, so data written before the
    /// kill survives the failover. Returns the killed master's port.
    pub async fn kill_a_master(&mut self) -> u16 {
        self.kill_master_where(|_| true).await
    }

    /// Like `kill_a_master`, but kills the master serving `key`'s slot (for example the slot of
    /// a pub/sub channel, the hardest case for a subscriber).
    pub async fn kill_master_of_key(&mut self, key: &str) -> u16 {
        let slot = key_slot(key.as_bytes());
        self.kill_master_where(move |m| m.slots.iter().any(|&(a, b)| (a..=b).contains(&slot)))
            .await
    }

    async fn kill_master_where(&mut self, pick: impl Fn(&ClusterNodeLine) -> bool) -> u16 {
        let lines = self.any_cluster_nodes().await;
        let running: BTreeSet<u16> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect();
        let failover = lines
            .iter()
            .filter(|m| m.is_master() && m.has_slots && running.contains(&m.port) && pick(m))
            .find_map(|m| {
                lines
                    .iter()
                    .find(|r| {
                        r.master_id.as_deref() == Some(m.id.as_str())
                            && running.contains(&r.port)
                            && !r.has_flag("fail")
                            && !r.has_flag("fail?")
                    })
                    .map(|r| ClusterFailover {
                        master_port: m.port,
                        master_id: m.id.clone(),
                        replica_port: r.port,
                        replica_id: r.id.clone(),
                    })
            })
            .unwrap_or_else(|| panic!("no running master with a running replica in:\n{lines:#?}"));
        wait_replica_ack(failover.master_port, &self.log_sources()).await;
        self.node_mut(failover.master_port).kill();
        let port = failover.master_port;
        self.pending.push(failover);
        port
    }

    /// Kills one master serving slots and its replicas, so that its slots have no owner, and
    /// waits until every running node reports `cluster_state:fail` (the cluster then refuses
    /// every command with `CLUSTERDOWN`, while each live node still answers PING). Returns the
    /// killed ports.
    pub async fn kill_a_shard(&mut self) -> Vec<u16> {
        let lines = self.any_cluster_nodes().await;
        let master = lines
            .iter()
            .find(|m| m.is_master() && m.has_slots && !m.has_flag("fail"))
            .unwrap_or_else(|| panic!("no master serving slots in:\n{lines:#?}"));
        let mut ports: Vec<u16> = lines
            .iter()
            .filter(|r| r.master_id.as_deref() == Some(master.id.as_str()))
            .map(|r| r.port)
            .collect();
        ports.push(master.port);
        for &port in &ports {
            self.node_mut(port).kill();
        }
        let this = &*self;
        poll_until(
            "cluster_state:fail",
            self.log_sources(),
            move || async move {
                for node in this.nodes.iter().filter(|n| n.child.is_some()) {
                    let text = query(node.port, &["CLUSTER", "INFO"]).await?.text();
                    let state = info_field(&text, "cluster_state");
                    if state != Some("fail") {
                        return Err(format!("{}: cluster_state:{state:?}", node.port));
                    }
                }
                Ok(())
            },
        )
        .await;
        ports
    }

    /// Waits until every failover started by `kill_a_master` completed: the killed master's
    /// replica reports `role:master`, and every running node sees the killed node as `fail`,
    /// the promoted replica as a master owning slots, `cluster_state:ok` and 16384 slots ok.
    pub async fn wait_failover(&self) {
        let this = self;
        poll_until("cluster failover", self.log_sources(), move || {
            this.check_failover()
        })
        .await;
    }

    async fn check_ready(&self) -> Result<(), String> {
        for node in &self.nodes {
            check_cluster_info(node.port, self.nodes.len()).await?;
            let lines = cluster_nodes(node.port).await?;
            if lines.len() != self.nodes.len() {
                return Err(format!("{}: knows {} nodes", node.port, lines.len()));
            }
            let masters = lines
                .iter()
                .filter(|l| l.is_master() && l.has_slots)
                .count();
            let replicas = lines.iter().filter(|l| l.has_flag("slave")).count();
            if masters != 3 || replicas != 3 {
                return Err(format!(
                    "{}: sees {masters} masters and {replicas} replicas",
                    node.port
                ));
            }
            for l in &lines {
                let bad = ["handshake", "fail", "fail?", "noaddr", "nofailover"]
                    .iter()
                    .find(|f| l.has_flag(f));
                if let Some(flag) = bad {
                    return Err(format!("{}: node {} has flag {flag}", node.port, l.port));
                }
                if !l.link_connected {
                    return Err(format!(
                        "{}: link to {} is not connected",
                        node.port, l.port
                    ));
                }
            }
        }
        for node in &self.nodes {
            let info = info(node.port, "replication").await?;
            if info_field(&info, "role") == Some("slave") {
                check_replica_synced(node.port, &info)?;
            }
        }
        Ok(())
    }

    async fn check_failover(&self) -> Result<(), String> {
        for f in &self.pending {
            let info = info(f.replica_port, "replication").await?;
            if info_field(&info, "role") != Some("master") {
                return Err(format!("replica {} is not master yet", f.replica_port));
            }
        }
        let running = self.nodes.iter().filter(|n| n.child.is_some()).count();
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            check_cluster_info(node.port, running).await?;
            let lines = cluster_nodes(node.port).await?;
            for f in &self.pending {
                let old = lines.iter().find(|l| l.id == f.master_id);
                if !old.is_some_and(|l| l.has_flag("fail") && !l.has_slots) {
                    return Err(format!(
                        "{}: old master {} is {old:?}",
                        node.port, f.master_port
                    ));
                }
                let new = lines.iter().find(|l| l.id == f.replica_id);
                if !new.is_some_and(|l| l.is_master() && l.has_slots) {
                    return Err(format!(
                        "{}: promoted node {} is {new:?}",
                        node.port, f.replica_port
                    ));
                }
            }
        }
        Ok(())
    }

    async fn any_cluster_nodes(&self) -> Vec<ClusterNodeLine> {
        let mut last = String::new();
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            match cluster_nodes(node.port).await {
                Ok(lines) => return lines,
                Err(e) => last = e,
            }
        }
        panic!("no running cluster node answered CLUSTER NODES: {last}");
    }

    fn node_mut(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("port of a cluster node")
    }

    fn log_sources(&self) -> Vec<&Node> {
        self.nodes.iter().collect()
    }

    /// Last lines of every node's log and of the `redis-cli --cluster create` output.
    pub fn log_tail(&self) -> String {
        let create = fs::read_to_string(&self.create_log).unwrap_or_default();
        format!(
            "{}--- redis-cli --cluster create ---\n{}",
            log_tails(&self.log_sources()),
            tail(&create)
        )
    }
}

/// Cluster hash slot of a key: CRC16/XMODEM of the key, or of its `{hash tag}`, mod 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&len| len > 0)
                .map(|len| &rest[..len])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for &byte in tagged {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % CLUSTER_SLOTS as u16
}

/// `CLUSTER INFO` says ok, all slots are assigned and ok, and the node knows `known` nodes.
async fn check_cluster_info(port: u16, min_known: usize) -> Result<(), String> {
    let text = query(port, &["CLUSTER", "INFO"]).await?.text();
    let field = |k| info_field(&text, k).unwrap_or("?").to_string();
    let slots = CLUSTER_SLOTS.to_string();
    if field("cluster_state") != "ok"
        || field("cluster_slots_assigned") != slots
        || field("cluster_slots_ok") != slots
        || field("cluster_known_nodes")
            .parse::<usize>()
            .ok()
            .is_none_or(|n| n < min_known)
    {
        return Err(format!(
            "{port}: cluster_state:{} slots_assigned:{} slots_ok:{} known_nodes:{}",
            field("cluster_state"),
            field("cluster_slots_assigned"),
            field("cluster_slots_ok"),
            field("cluster_known_nodes")
        ));
    }
    Ok(())
}

async fn cluster_nodes(port: u16) -> Result<Vec<ClusterNodeLine>, String> {
    let text = query(port, &["CLUSTER", "NODES"]).await?.text();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(parse_cluster_node_line)
        .collect()
}

/// `<id> <ip:port@cport[,hostname]> <flags> <master|-> <ping> <pong> <epoch> <link> [slot...]`
fn parse_cluster_node_line(line: &str) -> Result<ClusterNodeLine, String> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 8 {
        return Err(format!("bad CLUSTER NODES line: {line}"));
    }
    let port = f[1]
        .split('@')
        .next()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("bad address in CLUSTER NODES line: {line}"))?;
    let slots: Vec<(u16, u16)> = f[8..]
        .iter()
        .filter(|s| !s.starts_with('['))
        .filter_map(|s| match s.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => s.parse().ok().map(|n| (n, n)),
        })
        .collect();
    Ok(ClusterNodeLine {
        id: f[0].to_string(),
        port,
        flags: f[2].split(',').map(str::to_string).collect(),
        master_id: (f[3] != "-").then(|| f[3].to_string()),
        link_connected: f[7] == "connected",
        has_slots: !slots.is_empty(),
        slots,
    })
}

// ---------------------------------------------------------------------------------------------
// Sentinel
// ---------------------------------------------------------------------------------------------

/// 1 master + 1 replica + 3 sentinels monitoring [`SENTINEL_MASTER_NAME`] with quorum 2.
pub struct RedisSentinel {
    /// `data[0]` is the initial master, `data[1]` its replica.
    data: Vec<Node>,
    sentinels: Vec<Node>,
    /// Port of the current master; updated by `wait_failover`.
    master_port: AtomicU16,
    /// `(old master, expected new master)` set by `kill_master`.
    pending: Option<(u16, u16)>,
    _dir: TempDir,
}

impl RedisSentinel {
    /// Starts the master and the replica, waits until the replica is in sync, starts three
    /// sentinels and waits until each of them sees the master up, the replica in sync and the
    /// two other sentinels, and `SENTINEL CKQUORUM` passes.
    pub async fn start() -> RedisSentinel {
        let dir = TempDir::new("sentinel");
        let master = Node::start("master", dir.path().join("master"), NodeKind::Data, "").await;
        let replica_body = format!("replicaof 127.0.0.1 {}\n", master.port);
        let replica = Node::start(
            "replica",
            dir.path().join("replica"),
            NodeKind::Data,
            &replica_body,
        )
        .await;
        let master_port = master.port;
        let data = vec![master, replica];
        {
            let replica = &data[1];
            poll_until(
                "replica to sync with the master",
                data.iter().collect(),
                move || async move {
                    let info = info(replica.port, "replication").await?;
                    check_replica_synced(replica.port, &info)
                },
            )
            .await;
        }
        let body = format!(
            "sentinel monitor {SENTINEL_MASTER_NAME} 127.0.0.1 {master_port} 2\n\
             sentinel down-after-milliseconds {SENTINEL_MASTER_NAME} {SENTINEL_DOWN_AFTER_MS}\n\
             sentinel failover-timeout {SENTINEL_MASTER_NAME} {SENTINEL_FAILOVER_TIMEOUT_MS}\n\
             sentinel parallel-syncs {SENTINEL_MASTER_NAME} 1\n"
        );
        let mut sentinels = Vec::with_capacity(3);
        for i in 0..3 {
            let name = format!("sentinel-{i}");
            sentinels
                .push(Node::start(&name, dir.path().join(&name), NodeKind::Sentinel, &body).await);
        }
        let setup = RedisSentinel {
            data,
            sentinels,
            master_port: AtomicU16::new(master_port),
            pending: None,
            _dir: dir,
        };
        let this = &setup;
        poll_until("sentinels to agree", this.log_sources(), move || {
            this.check_ready()
        })
        .await;
        setup
    }

    /// `redis://127.0.0.1:<port>` of the three sentinels.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(|n| url(n.port)).collect()
    }

    pub fn master_name(&self) -> &str {
        SENTINEL_MASTER_NAME
    }

    /// Port of the current master (changes after `wait_failover`).
    pub fn master_port(&self) -> u16 {
        self.master_port.load(Ordering::SeqCst)
    }

    /// Port of the node that is not the current master.
    pub fn replica_port(&self) -> u16 {
        let master = self.master_port();
        self.data
            .iter()
            .map(|n| n.port)
            .find(|&p| p != master)
            .expect("two data nodes")
    }

    /// Kills the current master after making sure (replication offsets) the replica
    /// acknowledged every write, so data written before the kill survives the failover.
    pub async fn kill_master(&mut self) {
        assert!(
            self.pending.is_none(),
            "RedisSentinel supports one failover: after it the only data node left is the master"
        );
        let (old, new) = (self.master_port(), self.replica_port());
        wait_replica_ack(old, &self.log_sources()).await;
        self.data
            .iter_mut()
            .find(|n| n.port == old)
            .expect("master node")
            .kill();
        self.pending = Some((old, new));
    }

    /// A manual failover (`SENTINEL FAILOVER`): the replica is promoted while the master keeps
    /// running, and keeps calling itself master until the sentinels reconfigure it (seconds
    /// later). Follow with `wait_failover`.
    pub async fn failover_gracefully(&mut self) {
        assert!(
            self.pending.is_none(),
            "RedisSentinel supports one failover"
        );
        let (old, new) = (self.master_port(), self.replica_port());
        wait_replica_ack(old, &self.log_sources()).await;
        query(
            self.sentinels[0].port,
            &["SENTINEL", "FAILOVER", SENTINEL_MASTER_NAME],
        )
        .await
        .expect("SENTINEL FAILOVER");
        self.pending = Some((old, new));
    }

    /// Whether the node on `port` reports `role:slave` (a demoted master does once the
    /// sentinels have reconfigured it).
    pub async fn is_replica(&self, port: u16) -> bool {
        matches!(info(port, "replication").await, Ok(i) if info_field(&i, "role") == Some("slave"))
    }

    /// Whether the node on `port` holds `key`.
    pub async fn exists(&self, port: u16, key: &str) -> bool {
        matches!(query(port, &["EXISTS", key]).await, Ok(Resp::Int(1)))
    }

    /// Waits until every sentinel reports the former replica as the master (not down) and the
    /// former replica reports `role:master`.
    pub async fn wait_failover(&self) {
        let Some((_, new)) = self.pending else {
            panic!("wait_failover called without kill_master");
        };
        poll_until("sentinel failover", self.log_sources(), move || {
            self.check_failover(new)
        })
        .await;
        self.master_port.store(new, Ordering::SeqCst);
    }

    async fn check_ready(&self) -> Result<(), String> {
        for s in &self.sentinels {
            let m = sentinel_master(s.port).await?;
            let get = |k: &str| m.get(k).map(String::as_str).unwrap_or("?");
            if get("port") != self.master_port().to_string()
                || get("flags") != "master"
                || get("num-slaves") != "1"
                || get("num-other-sentinels") != "2"
            {
                return Err(format!(
                    "sentinel {}: master port:{} flags:{} num-slaves:{} num-other-sentinels:{}",
                    s.port,
                    get("port"),
                    get("flags"),
                    get("num-slaves"),
                    get("num-other-sentinels")
                ));
            }
            let replicas = query(s.port, &["SENTINEL", "REPLICAS", SENTINEL_MASTER_NAME]).await?;
            let replicas: Vec<HashMap<String, String>> =
                replicas.items().iter().map(Resp::to_map).collect();
            let ok = replicas.iter().any(|r| {
                r.get("flags").map(String::as_str) == Some("slave")
                    && r.get("master-link-status").map(String::as_str) == Some("ok")
            });
            if !ok {
                return Err(format!("sentinel {}: replicas {replicas:?}", s.port));
            }
            query(s.port, &["SENTINEL", "CKQUORUM", SENTINEL_MASTER_NAME]).await?;
        }
        Ok(())
    }

    async fn check_failover(&self, new: u16) -> Result<(), String> {
        let info = info(new, "replication").await?;
        if info_field(&info, "role") != Some("master") {
            return Err(format!("{new} is not master yet"));
        }
        for s in &self.sentinels {
            let m = sentinel_master(s.port).await?;
            let (port, flags) = (m.get("port"), m.get("flags"));
            if port != Some(&new.to_string()) || flags.map(String::as_str) != Some("master") {
                return Err(format!(
                    "sentinel {}: master port {port:?} flags {flags:?}",
                    s.port
                ));
            }
        }
        Ok(())
    }

    fn log_sources(&self) -> Vec<&Node> {
        self.data.iter().chain(&self.sentinels).collect()
    }

    /// Last lines of every process's log.
    pub fn log_tail(&self) -> String {
        log_tails(&self.log_sources())
    }
}

async fn sentinel_master(port: u16) -> Result<HashMap<String, String>, String> {
    Ok(query(port, &["SENTINEL", "MASTER", SENTINEL_MASTER_NAME])
        .await?
        .to_map())
}

// ---------------------------------------------------------------------------------------------
// Shared checks
// ---------------------------------------------------------------------------------------------

fn check_replica_synced(port: u16, info: &str) -> Result<(), String> {
    let link = info_field(info, "master_link_status");
    let syncing = info_field(info, "master_sync_in_progress");
    if link != Some("up") || syncing != Some("0") {
        return Err(format!(
            "replica {port}: master_link_status {link:?} sync_in_progress {syncing:?}"
        ));
    }
    Ok(())
}

/// Polls a master's `INFO replication` until one replica acknowledged every write it accepted.
async fn wait_replica_ack(master: u16, logs: &[&Node]) {
    // `WAIT 1` only covers writes made on the connection that sends it (a fresh probe
    // connection returns at once), so compare replication offsets instead: every write the
    // master accepted so far is below `master_repl_offset`; a replica has it once the offset
    // it acknowledged (`slaveN:...,offset=N,...`) reaches that.
    let text = query(master, &["INFO", "replication"])
        .await
        .unwrap_or_else(|e| panic!("INFO replication on {master}: {e}"))
        .text();
    let want: i64 = info_field(&text, "master_repl_offset")
        .and_then(|o| o.parse().ok())
        .unwrap_or_else(|| panic!("no master_repl_offset on {master}:\n{text}"));
    poll_until(
        "a replica to acknowledge the master's writes",
        logs.to_vec(),
        move || async move {
            let text = query(master, &["INFO", "replication"]).await?.text();
            let acked = text
                .lines()
                .filter(|l| l.starts_with("slave") && l.contains("state=online"))
                .filter_map(|l| l.split(',').find_map(|f| f.strip_prefix("offset=")))
                .filter_map(|o| o.trim().parse::<i64>().ok())
                .max();
            match acked {
                Some(a) if a >= want => Ok(()),
                other => Err(format!(
                    "master {master}: replica acknowledged offset {other:?}, want {want}"
                )),
            }
        },
    )
    .await;
}

/// Polls `check` every `POLL_STEP` until it returns `Ok`, for at most `WAIT_TIMEOUT`; then
/// panics with its last error and the log tails of `logs`.
async fn poll_until<F, Fut>(what: &str, logs: Vec<&Node>, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    loop {
        let last = match check().await {
            Ok(()) => return,
            Err(e) => e,
        };
        if start.elapsed() >= WAIT_TIMEOUT {
            panic!(
                "timed out after {:?} waiting for {what}; last state: {last}\n{}",
                start.elapsed(),
                log_tails(&logs)
            );
        }
        tokio::time::sleep(POLL_STEP).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum NodeKind {
    /// A data node (standalone, master or replica).
    Data,
    /// A data node in cluster mode: its bus port (port + 10000) must be free too.
    ClusterData,
    /// A sentinel (`redis-server <conf> --sentinel`).
    Sentinel,
}

/// One redis-server process with its own dir, config and log.
struct Node {
    name: String,
    kind: NodeKind,
    port: u16,
    dir: PathBuf,
    /// Config lines after the common ones (the `port` line is added per spawn).
    extra_conf: String,
    child: Option<Child>,
}

enum StartError {
    PortInUse,
    Failed(String),
}

impl Node {
    /// Spawns the node on a fresh free port and waits until it answers; retries on another port
    /// when the chosen one was taken in the meantime.
    async fn start(name: &str, dir: PathBuf, kind: NodeKind, extra_conf: &str) -> Node {
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let mut node = Node {
            name: name.to_string(),
            kind,
            port: 0,
            dir,
            extra_conf: extra_conf.to_string(),
            child: None,
        };
        const ATTEMPTS: usize = 10;
        for _ in 0..ATTEMPTS {
            node.port = free_port(kind == NodeKind::ClusterData);
            node.spawn();
            match node.wait_ready().await {
                Ok(()) => return node,
                Err(StartError::PortInUse) => {
                    // A cluster node may have written its nodes.conf before failing to bind.
                    let _ = fs::remove_file(node.dir.join("nodes.conf"));
                }
                Err(StartError::Failed(e)) => panic!("{e}\n{}", log_tails(&[&node])),
            }
        }
        panic!(
            "{name}: no free port after {ATTEMPTS} attempts\n{}",
            log_tails(&[&node])
        );
    }

    /// Respawns on the same port, retrying for up to `WAIT_TIMEOUT` while the port is taken.
    async fn restart_same_port(&mut self) {
        let start = Instant::now();
        loop {
            self.spawn();
            match self.wait_ready().await {
                Ok(()) => return,
                Err(StartError::PortInUse) if start.elapsed() < WAIT_TIMEOUT => {
                    tokio::time::sleep(POLL_STEP).await;
                }
                Err(StartError::PortInUse) => panic!(
                    "{}: port {} still in use after {:?}\n{}",
                    self.name,
                    self.port,
                    start.elapsed(),
                    log_tails(&[&*self])
                ),
                Err(StartError::Failed(e)) => panic!("{e}\n{}", log_tails(&[&*self])),
            }
        }
    }

    fn config(&self) -> String {
        let mut conf = format!(
            "port {}\n\
             bind 127.0.0.1\n\
             protected-mode no\n\
             daemonize no\n\
             dir \"{}\"\n",
            self.port,
            self.dir.display()
        );
        if self.kind != NodeKind::Sentinel {
            conf.push_str(
                "save \"\"\n\
                 appendonly no\n\
                 repl-diskless-sync yes\n\
                 repl-diskless-sync-delay 0\n",
            );
        }
        conf.push_str(&self.extra_conf);
        conf
    }

    fn spawn(&mut self) {
        let conf_path = self.dir.join("redis.conf");
        fs::write(&conf_path, self.config())
            .unwrap_or_else(|e| panic!("write {}: {e}", conf_path.display()));
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log_path().display()));
        let log_err = log.try_clone().expect("clone log file handle");
        let bin = server_bin();
        let mut cmd = Command::new(&bin);
        cmd.arg(&conf_path);
        if self.kind == NodeKind::Sentinel {
            cmd.arg("--sentinel");
        }
        cmd.current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot run {bin}: {e} (apt-get install redis-server, or set STRATA_REDIS_SERVER)"
            )
        });
        record_pid(&self.dir, child.id());
        self.child = Some(child);
    }

    /// Waits until the spawned process answers `INFO server` with its own pid (so an answer
    /// from another process that took the port is never mistaken for ours).
    async fn wait_ready(&mut self) -> Result<(), StartError> {
        let start = Instant::now();
        loop {
            let child = self.child.as_mut().expect("spawned");
            let pid = child.id();
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                let log = fs::read_to_string(self.log_path()).unwrap_or_default();
                if log.contains("Address already in use") {
                    // Keep the log readable: drop the failed attempt's lines.
                    let _ = fs::write(self.log_path(), "");
                    return Err(StartError::PortInUse);
                }
                return Err(StartError::Failed(format!(
                    "{} on port {} exited during startup: {status}",
                    self.name, self.port
                )));
            }
            if let Ok(text) = query(self.port, &["INFO", "server"])
                .await
                .map(|r| r.text())
            {
                if info_field(&text, "process_id") == Some(pid.to_string().as_str()) {
                    return Ok(());
                }
            }
            if start.elapsed() >= WAIT_TIMEOUT {
                self.kill();
                return Err(StartError::Failed(format!(
                    "{} on port {} did not answer within {WAIT_TIMEOUT:?}",
                    self.name, self.port
                )));
            }
            tokio::time::sleep(READY_STEP).await;
        }
    }

    fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// SIGKILL + reap. No-op when not running.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}")
}

fn server_bin() -> String {
    std::env::var("STRATA_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_string())
}

fn cli_bin() -> String {
    std::env::var("STRATA_REDIS_CLI").unwrap_or_else(|_| "redis-cli".to_string())
}

fn log_tails(nodes: &[&Node]) -> String {
    let mut out = String::new();
    for n in nodes {
        let log = fs::read_to_string(n.log_path()).unwrap_or_else(|e| format!("<{e}>"));
        out.push_str(&format!(
            "--- {} (127.0.0.1:{}) {} ---\n",
            n.name,
            n.port,
            n.log_path().display()
        ));
        out.push_str(&tail(&log));
    }
    out
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
    out.push('\n');
    out
}

// ---------------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------------

/// Ports handed out by this process (and their bus ports), never handed out twice.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A port the kernel just reported free on 127.0.0.1 (bind to port 0, read, close). With
/// `with_bus`, port + 10000 (the cluster bus port) is free too.
fn free_port(with_bus: bool) -> u16 {
    for _ in 0..1000 {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        let bus = port.checked_add(10000);
        let _bus_listener = match (with_bus, bus) {
            (false, _) => None,
            (true, None) => continue,
            (true, Some(bus)) => match TcpListener::bind(("127.0.0.1", bus)) {
                Ok(l) => Some(l),
                Err(_) => continue,
            },
        };
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if handed_out.contains(&port) || (with_bus && handed_out.contains(&bus.unwrap_or(0))) {
            continue;
        }
        handed_out.insert(port);
        if let (true, Some(bus)) = (with_bus, bus) {
            handed_out.insert(bus);
        }
        return port;
    }
    panic!("no free port pair found on 127.0.0.1");
}

// ---------------------------------------------------------------------------------------------
// Temp dirs and cleanup of leftovers from killed test processes
// ---------------------------------------------------------------------------------------------

struct TempDir(PathBuf);

impl TempDir {
    fn new(kind: &str) -> TempDir {
        static SWEEP: Once = Once::new();
        static SEQ: AtomicU64 = AtomicU64::new(0);
        SWEEP.call_once(sweep_leftovers);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "{DIR_PREFIX}{}-{kind}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("STRATA_KEEP_REDIS_DIRS").is_some() {
            let _ = fs::write(self.0.join(KEEP_MARKER), "");
            eprintln!("redis test dir kept: {}", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// Appends a spawned pid to `<topology dir>/pids` (one level above the node dir).
fn record_pid(node_dir: &Path, pid: u32) {
    use std::io::Write;
    let file = node_dir.parent().unwrap_or(node_dir).join("pids");
    if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(file) {
        let _ = writeln!(f, "{pid}");
    }
}

/// Kills the redis processes of topology dirs whose owning test process is gone, and removes
/// those dirs. A pid is killed only if its working directory is inside that dir, so a reused
/// pid of an unrelated process is never touched.
fn sweep_leftovers() {
    if !cfg!(target_os = "linux") {
        return;
    }
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = name
            .strip_prefix(DIR_PREFIX)
            .and_then(|r| r.split('-').next())
        else {
            continue;
        };
        let Ok(owner) = owner.parse::<u32>() else {
            continue;
        };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        let dir = entry.path();
        let pids = fs::read_to_string(dir.join("pids")).unwrap_or_default();
        for pid in pids.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
            let in_dir =
                fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(&dir));
            if in_dir {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
        }
        if !dir.join(KEEP_MARKER).exists() {
            let _ = fs::remove_dir_all(&dir);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Minimal RESP2 client for probes
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Resp {
    Simple(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

impl Resp {
    fn text(&self) -> String {
        match self {
            Resp::Simple(s) => s.clone(),
            Resp::Int(i) => i.to_string(),
            Resp::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            Resp::Bulk(None) | Resp::Array(_) => String::new(),
        }
    }

    fn items(&self) -> &[Resp] {
        match self {
            Resp::Array(Some(items)) => items,
            _ => &[],
        }
    }

    /// A flat `[k1, v1, k2, v2, ...]` reply as a map.
    fn to_map(&self) -> HashMap<String, String> {
        self.items()
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0].text(), c[1].text()))
            .collect()
    }
}

/// Sends one command on a fresh connection; a server error reply becomes `Err`.
async fn query(port: u16, args: &[&str]) -> Result<Resp, String> {
    let fut = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a.as_bytes());
            req.extend_from_slice(b"\r\n");
        }
        stream.write_all(&req).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::with_capacity(4096);
        loop {
            if let Some((reply, _)) = parse_resp(&buf)? {
                return reply;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed before a full reply".to_string());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    match tokio::time::timeout(PROBE_TIMEOUT, fut).await {
        Ok(r) => r.map_err(|e| format!("127.0.0.1:{port} {args:?}: {e}")),
        Err(_) => Err(format!(
            "127.0.0.1:{port} {args:?}: no reply within {PROBE_TIMEOUT:?}"
        )),
    }
}

type Parsed = Option<(Result<Resp, String>, usize)>;

/// Parses one RESP2 value from the front of `buf`; `Ok(None)` when more bytes are needed.
/// A top-level error reply is returned as `Some((Err(msg), len))`.
fn parse_resp(buf: &[u8]) -> Result<Parsed, String> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    if eol == 0 {
        return Err("empty RESP line".to_string());
    }
    let line = std::str::from_utf8(&buf[1..eol]).map_err(|e| e.to_string())?;
    let next = eol + 2;
    let int = || {
        line.parse::<i64>()
            .map_err(|e| format!("bad RESP integer {line:?}: {e}"))
    };
    let value = match buf[0] {
        b'+' => Resp::Simple(line.to_string()),
        b'-' => return Ok(Some((Err(line.to_string()), next))),
        b':' => Resp::Int(int()?),
        b'$' => {
            let Ok(len) = usize::try_from(int()?) else {
                return Ok(Some((Ok(Resp::Bulk(None)), next)));
            };
            if buf.len() < next + len + 2 {
                return Ok(None);
            }
            return Ok(Some((
                Ok(Resp::Bulk(Some(buf[next..next + len].to_vec()))),
                next + len + 2,
            )));
        }
        b'*' => {
            let Ok(len) = usize::try_from(int()?) else {
                return Ok(Some((Ok(Resp::Array(None)), next)));
            };
            let mut items = Vec::with_capacity(len);
            let mut pos = next;
            for _ in 0..len {
                match parse_resp(&buf[pos..])? {
                    None => return Ok(None),
                    Some((item, used)) => {
                        // Nested error replies (e.g. in EXEC) are kept as text.
                        items.push(item.unwrap_or_else(Resp::Simple));
                        pos += used;
                    }
                }
            }
            return Ok(Some((Ok(Resp::Array(Some(items))), pos)));
        }
        other => return Err(format!("unexpected RESP type byte {:?}", other as char)),
    };
    Ok(Some((Ok(value), next)))
}

/// How many times the server on `port` ran `command` (lowercase), from
/// `INFO commandstats`; 0 when it never ran.
pub async fn command_calls(port: u16, command: &str) -> u64 {
    let text = info(port, "commandstats").await.unwrap_or_default();
    info_field(&text, &format!("cmdstat_{command}"))
        .and_then(|v| v.strip_prefix("calls="))
        .and_then(|v| v.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

async fn info(port: u16, section: &str) -> Result<String, String> {
    Ok(query(port, &["INFO", section]).await?.text())
}

/// Value of `key:` in an `INFO` or `CLUSTER INFO` text.
fn info_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
}
