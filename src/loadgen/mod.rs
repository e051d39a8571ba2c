//! The in-process load generator: sends a workload's requests through one stage of the engine under
//! a closed loop (C clients, each sending its next request when the last one returns) or an open
//! loop (rate R per second, constant or Poisson arrivals), with a warm-up that is not counted and a
//! measured [`Window`]: at least a time budget and a minimum number of requests, never longer than a
//! hard cap.
//!
//! Latency is timed from each request's intended send time, so a stalled pipeline shows in the
//! percentiles; it is recorded in HDR histograms (µs) per client and merged.

pub mod http;
pub mod workload;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

pub use crate::config::settings::Stage;
use crate::engine::{BatchStats, Engine, EngineError, Timings};
use crate::tokenize::Encoded;
pub use http::{HttpTarget, HttpTargetError};
pub use workload::{GeneratedLengths, Workload, WorkloadError};

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Load {
    Closed { concurrency: usize },
    Open { rate: f64, poisson: bool },
}

/// One run of the load generator.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub stage: Stage,
    pub load: Load,
    /// Models the requests alternate between (request k goes to `models[k % len]`); empty: the
    /// engine's first model.
    pub models: Vec<String>,
    /// Requests sent before measuring (not counted).
    pub warmup: usize,
    /// How long, and how many requests, the measured window lasts.
    pub window: Window,
    /// Seed of Poisson arrivals.
    pub seed: u64,
}

/// The measured window: it stops issuing requests once it has run for `duration` AND issued
/// `min_requests`, or once `max_duration` has passed, whichever comes first; then it waits for every
/// answer. `duration` zero makes it a count of exactly `min_requests` (unless the cap cuts it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// Time budget: measure at least this long ...
    pub duration: Duration,
    /// ... and at least this many requests ...
    pub min_requests: usize,
    /// ... but stop issuing after this long in any case (keeps every run bounded).
    pub max_duration: Duration,
}

impl Window {
    /// A window of exactly `n` requests (no time budget), capped at `max_duration`.
    pub fn count(n: usize, max_duration: Duration) -> Self {
        Self {
            duration: Duration::ZERO,
            min_requests: n,
            max_duration,
        }
    }

    /// Whether a window that started at `started` may issue its request number `issued` (0-based).
    fn may_issue(&self, started: Instant, issued: usize) -> bool {
        let elapsed = started.elapsed();
        elapsed < self.max_duration && (issued < self.min_requests || elapsed < self.duration)
    }
}

/// What one measured window produced.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub recorder: Recorder,
    /// From the first intended send to the last answer.
    pub wall: Duration,
    /// Batches formed during the window (`None` for the tokenize stage).
    pub batches: Option<BatchStats>,
}

/// Latencies (µs, HDR) and stage-time sums of answered requests, and error counts by kind.
#[derive(Debug, Clone)]
pub struct Recorder {
    pub latency_us: Histogram<u64>,
    pub completed: u64,
    pub queue_us: u128,
    pub tokenize_us: u128,
    pub batch_wait_us: u128,
    pub inference_us: u128,
    pub errors: BTreeMap<String, u64>,
    first_intended: Option<Instant>,
    last_done: Option<Instant>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("fixed histogram bounds are valid. This is a bug."),
            completed: 0,
            queue_us: 0,
            tokenize_us: 0,
            batch_wait_us: 0,
            inference_us: 0,
            errors: BTreeMap::new(),
            first_intended: None,
            last_done: None,
        }
    }
}

impl Recorder {
    fn mark(&mut self, intended: Instant, done: Instant) {
        self.first_intended = Some(self.first_intended.map_or(intended, |f| f.min(intended)));
        self.last_done = Some(self.last_done.map_or(done, |l| l.max(done)));
    }

    pub fn record(&mut self, intended: Instant, done: Instant, t: &Timings) {
        self.mark(intended, done);
        let us = (done - intended).as_micros().max(1) as u64;
        self.latency_us.saturating_record(us);
        self.completed += 1;
        self.queue_us += t.queue.as_micros();
        self.tokenize_us += t.tokenize.as_micros();
        self.batch_wait_us += t.batch_wait.as_micros();
        self.inference_us += t.inference.as_micros();
    }

    pub fn record_error(&mut self, intended: Instant, done: Instant, kind: &str) {
        self.mark(intended, done);
        *self.errors.entry(kind.to_string()).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Recorder) {
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms with equal bounds merge. This is a bug.");
        self.completed += other.completed;
        self.queue_us += other.queue_us;
        self.tokenize_us += other.tokenize_us;
        self.batch_wait_us += other.batch_wait_us;
        self.inference_us += other.inference_us;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        if let Some(f) = other.first_intended {
            self.first_intended = Some(self.first_intended.map_or(f, |s| s.min(f)));
        }
        if let Some(l) = other.last_done {
            self.last_done = Some(self.last_done.map_or(l, |s| s.max(l)));
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn wall(&self) -> Duration {
        match (self.first_intended, self.last_done) {
            (Some(f), Some(l)) => l.saturating_duration_since(f),
            _ => Duration::ZERO,
        }
    }
}

/// A short, stable name for an error kind, for counts.
pub fn error_kind(e: &EngineError) -> &'static str {
    match e {
        EngineError::UnknownModel { .. } => "unknown_model",
        EngineError::Overloaded { .. } => "overloaded",
        EngineError::Empty => "empty",
        EngineError::Tokenize(_) => "tokenize",
        EngineError::TooLong { .. } => "too_long",
        EngineError::Unsupported(_) => "unsupported",
        EngineError::Backend(_) => "backend",
        EngineError::Shutdown => "shutdown",
    }
}

/// Where a run sends its requests.
#[derive(Clone)]
pub enum Target {
    /// The engine in this process (any stage).
    Engine(Arc<Engine>),
    /// A server over HTTP (`POST /rerank`; the full stage only).
    Http(Arc<HttpTarget>),
}

impl From<Arc<Engine>> for Target {
    fn from(engine: Arc<Engine>) -> Self {
        Target::Engine(engine)
    }
}

impl From<Arc<HttpTarget>> for Target {
    fn from(target: Arc<HttpTarget>) -> Self {
        Target::Http(target)
    }
}

/// A request ready to send for the run's stage.
#[derive(Clone)]
enum Prepared {
    Text(Arc<crate::engine::RerankInput>),
    Tokens(Arc<[Encoded]>),
    Body(Arc<Vec<u8>>),
}

/// Sends one request through the stage; returns its stage timings, or the kind of its failure.
async fn send(
    target: &Target,
    stage: Stage,
    model: Option<&str>,
    r: &Prepared,
) -> Result<Timings, String> {
    let kind = |e: EngineError| error_kind(&e).to_string();
    match (target, stage, r) {
        (Target::Engine(engine), Stage::Tokenize, Prepared::Text(input)) => {
            let t = engine.tokenize(model, input.clone()).await.map_err(kind)?;
            Ok(Timings {
                queue: t.queue,
                tokenize: t.tokenize,
                ..Timings::default()
            })
        }
        (Target::Engine(engine), Stage::Full, Prepared::Text(input)) => Ok(engine
            .rerank(model, input.clone())
            .await
            .map_err(kind)?
            .timings),
        (Target::Engine(engine), Stage::Infer, Prepared::Tokens(tokens)) => Ok(engine
            .infer(model, tokens.clone())
            .await
            .map_err(kind)?
            .timings),
        (Target::Http(http), Stage::Full, Prepared::Body(body)) => {
            http.rerank(body.as_ref().clone()).await
        }
        _ => unreachable!("requests are prepared for their target and stage. This is a bug."),
    }
}

/// Request number `k`: its model (they alternate) and its prepared request (cycling).
fn pick(prepared: &[(Option<String>, Vec<Prepared>)], k: usize) -> (Option<&str>, &Prepared) {
    let (model, requests) = &prepared[k % prepared.len()];
    (
        model.as_deref(),
        &requests[(k / prepared.len()) % requests.len()],
    )
}

/// Failures before any request is sent.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("an HTTP target runs the full stage only (it got '{0}')")]
    HttpStage(Stage),
}

/// Runs the warm-up, then the measured window, and returns the window's figures.
pub async fn run(
    target: impl Into<Target>,
    workload: &Workload,
    spec: &RunSpec,
) -> Result<RunOutcome, RunError> {
    let target = target.into();
    let models: Vec<Option<String>> = if spec.models.is_empty() {
        vec![None]
    } else {
        spec.models.iter().cloned().map(Some).collect()
    };
    let mut prepared: Vec<(Option<String>, Vec<Prepared>)> = Vec::new();
    for model in models {
        let engine = match &target {
            Target::Engine(e) => e,
            Target::Http(_) if spec.stage != Stage::Full => {
                return Err(RunError::HttpStage(spec.stage))
            }
            Target::Http(_) => {
                let bodies = workload
                    .requests
                    .iter()
                    .map(|r| Prepared::Body(Arc::new(HttpTarget::body(model.as_deref(), r))))
                    .collect();
                prepared.push((model, bodies));
                continue;
            }
        };
        let target = model;
        let requests = match spec.stage {
            Stage::Infer => {
                let tokenizer = engine.tokenizer(target.as_deref())?;
                workload
                    .requests
                    .iter()
                    .map(|r| {
                        tokenizer
                            .encode_many(&r.query, &r.passages, false)
                            .map(|e| Prepared::Tokens(e.into()))
                            .map_err(|e| EngineError::Tokenize(e.to_string()))
                    })
                    .collect::<Result<_, _>>()?
            }
            _ => {
                engine.model_info(target.as_deref())?;
                workload
                    .requests
                    .iter()
                    .cloned()
                    .map(Prepared::Text)
                    .collect()
            }
        };
        prepared.push((target, requests));
    }
    let prepared = Arc::new(prepared);
    if spec.warmup > 0 {
        let warmup = Window::count(spec.warmup, spec.window.max_duration);
        phase(&target, &prepared, spec, 0, warmup).await;
    }
    let stats = || match &target {
        Target::Engine(e) => Some(e.batch_stats()),
        Target::Http(http) => http.batch_stats(),
    };
    let before = stats();
    let recorder = phase(&target, &prepared, spec, spec.warmup, spec.window).await;
    let batches = match (before, stats()) {
        (Some(b), Some(a)) if spec.stage != Stage::Tokenize => Some(a.since(&b)),
        _ => None,
    };
    Ok(RunOutcome {
        wall: recorder.wall(),
        recorder,
        batches,
    })
}

/// Sends requests (numbered from `offset`, cycling over `prepared`) while `window` lets it, then
/// waits for every answer.
async fn phase(
    target: &Target,
    prepared: &Arc<Vec<(Option<String>, Vec<Prepared>)>>,
    spec: &RunSpec,
    offset: usize,
    window: Window,
) -> Recorder {
    let started = Instant::now();
    let stage = spec.stage;
    match spec.load {
        Load::Closed { concurrency } => {
            let issued = Arc::new(AtomicUsize::new(0));
            let mut clients = tokio::task::JoinSet::new();
            for _ in 0..concurrency.max(1) {
                let (target, prepared, issued) = (target.clone(), prepared.clone(), issued.clone());
                clients.spawn(async move {
                    let mut rec = Recorder::default();
                    // Claim a number only when the window lets it be sent.
                    let claim = || {
                        issued.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |k| {
                            window.may_issue(started, k).then_some(k + 1)
                        })
                    };
                    while let Ok(k) = claim() {
                        let (model, r) = pick(&prepared, offset + k);
                        let intended = Instant::now();
                        match send(&target, stage, model, r).await {
                            Ok(t) => rec.record(intended, Instant::now(), &t),
                            Err(e) => rec.record_error(intended, Instant::now(), &e),
                        }
                    }
                    rec
                });
            }
            let mut total = Recorder::default();
            while let Some(rec) = clients.join_next().await {
                if let Ok(rec) = rec {
                    total.merge(&rec);
                }
            }
            total
        }
        Load::Open { rate, poisson } => {
            let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed);
            type Answer = (Instant, Instant, Result<Timings, String>);
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Answer>();
            let mut tasks = tokio::task::JoinSet::new();
            let mut next = Instant::now();
            for k in 0.. {
                tokio::time::sleep_until(next.into()).await;
                if !window.may_issue(started, k) {
                    break;
                }
                let intended = next;
                let (target, prepared, tx) = (target.clone(), prepared.clone(), tx.clone());
                tasks.spawn(async move {
                    let (model, r) = pick(&prepared, offset + k);
                    let result = send(&target, stage, model, r).await;
                    let _ = tx.send((intended, Instant::now(), result));
                });
                let gap = if poisson {
                    -(1.0 - rng.random::<f64>()).ln() / rate
                } else {
                    1.0 / rate
                };
                next += Duration::from_secs_f64(gap);
            }
            drop(tx);
            // One collector for every open-loop request.
            let mut total = Recorder::default();
            while let Some((intended, done, result)) = rx.recv().await {
                match result {
                    Ok(t) => total.record(intended, done, &t),
                    Err(e) => total.record_error(intended, done, &e),
                }
            }
            while tasks.join_next().await.is_some() {}
            total
        }
    }
}
