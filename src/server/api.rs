//! Every request and response body of the HTTP API, in one place, with their OpenAPI schemas.
//!
//! `POST /rerank` follows text-embeddings-inference (TEI); `POST /v1/rerank` follows Cohere's and
//! Jina's rerank APIs. Unknown fields are ignored, as those servers do.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Which end of the longer text loses tokens when a pair is over `max_length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub enum TruncationDirection {
    #[serde(alias = "left", alias = "LEFT")]
    Left,
    #[serde(alias = "right", alias = "RIGHT")]
    Right,
}

/// `POST /rerank` (TEI-compatible).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct RerankRequest {
    /// The query every text is scored against.
    #[schema(example = "what is rust")]
    pub query: String,
    /// The texts to rank (at least one, at most `max_client_batch_size`).
    #[schema(example = json!(["Rust is a systems programming language.", "Paris is in France."]))]
    pub texts: Vec<String>,
    /// Return the model's logits instead of their sigmoid.
    #[serde(default)]
    pub raw_scores: bool,
    /// Echo each text in its result.
    #[serde(default)]
    pub return_text: bool,
    /// Cut pairs over `max_length` (true, the default) or refuse them with 422 (false).
    #[serde(default)]
    pub truncate: Option<bool>,
    /// Which end loses tokens; default: the model's tokenizer config (right when unset).
    #[serde(default)]
    pub truncation_direction: Option<TruncationDirection>,
    /// Which loaded model scores (an xbench extension); default: the first.
    #[serde(default)]
    pub model: Option<String>,
    /// Deadline in ms from the request's arrival (an xbench extension); past it the answer is 503
    /// `deadline_exceeded` with Retry-After, and pairs not yet computed are dropped. Default: the
    /// server's `request_timeout_ms`.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// One result of `POST /rerank`; the list is sorted by score, highest first.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct Rank {
    /// Position of the text in the request.
    pub index: usize,
    /// Sigmoid of the logit (0..1), or the logit with `raw_scores: true`. For a model with more
    /// than one label: the softmax probability of the last label, or with `raw_scores` its
    /// log-odds against the others (`l_last - logsumexp(others)`).
    pub score: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Every label's logit, in the model's label order (`GET /info` names them); only for models
    /// with more than one label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logits: Option<Vec<f32>>,
}

/// A document of `POST /v1/rerank`: a string or an object with a `text` field.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Document {
    Text(String),
    Object { text: String },
}

impl Document {
    pub fn text(&self) -> &str {
        match self {
            Document::Text(t) | Document::Object { text: t } => t,
        }
    }

    pub fn into_text(self) -> String {
        match self {
            Document::Text(t) | Document::Object { text: t } => t,
        }
    }
}

/// `POST /v1/rerank` (Cohere/Jina-compatible).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct CohereRerankRequest {
    /// Which loaded model scores; default: the first.
    #[serde(default)]
    pub model: Option<String>,
    #[schema(example = "what is rust")]
    pub query: String,
    /// Strings or `{"text": ...}` objects (at least one, at most `max_client_batch_size`).
    pub documents: Vec<Document>,
    /// Return only the best N results (default: all).
    #[serde(default)]
    pub top_n: Option<usize>,
    /// Echo each document as `{"text": ...}` in its result (default false).
    #[serde(default)]
    pub return_documents: bool,
    /// Deadline in ms from the request's arrival (an xbench extension); past it the answer is 503
    /// `deadline_exceeded` with Retry-After, and pairs not yet computed are dropped. Default: the
    /// server's `request_timeout_ms`.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// A document echoed in a `/v1/rerank` result.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct DocumentText {
    pub text: String,
}

/// One result of `POST /v1/rerank`, sorted by relevance, highest first.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct CohereResult {
    pub index: usize,
    /// Sigmoid of the logit, 0..1 (more than one label: the last label's softmax probability).
    pub relevance_score: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<DocumentText>,
    /// Every label's logit; only for models with more than one label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logits: Option<Vec<f32>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct Usage {
    /// Tokens of every pair scored, special tokens included, after truncation.
    pub total_tokens: usize,
}

/// The response of `POST /v1/rerank`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct CohereRerankResponse {
    /// A unique id of this request.
    pub id: String,
    /// The model that scored.
    pub model: String,
    pub results: Vec<CohereResult>,
    pub usage: Usage,
}

/// Every failure: a message that says what to fix, and its kind.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct ErrorResponse {
    pub error: String,
    /// One of: `bad_request`, `validation`, `unauthorized`, `not_found`, `method_not_allowed`,
    /// `payload_too_large`, `unsupported_media_type`, `overloaded`, `unavailable`, `internal`.
    pub error_type: String,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct HealthResponse {
    /// `ok`, `loading` or `shutting_down`.
    pub status: String,
}

/// A loaded model, in `GET /info`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct ModelDescription {
    /// The name requests use (`model`).
    pub name: String,
    pub architecture: String,
    /// The model's labels in logit order (`id2label`); a reranker has one.
    pub labels: Vec<String>,
    pub num_layers: usize,
    pub hidden_size: usize,
    /// Truncation length in tokens, special tokens included.
    pub max_length: usize,
    pub device: String,
    /// The precision it computes in (`fp32`, `fp16`, `bf16`, `int8`, `int4`) and the backend that
    /// runs it (`fused` or `candle`).
    pub precision: String,
    pub backend: String,
    /// Model workers (instance threads) and compute threads of each.
    pub workers: usize,
    pub threads_per_worker: usize,
}

/// The limits a client must respect, in `GET /info`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct Limits {
    /// Most texts (documents) per request.
    pub max_client_batch_size: usize,
    /// Largest request body, bytes.
    pub payload_limit_bytes: usize,
    /// Most pairs and tokens per forward pass.
    pub max_batch_size: usize,
    pub max_batch_tokens: usize,
    /// Longest wait for a batch to fill, ms; 0 when batching is off.
    pub batching_timeout_ms: f64,
    /// Requests that may wait for a tokenizer / a model before the server answers 429.
    pub tokenizer_queue_capacity: usize,
    pub batch_queue_capacity: usize,
}

/// `GET /info`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct InfoResponse {
    pub version: String,
    /// The first model is the default.
    pub models: Vec<ModelDescription>,
    pub limits: Limits,
    pub tokenizer_workers: usize,
    /// Whether a tokenizer worker encodes a request's pairs in parallel.
    pub tokenizer_parallelism: bool,
    /// Whether routes other than /health (and /metrics, unless configured) need a Bearer token.
    pub api_key_required: bool,
}
