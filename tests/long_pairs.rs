//! Pairs of up to 8,192 tokens (bge-reranker-v2-m3's and ModernBERT's limit) on the tiny
//! 8k-position XLM-RoBERTa (`tests/data/tiny-xlm-roberta-8k`, transformers' logits for pairs of
//! 2,049, 4,096 and 8,192 tokens): both backends match transformers, attention's memory grows with
//! a pair's length (one 8,192-token pair through `xbench score` peaks under 600 MB), and the
//! batcher lets a pair over its token budget through alone. (Its own test binary: the RSS check
//! reads the peak of this process's children, of which `xbench score` is the only one.)

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use serde::Deserialize;
use xbench::backend::{self, BackendKind, ModelSpec};
use xbench::engine::{BatchingConfig, Engine, EngineConfig, RerankInput, TokenizerPoolConfig};
use xbench::model::Precision;

#[derive(Deserialize)]
struct Reference {
    pairs: Vec<RefPair>,
}

#[derive(Deserialize)]
struct RefPair {
    query: String,
    passage: String,
    input_ids: Vec<u32>,
    logits: Vec<f32>,
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny-xlm-roberta-8k")
}

fn reference() -> Reference {
    serde_json::from_str(&std::fs::read_to_string(dir().join("reference.json")).unwrap()).unwrap()
}

/// Each long pair alone and all three in one batch, on both backends, within 1e-4 of
/// transformers (fp32); bf16 within its pinned distance of fp32 (measured 2026-12-01: see
/// `BF16_TOLERANCE`).
#[test]
fn long_pairs_match_transformers_on_both_backends() {
    let r = reference();
    assert_eq!(
        r.pairs
            .iter()
            .map(|p| p.input_ids.len())
            .collect::<Vec<_>>(),
        [2049, 4096, 8192]
    );
    let mut fp32 = Vec::new();
    for (backend, precision) in [
        (BackendKind::Fused, Precision::Fp32),
        (BackendKind::Candle, Precision::Fp32),
        (BackendKind::Fused, Precision::Bf16),
    ] {
        let model = backend::load(&ModelSpec {
            backend,
            quantization: precision,
            ..ModelSpec::new(dir().to_str().unwrap())
        })
        .unwrap();
        assert_eq!(model.info.max_positions, 8192);
        assert_eq!(model.tokenizer.max_length(), 8192);
        let batch = model
            .tokenizer
            .encode_batch(
                r.pairs
                    .iter()
                    .map(|p| (p.query.as_str(), p.passage.as_str())),
            )
            .unwrap();
        assert_eq!(batch.pairs(), 3);
        for (i, p) in r.pairs.iter().enumerate() {
            assert_eq!(
                &batch.input_ids[batch.range(i)],
                &p.input_ids[..],
                "pair {i} ids"
            );
        }
        let all = model.backend.predict(&batch).unwrap();
        for (i, p) in r.pairs.iter().enumerate() {
            let one = model
                .tokenizer
                .encode_batch([(p.query.as_str(), p.passage.as_str())])
                .unwrap();
            let alone = model.backend.predict(&one).unwrap()[0];
            assert!(
                (alone - all[i]).abs() <= 1e-5,
                "{backend:?} {precision:?} pair {i}: batched"
            );
            if precision == Precision::Fp32 {
                let d = (alone - p.logits[0]).abs();
                assert!(
                    d <= 1e-4,
                    "{backend:?} pair {i}: {alone} vs transformers {}",
                    p.logits[0]
                );
                fp32.push(alone);
            } else {
                let d = (alone - fp32[i]).abs();
                assert!(
                    d <= BF16_TOLERANCE,
                    "bf16 pair {i}: {alone} vs fp32 {}: {d}",
                    fp32[i]
                );
            }
        }
    }
}

/// Max |Δlogit| of bf16 against fp32 on the three long pairs (measured 2026-12-01, AVX2: 0.0105, on
/// the 8,192-token pair).
const BF16_TOLERANCE: f32 = 0.025;

/// One 8,192-token pair through `xbench score` (the fused backend, fp32) peaks under 600 MB of
/// RSS: attention holds a block of queries' scores at a time, never `[tokens, tokens]` per head.
#[test]
fn an_8k_pair_through_xbench_score_peaks_under_600_mb() {
    let r = reference();
    let pair = &r.pairs[2];
    let line = serde_json::json!({"query": pair.query, "passage": pair.passage}).to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_xbench"))
        .args(["score", "--model", dir().to_str().unwrap(), "--input", "-"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{line}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let score = v["score"].as_f64().unwrap() as f32;
    assert!(
        (score - pair.logits[0]).abs() <= 1e-4,
        "{score} vs {}",
        pair.logits[0]
    );
    // SAFETY: getrusage writes the struct it is given; RUSAGE_CHILDREN covers the children this
    // process has waited for (the one above).
    let peak_kb = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage), 0);
        usage.ru_maxrss
    };
    let peak_mb = peak_kb as f64 / 1024.0;
    eprintln!("xbench score, one 8,192-token pair: peak RSS {peak_mb:.0} MB");
    assert!(peak_mb < 600.0, "peak RSS {peak_mb:.0} MB");
}

/// A pair longer than the batcher's token budget goes through alone, neither refused nor left
/// waiting, and pairs queued behind it are batched as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_over_the_token_budget_goes_through_alone() {
    let r = reference();
    let engine = Engine::start(&EngineConfig {
        models: vec![ModelSpec {
            threads: Some(1),
            ..ModelSpec::new(dir().to_str().unwrap())
        }],
        tokenizer_pool: TokenizerPoolConfig::default(),
        batching: BatchingConfig {
            max_batch_tokens: 1024,
            ..BatchingConfig::default()
        },
    })
    .unwrap();
    let engine = Arc::new(engine);
    let long = &r.pairs[1];
    let short = RerankInput::new(
        "what does the river carry",
        vec!["sand and mud".to_string(); 3],
    );
    let (a, b) = tokio::join!(
        engine.rerank(
            None,
            Arc::new(RerankInput::new(
                long.query.clone(),
                vec![long.passage.clone()]
            ))
        ),
        engine.rerank(None, Arc::new(short)),
    );
    let a = a.unwrap();
    assert_eq!(a.tokens, 4096);
    assert!((a.logits[0] - long.logits[0]).abs() <= 1e-4);
    assert_eq!(b.unwrap().pairs(), 3);
}
