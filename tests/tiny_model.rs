//! The cross-encoder on a tiny generated BERT: batching, padding and truncation invariants.

use std::path::Path;

use xbench::backend::{self, BackendKind, CacheUse, LoadedModel, ModelSpec};
use xbench::batch::Batch;
use xbench::model::{ModelFiles, Precision};
use xbench::score::{Pair, Scorer};
use xbench::testing::TinyBert;
use xbench::tokenize::PairTokenizer;

fn tiny() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    TinyBert::default().write(dir.path()).unwrap();
    dir
}

/// The model in `dir` on `backend` in `precision`, through the quantized-layer cache or not.
fn load(dir: &Path, backend: BackendKind, precision: Precision, cache: bool) -> LoadedModel {
    backend::load(&ModelSpec {
        backend,
        quantization: precision,
        quantization_cache: cache,
        ..ModelSpec::new(dir.to_str().unwrap())
    })
    .unwrap()
}

fn fused(dir: &Path) -> LoadedModel {
    load(dir, BackendKind::Fused, Precision::Fp32, false)
}

/// Every pair's logits, one row per pair.
fn rows(model: &LoadedModel, batch: &Batch) -> Vec<Vec<f32>> {
    model
        .backend
        .predict(batch)
        .unwrap()
        .chunks_exact(model.info.num_labels)
        .map(<[f32]>::to_vec)
        .collect()
}

/// The padded rectangle's logits (candle), one row per pair.
fn padded_rows(model: &LoadedModel, batch: &Batch) -> Vec<Vec<f32>> {
    model
        .backend
        .predict_padded(batch)
        .unwrap()
        .chunks_exact(model.info.num_labels)
        .map(<[f32]>::to_vec)
        .collect()
}

fn pairs() -> Vec<Pair> {
    let words = [
        "the", "steak", "rust", "bread", "paris", "river", "cook", "zq", "xylo",
    ];
    (0..41)
        .map(|i| {
            let q: Vec<&str> = (0..1 + i % 4)
                .map(|j| words[(i + j) % words.len()])
                .collect();
            let p: Vec<&str> = (0..(i * 7) % 60)
                .map(|j| words[(i * 3 + j) % words.len()])
                .collect();
            Pair::new(q.join(" "), p.join(" "))
        })
        .collect()
}

#[test]
fn batches_of_1_7_and_32_give_the_same_logits() {
    let dir = tiny();
    let scorer = Scorer::load_default(dir.path().to_str().unwrap(), None).unwrap();
    let pairs = pairs();
    let one = scorer.score(&pairs, 1).unwrap();
    assert_eq!(one.len(), pairs.len());
    for b in [7, 32] {
        let batched = scorer.score(&pairs, b).unwrap();
        for (i, (a, c)) in one.iter().zip(&batched).enumerate() {
            assert!((a - c).abs() <= 1e-5, "pair {i} at batch {b}: {a} vs {c}");
        }
    }
    // The scores are not all the same: the model reads its input.
    let spread =
        one.iter().cloned().fold(f32::MIN, f32::max) - one.iter().cloned().fold(f32::MAX, f32::min);
    assert!(spread > 0.05, "scores barely vary: {one:?}");
}

#[test]
fn pairs_are_encoded_with_the_bert_template_and_truncated_longest_first() {
    let dir = tiny();
    let files = ModelFiles::resolve(dir.path().to_str().unwrap()).unwrap();
    let tok = PairTokenizer::load(&files, 64, None).unwrap();
    assert_eq!(tok.max_length(), 64);
    let e = tok.encode("what is rust", "rust is a language").unwrap();
    // [CLS]=2 what is rust [SEP]=3 rust is a language [SEP]
    assert_eq!(e.ids.len(), 3 + 3 + 4);
    assert_eq!(e.ids[0], 2);
    assert_eq!(e.ids[4], 3);
    assert_eq!(*e.ids.last().unwrap(), 3);
    assert_eq!(e.type_ids, vec![0, 0, 0, 0, 0, 1, 1, 1, 1, 1]);
    // An empty passage still gets its separator.
    let e = tok.encode("rust", "").unwrap();
    assert_eq!(e.ids.len(), 4);
    assert_eq!(e.type_ids, vec![0, 0, 0, 1]);
    // longest_first: both long texts are cut, the total is the limit.
    let long = "the ".repeat(100);
    let e = tok.encode(&long, &long).unwrap();
    assert_eq!(e.ids.len(), 64);
    let firsts = e.type_ids.iter().filter(|&&t| t == 0).count();
    assert_eq!(firsts, 1 + 30 + 1, "query keeps half of the budget");
    // A short query keeps all its tokens, the passage takes the rest.
    let e = tok.encode("rust", &long).unwrap();
    assert_eq!(e.ids.len(), 64);
    assert_eq!(e.type_ids.iter().filter(|&&t| t == 0).count(), 3);
}

#[test]
fn max_length_is_the_smallest_of_request_positions_and_tokenizer_limit() {
    let dir = tiny();
    let files = ModelFiles::resolve(dir.path().to_str().unwrap()).unwrap();
    assert_eq!(
        PairTokenizer::load(&files, 64, Some(16))
            .unwrap()
            .max_length(),
        16
    );
    assert_eq!(
        PairTokenizer::load(&files, 64, Some(1000))
            .unwrap()
            .max_length(),
        64
    );
    assert_eq!(
        PairTokenizer::load(&files, 40, None).unwrap().max_length(),
        40
    );
    let err = PairTokenizer::load(&files, 64, Some(2))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("max_length 2 is too small"), "{err}");
}

#[test]
fn a_short_pair_scores_the_same_beside_a_long_one() {
    let dir = tiny();
    let model = fused(dir.path());
    let tok = &model.tokenizer;
    let alone = model
        .backend
        .predict(&tok.encode_batch([("rust", "bread")]).unwrap())
        .unwrap();
    let long = "paris river ".repeat(40);
    let both = model
        .backend
        .predict(
            &tok.encode_batch([("rust", "bread"), ("the city", long.as_str())])
                .unwrap(),
        )
        .unwrap();
    assert_eq!(both.len(), 2);
    assert!(
        (alone[0] - both[0]).abs() <= 1e-5,
        "{} vs {}",
        alone[0],
        both[0]
    );
    assert_eq!(model.info.num_labels, 1);
    assert_eq!(model.info.max_positions, 64);
}

/// A two-label model scores each pair by its last label's log-odds against the first: for two
/// labels, `l1 - l0`, whose sigmoid is the softmax probability of label 1.
#[test]
fn two_label_models_score_the_log_odds_of_their_last_label() {
    let dir = tempfile::tempdir().unwrap();
    TinyBert {
        num_labels: 2,
        ..TinyBert::default()
    }
    .write(dir.path())
    .unwrap();
    let model = fused(dir.path());
    assert_eq!(model.info.labels, ["LABEL_0", "LABEL_1"]);
    let logits = rows(
        &model,
        &model
            .tokenizer
            .encode_batch([("a", "b"), ("c", "d")])
            .unwrap(),
    );
    assert_eq!(logits.len(), 2);
    let scorer = Scorer::load_default(dir.path().to_str().unwrap(), None).unwrap();
    let scores = scorer
        .score(&[Pair::new("a", "b"), Pair::new("c", "d")], 2)
        .unwrap();
    for (row, score) in logits.iter().zip(&scores) {
        assert!(
            (score - (row[1] - row[0])).abs() <= 1e-5,
            "{row:?} -> {score}"
        );
        let softmax = row[1].exp() / (row[0].exp() + row[1].exp());
        assert!((xbench::score::sigmoid(*score) - softmax).abs() <= 1e-6);
    }
}

/// The packed forward pass (no padding) gives the padded path's logits, pair by pair, for batches
/// of very different lengths.
#[test]
fn packed_and_padded_forward_passes_agree() {
    let dir = tiny();
    let model = load(dir.path(), BackendKind::Candle, Precision::Fp32, false);
    assert_eq!(model.info.backend, BackendKind::Candle);
    let tok = &model.tokenizer;
    let pairs = pairs();
    for chunk in pairs.chunks(13) {
        let batch = tok
            .encode_batch(chunk.iter().map(|p| (p.query.as_str(), p.passage.as_str())))
            .unwrap();
        assert!(
            batch.total_tokens() < batch.padded_tokens(),
            "lengths differ"
        );
        let packed = rows(&model, &batch);
        let padded = padded_rows(&model, &batch);
        assert_eq!(packed.len(), chunk.len());
        for (i, (a, b)) in packed.iter().zip(&padded).enumerate() {
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() <= 1e-5, "pair {i}: packed {x}, padded {y}");
            }
        }
    }
}

/// The fused CPU kernels give candle's logits (padded path, the reference), pair by pair, for
/// batches of very different lengths, for every activation the kernels implement.
#[test]
fn fused_kernels_agree_with_candle() {
    for act in ["gelu", "gelu_new", "relu", "silu"] {
        let dir = tempfile::tempdir().unwrap();
        TinyBert {
            hidden_act: act.to_string(),
            ..TinyBert::default()
        }
        .write(dir.path())
        .unwrap();
        let fused = fused(dir.path());
        assert_eq!(fused.info.backend, BackendKind::Fused);
        let candle = load(dir.path(), BackendKind::Candle, Precision::Fp32, false);
        let tok = &fused.tokenizer;
        let pairs = pairs();
        let mut worst = 0f32;
        for chunk in pairs.chunks(13) {
            let batch = tok
                .encode_batch(chunk.iter().map(|p| (p.query.as_str(), p.passage.as_str())))
                .unwrap();
            let a = rows(&fused, &batch);
            let b = padded_rows(&candle, &batch);
            assert_eq!(a.len(), chunk.len());
            for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
                worst = worst.max((x - y).abs());
            }
        }
        assert!(worst <= 1e-5, "{act}: fused vs candle max |diff| {worst}");
    }
}

/// int8, int4, bf16 and fp16 on a model whose sizes fill no tile (hidden 36, intermediate 70), with two
/// labels: logits near fp32, the same pair by pair in any batch; the candle backend refuses int8
/// with a clear error.
#[test]
fn every_precision_stays_near_fp32_in_any_batch() {
    let dir = tempfile::tempdir().unwrap();
    TinyBert {
        hidden: 36,
        heads: 3,
        intermediate: 70,
        num_labels: 2,
        ..TinyBert::default()
    }
    .write(dir.path())
    .unwrap();
    let fp32 = fused(dir.path());
    let tok = &fp32.tokenizer;
    let pairs = pairs();
    let all = tok
        .encode_batch(pairs.iter().map(|p| (p.query.as_str(), p.passage.as_str())))
        .unwrap();
    let want = rows(&fp32, &all);
    let range = want.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    for (precision, tolerance) in [
        (Precision::Int8, 0.05),
        (Precision::Int4, 0.5),
        (Precision::Bf16, 0.02),
        (Precision::Fp16, 0.002),
    ] {
        let model = load(dir.path(), BackendKind::Fused, precision, false);
        assert_eq!(model.info.precision, precision);
        let got = rows(&model, &all);
        let mut worst = 0f32;
        for (w, g) in want.iter().flatten().zip(got.iter().flatten()) {
            worst = worst.max((w - g).abs());
        }
        assert!(
            worst <= tolerance * range.max(1.0) && worst > 0.0,
            "{precision:?}: max |diff| {worst} of {range}"
        );
        for (i, p) in pairs.iter().enumerate() {
            let one = tok
                .encode_batch([(p.query.as_str(), p.passage.as_str())])
                .unwrap();
            let alone = rows(&model, &one);
            assert_eq!(
                alone[0], got[i],
                "{precision:?} pair {i} alone vs in the batch"
            );
        }
    }
    let err = backend::load(&ModelSpec {
        backend: BackendKind::Candle,
        quantization: Precision::Int8,
        ..ModelSpec::new(dir.path().to_str().unwrap())
    })
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("int8 runs on backend fused"), "{err}");
}

/// The quantized-layer cache: written beside the model on the first load, read on the next with
/// the same logits, written over when the file is damaged or the weights change.
#[test]
fn quantized_layers_are_cached_beside_the_model() {
    let dir = tempfile::tempdir().unwrap();
    TinyBert {
        hidden: 36,
        heads: 3,
        intermediate: 70,
        ..TinyBert::default()
    }
    .write(dir.path())
    .unwrap();
    let cached = |precision| load(dir.path(), BackendKind::Fused, precision, true);
    let tok = fused(dir.path()).tokenizer;
    let pairs = pairs();
    let batch = tok
        .encode_batch(pairs.iter().map(|p| (p.query.as_str(), p.passage.as_str())))
        .unwrap();
    for precision in [
        Precision::Int8,
        Precision::Int4,
        Precision::Bf16,
        Precision::Fp16,
    ] {
        let plain = load(dir.path(), BackendKind::Fused, precision, false);
        assert_eq!(plain.cache, CacheUse::None);
        let want = plain.backend.predict(&batch).unwrap();
        let first = cached(precision);
        let path = match &first.cache {
            CacheUse::Written(path) => path.clone(),
            other => panic!("{precision:?}: {other:?}"),
        };
        assert_eq!(
            path,
            dir.path().join(format!("xbench-{}.gguf", precision.name()))
        );
        assert_eq!(
            first.backend.predict(&batch).unwrap(),
            want,
            "{precision:?}"
        );
        let second = cached(precision);
        assert_eq!(second.cache, CacheUse::Read(path.clone()));
        assert_eq!(second.info.precision, precision);
        assert_eq!(
            second.backend.predict(&batch).unwrap(),
            want,
            "{precision:?} cached"
        );
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let third = cached(precision);
        assert!(
            matches!(third.cache, CacheUse::Replaced { .. }),
            "{:?}",
            third.cache
        );
        assert_eq!(third.backend.predict(&batch).unwrap(), want);
    }
    // New weights (a later modification time): the cache is stale, computed and written again.
    let weights = dir.path().join("model.safetensors");
    std::fs::File::options()
        .write(true)
        .open(&weights)
        .unwrap()
        .set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(60))
        .unwrap();
    let used = cached(Precision::Int8).cache;
    assert!(matches!(used, CacheUse::Written(_)), "{used:?}");
    // fp32 has nothing to cache.
    assert_eq!(cached(Precision::Fp32).cache, CacheUse::None);
}
