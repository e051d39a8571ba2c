//! Parity with transformers on the demo model: token ids equal, logits within 1e-4 of
//! `AutoModelForSequenceClassification` (fp32, CPU), and batch size does not change a logit by more
//! than 1e-5. The reference comes from `scripts/reference_scores.py`; the demo model from
//! `scripts/fetch_demo_model.sh` (which `scripts/test.sh` runs first).

use std::path::Path;

use candle_core::Device;
use serde::Deserialize;
use xbench::model::Kernels;
use xbench::score::{Pair, Scorer};

const DEMO: &str = "models/demo-minilm-l6";
const LOGIT_TOLERANCE: f32 = 1e-4;
const BATCH_TOLERANCE: f32 = 1e-5;

#[derive(Deserialize)]
struct Reference {
    model: String,
    max_length: usize,
    pairs: Vec<ReferencePair>,
}

#[derive(Deserialize)]
struct ReferencePair {
    query: String,
    passage: String,
    input_ids: Vec<u32>,
    token_type_ids: Vec<u32>,
    logit: f32,
}

fn setup() -> (Reference, Scorer) {
    setup_with(Kernels::Fused)
}

fn setup_with(kernels: Kernels) -> (Reference, Scorer) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("tests/data/reference_scores.json")).unwrap();
    let reference: Reference = serde_json::from_str(&text).unwrap();
    assert_eq!(reference.model, DEMO);
    let model_dir = root.join(DEMO);
    assert!(
        model_dir.join("model.safetensors").is_file(),
        "the demo model is missing: run ./scripts/fetch_demo_model.sh"
    );
    let scorer =
        Scorer::load_with(model_dir.to_str().unwrap(), &Device::Cpu, None, kernels).unwrap();
    assert_eq!(scorer.tokenizer().max_length(), reference.max_length);
    (reference, scorer)
}

#[test]
fn token_ids_match_transformers() {
    let (reference, scorer) = setup();
    assert!(reference.pairs.len() >= 64);
    let mut truncated = 0;
    for (i, r) in reference.pairs.iter().enumerate() {
        let e = scorer.tokenizer().encode(&r.query, &r.passage).unwrap();
        assert_eq!(e.ids, r.input_ids, "input ids of pair {i} ({:?})", r.query);
        assert_eq!(e.type_ids, r.token_type_ids, "token type ids of pair {i}");
        truncated += usize::from(e.ids.len() == reference.max_length);
    }
    assert!(
        truncated >= 3,
        "the reference must include pairs cut at max_length"
    );
}

/// Both kernels: the fused CPU pass (the default) and candle's ops.
#[test]
fn logits_match_transformers_and_do_not_depend_on_batch_size() {
    for kernels in [Kernels::Fused, Kernels::Candle] {
        logits_match_with(kernels);
    }
}

fn logits_match_with(kernels: Kernels) {
    let (reference, scorer) = setup_with(kernels);
    let pairs: Vec<Pair> = reference
        .pairs
        .iter()
        .map(|r| Pair::new(r.query.clone(), r.passage.clone()))
        .collect();
    let by_32 = scorer.score(&pairs, 32).unwrap();
    let mut worst = 0f32;
    for (i, (got, r)) in by_32.iter().zip(&reference.pairs).enumerate() {
        let diff = (got - r.logit).abs();
        worst = worst.max(diff);
        assert!(
            diff <= LOGIT_TOLERANCE,
            "{kernels:?} kernels, pair {i}: xbench {got}, transformers {}",
            r.logit
        );
    }
    eprintln!(
        "{} kernels: max |xbench - transformers| = {worst:e} over {} pairs",
        kernels.name(),
        pairs.len()
    );
    let mut worst = 0f32;
    for b in [1, 7] {
        let other = scorer.score(&pairs, b).unwrap();
        for (i, (a, c)) in by_32.iter().zip(&other).enumerate() {
            worst = worst.max((a - c).abs());
            assert!(
                (a - c).abs() <= BATCH_TOLERANCE,
                "{kernels:?} kernels, pair {i}: batch 32 {a}, batch {b} {c}"
            );
        }
    }
    eprintln!(
        "{} kernels: max |batch 32 - batch 1 or 7| = {worst:e}",
        kernels.name()
    );
}
