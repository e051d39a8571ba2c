//! `xbench serve`: the HTTP server (axum on tokio) in front of the same [`Engine`] that the
//! benchmarks measure.
//!
//! The listener binds first and answers `/health` with 503 while the models load and run their
//! warm-up batch; then every route opens. On shutdown it stops accepting, finishes every request
//! in flight, then drops the engine (whose threads finish their queues).

pub mod api;
mod errors;
mod routes;
pub mod telemetry;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

pub use crate::config::settings::{ServerSettings, REDACTED};
pub use errors::ApiError;

use crate::engine::{BatchStats, Engine, EngineConfig, StartError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The background server's thread could not bind or start (the cause, as text).
    #[error("cannot start the server: {0}")]
    Start(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the engine")]
    Engine(#[from] StartError),
    #[error("cannot install the Prometheus recorder: {0}")]
    Metrics(String),
    #[error("the server failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the engine loader stopped unexpectedly: {0}")]
    Join(String),
}

const LOADING: u8 = 0;
const READY: u8 = 1;
const SHUTTING_DOWN: u8 = 2;

/// What every handler sees.
pub(crate) struct AppState {
    engine: OnceLock<Arc<Engine>>,
    phase: AtomicU8,
    settings: ServerSettings,
    engine_config: EngineConfig,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Requests accepted by a scoring route, those answered (any status), and those whose client
    /// closed the connection before the answer.
    accepted: AtomicU64,
    answered: AtomicU64,
    left: AtomicU64,
    started: Instant,
    /// `x-xbench-replica` on every answer: which replica of a fleet answered.
    replica: axum::http::HeaderValue,
}

/// This replica's name, as every answer's `x-xbench-replica` gives it: `XBENCH_REPLICA`, else the
/// host name (a Kubernetes pod's name), else `xbench`.
pub fn replica_name() -> String {
    replica_from(std::env::var("XBENCH_REPLICA").ok(), host_name)
}

fn replica_from(env: Option<String>, host: impl FnOnce() -> Option<String>) -> String {
    env.map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(host)
        .unwrap_or_else(|| "xbench".to_string())
}

/// The kernel's host name (Linux: `/proc/sys/kernel/hostname`, else `/etc/hostname`, else
/// `HOSTNAME`).
fn host_name() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

impl AppState {
    fn phase(&self) -> u8 {
        self.phase.load(Ordering::SeqCst)
    }
}

/// Starts the engine (blocking; runs while the server already answers /health with 503).
pub type EngineStarter = Box<dyn FnOnce(&EngineConfig) -> Result<Engine, StartError> + Send>;

/// A bound, not yet running server.
pub struct Server {
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    starter: EngineStarter,
}

/// Counts of a finished server, for its last log line and for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeSummary {
    /// Scoring requests accepted (read in full and handed to a handler).
    pub accepted: u64,
    /// Of those, answered (any status) before the server stopped.
    pub answered: u64,
    /// Of those, dropped unanswered because the client closed the connection first.
    pub left: u64,
}

impl Server {
    /// Binds the listener (port 0: a free one). Must run inside a tokio runtime.
    pub async fn bind(settings: ServerSettings, engine: EngineConfig) -> Result<Self, ServerError> {
        Self::bind_with(settings, engine, Box::new(Engine::start)).await
    }

    /// [`Server::bind`] with a custom engine starter (tests use slow or failing backends).
    pub async fn bind_with(
        settings: ServerSettings,
        engine: EngineConfig,
        starter: EngineStarter,
    ) -> Result<Self, ServerError> {
        debug_assert!(
            settings.validate().is_ok(),
            "server settings are validated by config"
        );
        let metrics = telemetry::handle().map_err(ServerError::Metrics)?;
        let addr = format!("{}:{}", settings.host, settings.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| ServerError::Bind {
                addr: addr.clone(),
                source,
            })?;
        Ok(Self {
            listener,
            state: Arc::new(AppState {
                engine: OnceLock::new(),
                phase: AtomicU8::new(LOADING),
                settings,
                engine_config: engine,
                metrics,
                accepted: AtomicU64::new(0),
                answered: AtomicU64::new(0),
                left: AtomicU64::new(0),
                started: Instant::now(),
                replica: axum::http::HeaderValue::from_str(&replica_name())
                    .unwrap_or_else(|_| axum::http::HeaderValue::from_static("xbench")),
            }),
            starter,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves (or the engine fails to start), then finishes every
    /// request in flight. Loads the engine meanwhile; `/health` says 200 once it is warm.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<ServeSummary, ServerError> {
        let state = self.state.clone();
        let app = routes::router(state.clone());
        let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<ServerError>();
        let loader = {
            let state = state.clone();
            let starter = self.starter;
            tokio::task::spawn_blocking(move || match starter(&state.engine_config) {
                Ok(engine) => {
                    let _ = state.engine.set(Arc::new(engine));
                    // A shutdown that came first stays.
                    let _ = state.phase.compare_exchange(
                        LOADING,
                        READY,
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    );
                    metrics::gauge!("xbench_ready").set(1.0);
                    tracing::info!(
                        after_s = format!("{:.1}", state.started.elapsed().as_secs_f64()),
                        "ready: models loaded and warm"
                    );
                }
                Err(e) => {
                    let _ = failed_tx.send(ServerError::Engine(e));
                }
            })
        };
        metrics::gauge!("xbench_ready").set(0.0);
        let startup_failure: Arc<std::sync::Mutex<Option<ServerError>>> = Arc::default();
        let signal = {
            let state = state.clone();
            let startup_failure = startup_failure.clone();
            async move {
                tokio::select! {
                    _ = shutdown => tracing::info!("shutting down: finishing the requests in flight"),
                    Ok(e) = failed_rx => {
                        tracing::error!(error = %crate::error_chain(&e), "the engine failed to start");
                        if let Ok(mut f) = startup_failure.lock() {
                            *f = Some(e);
                        }
                    }
                }
                state.phase.store(SHUTTING_DOWN, Ordering::SeqCst);
                metrics::gauge!("xbench_ready").set(0.0);
            }
        };
        axum::serve(
            self.listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(signal)
        .await?;
        let summary = ServeSummary {
            accepted: state.accepted.load(Ordering::SeqCst),
            answered: state.answered.load(Ordering::SeqCst),
            left: state.left.load(Ordering::SeqCst),
        };
        if let Some(e) = startup_failure.lock().ok().and_then(|mut f| f.take()) {
            return Err(e);
        }
        // The loader may still be loading when a shutdown comes first: let it finish.
        loader.await.map_err(|e| ServerError::Join(e.to_string()))?;
        tracing::info!(
            accepted = summary.accepted,
            answered = summary.answered,
            left = summary.left,
            "stopped: every accepted request was answered or its client left"
        );
        Ok(summary)
    }
}

/// Reads a running server's batch counters.
#[derive(Clone)]
pub struct ServerStats(Arc<AppState>);

impl ServerStats {
    /// The engine's batch counters, once it is loaded.
    pub fn batch_stats(&self) -> Option<BatchStats> {
        self.0.engine.get().map(|e| e.batch_stats())
    }
}

/// A server on its own runtime thread, for `xbench run` cells with `target: self` and for tests.
pub struct BackgroundServer {
    addr: SocketAddr,
    state: Arc<AppState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<ServeSummary, ServerError>>>,
}

impl BackgroundServer {
    /// Binds and starts serving (the engine loads meanwhile: wait for `/health`).
    pub fn start(settings: ServerSettings, engine: EngineConfig) -> Result<Self, ServerError> {
        Self::start_with(settings, engine, Box::new(Engine::start))
    }

    /// [`BackgroundServer::start`] with a custom engine starter.
    pub fn start_with(
        settings: ServerSettings,
        engine: EngineConfig,
        starter: EngineStarter,
    ) -> Result<Self, ServerError> {
        type Bound = Result<(SocketAddr, Arc<AppState>), ServerError>;
        let (bound_tx, bound_rx) = std::sync::mpsc::channel::<Bound>();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("http-server".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("http")
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let server = match Server::bind_with(settings, engine, starter).await {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = bound_tx.send(Err(ServerError::Start(crate::error_chain(&e))));
                            return Err(e);
                        }
                    };
                    let bound = server.local_addr().map(|a| (a, server.state.clone()));
                    let _ = bound_tx.send(bound.map_err(ServerError::Io));
                    server
                        .run(async {
                            let _ = stopped.await;
                        })
                        .await
                })
            })?;
        let (addr, state) = bound_rx
            .recv()
            .map_err(|_| ServerError::Join("the server thread ended before binding".into()))??;
        Ok(Self {
            addr,
            state,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until the engine is loaded and warmed up (what `/health` reports as ok); false if
    /// that takes longer than `timeout`.
    pub fn wait_ready(&self, timeout: std::time::Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.state.engine.get().is_none() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        true
    }

    /// A handle on the engine's batch counters that outlives borrows of the server.
    pub fn stats_handle(&self) -> ServerStats {
        ServerStats(self.state.clone())
    }

    /// Graceful shutdown: stops accepting, answers every request in flight, stops the engine.
    pub fn stop(mut self) -> Result<ServeSummary, ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(ServerError::Join("the server thread panicked".into())),
            None => Err(ServerError::Join("the server was stopped already".into())),
        }
    }
}

impl Drop for BackgroundServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replica_is_named_by_the_environment_else_the_host() {
        let host = || Some("pod-7".to_string());
        assert_eq!(replica_from(Some("r2".into()), host), "r2");
        assert_eq!(replica_from(Some("  ".into()), host), "pod-7");
        assert_eq!(replica_from(None, host), "pod-7");
        assert_eq!(replica_from(None, || None), "xbench");
        assert!(host_name().is_some_and(|h| !h.is_empty()));
    }
}
