//! `xbench bench`: one cell of the in-process pipeline under load, printed as one result row.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde_json::json;

use crate::config::settings::Arrivals;
use crate::config::{ConfigError, XbenchConfig};
use crate::experiment::{self, run_cell, CellPlan, ExperimentError};
use crate::loadgen::Stage;
use crate::model::{BackendKind, Precision};
use crate::report;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model: a local directory in Hugging Face layout or a hub id [default: models/demo-minilm-l6;
    /// with --target: the server's default model].
    #[arg(long)]
    pub model: Option<String>,
    /// What to exercise: tokenize (tokenizer pool), infer (pre-tokenized pairs), full (both).
    #[arg(long, value_enum, default_value_t = Stage::Full)]
    pub stage: Stage,
    #[arg(long, default_value_t = 1)]
    pub tokenizer_workers: usize,
    /// Model instances (threads), sharing one copy of the weights.
    #[arg(long, default_value_t = 1)]
    pub model_workers: usize,
    /// Compute threads per model worker; default: the cores divided among the workers.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Encode a request's pairs in parallel inside a tokenizer worker.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub parallelism: bool,
    /// Pairs per request (the original's "batch size").
    #[arg(long, default_value_t = 32)]
    pub pairs_per_request: usize,
    /// Dynamic batching on or off (off: each request goes to the model as it comes).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub batching: bool,
    /// Most pairs per forward pass.
    #[arg(long, default_value_t = 32)]
    pub max_batch_size: usize,
    /// Most tokens per forward pass, counted as the backend computes them.
    #[arg(long, default_value_t = 16384)]
    pub max_batch_tokens: usize,
    /// Longest wait for a batch to fill once its first pair arrived, ms.
    #[arg(long, default_value_t = 5.0)]
    pub timeout_ms: f64,
    /// Closed loop: this many clients, each sending when its last request returns.
    #[arg(long, conflicts_with = "rate")]
    pub concurrency: Option<usize>,
    /// Open loop: this many requests per second.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open-loop arrivals.
    #[arg(long, value_enum, default_value_t = Arrivals::Poisson)]
    pub arrivals: Arrivals,
    /// Time budget of the measured window, seconds (0: count --min-requests only).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// The window also lasts at least this many measured requests ...
    #[arg(long, default_value_t = 20)]
    pub min_requests: usize,
    /// ... but stops issuing after this many seconds in any case.
    #[arg(long, default_value_t = 120.0)]
    pub max_duration: f64,
    /// Requests sent before measuring.
    #[arg(long, default_value_t = 4)]
    pub warmup: usize,
    /// Workload: JSON lines of pairs.
    #[arg(long, default_value = "data/pairs.jsonl", conflicts_with = "generate")]
    pub input: PathBuf,
    /// Generate the workload instead (seeded; 3-12 query words, 10-300 passage words).
    #[arg(long)]
    pub generate: bool,
    /// Seed of generated workloads and Poisson arrivals.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Truncation length in tokens.
    #[arg(long)]
    pub max_length: Option<usize>,
    /// cpu, cuda[:N] or metal[:N].
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// What computes the model: fused (xbench's CPU kernels, every precision) or candle (candle's
    /// ops, any device; fp32, fp16, bf16).
    #[arg(long, value_enum, default_value = "fused")]
    pub backend: BackendKind,
    /// Replaced by --backend (kept to say so).
    #[arg(long, hide = true)]
    pub kernels: Option<String>,
    /// Precision: fp32, fp16, bf16, int8 or int4 (the encoder's products in that precision on the
    /// fused backend; int8 and int4 run there only, fp16 and bf16 also on candle's).
    #[arg(long, value_enum, default_value = "fp32")]
    pub quantization: Precision,
    /// Print the row as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Measure a server over HTTP instead (its POST /rerank): `xbench serve` or any
    /// TEI-compatible server. The engine options are then the server's; `--model` is sent as the
    /// request's `model` only when given explicitly.
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,
    /// Bearer token for --target.
    #[arg(long, env = "XBENCH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Most requests in flight over HTTP (the bound of the connection pool).
    #[arg(long, default_value_t = 64)]
    pub max_connections: usize,
}

/// Each flag's config key: bench is a one-cell experiment, validated as a config is.
const FLAG_KEYS: &[(&str, &str)] = &[
    ("--model", "model_pool.instances[0].name"),
    ("--model-workers", "model_pool.instances[0].workers"),
    ("--threads", "model_pool.instances[0].threads"),
    ("--max-length", "model_pool.instances[0].max_length"),
    ("--device", "model_pool.instances[0].device"),
    ("--backend", "model_pool.instances[0].backend"),
    ("--quantization", "model_pool.instances[0].quantization"),
    ("--tokenizer-workers", "tokenizer_pool.workers"),
    ("--parallelism", "tokenizer_pool.parallelism"),
    ("--batching", "batching.enabled"),
    ("--max-batch-size", "batching.max_batch_size"),
    ("--max-batch-tokens", "batching.max_batch_tokens"),
    ("--timeout-ms", "batching.timeout_ms"),
    ("--stage", "experiment.stage"),
    ("--pairs-per-request", "experiment.batch_sizes"),
    ("--concurrency", "experiment.concurrency_levels"),
    ("--rate", "experiment.rate"),
    ("--arrivals", "experiment.arrivals"),
    ("--duration", "experiment.duration_s"),
    ("--min-requests", "experiment.min_requests"),
    ("--max-duration", "experiment.max_duration_s"),
    ("--warmup", "experiment.warmup"),
    ("--target", "experiment.target"),
    ("--max-connections", "experiment.max_connections"),
    ("--input", "workload.input"),
    ("--generate", "workload.generate"),
    ("--seed", "workload.seed"),
];

impl BenchArgs {
    /// The config these flags mean: one cell, every key set.
    fn config_tree(&self) -> serde_json::Value {
        json!({
            "name": "bench",
            "model_pool": {"instances": [{
                "name": self.model.clone().unwrap_or_else(|| DEFAULT_MODEL.to_string()),
                "workers": self.model_workers,
                "threads": self.threads,
                "max_length": self.max_length,
                "device": self.device,
                "backend": self.backend,
                "quantization": self.quantization,
            }]},
            "tokenizer_pool": {"workers": self.tokenizer_workers, "parallelism": self.parallelism},
            "batching": {
                "enabled": self.batching,
                "max_batch_size": self.max_batch_size,
                "max_batch_tokens": self.max_batch_tokens,
                "timeout_ms": self.timeout_ms,
            },
            "server": {"api_key": self.api_key},
            "workload": {
                "input": self.input.to_string_lossy(),
                "generate": self.generate,
                "seed": self.seed,
            },
            "experiment": {
                "stage": self.stage,
                "batch_sizes": [self.pairs_per_request],
                "concurrency_levels": [self.concurrency.unwrap_or(1)],
                "rate": self.rate,
                "arrivals": self.arrivals,
                "duration_s": self.duration,
                "min_requests": self.min_requests,
                "max_duration_s": self.max_duration,
                "warmup": self.warmup,
                "target": self.target,
                "max_connections": self.max_connections,
            },
        })
    }
}

/// A config error in terms of the flag that set the key.
fn flag_error(e: ConfigError) -> anyhow::Error {
    if let ConfigError::Schema { key, why, .. } = &e {
        if let Some((flag, _)) = FLAG_KEYS.iter().find(|(_, k)| k == key) {
            return anyhow::anyhow!("{flag} (config key {key}): {why}");
        }
    }
    e.into()
}

const DEFAULT_MODEL: &str = "models/demo-minilm-l6";

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    super::score::refuse_kernels(args.kernels.as_deref())?;
    let config = XbenchConfig::from_tree(&args.config_tree()).map_err(flag_error)?;
    let mut plan = CellPlan::new(
        &config,
        args.pairs_per_request,
        args.concurrency.unwrap_or(1),
    )
    .map_err(|e| match e {
        ExperimentError::Config(e) => flag_error(e),
        other => other.into(),
    })?;
    if let Some(model) = args.model.as_ref().filter(|_| args.target.is_some()) {
        // A server is sent the model only when the command line names one.
        plan.spec.models = vec![model.clone()];
    }
    plan.ready_within = Duration::from_secs(60);
    let workload = experiment::workload(&config, args.pairs_per_request)
        .context("--input (or pass --generate for a generated workload)")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let row = run_cell(&plan, &workload, 1, &runtime)?.row;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&row)?);
    } else {
        println!("{}", report::markdown(std::slice::from_ref(&row)));
    }
    Ok(())
}
