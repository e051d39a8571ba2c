//! The real server on 127.0.0.1:0, driven over HTTP: both APIs score as `xbench score` does, every
//! row of the status table, real overload (429) after which it keeps serving, graceful shutdown
//! that answers every accepted request, readiness, the API key, the OpenAPI document against the
//! real responses, and the metrics.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use reqwest::StatusCode;
use serde_json::{json, Value};
use xbench::backend::{self, Backend, BackendError, LoadedModel};
use xbench::batch::Batch;
use xbench::engine::{BatchingConfig, Engine, EngineConfig, ModelSpec, TokenizerPoolConfig};
use xbench::score::{sigmoid, Pair, Scorer};
use xbench::server::{BackgroundServer, EngineStarter, ServeSummary, ServerSettings};

mod common;
use common::{demo, sample};

fn engine_config(batching: BatchingConfig) -> EngineConfig {
    EngineConfig {
        models: vec![ModelSpec {
            threads: Some(1),
            ..ModelSpec::new(demo())
        }],
        tokenizer_pool: TokenizerPoolConfig::default(),
        batching,
    }
}

fn settings() -> ServerSettings {
    ServerSettings {
        port: 0,
        ..ServerSettings::default()
    }
}

/// The tests share one process, whose RSS moves with whatever the others load and compute (a
/// model load is over 100 MB): a test that measures RSS holds this for writing, every other
/// server or engine for reading.
static PROCESS: RwLock<()> = RwLock::new(());

/// A hold on [`PROCESS`].
#[allow(dead_code)] // held for its drop
enum Hold {
    Shared(RwLockReadGuard<'static, ()>),
    Alone(RwLockWriteGuard<'static, ()>),
}

fn shared() -> Hold {
    Hold::Shared(PROCESS.read().unwrap_or_else(PoisonError::into_inner))
}

/// The real server on its own runtime thread (dropped before its hold on the process).
struct TestServer(Option<BackgroundServer>, #[allow(dead_code)] Hold);

impl TestServer {
    fn start(
        settings: ServerSettings,
        config: EngineConfig,
        starter: Option<EngineStarter>,
    ) -> Self {
        let s = Self::start_loading(settings, config, starter);
        s.wait_ready();
        s
    }

    /// [`TestServer::start`] with no other server or engine in the process while it lives.
    fn start_alone(settings: ServerSettings, config: EngineConfig) -> Self {
        let hold = Hold::Alone(PROCESS.write().unwrap_or_else(PoisonError::into_inner));
        let s = Self(
            Some(BackgroundServer::start(settings, config).unwrap()),
            hold,
        );
        s.wait_ready();
        s
    }

    fn start_loading(
        settings: ServerSettings,
        config: EngineConfig,
        starter: Option<EngineStarter>,
    ) -> Self {
        let server = match starter {
            Some(s) => BackgroundServer::start_with(settings, config, s),
            None => BackgroundServer::start(settings, config),
        };
        Self(Some(server.unwrap()), shared())
    }

    fn addr(&self) -> SocketAddr {
        self.0.as_ref().unwrap().addr()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Ok(r) = client().get(self.url("/health")).send() {
                if r.status() == StatusCode::OK {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the server did not become ready in 120 s");
    }

    fn stop(mut self) -> ServeSummary {
        self.0.take().unwrap().stop().unwrap()
    }
}

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

fn post(server: &TestServer, path: &str, body: &Value) -> (StatusCode, Value) {
    let r = client().post(server.url(path)).json(body).send().unwrap();
    let status = r.status();
    (status, r.json().unwrap())
}

/// The error envelope: exactly `error` (non-empty) and `error_type`.
fn assert_envelope(v: &Value, kind: &str) -> String {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"));
    assert_eq!(obj.len(), 2, "{v}");
    assert_eq!(v["error_type"], kind, "{v}");
    let msg = v["error"].as_str().unwrap().to_string();
    assert!(!msg.is_empty());
    msg
}

/// Posts `body` and checks the answer is the error envelope with this status, kind and message.
fn expect_error(
    server: &TestServer,
    path: &str,
    body: &Value,
    status: StatusCode,
    kind: &str,
    says: &str,
) {
    let (s, v) = post(server, path, body);
    assert_eq!(s, status, "{v}");
    let message = assert_envelope(&v, kind);
    assert!(message.contains(says), "{message}");
}

/// Queries with their passages, in file order.
fn grouped(pairs: &[Pair]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for p in pairs {
        match out.last_mut() {
            Some((q, ps)) if *q == p.query => ps.push(p.passage.clone()),
            _ => out.push((p.query.clone(), vec![p.passage.clone()])),
        }
    }
    out
}

#[test]
fn both_apis_score_as_xbench_score_does() {
    let server = TestServer::start(settings(), engine_config(BatchingConfig::default()), None);
    let pairs = sample(20);
    let scorer = Scorer::load_default(&demo(), None).unwrap();
    let want = scorer.score(&pairs, 32).unwrap();
    let mut at = 0;
    for (query, passages) in grouped(&pairs) {
        let want = &want[at..at + passages.len()];
        at += passages.len();
        // TEI: raw logits, then sigmoid, sorted highest first, texts echoed.
        let r = client()
            .post(server.url("/rerank"))
            .json(&json!({"query": query, "texts": passages, "raw_scores": true, "return_text": true}))
            .send()
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        for h in [
            "x-total-time",
            "x-tokenization-time",
            "x-queue-time",
            "x-inference-time",
        ] {
            let v: f64 = r.headers()[h].to_str().unwrap().parse().unwrap();
            assert!(v >= 0.0, "{h}: {v}");
        }
        let ranks: Value = r.json().unwrap();
        let ranks = ranks.as_array().unwrap();
        assert_eq!(ranks.len(), passages.len());
        let mut last = f64::INFINITY;
        for rank in ranks {
            let i = rank["index"].as_u64().unwrap() as usize;
            let score = rank["score"].as_f64().unwrap();
            assert!(
                (score - want[i] as f64).abs() <= 1e-5,
                "pair {i}: server {score}, xbench score {}",
                want[i]
            );
            assert!(score <= last, "sorted highest first");
            last = score;
            assert_eq!(rank["text"], passages[i]);
        }
        let (status, ranks) = post(
            &server,
            "/rerank",
            &json!({"query": query, "texts": passages}),
        );
        assert_eq!(status, StatusCode::OK);
        for rank in ranks.as_array().unwrap() {
            let i = rank["index"].as_u64().unwrap() as usize;
            let score = rank["score"].as_f64().unwrap();
            assert!((score - sigmoid(want[i]) as f64).abs() <= 1e-6);
            assert!(rank.get("text").is_none(), "no text unless asked");
        }
        // Cohere/Jina: documents as strings or objects, top_n, return_documents, usage.
        let documents: Vec<Value> = passages
            .iter()
            .enumerate()
            .map(|(i, p)| {
                if i % 2 == 0 {
                    json!(p)
                } else {
                    json!({ "text": p })
                }
            })
            .collect();
        let top_n = passages.len().min(3);
        let (status, body) = post(
            &server,
            "/v1/rerank",
            &json!({"query": query, "documents": documents, "top_n": top_n, "return_documents": true}),
        );
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["model"], demo());
        assert_eq!(body["id"].as_str().unwrap().len(), 32);
        let tokens: usize = passages
            .iter()
            .map(|p| scorer.tokenizer().encode(&query, p).unwrap().ids.len())
            .sum();
        assert_eq!(body["usage"]["total_tokens"], tokens);
        let results = body["results"].as_array().unwrap();
        assert_eq!(results.len(), top_n);
        let mut best: Vec<usize> = (0..passages.len()).collect();
        best.sort_by(|&a, &b| want[b].total_cmp(&want[a]));
        for (k, r) in results.iter().enumerate() {
            let i = r["index"].as_u64().unwrap() as usize;
            assert_eq!(i, best[k]);
            assert!(
                (r["relevance_score"].as_f64().unwrap() - sigmoid(want[i]) as f64).abs() <= 1e-6
            );
            assert_eq!(r["document"]["text"], passages[i]);
        }
    }
    let summary = server.stop();
    assert_eq!(summary.accepted, summary.answered);
}

/// Scores as the loaded backend does, but can sleep per batch and fails any batch holding a pair
/// longer than `fail_over` tokens.
struct TestBackend {
    inner: Arc<dyn Backend>,
    sleep: Duration,
    fail_over: usize,
}

impl Backend for TestBackend {
    fn is_padded(&self) -> bool {
        true
    }
    fn health(&self) -> Result<(), BackendError> {
        Ok(())
    }
    fn predict(&self, batch: &Batch) -> Result<Vec<f32>, BackendError> {
        std::thread::sleep(self.sleep);
        if batch.max_length > self.fail_over {
            return Err(BackendError::inference(std::io::Error::other(
                "injected failure",
            )));
        }
        self.inner.predict(batch)
    }
}

fn test_backend(sleep: Duration, fail_over: usize, load_delay: Duration) -> EngineStarter {
    Box::new(move |config: &EngineConfig| {
        std::thread::sleep(load_delay);
        Engine::start_with(config, |spec| {
            let loaded = backend::load(spec)?;
            Ok(LoadedModel {
                backend: Arc::new(TestBackend {
                    inner: loaded.backend.clone(),
                    sleep,
                    fail_over,
                }),
                ..loaded
            })
        })
    })
}

#[test]
fn every_row_of_the_status_table() {
    let server = TestServer::start(
        ServerSettings {
            max_client_batch_size: 4,
            payload_limit_bytes: 4096,
            ..settings()
        },
        engine_config(BatchingConfig::default()),
        Some(test_backend(Duration::ZERO, 64, Duration::ZERO)),
    );
    let raw = |path: &str, content_type: Option<&str>, body: &str| {
        let mut r = client().post(server.url(path)).body(body.to_string());
        if let Some(ct) = content_type {
            r = r.header("content-type", ct);
        }
        let r = r.send().unwrap();
        let status = r.status();
        let headers = r.headers().clone();
        (status, r.json::<Value>().unwrap(), headers)
    };
    let json_ct = Some("application/json");
    for path in ["/rerank", "/v1/rerank"] {
        // 400: malformed JSON.
        let (s, v, _) = raw(path, json_ct, "{\"query\": \"q\", ");
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(assert_envelope(&v, "bad_request").contains("not valid JSON"));
        // 415: not sent as JSON.
        let (s, v, _) = raw(path, None, "{}");
        assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(assert_envelope(&v, "unsupported_media_type").contains("application/json"));
        // 413: body over the payload limit.
        let big =
            json!({"query": "q", "texts": ["x".repeat(5000)], "documents": ["x".repeat(5000)]});
        let (s, v, _) = raw(path, json_ct, &big.to_string());
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(assert_envelope(&v, "payload_too_large").contains("4096"));
    }
    // 422: wrong types and missing fields name the field.
    expect_error(
        &server,
        "/rerank",
        &json!({"query": "q", "texts": "one"}),
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
        "texts",
    );
    expect_error(
        &server,
        "/rerank",
        &json!({"texts": ["a"]}),
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
        "query",
    );
    expect_error(
        &server,
        "/v1/rerank",
        &json!({"query": "q", "documents": [1]}),
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
        "documents",
    );
    expect_error(
        &server,
        "/v1/rerank",
        &json!({"query": "q", "documents": ["a"], "top_n": 0}),
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
        "top_n",
    );
    for path in ["/rerank", "/v1/rerank"] {
        let body = if path == "/rerank" {
            json!({"query": "q", "texts": ["a"], "timeout_ms": 0})
        } else {
            json!({"query": "q", "documents": ["a"], "timeout_ms": 0})
        };
        expect_error(
            &server,
            path,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "timeout_ms must be at least 1",
        );
    }
    // 400: nothing to rank.
    expect_error(
        &server,
        "/rerank",
        &json!({"query": "q", "texts": []}),
        StatusCode::BAD_REQUEST,
        "bad_request",
        "'texts' is empty",
    );
    expect_error(
        &server,
        "/v1/rerank",
        &json!({"query": "q", "documents": []}),
        StatusCode::BAD_REQUEST,
        "bad_request",
        "'documents' is empty",
    );
    // 413: more texts than max_client_batch_size.
    expect_error(
        &server,
        "/rerank",
        &json!({"query": "q", "texts": ["a", "b", "c", "d", "e"]}),
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "max_client_batch_size 4",
    );
    // 422: over max_length with truncation off; truncated by default. The model's limit is 512.
    let long = "word ".repeat(700);
    expect_error(
        &server,
        "/rerank",
        &json!({"query": "q", "texts": [long], "truncate": false}),
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
        "max_length 512",
    );
    // 404: unknown model, unknown route.
    expect_error(
        &server,
        "/rerank",
        &json!({"query": "q", "texts": ["a"], "model": "nope"}),
        StatusCode::NOT_FOUND,
        "not_found",
        "unknown model 'nope'",
    );
    let r = client().get(server.url("/nowhere")).send().unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_envelope(&r.json().unwrap(), "not_found");
    // 405: wrong method.
    let r = client().get(server.url("/rerank")).send().unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(assert_envelope(&r.json().unwrap(), "method_not_allowed").contains("use POST"));
    // 500: a failed batch fails its own request only (pairs over 64 tokens fail here); the
    // short request after it is scored.
    expect_error(
        &server,
        "/rerank",
        &json!({"query": "q", "texts": ["word ".repeat(100)]}),
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "injected failure",
    );
    let (s, _) = post(
        &server,
        "/rerank",
        &json!({"query": "q", "texts": ["short"]}),
    );
    assert_eq!(s, StatusCode::OK);
}

#[test]
fn truncation_direction_keeps_the_end_asked_for() {
    let server = TestServer::start(
        settings(),
        EngineConfig {
            models: vec![ModelSpec {
                threads: Some(1),
                max_length: Some(16),
                ..ModelSpec::new(demo())
            }],
            tokenizer_pool: TokenizerPoolConfig::default(),
            batching: BatchingConfig::default(),
        },
        None,
    );
    // 16 tokens: [CLS] rust [SEP] + 12 passage tokens + [SEP]. Every word is one token and the
    // units are two tokens long, so the 12 kept are "rust fast" x6 from the head or
    // "paris france" x6 from the tail.
    let scorer = Scorer::load_default(&demo(), Some(16)).unwrap();
    let alone = |passage: String| scorer.score(&[Pair::new("rust", passage)], 1).unwrap()[0];
    let head = alone("rust fast ".repeat(10));
    let tail = alone("paris france ".repeat(10));
    assert!(
        (head - tail).abs() > 1e-3,
        "the two ends score apart: {head} {tail}"
    );
    let text = format!("{}{}", "rust fast ".repeat(10), "paris france ".repeat(10));
    let score = |body: Value| {
        let (s, v) = post(&server, "/rerank", &body);
        assert_eq!(s, StatusCode::OK, "{v}");
        v[0]["score"].as_f64().unwrap() as f32
    };
    let right = score(
        json!({"query": "rust", "texts": [text], "raw_scores": true, "truncation_direction": "Right"}),
    );
    let left = score(
        json!({"query": "rust", "texts": [text], "raw_scores": true, "truncation_direction": "Left"}),
    );
    let default = score(json!({"query": "rust", "texts": [text], "raw_scores": true}));
    assert!(
        (right - head).abs() < 1e-5,
        "right keeps the head: {right} vs {head}"
    );
    assert!(
        (left - tail).abs() < 1e-5,
        "left keeps the tail: {left} vs {tail}"
    );
    assert!(
        (default - right).abs() < 1e-6,
        "the demo model truncates on the right"
    );
    expect_error(
        &server,
        "/rerank",
        &json!({"query": "rust", "texts": [text], "truncate": false}),
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
        "max_length 16",
    );
}

#[test]
fn overload_is_answered_with_429_and_the_server_keeps_serving() {
    let server = TestServer::start(
        settings(),
        EngineConfig {
            tokenizer_pool: TokenizerPoolConfig {
                queue_capacity: 1,
                ..TokenizerPoolConfig::default()
            },
            ..engine_config(BatchingConfig {
                enabled: false,
                queue_capacity: 1,
                ..BatchingConfig::default()
            })
        },
        Some(test_backend(
            Duration::from_millis(300),
            512,
            Duration::ZERO,
        )),
    );
    let body = json!({"query": "q", "texts": ["a short text"]});
    let results: Vec<(StatusCode, Option<String>, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|_| s.spawn(|| post_rerank(&server, &body)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = results.iter().filter(|r| r.0 == StatusCode::OK).count();
    let overloaded: Vec<_> = results
        .iter()
        .filter(|r| r.0 == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(ok + overloaded.len(), 16, "only 200 or 429: {results:?}");
    assert!(
        ok >= 1 && !overloaded.is_empty(),
        "{ok} ok, {} 429",
        overloaded.len()
    );
    for (_, retry, v) in &overloaded {
        assert_eq!(retry.as_deref(), Some("1"));
        assert!(assert_envelope(v, "overloaded").contains("retry later"));
    }
    // Still serving.
    let (s, _) = post(&server, "/rerank", &body);
    assert_eq!(s, StatusCode::OK);
    let r = client().get(server.url("/health")).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[test]
fn shutdown_answers_every_accepted_request() {
    // Batching off: the 12 requests take 12 forward passes of 200 ms, one after another.
    let server = TestServer::start(
        settings(),
        engine_config(BatchingConfig {
            enabled: false,
            ..BatchingConfig::default()
        }),
        Some(test_backend(
            Duration::from_millis(200),
            512,
            Duration::ZERO,
        )),
    );
    let url = server.url("/rerank");
    let body = json!({"query": "q", "texts": ["a short text", "another"]});
    let clients: Vec<_> = (0..12)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            std::thread::spawn(move || {
                client()
                    .post(url)
                    .json(&body)
                    .send()
                    .map(|r| r.status())
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    // Let them arrive, then stop while most are still queued behind the slow backend.
    std::thread::sleep(Duration::from_millis(400));
    let stopping = Instant::now();
    let summary = server.stop();
    assert!(
        stopping.elapsed() > Duration::from_secs(1),
        "the stop waited for the requests in flight ({:?})",
        stopping.elapsed()
    );
    let statuses: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let ok = statuses
        .iter()
        .filter(|s| matches!(s, Ok(StatusCode::OK)))
        .count();
    assert_eq!(
        ok, 12,
        "every request was accepted and answered: {statuses:?}"
    );
    assert_eq!(summary.accepted, 12);
    assert_eq!(summary.answered, 12);
}

#[test]
fn health_is_503_while_loading_then_200() {
    let server = TestServer::start_loading(
        settings(),
        engine_config(BatchingConfig::default()),
        Some(test_backend(
            Duration::ZERO,
            512,
            Duration::from_millis(1500),
        )),
    );
    let r = client().get(server.url("/health")).send().unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json::<Value>().unwrap()["status"], "loading");
    let (s, v) = post(&server, "/rerank", &json!({"query": "q", "texts": ["a"]}));
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_envelope(&v, "unavailable");
    server.wait_ready();
    let r = client().get(server.url("/health")).send().unwrap();
    assert_eq!(r.json::<Value>().unwrap()["status"], "ok");
}

#[test]
fn the_api_key_guards_every_route_but_health_and_metrics() {
    let server = TestServer::start(
        ServerSettings {
            api_key: Some("s3cret".into()),
            ..settings()
        },
        engine_config(BatchingConfig::default()),
        None,
    );
    let body = json!({"query": "q", "texts": ["a"]});
    let r = client()
        .post(server.url("/rerank"))
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert!(assert_envelope(&r.json().unwrap(), "unauthorized").contains("Authorization: Bearer"));
    let r = client()
        .post(server.url("/v1/rerank"))
        .bearer_auth("wrong")
        .json(&json!({"query": "q", "documents": ["a"]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    for path in ["/info", "/openapi.json"] {
        let r = client().get(server.url(path)).send().unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    for path in ["/health", "/metrics"] {
        let r = client().get(server.url(path)).send().unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    let r = client()
        .post(server.url("/rerank"))
        .bearer_auth("s3cret")
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = client()
        .get(server.url("/info"))
        .bearer_auth("s3cret")
        .send()
        .unwrap();
    let info: Value = r.json().unwrap();
    assert_eq!(info["api_key_required"], true);
}

/// Checks `value` against an OpenAPI 3.1 schema (the subset utoipa writes): types, `$ref`,
/// `required`, `properties`, `items`, `oneOf`/`anyOf`, `enum`; unknown properties are errors.
fn check_schema(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/components/schemas/");
        return check_schema(doc, &doc["components"]["schemas"][name], value, at);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema[key].as_array() {
            let ok = options
                .iter()
                .filter(|o| check_schema(doc, o, value, at).is_ok())
                .count();
            return if ok >= 1 {
                Ok(())
            } else {
                Err(format!("{at}: {value} matches no option of {schema}"))
            };
        }
    }
    if let Some(options) = schema["enum"].as_array() {
        if !options.contains(value) {
            return Err(format!("{at}: {value} is not one of {options:?}"));
        }
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if !types.is_empty() {
        let actual = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_u64() || n.is_i64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        let ok = types.contains(&actual) || (actual == "integer" && types.contains(&"number"));
        if !ok {
            return Err(format!(
                "{at}: {value} is {actual}, the schema says {types:?}"
            ));
        }
    }
    if let Value::Object(obj) = value {
        let props = schema["properties"].as_object();
        for req in schema["required"].as_array().into_iter().flatten() {
            let req = req.as_str().unwrap();
            if !obj.contains_key(req) {
                return Err(format!("{at}: required '{req}' is missing from {value}"));
            }
        }
        if let Some(props) = props {
            for (k, v) in obj {
                let Some(s) = props.get(k) else {
                    return Err(format!("{at}: '{k}' is not in the schema"));
                };
                check_schema(doc, s, v, &format!("{at}.{k}"))?;
            }
        }
    }
    if let (Value::Array(items), Some(s)) = (value, schema.get("items")) {
        for (i, v) in items.iter().enumerate() {
            check_schema(doc, s, v, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

#[test]
fn the_openapi_document_describes_the_real_responses() {
    let server = TestServer::start(settings(), engine_config(BatchingConfig::default()), None);
    let doc: Value = client()
        .get(server.url("/openapi.json"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/rerank", "post"),
        ("/v1/rerank", "post"),
        ("/health", "get"),
        ("/info", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(
            paths[path].get(method).is_some(),
            "{method} {path} is documented"
        );
    }
    let response_schema = |path: &str, method: &str, status: &str| {
        doc["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
            .clone()
    };
    let request_schema = |path: &str| {
        doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"].clone()
    };
    let cases = [
        (
            "/rerank",
            json!({"query": "q", "texts": ["a", "b"], "return_text": true, "raw_scores": false,
                   "truncate": true, "truncation_direction": "Right"}),
        ),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": ["a", {"text": "b"}], "top_n": 1, "return_documents": true}),
        ),
    ];
    for (path, body) in &cases {
        check_schema(&doc, &request_schema(path), body, "request").unwrap();
        let (s, v) = post(&server, path, body);
        assert_eq!(s, StatusCode::OK);
        check_schema(&doc, &response_schema(path, "post", "200"), &v, path).unwrap();
        let (s, v) = post(&server, path, &json!({"query": 3}));
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        check_schema(&doc, &response_schema(path, "post", "422"), &v, path).unwrap();
    }
    for path in ["/info", "/health"] {
        let v: Value = client()
            .get(server.url(path))
            .send()
            .unwrap()
            .json()
            .unwrap();
        check_schema(&doc, &response_schema(path, "get", "200"), &v, path).unwrap();
    }
    // The checker does catch a mismatch.
    let bad = json!([{"index": "zero", "score": 1.0}]);
    assert!(check_schema(&doc, &response_schema("/rerank", "post", "200"), &bad, "x").is_err());
}

#[test]
fn metrics_name_every_series_the_docs_promise() {
    let server = TestServer::start(settings(), engine_config(BatchingConfig::default()), None);
    let (s, _) = post(
        &server,
        "/rerank",
        &json!({"query": "q", "texts": ["a", "b"]}),
    );
    assert_eq!(s, StatusCode::OK);
    let (s, _) = post(&server, "/rerank", &json!({"query": "q", "texts": []}));
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let r = client().get(server.url("/metrics")).send().unwrap();
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = r.text().unwrap();
    for (name, _) in xbench::server::telemetry::METRICS {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} is missing from /metrics:\n{text}"
        );
    }
    assert!(text.contains("xbench_requests_total{route=\"/rerank\",status=\"200\"}"));
    assert!(text.contains("xbench_requests_total{route=\"/rerank\",status=\"400\"}"));
    assert!(text.contains("xbench_request_duration_seconds_bucket{route=\"/rerank\""));
    assert!(text.contains("stage=\"inference\""));
    assert!(text.contains("instance=\"0\""));
}

/// Kills the child when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real Prometheus (Debian's package; ./scripts/install_prometheus.sh) scrapes the server, and
/// xbench's series come back through Prometheus' own query API.
#[test]
fn a_real_prometheus_scrapes_the_server() {
    let server = TestServer::start(settings(), engine_config(BatchingConfig::default()), None);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: xbench\n    static_configs:\n      - targets: [\"{}\"]\n",
            server.addr()
        ),
    )
    .unwrap();
    let port = free_port();
    let prometheus = std::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let _prometheus = Child(prometheus.unwrap_or_else(|e| {
        panic!("cannot run prometheus ({e}); install it with ./scripts/install_prometheus.sh")
    }));
    let (s, _) = post(
        &server,
        "/rerank",
        &json!({"query": "q", "texts": ["a", "b", "c"]}),
    );
    assert_eq!(s, StatusCode::OK);
    let query = |q: &str| -> Option<Value> {
        let r = client()
            .get(format!("http://127.0.0.1:{port}/api/v1/query"))
            .query(&[("query", q)])
            .send()
            .ok()?;
        let v: Value = r.json().ok()?;
        let result = v["data"]["result"].as_array()?.clone();
        (!result.is_empty()).then(|| Value::Array(result))
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let found = loop {
        if let Some(v) = query("xbench_pairs_total") {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus found no xbench series in 90 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(found[0]["metric"]["model"], demo());
    // At least this test's 3 pairs (the tests of this binary share one process-wide recorder).
    let pairs: f64 = found[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(pairs >= 3.0, "{found}");
    let up = query("up{job=\"xbench\"}").unwrap();
    assert_eq!(up[0]["value"][1], "1");
    let buckets = query("xbench_request_duration_seconds_bucket").unwrap();
    assert!(buckets.as_array().unwrap().len() > 1);
}

/// Every query of the Grafana dashboard names metrics the server exports.
#[test]
fn the_dashboard_queries_only_exported_metrics() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("observability/grafana/dashboards/xbench.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(dashboard["uid"], "xbench");
    let mut exprs = Vec::new();
    fn collect(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", Value::String(e)) => out.push(e.clone()),
                        _ => collect(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    collect(&dashboard, &mut exprs);
    assert!(exprs.len() >= 8, "{exprs:?}");
    let server = TestServer::start(settings(), engine_config(BatchingConfig::default()), None);
    let (s, _) = post(&server, "/rerank", &json!({"query": "q", "texts": ["a"]}));
    assert_eq!(s, StatusCode::OK);
    let exported = client()
        .get(server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let exported: std::collections::HashSet<&str> = exported
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    for e in &exprs {
        let mut rest = e.as_str();
        let mut named = 0;
        while let Some(at) = rest.find("xbench_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                exported.contains(name.as_str()),
                "'{name}' in '{e}' is not exported"
            );
            named += 1;
            rest = &rest[at + name.len()..];
        }
        assert!(named > 0, "'{e}' names no xbench metric");
    }
}

/// The binary: SIGTERM during load answers every accepted request, then exits 0.
#[cfg(unix)]
#[test]
fn sigterm_drains_the_requests_in_flight_and_exits_0() {
    let (child, server_url, reader) =
        spawn_serve(&["server.port=0".as_ref(), "batching.enabled=false".as_ref()]);
    let passages: Vec<String> = sample(8).into_iter().map(|p| p.passage).collect();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (url, body) = (
                format!("{server_url}/rerank"),
                json!({"query": "how long should you rest a steak?", "texts": passages}),
            );
            std::thread::spawn(move || client().post(url).json(&body).send().map(|r| r.status()))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let pid = child.0.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    for c in clients {
        assert_eq!(c.join().unwrap().unwrap(), StatusCode::OK);
    }
    let mut child = child;
    let status = child.0.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    let log = reader.join().unwrap().join("\n");
    assert!(
        log.contains("accepted=4") && log.contains("answered=4"),
        "{log}"
    );
}

/// `xbench bench --target` measures a running server over HTTP and labels the row from `/info`.
#[test]
fn bench_target_measures_the_server_over_http() {
    let server = TestServer::start(settings(), engine_config(BatchingConfig::default()), None);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xbench"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["bench", "--target", &server.url(""), "--concurrency", "2"])
        .args([
            "--pairs-per-request",
            "2",
            "--duration",
            "0",
            "--min-requests",
            "6",
        ])
        .args(["--warmup", "1", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(row["requests"], 6, "{row}");
    assert_eq!(row["errors"], json!({}), "{row}");
    assert_eq!(row["model"], demo());
    assert_eq!(row["tokenizer_workers"], 1);
    assert!(
        row["stages_ms"]["inference"].as_f64().unwrap() > 0.0,
        "{row}"
    );
    let summary = server.stop();
    assert_eq!(summary.accepted, 7, "1 warm-up + 6 measured");
    // Another stage than full is refused with the way out.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xbench"))
        .args([
            "bench",
            "--target",
            "http://127.0.0.1:9",
            "--stage",
            "infer",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--target (config key experiment.target)")
            && stderr.contains("set experiment.stage to full"),
        "{stderr}"
    );
}

/// An experiment cell with `target: self` starts xbench's server, measures it over HTTP, stops it.
#[test]
fn run_measures_a_cell_through_its_own_server() {
    let out = tempfile::tempdir().unwrap();
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_xbench"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["run", "11_http_vs_in_process", "experiment.batch_sizes=[2]"])
        .args([
            // The cell's own server needs this key, and the results must not hold it.
            "server.api_key=xb-run-key-31d7",
            "experiment.min_requests=3",
            "experiment.duration_s=0",
            "experiment.warmup=1",
        ])
        .arg("--output-dir")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let text =
        std::fs::read_to_string(out.path().join("11_http_vs_in_process_results.json")).unwrap();
    assert!(
        !text.contains("xb-run-key-31d7")
            && !String::from_utf8_lossy(&run.stderr).contains("xb-run-key-31d7"),
        "the results file or the log holds the API key"
    );
    let results: Value = serde_json::from_str(&text).unwrap();
    let cells = results["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 2);
    assert_eq!(cells[0]["config"]["experiment"]["target"], Value::Null);
    assert_eq!(cells[1]["config"]["experiment"]["target"], "self");
    for c in cells {
        assert_eq!(c["row"]["requests"], 3, "{c}");
        assert_eq!(c["row"]["errors"], json!({}), "{c}");
    }
    // Batches are counted both ways (over HTTP, from the cell's own server).
    for c in cells {
        assert!(c["row"]["mean_batch_size"].is_number(), "{c}");
        assert!(c["row"]["padding_efficiency"].is_number(), "{c}");
    }
}

/// Spawns `xbench serve ARGS`; returns the process, its address (from its log) and the thread
/// that collects its log lines until it exits.
fn spawn_serve(args: &[&std::ffi::OsStr]) -> (Child, String, std::thread::JoinHandle<Vec<String>>) {
    spawn_serve_with(args, &[("RUST_LOG", "xbench=info")])
}

/// [`spawn_serve`] with these environment variables.
fn spawn_serve_with(
    args: &[&std::ffi::OsStr],
    envs: &[(&str, &str)],
) -> (Child, String, std::thread::JoinHandle<Vec<String>>) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_xbench"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("serve")
        .args(args)
        .envs(envs.iter().copied())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let child = Child(child);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line.clone());
            all.push(line);
        }
        all
    });
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("xbench serve logs its address");
        if let Some(at) = line.find("listening on http://") {
            let rest = &line[at + "listening on http://".len()..];
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let url = format!("http://{addr}");
    let deadline = Instant::now() + Duration::from_secs(120);
    while client()
        .get(format!("{url}/health"))
        .send()
        .map_or(true, |r| r.status() != StatusCode::OK)
    {
        assert!(Instant::now() < deadline, "not ready in 120 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    (child, url, reader)
}

/// `xbench serve --from-results` serves the configuration of the file's best cell.
#[test]
fn serve_from_results_serves_the_best_cells_config() {
    let show = |overrides: &[&str]| -> Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_xbench"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["config", "show"])
            .args(overrides)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_yaml_ng::from_slice(&out.stdout).unwrap()
    };
    let cell = |qps: f64, config: Value| json!({"row": {"qps": qps, "latency_ms": {"p99": 10.0}, "requests": 500}, "config": config});
    let results = json!({"p99_budget_ms": null, "cells": [
        cell(5.0, show(&["server.port=0", "batching.max_batch_size=5"])),
        cell(9.0, show(&["server.port=0", "batching.max_batch_size=7"])),
        cell(7.0, show(&["server.port=0", "batching.max_batch_size=6"])),
    ]});
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x_results.json");
    std::fs::write(&file, results.to_string()).unwrap();
    let (child, url, reader) = spawn_serve(&["--from-results".as_ref(), file.as_os_str()]);
    let info: Value = client()
        .get(format!("{url}/info"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(info["limits"]["max_batch_size"], 7, "{info}");
    drop(child);
    let log = reader.join().unwrap().join("\n");
    assert!(log.contains("serving cell 2 of 3"), "{log}");
}

/// A request whose deadline passes while it waits behind a slow batch is answered 503
/// `deadline_exceeded` with Retry-After at its deadline, not when the batch ends; the server's
/// `request_timeout_ms` applies to requests without one; and the server keeps serving.
#[test]
fn a_request_past_its_deadline_is_answered_503_and_the_server_keeps_serving() {
    let server = TestServer::start(
        ServerSettings {
            request_timeout_ms: Some(150),
            ..settings()
        },
        engine_config(BatchingConfig {
            enabled: false,
            ..BatchingConfig::default()
        }),
        Some(test_backend(
            Duration::from_millis(600),
            512,
            Duration::ZERO,
        )),
    );
    let send = |body: Value| {
        let started = Instant::now();
        let (status, retry, v) = post_rerank(&server, &body);
        (status, retry, v, started.elapsed())
    };
    std::thread::scope(|s| {
        // The first request holds the only instance for 600 ms (its own deadline is long enough).
        let first = s.spawn(|| send(json!({"query": "q", "texts": ["a"], "timeout_ms": 5000})));
        std::thread::sleep(Duration::from_millis(100));
        // Behind it: one with its own 100 ms deadline, one with the server's 150 ms.
        let own = s.spawn(|| send(json!({"query": "q", "texts": ["b"], "timeout_ms": 100})));
        let default = s.spawn(|| send(json!({"query": "q", "texts": ["c"]})));
        for (h, ms) in [(own, 100u64), (default, 150)] {
            let (status, retry, v, took) = h.join().unwrap();
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
            assert_eq!(retry.as_deref(), Some("1"));
            let message = assert_envelope(&v, "deadline_exceeded");
            assert!(message.contains(&format!("{ms} ms")), "{message}");
            assert!(took < Duration::from_millis(450), "answered after {took:?}");
        }
        let (status, _, v, _) = first.join().unwrap();
        assert_eq!(status, StatusCode::OK, "{v}");
    });
    let (status, _, v, _) = send(json!({"query": "q", "texts": ["d"], "timeout_ms": 5000}));
    assert_eq!(status, StatusCode::OK, "{v}");
}

/// POST /rerank: status, Retry-After and body.
fn post_rerank(server: &TestServer, body: &Value) -> (StatusCode, Option<String>, Value) {
    let r = client()
        .post(server.url("/rerank"))
        .json(body)
        .send()
        .unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (r.status(), retry, r.json::<Value>().unwrap())
}

/// Resident set size of this process, in MB (Linux).
fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Hostile bodies each get their documented 4xx (or are scored, for NUL bytes), without a memory
/// blow-up, and the server goes on serving.
#[test]
fn hostile_inputs_get_their_documented_answers() {
    let server = TestServer::start_alone(settings(), engine_config(BatchingConfig::default()));
    let before = rss_mb();
    let send = |body: Vec<u8>| {
        let r = client()
            .post(server.url("/rerank"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap();
        let status = r.status();
        (status, r.json::<Value>().unwrap())
    };
    // 10 MB of text: over the 2 MB body limit, refused from the Content-Length alone, before a
    // byte of the body is read (the client here sends none).
    {
        use std::io::{Read, Write};
        let url = server.url("/rerank");
        let addr = url
            .trim_start_matches("http://")
            .trim_end_matches("/rerank");
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(
                b"POST /rerank HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n",
            )
            .unwrap();
        let mut answer = vec![0u8; 4096];
        let n = stream.read(&mut answer).unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("payload_too_large"), "{answer}");
    }
    // 100,000 texts: under the byte limit, over max_client_batch_size.
    let many = json!({"query": "q", "texts": vec!["a"; 100_000]}).to_string();
    let (s, v) = send(many.into_bytes());
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert!(assert_envelope(&v, "payload_too_large").contains("max_client_batch_size"));
    // JSON nested 100,000 deep, no stack overflow: where a field's type is known, the wrong shape
    // is found at the first level (422); an unknown field is skipped without recursing, as TEI
    // ignores unknown fields (200).
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (s, v) = send(deep.into_bytes());
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_envelope(&v, "validation");
    let deep_field = format!(
        "{{\"query\": \"q\", \"texts\": {}\"a\"{}}}",
        "[".repeat(50_000),
        "]".repeat(50_000)
    );
    let (s, v) = send(deep_field.into_bytes());
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(assert_envelope(&v, "validation").contains("texts"));
    let deep_unknown = format!(
        "{{\"query\": \"q\", \"texts\": [\"a\"], \"extra\": {}1{}}}",
        "[".repeat(50_000),
        "]".repeat(50_000)
    );
    let (s, v) = send(deep_unknown.into_bytes());
    assert_eq!(s, StatusCode::OK, "{v}");
    // Invalid UTF-8 inside a string.
    let mut bad = b"{\"query\": \"q\", \"texts\": [\"ab".to_vec();
    bad.extend_from_slice(&[0xff, 0xfe, 0xc3]);
    bad.extend_from_slice(b"\"]}");
    let (s, v) = send(bad);
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(assert_envelope(&v, "bad_request").contains("not valid JSON"));
    // NUL bytes and control characters are text like any other: scored.
    let nul = json!({"query": "q\u{0}", "texts": ["a\u{0}b", "\u{1}\u{7f}"]}).to_string();
    let (s, v) = send(nul.into_bytes());
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v.as_array().map(Vec::len), Some(2));
    let grown = rss_mb() - before;
    assert!(grown < 150.0, "RSS grew {grown:.0} MB");
    // Still serving.
    let (s, v) = post(&server, "/rerank", &json!({"query": "q", "texts": ["a"]}));
    assert_eq!(s, StatusCode::OK, "{v}");
}

/// `max_length` 0 is refused at start with a message that names it; 100,000 is capped at the
/// model's 512 positions.
#[test]
fn extreme_max_length_is_refused_or_capped() {
    let _hold = shared();
    let start = |max_length| {
        Engine::start(&EngineConfig {
            models: vec![ModelSpec {
                max_length: Some(max_length),
                threads: Some(1),
                ..ModelSpec::new(demo())
            }],
            tokenizer_pool: TokenizerPoolConfig::default(),
            batching: BatchingConfig::default(),
        })
    };
    let err = start(0).err().expect("max_length 0 must be refused");
    let message = format!("{:#}", anyhow::Error::new(err));
    assert!(message.contains("max_length 0"), "{message}");
    let engine = start(100_000).unwrap();
    assert_eq!(engine.tokenizer(None).unwrap().max_length(), 512);
}

/// The binary with a model that cannot load: it stops with a message naming the model and what is
/// wrong, and exits non-zero, rather than serving half (or 503 forever).
#[test]
fn a_model_that_fails_to_load_stops_the_server_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        let from = Path::new(&demo()).join(f);
        if from.is_file() {
            std::fs::copy(from, dir.path().join(f)).unwrap();
        }
    }
    std::fs::write(
        dir.path().join("model.safetensors"),
        b"not a safetensors file",
    )
    .unwrap();
    let (status, stderr) = serve_until_exit(&[
        "server.port=0".into(),
        format!("model_pool.instances.0.name={}", dir.path().display()).into(),
    ]);
    assert!(!status.success(), "exit status {status}");
    assert!(
        stderr.contains("cannot load the weights")
            && stderr.contains(&dir.path().display().to_string()),
        "{stderr}"
    );
}

/// Runs `xbench serve ARGS`, which must exit by itself within 60 s; its status and stderr.
fn serve_until_exit(args: &[std::ffi::OsString]) -> (std::process::ExitStatus, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_xbench"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("serve")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("xbench serve {args:?} kept running; it should have stopped with an error");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

/// A client that disconnects while its request waits gives its queue place back at once (the
/// server notices the closed socket and drops the request), and its pairs are never computed.
#[test]
fn a_client_that_disconnects_frees_its_queue_place_and_is_not_computed() {
    let server = TestServer::start(
        settings(),
        engine_config(BatchingConfig {
            enabled: false,
            queue_capacity: 1,
            ..BatchingConfig::default()
        }),
        Some(test_backend(
            Duration::from_millis(800),
            512,
            Duration::ZERO,
        )),
    );
    let stats = server.0.as_ref().unwrap().stats_handle();
    let before = stats.batch_stats().unwrap();
    let body = json!({"query": "q", "texts": ["a short text"]});
    let send = || {
        let (url, body) = (server.url("/rerank"), body.clone());
        std::thread::spawn(move || client().post(url).json(&body).send().map(|r| r.status()))
    };
    // A request written on a raw socket, which is closed when dropped.
    let raw = || {
        use std::io::Write;
        let mut socket = std::net::TcpStream::connect(server.addr()).unwrap();
        let text = body.to_string();
        write!(
            socket,
            "POST /rerank HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        )
        .unwrap();
        socket
    };
    let settle = || std::thread::sleep(Duration::from_millis(150));
    let first = send(); // computes for 800 ms
    settle();
    let second = raw(); // taken by the batcher, waits for the instance
    settle();
    let third = raw(); // holds the queue's one place
    settle();
    let (status, _, v) = post_rerank(&server, &body);
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{v}");
    drop(second);
    drop(third);
    settle();
    let fourth = send(); // the place is free again
    assert_eq!(first.join().unwrap().unwrap(), StatusCode::OK);
    assert_eq!(fourth.join().unwrap().unwrap(), StatusCode::OK);
    let computed = stats.batch_stats().unwrap().since(&before);
    assert_eq!(
        computed.pairs, 2,
        "only the two requests whose clients waited are computed"
    );
    let summary = server.stop();
    assert_eq!(
        (summary.accepted, summary.answered, summary.left),
        (5, 3, 2)
    );
}

/// The API key never reaches the log, at any level, nor an answer; results files and
/// `xbench config show` store it redacted, and serving a results file whose cell had a key asks
/// for the key instead of serving without one.
#[cfg(unix)]
#[test]
fn the_api_key_is_never_logged() {
    const KEY: &str = "xb-key-7c2f9d1e5a";
    const WRONG: &str = "xb-wrong-4b8e61";
    let (child, url, reader) = spawn_serve_with(
        &["server.port=0".as_ref()],
        &[("XBENCH_API_KEY", KEY), ("RUST_LOG", "trace")],
    );
    let body = json!({"query": "q", "texts": ["a"], "documents": ["a"]});
    let mut answers = String::new();
    for key in [Some(KEY), Some(WRONG), None] {
        for path in ["/rerank", "/v1/rerank", "/info", "/metrics", "/nope"] {
            let mut r = if path.ends_with("rerank") {
                client().post(format!("{url}{path}")).json(&body)
            } else {
                client().get(format!("{url}{path}"))
            };
            if let Some(k) = key {
                r = r.bearer_auth(k);
            }
            let r = r.send().unwrap();
            answers.push_str(&format!("{:?}", r.headers()));
            answers.push_str(&r.text().unwrap());
        }
    }
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap()
        .success());
    let log = reader.join().unwrap().join("\n");
    drop(child);
    assert!(
        log.contains("resolved config") && log.contains("<redacted>"),
        "{log}"
    );
    for secret in [KEY, WRONG] {
        assert!(!log.contains(secret), "the log holds a key");
        assert!(!answers.contains(secret), "an answer holds a key");
    }
    // config show, and a results file's config, keep the key redacted.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xbench"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "config",
            "show",
            "server.port=0",
            &format!("server.api_key={KEY}"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        !shown.contains(KEY) && shown.contains("<redacted>"),
        "{shown}"
    );
    let config: Value = serde_yaml_ng::from_str(&shown).unwrap();
    let results = json!({"p99_budget_ms": null, "cells": [
        {"row": {"qps": 5.0, "latency_ms": {"p99": 10.0}, "requests": 500}, "config": config}
    ]});
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x_results.json");
    std::fs::write(&file, results.to_string()).unwrap();
    let (status, stderr) = serve_until_exit(&["--from-results".into(), file.into()]);
    assert!(!status.success());
    assert!(stderr.contains("--api-key"), "{stderr}");
}

/// A model with more than one label (the tiny DistilBERT's irrelevant / partial / relevant): each
/// result carries every label's logit; the score is the last label's softmax probability (raw:
/// its log-odds against the others), on both APIs; `/info` names the labels.
#[test]
fn multi_label_models_answer_every_logit_and_score_their_last_label() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny-distilbert");
    let config = EngineConfig {
        models: vec![ModelSpec {
            threads: Some(1),
            ..ModelSpec::new(model.to_str().unwrap())
        }],
        tokenizer_pool: TokenizerPoolConfig::default(),
        batching: BatchingConfig::default(),
    };
    let server = TestServer::start(settings(), config, None);
    let texts = [
        "Rust is a systems programming language.",
        "The river runs to the sea.",
        "",
    ];
    let want = Scorer::load_default(model.to_str().unwrap(), None).unwrap();
    let (s, v) = post(
        &server,
        "/rerank",
        &json!({"query": "what is rust", "texts": texts, "raw_scores": true}),
    );
    assert_eq!(s, StatusCode::OK, "{v}");
    let raw = v.as_array().unwrap();
    assert_eq!(raw.len(), 3);
    let (_, v) = post(
        &server,
        "/rerank",
        &json!({"query": "what is rust", "texts": texts}),
    );
    let ranks = v.as_array().unwrap();
    for (r, p) in raw.iter().zip(ranks) {
        assert_eq!(r["index"], p["index"], "the same order raw or not");
        let logits: Vec<f32> = serde_json::from_value(p["logits"].clone()).unwrap();
        assert_eq!(logits.len(), 3, "{p}");
        let softmax = logits[2].exp() / logits.iter().map(|l| l.exp()).sum::<f32>();
        let score = p["score"].as_f64().unwrap() as f32;
        assert!((score - softmax).abs() <= 1e-5, "{p}");
        let log_odds = r["score"].as_f64().unwrap() as f32;
        assert!((sigmoid(log_odds) - softmax).abs() <= 1e-5, "{r}");
        let i = p["index"].as_u64().unwrap() as usize;
        let alone = want
            .score(&[Pair::new("what is rust", texts[i])], 1)
            .unwrap()[0];
        assert!((alone - log_odds).abs() <= 1e-5, "{alone} vs {log_odds}");
    }
    let scores: Vec<f64> = ranks.iter().map(|r| r["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");

    let (s, v) = post(
        &server,
        "/v1/rerank",
        &json!({"query": "what is rust", "documents": texts, "top_n": 2}),
    );
    assert_eq!(s, StatusCode::OK, "{v}");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for (c, p) in results.iter().zip(ranks) {
        assert_eq!(c["index"], p["index"]);
        assert_eq!(c["logits"], p["logits"]);
        let d = c["relevance_score"].as_f64().unwrap() - p["score"].as_f64().unwrap();
        assert!(d.abs() <= 1e-6, "{c} vs {p}");
    }

    let info: Value = client()
        .get(server.url("/info"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        info["models"][0]["labels"],
        json!(["irrelevant", "partial", "relevant"])
    );
    assert_eq!(
        info["models"][0]["architecture"],
        "DistilBertForSequenceClassification"
    );
    assert_eq!(info["models"][0]["precision"], "fp32");
    assert_eq!(info["models"][0]["backend"], "fused");
    server.stop();
}
