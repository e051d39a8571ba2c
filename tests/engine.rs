//! The engine on the demo model: scores equal `xbench score`'s whatever the worker counts and
//! batching, and every stage of the load generator gives a consistent row.

use std::sync::Arc;
use std::time::Duration;

use xbench::engine::{
    BatchingConfig, Engine, EngineConfig, ModelSpec, RerankInput, TokenizerPoolConfig,
};
use xbench::loadgen::{self, Load, RunSpec, Stage, Window, Workload};
use xbench::report::{BenchRow, CellLabels};
use xbench::score::{Pair, Scorer};

mod support;
use support::{demo, sample};

fn config(
    model: &str,
    tok: usize,
    parallel: bool,
    inst: usize,
    batching: BatchingConfig,
) -> EngineConfig {
    EngineConfig {
        models: vec![ModelSpec {
            workers: inst,
            ..ModelSpec::new(model)
        }],
        tokenizer_pool: TokenizerPoolConfig {
            workers: tok,
            parallelism: parallel,
            ..TokenizerPoolConfig::default()
        },
        batching,
    }
}

#[test]
fn engine_scores_equal_xbench_score_for_any_workers_and_batching() {
    let model = demo();
    let pairs = sample(24);
    let want = Scorer::load_default(&model, None)
        .unwrap()
        .score(&pairs, 32)
        .unwrap();
    let configs = [
        config(&model, 1, false, 1, BatchingConfig::default()),
        config(
            &model,
            2,
            true,
            2,
            BatchingConfig {
                max_batch_size: 5,
                ..BatchingConfig::default()
            },
        ),
        config(
            &model,
            1,
            true,
            1,
            BatchingConfig {
                enabled: false,
                max_batch_size: 7,
                ..BatchingConfig::default()
            },
        ),
        config(
            &model,
            2,
            false,
            1,
            BatchingConfig {
                max_batch_tokens: 900,
                timeout_ms: 20.0,
                ..BatchingConfig::default()
            },
        ),
    ];
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for cfg in configs {
        let engine = Arc::new(Engine::start(&cfg).unwrap());
        // Requests of 1 to 6 passages, sent concurrently so the batcher mixes them.
        let mut requests = Vec::new();
        let mut at = 0;
        while at < pairs.len() {
            let n = (1 + requests.len() % 6).min(pairs.len() - at);
            requests.push((at, n));
            at += n;
        }
        let got: Vec<Vec<f32>> = runtime.block_on(async {
            let tasks: Vec<_> = requests
                .iter()
                .map(|&(at, n)| {
                    let engine = engine.clone();
                    // Every pair keeps its own query: one request per query run.
                    let chunk: Vec<Pair> = pairs[at..at + n].to_vec();
                    tokio::spawn(async move {
                        let mut scores = Vec::new();
                        let mut i = 0;
                        while i < chunk.len() {
                            let q = &chunk[i].query;
                            let j = i + chunk[i..].iter().take_while(|p| &p.query == q).count();
                            let input = Arc::new(RerankInput::new(
                                q.clone(),
                                chunk[i..j].iter().map(|p| p.passage.clone()).collect(),
                            ));
                            scores.extend(engine.rerank(None, input).await.unwrap().scores());
                            i = j;
                        }
                        scores
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        });
        let got: Vec<f32> = got.into_iter().flatten().collect();
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5,
                "{cfg:?}: pair {i}: engine {g}, xbench score {w}"
            );
        }
    }
}

#[test]
fn every_stage_gives_a_consistent_row() {
    let model = demo();
    let engine =
        Arc::new(Engine::start(&config(&model, 2, false, 1, BatchingConfig::default())).unwrap());
    let workload = Workload::from_pairs(&sample(40), 4);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    for (stage, load) in [
        (Stage::Tokenize, Load::Closed { concurrency: 2 }),
        (Stage::Infer, Load::Closed { concurrency: 2 }),
        (
            Stage::Full,
            Load::Open {
                rate: 20.0,
                poisson: true,
            },
        ),
    ] {
        let spec = RunSpec {
            stage,
            load,
            models: Vec::new(),
            warmup: 1,
            window: Window::count(6, Duration::from_secs(120)),
            seed: 1,
        };
        let out = runtime
            .block_on(loadgen::run(engine.clone(), &workload, &spec))
            .unwrap();
        let labels = CellLabels {
            stage,
            model: model.clone(),
            tokenizer_workers: 2,
            model_workers: 1,
            threads_per_worker: engine.threads_per_worker(None).unwrap(),
            parallelism: false,
            pairs_per_request: 4,
            max_batch_size: 32,
            timeout_ms: 5.0,
            load,
        };
        let row = BenchRow::new(&labels, &out);
        assert_eq!(row.requests, 6, "{stage}: {row:?}");
        assert!(row.errors.is_empty(), "{stage}: {:?}", row.errors);
        assert!(row.rps > 0.0 && row.duration_s > 0.0);
        assert!((row.qps - row.rps * 4.0).abs() <= 1e-9 * row.qps.max(1.0));
        let l = row.latency_ms;
        assert!(
            0.0 < l.p50 && l.p50 <= l.p95 && l.p95 <= l.p99 && l.p99 <= l.max,
            "{l:?}"
        );
        assert!(l.mean > 0.0 && l.mean <= l.max);
        let s = row.stages_ms;
        match stage {
            Stage::Tokenize => {
                assert!(s.tokenize > 0.0 && s.inference == 0.0);
                assert!(row.mean_batch_size.is_none() && row.model_workers.is_none());
            }
            Stage::Infer => {
                assert!(s.tokenize == 0.0 && s.inference > 0.0);
                assert!(row.tokenizer_workers.is_none());
            }
            Stage::Full => assert!(s.tokenize > 0.0 && s.inference > 0.0),
        }
        if stage != Stage::Tokenize {
            let b = row.mean_batch_size.unwrap();
            assert!((1.0..=32.0).contains(&b), "{b}");
            let p = row.padding_efficiency.unwrap();
            assert!(p > 0.0 && p <= 1.0, "{p}");
            // The stages account for the request's time (within the client's own overhead).
            assert!(s.queue + s.tokenize + s.batch_wait + s.inference <= l.mean * 1.01 + 0.5);
        }
    }
}

/// The measured window lasts its time budget AND its minimum count, and the hard cap stops it.
#[test]
fn the_window_lasts_its_budget_and_count_and_stops_at_the_cap() {
    let model = demo();
    let engine =
        Arc::new(Engine::start(&config(&model, 1, false, 1, BatchingConfig::default())).unwrap());
    let workload = Workload::from_pairs(&sample(40), 4);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let run = |load: Load, window: Window| {
        let spec = RunSpec {
            stage: Stage::Tokenize,
            load,
            models: Vec::new(),
            warmup: 0,
            window,
            seed: 3,
        };
        let out = runtime
            .block_on(loadgen::run(engine.clone(), &workload, &spec))
            .unwrap();
        (out.recorder.latency_us.len(), out.wall)
    };
    let closed = Load::Closed { concurrency: 2 };
    let secs = Duration::from_secs_f64;
    // Count only: exactly the minimum.
    assert_eq!(run(closed, Window::count(7, secs(60.0))).0, 7);
    // Budget of 0.3 s: tokenizing 4 pairs takes well under a millisecond, so the budget, not the
    // minimum, ends the window.
    let (n, wall) = run(
        closed,
        Window {
            duration: secs(0.3),
            min_requests: 3,
            max_duration: secs(60.0),
        },
    );
    assert!(wall >= secs(0.3) && n > 3, "{n} requests in {wall:?}");
    // A minimum that cannot be reached: the cap stops it.
    let (n, wall) = run(
        closed,
        Window {
            duration: Duration::ZERO,
            min_requests: usize::MAX,
            max_duration: secs(0.2),
        },
    );
    assert!(wall < secs(5.0) && n > 0, "{n} requests in {wall:?}");
    // Open loop, constant 10/s: a 0.55 s budget issues 6 (at 0, 100, ..., 500 ms); a minimum of
    // 9 keeps it going to 800 ms.
    let open = Load::Open {
        rate: 10.0,
        poisson: false,
    };
    let window = |min| Window {
        duration: secs(0.55),
        min_requests: min,
        max_duration: secs(60.0),
    };
    assert_eq!(run(open, window(1)).0, 6);
    assert_eq!(run(open, window(9)).0, 9);
}

#[test]
fn several_models_in_one_pool_route_by_name() {
    let dirs: Vec<tempfile::TempDir> = [3u64, 4]
        .iter()
        .map(|&seed| {
            let d = tempfile::tempdir().unwrap();
            xbench::testing::TinyBert {
                seed,
                ..Default::default()
            }
            .write(d.path())
            .unwrap();
            d
        })
        .collect();
    let names: Vec<String> = dirs
        .iter()
        .map(|d| d.path().to_str().unwrap().to_string())
        .collect();
    let cfg = EngineConfig {
        models: vec![
            ModelSpec {
                workers: 2,
                ..ModelSpec::new(&names[0])
            },
            ModelSpec::new(&names[1]),
        ],
        tokenizer_pool: TokenizerPoolConfig::default(),
        batching: BatchingConfig::default(),
    };
    let engine = Engine::start(&cfg).unwrap();
    assert_eq!(engine.model_names(), names);
    let passages = vec![
        "rust is a language".to_string(),
        "bake the bread".to_string(),
    ];
    let pairs: Vec<Pair> = passages
        .iter()
        .map(|p| Pair::new("what is rust", p.clone()))
        .collect();
    let input = Arc::new(RerankInput::new("what is rust", passages));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut all = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let want = Scorer::load_default(name, None)
            .unwrap()
            .score(&pairs, 1)
            .unwrap();
        let got = runtime
            .block_on(engine.rerank(Some(name), input.clone()))
            .unwrap()
            .scores();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-5, "model {i}: {g} vs {w}");
        }
        all.push(got);
    }
    assert_ne!(all[0], all[1], "the two models differ");
    // Without a name, the first model answers; an unknown name lists the loaded ones.
    let first = runtime
        .block_on(engine.rerank(None, input.clone()))
        .unwrap()
        .scores();
    assert_eq!(first, all[0]);
    let err = runtime
        .block_on(engine.rerank(Some("other"), input))
        .unwrap_err()
        .to_string();
    assert!(err.contains(&names[0]) && err.contains(&names[1]), "{err}");
}
