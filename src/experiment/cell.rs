//! One cell: its plan ([`CellPlan::new`], from a validated config) and its run ([`run_cell`]).

use std::sync::Arc;
use std::time::Duration;

use super::ExperimentError;
use crate::config::settings::Arrivals;
use crate::config::XbenchConfig;
use crate::engine::{Engine, EngineConfig};
use crate::loadgen::{self, HttpTarget, Load, RunOutcome, RunSpec, Target, Window, Workload};
use crate::report::results::{encode_histogram, RepeatFigures};
use crate::report::{BenchRow, CellLabels};
use crate::server::api::InfoResponse;
use crate::server::{BackgroundServer, ServerSettings};

/// Where a cell's requests go.
#[derive(Debug, Clone)]
pub enum TargetPlan {
    /// The engine, started in this process.
    InProcess,
    /// xbench's server, started for the cell on 127.0.0.1 (a free port), over HTTP.
    OwnServer(Box<ServerSettings>),
    /// A running server (`POST /rerank`, TEI-compatible) at this URL.
    Url(String),
}

/// Everything a cell needs to run, decided before it runs.
#[derive(Debug, Clone)]
pub struct CellPlan {
    pub engine: EngineConfig,
    pub target: TargetPlan,
    /// The load, the stage and the window.
    pub spec: RunSpec,
    /// The row's labels; the engine's threads, or a server's own settings (its `/info`), are
    /// filled in when the cell runs.
    pub labels: CellLabels,
    /// HTTP: bearer token, connection bound and per-request timeout.
    pub api_key: Option<String>,
    pub max_connections: usize,
    pub http_timeout: Duration,
    /// HTTP: how long to wait for the server's `/health`.
    pub ready_within: Duration,
}

impl CellPlan {
    /// The plan of a cell of `config` with `pairs_per_request` pairs and `concurrency` clients
    /// (ignored with an open-loop rate).
    pub fn new(
        config: &XbenchConfig,
        pairs_per_request: usize,
        concurrency: usize,
    ) -> Result<Self, ExperimentError> {
        let e = &config.experiment;
        let engine = EngineConfig::from_config(config);
        let model_names: Vec<String> = engine.models.iter().map(|m| m.name.clone()).collect();
        let target = match e.target.as_deref() {
            None => TargetPlan::InProcess,
            Some("self") => TargetPlan::OwnServer(Box::new(ServerSettings {
                host: "127.0.0.1".into(),
                port: 0,
                ..config.server.clone()
            })),
            Some(url) => TargetPlan::Url(url.to_string()),
        };
        let load = match e.rate {
            Some(rate) => Load::Open {
                rate,
                poisson: e.arrivals == Arrivals::Poisson,
            },
            None => Load::Closed { concurrency },
        };
        // A server elsewhere serves its own default model: the requests name none.
        let models = match target {
            TargetPlan::Url(_) => Vec::new(),
            _ => model_names.clone(),
        };
        let spec = RunSpec {
            stage: e.stage,
            load,
            models,
            warmup: e.warmup,
            window: Window {
                duration: Duration::from_secs_f64(e.duration_s),
                min_requests: e.min_requests,
                max_duration: Duration::from_secs_f64(e.max_duration_s),
            },
            seed: config.workload.seed,
        };
        let labels = CellLabels {
            stage: e.stage,
            model: match &target {
                TargetPlan::Url(url) => url.clone(),
                _ => model_names.join(" + "),
            },
            tokenizer_workers: config.tokenizer_pool.workers,
            model_workers: engine.models.iter().map(|m| m.workers).sum(),
            threads_per_worker: engine.models.first().and_then(|m| m.threads).unwrap_or(0),
            parallelism: config.tokenizer_pool.parallelism,
            pairs_per_request,
            max_batch_size: config.batching.max_batch_size,
            timeout_ms: config.batching.timeout_ms,
            load,
        };
        Ok(Self {
            engine,
            target,
            spec,
            labels,
            api_key: config
                .server
                .api_key
                .clone()
                .or_else(|| std::env::var("XBENCH_API_KEY").ok()),
            max_connections: e.max_connections.unwrap_or(match e.rate {
                Some(_) => 256,
                None => concurrency,
            }),
            http_timeout: Duration::from_secs_f64(e.max_duration_s.max(60.0)),
            ready_within: Duration::from_secs(300),
        })
    }
}

/// What a cell measured: the row over every repeat and each repeat's own figures.
#[derive(Debug, Clone)]
pub struct CellRun {
    pub row: BenchRow,
    pub repeats: Vec<RepeatFigures>,
    /// The merged latency histogram (µs), HdrHistogram V2 deflate, base64.
    pub latency_histogram: String,
}

/// Starts the cell's target, runs its load `repeats` times over `workload` (each repeat with its
/// own warm-up; the row merges them all), and stops what it started.
pub fn run_cell(
    plan: &CellPlan,
    workload: &Workload,
    repeats: u32,
    runtime: &tokio::runtime::Runtime,
) -> Result<CellRun, ExperimentError> {
    let mut labels = plan.labels.clone();
    let (target, server) = match &plan.target {
        TargetPlan::InProcess => {
            let engine = Arc::new(Engine::start(&plan.engine)?);
            labels.threads_per_worker = engine.threads_per_worker(None)?;
            (Target::Engine(engine), None)
        }
        TargetPlan::OwnServer(settings) => {
            let server = BackgroundServer::start((**settings).clone(), plan.engine.clone())?;
            let state = server.stats_handle();
            let http = http_target(plan, &server.url(), runtime)?
                .with_stats(Box::new(move || state.batch_stats()));
            let http = Arc::new(http);
            labels = http_labels(runtime.block_on(http.info()).as_ref(), labels);
            (Target::Http(http), Some(server))
        }
        TargetPlan::Url(url) => {
            let http = Arc::new(http_target(plan, url, runtime)?);
            labels = http_labels(runtime.block_on(http.info()).as_ref(), labels);
            (Target::Http(http), None)
        }
    };
    let mut merged: Option<RunOutcome> = None;
    let mut figures = Vec::new();
    for _ in 0..repeats.max(1) {
        let outcome = runtime.block_on(loadgen::run(target.clone(), workload, &plan.spec))?;
        let one = BenchRow::new(&labels, &outcome);
        figures.push(RepeatFigures {
            qps: one.qps,
            p99_ms: one.latency_ms.p99,
            requests: one.requests,
        });
        merged = Some(match merged {
            None => outcome,
            Some(mut m) => {
                m.recorder.merge(&outcome.recorder);
                m.wall += outcome.wall;
                m.batches = m.batches.zip(outcome.batches).map(|(a, b)| a.plus(&b));
                m
            }
        });
    }
    drop(target);
    if let Some(server) = server {
        let summary = server.stop()?;
        tracing::debug!(
            accepted = summary.accepted,
            answered = summary.answered,
            left = summary.left,
            "cell server stopped"
        );
    }
    let outcome = merged.ok_or(ExperimentError::NoRepeats)?;
    Ok(CellRun {
        row: BenchRow::new(&labels, &outcome),
        repeats: figures,
        latency_histogram: encode_histogram(&outcome.recorder.latency_us)
            .map_err(ExperimentError::Histogram)?,
    })
}

/// An HTTP target for `url` as the plan bounds it, once its `/health` answers.
fn http_target(
    plan: &CellPlan,
    url: &str,
    runtime: &tokio::runtime::Runtime,
) -> Result<HttpTarget, ExperimentError> {
    let http = HttpTarget::new(
        url,
        plan.api_key.clone(),
        plan.max_connections,
        plan.http_timeout,
    )?;
    runtime.block_on(http.wait_ready(plan.ready_within))?;
    Ok(http)
}

/// The labels of a cell measured over HTTP: the server's own settings when it is xbench (from
/// `/info`), the plan's otherwise.
fn http_labels(info: Option<&InfoResponse>, fallback: CellLabels) -> CellLabels {
    match info {
        Some(i) if !i.models.is_empty() => CellLabels {
            model: i
                .models
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(" + "),
            tokenizer_workers: i.tokenizer_workers,
            model_workers: i.models.iter().map(|m| m.workers).sum(),
            threads_per_worker: i.models[0].threads_per_worker,
            parallelism: i.tokenizer_parallelism,
            max_batch_size: i.limits.max_batch_size,
            timeout_ms: i.limits.batching_timeout_ms,
            ..fallback
        },
        _ => fallback,
    }
}
