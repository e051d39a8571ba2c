//! `xbench accuracy`: what each precision does to a model's scores and rankings, against fp32.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use tabled::settings::Style;

use crate::accuracy::{agreement, Agreement};
use crate::backend::ModelSpec;
use crate::model::Precision;
use crate::score::Scorer;

#[derive(Debug, Args)]
pub struct AccuracyArgs {
    /// Model: a local directory in Hugging Face layout or a hub id (org/name[@revision]).
    #[arg(long, default_value = "models/demo-minilm-l6")]
    pub model: String,
    /// Precisions to compare with fp32, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "fp16,bf16,int8,int4"
    )]
    pub precisions: Vec<Precision>,
    /// JSON lines of {"query": ..., "passage": ...}; pairs sharing a query form one ranking.
    #[arg(long, default_value = "data/pairs.jsonl")]
    pub input: PathBuf,
    /// Score only the first N pairs.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Pairs per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Truncation length in tokens; capped by the model's positions and the tokenizer's limit.
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize, tabled::Tabled)]
struct Row {
    precision: &'static str,
    #[tabled(rename = "pairs/s", display = "fixed1")]
    pairs_per_s: f64,
    #[tabled(rename = "max abs Δlogit", display = "fixed4")]
    max_abs_diff: f32,
    #[tabled(rename = "mean abs Δlogit", display = "fixed4")]
    mean_abs_diff: f32,
    #[tabled(display = "fixed4")]
    spearman: f64,
    #[tabled(rename = "top-1 agreement", display = "fixed3")]
    top1_agreement: f64,
    #[tabled(rename = "NDCG@10", display = "fixed4")]
    ndcg_at_10: f64,
}

fn fixed1<T: Into<f64> + Copy>(v: &T) -> String {
    format!("{:.1}", (*v).into())
}

fn fixed3<T: Into<f64> + Copy>(v: &T) -> String {
    format!("{:.3}", (*v).into())
}

fn fixed4<T: Into<f64> + Copy>(v: &T) -> String {
    format!("{:.4}", (*v).into())
}

pub fn run(args: AccuracyArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    let mut pairs = super::score::read_input(&args.input)?;
    if let Some(n) = args.limit {
        pairs.truncate(n);
    }
    anyhow::ensure!(!pairs.is_empty(), "{} holds no pairs", args.input.display());
    let queries: Vec<&str> = pairs.iter().map(|p| p.query.as_str()).collect();
    let score = |precision: Precision| -> anyhow::Result<(Vec<f32>, f64)> {
        let scorer = Scorer::load(&ModelSpec {
            max_length: args.max_length,
            quantization: precision,
            ..ModelSpec::new(&args.model)
        })
        .with_context(|| format!("cannot run {} at {}", args.model, precision.name()))?;
        let started = Instant::now();
        let scores = scorer.score(&pairs, args.batch_size)?;
        let rate = pairs.len() as f64 / started.elapsed().as_secs_f64().max(1e-9);
        tracing::info!(
            precision = precision.name(),
            pairs = pairs.len(),
            pairs_per_s = format!("{rate:.1}"),
            "scored"
        );
        Ok((scores, rate))
    };
    let (reference, reference_rate) = score(Precision::Fp32)?;
    let row = |precision: Precision, rate: f64, a: Agreement| Row {
        precision: precision.name(),
        pairs_per_s: rate,
        max_abs_diff: a.max_abs_diff,
        mean_abs_diff: a.mean_abs_diff,
        spearman: a.spearman,
        top1_agreement: a.top1_agreement,
        ndcg_at_10: a.ndcg_at_10,
    };
    let mut rows = vec![row(
        Precision::Fp32,
        reference_rate,
        agreement(&reference, &reference, &queries),
    )];
    for &precision in args.precisions.iter().filter(|p| **p != Precision::Fp32) {
        let (scores, rate) = score(precision)?;
        rows.push(row(
            precision,
            rate,
            agreement(&reference, &scores, &queries),
        ));
    }
    let groups = agreement(&reference, &reference, &queries).queries;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "model": args.model,
                "input": args.input,
                "pairs": pairs.len(),
                "queries": groups,
                "batch_size": args.batch_size,
                "reference": "fp32",
                "rows": rows,
            }))?
        );
    } else {
        println!(
            "{}: {} pairs, {} queries of 2+ passages, batch {}; differences against fp32 (pairs/s: one stream, this machine)",
            args.model,
            pairs.len(),
            groups,
            args.batch_size
        );
        println!("{}", tabled::Table::new(&rows).with(Style::markdown()));
    }
    Ok(())
}
