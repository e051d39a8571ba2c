//! The engine that both the benchmarks and the server run: a tokenizer pool (T worker threads), one
//! dynamic batcher per model (a thread cutting packed batches under pair and token limits), and a
//! model pool (M instance threads per model, each running its batches where its backend says:
//! [`crate::backend::Backend::executor`]).
//!
//! Callers are async: they submit with `try_send` (a full queue answers [`EngineError::Overloaded`]
//! at once) and await a oneshot reply. A caller that goes away closes its reply channel; the
//! batcher then drops its request before computing it.

mod batcher;
mod model_pool;
#[cfg(test)]
mod tests;
mod tokenizer_pool;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

pub use crate::backend::ModelSpec;
use crate::backend::{self, BackendError, LoadError, LoadedModel};
use crate::config::XbenchConfig;
use crate::model::ModelInfo;
use crate::tokenize::{Encoded, PairTokenizer, PassageOptions};

pub use batcher::BatchingConfig;
use batcher::{Pending, QueueSlots, RequestState};
use tokenizer_pool::TokenizerPool;
pub use tokenizer_pool::TokenizerPoolConfig;

/// Failures of one request. Cloneable: a failed batch fails each of its requests.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("unknown model '{name}'; served: {}", .loaded.join(", "))]
    UnknownModel { name: String, loaded: Vec<String> },
    #[error("overloaded: the {queue} queue is full ({capacity} requests); retry later")]
    Overloaded {
        queue: &'static str,
        capacity: usize,
    },
    #[error("a request needs at least one passage")]
    Empty,
    #[error("tokenization failed: {0}")]
    Tokenize(String),
    #[error("passage {index}: the pair has {tokens} tokens, more than max_length {max_length}; shorten it or allow truncation")]
    TooLong {
        index: usize,
        tokens: usize,
        max_length: usize,
    },
    /// What the request asks of the model, which it does not do (a 422).
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("the engine is shutting down")]
    Shutdown,
}

/// Failures while starting the engine.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("model '{name}'")]
    Load {
        name: String,
        #[source]
        source: Box<LoadError>,
    },
    #[error("model '{name}' failed its warm-up batch")]
    Warmup {
        name: String,
        #[source]
        source: BackendError,
    },
}

/// Everything the engine needs to start: taken from a validated config
/// ([`EngineConfig::from_config`]), or built by hand as valid (at least one model, each listed
/// once with at least one instance; batching and tokenizer pool settings as
/// [`crate::config::XbenchConfig::validate`] accepts them). The engine does not check it again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EngineConfig {
    pub models: Vec<ModelSpec>,
    pub tokenizer_pool: TokenizerPoolConfig,
    pub batching: BatchingConfig,
}

impl EngineConfig {
    /// The engine a validated config describes. Entries naming the same model (which validation
    /// requires to agree on everything else) add up their workers.
    pub fn from_config(c: &XbenchConfig) -> Self {
        let mut models: Vec<ModelSpec> = Vec::new();
        for m in &c.model_pool.instances {
            match models.iter_mut().find(|s| s.name == m.name) {
                Some(s) => s.workers += m.workers,
                None => models.push(ModelSpec {
                    name: m.name.clone(),
                    workers: m.workers,
                    threads: m.threads,
                    max_length: m.max_length,
                    device: m.device.clone(),
                    backend: m.backend,
                    quantization: m.quantization,
                    quantization_cache: m.quantization_cache,
                    long_documents: m.long_documents,
                    chunk_overlap_tokens: m.chunk_overlap_tokens,
                    template: m.template.clone(),
                    answer_tokens: m.answer_tokens.clone(),
                    instruction: m.instruction.clone(),
                    served_model_names: m.served_model_names.clone(),
                }),
            }
        }
        Self {
            models,
            tokenizer_pool: c.tokenizer_pool.clone(),
            batching: c.batching.clone(),
        }
    }

    /// What [`crate::config::XbenchConfig::validate`] guarantees of an engine config.
    fn is_valid(&self) -> bool {
        !self.models.is_empty()
            && self.batching.validate().is_ok()
            && self.tokenizer_pool.validate().is_ok()
            && self
                .models
                .iter()
                .enumerate()
                .all(|(i, m)| m.workers > 0 && !self.models[..i].iter().any(|o| o.name == m.name))
    }
}

/// A query with its passages: one request of N pairs.
#[derive(Debug, Clone)]
pub struct RerankInput {
    pub query: String,
    pub passages: Vec<String>,
    /// How pairs over `max_length` are cut (or refused), passages cut or split.
    pub options: PassageOptions,
}

impl RerankInput {
    /// A request truncated as the model says.
    pub fn new(query: impl Into<String>, passages: Vec<String>) -> Self {
        Self {
            query: query.into(),
            passages,
            options: PassageOptions::default(),
        }
    }
}

/// Where a request's time went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Waiting for a tokenizer worker.
    pub queue: Duration,
    pub tokenize: Duration,
    /// In the batcher and waiting for a model instance.
    pub batch_wait: Duration,
    /// Forward passes of the batches that held the request's pairs.
    pub inference: Duration,
    pub total: Duration,
}

/// The logits of one request's pairs, in passage order.
#[derive(Debug, Clone)]
pub struct Scored {
    /// `[pairs × labels]` row-major: one logit per pair for a reranker.
    pub logits: Vec<f32>,
    /// Logits per pair (the model's `num_labels`).
    pub labels: usize,
    /// Real tokens of the request's pairs (every window's, for split passages).
    pub tokens: usize,
    /// Pairs the model computed: one per passage, or per window of split passages.
    pub computed_pairs: usize,
    /// For passages split into windows ([`crate::tokenize::LongDocuments::ChunkMax`]): which window gave each
    /// passage its score (the logits are that window's).
    pub chunks: Option<Vec<usize>>,
    pub timings: Timings,
}

impl Scored {
    /// Keeps, of each passage's consecutive windows (`windows[i]` of them for passage `i`), the
    /// one with the highest relevance, and records which it was.
    fn keep_best_windows(&mut self, windows: &[usize]) {
        let labels = self.labels.max(1);
        let mut logits = Vec::with_capacity(windows.len() * labels);
        let mut chunks = Vec::with_capacity(windows.len());
        let mut start = 0;
        for &n in windows {
            let rows = &self.logits[start * labels..(start + n) * labels];
            let best = rows
                .chunks_exact(labels)
                .map(crate::model::relevance)
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map_or(0, |(i, _)| i);
            logits.extend_from_slice(&rows[best * labels..(best + 1) * labels]);
            chunks.push(best);
            start += n;
        }
        self.logits = logits;
        self.chunks = Some(chunks);
    }

    pub fn pairs(&self) -> usize {
        self.logits.len() / self.labels.max(1)
    }

    /// Each pair's logits.
    pub fn rows(&self) -> std::slice::ChunksExact<'_, f32> {
        self.logits.chunks_exact(self.labels.max(1))
    }

    /// Each pair's relevance score before any sigmoid ([`crate::model::relevance`]).
    pub fn scores(&self) -> Vec<f32> {
        self.rows().map(crate::model::relevance).collect()
    }
}

/// The output of the tokenize stage.
#[derive(Debug, Clone)]
pub struct Tokenized {
    pub encoded: Vec<Encoded>,
    /// How many consecutive pairs each passage became, when passages were split into windows.
    pub windows: Option<Vec<usize>>,
    pub queue: Duration,
    pub tokenize: Duration,
}

/// Counters of the batches formed, for mean batch size and padding efficiency.
#[derive(Debug, Default)]
pub struct BatchCounters {
    pub batches: AtomicU64,
    pub pairs: AtomicU64,
    pub real_tokens: AtomicU64,
    pub computed_tokens: AtomicU64,
}

/// A snapshot of [`BatchCounters`], summed over models.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct BatchStats {
    pub batches: u64,
    pub pairs: u64,
    pub real_tokens: u64,
    pub computed_tokens: u64,
}

impl BatchStats {
    pub fn since(&self, earlier: &BatchStats) -> BatchStats {
        BatchStats {
            batches: self.batches - earlier.batches,
            pairs: self.pairs - earlier.pairs,
            real_tokens: self.real_tokens - earlier.real_tokens,
            computed_tokens: self.computed_tokens - earlier.computed_tokens,
        }
    }

    pub fn plus(&self, other: &BatchStats) -> BatchStats {
        BatchStats {
            batches: self.batches + other.batches,
            pairs: self.pairs + other.pairs,
            real_tokens: self.real_tokens + other.real_tokens,
            computed_tokens: self.computed_tokens + other.computed_tokens,
        }
    }

    pub fn mean_batch_size(&self) -> Option<f64> {
        (self.batches > 0).then(|| self.pairs as f64 / self.batches as f64)
    }

    /// Real tokens / computed tokens: 1.0 means no padding was computed.
    pub fn padding_efficiency(&self) -> Option<f64> {
        (self.computed_tokens > 0).then(|| self.real_tokens as f64 / self.computed_tokens as f64)
    }
}

struct ModelHandle {
    name: String,
    /// Other names requests may use for it (`served_model_names`).
    aliases: Vec<String>,
    info: ModelInfo,
    tokenizer: PairTokenizer,
    queue: crossbeam_channel::Sender<Pending>,
    slots: Arc<QueueSlots>,
    counters: Arc<BatchCounters>,
    workers: usize,
    threads: usize,
    _pool: model_pool::ModelPool,
}

/// The running pipeline. Dropping it stops its threads once their queues drain.
pub struct Engine {
    models: Vec<ModelHandle>,
    tokenizers: TokenizerPool,
}

impl Engine {
    /// Loads every model ([`backend::load`]), starts the threads and runs one warm-up batch per
    /// model.
    pub fn start(config: &EngineConfig) -> Result<Self, StartError> {
        Self::start_with(config, backend::load)
    }

    /// [`Engine::start`] with a custom loader (tests use mock backends).
    pub fn start_with(
        config: &EngineConfig,
        load: impl Fn(&ModelSpec) -> Result<LoadedModel, LoadError>,
    ) -> Result<Self, StartError> {
        debug_assert!(
            config.is_valid(),
            "an engine config comes validated: {config:?}"
        );
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let total_workers: usize = config.models.iter().map(|m| m.workers).sum();
        let mut models = Vec::with_capacity(config.models.len());
        for spec in &config.models {
            let LoadedModel {
                backend,
                info,
                tokenizer,
                ..
            } = load(spec).map_err(|source| StartError::Load {
                name: spec.name.clone(),
                source: Box::new(source),
            })?;
            backend.health().map_err(|source| StartError::Warmup {
                name: spec.name.clone(),
                source,
            })?;
            let threads = spec
                .threads
                .unwrap_or_else(|| (cores / total_workers).max(1));
            if spec.workers * threads > cores {
                tracing::warn!(
                    model = %spec.name,
                    workers = spec.workers,
                    threads,
                    cores,
                    "workers × threads exceeds the cores; they will contend"
                );
            }
            tracing::info!(
                model = %spec.name,
                workers = spec.workers,
                threads_per_worker = threads,
                cores,
                max_length = tokenizer.max_length(),
                "model pool"
            );
            let counters = Arc::new(BatchCounters::default());
            // The places are counted by `slots`; the channel also holds the entries of callers
            // that left (skipped when reached), up to a bound that keeps memory bounded under a
            // storm of disconnects.
            let slots = QueueSlots::new(config.batching.queue_capacity);
            let (queue, queue_rx) =
                crossbeam_channel::bounded(config.batching.queue_capacity.saturating_mul(4));
            let pool = model_pool::ModelPool::start(
                &spec.name,
                backend.clone(),
                spec.workers,
                threads,
                queue_rx,
                config.batching.clone(),
                counters.clone(),
            );
            models.push(ModelHandle {
                name: spec.name.clone(),
                aliases: spec.served_model_names.clone(),
                info,
                tokenizer,
                queue,
                slots,
                counters,
                workers: spec.workers,
                threads,
                _pool: pool,
            });
        }
        let tokenizers = TokenizerPool::start(
            &config.tokenizer_pool,
            models.iter().map(|m| m.tokenizer.clone()).collect(),
        );
        tracing::info!(
            workers = config.tokenizer_pool.workers,
            parallelism = config.tokenizer_pool.parallelism,
            "tokenizer pool"
        );
        Ok(Self { models, tokenizers })
    }

    /// Names of the loaded models, in config order (the first is the default).
    pub fn model_names(&self) -> Vec<String> {
        self.models.iter().map(|m| m.name.clone()).collect()
    }

    /// Every name a request may give, in config order: each model's name, then its
    /// `served_model_names`.
    pub fn served_names(&self) -> Vec<String> {
        self.models
            .iter()
            .flat_map(|m| std::iter::once(&m.name).chain(&m.aliases))
            .cloned()
            .collect()
    }

    /// The configured name of the model a request's `model` names (its name or one of its
    /// `served_model_names`); the default model's for none.
    pub fn resolve(&self, model: Option<&str>) -> Result<&str, EngineError> {
        Ok(&self.models[self.index(model)?].name)
    }

    pub fn model_info(&self, model: Option<&str>) -> Result<&ModelInfo, EngineError> {
        Ok(&self.models[self.index(model)?].info)
    }

    /// The tokenizer of a model, for callers that pre-tokenize (the `infer` stage).
    pub fn tokenizer(&self, model: Option<&str>) -> Result<&PairTokenizer, EngineError> {
        Ok(&self.models[self.index(model)?].tokenizer)
    }

    /// Compute threads per instance of a model.
    pub fn threads_per_worker(&self, model: Option<&str>) -> Result<usize, EngineError> {
        Ok(self.models[self.index(model)?].threads)
    }

    /// Requests waiting for a tokenizer worker (all models share the pool).
    pub fn tokenizer_queue_depth(&self) -> usize {
        self.tokenizers.depth()
    }

    /// Requests waiting in each model's batcher queue, in config order.
    pub fn batch_queue_depths(&self) -> Vec<(String, usize)> {
        self.models
            .iter()
            .map(|m| (m.name.clone(), m.queue.len()))
            .collect()
    }

    /// Model workers (instance threads) of a model.
    pub fn workers(&self, model: Option<&str>) -> Result<usize, EngineError> {
        Ok(self.models[self.index(model)?].workers)
    }

    /// Batch counters summed over every model.
    pub fn batch_stats(&self) -> BatchStats {
        let mut s = BatchStats::default();
        for m in &self.models {
            s.batches += m.counters.batches.load(Ordering::Relaxed);
            s.pairs += m.counters.pairs.load(Ordering::Relaxed);
            s.real_tokens += m.counters.real_tokens.load(Ordering::Relaxed);
            s.computed_tokens += m.counters.computed_tokens.load(Ordering::Relaxed);
        }
        s
    }

    fn index(&self, model: Option<&str>) -> Result<usize, EngineError> {
        match model {
            None => Ok(0),
            Some(name) => self
                .models
                .iter()
                .position(|m| m.name == name)
                .or_else(|| {
                    self.models
                        .iter()
                        .position(|m| m.aliases.iter().any(|a| a == name))
                })
                .ok_or_else(|| EngineError::UnknownModel {
                    name: name.to_string(),
                    loaded: self.served_names(),
                }),
        }
    }

    /// The full pipeline: tokenize, batch, infer. Scores come back in passage order.
    pub async fn rerank(
        &self,
        model: Option<&str>,
        input: Arc<RerankInput>,
    ) -> Result<Scored, EngineError> {
        let started = Instant::now();
        let m = self.index(model)?;
        let tokenized = self.tokenize_at(m, input).await?;
        let encoded: Arc<[Encoded]> = tokenized.encoded.into();
        let mut scored = self.infer_at(m, encoded).await?;
        if let Some(windows) = &tokenized.windows {
            scored.keep_best_windows(windows);
        }
        scored.timings.queue = tokenized.queue;
        scored.timings.tokenize = tokenized.tokenize;
        scored.timings.total = started.elapsed();
        Ok(scored)
    }

    /// The tokenize stage alone.
    pub async fn tokenize(
        &self,
        model: Option<&str>,
        input: Arc<RerankInput>,
    ) -> Result<Tokenized, EngineError> {
        let m = self.index(model)?;
        self.tokenize_at(m, input).await
    }

    /// The infer stage alone: pre-tokenized pairs through the batcher and the model pool.
    pub async fn infer(
        &self,
        model: Option<&str>,
        encoded: Arc<[Encoded]>,
    ) -> Result<Scored, EngineError> {
        let started = Instant::now();
        let m = self.index(model)?;
        let mut scored = self.infer_at(m, encoded).await?;
        scored.timings.total = started.elapsed();
        Ok(scored)
    }

    async fn tokenize_at(
        &self,
        m: usize,
        input: Arc<RerankInput>,
    ) -> Result<Tokenized, EngineError> {
        if input.passages.is_empty() {
            return Err(EngineError::Empty);
        }
        self.tokenizers.submit(m, input).await
    }

    async fn infer_at(&self, m: usize, encoded: Arc<[Encoded]>) -> Result<Scored, EngineError> {
        if encoded.is_empty() {
            return Err(EngineError::Empty);
        }
        let handle = &self.models[m];
        let tokens = encoded.iter().map(|e| e.ids.len()).sum();
        let overloaded = || EngineError::Overloaded {
            queue: "batch",
            capacity: handle.slots.capacity(),
        };
        if !handle.slots.try_take() {
            return Err(overloaded());
        }
        let (tx, rx) = oneshot::channel();
        let labels = handle.info.num_labels;
        let state =
            Arc::new(RequestState::new(encoded.len(), labels, tx).holding(handle.slots.clone()));
        // Frees the queue place if this future is dropped (the caller left) before the batcher
        // took the request; a no-op once it has.
        let _place = ReleaseOnDrop(state.clone());
        let computed_pairs = encoded.len();
        let pending = Pending::new(state, encoded);
        handle.queue.try_send(pending).map_err(|e| match e {
            crossbeam_channel::TrySendError::Full(_) => overloaded(),
            crossbeam_channel::TrySendError::Disconnected(_) => EngineError::Shutdown,
        })?;
        let out = rx.await.map_err(|_| EngineError::Shutdown)??;
        Ok(Scored {
            logits: out.logits,
            labels,
            tokens,
            computed_pairs,
            chunks: None,
            timings: Timings {
                batch_wait: out.batch_wait,
                inference: out.inference,
                ..Timings::default()
            },
        })
    }
}

/// Releases a request's queue place when dropped.
struct ReleaseOnDrop(Arc<RequestState>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.release_slot();
    }
}
