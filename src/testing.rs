//! Tiny BERT cross-encoders with deterministic random weights, written in Hugging Face layout, for
//! tests and benchmarks that must not depend on a download. Not used by xbench itself: compiled
//! for the crate's own unit tests and with the `testing` feature (the integration tests, benches
//! and fuzz targets enable it).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::json;

/// The shape of a generated model.
#[derive(Debug, Clone)]
pub struct TinyBert {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub max_positions: usize,
    pub num_labels: usize,
    pub seed: u64,
    /// `hidden_act` of config.json.
    pub hidden_act: String,
}

impl Default for TinyBert {
    fn default() -> Self {
        Self {
            hidden: 32,
            layers: 2,
            heads: 4,
            intermediate: 64,
            max_positions: 64,
            num_labels: 1,
            seed: 7,
            hidden_act: "gelu".into(),
        }
    }
}

/// Words of the tiny vocabulary besides the special tokens and single letters.
const WORDS: &[&str] = &[
    "the", "a", "of", "and", "to", "in", "is", "what", "how", "why", "steak", "rust", "bread",
    "cook", "rest", "language", "capital", "city", "river", "paris", "france", ".", ",", "?", "!",
];

fn vocab() -> Vec<String> {
    let mut v: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend(WORDS.iter().map(|s| s.to_string()));
    v.extend(('a'..='z').map(|c| c.to_string()));
    v.extend(('a'..='z').map(|c| format!("##{c}")));
    v.extend(('0'..='9').map(|c| c.to_string()));
    v
}

/// splitmix64: a small, well-mixed deterministic generator.
struct Rng(u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

impl TinyBert {
    /// Writes `config.json`, `model.safetensors`, `tokenizer.json` and `tokenizer_config.json`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        let vocab = vocab();
        let config = json!({
            "architectures": ["BertForSequenceClassification"],
            "model_type": "bert",
            "vocab_size": vocab.len(),
            "hidden_size": self.hidden,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "intermediate_size": self.intermediate,
            "hidden_act": self.hidden_act,
            "max_position_embeddings": self.max_positions,
            "type_vocab_size": 2,
            "layer_norm_eps": 1e-12,
            "pad_token_id": 0,
            "id2label": (0..self.num_labels).map(|i| (i.to_string(), format!("LABEL_{i}"))).collect::<HashMap<_, _>>(),
        });
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_string_pretty(&config)?,
        )?;
        std::fs::write(
            dir.join("tokenizer_config.json"),
            serde_json::to_string_pretty(&json!({
                "model_max_length": self.max_positions,
                "tokenizer_class": "BertTokenizer",
                "do_lower_case": true,
            }))?,
        )?;
        std::fs::write(
            dir.join("tokenizer.json"),
            tokenizer_json(&vocab).to_string(),
        )?;

        let mut w = Weights {
            rng: Rng(self.seed),
            tensors: HashMap::new(),
            hidden: self.hidden,
        };
        let (h, i) = (self.hidden, self.intermediate);
        let e = "bert.embeddings";
        w.add(
            &format!("{e}.word_embeddings.weight"),
            &[vocab.len(), h],
            0.0,
            1.0,
        )?;
        w.add(
            &format!("{e}.position_embeddings.weight"),
            &[self.max_positions, h],
            0.0,
            0.5,
        )?;
        w.add(
            &format!("{e}.token_type_embeddings.weight"),
            &[2, h],
            0.0,
            0.5,
        )?;
        w.norm(&format!("{e}.LayerNorm"))?;
        for l in 0..self.layers {
            let p = format!("bert.encoder.layer.{l}");
            for m in ["query", "key", "value"] {
                w.linear(&format!("{p}.attention.self.{m}"), h, h)?;
            }
            w.linear(&format!("{p}.attention.output.dense"), h, h)?;
            w.norm(&format!("{p}.attention.output.LayerNorm"))?;
            w.linear(&format!("{p}.intermediate.dense"), i, h)?;
            w.linear(&format!("{p}.output.dense"), h, i)?;
            w.norm(&format!("{p}.output.LayerNorm"))?;
        }
        w.linear("bert.pooler.dense", h, h)?;
        w.linear("classifier", self.num_labels, h)?;
        let tensors = w.tensors;
        candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
        Ok(())
    }
}

struct Weights {
    rng: Rng,
    tensors: HashMap<String, Tensor>,
    hidden: usize,
}

impl Weights {
    /// A tensor of values uniform in `center ± spread`.
    fn add(&mut self, name: &str, shape: &[usize], center: f32, spread: f32) -> anyhow::Result<()> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| center + spread * self.rng.next_f32())
            .collect();
        self.tensors.insert(
            name.to_string(),
            Tensor::from_vec(data, shape, &Device::Cpu)?,
        );
        Ok(())
    }

    fn linear(&mut self, name: &str, out: usize, inp: usize) -> anyhow::Result<()> {
        self.add(
            &format!("{name}.weight"),
            &[out, inp],
            0.0,
            (3.0 / inp as f32).sqrt(),
        )?;
        self.add(&format!("{name}.bias"), &[out], 0.0, 0.1)
    }

    fn norm(&mut self, name: &str) -> anyhow::Result<()> {
        self.add(&format!("{name}.weight"), &[self.hidden], 1.0, 0.1)?;
        self.add(&format!("{name}.bias"), &[self.hidden], 0.0, 0.1)
    }
}

/// A BERT WordPiece tokenizer over `vocab`, as transformers saves one.
fn tokenizer_json(vocab: &[String]) -> serde_json::Value {
    let ids: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, w)| (w.clone(), json!(i)))
        .collect();
    let special = |content: &str, id: usize| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special("[PAD]", 0), special("[UNK]", 1), special("[CLS]", 2),
                         special("[SEP]", 3), special("[MASK]", 4)],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}
            }
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": ids}
    })
}

/// Whether `status` and `body` are an answer the rerank APIs document for some request: 200, or a
/// 4xx (400, 404, 413, 422), 503 `deadline_exceeded` or 429 `Overloaded` (TEI's route past a
/// deadline) with the error envelope (`error`, `error_type`). The fuzz targets and property tests hold every answer to this.
pub fn documented_rerank_answer(status: u16, body: &[u8]) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "status {status} with a body that is not JSON ({e}): {}",
            String::from_utf8_lossy(body)
        )
    })?;
    // A request past its deadline: 503 on xbench's routes, 429 `Overloaded` on TEI's /rerank.
    let documented = [200, 400, 404, 413, 422].contains(&status)
        || (status == 503 && v["error_type"] == "deadline_exceeded")
        || (status == 429 && v["error_type"] == "Overloaded");
    if !documented {
        return Err(format!("undocumented status {status}: {v}"));
    }
    if status != 200
        && !(v["error"].as_str().is_some_and(|m| !m.is_empty()) && v["error_type"].is_string())
    {
        return Err(format!("status {status} without the error envelope: {v}"));
    }
    Ok(())
}

/// Copies the directory tree `from` into `to` (created if missing): tests and fuzz targets compose
/// configs in a copy of `conf/` to which they add files.
pub fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// A server on 127.0.0.1 (any port) over a [`TinyBert`] model in `dir`, ready to score, with
/// limits small enough for fuzzed bodies to reach: 8 texts, 4096 bytes.
pub fn tiny_server(dir: &Path) -> anyhow::Result<crate::server::BackgroundServer> {
    use crate::engine::{BatchingConfig, EngineConfig, ModelSpec, TokenizerPoolConfig};
    use crate::server::{BackgroundServer, ServerSettings};
    TinyBert::default().write(dir)?;
    let name = dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("{} is not UTF-8", dir.display()))?;
    let engine = EngineConfig {
        models: vec![ModelSpec {
            threads: Some(1),
            ..ModelSpec::new(name)
        }],
        tokenizer_pool: TokenizerPoolConfig::default(),
        batching: BatchingConfig::default(),
    };
    let settings = ServerSettings {
        port: 0,
        max_client_batch_size: 8,
        payload_limit_bytes: 4096,
        ..ServerSettings::default()
    };
    let server = BackgroundServer::start(settings, engine)?;
    anyhow::ensure!(
        server.wait_ready(std::time::Duration::from_secs(60)),
        "the tiny model's server did not become ready in 60 s"
    );
    Ok(server)
}
