//! The settings of the engine, the server and the load generator: plain serde types, read from
//! the config (`batching`, `tokenizer_pool`, `server`, `experiment.stage`, `experiment.arrivals`)
//! and checked once, by [`super::XbenchConfig::validate`]. The engine, the server and the load
//! generator take them as validated values.

use serde::{Deserialize, Serialize};

/// A setting out of range: its dotted config key and what is wrong with its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub key: String,
    pub why: String,
}

impl Invalid {
    pub fn new(key: impl Into<String>, why: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            why: why.into(),
        }
    }
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.key, self.why)
    }
}

/// The batcher's settings (`batching` in the config).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BatchingConfig {
    /// false: every request is sent to the model as it comes (split only above `max_batch_size`).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Most pairs in one forward pass.
    #[serde(default = "default_max_batch_size")]
    pub max_batch_size: usize,
    /// Most tokens in one forward pass, counted as the backend computes them.
    #[serde(default = "default_max_batch_tokens")]
    pub max_batch_tokens: usize,
    /// Longest wait, in ms, for a batch to fill once its first pair has arrived.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: f64,
    /// Requests that may wait in a model's queue; beyond it submission fails as overloaded.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
}

fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn default_max_batch_size() -> usize {
    32
}
fn default_max_batch_tokens() -> usize {
    16384
}
fn default_timeout_ms() -> f64 {
    5.0
}
fn default_queue_capacity() -> usize {
    1024
}

impl Default for BatchingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_batch_size: default_max_batch_size(),
            max_batch_tokens: default_max_batch_tokens(),
            timeout_ms: default_timeout_ms(),
            queue_capacity: default_queue_capacity(),
        }
    }
}

impl BatchingConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.max_batch_size == 0 {
            return Err(Invalid::new(
                "batching.max_batch_size",
                "must be at least 1",
            ));
        }
        if self.max_batch_tokens == 0 {
            return Err(Invalid::new(
                "batching.max_batch_tokens",
                "must be at least 1",
            ));
        }
        if !(self.timeout_ms >= 0.0 && self.timeout_ms.is_finite()) {
            return Err(Invalid::new(
                "batching.timeout_ms",
                format!("must be a finite number ≥ 0, not {}", self.timeout_ms),
            ));
        }
        if self.queue_capacity == 0 {
            return Err(Invalid::new(
                "batching.queue_capacity",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// The pool's settings (`tokenizer_pool` in the config).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenizerPoolConfig {
    /// Worker threads.
    #[serde(default = "one")]
    pub workers: usize,
    /// Encode one request's pairs in parallel inside a worker (the tokenizers crate's batch
    /// encoding; the original's `TOKENIZERS_PARALLELISM=true`), or one after another.
    #[serde(default)]
    pub parallelism: bool,
    /// Requests that may wait for a worker; beyond it submission fails as overloaded.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
}

impl Default for TokenizerPoolConfig {
    fn default() -> Self {
        Self {
            workers: 1,
            parallelism: false,
            queue_capacity: default_queue_capacity(),
        }
    }
}

impl TokenizerPoolConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.workers == 0 {
            return Err(Invalid::new("tokenizer_pool.workers", "must be at least 1"));
        }
        if self.queue_capacity == 0 {
            return Err(Invalid::new(
                "tokenizer_pool.queue_capacity",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// What a run exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// The tokenizer pool only.
    Tokenize,
    /// Pre-tokenized pairs through the batcher and the model pool.
    Infer,
    /// Tokenizer pool, batcher and model pool.
    Full,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Tokenize => "tokenize",
            Stage::Infer => "infer",
            Stage::Full => "full",
        })
    }
}

/// How an open loop spaces its requests (`experiment.arrivals`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Arrivals {
    /// Exponential gaps at the rate's mean (a Poisson process).
    #[default]
    Poisson,
    /// Equal gaps of 1/rate.
    Constant,
}

/// What stands for the API key wherever settings are shown, logged or stored.
pub const REDACTED: &str = "<redacted>";

/// The server's own settings (`server` in the config, less what the CLI adds). Their `Debug`
/// form redacts the API key, so no log line can carry it.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Bind address; loopback unless told otherwise.
    #[serde(default = "localhost")]
    pub host: String,
    /// 0 picks a free port.
    #[serde(default = "port")]
    pub port: u16,
    /// Most texts (documents) per request; more is 413 (422 on TEI's `/rerank`, as TEI answers).
    #[serde(default = "max_client_batch_size")]
    pub max_client_batch_size: usize,
    /// Largest request body in bytes; more is 413.
    #[serde(default = "payload_limit_bytes")]
    pub payload_limit_bytes: usize,
    /// Bearer token required on every route but /health and /live (and /metrics unless
    /// `metrics_require_api_key`); `null`: no key. `XBENCH_API_KEY` or `--api-key` set it too.
    #[serde(default)]
    pub api_key: Option<String>,
    /// Whether /metrics needs the API key too.
    #[serde(default)]
    pub metrics_require_api_key: bool,
    /// `Retry-After` seconds sent with 429 and 503.
    #[serde(default = "retry_after_s")]
    pub retry_after_s: u64,
    /// Deadline of a scoring request, in ms from its arrival, when the request sets no
    /// `timeout_ms`; past it the answer is 503 (429 `Overloaded` on TEI's `/rerank`). `null`: no
    /// deadline.
    #[serde(default = "request_timeout_ms")]
    pub request_timeout_ms: Option<u64>,
    /// With one model served: a request's `model` that names no served model goes to it
    /// (text-embeddings-inference ignores `model`), instead of 404.
    #[serde(default)]
    pub ignore_unknown_model: bool,
}

fn localhost() -> String {
    "127.0.0.1".into()
}
fn port() -> u16 {
    8080
}
fn max_client_batch_size() -> usize {
    1024
}
fn payload_limit_bytes() -> usize {
    2_000_000
}
fn retry_after_s() -> u64 {
    1
}
fn request_timeout_ms() -> Option<u64> {
    Some(30_000)
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            host: localhost(),
            port: port(),
            max_client_batch_size: max_client_batch_size(),
            payload_limit_bytes: payload_limit_bytes(),
            api_key: None,
            metrics_require_api_key: false,
            retry_after_s: retry_after_s(),
            request_timeout_ms: request_timeout_ms(),
            ignore_unknown_model: false,
        }
    }
}

impl ServerSettings {
    /// These settings with the API key (if any) replaced by [`REDACTED`].
    pub fn redacted(&self) -> Self {
        Self {
            api_key: self.api_key.as_ref().map(|_| REDACTED.to_string()),
            ..self.clone()
        }
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        if self.max_client_batch_size == 0 {
            return Err(Invalid::new(
                "server.max_client_batch_size",
                "must be at least 1",
            ));
        }
        if self.payload_limit_bytes < 1024 {
            return Err(Invalid::new(
                "server.payload_limit_bytes",
                "must be at least 1024",
            ));
        }
        if self.api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
            return Err(Invalid::new(
                "server.api_key",
                "is empty: give a key or null for none",
            ));
        }
        Ok(())
    }
}

impl std::fmt::Debug for ServerSettings {
    /// Every field, as the config spells it, with the API key redacted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match serde_json::to_string(&self.redacted()) {
            Ok(json) => write!(f, "ServerSettings {json}"),
            Err(_) => f.write_str("ServerSettings { .. }"),
        }
    }
}
