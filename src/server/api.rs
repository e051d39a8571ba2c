//! Every request and response body of the HTTP API, in one place, with their OpenAPI schemas.
//!
//! `POST /rerank` follows text-embeddings-inference (TEI); `POST /v1/rerank` follows Cohere's (v1)
//! and Jina's rerank APIs; `POST /v2/rerank` Cohere's v2 (as vLLM serves it too). Unknown fields
//! are ignored, as those servers do. Every rerank route also takes xbench's long-document fields
//! (`long_documents`, `chunk_overlap_tokens`, `return_chunks`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use crate::tokenize::LongDocuments;

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
    /// `truncate` (cut to fit) or `chunk_max` (split into windows that fit beside the query,
    /// score each, answer the best window's score); an xbench extension. Default: the model
    /// instance's `long_documents`.
    #[serde(default)]
    pub long_documents: Option<LongDocuments>,
    /// Tokens consecutive windows share (at most half a window); default: the model instance's
    /// `chunk_overlap_tokens`.
    #[serde(default)]
    pub chunk_overlap_tokens: Option<usize>,
    /// A generative reranker's instruction for this request (an xbench extension; the
    /// `{instruction}` of its prompt template); default: the model instance's `instruction`. A
    /// model whose template takes none answers 422.
    #[serde(default)]
    pub instruction: Option<String>,
    /// Name in each result the window that gave its score (`chunk_index`, from 0; 0 for a
    /// document that was not split).
    #[serde(default)]
    pub return_chunks: bool,
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
    /// The window of the text that gave its score, with `return_chunks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_index: Option<usize>,
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
    /// `truncate` (cut to fit) or `chunk_max` (split into windows that fit beside the query,
    /// score each, answer the best window's score); an xbench extension. Default: the model
    /// instance's `long_documents`.
    #[serde(default)]
    pub long_documents: Option<LongDocuments>,
    /// Tokens consecutive windows share (at most half a window); default: the model instance's
    /// `chunk_overlap_tokens`.
    #[serde(default)]
    pub chunk_overlap_tokens: Option<usize>,
    /// A generative reranker's instruction for this request (an xbench extension; the
    /// `{instruction}` of its prompt template); default: the model instance's `instruction`. A
    /// model whose template takes none answers 422.
    #[serde(default)]
    pub instruction: Option<String>,
    /// Name in each result the window that gave its score (`chunk_index`, from 0; 0 for a
    /// document that was not split).
    #[serde(default)]
    pub return_chunks: bool,
}

/// `POST /v2/rerank` (Cohere's v2 rerank API).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct CohereV2RerankRequest {
    /// Which loaded model scores (required, as Cohere's v2 API requires it).
    pub model: String,
    #[schema(example = "what is rust")]
    pub query: String,
    /// The texts to rank (at least one, at most `max_client_batch_size`).
    pub documents: Vec<String>,
    /// Return only the best N results (default: all).
    #[serde(default)]
    pub top_n: Option<usize>,
    /// Cut each document to its first N tokens before pairing it with the query (Cohere's
    /// default 4096; the pair is then cut to the model's `max_length` as usual).
    #[serde(default)]
    pub max_tokens_per_doc: Option<usize>,
    /// Deadline in ms from the request's arrival (an xbench extension), as on the other routes.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// `truncate` (cut to fit) or `chunk_max` (split into windows that fit beside the query,
    /// score each, answer the best window's score); an xbench extension. Default: the model
    /// instance's `long_documents`.
    #[serde(default)]
    pub long_documents: Option<LongDocuments>,
    /// Tokens consecutive windows share (at most half a window); default: the model instance's
    /// `chunk_overlap_tokens`.
    #[serde(default)]
    pub chunk_overlap_tokens: Option<usize>,
    /// A generative reranker's instruction for this request (an xbench extension; the
    /// `{instruction}` of its prompt template); default: the model instance's `instruction`. A
    /// model whose template takes none answers 422.
    #[serde(default)]
    pub instruction: Option<String>,
    /// Name in each result the window that gave its score (`chunk_index`, from 0; 0 for a
    /// document that was not split).
    #[serde(default)]
    pub return_chunks: bool,
}

/// One result of `POST /v2/rerank`, sorted by relevance, highest first.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct CohereV2Result {
    pub index: usize,
    /// Sigmoid of the logit, 0..1 (more than one label: the last label's softmax probability).
    pub relevance_score: f32,
    /// The window of the document that gave its score, with `return_chunks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_index: Option<usize>,
}

/// The response of `POST /v2/rerank`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct CohereV2RerankResponse {
    /// A unique id of this request.
    pub id: String,
    pub results: Vec<CohereV2Result>,
    pub meta: ApiMeta,
}

/// `meta` of a Cohere v2 response.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct ApiMeta {
    pub api_version: ApiVersion,
    pub billed_units: BilledUnits,
    pub tokens: MetaTokens,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct ApiVersion {
    /// `"2"`.
    pub version: String,
}

/// What the request would be billed, as Cohere counts it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct BilledUnits {
    /// One per started hundred documents (Cohere's search unit); windows of a split document
    /// count as documents.
    pub search_units: f64,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct MetaTokens {
    /// Tokens of every pair scored (every window's), special tokens included.
    pub input_tokens: f64,
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
    /// The window of the document that gave its score, with `return_chunks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_index: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct Usage {
    /// Tokens of every pair scored (every window's, for split documents), special tokens
    /// included, after truncation.
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
    /// On text-embeddings-inference's routes (`/rerank`, `/info`, `/health`), TEI's `ErrorType`
    /// values: `Empty`, `Validation`, `Tokenizer`, `Backend`, `Overloaded`, `Unhealthy`. On the
    /// others, xbench's: `bad_request`, `validation`, `unauthorized`, `not_found`,
    /// `method_not_allowed`, `payload_too_large`, `unsupported_media_type`, `overloaded`,
    /// `unavailable`, `deadline_exceeded`, `internal`.
    pub error_type: String,
}

/// A loaded model, in `GET /info`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct ModelDescription {
    /// The name requests use (`model`).
    pub name: String,
    /// Other names requests may use for it (`served_model_names`).
    pub served_model_names: Vec<String>,
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
    /// The code its products run: on the fused backend the kernel of its precision at this CPU's
    /// level (e.g. `avx512-vnni` or `avx2-vpmaddwd` for int8, `gemm-avx2` for fp32); `candle`
    /// for candle's ops.
    pub kernel: String,
    /// Model workers (instance threads) and compute threads of each.
    pub workers: usize,
    pub threads_per_worker: usize,
    /// A generative reranker's prompt template (`qwen3_reranker`, ... or its YAML file), its
    /// answer tokens (`labels` too) and instruction; absent for a cross-encoder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instruction: Option<String>,
}

/// One text or a list of them (`text_1`, `text_2` of `POST /score`).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Texts {
    One(String),
    Many(Vec<String>),
}

impl Texts {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Texts::One(t) => vec![t],
            Texts::Many(t) => t,
        }
    }
}

/// `POST /score` (vLLM's score API): `text_1` against each of `text_2` (one-to-many), or each
/// `text_1[i]` against `text_2[i]` when both are lists of one length.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct ScoreRequest {
    /// Which loaded model scores; default: the first.
    #[serde(default)]
    pub model: Option<String>,
    /// The query (or queries, zipped with `text_2`).
    #[schema(example = "what is rust")]
    pub text_1: Texts,
    /// The documents.
    #[schema(example = json!(["Rust is a systems programming language.", "Paris is in France."]))]
    pub text_2: Texts,
    /// A generative reranker's instruction (an xbench extension); see `/rerank`.
    #[serde(default)]
    pub instruction: Option<String>,
    /// Deadline in ms from the request's arrival (an xbench extension).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// One pair's score in `POST /score`'s answer.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct ScoreData {
    /// The pair's position (the position in `text_2`).
    pub index: usize,
    /// Always `score`.
    pub object: String,
    /// The relevance: the sigmoid of the model's score, as `/rerank` answers it.
    pub score: f32,
}

/// Tokens of a `POST /score` request.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct ScoreUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

/// `POST /score`'s answer, as vLLM shapes it; `data` in request order.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct ScoreResponse {
    pub id: String,
    /// Always `list`.
    pub object: String,
    /// Seconds since the Unix epoch.
    pub created: u64,
    pub model: String,
    pub data: Vec<ScoreData>,
    pub usage: ScoreUsage,
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

/// A reranker's labels as text-embeddings-inference's `/info` gives them (`config.json`'s
/// `id2label` and `label2id`; `LABEL_i` where the checkpoint names none).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct ClassifierModel {
    pub id2label: std::collections::BTreeMap<String, String>,
    pub label2id: std::collections::BTreeMap<String, usize>,
}

/// TEI's `model_type`: `{"reranker": {...}}` (xbench serves rerankers only).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelType {
    Reranker(ClassifierModel),
}

/// `GET /info`: text-embeddings-inference's fields at the top level, describing the default (first)
/// model, so that a TEI client reads them where it expects them; then xbench's own: every model,
/// the limits, the tokenizer pool.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct InfoResponse {
    /// The default model's name: its directory or hub id.
    pub model_id: String,
    /// The revision the default model's hub id names (`org/name@REVISION`), as TEI reports its
    /// `--revision`; null otherwise.
    pub model_sha: Option<String>,
    /// The default model's precision as TEI names dtypes: `float32`, `float16`, `bfloat16`, or
    /// xbench's `int8`, `int4`.
    pub model_dtype: String,
    pub model_type: ModelType,
    /// Requests that may wait for a tokenizer before the server answers 429
    /// (`tokenizer_pool.queue_capacity`).
    pub max_concurrent_requests: usize,
    /// The default model's longest pair in tokens (its `max_length`).
    pub max_input_length: usize,
    /// Most tokens per forward pass (`batching.max_batch_tokens`).
    pub max_batch_tokens: usize,
    /// Most pairs per forward pass (`batching.max_batch_size`).
    pub max_batch_requests: Option<usize>,
    /// Most texts per request (`server.max_client_batch_size`).
    pub max_client_batch_size: usize,
    /// Always true: pairs over `max_input_length` are cut unless a request says `truncate: false`.
    pub auto_truncate: bool,
    /// Tokenizer workers (`tokenizer_pool.workers`).
    pub tokenization_workers: usize,
    /// xbench's version.
    pub version: String,
    /// The git commit xbench was built from, where the build recorded one (`XBENCH_GIT_SHA`).
    pub sha: Option<String>,
    /// The container image's label, where the build recorded one (`DOCKER_LABEL`).
    pub docker_label: Option<String>,
    /// The first model is the default.
    pub models: Vec<ModelDescription>,
    pub limits: Limits,
    pub tokenizer_workers: usize,
    /// Whether a tokenizer worker encodes a request's pairs in parallel.
    pub tokenizer_parallelism: bool,
    /// Whether routes other than /health and /live (and /metrics, unless configured) need a Bearer token.
    pub api_key_required: bool,
}
