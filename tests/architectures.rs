//! Every registered family ([`xbench::model::family::REGISTRY`]) against transformers: its tiny
//! random-weight checkpoint (`tests/data/<tiny_checkpoint>`, written with transformers by
//! `scripts/make_tiny_architectures.py`, fixed seeds) and the logits transformers computed for 17
//! pairs (`reference.json` beside each model). Both backends, batched and one by one, token ids
//! included. A family registered without a checkpoint fails here. (Generative rerankers, read
//! through prompts, are `tests/generative.rs`'s.)

use std::path::{Path, PathBuf};

use serde::Deserialize;
use xbench::backend::{self, BackendKind, LoadedModel, ModelSpec};
use xbench::model::family::{Family, REGISTRY};
use xbench::model::Precision;

#[derive(Deserialize)]
struct Reference {
    max_length: usize,
    pairs: Vec<RefPair>,
}

#[derive(Deserialize)]
struct RefPair {
    query: String,
    passage: String,
    input_ids: Vec<u32>,
    token_type_ids: Vec<u32>,
    logits: Vec<f32>,
}

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// `name` on `backend` in `precision` (max_length: the model's limit).
fn load(name: &str, backend: BackendKind, precision: Precision) -> LoadedModel {
    backend::load(&ModelSpec {
        backend,
        quantization: precision,
        ..ModelSpec::new(dir(name).to_str().unwrap())
    })
    .unwrap()
}

fn reference(name: &str) -> Reference {
    let text = std::fs::read_to_string(dir(name).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Logits of every reference pair, `batch` pairs per forward pass.
fn logits(model: &LoadedModel, r: &Reference, batch: usize) -> Vec<Vec<f32>> {
    let labels = model.info.num_labels;
    let mut out = Vec::new();
    for chunk in r.pairs.chunks(batch) {
        let encoded = model
            .tokenizer
            .encode_batch(chunk.iter().map(|p| (p.query.as_str(), p.passage.as_str())))
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

/// Loads the tiny checkpoint `name` of `family` on both backends and checks token ids, the type
/// ids the model sees and logits against transformers.
fn matches_transformers(family: &Family, name: &str) {
    let r = reference(name);
    let want: Vec<Vec<f32>> = r.pairs.iter().map(|p| p.logits.clone()).collect();
    for kernels in BackendKind::ALL {
        let model = load(name, kernels, Precision::Fp32);
        let info = &model.info;
        assert_eq!(info.backend, kernels);
        assert!(
            family.architectures.contains(&info.architecture.as_str()),
            "{name}: {}",
            info.architecture
        );
        assert_eq!(info.max_positions, r.max_length, "usable positions");
        for (i, p) in r.pairs.iter().enumerate() {
            let e = model.tokenizer.encode(&p.query, &p.passage).unwrap();
            assert_eq!(e.ids, p.input_ids, "{name} pair {i} token ids");
            assert_eq!(e.type_ids, p.token_type_ids, "{name} pair {i} type ids");
        }
        let one = logits(&model, &r, 1);
        let all = logits(&model, &r, r.pairs.len());
        let d = max_diff(&one, &want);
        assert!(
            d <= 1e-4,
            "{name} {kernels:?}: max |Δlogit| vs transformers {d}"
        );
        let d = max_diff(&one, &all);
        assert!(d <= 1e-5, "{name} {kernels:?}: batched vs one by one {d}");
        if kernels == BackendKind::Candle {
            // The padded rectangle (positions of padding included) gives the same logits.
            let batch = model
                .tokenizer
                .encode_batch(
                    r.pairs
                        .iter()
                        .map(|p| (p.query.as_str(), p.passage.as_str())),
                )
                .unwrap();
            let padded: Vec<Vec<f32>> = model
                .backend
                .predict_padded(&batch)
                .unwrap()
                .chunks_exact(info.num_labels)
                .map(<[f32]>::to_vec)
                .collect();
            let d = max_diff(&padded, &want);
            assert!(d <= 1e-4, "{name}: padded vs transformers {d}");
        }
    }
}

#[test]
fn every_family_matches_transformers() {
    for family in REGISTRY.iter().filter(|f| !f.is_generative()) {
        for name in family.tiny_checkpoints {
            matches_transformers(family, name);
        }
    }
}

/// Every checkpoint of every family, once.
fn checkpoints() -> impl Iterator<Item = &'static str> {
    REGISTRY
        .iter()
        .filter(|f| !f.is_generative())
        .flat_map(|f| f.tiny_checkpoints.iter().copied())
}

/// Label names come from `id2label` (`LABEL_i` where there is none).
#[test]
fn labels_are_the_configs() {
    for (name, labels) in [
        ("tiny-bert", &["LABEL_0", "LABEL_1"][..]),
        ("tiny-xlm-roberta", &["LABEL_0"]),
        ("tiny-distilbert", &["irrelevant", "partial", "relevant"]),
        ("tiny-electra", &["LABEL_0"]),
        ("tiny-modernbert", &["LABEL_0"]),
        ("tiny-deberta-v2", &["LABEL_0"]),
    ] {
        let model = load(name, BackendKind::Candle, Precision::Fp32);
        assert_eq!(model.info.labels, labels, "{name}");
    }
}

/// Max |Δlogit| against fp32 each precision may reach on each tiny checkpoint: fp16, bf16,
/// int8, int4. About twice what was measured (AMD EPYC Zen 1, AVX2, 2026-12-01):
///
/// | checkpoint | fp16 | bf16 | int8 | int4 |
/// |---|---|---|---|---|
/// | tiny-bert | 0.0015 | 0.026 | 0.087 | 0.76 |
/// | tiny-xlm-roberta | 0.0010 | 0.0087 | 0.015 | 0.12 |
/// | tiny-roberta | 0.0017 | 0.0074 | 0.035 | 0.21 |
/// | tiny-camembert | 0.0027 | 0.016 | 0.027 | 0.31 |
/// | tiny-distilbert | 0.0031 | 0.030 | 0.045 | 1.06 |
/// | tiny-electra | 0.0012 | 0.017 | 0.025 | 0.31 |
/// | tiny-modernbert | 0.0058 | 0.050 | 0.13 | 1.11 |
/// | tiny-deberta-v2 | 0.0034 | 0.045 | 0.084 | 0.98 |
///
/// (Random weights quantize badly to four bits; GPTQ's damping moved DistilBERT's int4 from under
/// 1.0 at 0.01. tiny-modernbert's logits spread over 4.8, four times the others'.)
const TOLERANCES: &[(&str, [f32; 4])] = &[
    ("tiny-bert", [0.003, 0.05, 0.15, 1.5]),
    ("tiny-xlm-roberta", [0.002, 0.02, 0.03, 0.25]),
    ("tiny-roberta", [0.0035, 0.015, 0.07, 0.45]),
    ("tiny-camembert", [0.0055, 0.032, 0.055, 0.65]),
    ("tiny-distilbert", [0.0062, 0.06, 0.09, 1.5]),
    ("tiny-electra", [0.0025, 0.035, 0.05, 0.65]),
    ("tiny-modernbert", [0.012, 0.1, 0.25, 2.2]),
    ("tiny-deberta-v2", [0.007, 0.09, 0.17, 2.0]),
];

/// Every precision runs every family (int8 and int4 calibrated with their own tokenizers), stays
/// within its pinned distance of fp32 ([`TOLERANCES`]) and does not depend on the batch.
#[test]
fn every_precision_runs_every_family_batch_independently() {
    for name in checkpoints() {
        let Some((_, tolerances)) = TOLERANCES.iter().find(|(n, _)| *n == name) else {
            panic!("{name}: no tolerances pinned in TOLERANCES");
        };
        let r = reference(name);
        let fp32 = load(name, BackendKind::Fused, Precision::Fp32);
        let want = logits(&fp32, &r, r.pairs.len());
        let precisions = [
            Precision::Fp16,
            Precision::Bf16,
            Precision::Int8,
            Precision::Int4,
        ];
        for (precision, &tolerance) in precisions.into_iter().zip(tolerances) {
            let model = load(name, BackendKind::Fused, precision);
            assert_eq!(model.info.precision, precision);
            let one = logits(&model, &r, 1);
            let all = logits(&model, &r, 7);
            let d = max_diff(&one, &all);
            assert!(d <= 1e-5, "{name} {precision:?}: batched vs one by one {d}");
            let d = max_diff(&one, &want);
            assert!(d <= tolerance, "{name} {precision:?}: vs fp32 {d}");
        }
    }
}

/// Pairs over the model's positions are cut to them (XLM-RoBERTa's usable positions are
/// `max_position_embeddings - pad_token_id - 1`), and a batch over them is refused, not run.
#[test]
fn xlm_roberta_positions_stop_before_the_table_ends() {
    for kernels in BackendKind::ALL {
        let model = load("tiny-xlm-roberta", kernels, Precision::Fp32);
        assert_eq!(model.info.max_positions, 64);
        let mut batch = xbench::batch::Batch::new();
        batch.push(&[5; 65], &[0; 65]);
        let err = model.backend.predict(&batch).unwrap_err();
        let text = xbench::error_chain(&err);
        assert!(text.contains("64"), "{kernels:?}: {text}");
    }
}

/// A tokenizer whose post-processor does not add the pair's special tokens would feed the head a
/// word instead of `[CLS]`: the load is refused, naming the template the family needs.
#[test]
fn a_tokenizer_without_the_pair_template_is_refused() {
    let tmp = edited_copy("tiny-bert", |tokenizer, _| {
        tokenizer["post_processor"] = serde_json::Value::Null;
    });
    let spec = ModelSpec::new(tmp.path().to_str().unwrap());
    let err = backend::load(&spec).err().expect("refused");
    let text = xbench::error_chain(&err);
    assert!(
        text.contains("tokenizer.json")
            && text.contains("special tokens")
            && text.contains("[CLS] A [SEP] B [SEP]"),
        "{text}"
    );
}

/// A copy of the checkpoint `name` in a temporary directory, `edit` applied to its
/// `tokenizer.json` and `tokenizer_config.json`.
fn edited_copy(
    name: &str,
    edit: impl FnOnce(&mut serde_json::Value, &mut serde_json::Value),
) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    let read = |file: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join(file)).unwrap()).unwrap()
    };
    let (mut tokenizer, mut config) = (read("tokenizer.json"), read("tokenizer_config.json"));
    edit(&mut tokenizer, &mut config);
    for (file, value) in [
        ("tokenizer.json", tokenizer),
        ("tokenizer_config.json", config),
    ] {
        std::fs::write(tmp.path().join(file), value.to_string()).unwrap();
    }
    tmp
}

/// Type ids reach the model only when its tokenizer passes them, as transformers decides
/// (`model_input_names`, else the tokenizer class's default): an XLM-RoBERTa tokenizer whose
/// template gives the passage type 1 still scores as transformers does (its one token type
/// never sees the 1), and a BERT tokenizer told to pass none gives other logits than with them.
#[test]
fn type_ids_reach_the_model_only_when_the_tokenizer_passes_them() {
    let r = reference("tiny-xlm-roberta");
    let want: Vec<Vec<f32>> = r.pairs.iter().map(|p| p.logits.clone()).collect();
    let segments = edited_copy("tiny-xlm-roberta", |tokenizer, _| {
        let pair = &mut tokenizer["post_processor"]["pair"];
        let last = pair.as_array().unwrap().len();
        // "<s> A </s> </s> B </s>": B and the closing </s> get type 1.
        for item in pair.as_array_mut().unwrap()[4..last].iter_mut() {
            let kind = item.as_object_mut().unwrap().values_mut().next().unwrap();
            kind["type_id"] = 1.into();
        }
    });
    for kernels in BackendKind::ALL {
        let model = backend::load(&ModelSpec {
            backend: kernels,
            ..ModelSpec::new(segments.path().to_str().unwrap())
        })
        .unwrap();
        assert!(!model.tokenizer.passes_type_ids());
        let probe = model.tokenizer.probe("query", "passage").unwrap();
        assert!(
            probe.type_ids.contains(&1),
            "the edited template assigns type 1"
        );
        let d = max_diff(&logits(&model, &r, 7), &want);
        assert!(d <= 1e-4, "{kernels:?}: {d}");
    }

    // tiny-bert with model_input_names lacking token_type_ids: zeros reach the model.
    let bert = reference("tiny-bert");
    let without = edited_copy("tiny-bert", |_, config| {
        config["model_input_names"] = serde_json::json!(["input_ids", "attention_mask"]);
    });
    let model = backend::load(&ModelSpec::new(without.path().to_str().unwrap())).unwrap();
    assert!(!model.tokenizer.passes_type_ids());
    let e = model.tokenizer.encode("query", "passage").unwrap();
    assert!(e.type_ids.iter().all(|&t| t == 0));
    let with = load("tiny-bert", BackendKind::Fused, Precision::Fp32);
    assert!(with.tokenizer.passes_type_ids());
    let d = max_diff(&logits(&model, &bert, 17), &logits(&with, &bert, 17));
    assert!(d > 1e-3, "type ids change BERT's logits: {d}");
}

/// An `architectures` value no family loads is refused with the list of those that load, and a
/// decoder config (causal attention) is refused by name.
#[test]
fn unsupported_configs_are_refused_by_name() {
    let tmp = edited_copy("tiny-bert", |_, _| {});
    let path = tmp.path().join("config.json");
    let original = std::fs::read_to_string(&path).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&original).unwrap();
    config["architectures"] = serde_json::json!(["FunnelForSequenceClassification"]);
    std::fs::write(&path, config.to_string()).unwrap();
    let spec = ModelSpec::new(tmp.path().to_str().unwrap());
    let text = xbench::error_chain(&backend::load(&spec).err().expect("refused"));
    assert!(text.contains("FunnelForSequenceClassification"), "{text}");
    for a in xbench::model::family::architectures() {
        assert!(text.contains(a), "{a} missing from: {text}");
    }
    let mut config: serde_json::Value = serde_json::from_str(&original).unwrap();
    config["is_decoder"] = true.into();
    std::fs::write(&path, config.to_string()).unwrap();
    let text = xbench::error_chain(&backend::load(&spec).err().expect("refused"));
    assert!(text.contains("is_decoder"), "{text}");
}

/// `encode_passages` changes nothing of a pair that needs no cut: with a `max_passage_tokens`
/// over the passage's length, and with `chunk_max` on pairs that fit, it gives exactly what
/// `tokenizer(query, passage)` gives (every truncation side), on every checkpoint's tokenizer.
#[test]
fn passages_that_need_no_cut_are_encoded_as_pairs() {
    use xbench::tokenize::{LongDocuments, PassageOptions, Truncation};
    for name in checkpoints() {
        let r = reference(name);
        let model = load(name, BackendKind::Fused, Precision::Fp32);
        let t = &model.tokenizer;
        for truncation in [Truncation::Model, Truncation::Left, Truncation::Right] {
            for p in &r.pairs {
                let passages = [p.passage.clone()];
                let want = t
                    .encode_many_with(&p.query, &passages, false, truncation)
                    .unwrap();
                let options = PassageOptions {
                    truncation,
                    max_passage_tokens: Some(100_000),
                    ..Default::default()
                };
                let got = t
                    .encode_passages(&p.query, &passages, false, &options)
                    .unwrap();
                assert_eq!(got.pairs, want, "{name} {truncation:?} {:?}", p.query);
                assert_eq!(got.windows, None);
                let fits = t.probe(&p.query, &p.passage).unwrap().ids.len() <= t.max_length();
                if fits {
                    let options = PassageOptions {
                        truncation,
                        long_documents: Some(LongDocuments::ChunkMax),
                        ..Default::default()
                    };
                    let got = t
                        .encode_passages(&p.query, &passages, false, &options)
                        .unwrap();
                    assert_eq!(got.pairs, want, "{name} {truncation:?} {:?}", p.query);
                    assert_eq!(got.windows, Some(vec![1]));
                }
            }
        }
    }
}

/// `chunk_max` splits a long passage into windows that each fit, hold the whole query, and
/// together cover the passage's tokens with the asked overlap; `max_passage_tokens` cuts a
/// passage to its first N tokens.
#[test]
fn long_passages_split_into_overlapping_windows() {
    use xbench::tokenize::{LongDocuments, PassageOptions};
    let model = load("tiny-bert", BackendKind::Fused, Precision::Fp32);
    let t = &model.tokenizer;
    let r = reference("tiny-bert");
    let passage = r
        .pairs
        .iter()
        .map(|p| p.passage.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let query = "how do rivers form";
    let alone = t.encode(query, "").unwrap().ids.len(); // [CLS] q [SEP] [SEP]
    let passage_ids: Vec<u32> = {
        let e = t.encode_passages(
            query,
            std::slice::from_ref(&passage),
            false,
            &PassageOptions {
                max_passage_tokens: Some(100_000),
                truncation: xbench::tokenize::Truncation::Off,
                ..Default::default()
            },
        );
        // Too long for one pair: Off refuses it.
        assert!(e.is_err());
        let full = t.probe("", &passage).unwrap();
        full.ids[2..full.ids.len() - 1].to_vec() // [CLS] [SEP] p [SEP]
    };
    for overlap in [0usize, 8, 1000] {
        let options = PassageOptions {
            long_documents: Some(LongDocuments::ChunkMax),
            chunk_overlap_tokens: Some(overlap),
            ..Default::default()
        };
        let e = t
            .encode_passages(query, &[passage.clone(), "short".into()], true, &options)
            .unwrap();
        let windows = e.windows.clone().unwrap();
        assert_eq!(windows.len(), 2);
        assert_eq!(windows[1], 1, "a passage that fits is one window");
        assert!(windows[0] > 3, "{windows:?}");
        let room = t.max_length() - alone;
        let step = room - overlap.min(room / 2);
        let mut covered = Vec::new();
        for (k, w) in e.pairs[..windows[0]].iter().enumerate() {
            assert!(w.ids.len() <= t.max_length());
            let body = &w.ids[alone - 1..w.ids.len() - 1];
            assert_eq!(
                &w.ids[..alone - 1],
                &t.encode(query, "").unwrap().ids[..alone - 1]
            );
            assert_eq!(
                body,
                &passage_ids[k * step..(k * step + room).min(passage_ids.len())]
            );
            covered.truncate(k * step);
            covered.extend_from_slice(body);
        }
        assert_eq!(covered, passage_ids, "overlap {overlap}");
    }
    let cut = t
        .encode_passages(
            query,
            std::slice::from_ref(&passage),
            false,
            &PassageOptions {
                max_passage_tokens: Some(5),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(cut.pairs[0].ids.len(), alone + 5);
    assert_eq!(&cut.pairs[0].ids[alone - 1..alone + 4], &passage_ids[..5]);
}
