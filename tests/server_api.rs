//! The rerank APIs of the real server on 127.0.0.1:0, driven over HTTP: both APIs score as
//! `xbench score` does, every row of the status table, truncation, deadlines, hostile inputs, the
//! API key, multi-label models, and the OpenAPI document against the real responses.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use xbench::engine::{BatchingConfig, EngineConfig, ModelSpec, TokenizerPoolConfig};
use xbench::score::{sigmoid, Pair, Scorer};
use xbench::server::ServerSettings;

mod support;
use support::*;

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

/// A server with small limits (4 texts, 4096-byte bodies) whose model fails any batch holding a
/// pair over 64 tokens: every error case is in reach.
fn limited_server() -> TestServer {
    TestServer::start(
        ServerSettings {
            max_client_batch_size: 4,
            payload_limit_bytes: 4096,
            ..settings()
        },
        engine_config(BatchingConfig::default()),
        Some(test_backend(Duration::ZERO, 64, Duration::ZERO)),
    )
}

#[test]
fn every_row_of_the_status_table() {
    let server = limited_server();
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
    // TEI's route answers in TEI's vocabulary (`ApiError::tei`), Cohere's in xbench's.
    let kind = |path: &str, xbench: &'static str| {
        if path == "/rerank" {
            "Validation"
        } else {
            xbench
        }
    };
    for path in ["/rerank", "/v1/rerank"] {
        // 400: malformed JSON.
        let (s, v, _) = raw(path, json_ct, "{\"query\": \"q\", ");
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(assert_envelope(&v, kind(path, "bad_request")).contains("not valid JSON"));
        // 415: not sent as JSON.
        let (s, v, _) = raw(path, None, "{}");
        assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(
            assert_envelope(&v, kind(path, "unsupported_media_type")).contains("application/json")
        );
        // 413: body over the payload limit.
        let big =
            json!({"query": "q", "texts": ["x".repeat(5000)], "documents": ["x".repeat(5000)]});
        let (s, v, _) = raw(path, json_ct, &big.to_string());
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(assert_envelope(&v, kind(path, "payload_too_large")).contains("4096"));
    }
    // 422: wrong types and missing fields name the field.
    expect_error(
        &server,
        "/rerank",
        &json!({"query": "q", "texts": "one"}),
        StatusCode::UNPROCESSABLE_ENTITY,
        "Validation",
        "texts",
    );
    expect_error(
        &server,
        "/rerank",
        &json!({"texts": ["a"]}),
        StatusCode::UNPROCESSABLE_ENTITY,
        "Validation",
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
            if path == "/rerank" {
                "Validation"
            } else {
                "validation"
            },
            "timeout_ms must be at least 1",
        );
    }
    // 400: nothing to rank.
    expect_error(
        &server,
        "/rerank",
        &json!({"query": "q", "texts": []}),
        StatusCode::BAD_REQUEST,
        "Empty",
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
    // More texts than max_client_batch_size: TEI's 422 on /rerank, 413 on Cohere's route.
    expect_error(
        &server,
        "/rerank",
        &json!({"query": "q", "texts": ["a", "b", "c", "d", "e"]}),
        StatusCode::UNPROCESSABLE_ENTITY,
        "Validation",
        "max_client_batch_size 4",
    );
    expect_error(
        &server,
        "/v1/rerank",
        &json!({"query": "q", "documents": ["a", "b", "c", "d", "e"]}),
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
        "Validation",
        "max_length 512",
    );
    // 404: unknown model, unknown route.
    expect_error(
        &server,
        "/rerank",
        &json!({"query": "q", "texts": ["a"], "model": "nope"}),
        StatusCode::NOT_FOUND,
        "Validation",
        "unknown model 'nope'",
    );
    let r = client().get(server.url("/nowhere")).send().unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_envelope(&r.json().unwrap(), "not_found");
    // 405: wrong method.
    let r = client().get(server.url("/rerank")).send().unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(assert_envelope(&r.json().unwrap(), "Validation").contains("use POST"));
    let r = client().get(server.url("/v1/rerank")).send().unwrap();
    assert!(assert_envelope(&r.json().unwrap(), "method_not_allowed").contains("use POST"));
    // 500: a failed batch fails its own request only (pairs over 64 tokens fail here); the
    // short request after it is scored.
    expect_error(
        &server,
        "/rerank",
        &json!({"query": "q", "texts": ["word ".repeat(100)]}),
        StatusCode::FAILED_DEPENDENCY,
        "Backend",
        "injected failure",
    );
    expect_error(
        &server,
        "/v1/rerank",
        &json!({"query": "q", "documents": ["word ".repeat(100)]}),
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
        "Validation",
        "max_length 16",
    );
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
    // TEI's route in TEI's vocabulary, the others in xbench's.
    assert!(assert_envelope(&r.json().unwrap(), "Validation").contains("Authorization: Bearer"));
    for path in ["/v1/rerank", "/v2/rerank", "/score"] {
        let r = client()
            .post(server.url(path))
            .bearer_auth("wrong")
            .json(&json!({"query": "q", "documents": ["a"], "model": demo(), "text_1": "q", "text_2": ["a"]}))
            .send()
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert!(assert_envelope(&r.json().unwrap(), "unauthorized").contains("wrong"));
    }
    for path in ["/info", "/openapi.json"] {
        let r = client().get(server.url(path)).send().unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    for path in ["/health", "/live", "/metrics"] {
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
        ("/v2/rerank", "post"),
        ("/score", "post"),
        ("/health", "get"),
        ("/live", "get"),
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
            json!({"query": "q", "documents": ["a", {"text": "b"}], "top_n": 1, "return_documents": true,
                   "long_documents": "chunk_max", "return_chunks": true}),
        ),
        (
            "/v2/rerank",
            json!({"model": demo(), "query": "q", "documents": ["a", "b"], "top_n": 1,
                   "max_tokens_per_doc": 16, "chunk_overlap_tokens": 4, "return_chunks": true}),
        ),
        ("/score", json!({"text_1": "q", "text_2": ["a", "b"]})),
        (
            "/score",
            json!({"text_1": ["q", "r"], "text_2": ["a", "b"]}),
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
    let v: Value = client()
        .get(server.url("/info"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    check_schema(&doc, &response_schema("/info", "get", "200"), &v, "/info").unwrap();
    // /health: 200 with an empty body, as TEI answers it (documented without content).
    let r = client().get(server.url("/health")).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(doc["paths"]["/health"]["get"]["responses"]["200"]["content"].is_null());
    assert_eq!(r.text().unwrap(), "");
    // The checker does catch a mismatch.
    let bad = json!([{"index": "zero", "score": 1.0}]);
    assert!(check_schema(&doc, &response_schema("/rerank", "post", "200"), &bad, "x").is_err());
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
    let send_v1 = |body: Value| {
        let started = Instant::now();
        let r = client()
            .post(server.url("/v1/rerank"))
            .json(&body)
            .send()
            .unwrap();
        let (status, retry) = (
            r.status(),
            r.headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string()),
        );
        (status, retry, r.json::<Value>().unwrap(), started.elapsed())
    };
    std::thread::scope(|s| {
        // The first request holds the only instance for 600 ms (its own deadline is long enough).
        let first = s.spawn(|| send(json!({"query": "q", "texts": ["a"], "timeout_ms": 5000})));
        std::thread::sleep(Duration::from_millis(100));
        // Behind it: one with its own 100 ms deadline (Cohere's route: 503 deadline_exceeded),
        // one with the server's 150 ms (TEI's route, which has no deadlines of its own: 429
        // Overloaded, as TEI answers a server too busy).
        let own = s.spawn(|| send_v1(json!({"query": "q", "documents": ["b"], "timeout_ms": 100})));
        let default = s.spawn(|| send(json!({"query": "q", "texts": ["c"]})));
        for (h, ms) in [(own, 100u64), (default, 150)] {
            let (status, retry, v, took) = h.join().unwrap();
            let (want, kind) = if ms == 100 {
                (StatusCode::SERVICE_UNAVAILABLE, "deadline_exceeded")
            } else {
                (StatusCode::TOO_MANY_REQUESTS, "Overloaded")
            };
            assert_eq!(status, want, "{v}");
            assert_eq!(retry.as_deref(), Some("1"));
            let message = assert_envelope(&v, kind);
            assert!(message.contains(&format!("{ms} ms")), "{message}");
            assert!(took < Duration::from_millis(450), "answered after {took:?}");
        }
        let (status, _, v, _) = first.join().unwrap();
        assert_eq!(status, StatusCode::OK, "{v}");
    });
    let (status, _, v, _) = send(json!({"query": "q", "texts": ["d"], "timeout_ms": 5000}));
    assert_eq!(status, StatusCode::OK, "{v}");
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
        assert!(answer.contains("\"Validation\""), "{answer}");
    }
    // 100,000 texts: under the byte limit, over max_client_batch_size (TEI's 422).
    let many = json!({"query": "q", "texts": vec!["a"; 100_000]}).to_string();
    let (s, v) = send(many.into_bytes());
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(assert_envelope(&v, "Validation").contains("max_client_batch_size"));
    // JSON nested 100,000 deep, no stack overflow: where a field's type is known, the wrong shape
    // is found at the first level (422); an unknown field is skipped without recursing, as TEI
    // ignores unknown fields (200).
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (s, v) = send(deep.into_bytes());
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_envelope(&v, "Validation");
    let deep_field = format!(
        "{{\"query\": \"q\", \"texts\": {}\"a\"{}}}",
        "[".repeat(50_000),
        "]".repeat(50_000)
    );
    let (s, v) = send(deep_field.into_bytes());
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(assert_envelope(&v, "Validation").contains("texts"));
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
    assert!(assert_envelope(&v, "Validation").contains("not valid JSON"));
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
    let stats = server.stats();
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
    // The kernel its products run here, as the kernels crate names it.
    assert_eq!(
        info["models"][0]["kernel"],
        xbench::kernels::matmul::kernel_name()
    );
    server.stop();
}

/// A server on the tiny BERT checkpoint (64 positions), one thread.
fn tiny_bert_server() -> TestServer {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny-bert");
    TestServer::start(
        settings(),
        EngineConfig {
            models: vec![ModelSpec {
                threads: Some(1),
                ..ModelSpec::new(dir.to_str().unwrap())
            }],
            tokenizer_pool: TokenizerPoolConfig::default(),
            batching: BatchingConfig::default(),
        },
        None,
    )
}

/// Raw scores of `texts` against `query` in request order, and the whole answer.
fn raw_scores(
    server: &TestServer,
    query: &str,
    texts: &[String],
    extra: Value,
) -> (Vec<f64>, Value) {
    let mut body = json!({"query": query, "texts": texts, "raw_scores": true});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (status, ranks) = post(server, "/rerank", &body);
    assert_eq!(status, StatusCode::OK, "{ranks}");
    let mut scores = vec![f64::NAN; texts.len()];
    for r in ranks.as_array().unwrap() {
        scores[r["index"].as_u64().unwrap() as usize] = r["score"].as_f64().unwrap();
    }
    (scores, ranks)
}

/// A document whose relevant sentence lies past the model's limit (64 tokens) is found by
/// `chunk_max` and lost by `truncate`: beside an otherwise identical document without that
/// sentence, `truncate` scores the two the same (it sees only their common start) and
/// `chunk_max` ranks it first, naming the window that holds the sentence. Every window counts in
/// `usage.total_tokens`, and the model instance's setting is the default a request overrides.
#[test]
fn chunk_max_finds_the_sentence_that_truncate_cuts_off() {
    let server = tiny_bert_server();
    let query = "how do rivers form";
    // "Relevant" as this random-weight model scores: the best and worst of a few sentences.
    let candidates: Vec<String> = [
        "Rivers form when rain water collects in streams and flows downhill to the sea.",
        "Season the steak with salt and pepper, then sear it in a very hot pan.",
        "The museum opens at nine in the morning and closes at six in the evening.",
        "Coffee beans are roasted, ground and brewed with hot water.",
        "The delta of a river is built from sand and mud carried down from the mountains.",
        "Children learn to read by sounding out letters and then whole words.",
    ]
    .map(String::from)
    .to_vec();
    let (alone, _) = raw_scores(&server, query, &candidates, json!({}));
    let best = (0..alone.len())
        .max_by(|&a, &b| alone[a].total_cmp(&alone[b]))
        .unwrap();
    let worst = (0..alone.len())
        .min_by(|&a, &b| alone[a].total_cmp(&alone[b]))
        .unwrap();
    let filler = format!("{} ", candidates[worst]).repeat(8);
    let with = format!("{filler}{} {}", candidates[best], candidates[best]);
    let without = format!("{filler}{}", candidates[worst]);
    let docs = vec![with, without];

    let (cut, _) = raw_scores(&server, query, &docs, json!({}));
    assert_eq!(
        cut[0], cut[1],
        "truncate sees only the common start: {cut:?}"
    );

    let (split, ranks) = raw_scores(
        &server,
        query,
        &docs,
        json!({"long_documents": "chunk_max", "chunk_overlap_tokens": 8, "return_chunks": true}),
    );
    assert!(
        split[0] > split[1],
        "chunk_max finds the sentence: {split:?}"
    );
    assert!(split[0] > cut[0], "{split:?} vs {cut:?}");
    let first = &ranks[0];
    assert_eq!(first["index"], 0);
    let chunk = first["chunk_index"].as_u64().unwrap();
    assert!(chunk >= 2, "the sentence is in a late window: {first}");

    // Cohere v1 and v2 say the same, and count every window's tokens.
    let (s, v1) = post(
        &server,
        "/v1/rerank",
        &json!({"query": query, "documents": docs, "long_documents": "chunk_max",
                "chunk_overlap_tokens": 8, "return_chunks": true}),
    );
    assert_eq!(s, StatusCode::OK, "{v1}");
    assert_eq!(v1["results"][0]["index"], 0);
    assert_eq!(v1["results"][0]["chunk_index"], chunk);
    let (_, v1_cut) = post(
        &server,
        "/v1/rerank",
        &json!({"query": query, "documents": docs}),
    );
    let (split_tokens, cut_tokens) = (
        v1["usage"]["total_tokens"].as_u64().unwrap(),
        v1_cut["usage"]["total_tokens"].as_u64().unwrap(),
    );
    assert_eq!(cut_tokens, 128, "two pairs cut to 64 tokens");
    assert!(split_tokens > 2 * 128, "{split_tokens}");
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny-bert");
    let (s, v2) = post(
        &server,
        "/v2/rerank",
        &json!({"model": model.to_str().unwrap(), "query": query, "documents": docs,
                "long_documents": "chunk_max", "chunk_overlap_tokens": 8}),
    );
    assert_eq!(s, StatusCode::OK, "{v2}");
    assert_eq!(v2["results"][0]["index"], 0);
    assert!(
        v2["results"][0].get("chunk_index").is_none(),
        "only with return_chunks"
    );
    assert_eq!(
        v2["meta"]["tokens"]["input_tokens"].as_f64(),
        Some(split_tokens as f64)
    );
    let d = v2["results"][0]["relevance_score"].as_f64().unwrap() - sigmoid(split[0] as f32) as f64;
    assert!(d.abs() <= 1e-6);
    server.stop();
}

/// `POST /v2/rerank` as Cohere's v2 API defines it: `model` required, documents as strings,
/// `top_n`, `max_tokens_per_doc`, and `{id, results, meta}` with billed search units; scores as
/// `/v1/rerank` does.
#[test]
fn cohere_v2_rerank() {
    let server = tiny_bert_server();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny-bert");
    let model = model.to_str().unwrap();
    let query = "how do rivers form";
    let docs: Vec<String> = sample(5).into_iter().map(|p| p.passage).collect();
    let (s, v1) = post(
        &server,
        "/v1/rerank",
        &json!({"query": query, "documents": docs}),
    );
    assert_eq!(s, StatusCode::OK);
    let (s, v2) = post(
        &server,
        "/v2/rerank",
        &json!({"model": model, "query": query, "documents": docs, "top_n": 3,
                "priority": 0, "relevant_spans": null}),
    );
    assert_eq!(s, StatusCode::OK, "{v2}");
    assert_eq!(v2["id"].as_str().unwrap().len(), 32);
    assert_eq!(v2["meta"]["api_version"]["version"], "2");
    assert_eq!(v2["meta"]["billed_units"]["search_units"], 1.0);
    assert_eq!(
        v2["meta"]["tokens"]["input_tokens"].as_f64(),
        v1["usage"]["total_tokens"].as_f64()
    );
    let results = v2["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    for (a, b) in results.iter().zip(v1["results"].as_array().unwrap()) {
        assert_eq!(a["index"], b["index"]);
        assert_eq!(a["relevance_score"], b["relevance_score"]);
        assert_eq!(
            a.as_object().unwrap().len(),
            2,
            "index and relevance_score: {a}"
        );
    }
    // max_tokens_per_doc cuts each document before pairing: 4 tokens of each.
    let (s, cut) = post(
        &server,
        "/v2/rerank",
        &json!({"model": model, "query": query, "documents": docs, "max_tokens_per_doc": 4}),
    );
    assert_eq!(s, StatusCode::OK, "{cut}");
    let scorer = Scorer::load_default(model, None).unwrap();
    let empty_pair = scorer.tokenizer().encode(query, "").unwrap().ids.len();
    let want = docs.len() * (empty_pair + 4);
    assert_eq!(
        cut["meta"]["tokens"]["input_tokens"].as_f64(),
        Some(want as f64)
    );
    // 150 documents bill two search units.
    let many: Vec<&str> = vec!["a"; 150];
    let (s, v) = post(
        &server,
        "/v2/rerank",
        &json!({"model": model, "query": "q", "documents": many}),
    );
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["meta"]["billed_units"]["search_units"], 2.0);
    // Errors name the field.
    for (body, status, kind, says) in [
        (
            json!({"query": "q", "documents": ["a"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "model",
        ),
        (
            json!({"model": model, "query": "q", "documents": [{"text": "a"}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "documents",
        ),
        (
            json!({"model": model, "query": "q", "documents": ["a"], "top_n": 0}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "top_n",
        ),
        (
            json!({"model": model, "query": "q", "documents": ["a"], "max_tokens_per_doc": 0}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "max_tokens_per_doc",
        ),
        (
            json!({"model": model, "query": "q", "documents": []}),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "'documents' is empty",
        ),
        (
            json!({"model": "nope", "query": "q", "documents": ["a"]}),
            StatusCode::NOT_FOUND,
            "not_found",
            "nope",
        ),
    ] {
        expect_error(&server, "/v2/rerank", &body, status, kind, says);
    }
    server.stop();
}

/// Cohere's own Python SDK (`cohere` from PyPI, installed into `.venv-clients` by
/// `scripts/install_sdk_clients.sh`, which `scripts/test.sh` runs) against the server, with an
/// API key: `ClientV2.rerank` (`/v2/rerank`, `top_n`, `max_tokens_per_doc`) and `Client.rerank`
/// (`/v1/rerank`) parse the answers and get the scores the routes give over plain HTTP.
#[test]
fn cohere_sdk_clients_v1_and_v2_rerank() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv-clients/bin/python");
    assert!(
        python.is_file(),
        "Cohere's SDK is missing: run ./scripts/install_sdk_clients.sh (scripts/test.sh does)"
    );
    let dir = root.join("tests/data/tiny-bert");
    let model = dir.to_str().unwrap();
    let key = "sdk-key-5e1d";
    let server = TestServer::start(
        ServerSettings {
            api_key: Some(key.into()),
            ..settings()
        },
        EngineConfig {
            models: vec![ModelSpec {
                threads: Some(1),
                ..ModelSpec::new(model)
            }],
            tokenizer_pool: TokenizerPoolConfig::default(),
            batching: BatchingConfig::default(),
        },
        None,
    );
    let query = "how do rivers form";
    let docs: Vec<String> = sample(4).into_iter().map(|p| p.passage).collect();
    let out = std::process::Command::new(&python)
        .arg(root.join("scripts/cohere_sdk_check.py"))
        .args([&server.url(""), model, key, query])
        .args(&docs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the SDK failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sdk: Value = serde_json::from_slice(&out.stdout).unwrap();
    let plain = |path: &str, body: Value| {
        let r = client()
            .post(server.url(path))
            .bearer_auth(key)
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json::<Value>().unwrap()
    };
    let pairs = |results: &Value| -> Vec<(u64, f64)> {
        results
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["index"].as_u64().unwrap(),
                    r["relevance_score"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let sdk_pairs = |v: &Value| -> Vec<(u64, f64)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| (r[0].as_u64().unwrap(), r[1].as_f64().unwrap()))
            .collect()
    };
    let v2 = plain(
        "/v2/rerank",
        json!({"model": model, "query": query, "documents": docs, "top_n": 2}),
    );
    assert_eq!(sdk_pairs(&sdk["v2"]), pairs(&v2["results"]));
    assert_eq!(sdk["v2_id"].as_str().unwrap().len(), 32);
    assert_eq!(sdk["v2_meta"]["version"], "2");
    assert_eq!(sdk["v2_meta"]["search_units"], 1.0);
    assert_eq!(
        sdk["v2_meta"]["input_tokens"],
        v2["meta"]["tokens"]["input_tokens"]
    );
    let cut = plain(
        "/v2/rerank",
        json!({"model": model, "query": query, "documents": docs, "max_tokens_per_doc": 4}),
    );
    assert_eq!(sdk_pairs(&sdk["v2_cut"]), pairs(&cut["results"]));
    assert_eq!(sdk["v2_cut_tokens"], cut["meta"]["tokens"]["input_tokens"]);
    let v1 = plain("/v1/rerank", json!({"query": query, "documents": docs}));
    assert_eq!(sdk_pairs(&sdk["v1"]), pairs(&v1["results"]));
    assert_eq!(sdk_pairs(&sdk["v1"]).len(), docs.len());
    server.stop();
}

/// Every registered family's tiny checkpoint, served side by side in one server: `GET /info`
/// lists each with its architecture, and `/rerank`, `/v1/rerank` and `/v2/rerank` score each as
/// transformers does (the checkpoints' reference logits, sigmoid for the APIs' scores).
#[test]
fn every_family_serves_over_every_api() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let names: Vec<(String, &str)> = xbench::model::family::REGISTRY
        .iter()
        .flat_map(|f| f.tiny_checkpoints.iter().zip(f.architectures))
        .map(|(dir, arch)| (data.join(dir).to_str().unwrap().to_string(), *arch))
        .collect();
    let server = TestServer::start(
        settings(),
        EngineConfig {
            models: names
                .iter()
                .map(|(name, _)| ModelSpec {
                    threads: Some(1),
                    ..ModelSpec::new(name.as_str())
                })
                .collect(),
            tokenizer_pool: TokenizerPoolConfig::default(),
            batching: BatchingConfig::default(),
        },
        None,
    );
    let info: Value = client()
        .get(server.url("/info"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let models = info["models"].as_array().unwrap();
    assert_eq!(models.len(), names.len());
    for ((name, arch), described) in names.iter().zip(models) {
        assert_eq!(described["name"], name.as_str());
        assert_eq!(described["architecture"], *arch);
        let reference: Value = serde_json::from_str(
            &std::fs::read_to_string(Path::new(name).join("reference.json")).unwrap(),
        )
        .unwrap();
        // The first pairs of the reference (a generative reranker's default case), one request
        // each on every API.
        let pairs = match reference.get("cases") {
            Some(cases) => &cases[0]["pairs"],
            None => &reference["pairs"],
        };
        for p in pairs.as_array().unwrap().iter().take(4) {
            let (query, text) = (p["query"].as_str().unwrap(), p["passage"].as_str().unwrap());
            let logits: Vec<f32> = serde_json::from_value(p["logits"].clone()).unwrap();
            let want = xbench::model::relevance(&logits);
            let (s, ranks) = post(
                &server,
                "/rerank",
                &json!({"model": name, "query": query, "texts": [text], "raw_scores": true}),
            );
            assert_eq!(s, StatusCode::OK, "{arch}: {ranks}");
            let d = (ranks[0]["score"].as_f64().unwrap() - want as f64).abs();
            assert!(d <= 1e-4, "{arch} /rerank: {d}");
            for (path, body) in [
                (
                    "/v1/rerank",
                    json!({"model": name, "query": query, "documents": [text]}),
                ),
                (
                    "/v2/rerank",
                    json!({"model": name, "query": query, "documents": [text]}),
                ),
            ] {
                let (s, v) = post(&server, path, &body);
                assert_eq!(s, StatusCode::OK, "{arch} {path}: {v}");
                let got = v["results"][0]["relevance_score"].as_f64().unwrap();
                let d = (got - sigmoid(want) as f64).abs();
                assert!(d <= 1e-5, "{arch} {path}: {d}");
            }
        }
    }
    server.stop();
}

/// A TEI client against xbench, held to TEI's published OpenAPI document
/// (`tests/data/tei/openapi.json`): the request its examples describe is answered with ranks of its
/// schema and TEI's headers; `/info` has TEI's fields at the top level; every error example of
/// `/rerank` is provoked for real and answered with its status, a body of its schema and its
/// `error_type` (the document writes them in lower case; TEI's router, and xbench, as
/// `ErrorType`'s variants: the schema's enum).
#[test]
fn a_tei_client_finds_every_answer_where_teis_document_puts_it() {
    let doc = tei_doc();
    let server = limited_server();
    // The request of the document's examples (booleans are written there as "false").
    let schema = &doc["components"]["schemas"]["RerankRequest"];
    let mut request = serde_json::Map::new();
    for (name, p) in schema["properties"].as_object().unwrap() {
        let Some(example) = p.get("example").or_else(|| p.get("default")) else {
            continue;
        };
        let value = match (p["type"].as_str(), example) {
            (Some("boolean"), Value::String(s)) => Value::Bool(s == "true"),
            // Its default is written "right"; the enum it points to is Left | Right.
            (_, Value::String(s)) if name == "truncation_direction" => {
                json!(if s.eq_ignore_ascii_case("left") {
                    "Left"
                } else {
                    "Right"
                })
            }
            _ => example.clone(),
        };
        request.insert(name.clone(), value);
    }
    let request = Value::Object(request);
    let request_schema =
        &doc["paths"]["/rerank"]["post"]["requestBody"]["content"]["application/json"]["schema"];
    check_openapi30(&doc, request_schema, &request, "request").unwrap();
    assert_eq!(request["texts"], json!(["Deep Learning is ..."]));
    let r = client()
        .post(server.url("/rerank"))
        .json(&request)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let headers = r.headers().clone();
    let ranks: Value = r.json().unwrap();
    check_openapi30(
        &doc,
        &response_schema(&doc, "/rerank", "post", "200"),
        &ranks,
        "ranks",
    )
    .unwrap();
    assert!(ranks[0].get("text").is_none(), "return_text false: {ranks}");
    // TEI's headers, integer ms; xbench's finer ones beside them.
    let header = |name: &str| headers[name].to_str().unwrap().to_string();
    for name in [
        "x-compute-time",
        "x-total-time",
        "x-tokenization-time",
        "x-queue-time",
        "x-inference-time",
        "x-compute-tokens",
    ] {
        header(name)
            .parse::<u64>()
            .unwrap_or_else(|_| panic!("{name}: {}", header(name)));
    }
    for name in [
        "x-xbench-total-time",
        "x-xbench-tokenization-time",
        "x-xbench-queue-time",
        "x-xbench-inference-time",
    ] {
        assert!(header(name).parse::<f64>().unwrap() >= 0.0, "{name}");
    }
    assert_eq!(header("x-compute-type"), "cpu+fused+fp32");
    let characters = "What is Deep Learning?".len() + "Deep Learning is ...".len();
    assert_eq!(header("x-compute-characters"), characters.to_string());
    assert!(header("x-compute-tokens").parse::<u64>().unwrap() > 5);
    // Equal scores: highest index first, as TEI's sort then reverse leaves them.
    let (s, v) = post(
        &server,
        "/rerank",
        &json!({"query": "q", "texts": ["same", "same", "same"]}),
    );
    assert_eq!(s, StatusCode::OK);
    let order: Vec<u64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(order, [2, 1, 0]);

    // /info: TEI's fields, of the default model, where TEI has them.
    let info: Value = client()
        .get(server.url("/info"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    check_openapi30(
        &doc,
        &response_schema(&doc, "/info", "get", "200"),
        &info,
        "info",
    )
    .unwrap();
    assert_eq!(info["model_id"], demo());
    assert_eq!(info["model_sha"], Value::Null);
    assert_eq!(info["model_dtype"], "float32");
    let label = info["models"][0]["labels"][0].clone();
    assert_eq!(
        info["model_type"],
        json!({"reranker": {"id2label": {"0": label.clone()}, "label2id": {label.as_str().unwrap(): 0}}})
    );
    assert_eq!(info["max_client_batch_size"], 4);
    assert_eq!(info["max_input_length"], 512);
    assert_eq!(info["max_batch_tokens"], 16384);
    assert_eq!(info["max_batch_requests"], 32);
    assert_eq!(info["auto_truncate"], true);
    assert_eq!(info["tokenization_workers"], 1);
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));

    // Every error example of /rerank, provoked.
    let responses = doc["paths"]["/rerank"]["post"]["responses"]
        .as_object()
        .unwrap();
    let provoke = |status: &str| -> Value {
        match status {
            // A body over the payload limit.
            "413" => json!({"query": "q", "texts": ["x".repeat(5000)]}),
            // More texts than max_client_batch_size (TEI's router answers 422 here; its
            // document's 413 example says "Batch size error").
            "422" => json!({"query": "q", "texts": ["a", "b", "c", "d", "e"]}),
            // Inference fails (the test backend fails pairs over 64 tokens).
            "424" => json!({"query": "q", "texts": ["word ".repeat(100)]}),
            other => panic!("TEI documents a /rerank {other} this test does not provoke"),
        }
    };
    let mut seen = Vec::new();
    for (status, response) in responses {
        if status == "200" || status == "429" {
            continue; // 200 above; 429 on a server made to overload, below.
        }
        let (s, v) = post(&server, "/rerank", &provoke(status));
        assert_eq!(s.as_str(), status, "{v}");
        let schema = &response["content"]["application/json"]["schema"];
        check_openapi30(&doc, schema, &v, status).unwrap();
        let example = &response["content"]["application/json"]["example"];
        let want = example["error_type"].as_str().unwrap();
        if status == "422" {
            // The example is the tokenizer's failure, which real input does not provoke in
            // the tokenizers crate; its mapping is checked directly.
            assert_eq!(v["error_type"], "Validation");
            let e = xbench::server::ApiError::from_engine(
                xbench::engine::EngineError::Tokenize("bad input".into()),
                1,
            )
            .tei();
            assert_eq!(e.status.as_u16(), 422);
            assert!(e.kind.eq_ignore_ascii_case(want), "{} vs {want}", e.kind);
        } else {
            let got = v["error_type"].as_str().unwrap();
            assert!(got.eq_ignore_ascii_case(want), "{status}: {got} vs {want}");
        }
        seen.push(status.clone());
    }
    assert_eq!(seen, ["413", "422", "424"]);
    drop(server);

    // 429: a server made to overload (queues of one, a slow model).
    let server = overloadable_server();
    let body = json!({"query": "q", "texts": ["a short text"]});
    let results: Vec<(StatusCode, Option<String>, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..12)
            .map(|_| s.spawn(|| post_rerank(&server, &body)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let example = &responses["429"]["content"]["application/json"];
    let overloaded: Vec<_> = results
        .iter()
        .filter(|r| r.0 == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert!(!overloaded.is_empty(), "{results:?}");
    for (_, retry, v) in overloaded {
        assert_eq!(retry.as_deref(), Some("1"));
        check_openapi30(&doc, &example["schema"], v, "429").unwrap();
        assert!(v["error_type"]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case(example["example"]["error_type"].as_str().unwrap()));
    }
}

/// `served_model_names` route a request's `model` on every API; an unknown name is 404 listing the
/// served names, unless `server.ignore_unknown_model` sends it to the one model served.
#[test]
fn served_model_names_and_ignore_unknown_model() {
    let config = |aliases: &[&str]| EngineConfig {
        models: vec![ModelSpec {
            threads: Some(1),
            served_model_names: aliases.iter().map(|a| a.to_string()).collect(),
            ..ModelSpec::new(demo())
        }],
        tokenizer_pool: TokenizerPoolConfig::default(),
        batching: BatchingConfig::default(),
    };
    let calls = |model: &str| {
        [
            (
                "/rerank",
                json!({"model": model, "query": "q", "texts": ["a", "b"]}),
            ),
            (
                "/v1/rerank",
                json!({"model": model, "query": "q", "documents": ["a", "b"]}),
            ),
            (
                "/v2/rerank",
                json!({"model": model, "query": "q", "documents": ["a", "b"]}),
            ),
            (
                "/score",
                json!({"model": model, "text_1": "q", "text_2": ["a", "b"]}),
            ),
        ]
    };
    let server = TestServer::start(
        settings(),
        config(&["BAAI/bge-reranker-base", "reranker"]),
        None,
    );
    let (_, want) = post(
        &server,
        "/rerank",
        &json!({"query": "q", "texts": ["a", "b"]}),
    );
    for alias in ["BAAI/bge-reranker-base", "reranker", demo().as_str()] {
        for (path, body) in calls(alias) {
            let (s, v) = post(&server, path, &body);
            assert_eq!(s, StatusCode::OK, "{path} {alias}: {v}");
            if path == "/rerank" {
                assert_eq!(v, want);
            }
            if path == "/score" {
                assert_eq!(
                    v["model"],
                    demo(),
                    "the model that scored, by its configured name"
                );
            }
        }
    }
    for (path, body) in calls("gpt-4") {
        let (s, v) = post(&server, path, &body);
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {v}");
        let message = v["error"].as_str().unwrap();
        assert!(
            message.contains("unknown model 'gpt-4'")
                && message.contains("BAAI/bge-reranker-base, reranker"),
            "{message}"
        );
    }
    let info: Value = client()
        .get(server.url("/info"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        info["models"][0]["served_model_names"],
        json!(["BAAI/bge-reranker-base", "reranker"])
    );
    drop(server);
    let server = TestServer::start(
        ServerSettings {
            ignore_unknown_model: true,
            ..settings()
        },
        config(&[]),
        None,
    );
    for (path, body) in calls("gpt-4") {
        let (s, v) = post(&server, path, &body);
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
    }
}
