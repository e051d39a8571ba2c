//! `xbench score`: batch scoring of a JSON-lines file.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use crate::backend::{BackendKind, CacheUse, ModelSpec};
use crate::model::Precision;
use crate::score::{read_pairs, sigmoid, Pair, Scorer};

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// Model: a local directory in Hugging Face layout or a hub id (org/name[@revision]).
    #[arg(long, default_value = "models/demo-minilm-l6")]
    pub model: String,
    /// JSON lines of {"query": ..., "passage": ...} ("document" or "text" also name the passage); - for stdin.
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write the scores (written whole or not at all); stdout when absent.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Pairs per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Truncation length in tokens; capped by the model's positions and the tokenizer's limit.
    #[arg(long)]
    pub max_length: Option<usize>,
    /// cpu, cuda[:N] (with --features cuda) or metal[:N] (with --features metal).
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
    /// Keep the quantized layers in `xbench-<precision>.gguf` beside the model and reuse them.
    #[arg(long)]
    pub quantization_cache: bool,
}

#[derive(serde::Serialize)]
struct ScoreLine {
    score: f32,
    relevance: f32,
}

pub fn run(args: ScoreArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    if let Some(out) = &args.output {
        check_output_dir(out)?;
    }
    refuse_kernels(args.kernels.as_deref())?;
    let pairs = read_input(&args.input)?;
    let started = Instant::now();
    let scorer = Scorer::load(&ModelSpec {
        max_length: args.max_length,
        device: args.device.clone(),
        backend: args.backend,
        quantization: args.quantization,
        quantization_cache: args.quantization_cache,
        ..ModelSpec::new(&args.model)
    })?;
    if let CacheUse::Failed(why) = &scorer.model().cache {
        tracing::warn!(%why, "the quantized layers were computed but not cached");
    }
    tracing::info!(
        model = %args.model,
        max_length = scorer.tokenizer().max_length(),
        load_s = format!("{:.2}", started.elapsed().as_secs_f64()),
        "model loaded"
    );
    let started = Instant::now();
    let scores = scorer.score(&pairs, args.batch_size)?;
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        pairs = pairs.len(),
        batch_size = args.batch_size,
        seconds = format!("{secs:.3}"),
        pairs_per_s = format!("{:.1}", pairs.len() as f64 / secs.max(1e-9)),
        "scored"
    );

    let mut text = String::with_capacity(scores.len() * 48);
    for score in scores {
        let line = ScoreLine {
            score,
            relevance: sigmoid(score),
        };
        text.push_str(
            &serde_json::to_string(&line)
                .expect("serialising two floats cannot fail. This is a bug."),
        );
        text.push('\n');
    }
    match &args.output {
        Some(path) => write_atomically(path, text.as_bytes()),
        None => {
            let mut out = BufWriter::new(std::io::stdout().lock());
            out.write_all(text.as_bytes())?;
            out.flush()?;
            Ok(())
        }
    }
}

/// `--kernels` was replaced by `--backend`: say what to write instead of failing on an unknown flag.
pub(crate) fn refuse_kernels(kernels: Option<&str>) -> anyhow::Result<()> {
    match kernels {
        None => Ok(()),
        Some(k) => anyhow::bail!(
            "--kernels was replaced by --backend: write --backend {} (fused: xbench's CPU kernels; candle: candle's ops)",
            if k == "candle" { "candle" } else { "fused" }
        ),
    }
}

/// The pairs of a JSON-lines file (`-`: stdin); an error names the file and the line.
pub(crate) fn read_input(path: &Path) -> anyhow::Result<Vec<Pair>> {
    if path == Path::new("-") {
        return read_pairs(std::io::stdin().lock()).context("reading stdin");
    }
    let file = File::open(path).with_context(|| format!("cannot open input {}", path.display()))?;
    read_pairs(BufReader::new(file)).with_context(|| path.display().to_string())
}

fn output_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn check_output_dir(path: &Path) -> anyhow::Result<()> {
    let dir = output_dir(path);
    anyhow::ensure!(
        dir.is_dir(),
        "cannot write --output {}: directory {} does not exist",
        path.display(),
        dir.display()
    );
    Ok(())
}

/// Writes to a temporary file beside `path`, then renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut tmp = tempfile::NamedTempFile::new_in(output_dir(path))
        .with_context(|| format!("cannot create a temporary file beside {}", path.display()))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
