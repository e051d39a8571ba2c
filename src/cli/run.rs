//! `xbench run`, `xbench sweep`, `xbench config show` and `xbench list`: experiments from `conf/`.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use sha2::Digest;

use crate::accuracy::{agreement, Agreement};
use crate::cli::bench::http_labels;
use crate::config::sweep::{self, Cell};
use crate::config::{compose, tree, Override, XbenchConfig};
use crate::engine::{Engine, EngineConfig, ModelSpec};
use crate::loadgen::{self, GeneratedLengths, HttpTarget, Load, RunSpec, Target, Window, Workload};
use crate::model::{ModelFiles, Precision};
use crate::report::results::{
    encode_histogram, utc_now, CellResult, Provenance, RepeatFigures, Results,
};
use crate::report::{BenchRow, CellLabels};
use crate::score::{Pair, Scorer};
use crate::server::{BackgroundServer, ServerSettings};

/// Where results go and how the best cell is chosen; shared by `run` and `sweep`.
#[derive(Debug, Clone, Args)]
pub struct RunOptions {
    /// Where the result files go.
    #[arg(long, default_value = "experiments/results")]
    pub output_dir: PathBuf,
    /// Mark the cell with the most QPS whose p99 is within this many ms.
    #[arg(long)]
    pub p99_budget_ms: Option<f64>,
    /// The config folder.
    #[arg(long, default_value = "conf")]
    pub conf: PathBuf,
    /// Run each cell this many times; the table shows mean ± standard deviation of QPS and p99.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeats: u32,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Experiment: a file name in conf/experiment/ without .yaml.
    pub name: String,
    /// Hydra-style overrides: key=value, +key=value, ++key=value, ~key, group=option, key=a,b,c.
    pub overrides: Vec<String>,
    #[command(flatten)]
    pub options: RunOptions,
}

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// Experiments to run in order, or `all` for every file in conf/experiment/.
    #[arg(required = true)]
    pub names: Vec<String>,
    #[command(flatten)]
    pub options: RunOptions,
}

#[derive(Debug, Args)]
pub struct ConfigShowArgs {
    /// An experiment to compose (optional: the primary config alone), then overrides as for
    /// `xbench run`.
    pub args: Vec<String>,
    #[arg(long, default_value = "conf")]
    pub conf: PathBuf,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long, default_value = "conf")]
    pub conf: PathBuf,
}

pub(crate) fn parse_overrides(list: &[String]) -> anyhow::Result<Vec<Override>> {
    Ok(list
        .iter()
        .map(|o| Override::parse(o))
        .collect::<Result<_, _>>()?)
}

/// Splits `[EXPERIMENT] [OVERRIDES...]`: the first word names an experiment unless it is an
/// override (`key=value`, `+key...`, `~key`).
pub(crate) fn split_experiment(args: &[String]) -> (Option<String>, Vec<String>) {
    match args.split_first() {
        Some((first, rest))
            if !first.contains('=') && !first.starts_with('~') && !first.starts_with('+') =>
        {
            (Some(first.clone()), rest.to_vec())
        }
        _ => (None, args.to_vec()),
    }
}

fn experiments(conf: &Path) -> Vec<String> {
    crate::config::compose::options(&conf.join("experiment"))
}

/// Prints the composed config as YAML.
pub fn config_show(args: ConfigShowArgs) -> anyhow::Result<()> {
    let (name, overrides) = split_experiment(&args.args);
    let mut overrides = parse_overrides(&overrides)?;
    if let Some(name) = &name {
        overrides.insert(0, Override::parse(&format!("+experiment={name}"))?);
    }
    let composed = compose(&args.conf, "config", &overrides)?;
    XbenchConfig::from_composed(&composed)?;
    print!(
        "{}",
        serde_yaml_ng::to_string(&tree::redacted(&composed.tree))?
    );
    Ok(())
}

/// Lists the experiments with their descriptions and cell counts.
pub fn list(args: ListArgs) -> anyhow::Result<()> {
    for name in experiments(&args.conf) {
        match sweep::expand(&args.conf, Some(&name), &[]) {
            Ok((_, cells)) => {
                let c = &cells[0].config;
                println!("{name:24} {:3} cells  {}", cells.len(), c.description);
            }
            Err(e) => println!("{name:24} invalid: {e}"),
        }
    }
    Ok(())
}

pub fn sweep_cmd(args: SweepArgs) -> anyhow::Result<()> {
    let names = if args.names == ["all"] {
        experiments(&args.options.conf)
    } else {
        args.names.clone()
    };
    for name in names {
        run(RunArgs {
            name,
            overrides: Vec::new(),
            options: args.options.clone(),
        })?;
    }
    Ok(())
}

/// Runs every cell of an experiment and writes its result files after each.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let overrides = parse_overrides(&args.overrides)?;
    let opts = &args.options;
    let (axes, cells) = sweep::expand(&opts.conf, Some(&args.name), &overrides)?;
    let shown_axes: Vec<String> = axes
        .iter()
        .filter(|a| a.values.len() > 1 || a.key == "pairs_per_request")
        .map(|a| a.key.clone())
        .collect();
    let first = &cells[0].config;
    let mut results = Results {
        provenance: provenance(&args.name, first, &args.overrides, &cells)?,
        axes: shown_axes,
        p99_budget_ms: opts.p99_budget_ms,
        cells: Vec::new(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut workloads: HashMap<(String, bool, u64, usize), Workload> = HashMap::new();
    let total = cells.len();
    // A progress bar on a terminal; the per-cell log lines otherwise.
    let progress = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::new(total as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] cell {pos}/{len}  {msg}  ETA {eta}",
        )
        .expect("a fixed template parses. This is a bug.")
        .progress_chars("=> "),
    );
    progress.set_prefix(args.name.clone());
    for (i, cell) in cells.iter().enumerate() {
        let c = &cell.config;
        let w = &c.workload;
        let key = (w.input.clone(), w.generate, w.seed, cell.pairs_per_request);
        if !workloads.contains_key(&key) {
            workloads.insert(key.clone(), workload(c, cell.pairs_per_request)?);
        }
        let engine_config = c.engine_config()?;
        let model_names: Vec<String> = engine_config
            .models
            .iter()
            .map(|m| m.name.clone())
            .collect();
        // The engine in this process, or a server (this cell's own, or the configured URL).
        let (target, server) = match c.experiment.target.as_deref() {
            None => (
                Target::Engine(Arc::new(Engine::start(&engine_config)?)),
                None,
            ),
            Some(t) => {
                let server = if t == "self" {
                    let settings = ServerSettings {
                        host: "127.0.0.1".into(),
                        port: 0,
                        ..c.server.clone()
                    };
                    Some(BackgroundServer::start(settings, engine_config.clone())?)
                } else {
                    None
                };
                let url = server.as_ref().map_or_else(|| t.to_string(), |s| s.url());
                let api_key = c
                    .server
                    .api_key
                    .clone()
                    .or_else(|| std::env::var("XBENCH_API_KEY").ok());
                let connections = match c.experiment.rate {
                    Some(_) => 256,
                    None => cell.concurrency,
                };
                let timeout = Duration::from_secs_f64(c.experiment.max_duration_s.max(60.0));
                let mut http = HttpTarget::new(&url, api_key, connections, timeout)?;
                if let Some(s) = &server {
                    let state = s.stats_handle();
                    http = http.with_stats(Box::new(move || state.batch_stats()));
                }
                let http = Arc::new(http);
                runtime.block_on(http.wait_ready(Duration::from_secs(300)))?;
                (Target::Http(http), server)
            }
        };
        let spec = RunSpec {
            stage: c.experiment.stage,
            load: match c.experiment.rate {
                Some(rate) => Load::Open {
                    rate,
                    poisson: true,
                },
                None => Load::Closed {
                    concurrency: cell.concurrency,
                },
            },
            models: if c.experiment.target.as_deref().is_some_and(|t| t != "self") {
                Vec::new() // a server elsewhere serves its own default model
            } else {
                model_names.clone()
            },
            warmup: c.experiment.warmup,
            window: Window {
                duration: Duration::from_secs_f64(c.experiment.duration_s),
                min_requests: c.experiment.min_requests,
                max_duration: Duration::from_secs_f64(c.experiment.max_duration_s),
            },
            seed: w.seed,
        };
        let mut labels = CellLabels {
            stage: spec.stage,
            model: model_names.join(" + "),
            tokenizer_workers: c.tokenizer_pool.workers,
            model_workers: engine_config.models.iter().map(|m| m.instances).sum(),
            threads_per_worker: 0,
            parallelism: c.tokenizer_pool.parallelism,
            pairs_per_request: cell.pairs_per_request,
            max_batch_size: c.batching.max_batch_size,
            timeout_ms: c.batching.timeout_ms,
            load: spec.load,
        };
        match &target {
            Target::Engine(engine) => {
                labels.threads_per_worker = engine.threads_per_instance(None)?
            }
            Target::Http(http) => {
                let info = runtime.block_on(http.info());
                labels = http_labels(info.as_ref(), labels);
            }
        }
        // Each repeat runs the cell again (warm-up included); the row merges them all.
        let mut merged: Option<loadgen::RunOutcome> = None;
        let mut repeats = Vec::new();
        for _ in 0..opts.repeats {
            let outcome =
                runtime.block_on(loadgen::run(target.clone(), &workloads[&key], &spec))?;
            let one = BenchRow::new(&labels, &outcome);
            repeats.push(RepeatFigures {
                qps: one.qps,
                p99_ms: one.latency_ms.p99,
                requests: one.requests,
            });
            merged = Some(match merged {
                None => outcome,
                Some(mut m) => {
                    m.recorder.merge(&outcome.recorder);
                    m.wall += outcome.wall;
                    m.batches = m.batches.zip(outcome.batches).map(|(a, b)| a.plus(&b));
                    m
                }
            });
        }
        let outcome = merged.expect("at least one repeat runs. This is a bug.");
        drop(target);
        if let Some(server) = server {
            let summary = server.stop()?;
            tracing::debug!(
                accepted = summary.accepted,
                answered = summary.answered,
                left = summary.left,
                "cell server stopped"
            );
        }
        let row = BenchRow::new(&labels, &outcome);
        progress.set_message(format!(
            "last: {:.1} pairs/s, p50 {:.1} ms",
            row.qps, row.latency_ms.p50
        ));
        progress.inc(1);
        tracing::info!(
            cell = format!("{}/{total}", i + 1),
            axes = %cell.axes.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "),
            qps = format!("{:.1}", row.qps),
            p50_ms = format!("{:.1}", row.latency_ms.p50),
            requests = row.requests,
            "cell done"
        );
        results.cells.push(CellResult {
            axes: cell.axes.clone(),
            row,
            repeats,
            latency_histogram: encode_histogram(&outcome.recorder.latency_us)
                .map_err(|e| anyhow::anyhow!("cannot encode the latency histogram: {e}"))?,
            config: tree::redacted(&cell.composed.tree),
            // Measured once every cell has run, not to disturb the cells' measurements.
            accuracy: None,
        });
        results
            .write(&opts.output_dir)
            .with_context(|| format!("cannot write results into {}", opts.output_dir.display()))?;
    }
    progress.finish_and_clear();
    // fp32 scores, once per (model, truncation, device, backend, workload, pairs).
    let mut references: HashMap<String, Vec<f32>> = HashMap::new();
    for (i, cell) in cells.iter().enumerate() {
        let c = &cell.config;
        if c.experiment.accuracy_pairs == 0 {
            continue;
        }
        let w = &c.workload;
        let key = (w.input.clone(), w.generate, w.seed, cell.pairs_per_request);
        let accuracy = cell_accuracy(
            &c.engine_config()?,
            (&format!("{key:?}"), &workloads[&key]),
            c.experiment.accuracy_pairs,
            &mut references,
        )
        .with_context(|| {
            format!(
                "experiment.accuracy_pairs: cannot measure cell {}'s accuracy",
                i + 1
            )
        })?;
        tracing::info!(
            cell = i + 1,
            max_abs_diff = accuracy.max_abs_diff,
            spearman = accuracy.spearman,
            "accuracy against fp32"
        );
        results.cells[i].accuracy = Some(accuracy);
    }
    let paths = results
        .write(&opts.output_dir)
        .with_context(|| format!("cannot write results into {}", opts.output_dir.display()))?;
    println!("{}", results.markdown());
    for p in paths {
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

/// What the cell's first model at its precision does to scores against fp32, over the first `n`
/// pairs of the cell's workload (each request is one ranking). `references` keeps the fp32 scores
/// for the cells that share them.
fn cell_accuracy(
    engine: &EngineConfig,
    (workload_id, workload): (&str, &Workload),
    n: usize,
    references: &mut HashMap<String, Vec<f32>>,
) -> anyhow::Result<Agreement> {
    let spec = engine.models.first().context("the cell has no model")?;
    let mut pairs = Vec::new();
    let mut rankings = Vec::new();
    'requests: for (r, request) in workload.requests.iter().enumerate() {
        for passage in &request.passages {
            if pairs.len() == n {
                break 'requests;
            }
            pairs.push(Pair::new(request.query.clone(), passage.clone()));
            rankings.push(r.to_string());
        }
    }
    let score = |precision: Precision| -> anyhow::Result<Vec<f32>> {
        let scorer = Scorer::load(&ModelSpec {
            quantization: precision,
            quantization_cache: false,
            ..spec.clone()
        })?;
        Ok(scorer.score(&pairs, 32)?)
    };
    let id = format!(
        "{} {:?} {} {} {workload_id} {n}",
        spec.name,
        spec.max_length,
        spec.device,
        spec.backend.name()
    );
    if !references.contains_key(&id) {
        references.insert(id.clone(), score(Precision::Fp32)?);
    }
    let reference = &references[&id];
    // fp32 against itself is the same computation: its scores are the reference's.
    let scores = match spec.quantization {
        Precision::Fp32 => reference.clone(),
        other => score(other)?,
    };
    let rankings: Vec<&str> = rankings.iter().map(String::as_str).collect();
    Ok(agreement(reference, &scores, &rankings))
}

fn workload(c: &XbenchConfig, pairs_per_request: usize) -> anyhow::Result<Workload> {
    let w = &c.workload;
    if w.generate {
        return Ok(Workload::generate(
            w.seed,
            GeneratedLengths::default(),
            pairs_per_request,
            64,
        ));
    }
    Workload::from_jsonl(Path::new(&w.input), pairs_per_request)
        .context("workload.input (or set workload.generate=true)")
}

fn provenance(
    experiment: &str,
    c: &XbenchConfig,
    overrides: &[String],
    cells: &[Cell],
) -> anyhow::Result<Provenance> {
    let mut models: Vec<(String, String)> = Vec::new();
    for cell in cells {
        for m in &cell.config.model_pool.instances {
            if models.iter().any(|(n, _)| *n == m.name) {
                continue;
            }
            let files = ModelFiles::resolve(&m.name)?;
            let mut hasher = sha2::Sha256::new();
            for path in &files.weights {
                let mut f = File::open(path).with_context(|| path.display().to_string())?;
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = f.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                }
            }
            models.push((m.name.clone(), format!("{:x}", hasher.finalize())));
        }
    }
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    Ok(Provenance {
        experiment: experiment.to_string(),
        name: c.name.clone(),
        description: c.description.clone(),
        overrides: overrides
            .iter()
            .map(|o| tree::redacted_override(o))
            .collect(),
        git_sha: git(&["rev-parse", "HEAD"]),
        // Result files that runs rewrite do not count as changes to what produced them.
        git_dirty: git(&[
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":(exclude)experiments/results",
        ])
        .map(|s| !s.is_empty()),
        cpu,
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        xbench_version: env!("CARGO_PKG_VERSION").to_string(),
        models,
        seed: c.workload.seed,
        date: utc_now(),
    })
}
