//! Generative rerankers (the qwen3, qwen2 and gemma families) against transformers: tiny
//! random-weight checkpoints (`tests/data/tiny-*-reranker*`, written by
//! `scripts/make_tiny_rerankers.py`) with the prompts each template builds and transformers' fp32
//! logits of the answer tokens at the prompt's last token, for a default case, a truncated one, one
//! with an instruction, and (Qwen3) one prompt of 8,002 tokens.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use xbench::backend::{self, BackendKind, CacheUse, LoadedModel, ModelSpec};
use xbench::model::Precision;

#[derive(Deserialize)]
struct Reference {
    architecture: String,
    template: String,
    answer_tokens: Vec<String>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    max_length: usize,
    instruction: Option<String>,
    pairs: Vec<RefPair>,
}

#[derive(Deserialize)]
struct RefPair {
    query: String,
    passage: String,
    input_ids: Vec<u32>,
    logits: Vec<f32>,
}

const FIXTURES: [&str; 4] = [
    "tiny-qwen3-reranker",
    "tiny-qwen3-reranker-seq-cls",
    "tiny-qwen2-reranker",
    "tiny-gemma-reranker",
];

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn reference(name: &str) -> Reference {
    let text = std::fs::read_to_string(dir(name).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn load(name: &str, precision: Precision, case: &Case) -> LoadedModel {
    load_on(BackendKind::Fused, name, precision, case)
}

fn load_on(backend: BackendKind, name: &str, precision: Precision, case: &Case) -> LoadedModel {
    backend::load(&ModelSpec {
        backend,
        quantization: precision,
        max_length: Some(case.max_length),
        instruction: case.instruction.clone(),
        ..ModelSpec::new(dir(name).to_str().unwrap())
    })
    .unwrap_or_else(|e| panic!("{name}: {e:#}"))
}

/// Each pair's logits, `batch` pairs per forward pass (the pairs in order).
fn logits(model: &LoadedModel, pairs: &[(String, String)], batch: usize) -> Vec<Vec<f32>> {
    let labels = model.info.num_labels;
    let mut out = Vec::new();
    for chunk in pairs.chunks(batch) {
        let encoded = model
            .tokenizer
            .encode_batch(chunk.iter().map(|(q, p)| (q.as_str(), p.as_str())))
            .unwrap();
        let flat = model.backend.predict(&encoded).unwrap();
        out.extend(flat.chunks_exact(labels).map(<[f32]>::to_vec));
    }
    out
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

/// Prompts token for token, and fp32 logits within 1e-4 of transformers on both backends, one
/// pair per pass and all of a case's pairs in one (consecutive pairs then share the template's
/// opening tokens on the fused backend).
#[test]
fn every_family_matches_transformers_prompt_and_logits() {
    for (name, backend) in FIXTURES
        .iter()
        .flat_map(|n| [(*n, BackendKind::Fused), (*n, BackendKind::Candle)])
    {
        let r = reference(name);
        for case in r.cases.iter().filter(|c| c.name != "long") {
            let model = load_on(backend, name, Precision::Fp32, case);
            assert_eq!(model.info.architecture, r.architecture);
            assert_eq!(model.info.template.as_deref(), Some(r.template.as_str()));
            if !r.architecture.ends_with("ForSequenceClassification") {
                assert_eq!(model.info.labels, r.answer_tokens);
            }
            for (i, p) in case.pairs.iter().enumerate() {
                let e = model.tokenizer.encode(&p.query, &p.passage).unwrap();
                assert_eq!(
                    e.ids, p.input_ids,
                    "{name} {} pair {i}: prompt ids",
                    case.name
                );
            }
            let pairs: Vec<(String, String)> = case
                .pairs
                .iter()
                .map(|p| (p.query.clone(), p.passage.clone()))
                .collect();
            let want: Vec<Vec<f32>> = case.pairs.iter().map(|p| p.logits.clone()).collect();
            for batch in [1, pairs.len()] {
                let got = logits(&model, &pairs, batch);
                let d = max_diff(&got, &want);
                assert!(
                    d < 1e-4,
                    "{name} {} {backend:?} batch {batch}: max |Δlogit| {d}",
                    case.name
                );
            }
        }
    }
}

/// One request's documents (one query, so every prompt opens with the same system prompt,
/// instruction and query, computed once per batch) score the same at batch 1, 7 and 32 within
/// 1e-5: the shared prefix equals the unshared computation.
#[test]
fn a_shared_prefix_scores_as_the_pairs_alone() {
    for name in FIXTURES {
        let r = reference(name);
        let case = &r.cases[0];
        let model = load(name, Precision::Fp32, case);
        let query = &case.pairs[3].query;
        let pairs: Vec<(String, String)> = (0..32)
            .map(|i| {
                (
                    query.clone(),
                    case.pairs[i % case.pairs.len()].passage.clone(),
                )
            })
            .collect();
        let alone = logits(&model, &pairs, 1);
        for batch in [7, 32] {
            let d = max_diff(&logits(&model, &pairs, batch), &alone);
            assert!(d < 1e-5, "{name} batch {batch}: max |Δlogit| {d}");
        }
    }
}

/// The 8,002-token prompt (the default max_length is 8,192) matches transformers on both
/// backends.
#[test]
fn a_prompt_of_eight_thousand_tokens_matches_transformers() {
    let name = "tiny-qwen3-reranker";
    let r = reference(name);
    let case = r.cases.iter().find(|c| c.name == "long").unwrap();
    for backend in [BackendKind::Fused, BackendKind::Candle] {
        let model = load_on(backend, name, Precision::Fp32, case);
        let p = &case.pairs[0];
        let e = model.tokenizer.encode(&p.query, &p.passage).unwrap();
        assert_eq!(e.ids.len(), p.input_ids.len());
        assert_eq!(e.ids, p.input_ids);
        let got = logits(&model, &[(p.query.clone(), p.passage.clone())], 1);
        let d = max_diff(&got, std::slice::from_ref(&p.logits));
        assert!(d < 1e-4, "{backend:?}: max |Δlogit| {d}");
    }
}

/// candle's bf16 and fp16 (the whole model in that dtype) stay near transformers' fp32 logits.
#[test]
fn candle_half_precisions_stay_near_transformers() {
    // Measured (max over the four fixtures): bf16 0.25, fp16 0.0073 (the whole model in the
    // dtype, every activation rounded; random weights).
    for (precision, tolerance) in [(Precision::Bf16, 0.35), (Precision::Fp16, 0.011)] {
        let mut worst = 0f32;
        for name in FIXTURES {
            let r = reference(name);
            let case = &r.cases[0];
            let model = load_on(BackendKind::Candle, name, precision, case);
            let pairs: Vec<(String, String)> = case
                .pairs
                .iter()
                .map(|p| (p.query.clone(), p.passage.clone()))
                .collect();
            let want: Vec<Vec<f32>> = case.pairs.iter().map(|p| p.logits.clone()).collect();
            let d = max_diff(&logits(&model, &pairs, pairs.len()), &want);
            eprintln!("candle {} {name}: max |Δlogit| {d}", precision.name());
            worst = worst.max(d);
        }
        assert!(worst < tolerance, "candle {}: {worst}", precision.name());
    }
}

/// Each reduced precision's distance from transformers' fp32 logits, over every family's default
/// case (measured, then pinned here with headroom).
#[test]
fn reduced_precisions_stay_within_their_measured_tolerance() {
    for (precision, tolerance) in [
        // Measured (max over the four fixtures): bf16 0.023, fp16 0.0022, int8 0.091, int4 0.89
        // (calibrated on the built-in pairs; random weights of std 0.2 quantize worse than
        // trained ones).
        (Precision::Bf16, 0.035),
        (Precision::Fp16, 0.0035),
        (Precision::Int8, 0.14),
        (Precision::Int4, 1.3),
    ] {
        let mut worst = 0f32;
        for name in FIXTURES {
            let r = reference(name);
            let case = &r.cases[0];
            let model = load(name, precision, case);
            let pairs: Vec<(String, String)> = case
                .pairs
                .iter()
                .map(|p| (p.query.clone(), p.passage.clone()))
                .collect();
            let want: Vec<Vec<f32>> = case.pairs.iter().map(|p| p.logits.clone()).collect();
            let got = logits(&model, &pairs, pairs.len());
            let d = max_diff(&got, &want);
            eprintln!("{} {name}: max |Δlogit| {d}", precision.name());
            worst = worst.max(d);
        }
        assert!(worst < tolerance, "{}: {worst}", precision.name());
    }
}

/// The cache of quantized layers holds a generative reranker's decoder layers too: written on
/// the first load, read on the next with the same logits (and no calibration), stale when the
/// calibration tokens change (another max_length cuts the calibration prompts otherwise), written
/// over when damaged.
#[test]
fn a_decoders_quantized_layers_are_cached_beside_it() {
    let tmp = tempfile::tempdir().unwrap();
    let src = dir("tiny-qwen3-reranker");
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    let r = reference("tiny-qwen3-reranker");
    let pairs: Vec<(String, String)> = r.cases[0]
        .pairs
        .iter()
        .map(|p| (p.query.clone(), p.passage.clone()))
        .collect();
    let load = |precision, max_length, cache| {
        backend::load(&ModelSpec {
            quantization: precision,
            quantization_cache: cache,
            max_length,
            ..ModelSpec::new(tmp.path().to_str().unwrap())
        })
        .unwrap()
    };
    for precision in [Precision::Int8, Precision::Int4, Precision::Bf16] {
        let plain = load(precision, None, false);
        assert_eq!(plain.cache, CacheUse::None);
        let want = logits(&plain, &pairs, pairs.len());
        let first = load(precision, None, true);
        let path = match &first.cache {
            CacheUse::Written(path) => path.clone(),
            other => panic!("{precision:?}: {other:?}"),
        };
        assert_eq!(logits(&first, &pairs, pairs.len()), want, "{precision:?}");
        let second = load(precision, None, true);
        assert_eq!(second.cache, CacheUse::Read(path.clone()), "{precision:?}");
        assert_eq!(logits(&second, &pairs, pairs.len()), want, "{precision:?}");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let third = load(precision, None, true);
        assert!(
            matches!(third.cache, CacheUse::Replaced { .. }),
            "{precision:?}: {:?}",
            third.cache
        );
        assert_eq!(logits(&third, &pairs, pairs.len()), want, "{precision:?}");
    }
    // Calibration prompts cut to 96 tokens (about 125 uncut): other calibration tokens, so a stale cache.
    let cut = load(Precision::Int8, Some(96), true).cache;
    assert!(matches!(cut, CacheUse::Written(_)), "{cut:?}");
    // bf16 calibrates nothing: max_length does not touch its cache.
    let bf16 = load(Precision::Bf16, Some(96), true).cache;
    assert!(matches!(bf16, CacheUse::Read(_)), "{bf16:?}");
}

/// Answer tokens the tokenizer lacks, and an instruction for a template without one, are
/// refused at load, naming the reason.
#[test]
fn what_a_template_cannot_do_is_refused_at_load() {
    let model = dir("tiny-qwen3-reranker").to_str().unwrap().to_string();
    let err = backend::load(&ModelSpec {
        answer_tokens: Some(vec!["no".into(), "definitely-not-a-token-☃☃".into()]),
        ..ModelSpec::new(&model)
    })
    .err()
    .expect("refused");
    let text = format!("{err:#}");
    assert!(text.contains("answer token"), "{text}");
    let yaml = tempfile::tempdir().unwrap();
    let path = yaml.path().join("plain.yaml");
    std::fs::write(
        &path,
        "query: \"Q: {query}\\n\"\ndocument: \"D: {document}\"\nanswer_tokens: [no, yes]\n",
    )
    .unwrap();
    let err = backend::load(&ModelSpec {
        template: Some(path.to_str().unwrap().into()),
        instruction: Some("be brief".into()),
        ..ModelSpec::new(&model)
    })
    .err()
    .expect("refused");
    let text = format!("{err:#}");
    assert!(text.contains("no {instruction} placeholder"), "{text}");
    let err = backend::load(&ModelSpec {
        template: Some("qwen4_reranker".into()),
        ..ModelSpec::new(&model)
    })
    .err()
    .expect("refused");
    assert!(format!("{err:#}").contains("qwen3_reranker, mxbai_rerank_v2, bge_gemma"));
    // A cross-encoder takes no template.
    let err = backend::load(&ModelSpec {
        template: Some("qwen3_reranker".into()),
        ..ModelSpec::new(dir("tiny-bert").to_str().unwrap())
    })
    .err()
    .expect("refused");
    assert!(format!("{err:#}").contains("cross-encoder"));
    // A YAML template loads and builds its prompt part by part.
    let loaded = backend::load(&ModelSpec {
        template: Some(path.to_str().unwrap().into()),
        ..ModelSpec::new(&model)
    })
    .unwrap();
    let tok = loaded.tokenizer.inner();
    let part = |t: &str| tok.encode(t, false).unwrap().get_ids().to_vec();
    let mut want = part("Q: what\n");
    want.extend(part("D: this"));
    assert_eq!(loaded.tokenizer.encode("what", "this").unwrap().ids, want);
}

mod support;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::{client, post, settings, TestServer};
use xbench::engine::{BatchingConfig, EngineConfig, TokenizerPoolConfig};

/// The generative rerankers served: `GET /info` names the template and instruction, `/score`
/// answers as vLLM's does (one-to-many and zipped; `score` the relevance) with the reference's
/// scores, a request's `instruction` changes the prompt as the model instance's would, and an
/// instruction sent to a cross-encoder is refused with 422.
#[test]
fn generative_rerankers_are_served_with_instructions_and_vllm_score() {
    let qwen3 = dir("tiny-qwen3-reranker").to_str().unwrap().to_string();
    let bert = dir("tiny-bert").to_str().unwrap().to_string();
    let server = TestServer::start(
        settings(),
        EngineConfig {
            models: [&qwen3, &bert]
                .iter()
                .map(|name| ModelSpec {
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
    let described = &info["models"][0];
    assert_eq!(described["template"], "qwen3_reranker");
    assert_eq!(
        described["instruction"],
        "Given a web search query, retrieve relevant passages that answer the query"
    );
    assert_eq!(described["labels"], json!(["no", "yes"]));
    assert!(info["models"][1].get("template").is_none());

    let r = reference("tiny-qwen3-reranker");
    let sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
    let want = |p: &RefPair| sigmoid(p.logits[1] - p.logits[0]);
    let default = &r.cases[0];
    // One query against many documents: the reference pairs 0..3 share no query, so pair 0's
    // query with its own passage and two others, checked against pair 0 only; then zipped.
    let (s, v) = post(
        &server,
        "/score",
        &json!({"model": qwen3, "text_1": default.pairs[0].query,
                "text_2": [default.pairs[0].passage, default.pairs[1].passage, default.pairs[2].passage]}),
    );
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "list");
    assert!(v["id"].as_str().unwrap().starts_with("score-"));
    assert_eq!(v["model"], qwen3.as_str());
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["index"], i);
        assert_eq!(d["object"], "score");
    }
    let got = data[0]["score"].as_f64().unwrap() as f32;
    assert!((got - want(&default.pairs[0])).abs() < 1e-5, "{got}");
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    let zipped: Vec<&RefPair> = default.pairs.iter().take(5).collect();
    let (s, v) = post(
        &server,
        "/score",
        &json!({"model": qwen3,
                "text_1": zipped.iter().map(|p| p.query.clone()).collect::<Vec<_>>(),
                "text_2": zipped.iter().map(|p| p.passage.clone()).collect::<Vec<_>>()}),
    );
    assert_eq!(s, StatusCode::OK, "{v}");
    for (d, p) in v["data"].as_array().unwrap().iter().zip(&zipped) {
        let got = d["score"].as_f64().unwrap() as f32;
        assert!((got - want(p)).abs() < 1e-5, "{got} vs {}", want(p));
    }
    let tokens: usize = zipped.iter().map(|p| p.input_ids.len()).sum();
    assert_eq!(v["usage"]["total_tokens"], tokens);
    let (s, v) = post(
        &server,
        "/score",
        &json!({"model": qwen3, "text_1": ["a", "b"], "text_2": ["x", "y", "z"]}),
    );
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v["error"].as_str().unwrap().contains("text_1 has 2 texts"));

    // A request's instruction: the reference's instruction case, over /rerank and /v2/rerank.
    let case = r.cases.iter().find(|c| c.name == "instruction").unwrap();
    let p = &case.pairs[1];
    let (s, v) = post(
        &server,
        "/rerank",
        &json!({"model": qwen3, "query": p.query, "texts": [p.passage], "raw_scores": true,
                "instruction": case.instruction}),
    );
    assert_eq!(s, StatusCode::OK, "{v}");
    let got = v[0]["score"].as_f64().unwrap() as f32;
    assert!((got - (p.logits[1] - p.logits[0])).abs() < 1e-4, "{got}");
    let (s, v) = post(
        &server,
        "/v2/rerank",
        &json!({"model": qwen3, "query": p.query, "documents": [p.passage],
                "instruction": case.instruction}),
    );
    assert_eq!(s, StatusCode::OK, "{v}");
    let got = v["results"][0]["relevance_score"].as_f64().unwrap() as f32;
    assert!(
        (got - sigmoid(p.logits[1] - p.logits[0])).abs() < 1e-5,
        "{got}"
    );
    let (s, v) = post(
        &server,
        "/v1/rerank",
        &json!({"model": bert, "query": "q", "documents": ["d"], "instruction": "be brief"}),
    );
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("cross-encoder"),
        "{v}"
    );
    let (s, v) = post(
        &server,
        "/v1/rerank",
        &json!({"model": qwen3, "query": "q", "documents": ["d"], "long_documents": "chunk_max"}),
    );
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    server.stop();
}
