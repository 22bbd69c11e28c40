//! The real `strata` binary as a child process: started on a config file
//! with JSON logs, every output line captured, its addresses read from the
//! "strata serving" line (so configs can use port 0), signals sent with
//! `kill` to its pid only.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

pub struct Binary {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub tls: Option<SocketAddr>,
    lines: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
}

fn collect(
    out: impl AsyncRead + Unpin + Send + 'static,
    lines: Arc<Mutex<Vec<String>>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = BufReader::new(out).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            lines.lock().expect("lines").push(line);
        }
    })
}

fn addr_field(v: &serde_json::Value, name: &str) -> Option<SocketAddr> {
    v.get(name)?.as_str()?.parse().ok()
}

impl Binary {
    /// Runs `strata serve --config PATH --log-format json ARGS...` and waits
    /// (bounded) until it serves.
    pub async fn start(config: &Path, args: &[&str]) -> Binary {
        Binary::spawn(config, args).serving().await
    }

    /// Runs `strata serve --config PATH --log-format json ARGS...`, not
    /// waiting for anything: see [`Starting::serving`].
    pub fn spawn(config: &Path, args: &[&str]) -> Starting {
        let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .args(["--log-format", "json"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn strata");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().expect("stdout"), lines.clone()),
            collect(child.stderr.take().expect("stderr"), lines.clone()),
        ];
        Starting {
            child,
            lines,
            readers,
        }
    }
}

/// A `strata serve` started and not yet known to serve.
pub struct Starting {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Starting {
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Waits (bounded) until it serves.
    pub async fn serving(self) -> Binary {
        let Starting {
            mut child,
            lines,
            readers,
        } = self;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let serving = lines
                .lock()
                .expect("lines")
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["message"] == "strata serving");
            if let Some(v) = serving {
                return Binary {
                    addr: addr_field(&v, "listen").expect("listen address"),
                    admin: addr_field(&v, "admin").expect("admin address"),
                    tls: addr_field(&v, "tls"),
                    child,
                    lines,
                    readers,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "strata exited with {status} before serving:\n{}",
                    lines.lock().expect("lines").join("\n")
                );
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "strata not serving after 20s:\n{}",
                    lines.lock().expect("lines").join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Binary {
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Every output line so far (stdout and stderr).
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// The output lines that are JSON log events.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.lines()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits (bounded) for an event after the first `skip` events that
    /// satisfies `pred`; returns it with its index.
    pub async fn wait_event(
        &self,
        skip: usize,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> (usize, serde_json::Value) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let events = self.events();
            if let Some(found) = events
                .into_iter()
                .enumerate()
                .skip(skip)
                .find(|(_, e)| pred(e))
            {
                return found;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "timed out waiting for log event: {what}\n{}",
                    self.lines().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn signal(&self, name: &str) {
        let ok = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// Sends SIGHUP and waits for the reload's outcome; returns the event
    /// ("configuration reloaded" or "reload failed: ...").
    pub async fn reload(&self) -> serde_json::Value {
        let skip = self.events().len();
        self.signal("HUP");
        self.wait_event(skip, "reload outcome", |e| {
            let m = e["message"].as_str().unwrap_or("");
            m == "configuration reloaded" || m.starts_with("reload failed")
        })
        .await
        .1
    }

    /// Still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then waits (bounded) for the exit and for every output line.
    pub async fn stop(mut self) -> (ExitStatus, Vec<String>) {
        self.signal("TERM");
        let status = tokio::time::timeout(Duration::from_secs(40), self.child.wait())
            .await
            .expect("exit within 40s")
            .expect("wait");
        for r in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), r).await;
        }
        let lines = self.lines();
        (status, lines)
    }
}

/// `strata check --config path`, which must fail with status 1 (a bad
/// configuration): its standard error.
pub fn check_fails(path: &Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("check")
        .arg("--config")
        .arg(path)
        .output()
        .expect("run strata check");
    assert_eq!(
        out.status.code(),
        Some(1),
        "strata check {}",
        path.display()
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Anonymous plus shared resident memory of process `pid`, in KiB (the
/// mapped binary, a debug build here, does not count).
pub fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    kib("RssAnon:") + kib("RssShmem:")
}

/// Waits (10 s at most) until process `pid`'s resident memory has grown by
/// at most `kib` KiB per connection over `before` (KiB, see
/// [`resident_kib`]) with `conns` connections open. Returns the growth per
/// connection seen at first, for messages.
pub async fn idle_cost_at_most(pid: u32, before: u64, conns: u64, kib: f64) -> f64 {
    let per_conn = || resident_kib(pid).saturating_sub(before) as f64 / conns as f64;
    let first = per_conn();
    super::wait_until(
        Duration::from_secs(10),
        &format!("{kib} KiB or less per idle connection (first {first:.1})"),
        || std::future::ready(per_conn() <= kib),
    )
    .await;
    first
}
