//! The routes, the API-key check and the per-request metrics.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::Rng;
use utoipa::OpenApi;

use super::api::*;
use super::errors::{parse_json, ApiError};
use super::{AppState, LOADING, READY};
use crate::engine::{Engine, EngineError, RerankInput, Scored};
use crate::model::relevance;
use crate::score::sigmoid;
use crate::tokenize::{PassageOptions, Truncation};

pub(crate) fn router(state: Arc<AppState>) -> Router {
    let limit = state.settings.payload_limit_bytes;
    Router::new()
        .route("/rerank", post(rerank))
        .route("/v1/rerank", post(cohere_rerank))
        .route("/v2/rerank", post(cohere_v2_rerank))
        .route("/score", post(score_pairs))
        .route("/health", get(health))
        .route("/live", get(live))
        .route("/info", get(info))
        .route("/metrics", get(prometheus))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), declared_size))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn(observe))
        .layer(middleware::from_fn_with_state(state.clone(), replica))
        .with_state(state)
}

/// The OpenAPI document of every route.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "xbench",
        description = "Reranking with cross-encoders and generative rerankers: TEI-compatible /rerank, Cohere/Jina-compatible /v1/rerank, Cohere v2 /v2/rerank, vLLM's /score."
    ),
    paths(rerank, cohere_rerank, cohere_v2_rerank, score_pairs, health, live, info, prometheus, openapi),
    components(schemas(
        RerankRequest,
        Rank,
        TruncationDirection,
        CohereRerankRequest,
        Document,
        CohereRerankResponse,
        CohereResult,
        DocumentText,
        Usage,
        LongDocuments,
        CohereV2RerankRequest,
        CohereV2RerankResponse,
        CohereV2Result,
        ApiMeta,
        ApiVersion,
        BilledUnits,
        MetaTokens,
        ErrorResponse,
        InfoResponse,
        ModelDescription,
        Limits,
        ModelType,
        ClassifierModel,
        Texts,
        ScoreRequest,
        ScoreData,
        ScoreUsage,
        ScoreResponse
    )),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

const JSON_ONLY: &str = "send the body as JSON with the header Content-Type: application/json";

/// A scored request, with what its response headers report.
struct Done {
    /// The model that scored it (its configured name).
    model: String,
    scored: Scored,
    /// TEI's `x-compute-characters`: the query's characters once per text, plus the texts'.
    characters: usize,
    /// `x-compute-type`: the model's device, backend and precision (`cpu+fused+fp32`).
    compute_type: String,
}

/// The response headers of a scored request: text-embeddings-inference's names and integer
/// milliseconds (`x-compute-type`, `x-compute-time`, `x-compute-characters`, `x-compute-tokens`,
/// `x-total-time`, `x-tokenization-time`, `x-queue-time`, `x-inference-time`), then xbench's finer
/// timings, ms with 3 decimals, under `x-xbench-*`. The stage times are the request's (its
/// tokenization, its wait in the tokenizer and batch queues, its forward passes), not TEI's means
/// per text.
fn timing_headers(total: Duration, done: &Done) -> [(HeaderName, HeaderValue); 12] {
    let value =
        |s: String| HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static("0"));
    let ms = |d: Duration| value(d.as_millis().to_string());
    let fine = |d: Duration| value(format!("{:.3}", d.as_secs_f64() * 1e3));
    let t = &done.scored.timings;
    let name = HeaderName::from_static;
    [
        (name("x-compute-type"), value(done.compute_type.clone())),
        (name("x-compute-time"), ms(total)),
        (
            name("x-compute-characters"),
            value(done.characters.to_string()),
        ),
        (
            name("x-compute-tokens"),
            value(done.scored.tokens.to_string()),
        ),
        (name("x-total-time"), ms(total)),
        (name("x-tokenization-time"), ms(t.tokenize)),
        (name("x-queue-time"), ms(t.queue + t.batch_wait)),
        (name("x-inference-time"), ms(t.inference)),
        (name("x-xbench-total-time"), fine(total)),
        (name("x-xbench-tokenization-time"), fine(t.tokenize)),
        (name("x-xbench-queue-time"), fine(t.queue + t.batch_wait)),
        (name("x-xbench-inference-time"), fine(t.inference)),
    ]
}

/// One scoring request, whichever API it came through.
struct Job {
    model: Option<String>,
    query: String,
    passages: Vec<String>,
    options: PassageOptions,
    /// The request's name for its passages, for error messages.
    field: &'static str,
    /// When the request arrived, and its deadline from then in ms (the request's `timeout_ms`).
    started: Instant,
    timeout_ms: Option<u64>,
}

/// A request's passage options: pairs cut as `truncation` says, each passage to
/// `max_passage_tokens`, long passages as the request's `long_documents` and
/// `chunk_overlap_tokens` say (the model's settings where it says nothing).
fn passage_options(
    truncation: Truncation,
    max_passage_tokens: Option<usize>,
    long_documents: Option<LongDocuments>,
    chunk_overlap_tokens: Option<usize>,
    instruction: Option<String>,
) -> PassageOptions {
    PassageOptions {
        truncation,
        instruction,
        max_passage_tokens,
        long_documents,
        chunk_overlap_tokens,
    }
}

/// The window of result `index` that gave its score, when the request asked (`return_chunks`).
fn chunk_index(return_chunks: bool, scored: &Scored, index: usize) -> Option<usize> {
    return_chunks.then(|| scored.chunks.as_ref().map_or(0, |c| c[index]))
}

/// Checks the request against the limits and scores it.
async fn score(state: &AppState, job: Job) -> Result<Done, ApiError> {
    let engine = ready_engine(state)?;
    let n = job.passages.len();
    if n == 0 {
        return Err(
            ApiError::bad_request(format!("'{}' is empty: send at least one", job.field))
                .with_tei(StatusCode::BAD_REQUEST, "Empty"),
        );
    }
    let max = state.settings.max_client_batch_size;
    if n > max {
        return Err(ApiError::too_large(format!(
            "{n} {} is more than max_client_batch_size {max}; split the request",
            job.field
        ))
        .with_tei(StatusCode::UNPROCESSABLE_ENTITY, "Validation"));
    }
    let retry = state.settings.retry_after_s;
    if job.timeout_ms == Some(0) {
        return Err(ApiError::validation(
            "timeout_ms must be at least 1 (or left out for the server's request_timeout_ms)",
        ));
    }
    // The configured name of the model asked for (its name or one of its served_model_names);
    // with server.ignore_unknown_model (one model served), any name is that model.
    let model = match engine.resolve(job.model.as_deref()) {
        Ok(name) => name.to_string(),
        Err(_) if state.settings.ignore_unknown_model => engine.model_names().swap_remove(0),
        Err(e) => return Err(ApiError::from_engine(e, retry)),
    };
    if job.options.instruction.is_some() {
        let tokenizer = engine
            .tokenizer(Some(&model))
            .map_err(|e| ApiError::from_engine(e, retry))?;
        match tokenizer.prompt() {
            None => {
                return Err(ApiError::validation(
                    "instruction is for generative rerankers; this model is a cross-encoder: leave it out",
                ))
            }
            Some(p) if !p.template.takes_instruction() => {
                return Err(ApiError::validation(format!(
                    "instruction: the model's template {} has no {{instruction}}: leave it out",
                    p.template.name
                )))
            }
            Some(_) => {}
        }
    }
    let characters = job.query.chars().count() * n
        + job
            .passages
            .iter()
            .map(|p| p.chars().count())
            .sum::<usize>();
    let compute_type = {
        let info = engine
            .model_info(Some(&model))
            .map_err(|e| ApiError::from_engine(e, retry))?;
        let device = state
            .engine_config
            .models
            .iter()
            .find(|m| m.name == model)
            .map_or("cpu", |m| m.device.as_str());
        format!("{device}+{}+{}", info.backend.name(), info.precision.name())
    };
    let input = RerankInput {
        query: job.query,
        passages: job.passages,
        options: job.options,
    };
    let scoring = engine.rerank(Some(&model), Arc::new(input));
    // Past the deadline the future is dropped: the request's reply channel closes, and the batcher
    // drops its pairs unless they are already being computed.
    let scored = match job.timeout_ms.or(state.settings.request_timeout_ms) {
        Some(ms) => {
            let deadline = tokio::time::Instant::from_std(job.started) + Duration::from_millis(ms);
            tokio::time::timeout_at(deadline, scoring)
                .await
                .map_err(|_| ApiError::deadline(ms, retry))?
        }
        None => scoring.await,
    }
    .map_err(|e| ApiError::from_engine(e, retry))?;
    record_scored(&model, &scored);
    Ok(Done {
        model,
        scored,
        characters,
        compute_type,
    })
}

fn record_scored(model: &str, scored: &Scored) {
    let m = model.to_string();
    metrics::counter!("xbench_pairs_total", "model" => m.clone()).increment(scored.pairs() as u64);
    metrics::counter!("xbench_tokens_total", "model" => m.clone()).increment(scored.tokens as u64);
    let t = &scored.timings;
    for (stage, d) in [
        ("tokenizer_queue", t.queue),
        ("tokenize", t.tokenize),
        ("batch_queue", t.batch_wait),
        ("inference", t.inference),
    ] {
        metrics::histogram!("xbench_stage_duration_seconds", "model" => m.clone(), "stage" => stage)
            .record(d.as_secs_f64());
    }
}

fn ready_engine(state: &AppState) -> Result<&Arc<Engine>, ApiError> {
    let retry = state.settings.retry_after_s;
    match (state.phase(), state.engine.get()) {
        (READY, Some(engine)) => Ok(engine),
        (LOADING, _) => Err(ApiError::unavailable(
            "the models are loading; retry shortly",
            retry,
        )),
        _ => Err(ApiError::unavailable("the server is shutting down", retry)),
    }
}

/// The body, as JSON of type T: 415 without a JSON content type, 413 over the payload limit.
fn read_body<T: serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| {
            let v = v.trim().to_ascii_lowercase();
            v == "application/json" || (v.starts_with("application/") && v.ends_with("+json"))
        })
        .unwrap_or(false);
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            JSON_ONLY,
        ));
    }
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large_body(state)
        } else {
            ApiError::bad_request(format!("cannot read the body: {}", rejection.body_text()))
        }
    })?;
    parse_json(&body)
}

fn too_large_body(state: &AppState) -> ApiError {
    ApiError::too_large(format!(
        "the body is over the payload limit of {} bytes (server.payload_limit_bytes); send fewer or shorter texts",
        state.settings.payload_limit_bytes
    ))
}

/// Counts a scoring request as accepted; then as answered (any status), or, when its handler is
/// dropped unanswered because the client closed the connection, as left.
struct Accepted<'a> {
    state: &'a AppState,
    answered: bool,
}

impl<'a> Accepted<'a> {
    fn new(state: &'a AppState) -> Self {
        state.accepted.fetch_add(1, Ordering::SeqCst);
        Self {
            state,
            answered: false,
        }
    }

    fn answer(mut self, response: Response) -> Response {
        self.state.answered.fetch_add(1, Ordering::SeqCst);
        self.answered = true;
        response
    }
}

impl Drop for Accepted<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.state.left.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Rerank texts against a query (text-embeddings-inference's API).
///
/// Scores are the sigmoid of the model's logit unless `raw_scores` is true, as TEI does; the
/// list is sorted by score, highest first. For a model with more than one label, the score is the
/// softmax probability of its last label (the raw score that label's log-odds against the others)
/// and each result also lists every label's logit in `logits`.
#[utoipa::path(
    post,
    path = "/rerank",
    request_body = RerankRequest,
    responses(
        (status = 200, description = "Texts ranked, highest score first (equal scores: highest index first, as TEI)", body = [Rank],
         headers(("x-compute-type" = String, description = "device+backend+precision"),
                 ("x-compute-time" = String, description = "integer ms"),
                 ("x-compute-characters" = String, description = "the query's characters once per text, plus the texts'"),
                 ("x-compute-tokens" = String, description = "tokens computed"),
                 ("x-total-time" = String, description = "integer ms"),
                 ("x-tokenization-time" = String, description = "integer ms"),
                 ("x-queue-time" = String, description = "integer ms"),
                 ("x-inference-time" = String, description = "integer ms"),
                 ("x-xbench-total-time" = String, description = "ms, 3 decimals"),
                 ("x-xbench-tokenization-time" = String, description = "ms, 3 decimals"),
                 ("x-xbench-queue-time" = String, description = "ms, 3 decimals"),
                 ("x-xbench-inference-time" = String, description = "ms, 3 decimals"))),
        (status = 400, description = "No texts (error_type Empty) or malformed JSON (Validation)", body = ErrorResponse),
        (status = 401, description = "Missing or wrong API key", body = ErrorResponse),
        (status = 404, description = "Unknown model (unless server.ignore_unknown_model)", body = ErrorResponse),
        (status = 413, description = "Body over the payload limit", body = ErrorResponse,
         example = json!({"error": "the body is over the payload limit of 2000000 bytes (server.payload_limit_bytes); send fewer or shorter texts", "error_type": "Validation"})),
        (status = 415, description = "Body not sent as JSON", body = ErrorResponse),
        (status = 422, description = "More texts than max_client_batch_size, wrong types or missing fields, input over max_length with truncate false (Validation); the tokenizer failed (Tokenizer)", body = ErrorResponse,
         example = json!({"error": "33 texts is more than max_client_batch_size 32; split the request", "error_type": "Validation"})),
        (status = 424, description = "Inference failed", body = ErrorResponse,
         example = json!({"error": "inference failed", "error_type": "Backend"})),
        (status = 429, description = "Overloaded, or the deadline (timeout_ms) passed; retry after Retry-After seconds", body = ErrorResponse,
         example = json!({"error": "overloaded: the tokenizer queue is full (1024 requests); retry later", "error_type": "Overloaded"})),
        (status = 503, description = "Loading or shutting down; retry after Retry-After seconds", body = ErrorResponse,
         example = json!({"error": "the models are loading; retry shortly", "error_type": "Unhealthy"})),
    ),
    security((), ("api_key" = [])),
)]
async fn rerank(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let accepted = Accepted::new(&state);
    let result = async {
        let req: RerankRequest = read_body(&state, &headers, body)?;
        let truncation = match (req.truncate.unwrap_or(true), req.truncation_direction) {
            (false, _) => Truncation::Off,
            (true, None) => Truncation::Model,
            (true, Some(TruncationDirection::Left)) => Truncation::Left,
            (true, Some(TruncationDirection::Right)) => Truncation::Right,
        };
        let texts = req.return_text.then(|| req.texts.clone());
        let done = score(
            &state,
            Job {
                model: req.model,
                query: req.query,
                passages: req.texts,
                options: passage_options(
                    truncation,
                    None,
                    req.long_documents,
                    req.chunk_overlap_tokens,
                    req.instruction,
                ),
                field: "texts",
                started,
                timeout_ms: req.timeout_ms,
            },
        )
        .await?;
        let scored = &done.scored;
        let mut ranks: Vec<Rank> = scored
            .rows()
            .enumerate()
            .map(|(index, logits)| {
                let raw = relevance(logits);
                Rank {
                    index,
                    score: if req.raw_scores { raw } else { sigmoid(raw) },
                    text: texts.as_ref().map(|t| t[index].clone()),
                    logits: (logits.len() > 1).then(|| logits.to_vec()),
                    chunk_index: chunk_index(req.return_chunks, scored, index),
                }
            })
            .collect();
        // Highest score first; equal scores highest index first, as TEI orders them.
        ranks.sort_by(|a, b| b.score.total_cmp(&a.score).then(b.index.cmp(&a.index)));
        Ok::<_, ApiError>((timing_headers(started.elapsed(), &done), Json(ranks)).into_response())
    }
    .await;
    accepted.answer(result.unwrap_or_else(|e| e.tei().into_response()))
}

/// Rerank documents against a query (Cohere's and Jina's API).
///
/// `relevance_score` is the sigmoid of the model's logit (for a model with more than one label,
/// the softmax probability of its last label, with every label's logit in `logits`); results are
/// sorted by it, highest first, and cut to `top_n`.
#[utoipa::path(
    post,
    path = "/v1/rerank",
    request_body = CohereRerankRequest,
    responses(
        (status = 200, description = "Documents ranked, most relevant first", body = CohereRerankResponse),
        (status = 400, description = "Malformed JSON or no documents", body = ErrorResponse),
        (status = 401, description = "Missing or wrong API key", body = ErrorResponse),
        (status = 404, description = "Unknown model", body = ErrorResponse),
        (status = 413, description = "Too many documents or body too large", body = ErrorResponse),
        (status = 415, description = "Body not sent as JSON", body = ErrorResponse),
        (status = 422, description = "Wrong types or missing fields", body = ErrorResponse),
        (status = 429, description = "Overloaded; retry after Retry-After seconds", body = ErrorResponse),
        (status = 500, description = "Inference failed", body = ErrorResponse),
        (status = 503, description = "Loading, shutting down, or the deadline (timeout_ms) passed; retry after Retry-After seconds", body = ErrorResponse),
    ),
    security((), ("api_key" = [])),
)]
async fn cohere_rerank(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let accepted = Accepted::new(&state);
    let result = async {
        let req: CohereRerankRequest = read_body(&state, &headers, body)?;
        if req.top_n == Some(0) {
            return Err(ApiError::validation(
                "top_n must be at least 1 (or left out for every document)",
            ));
        }
        let passages: Vec<String> = req.documents.into_iter().map(Document::into_text).collect();
        let texts = req.return_documents.then(|| passages.clone());
        let done = score(
            &state,
            Job {
                model: req.model,
                query: req.query,
                passages,
                options: passage_options(
                    Truncation::Model,
                    None,
                    req.long_documents,
                    req.chunk_overlap_tokens,
                    req.instruction,
                ),
                field: "documents",
                started,
                timeout_ms: req.timeout_ms,
            },
        )
        .await?;
        let (model, scored) = (done.model.clone(), &done.scored);
        let mut results: Vec<CohereResult> = scored
            .rows()
            .enumerate()
            .map(|(index, logits)| CohereResult {
                index,
                relevance_score: sigmoid(relevance(logits)),
                document: texts.as_ref().map(|t| DocumentText {
                    text: t[index].clone(),
                }),
                logits: (logits.len() > 1).then(|| logits.to_vec()),
                chunk_index: chunk_index(req.return_chunks, scored, index),
            })
            .collect();
        results.sort_by(|a, b| b.relevance_score.total_cmp(&a.relevance_score));
        if let Some(n) = req.top_n {
            results.truncate(n);
        }
        let body = CohereRerankResponse {
            id: format!("{:032x}", rand::rng().random::<u128>()),
            model,
            results,
            usage: Usage {
                total_tokens: scored.tokens,
            },
        };
        Ok((timing_headers(started.elapsed(), &done), Json(body)).into_response())
    }
    .await;
    accepted.answer(result.unwrap_or_else(IntoResponse::into_response))
}

/// Rerank documents against a query (Cohere's v2 API, as its `ClientV2` calls it).
///
/// `model` is required; `relevance_score` is the sigmoid of the model's logit (for a model with
/// more than one label, the softmax probability of its last label); results are sorted by it,
/// highest first, and cut to `top_n`. `max_tokens_per_doc` cuts each document before it is paired
/// with the query. `meta.billed_units.search_units` counts started hundreds of documents (windows
/// of split documents included), as Cohere bills.
#[utoipa::path(
    post,
    path = "/v2/rerank",
    request_body = CohereV2RerankRequest,
    responses(
        (status = 200, description = "Documents ranked, most relevant first", body = CohereV2RerankResponse),
        (status = 400, description = "Malformed JSON or no documents", body = ErrorResponse),
        (status = 401, description = "Missing or wrong API key", body = ErrorResponse),
        (status = 404, description = "Unknown model", body = ErrorResponse),
        (status = 413, description = "Too many documents or body too large", body = ErrorResponse),
        (status = 415, description = "Body not sent as JSON", body = ErrorResponse),
        (status = 422, description = "Wrong types or missing fields (model is required)", body = ErrorResponse),
        (status = 429, description = "Overloaded; retry after Retry-After seconds", body = ErrorResponse),
        (status = 500, description = "Inference failed", body = ErrorResponse),
        (status = 503, description = "Loading, shutting down, or the deadline (timeout_ms) passed; retry after Retry-After seconds", body = ErrorResponse),
    ),
    security((), ("api_key" = [])),
)]
async fn cohere_v2_rerank(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let accepted = Accepted::new(&state);
    let result = async {
        let req: CohereV2RerankRequest = read_body(&state, &headers, body)?;
        if req.top_n == Some(0) {
            return Err(ApiError::validation(
                "top_n must be at least 1 (or left out for every document)",
            ));
        }
        if req.max_tokens_per_doc == Some(0) {
            return Err(ApiError::validation(
                "max_tokens_per_doc must be at least 1 (or left out for the model's max_length)",
            ));
        }
        let done = score(
            &state,
            Job {
                model: Some(req.model),
                query: req.query,
                passages: req.documents,
                options: passage_options(
                    Truncation::Model,
                    req.max_tokens_per_doc,
                    req.long_documents,
                    req.chunk_overlap_tokens,
                    req.instruction,
                ),
                field: "documents",
                started,
                timeout_ms: req.timeout_ms,
            },
        )
        .await?;
        let scored = &done.scored;
        let mut results: Vec<CohereV2Result> = scored
            .rows()
            .enumerate()
            .map(|(index, logits)| CohereV2Result {
                index,
                relevance_score: sigmoid(relevance(logits)),
                chunk_index: chunk_index(req.return_chunks, scored, index),
            })
            .collect();
        results.sort_by(|a, b| b.relevance_score.total_cmp(&a.relevance_score));
        if let Some(n) = req.top_n {
            results.truncate(n);
        }
        let body = CohereV2RerankResponse {
            id: format!("{:032x}", rand::rng().random::<u128>()),
            results,
            meta: ApiMeta {
                api_version: ApiVersion {
                    version: "2".to_string(),
                },
                billed_units: BilledUnits {
                    search_units: scored.computed_pairs.div_ceil(100) as f64,
                },
                tokens: MetaTokens {
                    input_tokens: scored.tokens as f64,
                },
            },
        };
        Ok((timing_headers(started.elapsed(), &done), Json(body)).into_response())
    }
    .await;
    accepted.answer(result.unwrap_or_else(IntoResponse::into_response))
}

/// Score pairs (vLLM's score API).
///
/// `text_1` (one text, or a one-element list) against each of `text_2`, or `text_1[i]` against
/// `text_2[i]` when both are lists of one length. `score` is the relevance, the sigmoid of the
/// model's score as `/rerank` answers it; `data` comes in request order.
#[utoipa::path(
    post,
    path = "/score",
    request_body = ScoreRequest,
    responses(
        (status = 200, description = "Every pair's score, in request order", body = ScoreResponse),
        (status = 400, description = "Malformed JSON or no texts", body = ErrorResponse),
        (status = 401, description = "Missing or wrong API key", body = ErrorResponse),
        (status = 404, description = "Unknown model", body = ErrorResponse),
        (status = 413, description = "Too many pairs or body too large", body = ErrorResponse),
        (status = 415, description = "Body not sent as JSON", body = ErrorResponse),
        (status = 422, description = "Wrong types, missing fields, or text_1 and text_2 of different lengths", body = ErrorResponse),
        (status = 429, description = "Overloaded; retry after Retry-After seconds", body = ErrorResponse),
        (status = 500, description = "Inference failed", body = ErrorResponse),
        (status = 503, description = "Loading, shutting down, or the deadline (timeout_ms) passed; retry after Retry-After seconds", body = ErrorResponse),
    ),
    security((), ("api_key" = [])),
)]
async fn score_pairs(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let accepted = Accepted::new(&state);
    let result = async {
        let req: ScoreRequest = read_body(&state, &headers, body)?;
        let (queries, documents) = (req.text_1.into_vec(), req.text_2.into_vec());
        if queries.is_empty() {
            return Err(ApiError::bad_request("'text_1' is empty: send at least one"));
        }
        if queries.len() != 1 && queries.len() != documents.len() {
            return Err(ApiError::validation(format!(
                "text_1 has {} texts and text_2 {}: send one text_1 (scored against every text_2) or as many as text_2 (scored pair by pair)",
                queries.len(),
                documents.len()
            )));
        }
        let max = state.settings.max_client_batch_size;
        if documents.len() > max {
            return Err(ApiError::too_large(format!(
                "{} pairs is more than max_client_batch_size {max}; split the request",
                documents.len()
            )));
        }
        // The pairs of each distinct query, in order of first appearance: one scoring job each,
        // run together so the batcher may batch them.
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        for i in 0..documents.len() {
            let q = &queries[if queries.len() == 1 { 0 } else { i }];
            match groups.iter_mut().find(|(g, _)| g == q) {
                Some((_, members)) => members.push(i),
                None => groups.push((q.clone(), vec![i])),
            }
        }
        if groups.is_empty() {
            groups.push((queries[0].clone(), Vec::new()));
        }
        let jobs: Vec<_> = groups
            .iter()
            .map(|(query, members)| {
                let state = state.clone();
                let job = Job {
                    model: req.model.clone(),
                    query: query.clone(),
                    passages: members.iter().map(|&i| documents[i].clone()).collect(),
                    options: passage_options(
                        Truncation::Model,
                        None,
                        None,
                        None,
                        req.instruction.clone(),
                    ),
                    field: "text_2",
                    started,
                    timeout_ms: req.timeout_ms,
                };
                tokio::spawn(async move { score(&state, job).await })
            })
            .collect();
        let mut data = vec![None; documents.len()];
        let (mut model, mut tokens, mut characters, mut first) = (String::new(), 0, 0, None);
        for ((_, members), job) in groups.iter().zip(jobs) {
            let done = job
                .await
                .map_err(|e| ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("a scoring task failed: {e}"),
                ))??;
            for (&i, logits) in members.iter().zip(done.scored.rows()) {
                data[i] = Some(ScoreData {
                    index: i,
                    object: "score".to_string(),
                    score: sigmoid(relevance(logits)),
                });
            }
            tokens += done.scored.tokens;
            characters += done.characters;
            model = done.model.clone();
            first.get_or_insert(done);
        }
        let body = ScoreResponse {
            id: format!("score-{:032x}", rand::rng().random::<u128>()),
            object: "list".to_string(),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model,
            data: data.into_iter().flatten().collect(),
            usage: ScoreUsage {
                prompt_tokens: tokens,
                total_tokens: tokens,
            },
        };
        let response = match first {
            Some(mut done) => {
                // The headers count the whole request: every query group's pairs.
                done.characters = characters;
                done.scored.tokens = tokens;
                (timing_headers(started.elapsed(), &done), Json(body)).into_response()
            }
            None => Json(body).into_response(),
        };
        Ok(response)
    }
    .await;
    accepted.answer(result.unwrap_or_else(IntoResponse::into_response))
}

/// 200 once the models are loaded and warm; 503 while loading and while shutting down.
/// Whether the server scores: 200 with an empty body once the models are loaded and warm, as
/// text-embeddings-inference answers; 503 with TEI's body while they load or the server shuts
/// down (`x-xbench-status` says which: `loading` or `shutting_down`; `Retry-After` too).
#[utoipa::path(
    get,
    path = "/health",
    responses(
        (status = 200, description = "Ready (empty body)"),
        (status = 503, description = "Loading or shutting down", body = ErrorResponse,
         headers(("x-xbench-status" = String, description = "loading or shutting_down")),
         example = json!({"error": "unhealthy", "error_type": "Unhealthy"})),
    )
)]
async fn health(State(state): State<Arc<AppState>>) -> Response {
    let why = match state.phase() {
        READY => return StatusCode::OK.into_response(),
        LOADING => "loading",
        _ => "shutting_down",
    };
    let body = ErrorResponse {
        error: "unhealthy".into(),
        error_type: "Unhealthy".into(),
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [
            (
                header::RETRY_AFTER,
                HeaderValue::from(state.settings.retry_after_s),
            ),
            (
                HeaderName::from_static("x-xbench-status"),
                HeaderValue::from_static(why),
            ),
        ],
        Json(body),
    )
        .into_response()
}

/// Whether the process runs: 200 with an empty body while it does, loading, draining or
/// overloaded alike (a liveness probe; `/health` is the readiness one). Needs no API key.
#[utoipa::path(get, path = "/live", responses((status = 200, description = "The process runs (empty body)")))]
async fn live() -> StatusCode {
    StatusCode::OK
}

/// The loaded models, the limits and the version.
#[utoipa::path(
    get,
    path = "/info",
    responses(
        (status = 200, description = "TEI's fields for the default model, then every model and the limits", body = InfoResponse),
        (status = 401, description = "Missing or wrong API key", body = ErrorResponse),
        (status = 503, description = "Loading or shutting down", body = ErrorResponse),
    ),
    security((), ("api_key" = [])),
)]
async fn info(State(state): State<Arc<AppState>>) -> Response {
    match info_body(&state) {
        Ok(body) => Json(body).into_response(),
        Err(e) => e.tei().into_response(),
    }
}

fn info_body(state: &AppState) -> Result<InfoResponse, ApiError> {
    let engine = ready_engine(state)?;
    let retry = state.settings.retry_after_s;
    let config = &state.engine_config;
    let mut models = Vec::new();
    for (name, spec) in engine.model_names().iter().zip(&config.models) {
        let m = Some(name.as_str());
        let e = |e: EngineError| ApiError::from_engine(e, retry);
        let info = engine.model_info(m).map_err(e)?;
        models.push(ModelDescription {
            name: name.clone(),
            served_model_names: spec.served_model_names.clone(),
            architecture: info.architecture.clone(),
            labels: info.labels.clone(),
            num_layers: info.num_layers,
            hidden_size: info.hidden_size,
            max_length: engine.tokenizer(m).map_err(e)?.max_length(),
            device: spec.device.clone(),
            precision: info.precision.name().to_string(),
            backend: info.backend.name().to_string(),
            kernel: crate::backend::kernel_name(info.backend, info.precision).to_string(),
            workers: engine.workers(m).map_err(e)?,
            threads_per_worker: engine.threads_per_worker(m).map_err(e)?,
            template: info.template.clone(),
            instruction: engine.tokenizer(m).map_err(e)?.prompt().and_then(|p| {
                spec.instruction
                    .clone()
                    .or_else(|| p.template.default_instruction.clone())
            }),
        });
    }
    let b = &config.batching;
    let Some(first) = models.first() else {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "no model is loaded",
        ));
    };
    let labels = engine
        .model_info(Some(&first.name))
        .map_err(|e| ApiError::from_engine(e, retry))?
        .labels
        .clone();
    let model_sha = match first.name.split_once('@') {
        Some((_, revision)) if !std::path::Path::new(&first.name).exists() => {
            Some(revision.to_string())
        }
        _ => None,
    };
    Ok(InfoResponse {
        model_id: first.name.clone(),
        model_sha,
        model_dtype: match first.precision.as_str() {
            "fp32" => "float32",
            "fp16" => "float16",
            "bf16" => "bfloat16",
            other => other,
        }
        .to_string(),
        model_type: ModelType::Reranker(ClassifierModel {
            id2label: labels
                .iter()
                .enumerate()
                .map(|(i, l)| (i.to_string(), l.clone()))
                .collect(),
            label2id: labels
                .iter()
                .enumerate()
                .map(|(i, l)| (l.clone(), i))
                .collect(),
        }),
        max_concurrent_requests: config.tokenizer_pool.queue_capacity,
        max_input_length: first.max_length,
        max_batch_tokens: b.max_batch_tokens,
        max_batch_requests: Some(b.max_batch_size),
        max_client_batch_size: state.settings.max_client_batch_size,
        auto_truncate: true,
        tokenization_workers: config.tokenizer_pool.workers,
        sha: option_env!("XBENCH_GIT_SHA").map(str::to_string),
        docker_label: option_env!("DOCKER_LABEL").map(str::to_string),
        version: env!("CARGO_PKG_VERSION").to_string(),
        models,
        limits: Limits {
            max_client_batch_size: state.settings.max_client_batch_size,
            payload_limit_bytes: state.settings.payload_limit_bytes,
            max_batch_size: b.max_batch_size,
            max_batch_tokens: b.max_batch_tokens,
            batching_timeout_ms: if b.enabled { b.timeout_ms } else { 0.0 },
            tokenizer_queue_capacity: config.tokenizer_pool.queue_capacity,
            batch_queue_capacity: b.queue_capacity,
        },
        tokenizer_workers: config.tokenizer_pool.workers,
        tokenizer_parallelism: config.tokenizer_pool.parallelism,
        api_key_required: state.settings.api_key.is_some(),
    })
}

/// Prometheus metrics, text format.
#[utoipa::path(
    get,
    path = "/metrics",
    responses((status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain")),
)]
async fn prometheus(State(state): State<Arc<AppState>>) -> Response {
    if let Some(engine) = state.engine.get() {
        metrics::gauge!("xbench_queue_depth", "queue" => "tokenizer", "model" => "all")
            .set(engine.tokenizer_queue_depth() as f64);
        for (model, depth) in engine.batch_queue_depths() {
            metrics::gauge!("xbench_queue_depth", "queue" => "batch", "model" => model)
                .set(depth as f64);
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    responses((status = 200, description = "The OpenAPI document of every route", body = Object)),
)]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route {} {}; routes: POST /rerank, POST /v1/rerank, POST /v2/rerank, POST /score, GET /health, GET /live, GET /info, GET /metrics, GET /openapi.json",
        request.method(),
        request.uri().path()
    ))
}

async fn method_not_allowed(request: Request) -> ApiError {
    let allowed = match request.uri().path() {
        "/rerank" | "/v1/rerank" | "/v2/rerank" | "/score" => "POST",
        _ => "GET",
    };
    let e = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not allowed on {}; use {allowed}",
            request.method(),
            request.uri().path()
        ),
    );
    dialect(request.uri().path(), e)
}

/// Compares without stopping at the first differing byte.
fn same_key(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The Bearer-token check: every route but /health and /live, and /metrics unless configured.
/// 413 from the Content-Length alone, before a byte of an oversized body is read (a body without
/// one, chunked, is cut by `DefaultBodyLimit` as it streams in).
async fn declared_size(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > state.settings.payload_limit_bytes as u64 => {
            dialect(request.uri().path(), too_large_body(&state)).into_response()
        }
        _ => next.run(request).await,
    }
}

async fn authorize(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let Some(key) = &state.settings.api_key else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    if path == "/health"
        || path == "/live"
        || (path == "/metrics" && !state.settings.metrics_require_api_key)
    {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(g) if same_key(g.as_bytes(), key.as_bytes()) => next.run(request).await,
        Some(_) => unauthorized(path, "the API key is wrong"),
        None => unauthorized(
            path,
            "this server needs an API key: send the header Authorization: Bearer KEY",
        ),
    }
}

/// An error as the route's API writes it: TEI's vocabulary on TEI's routes ([`ApiError::tei`]),
/// xbench's elsewhere.
fn dialect(path: &str, e: ApiError) -> ApiError {
    match path {
        "/rerank" | "/info" | "/health" => e.tei(),
        _ => e,
    }
}

fn unauthorized(path: &str, message: &str) -> Response {
    let e = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
    let mut response = dialect(path, e).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// `x-xbench-replica` on every answer, errors and the framework's own included.
async fn replica(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .insert("x-xbench-replica", state.replica.clone());
    response
}

/// Request count by route and status, latency by route, requests in flight.
async fn observe(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let started = Instant::now();
    let in_flight = InFlight::new();
    let response = next.run(request).await;
    drop(in_flight);
    let status = response.status().as_u16().to_string();
    metrics::counter!("xbench_requests_total", "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("xbench_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The in-flight gauge, decremented however the request ends (a client that goes away drops it).
struct InFlight(metrics::Gauge);

impl InFlight {
    fn new() -> Self {
        let g = metrics::gauge!("xbench_requests_in_flight");
        g.increment(1.0);
        Self(g)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}
