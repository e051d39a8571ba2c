//! Operating the real server: overload (429) after which it keeps serving, graceful shutdown that
//! answers every accepted request, readiness, the metrics (and a real Prometheus scraping them),
//! the binary (SIGTERM, `serve --from-results`, failed loads, the API key kept out of the log),
//! and `xbench bench` / `xbench run` measuring it.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use xbench::engine::{BatchingConfig, Engine, EngineConfig, ModelSpec, TokenizerPoolConfig};

mod support;
use support::*;

#[test]
fn overload_is_answered_with_429_and_the_server_keeps_serving() {
    let server = overloadable_server();
    let body = json!({"query": "q", "texts": ["a short text"]});
    let results: Vec<(StatusCode, Option<String>, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|_| s.spawn(|| post_rerank(&server, &body)))
            .collect();
        // Alive while the queues are full (a liveness probe must not restart a busy replica).
        std::thread::sleep(Duration::from_millis(100));
        let r = client().get(server.url("/live")).send().unwrap();
        assert_eq!(r.status(), StatusCode::OK);
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
        assert!(assert_envelope(v, "Overloaded").contains("retry later"));
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
    // Alive while loading (the liveness probe); every answer names its replica.
    let r = client().get(server.url("/live")).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["x-xbench-replica"],
        xbench::server::replica_name().as_str()
    );
    assert_eq!(r.text().unwrap(), "");
    // TEI's answers (its document's 503 example, its schema), and xbench's reason beside them.
    let doc = tei_doc();
    let r = client().get(server.url("/health")).send().unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["x-xbench-status"], "loading");
    assert_eq!(r.headers()["retry-after"], "1");
    let v: Value = r.json().unwrap();
    assert_eq!(v, json!({"error": "unhealthy", "error_type": "Unhealthy"}));
    let documented =
        &doc["paths"]["/health"]["get"]["responses"]["503"]["content"]["application/json"];
    check_openapi30(&doc, &documented["schema"], &v, "/health").unwrap();
    assert!(v["error_type"]
        .as_str()
        .unwrap()
        .eq_ignore_ascii_case(documented["example"]["error_type"].as_str().unwrap()));
    for (path, v) in [
        (
            "/rerank",
            post(&server, "/rerank", &json!({"query": "q", "texts": ["a"]})),
        ),
        (
            "/v1/rerank",
            post(
                &server,
                "/v1/rerank",
                &json!({"query": "q", "documents": ["a"]}),
            ),
        ),
    ] {
        assert_eq!(v.0, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_envelope(
            &v.1,
            if path == "/rerank" {
                "Unhealthy"
            } else {
                "unavailable"
            },
        );
    }
    let r = client().get(server.url("/info")).send().unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_envelope(&r.json().unwrap(), "Unhealthy");
    server.wait_ready();
    let r = client().get(server.url("/health")).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["x-xbench-replica"],
        xbench::server::replica_name().as_str()
    );
    assert_eq!(r.text().unwrap(), "", "TEI's 200 has an empty body");
    let r = client().get(server.url("/nowhere")).send().unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(
        r.headers().contains_key("x-xbench-replica"),
        "on errors too"
    );
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
    let body = json!({"query": "q", "texts": ["a"], "documents": ["a"], "model": "m"});
    let mut answers = String::new();
    for key in [Some(KEY), Some(WRONG), None] {
        for path in [
            "/rerank",
            "/v1/rerank",
            "/v2/rerank",
            "/info",
            "/metrics",
            "/nope",
        ] {
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
