//! `xbench bench`: one cell of the in-process pipeline under load, printed as one result row.

use crate::model::{BackendKind, Precision};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::engine::{BatchingConfig, Engine, EngineConfig, ModelSpec, TokenizerPoolConfig};
use crate::loadgen::{self, GeneratedLengths, HttpTarget, Load, RunSpec, Stage, Window, Workload};
use crate::report::{self, BenchRow, CellLabels};
use crate::server::api::InfoResponse;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Arrivals {
    Poisson,
    Constant,
}

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

/// The labels of a cell measured over HTTP: the server's own settings when it is xbench (from
/// `/info`), what the command line says otherwise.
pub(crate) fn http_labels(info: Option<&InfoResponse>, fallback: CellLabels) -> CellLabels {
    match info {
        Some(i) if !i.models.is_empty() => CellLabels {
            model: i
                .models
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(" + "),
            tokenizer_workers: i.tokenizer_workers,
            model_workers: i.models.iter().map(|m| m.instances).sum(),
            threads_per_worker: i.models[0].threads_per_instance,
            parallelism: i.tokenizer_parallelism,
            max_batch_size: i.limits.max_batch_size,
            timeout_ms: i.limits.batching_timeout_ms,
            ..fallback
        },
        _ => fallback,
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    super::score::refuse_kernels(args.kernels.as_deref())?;
    anyhow::ensure!(
        args.pairs_per_request > 0,
        "--pairs-per-request must be at least 1"
    );
    anyhow::ensure!(args.min_requests > 0, "--min-requests must be at least 1");
    anyhow::ensure!(
        args.duration >= 0.0 && args.duration.is_finite(),
        "--duration must be a number of seconds, 0 or more"
    );
    anyhow::ensure!(
        args.max_duration > 0.0
            && args.max_duration.is_finite()
            && args.max_duration >= args.duration,
        "--max-duration must be a number of seconds of at least --duration ({} s)",
        args.duration
    );
    let load = match (args.concurrency, args.rate) {
        (_, Some(rate)) => {
            anyhow::ensure!(
                rate > 0.0 && rate.is_finite(),
                "--rate must be a positive number"
            );
            Load::Open {
                rate,
                poisson: args.arrivals == Arrivals::Poisson,
            }
        }
        (Some(0), _) => anyhow::bail!("--concurrency must be at least 1"),
        (Some(c), _) => Load::Closed { concurrency: c },
        (None, None) => Load::Closed { concurrency: 1 },
    };
    let workload = if args.generate {
        Workload::generate(
            args.seed,
            GeneratedLengths::default(),
            args.pairs_per_request,
            64,
        )
    } else {
        Workload::from_jsonl(&args.input, args.pairs_per_request)
            .context("--input (or pass --generate for a generated workload)")?
    };
    let model = args
        .model
        .clone()
        .unwrap_or_else(|| "models/demo-minilm-l6".to_string());
    let config = EngineConfig {
        models: vec![ModelSpec {
            name: model.clone(),
            instances: args.model_workers,
            threads: args.threads,
            max_length: args.max_length,
            device: args.device.clone(),
            backend: args.backend,
            quantization: args.quantization,
            quantization_cache: false,
        }],
        tokenizer_pool: TokenizerPoolConfig {
            workers: args.tokenizer_workers,
            parallelism: args.parallelism,
            ..TokenizerPoolConfig::default()
        },
        batching: BatchingConfig {
            enabled: args.batching,
            max_batch_size: args.max_batch_size,
            max_batch_tokens: args.max_batch_tokens,
            timeout_ms: args.timeout_ms,
            ..BatchingConfig::default()
        },
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut spec = RunSpec {
        stage: args.stage,
        load,
        models: Vec::new(),
        warmup: args.warmup,
        window: Window {
            duration: Duration::from_secs_f64(args.duration),
            min_requests: args.min_requests,
            max_duration: Duration::from_secs_f64(args.max_duration),
        },
        seed: args.seed,
    };
    let mut labels = CellLabels {
        stage: args.stage,
        model: model.clone(),
        tokenizer_workers: args.tokenizer_workers,
        model_workers: args.model_workers,
        threads_per_worker: args.threads.unwrap_or(0),
        parallelism: args.parallelism,
        pairs_per_request: args.pairs_per_request,
        max_batch_size: args.max_batch_size,
        timeout_ms: args.timeout_ms,
        load,
    };
    let outcome = match &args.target {
        Some(url) => {
            anyhow::ensure!(
                args.stage == Stage::Full,
                "--target measures a server end to end: use --stage full"
            );
            anyhow::ensure!(
                args.max_connections > 0,
                "--max-connections must be at least 1"
            );
            if let Some(m) = &args.model {
                spec.models = vec![m.clone()];
            }
            let http = Arc::new(HttpTarget::new(
                url,
                args.api_key.clone(),
                args.max_connections,
                Duration::from_secs_f64(args.max_duration.max(60.0)),
            )?);
            runtime.block_on(async {
                http.wait_ready(Duration::from_secs(60)).await?;
                let info = http.info().await;
                labels = http_labels(
                    info.as_ref(),
                    CellLabels {
                        model: url.clone(),
                        ..labels.clone()
                    },
                );
                anyhow::Ok(loadgen::run(http.clone(), &workload, &spec).await?)
            })?
        }
        None => {
            let engine = Arc::new(Engine::start(&config)?);
            labels.threads_per_worker = engine.threads_per_instance(None)?;
            runtime.block_on(loadgen::run(engine.clone(), &workload, &spec))?
        }
    };
    let row = BenchRow::new(&labels, &outcome);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&row)?);
    } else {
        println!("{}", report::markdown(std::slice::from_ref(&row)));
    }
    Ok(())
}
