//! Property tests on hostile input, on stable Rust in CI (proptest; 20,000 cases per parser, 4,000
//! per config and HTTP target, about 10 s in all): every parser a user reaches must answer an
//! error, never panic, and a server must answer every body with 200 or a documented 4xx. Longer:
//! `PROPTEST_CASES=N cargo test --test fuzz`, or the coverage-guided `cargo fuzz` targets of
//! `fuzz/` (`scripts/fuzz.sh`).
//!
//! Targets: the override grammar, config composition from arbitrary YAML, the JSON bodies of both
//! rerank APIs (over HTTP, against a real server on a tiny model), and the JSON-lines reader of
//! `xbench score`. A failure proptest finds is kept as a regression case in
//! `tests/fuzz.proptest-regressions` and should become a named test of what it found.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{json, Value};
use xbench::config::overrides::Override;
use xbench::config::sweep;
use xbench::score::read_pairs;
use xbench::server::BackgroundServer;
use xbench::testing::{copy_dir, documented_rerank_answer, tiny_server};

/// Keys of the config, so generated overrides and YAML hit real paths as well as nonsense.
const KEYS: &[&str] = &[
    "name",
    "batching.max_batch_size",
    "batching.timeout_ms",
    "batching.enabled",
    "tokenizer_pool.workers",
    "model_pool.instances.0.workers",
    "model_pool.instances.0.threads",
    "model_pool.instances.0.kernels",
    "model_pool.instances.0.backend",
    "model_pool.instances",
    "experiment.batch_sizes",
    "experiment.concurrency_levels",
    "experiment.rate",
    "experiment.sweep",
    "experiment.duration_s",
    "server.port",
    "nope.nothing",
];

fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| v.to_string()),
        Just("null".to_string()),
        Just("true".to_string()),
        Just("[1, 2]".to_string()),
        Just("{a: 1}".to_string()),
        Just("${batching.max_batch_size}".to_string()),
        Just("${nope}".to_string()),
        "[a-z0-9 ,\\[\\]{}:'\"$.-]{0,12}",
    ]
}

fn override_text() -> impl Strategy<Value = String> {
    prop_oneof![
        // Anything at all.
        ".{0,40}",
        // The grammar's shape: [+|~]key=value, value lists, groups.
        (
            prop_oneof![Just(""), Just("+"), Just("~"), Just("++")],
            prop::sample::select(KEYS),
            prop_oneof![Just("="), Just(""), Just("==")],
            scalar(),
        )
            .prop_map(|(prefix, key, eq, value)| format!("{prefix}{key}{eq}{value}")),
        (
            prop::sample::select(&["experiment", "batching", "model_pool"][..]),
            "[a-z_0-9/.]{0,12}"
        )
            .prop_map(|(group, option)| format!("{group}={option}")),
    ]
}

/// A copy of `conf/` to which each case adds its own experiment file.
fn conf() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("conf"),
            dir.path(),
        )
        .unwrap();
        dir
    })
    .path()
}

fn yaml_text() -> impl Strategy<Value = String> {
    prop_oneof![
        // Anything at all.
        ".{0,80}",
        "[a-z:_ \\n\\[\\]{}\\-0-9.'\"#@&*!|>%]{0,120}",
        // Config-shaped: known and unknown keys (as nested maps), scalar values, sweeps.
        prop::collection::vec((prop::sample::select(KEYS), scalar()), 0..6).prop_map(|pairs| {
            let mut text = String::from("# @package _global_\n");
            for (key, value) in pairs {
                let parts: Vec<&str> = key.split('.').collect();
                for (depth, part) in parts.iter().enumerate() {
                    let indent = "  ".repeat(depth);
                    if depth + 1 == parts.len() {
                        text.push_str(&format!("{indent}{part}: {value}\n"));
                    } else {
                        text.push_str(&format!("{indent}{part}:\n"));
                    }
                }
            }
            text
        }),
        (
            prop::sample::select(KEYS),
            prop::collection::vec(scalar(), 0..4)
        )
            .prop_map(|(key, values)| format!(
                "# @package _global_\nexperiment:\n  sweep:\n    {key}: [{}]\n",
                values.join(", ")
            )),
    ]
}

/// Arbitrary JSON, biased toward the rerank bodies' own fields.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,16}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        prop::sample::select(
                            &[
                                "query",
                                "texts",
                                "documents",
                                "top_n",
                                "raw_scores",
                                "return_text",
                                "return_documents",
                                "truncate",
                                "truncation_direction",
                                "model",
                                "timeout_ms",
                                "text",
                            ][..]
                        )
                        .prop_map(String::from),
                        "[a-z_]{0,8}",
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

/// Well-formed requests with every optional field varied (most of these are scored).
fn valid_body() -> impl Strategy<Value = Vec<u8>> {
    (
        ".{0,40}",
        prop::collection::vec(".{0,80}", 0..10),
        prop::option::of(0usize..12),
        any::<(bool, bool, bool)>(),
        prop::option::of(prop::sample::select(&["Left", "Right", "Up"][..])),
        prop::option::of(prop_oneof![0u64..4, Just(5000u64)]),
    )
        .prop_map(
            |(query, texts, top_n, (raw, echo, truncate), direction, timeout)| {
                let mut v = json!({
                    "query": query, "texts": texts, "documents": texts, "raw_scores": raw,
                    "return_text": echo, "return_documents": echo, "truncate": truncate,
                });
                let o = v.as_object_mut().unwrap();
                if let Some(n) = top_n {
                    o.insert("top_n".into(), json!(n));
                }
                if let Some(d) = direction {
                    o.insert("truncation_direction".into(), json!(d));
                }
                if let Some(t) = timeout {
                    o.insert("timeout_ms".into(), json!(t));
                }
                v.to_string().into_bytes()
            },
        )
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => valid_body(),
        1 => json_value().prop_map(|v| v.to_string().into_bytes()),
        // Valid-looking requests with hostile field values.
        1 => (json_value(), json_value(), json_value()).prop_map(|(q, t, extra)| {
            json!({"query": q, "texts": t, "documents": t, "top_n": extra, "timeout_ms": 5000})
                .to_string()
                .into_bytes()
        }),
        1 => prop::collection::vec(any::<u8>(), 0..200),
    ]
}

/// One server on a tiny model for every HTTP case.
fn server() -> &'static BackgroundServer {
    static SERVER: OnceLock<(tempfile::TempDir, BackgroundServer)> = OnceLock::new();
    &SERVER
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let server = tiny_server(dir.path()).unwrap();
            (dir, server)
        })
        .1
}

fn client() -> &'static reqwest::blocking::Client {
    static CLIENT: OnceLock<reqwest::blocking::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    })
}

/// `cases` per target, or `PROPTEST_CASES` for longer runs.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(cases),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/fuzz.proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(20_000))]

    #[test]
    fn the_override_parser_answers_every_text(text in override_text()) {
        if let Err(e) = Override::parse(&text) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn the_jsonl_reader_answers_every_input(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        if let Err(e) = read_pairs(&bytes[..]) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn the_jsonl_reader_answers_json_lines(lines in prop::collection::vec(json_value(), 0..8)) {
        let text: String = lines.iter().map(|v| v.to_string() + "\n").collect();
        if let Err(e) = read_pairs(text.as_bytes()) {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}

proptest! {
    #![proptest_config(config(4_000))]

    #[test]
    fn config_composition_answers_every_experiment_file(
        yaml in yaml_text(),
        overrides in prop::collection::vec(override_text(), 0..3),
    ) {
        let conf = conf();
        std::fs::write(conf.join("experiment/fuzz.yaml"), &yaml).unwrap();
        let parsed: Vec<Override> = overrides.iter().filter_map(|o| Override::parse(o).ok()).collect();
        match sweep::expand(conf, Some("fuzz"), &parsed) {
            Ok((_, cells)) => {
                for cell in cells {
                    let _ = xbench::engine::EngineConfig::from_config(&cell.config);
                }
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn every_rerank_api_answers_every_body_with_200_or_a_documented_4xx(
        body in body(),
        path in prop::sample::select(&["/rerank", "/v1/rerank", "/v2/rerank"][..]),
    ) {
        let r = client()
            .post(format!("{}{path}", server().url()))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        let answer = r.bytes().unwrap();
        if let Err(e) = documented_rerank_answer(status, &answer) {
            prop_assert!(false, "{}", e);
        }
    }
}
