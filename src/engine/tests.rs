//! The engine with a deterministic mock backend: batch limits, the batching timeout, exact
//! reassembly of scores, overload, dropped callers, failed batches.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::backend::{Backend, BackendError, CacheUse, LoadedModel};
use crate::batch::Batch;
use crate::model::ModelFiles;
use crate::testing::TinyBert;

/// Scores a pair by its ids: `sum(ids) + 1000 × len`, so every pair's score is checkable.
/// Records the shape of every batch; can hold batches at a gate, fail or panic on demand.
#[derive(Default)]
struct Mock {
    padded: bool,
    batches: Mutex<Vec<(usize, usize, usize)>>, // pairs, real tokens, longest
    seen_ids: Mutex<Vec<u32>>,
    gate: Option<Arc<(Mutex<bool>, Condvar)>>,
    fail_on_id: Option<u32>,
    panic_on_id: Option<u32>,
}

fn expected_score(ids: &[u32]) -> f32 {
    ids.iter().map(|&i| i as f32).sum::<f32>() + 1000.0 * ids.len() as f32
}

impl Backend for Mock {
    fn is_padded(&self) -> bool {
        self.padded
    }
    fn health(&self) -> Result<(), BackendError> {
        Ok(())
    }
    fn predict(&self, batch: &Batch) -> Result<Vec<f32>, BackendError> {
        if let Some(gate) = &self.gate {
            let (open, cv) = &**gate;
            let mut o = open.lock().unwrap();
            while !*o {
                o = cv.wait(o).unwrap();
            }
        }
        self.batches
            .lock()
            .unwrap()
            .push((batch.pairs(), batch.total_tokens(), batch.max_length));
        self.seen_ids.lock().unwrap().extend(&batch.input_ids);
        if self
            .fail_on_id
            .is_some_and(|f| batch.input_ids.contains(&f))
        {
            return Err(BackendError::inference(std::io::Error::other(
                "injected failure",
            )));
        }
        if self
            .panic_on_id
            .is_some_and(|f| batch.input_ids.contains(&f))
        {
            panic!("injected panic");
        }
        Ok((0..batch.pairs())
            .map(|i| expected_score(&batch.input_ids[batch.range(i)]))
            .collect())
    }
}

struct Fixture {
    engine: Engine,
    mock: Arc<Mock>,
    _dir: tempfile::TempDir,
}

fn start(mock: Mock, batching: BatchingConfig, instances: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    TinyBert::default().write(dir.path()).unwrap();
    let mock = Arc::new(mock);
    let config = EngineConfig {
        models: vec![ModelSpec {
            workers: instances,
            threads: Some(1),
            ..ModelSpec::new(dir.path().to_str().unwrap())
        }],
        tokenizer_pool: TokenizerPoolConfig::default(),
        batching,
    };
    let backend = mock.clone();
    let engine = Engine::start_with(&config, move |spec| {
        let files = ModelFiles::resolve(&spec.name)?;
        let info = ModelInfo {
            name: spec.name.clone(),
            architecture: "mock".into(),
            num_labels: 1,
            labels: vec!["LABEL_0".into()],
            hidden_size: 8,
            num_layers: 1,
            max_positions: 64,
            precision: crate::model::Precision::Fp32,
            backend: crate::model::BackendKind::Candle,
            template: None,
        };
        let tokenizer = PairTokenizer::load(&files, info.max_positions, spec.max_length)?;
        Ok(LoadedModel {
            backend: backend.clone() as Arc<dyn Backend>,
            info,
            tokenizer,
            cache: CacheUse::None,
        })
    })
    .unwrap();
    Fixture {
        engine,
        mock,
        _dir: dir,
    }
}

/// A request of `pairs` pairs whose ids encode (request, pair) and whose lengths vary.
fn request(r: u32, pairs: usize) -> Arc<[Encoded]> {
    (0..pairs)
        .map(|p| {
            let len = 3 + (r as usize * 7 + p * 3) % 9;
            let ids: Vec<u32> = (0..len as u32).map(|k| r * 100 + p as u32 + k).collect();
            Encoded {
                type_ids: vec![0; ids.len()],
                ids,
            }
        })
        .collect::<Vec<_>>()
        .into()
}

fn batching(max_batch_size: usize, max_batch_tokens: usize, timeout_ms: f64) -> BatchingConfig {
    BatchingConfig {
        max_batch_size,
        max_batch_tokens,
        timeout_ms,
        ..BatchingConfig::default()
    }
}

async fn send_all(
    engine: &Arc<Engine>,
    requests: &[Arc<[Encoded]>],
) -> Vec<Result<Scored, EngineError>> {
    let tasks: Vec<_> = requests
        .iter()
        .cloned()
        .map(|r| {
            let e = engine.clone();
            tokio::spawn(async move { e.infer(None, r).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_never_exceed_the_pair_and_token_limits() {
    for padded in [false, true] {
        let f = start(
            Mock {
                padded,
                ..Mock::default()
            },
            batching(4, 40, 20.0),
            1,
        );
        let mock = f.mock.clone();
        let engine = Arc::new(f.engine);
        let requests: Vec<_> = (0..12).map(|r| request(r, 1 + r as usize % 6)).collect();
        for r in send_all(&engine, &requests).await {
            r.unwrap();
        }
        let batches = mock.batches.lock().unwrap().clone();
        assert!(!batches.is_empty());
        for (pairs, tokens, longest) in batches {
            assert!(pairs <= 4, "{pairs} pairs");
            let cost = if padded { pairs * longest } else { tokens };
            assert!(
                cost <= 40 || pairs == 1,
                "padded={padded}: {pairs} pairs cost {cost} tokens"
            );
        }
        let stats = engine.batch_stats();
        assert_eq!(
            stats.pairs,
            requests.iter().map(|r| r.len() as u64).sum::<u64>()
        );
        if !padded {
            assert_eq!(stats.padding_efficiency(), Some(1.0));
        }
    }
}

#[tokio::test]
async fn a_lone_request_waits_no_longer_than_the_timeout() {
    let f = start(Mock::default(), batching(32, 16384, 60.0), 1);
    let started = Instant::now();
    let scored = f.engine.infer(None, request(1, 2)).await.unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(55),
        "it waited for the batch to fill: {elapsed:?}"
    );
    assert!(
        elapsed <= Duration::from_millis(60 + 150),
        "waited too long: {elapsed:?}"
    );
    assert!(scored.timings.batch_wait >= Duration::from_millis(55));
    // With batching off, nothing waits.
    let f = start(
        Mock::default(),
        BatchingConfig {
            enabled: false,
            ..batching(32, 16384, 1000.0)
        },
        1,
    );
    let started = Instant::now();
    f.engine.infer(None, request(1, 2)).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_come_back_in_order_to_the_right_request_even_when_split() {
    for (enabled, instances) in [(true, 1), (true, 3), (false, 2)] {
        let f = start(
            Mock::default(),
            BatchingConfig {
                enabled,
                ..batching(5, 60, 2.0)
            },
            instances,
        );
        let engine = Arc::new(f.engine);
        // Requests of up to 13 pairs are split over several batches of at most 5.
        let requests: Vec<_> = (0..20)
            .map(|r| request(r, 1 + (r as usize * 5) % 13))
            .collect();
        let results = send_all(&engine, &requests).await;
        for (req, res) in requests.iter().zip(results) {
            let scored = res.unwrap();
            let want: Vec<f32> = req.iter().map(|e| expected_score(&e.ids)).collect();
            assert_eq!(scored.scores(), want);
            assert_eq!(
                scored.tokens,
                req.iter().map(|e| e.ids.len()).sum::<usize>()
            );
        }
    }
}

fn gate() -> Arc<(Mutex<bool>, Condvar)> {
    Arc::new((Mutex::new(false), Condvar::new()))
}

fn open(g: &Arc<(Mutex<bool>, Condvar)>) {
    *g.0.lock().unwrap() = true;
    g.1.notify_all();
}

/// One instance held at a gate, batches of one pair, a batch queue of `queue_capacity`.
fn gated_one_pair_batches(queue_capacity: usize) -> (Arc<(Mutex<bool>, Condvar)>, Fixture) {
    let g = gate();
    let f = start(
        Mock {
            gate: Some(g.clone()),
            ..Mock::default()
        },
        BatchingConfig {
            queue_capacity,
            ..batching(1, 16384, 0.0)
        },
        1,
    );
    (g, f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_overloaded_at_once() {
    let (g, f) = gated_one_pair_batches(2);
    let engine = Arc::new(f.engine);
    let mut tasks = Vec::new();
    for r in 0..12 {
        let e = engine.clone();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let result = e.infer(None, request(r, 1)).await;
            (result, started.elapsed())
        }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The instance is held at the gate: one batch computing, one waiting in the batcher for a
    // free instance, two queued; the rest are refused without waiting.
    tokio::time::sleep(Duration::from_millis(50)).await;
    open(&g);
    let (mut overloaded, mut answered) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            (
                Err(EngineError::Overloaded {
                    queue: "batch",
                    capacity: 2,
                }),
                took,
            ) => {
                assert!(took < Duration::from_millis(40), "refusal took {took:?}");
                overloaded += 1;
            }
            (Ok(_), _) => answered += 1,
            (other, _) => panic!("unexpected {other:?}"),
        }
    }
    assert!(overloaded >= 5, "{overloaded} overloaded");
    assert!(answered >= 4, "{answered} answered");
}

/// A batch is cut when an instance is free, not at the timeout: requests arriving while the only
/// instance is busy join one batch (with a 0 ms timeout, each would otherwise leave alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_grow_while_every_instance_is_busy() {
    let g = gate();
    let f = start(
        Mock {
            gate: Some(g.clone()),
            ..Mock::default()
        },
        batching(32, 16384, 0.0),
        1,
    );
    let mock = f.mock.clone();
    let engine = Arc::new(f.engine);
    let spawn = |r: u32| {
        let e = engine.clone();
        tokio::spawn(async move { (r, e.infer(None, request(r, 2)).await) })
    };
    let first = spawn(0);
    tokio::time::sleep(Duration::from_millis(30)).await;
    let rest: Vec<_> = (1..7).map(spawn).collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    open(&g);
    for t in std::iter::once(first).chain(rest) {
        let (r, scored) = t.await.unwrap();
        let want: Vec<f32> = request(r, 2)
            .iter()
            .map(|e| expected_score(&e.ids))
            .collect();
        assert_eq!(scored.unwrap().scores(), want, "request {r}");
    }
    let batches: Vec<usize> = mock.batches.lock().unwrap().iter().map(|b| b.0).collect();
    assert_eq!(batches, vec![2, 12], "pairs per batch");
}

/// With two instances free, the waiting pairs are shared between them (about half the tokens
/// each) instead of all going to one while the other idles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_pairs_are_shared_among_free_instances() {
    // The gate holds each batch until both are cut: on a loaded machine the first instance could
    // otherwise finish before the batcher cuts the second share, and count as free again.
    let g = gate();
    let f = start(
        Mock {
            gate: Some(g.clone()),
            ..Mock::default()
        },
        batching(32, 16384, 20.0),
        2,
    );
    let mock = f.mock.clone();
    let engine = Arc::new(f.engine);
    // Let both instances report free first.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let e = engine.clone();
    let waiting = tokio::spawn(async move { e.infer(None, request(5, 8)).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    open(&g);
    let scored = waiting.await.unwrap().unwrap();
    let want: Vec<f32> = request(5, 8)
        .iter()
        .map(|e| expected_score(&e.ids))
        .collect();
    assert_eq!(scored.scores(), want);
    let batches = mock.batches.lock().unwrap().clone();
    assert_eq!(batches.len(), 2, "{batches:?}");
    let total: usize = request(5, 8).iter().map(|e| e.ids.len()).sum();
    assert_eq!(batches[0].0 + batches[1].0, 8);
    for (_, tokens, _) in &batches {
        // Pairs of 3-11 tokens: each half is within one pair of an even split.
        assert!(
            tokens.abs_diff(total / 2) <= 11,
            "{batches:?} of {total} tokens"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_callers_request_is_not_computed() {
    let f = start(Mock::default(), batching(32, 16384, 300.0), 1);
    let mock = f.mock.clone();
    let engine = Arc::new(f.engine);
    // Request 7 waits in the batcher for its batch to fill; its caller gives up after 50 ms.
    let gave_up =
        tokio::time::timeout(Duration::from_millis(50), engine.infer(None, request(7, 3))).await;
    assert!(gave_up.is_err());
    // A later request is computed; request 7's pairs never reach the backend.
    engine.infer(None, request(8, 1)).await.unwrap();
    let seen = mock.seen_ids.lock().unwrap().clone();
    assert!(seen.iter().any(|&i| (800..900).contains(&i)));
    assert!(
        !seen.iter().any(|&i| (700..800).contains(&i)),
        "dropped request was computed"
    );
}

/// A caller that leaves while its request is queued gives its queue place back at once (a new
/// request is accepted where it would have been refused), and its pairs are never computed.
/// (This test found the batcher cutting a batch with no instance free once every waiting caller
/// had left, which overflowed its free-instance count and stopped it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_leaves_frees_its_queue_place_at_once() {
    let (g, f) = gated_one_pair_batches(1);
    let mock = f.mock.clone();
    let engine = Arc::new(f.engine);
    let spawn = |r: u32| {
        let e = engine.clone();
        tokio::spawn(async move { e.infer(None, request(r, 1)).await })
    };
    let settle = || tokio::time::sleep(Duration::from_millis(60));
    // Request 1 computes (held at the gate), 2 waits in the batcher, 3 holds the one place.
    let first = spawn(1);
    settle().await;
    let second = spawn(2);
    settle().await;
    let third = spawn(3);
    settle().await;
    assert_eq!(engine.models[0].slots.used(), 1);
    assert!(matches!(
        engine.infer(None, request(4, 1)).await,
        Err(EngineError::Overloaded { queue: "batch", .. })
    ));
    // Request 3's caller leaves: its place is free before the batcher reaches its entry.
    third.abort();
    assert!(third.await.unwrap_err().is_cancelled());
    assert_eq!(engine.models[0].slots.used(), 0);
    let fifth = spawn(5);
    settle().await;
    open(&g);
    for task in [first, second, fifth] {
        task.await.unwrap().unwrap();
    }
    let seen = mock.seen_ids.lock().unwrap().clone();
    assert!(
        !seen.iter().any(|&i| (300..400).contains(&i)),
        "the request whose caller left was computed"
    );
    assert_eq!(engine.models[0].slots.used(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_or_panicking_batch_fails_only_its_own_requests() {
    // Request 3's first id is 300; request 4's is 400.
    let f = start(
        Mock {
            fail_on_id: Some(300),
            panic_on_id: Some(400),
            ..Mock::default()
        },
        BatchingConfig {
            enabled: false,
            ..batching(8, 16384, 0.0)
        },
        1,
    );
    let engine = Arc::new(f.engine);
    let requests: Vec<_> = (1..7).map(|r| request(r, 2)).collect();
    let results = send_all(&engine, &requests).await;
    for (r, res) in (1..7).zip(results) {
        match (r, res) {
            (3, Err(e @ EngineError::Backend(BackendError::Inference(_)))) => {
                assert!(crate::error_chain(&e).contains("injected failure"), "{e}")
            }
            (4, Err(EngineError::Backend(BackendError::Panic(m)))) => {
                assert!(m.contains("injected panic"))
            }
            (3 | 4, other) => panic!("request {r}: {other:?}"),
            (_, res) => assert_eq!(res.unwrap().scores().len(), 2),
        }
    }
    // The instance survived its panic and keeps serving.
    engine.infer(None, request(9, 1)).await.unwrap();
}

/// A tokenizer worker that panics fails that request only; the same worker (the pool has one)
/// serves the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_tokenizer_fails_only_its_request() {
    let f = start(Mock::default(), BatchingConfig::default(), 1);
    let engine = Arc::new(f.engine);
    let bad = Arc::new(RerankInput::new(
        super::tokenizer_pool::tests::PANIC_QUERY,
        vec!["a passage".into()],
    ));
    match engine.rerank(None, bad).await {
        Err(EngineError::Tokenize(m)) => assert!(m.contains("injected tokenizer panic"), "{m}"),
        other => panic!("{other:?}"),
    }
    for _ in 0..3 {
        let good = Arc::new(RerankInput::new(
            "rust",
            vec!["bread".into(), "city".into()],
        ));
        assert_eq!(engine.rerank(None, good).await.unwrap().scores().len(), 2);
    }
}

#[tokio::test]
async fn unknown_models_and_empty_requests_are_errors() {
    let f = start(Mock::default(), BatchingConfig::default(), 1);
    match f.engine.infer(Some("nope"), request(1, 1)).await {
        Err(e @ EngineError::UnknownModel { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("unknown model 'nope'; served: "), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    let empty: Arc<[Encoded]> = Vec::new().into();
    assert!(matches!(
        f.engine.infer(None, empty).await,
        Err(EngineError::Empty)
    ));
    let input = Arc::new(RerankInput::new("q", vec![]));
    assert!(matches!(
        f.engine.rerank(None, input).await,
        Err(EngineError::Empty)
    ));
}

#[test]
fn the_same_model_listed_twice_adds_workers() {
    use crate::config::{compose, Override};
    let d =
        crate::config::test_conf(&[("config.yaml", "model_pool:\n  instances:\n    - name: m\n")]);
    let o = [Override::parse("model_pool.instances=[{name: m}, {name: m, workers: 2}]").unwrap()];
    let c = XbenchConfig::from_composed(&compose(d.path(), "config", &o).unwrap()).unwrap();
    let e = EngineConfig::from_config(&c);
    assert_eq!(e.models.len(), 1);
    assert_eq!(e.models[0].workers, 3);
}
