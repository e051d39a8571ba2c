//! `cargo bench --bench forward`: the forward pass over a (pairs × tokens per pair) grid with the
//! fused backend and with candle's, each kernel of the fused pass at the demo model's shapes,
//! and the tokenizer (one request, and the engine's tokenizer pool under concurrent requests).
//!
//! Throughput columns: `forward` counts tokens ("item" = token); `kernels` counts floating-point
//! operations of the kernel ("item" = FLOP, so Gitem/s reads GFLOP/s); `tokenizer` counts pairs.
//! The demo model must be present (`./scripts/fetch_demo_model.sh`). Compute runs on rayon's
//! global pool (one thread per core), as one model instance with every core would.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use divan::counter::ItemsCount;
use divan::Bencher;
use xbench::backend::{self, BackendKind, LoadedModel};
use xbench::batch::Batch;
use xbench::engine::{
    BatchingConfig, Engine, EngineConfig, ModelSpec, RerankInput, TokenizerPoolConfig,
};
use xbench::kernels::attention::{packed_attention, Heads, Scores};
use xbench::kernels::half::HalfKind;
use xbench::kernels::matmul::{Linear, Weight};
use xbench::kernels::rows::{self, Act};
use xbench::model::ModelFiles;
use xbench::tokenize::PairTokenizer;

fn main() {
    divan::main();
}

fn demo() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/demo-minilm-l6");
    assert!(
        dir.join("model.safetensors").is_file(),
        "the demo model is missing: run ./scripts/fetch_demo_model.sh"
    );
    dir
}

fn files() -> ModelFiles {
    ModelFiles::resolve(demo().to_str().expect("a UTF-8 path")).expect("the demo model loads")
}

fn model(kind: BackendKind) -> &'static LoadedModel {
    static FUSED: OnceLock<LoadedModel> = OnceLock::new();
    static CANDLE: OnceLock<LoadedModel> = OnceLock::new();
    let cell = match kind {
        BackendKind::Fused => &FUSED,
        BackendKind::Candle => &CANDLE,
    };
    cell.get_or_init(|| {
        backend::load(&ModelSpec {
            backend: kind,
            ..ModelSpec::new(demo().to_str().expect("a UTF-8 path"))
        })
        .expect("the demo model loads")
    })
}

/// `pairs` pairs of exactly `tokens` tokens each (ids spread over the vocabulary, [CLS] first).
fn batch(pairs: usize, tokens: usize) -> Batch {
    let mut b = Batch::new();
    for p in 0..pairs {
        let ids: Vec<u32> = (0..tokens)
            .map(|t| {
                if t == 0 {
                    101
                } else {
                    1000 + ((p * 7919 + t * 104_729) % 28_000) as u32
                }
            })
            .collect();
        let types: Vec<u32> = (0..tokens).map(|t| u32::from(t >= tokens / 2)).collect();
        b.push(&ids, &types);
    }
    b
}

/// "pairs x tokens per pair".
const GRID: &[&str] = &[
    "1x32", "1x128", "1x384", "8x32", "8x128", "8x384", "32x32", "32x128", "32x256",
];

fn shape(arg: &str) -> (usize, usize) {
    let (p, t) = arg.split_once('x').expect("PAIRSxTOKENS");
    (p.parse().expect("pairs"), t.parse().expect("tokens"))
}

mod forward {
    use super::*;

    fn run(bencher: Bencher, arg: &str, kind: BackendKind) {
        let (pairs, tokens) = shape(arg);
        let m = model(kind);
        let b = batch(pairs, tokens);
        bencher
            .counter(ItemsCount::new(pairs * tokens))
            .bench(|| m.backend.predict(&b).expect("forward pass"));
    }

    #[divan::bench(args = GRID, sample_count = 10, sample_size = 1)]
    fn fused(bencher: Bencher, arg: &str) {
        run(bencher, arg, BackendKind::Fused)
    }

    #[divan::bench(args = GRID, sample_count = 10, sample_size = 1)]
    fn candle(bencher: Bencher, arg: &str) {
        run(bencher, arg, BackendKind::Candle)
    }
}

/// Each kernel of the fused pass at the demo model's shapes (hidden 384, 12 heads of 32,
/// intermediate 1536), over 32 pairs of 128 tokens.
mod kernels {
    use super::*;

    const TOKENS: usize = 32 * 128;
    const PRECISIONS: &[&str] = &["fp32", "bf16", "fp16", "int8", "int4"];

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7 + seed * 13) % 97) as f32 - 48.0) / 48.0)
            .collect()
    }

    fn weight(inputs: usize, outputs: usize) -> Weight {
        Weight::from_out_in(
            &values(inputs * outputs, 1),
            values(outputs, 2),
            outputs,
            inputs,
        )
    }

    /// A product in fp32 (through gemm), bf16 / fp16 (16-bit weights, rounded activations),
    /// int8 (weights per column, activations per row) or int4 (weights per group of 32 inputs).
    fn matmul(bencher: Bencher, inputs: usize, outputs: usize, precision: &str) {
        let w = Linear::F32(weight(inputs, outputs));
        let w = match precision {
            "int8" => w.to_int8(),
            "int4" => w.to_int4(),
            "bf16" => w.to_half(HalfKind::Bf16),
            "fp16" => w.to_half(HalfKind::F16),
            _ => w,
        };
        let x = values(TOKENS * inputs, 3);
        let mut y = vec![0f32; TOKENS * outputs];
        bencher
            .counter(ItemsCount::new(2 * TOKENS * inputs * outputs))
            .bench_local(|| w.matmul_into(&x, &mut y, false));
    }

    #[divan::bench(args = PRECISIONS, sample_count = 20)]
    fn matmul_qkv_384_to_1152(bencher: Bencher, precision: &str) {
        matmul(bencher, 384, 1152, precision)
    }

    #[divan::bench(args = PRECISIONS, sample_count = 20)]
    fn matmul_attention_output_384_to_384(bencher: Bencher, precision: &str) {
        matmul(bencher, 384, 384, precision)
    }

    #[divan::bench(args = PRECISIONS, sample_count = 20)]
    fn matmul_intermediate_384_to_1536(bencher: Bencher, precision: &str) {
        matmul(bencher, 384, 1536, precision)
    }

    #[divan::bench(args = PRECISIONS, sample_count = 20)]
    fn matmul_output_1536_to_384(bencher: Bencher, precision: &str) {
        matmul(bencher, 1536, 384, precision)
    }

    #[divan::bench(sample_count = 20)]
    fn bias_gelu_1536(bencher: Bencher) {
        let bias = values(1536, 4);
        let mut x = values(TOKENS * 1536, 5);
        bencher
            .counter(ItemsCount::new(TOKENS * 1536))
            .bench_local(|| rows::bias_act(&mut x, &bias, Act::GeluErf));
    }

    #[divan::bench(sample_count = 20)]
    fn bias_layer_norm_384(bencher: Bencher) {
        let (bias, gamma, beta) = (values(384, 6), values(384, 7), values(384, 8));
        let mut x = values(TOKENS * 384, 9);
        bencher
            .counter(ItemsCount::new(TOKENS * 384))
            .bench_local(|| rows::bias_layer_norm(&mut x, Some(&bias), &gamma, &beta, 1e-12));
    }

    /// In f32, and in bf16 (a bf16 model's).
    #[divan::bench(args = ["f32", "bf16"], sample_count = 20)]
    fn attention_32_pairs_of_128(bencher: Bencher, scores: &str) {
        let scores = match scores {
            "bf16" => Scores::Bf16,
            _ => Scores::F32,
        };
        let shape = Heads {
            heads: 12,
            head_dim: 32,
            window: None,
        };
        let qkv = values(TOKENS * 3 * 384, 10);
        let bias = values(3 * 384, 11);
        let ranges: Vec<(usize, usize)> = (0..32).map(|p| (p * 128, 128)).collect();
        let mut out = vec![0f32; TOKENS * 384];
        // QKᵀ and PV: 2 · 2 · len² · head_dim per head.
        bencher
            .counter(ItemsCount::new(32usize * 12 * 4 * 128 * 128 * 32))
            .bench_local(|| packed_attention(&qkv, &bias, &ranges, shape, scores, &mut out));
    }
}

/// Tokenizing (query, passage) pairs of `data/pairs.jsonl`.
mod tokenizer {
    use super::*;

    fn pairs() -> &'static Vec<(String, String)> {
        static PAIRS: OnceLock<Vec<(String, String)>> = OnceLock::new();
        PAIRS.get_or_init(|| {
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/pairs.jsonl");
            let text = std::fs::read_to_string(path).expect("data/pairs.jsonl");
            text.lines()
                .take(256)
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
                    (
                        v["query"].as_str().unwrap_or("").into(),
                        v["passage"].as_str().unwrap_or("").into(),
                    )
                })
                .collect()
        })
    }

    /// One request of 32 passages, encoded in turn or with the tokenizers crate's batch encoding.
    #[divan::bench(args = [false, true], sample_count = 20)]
    fn one_request_of_32(bencher: Bencher, parallel: bool) {
        let tok = PairTokenizer::load(&files(), 512, None).expect("tokenizer");
        let query = pairs()[0].0.clone();
        let passages: Vec<String> = pairs().iter().take(32).map(|p| p.1.clone()).collect();
        bencher.counter(ItemsCount::new(32usize)).bench_local(|| {
            tok.encode_many(&query, &passages, parallel)
                .expect("encodes")
        });
    }

    /// The engine's tokenizer pool with 1 or 2 workers: 64 concurrent requests of 4 pairs.
    #[divan::bench(args = [1, 2], sample_count = 10)]
    fn pool_64_requests_of_4(bencher: Bencher, workers: usize) {
        let engine = Arc::new(
            Engine::start(&EngineConfig {
                models: vec![ModelSpec::new(demo().to_str().expect("a UTF-8 path"))],
                tokenizer_pool: TokenizerPoolConfig {
                    workers,
                    ..TokenizerPoolConfig::default()
                },
                batching: BatchingConfig::default(),
            })
            .expect("the engine starts"),
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .expect("a runtime");
        let inputs: Vec<Arc<RerankInput>> = pairs()
            .chunks(4)
            .take(64)
            .map(|c| {
                Arc::new(RerankInput::new(
                    c[0].0.clone(),
                    c.iter().map(|p| p.1.clone()).collect(),
                ))
            })
            .collect();
        bencher
            .counter(ItemsCount::new(64usize * 4))
            .bench_local(|| {
                runtime.block_on(async {
                    let tasks: Vec<_> = inputs
                        .iter()
                        .map(|i| {
                            let (engine, input) = (engine.clone(), i.clone());
                            tokio::spawn(async move { engine.tokenize(None, input).await })
                        })
                        .collect();
                    for t in tasks {
                        t.await.expect("joins").expect("tokenizes");
                    }
                })
            });
    }
}
