//! The typed, validated form of a composed config. Every key is listed here with its type and
//! default; unknown keys are rejected with their dotted path and the valid keys beside them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::settings::{Arrivals, BatchingConfig, ServerSettings, Stage, TokenizerPoolConfig};
use super::{Composed, ConfigError};
use crate::model::{BackendKind, Precision};
use crate::tokenize::LongDocuments;

/// The whole config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct XbenchConfig {
    /// Human-readable name of the experiment.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub model_pool: ModelPoolConfig,
    #[serde(default)]
    pub batching: BatchingConfig,
    #[serde(default)]
    pub tokenizer_pool: TokenizerPoolConfig,
    #[serde(default)]
    pub server: ServerSettings,
    #[serde(default)]
    pub workload: WorkloadConfig,
    #[serde(default)]
    pub experiment: ExperimentConfig,
}

/// `model_pool`: the models served, each with its instances.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelPoolConfig {
    pub instances: Vec<InstanceConfig>,
}

/// One entry of `model_pool.instances`. Listing the same model twice adds a worker, as in the
/// original; `workers` says the same in one entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// A local model directory or a hub id.
    pub name: String,
    /// What computes the model: `fused` (xbench's CPU kernels, every precision) or `candle`
    /// (candle's ops, any device; fp32, fp16, bf16).
    #[serde(default)]
    pub backend: BackendKind,
    /// `cpu`, `cuda[:N]`, `metal[:N]`.
    #[serde(default = "cpu")]
    pub device: String,
    /// Precision: `fp32`, `fp16`, `bf16`, `int8` or `int4` (int8 and int4 on the fused CPU
    /// kernels only).
    #[serde(default, deserialize_with = "precision")]
    pub quantization: Precision,
    /// Cache the quantized layers beside the checkpoint (`xbench-<precision>.gguf`) and reuse
    /// them.
    #[serde(default)]
    pub quantization_cache: bool,
    /// Truncation length in tokens; default the model's limit.
    #[serde(default)]
    pub max_length: Option<usize>,
    /// A passage too long to fit beside its query: `truncate` (cut to fit) or `chunk_max` (split
    /// into windows, scored as its best window). Requests may say otherwise.
    #[serde(default)]
    pub long_documents: LongDocuments,
    /// Tokens consecutive windows share with `chunk_max` (at most half a window).
    #[serde(default = "default_overlap")]
    pub chunk_overlap_tokens: usize,
    /// A generative reranker's prompt template: `qwen3_reranker`, `mxbai_rerank_v2`, `bge_gemma`
    /// or a YAML file; default the model family's.
    #[serde(default)]
    pub template: Option<String>,
    /// A generative reranker's answer tokens, `[no, yes]` or `[yes]`; default the template's.
    #[serde(default)]
    pub answer_tokens: Option<Vec<String>>,
    /// A generative reranker's instruction where a request gives none; default the template's.
    #[serde(default)]
    pub instruction: Option<String>,
    /// Other names requests may give for this model in `model` (vLLM's `--served-model-name`):
    /// e.g. the hub id a client was written for, when the model is served from a local directory.
    #[serde(default)]
    pub served_model_names: Vec<String>,
    /// Model workers (instances) of this entry.
    #[serde(default = "one")]
    pub workers: usize,
    /// Compute threads per worker; default the cores divided among all workers.
    #[serde(default)]
    pub threads: Option<usize>,
    /// Replaced by `backend`; read only to refuse it with what to write instead (a file that
    /// says `kernels:` must not silently change meaning).
    #[serde(default, skip_serializing)]
    pub kernels: Option<Value>,
}
fn cpu() -> String {
    "cpu".into()
}
/// A precision by name; an unknown one is refused naming those there are.
fn precision<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Precision, D::Error> {
    let name = String::deserialize(d)?;
    Precision::parse(&name).map_err(serde::de::Error::custom)
}
fn one() -> usize {
    1
}
fn default_overlap() -> usize {
    crate::backend::DEFAULT_CHUNK_OVERLAP_TOKENS
}

/// `workload`: the pairs the load generator sends.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkloadConfig {
    /// JSON lines of pairs; ignored when `generate` is true.
    #[serde(default = "pairs_file")]
    pub input: String,
    /// Generate seeded text instead of reading `input`.
    #[serde(default)]
    pub generate: bool,
    /// Seed of generated text and Poisson arrivals.
    #[serde(default = "seed")]
    pub seed: u64,
}

fn pairs_file() -> String {
    "data/pairs.jsonl".into()
}
fn seed() -> u64 {
    42
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            input: pairs_file(),
            generate: false,
            seed: seed(),
        }
    }
}

/// `experiment`: the load and the axes of a sweep.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// `tokenize`, `infer` or `full`.
    #[serde(default = "full")]
    pub stage: Stage,
    /// Axis: pairs per request (the original's name).
    #[serde(default = "batch_sizes")]
    pub batch_sizes: Vec<usize>,
    /// Axis: closed-loop clients. Ignored for cells with an open-loop `rate`.
    #[serde(default = "concurrency_levels")]
    pub concurrency_levels: Vec<usize>,
    /// Open-loop arrival rate (requests/s); `null` = closed loop.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Open-loop arrivals: `poisson` (exponential gaps) or `constant` (equal gaps).
    #[serde(default)]
    pub arrivals: Arrivals,
    /// Most requests in flight over HTTP (the connection pool's bound); `null` = the clients of
    /// a closed loop, 256 for an open loop.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// More axes: dotted key → list of values (any key of this config), in declared order.
    #[serde(default)]
    pub sweep: serde_json::Map<String, Value>,
    /// Time budget of a cell's measured window, seconds (0: count requests only) ...
    #[serde(default = "duration_s")]
    pub duration_s: f64,
    /// ... which also lasts at least this many measured requests ...
    #[serde(default = "min_requests")]
    pub min_requests: usize,
    /// ... but stops issuing after this many seconds in any case (the hard cap).
    #[serde(default = "max_duration_s")]
    pub max_duration_s: f64,
    /// Where requests go: `null` = the engine in this process; `self` = an xbench server started
    /// for each cell (127.0.0.1, a free port) and measured over HTTP; a URL = that server
    /// (`POST /rerank`, TEI-compatible).
    #[serde(default)]
    pub target: Option<String>,
    /// Requests before measuring, per cell.
    #[serde(default = "warmup")]
    pub warmup: usize,
    /// After measuring, score the first N pairs of the workload with the cell's first model at
    /// fp32 and at its precision, and record what the precision does to scores and rankings
    /// (0: not measured).
    #[serde(default)]
    pub accuracy_pairs: usize,
}

fn full() -> Stage {
    Stage::Full
}
fn batch_sizes() -> Vec<usize> {
    vec![32]
}
fn concurrency_levels() -> Vec<usize> {
    vec![1]
}
fn duration_s() -> f64 {
    10.0
}
fn min_requests() -> usize {
    8
}
fn max_duration_s() -> f64 {
    120.0
}
fn warmup() -> usize {
    2
}

impl Default for ExperimentConfig {
    fn default() -> Self {
        Self {
            stage: full(),
            batch_sizes: batch_sizes(),
            concurrency_levels: concurrency_levels(),
            rate: None,
            arrivals: Arrivals::default(),
            max_connections: None,
            sweep: serde_json::Map::new(),
            duration_s: duration_s(),
            min_requests: min_requests(),
            max_duration_s: max_duration_s(),
            target: None,
            warmup: warmup(),
            accuracy_pairs: 0,
        }
    }
}

impl XbenchConfig {
    /// Typed extraction of a composed config; errors name the key and the file that set it.
    pub fn from_composed(composed: &Composed) -> Result<Self, ConfigError> {
        Self::from_tree(&composed.tree).map_err(|e| match e {
            ConfigError::Schema { key, why, .. } => ConfigError::Schema {
                file: composed.source_of(&key).map(str::to_string),
                key,
                why,
            },
            other => other,
        })
    }

    /// Typed extraction of a tree; errors name the key.
    pub fn from_tree(tree: &Value) -> Result<Self, ConfigError> {
        let config: Self = serde_path_to_error::deserialize(tree).map_err(|e| {
            let path = e.path().to_string();
            let why = e.into_inner().to_string();
            schema_error(&path, &why)
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| ConfigError::Schema {
            key: key.to_string(),
            why,
            file: None,
        };
        let invalid = |e: super::settings::Invalid| bad(&e.key, e.why);
        self.server.validate().map_err(invalid)?;
        if self.model_pool.instances.is_empty() {
            return Err(bad(
                "model_pool.instances",
                "list at least one model".into(),
            ));
        }
        for (i, m) in self.model_pool.instances.iter().enumerate() {
            let key = |k: &str| format!("model_pool.instances[{i}].{k}");
            if let Some(old) = &m.kernels {
                let old = old.as_str().map_or_else(|| old.to_string(), str::to_string);
                let to = if old == "candle" { "candle" } else { "fused" };
                return Err(bad(
                    &key("kernels"),
                    format!("was replaced by backend: write backend: {to} instead of kernels: {old} (and drop the old backend: candle line, which now means candle's ops)"),
                ));
            }
            let precision = m.quantization;
            if let Some(why) = m.backend.refuses(precision, &m.device) {
                let which = if precision.needs_fused() && m.backend == BackendKind::Candle {
                    "quantization"
                } else {
                    "backend"
                };
                return Err(bad(&key(which), why));
            }
            if m.workers == 0 {
                return Err(bad(&key("workers"), "must be at least 1".into()));
            }
            if m.threads == Some(0) {
                return Err(bad(&key("threads"), "must be at least 1".into()));
            }
            // The same model listed again adds workers, and must say the rest the same way.
            let same = |o: &InstanceConfig| InstanceConfig {
                workers: 1,
                ..o.clone()
            };
            if let Some(first) = self.model_pool.instances[..i]
                .iter()
                .find(|o| o.name == m.name)
            {
                if same(first) != same(m) {
                    return Err(bad(
                        "model_pool.instances",
                        format!(
                            "model '{}' is listed twice with different settings; give each entry the same backend, device, quantization, max_length, long_documents, chunk_overlap_tokens, template, answer_tokens, instruction, served_model_names and threads",
                            m.name
                        ),
                    ));
                }
            }
        }
        // Every name a request may give (models' names and their served_model_names) names one
        // model.
        let mut served: Vec<(&str, &str)> = Vec::new();
        for (i, m) in self.model_pool.instances.iter().enumerate() {
            if served.iter().any(|&(_, model)| model == m.name) {
                continue;
            }
            for alias in &m.served_model_names {
                if alias.trim().is_empty() {
                    return Err(bad(
                        &format!("model_pool.instances[{i}].served_model_names"),
                        "holds an empty name: list the names clients send".into(),
                    ));
                }
            }
            for name in std::iter::once(&m.name).chain(&m.served_model_names) {
                if let Some(&(_, other)) = served.iter().find(|&&(n, _)| n == name) {
                    let why = if other == m.name {
                        format!("names '{name}' twice")
                    } else {
                        format!("names '{name}', which already names model '{other}': give each name to one model")
                    };
                    return Err(bad(
                        &format!("model_pool.instances[{i}].served_model_names"),
                        why,
                    ));
                }
                served.push((name, &m.name));
            }
        }
        let models = served
            .iter()
            .map(|&(_, model)| model)
            .collect::<std::collections::BTreeSet<_>>();
        if self.server.ignore_unknown_model && models.len() != 1 {
            return Err(bad(
                "server.ignore_unknown_model",
                format!(
                    "sends every unknown name to the one model served, but {} models are served: set it to false, or serve one model",
                    models.len()
                ),
            ));
        }
        self.batching.validate().map_err(invalid)?;
        self.tokenizer_pool.validate().map_err(invalid)?;
        let e = &self.experiment;
        if e.batch_sizes.is_empty() || e.batch_sizes.contains(&0) {
            return Err(bad(
                "experiment.batch_sizes",
                "list pair counts of at least 1".into(),
            ));
        }
        if e.concurrency_levels.is_empty() || e.concurrency_levels.contains(&0) {
            return Err(bad(
                "experiment.concurrency_levels",
                "list client counts of at least 1".into(),
            ));
        }
        if e.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            return Err(bad(
                "experiment.rate",
                "must be a positive number of requests/s".into(),
            ));
        }
        if let Some(t) = &e.target {
            if t != "self" && !t.starts_with("http://") && !t.starts_with("https://") {
                return Err(bad(
                    "experiment.target",
                    format!("'{t}' is neither null (in process), self (a server per cell) nor an http:// URL"),
                ));
            }
            if e.stage != Stage::Full {
                return Err(bad(
                    "experiment.target",
                    "a server is measured end to end: set experiment.stage to full".into(),
                ));
            }
        }
        if e.max_connections == Some(0) {
            return Err(bad(
                "experiment.max_connections",
                "must be at least 1 (or null)".into(),
            ));
        }
        if e.min_requests == 0 {
            return Err(bad("experiment.min_requests", "must be at least 1".into()));
        }
        if !(e.duration_s >= 0.0 && e.duration_s.is_finite()) {
            return Err(bad(
                "experiment.duration_s",
                "must be a number of seconds, 0 or more".into(),
            ));
        }
        if !(e.max_duration_s > 0.0 && e.max_duration_s.is_finite()) {
            return Err(bad(
                "experiment.max_duration_s",
                "must be a positive number of seconds".into(),
            ));
        }
        if e.max_duration_s < e.duration_s {
            return Err(bad(
                "experiment.max_duration_s",
                format!(
                    "the hard cap ({} s) is shorter than the time budget experiment.duration_s ({} s): raise it or lower the budget",
                    e.max_duration_s, e.duration_s
                ),
            ));
        }
        Ok(())
    }
}

/// Turns serde's message into a key and a fix: an unknown field becomes its full dotted key, with
/// the nearest valid name suggested.
fn schema_error(path: &str, why: &str) -> ConfigError {
    let path = if path == "." { "" } else { path };
    let join = |field: &str| {
        if path.rsplit('.').next() == Some(field) {
            path.to_string()
        } else if path.is_empty() {
            field.to_string()
        } else {
            format!("{path}.{field}")
        }
    };
    if let Some(rest) = why.strip_prefix("unknown field `") {
        let field = rest.split('`').next().unwrap_or_default();
        let expected: Vec<&str> = rest.split('`').skip(2).step_by(2).collect();
        let nearest = expected
            .iter()
            .filter(|c| strsim::damerau_levenshtein(field, c) <= 2.max(field.len() / 4))
            .min_by_key(|c| strsim::damerau_levenshtein(field, c));
        let why = match nearest {
            Some(n) => format!(
                "unknown key (did you mean '{n}'?); valid keys here: {}",
                expected.join(", ")
            ),
            None => format!("unknown key; valid keys here: {}", expected.join(", ")),
        };
        return ConfigError::Schema {
            key: join(field),
            why,
            file: None,
        };
    }
    if let Some(rest) = why.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or_default();
        return ConfigError::Schema {
            key: join(field),
            why: "missing; this key is required".into(),
            file: None,
        };
    }
    ConfigError::Schema {
        key: path.to_string(),
        why: why.to_string(),
        file: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{compose, Override};

    fn conf(batching: &str) -> tempfile::TempDir {
        crate::config::test_conf(&[
            ("config.yaml", "defaults:\n  - batching: default\n  - _self_\nmodel_pool:\n  instances:\n    - name: m\n"),
            ("batching/default.yaml", batching),
        ])
    }

    #[test]
    fn unknown_keys_in_files_name_the_file_the_key_and_the_nearest() {
        let d = conf("enabled: true\nmax_bach_size: 8\n");
        let composed = compose(d.path(), "config", &[]).unwrap();
        let err = XbenchConfig::from_composed(&composed)
            .unwrap_err()
            .to_string();
        assert!(err.contains("config key 'batching.max_bach_size'"), "{err}");
        assert!(err.contains("batching/default.yaml"), "{err}");
        assert!(err.contains("did you mean 'max_batch_size'?"), "{err}");
    }

    #[test]
    fn each_served_name_names_one_model_and_ignore_unknown_model_needs_one() {
        let with = |yaml: &str| {
            let d = crate::config::test_conf(&[("config.yaml", yaml)]);
            XbenchConfig::from_composed(&compose(d.path(), "config", &[]).unwrap())
                .map_err(|e| e.to_string())
        };
        let ok = with("model_pool:\n  instances:\n    - name: m\n      served_model_names: [BAAI/bge-reranker-base, reranker]\n    - name: m\n      served_model_names: [BAAI/bge-reranker-base, reranker]\nserver:\n  ignore_unknown_model: true\n").unwrap();
        assert_eq!(ok.model_pool.instances[0].served_model_names.len(), 2);
        let err = with("model_pool:\n  instances:\n    - name: m\n      served_model_names: [x]\n    - name: n\n      served_model_names: [x]\n").unwrap_err();
        assert!(
            err.contains("model_pool.instances[1].served_model_names")
                && err.contains("'x', which already names model 'm'"),
            "{err}"
        );
        let err = with("model_pool:\n  instances:\n    - name: m\n    - name: n\n      served_model_names: [m]\n").unwrap_err();
        assert!(err.contains("'m', which already names model 'm'"), "{err}");
        let err =
            with("model_pool:\n  instances:\n    - name: m\n      served_model_names: ['']\n")
                .unwrap_err();
        assert!(err.contains("empty name"), "{err}");
        let err = with("model_pool:\n  instances:\n    - name: m\n    - name: n\nserver:\n  ignore_unknown_model: true\n").unwrap_err();
        assert!(
            err.contains("server.ignore_unknown_model") && err.contains("2 models are served"),
            "{err}"
        );
    }

    #[test]
    fn wrong_types_and_bad_values_name_the_key() {
        let d = conf("max_batch_size: lots\n");
        let err = XbenchConfig::from_composed(&compose(d.path(), "config", &[]).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("batching.max_batch_size") && err.contains("invalid type"),
            "{err}"
        );
        let d = conf("max_batch_size: 8\n");
        let o = [Override::parse("++model_pool.instances.0.quantization=int3").unwrap()];
        let err = XbenchConfig::from_composed(&compose(d.path(), "config", &o).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model_pool.instances[0].quantization"),
            "{err}"
        );
        assert!(
            err.contains("available: fp32, fp16, bf16, int8, int4"),
            "{err}"
        );
        let o = [
            Override::parse("++model_pool.instances.0.quantization=int8").unwrap(),
            Override::parse("++model_pool.instances.0.backend=candle").unwrap(),
        ];
        let err = XbenchConfig::from_composed(&compose(d.path(), "config", &o).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("int8 runs on backend fused"), "{err}");
        // A file written before `backend` replaced `kernels` is refused, not reread.
        let o = [Override::parse("++model_pool.instances.0.kernels=candle").unwrap()];
        let err = XbenchConfig::from_composed(&compose(d.path(), "config", &o).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model_pool.instances[0].kernels")
                && err.contains("write backend: candle instead of kernels: candle"),
            "{err}"
        );
        let o = [
            Override::parse("++experiment.duration_s=30").unwrap(),
            Override::parse("++experiment.max_duration_s=20").unwrap(),
        ];
        let err = XbenchConfig::from_composed(&compose(d.path(), "config", &o).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("experiment.max_duration_s")
                && err.contains("shorter than the time budget"),
            "{err}"
        );
    }

    #[test]
    fn the_same_model_listed_twice_must_agree() {
        let d = conf("max_batch_size: 8\n");
        let o = [Override::parse(
            "model_pool.instances=[{name: m}, {name: m, workers: 2, quantization: int8}]",
        )
        .unwrap()];
        let err = XbenchConfig::from_composed(&compose(d.path(), "config", &o).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model_pool.instances")
                && err.contains("listed twice with different settings"),
            "{err}"
        );
    }
}
