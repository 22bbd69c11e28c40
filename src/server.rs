//! Listeners and connections: the proxy listener (HTTP/1.1 and h2c), the
//! optional TLS listener (h2 and HTTP/1.1 by ALPN) and the admin listener.
//! `run` accepts until shutdown, then stops accepting and drains in-flight
//! requests for up to `server.drain_timeout`.
//!
//! - `server/signals.rs`: SIGTERM/SIGINT → drain and exit (a second one:
//!   exit now), SIGHUP → reload.
//! - `server/reload.rs`: [`Reloader`], applying a reloaded configuration;
//!   `server/restart_only.rs`: what a reload cannot change.
//! - `server/tls.rs`: certificates, SNI and ALPN.
//! - `server/deadline.rs`: `header_read_timeout`, for every request head.
//! - `server/keepalive.rs`: the proxy and TLS listeners' connections; idle
//!   HTTP/1.1 ones give hyper's buffers back.
//! - `server/transport.rs`: plain and TLS streams as the release loop
//!   waits on them.
//! - `server/sendfile.rs`: the plain listener's socket; arena bodies go out
//!   with `sendfile`.
//!
//! Each listener kind has its own connection limit: the proxy and TLS
//! listeners share `server.max_connections`, the admin listener has
//! `admin.max_connections`, so a flood of client connections never keeps
//! `/health` or `/metrics` from answering.
//!
//! [`Reloader`] applies a new configuration to a running server: all of it
//! (certificates included) or, when anything in it is invalid, none of it.

pub mod deadline;
mod descriptors;
pub mod keepalive;
pub mod own_responses;
mod reload;
mod restart_only;
pub mod sendfile;
pub mod signals;
pub mod tls;
pub mod transport;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::Admin;
use crate::alerts::Alerts;
use crate::config::{Config, ServerConfig};
use crate::metrics::Metrics;
use crate::proxy::{ConnInfo, Shared};
use deadline::{HeadDeadline, Tracked};
use keepalive::Keepalive;
pub use reload::{ReloadError, Reloader};
use transport::Replay;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// A bound, not yet running, Strata.
pub struct Server {
    shared: Arc<Shared>,
    admin: Arc<Admin>,
    plain: TcpListener,
    admin_listener: TcpListener,
    tls: Option<(TcpListener, tls::Acceptor)>,
    settings: ServerConfig,
    /// `admin.max_connections`.
    admin_limit: usize,
    /// The configuration the process started with: what its listeners,
    /// limits and tiers run on until a restart ([`Reloader`] compares
    /// reloaded files with it).
    started: Arc<Config>,
}

fn listen(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    let bind = || -> std::io::Result<TcpListener> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        TcpListener::from_std(socket.into())
    };
    bind().map_err(|source| ServerError::Bind { addr, source })
}

impl Server {
    /// Binds every listener of `config` (port 0 picks a free port).
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        let metrics = Metrics::new();
        if config.server.sendfile {
            crate::cache::arena::enable();
        }
        let plain = listen(config.server.listen)?;
        let admin_listener = listen(config.admin.listen)?;
        let tls = match &config.server.tls {
            None => None,
            Some(t) => Some((listen(t.listen)?, tls::Acceptor::new(t)?)),
        };
        let settings = config.server.clone();
        let admin_limit = config.admin.max_connections;
        descriptors::warn_if_short(settings.max_connections, admin_limit);
        let alerts = Alerts::start(&config.alerts, metrics.clone());
        let shared = Shared::new(config, metrics, alerts);
        let started = shared.runtime.load().config.clone();
        crate::alerts::watch::spawn(
            Arc::downgrade(&shared),
            tls.as_ref().map(|(_, acceptor)| acceptor.clone()),
        );
        let admin = Arc::new(Admin::new(shared.clone()));
        Ok(Server {
            shared,
            admin,
            plain,
            admin_listener,
            tls,
            settings,
            admin_limit,
            started,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.plain.local_addr().unwrap_or(self.settings.listen)
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_listener.local_addr().ok()
    }

    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// The handle that applies reloaded configurations (SIGHUP).
    pub fn reloader(&self) -> Reloader {
        Reloader::new(
            self.shared.clone(),
            self.tls.as_ref().map(|(_, acceptor)| acceptor.clone()),
            self.started.clone(),
        )
    }

    /// Serves until `shutdown` completes, then drains for up to
    /// `server.drain_timeout`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        self.run_with_force(shutdown, std::future::pending()).await;
    }

    /// [`Server::run`], and a drain stops as soon as `force` completes (a
    /// second SIGTERM/SIGINT): the remaining connections are closed at
    /// once, without waiting for pending Redis writes.
    pub async fn run_with_force(
        self,
        shutdown: impl Future<Output = ()>,
        force: impl Future<Output = ()>,
    ) {
        let Server {
            shared,
            admin,
            plain,
            admin_listener,
            tls,
            settings,
            admin_limit,
            started: _,
        } = self;
        let stop = CancellationToken::new();
        if let Ok(addr) = plain.local_addr() {
            let tls_addr = tls.as_ref().and_then(|(l, _)| l.local_addr().ok());
            crate::warming::spawn(shared.clone(), addr, tls_addr, stop.clone());
        }
        let graceful = GracefulShutdown::new();
        let builder = Arc::new(builder(&settings));
        let http1 = Arc::new(http1_builder(&settings));
        let keepalive = Arc::new(Keepalive::default());
        let sweep = tokio::spawn(keepalive.clone().sweep());
        let conns = TaskTracker::new();
        let limit = Arc::new(Semaphore::new(settings.max_connections.max(1)));
        let admin_limit_size = admin_limit;
        let admin_limit = Arc::new(Semaphore::new(admin_limit));
        let metrics = &shared.metrics;
        metrics.watch_connections(
            "proxy",
            Arc::downgrade(&limit),
            settings.max_connections.max(1),
        );
        metrics.watch_connections("admin", Arc::downgrade(&admin_limit), admin_limit_size);
        let (head_timeout, send_timeout) = (settings.header_read_timeout, settings.send_timeout);
        let use_sendfile = settings.sendfile;

        let proxy_service = move |shared: Arc<Shared>, conn: ConnInfo, heads: HeadDeadline| {
            hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let open = heads.arrived(req.version(), !req.body().is_end_stream());
                let end = heads.body_end(); // `None` unless it has a body
                let http2 = req.version() == http::Version::HTTP_2;
                let shared = shared.clone();
                async move {
                    if let Some(end) = end {
                        req.extensions_mut().insert(end);
                    }
                    let response = shared.handle(req, conn).await;
                    if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                        open.switched();
                    }
                    // HTTP/2 has no connection-wide send timeout here.
                    Ok::<_, Infallible>(if http2 {
                        response.map(|body| deadline::stalled::guard(body, send_timeout, open))
                    } else {
                        response.map(|body| Tracked::new(body, open))
                    })
                }
            })
        };
        let admin_service = |admin: Arc<Admin>, heads: HeadDeadline| {
            hyper::service::service_fn(move |req: Request<Incoming>| {
                let open = heads.arrived(req.version(), !req.body().is_end_stream());
                let admin = admin.clone();
                async move {
                    let response = admin.handle(req).await;
                    Ok::<_, Infallible>(response.map(|body| Tracked::new(body, open)))
                }
            })
        };

        let plain_loop = accept_loop(&plain, &stop, &limit, |stream, peer, permit| {
            let heads = HeadDeadline::new(head_timeout, send_timeout);
            let info = ConnInfo::new(peer, false);
            let service = proxy_service(shared.clone(), info, heads.clone());
            let socket = heads.watch_io(
                sendfile::Socket::new(stream, use_sendfile),
                Some(refusals(&shared, info)),
            );
            let conn = keepalive.register(heads.clone());
            // Boxed once, not copied into `serve`'s and `log_conn_error`'s.
            let conn = Box::pin(keepalive::serve(
                Replay::new(socket),
                service,
                conn,
                http1.clone(),
                builder.clone(),
            ));
            conns.spawn(async move {
                log_conn_error(heads.serve(conn)).await;
                drop(permit);
            });
        });
        let admin_loop = accept_loop(
            &admin_listener,
            &stop,
            &admin_limit,
            |stream, _peer, permit| {
                let heads = HeadDeadline::new(head_timeout, send_timeout);
                let conn = builder
                    .serve_connection(
                        TokioIo::new(heads.watch_io(stream, None)),
                        admin_service(admin.clone(), heads.clone()),
                    )
                    .into_owned();
                let conn = Box::pin(graceful.watch(conn));
                tokio::spawn(async move {
                    log_conn_error(heads.serve(conn)).await;
                    drop(permit);
                });
            },
        );
        let tls_loop = async {
            let Some((listener, acceptor)) = &tls else {
                stop.cancelled().await;
                return;
            };
            accept_loop(listener, &stop, &limit, |stream, peer, permit| {
                let acceptor = acceptor.clone();
                let shared = shared.clone();
                let (http1, builder) = (http1.clone(), builder.clone());
                // The deadline runs from accept, across the handshake.
                let heads = HeadDeadline::new(head_timeout, send_timeout);
                let conn = keepalive.register(heads.clone());
                conns.spawn(async move {
                    // Boxed: the handshake's state (rustls's connection,
                    // inline) would otherwise stay in the task for the
                    // connection's whole life.
                    let Some(stream) = Box::pin(acceptor.accept(stream)).await else {
                        return;
                    };
                    let info = ConnInfo::new(peer, true);
                    let own = refusals(&shared, info);
                    let service = proxy_service(shared, info, heads.clone());
                    let io = Replay::new(heads.watch_io(stream, Some(own)));
                    let conn = Box::pin(keepalive::serve(io, service, conn, http1, builder));
                    log_conn_error(heads.serve(conn)).await;
                    drop(permit);
                });
            })
            .await
        };

        let serving = async { tokio::join!(plain_loop, admin_loop, tls_loop) };
        tokio::select! {
            _ = serving => {}
            _ = shutdown => {}
        }
        stop.cancel();
        admin.close();
        drop((plain, admin_listener, tls));
        tracing::info!(timeout = ?settings.drain_timeout, "draining connections");
        keepalive.drain();
        conns.close();
        let drained = async { tokio::join!(graceful.shutdown(), conns.wait()) };
        let finish = async {
            match tokio::time::timeout(settings.drain_timeout, drained).await {
                Ok(_) => tracing::info!("all connections closed"),
                Err(_) => tracing::warn!("drain timeout reached, closing remaining connections"),
            }
            shared.cache.flush(Duration::from_secs(2)).await;
        };
        tokio::select! {
            _ = finish => {}
            // Logged by whoever completes `force` (signals.rs says which
            // signal); the connections' tasks end with the runtime.
            _ = force => {}
        }
        sweep.abort();
    }
}

/// hyper's own `400`/`431` on a proxy connection: stamped, counted and
/// logged ([`own_responses`]).
fn refusals(shared: &Arc<Shared>, conn: ConnInfo) -> own_responses::OwnResponses {
    let shared = shared.clone();
    own_responses::OwnResponses::new(Box::new(move |status| shared.refused_head(conn, status)))
}

/// The plain listener's HTTP/1.1 ([`keepalive`]); the same settings as
/// `builder`'s `http1()`, which serves HTTP/1.1 over TLS, plus hyper's
/// `max_header_size`: without it a head that arrives in one read larger
/// than `max_buf_size` is parsed whole and accepted (the buffer limit is
/// checked only while a head is incomplete), so whether a 70 KiB head got
/// its `431` depended on how the client's bytes were split.
fn http1_builder(s: &ServerConfig) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.keep_alive(true)
        .writev(true)
        .max_buf_size(s.max_header_size.max(8192))
        .max_header_size(s.max_header_size);
    b
}

fn builder(s: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    // No hyper header timer (`header_read_timeout`): `deadline.rs` bounds
    // every head with one timer per connection. hyper's default limit of
    // 100 header fields stays: a larger `max_headers` makes it allocate
    // and fill two arrays of that size for every request head it parses.
    b.http1()
        .keep_alive(true)
        // Vectored writes: body chunks are never copied into (and never
        // grow) the connection's header buffer.
        .writev(true)
        .max_buf_size(s.max_header_size.max(8192));
    b.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_concurrent_streams(256)
        // Twice the limit: a header list between the two reaches Strata,
        // which answers its own `431` (stamped, counted, logged); only a
        // larger one gets the h2 library's bare `431`.
        .max_header_list_size(
            u32::try_from(s.max_header_size.saturating_mul(2)).unwrap_or(u32::MAX),
        );
    b
}

async fn accept_loop(
    listener: &TcpListener,
    stop: &CancellationToken,
    limit: &Arc<Semaphore>,
    mut serve: impl FnMut(TcpStream, SocketAddr, OwnedSemaphorePermit),
) {
    loop {
        // Accept, then wait for a permit: one taken first is held by a
        // listener nobody connects to (the proxy and TLS ones share them).
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let permit = tokio::select! {
                    _ = stop.cancelled() => return,
                    p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                };
                let _ = stream.set_nodelay(true);
                // The permit lives as long as the connection: at most
                // `server.max_connections` are served at once.
                serve(stream, peer, permit);
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn log_conn_error<F, E>(conn: F)
where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
