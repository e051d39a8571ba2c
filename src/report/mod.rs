//! Result rows: one measured cell as the original results table shows it (stage, workers,
//! parallelism, RPS, QPS, latency percentiles) plus the stage breakdown and batch figures, rendered
//! as a markdown table or JSON.

pub mod plot;
pub mod provenance;
pub mod results;

use serde::Serialize;
use tabled::settings::Style;
use tabled::{Table, Tabled};

use crate::loadgen::{Load, RunOutcome, Stage};

/// Latency of answered requests from their intended send time, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct LatencyMs {
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// Mean time per answered request in each stage, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct StagesMs {
    pub queue: f64,
    pub tokenize: f64,
    pub batch_wait: f64,
    pub inference: f64,
}

/// One measured cell. Fields that a stage does not exercise are `null`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BenchRow {
    pub stage: Stage,
    pub model: String,
    pub tokenizer_workers: Option<usize>,
    pub model_workers: Option<usize>,
    pub threads_per_worker: Option<usize>,
    pub parallelism: Option<bool>,
    pub pairs_per_request: usize,
    pub max_batch_size: Option<usize>,
    pub timeout_ms: Option<f64>,
    pub concurrency: Option<usize>,
    /// Target arrival rate of an open-loop run, requests per second.
    pub rate: Option<f64>,
    /// Answered requests in the measured window.
    pub requests: u64,
    /// Failed requests in the measured window, by kind.
    pub errors: std::collections::BTreeMap<String, u64>,
    /// Measured window, seconds: first intended send to last answer.
    pub duration_s: f64,
    /// Answered requests per second.
    pub rps: f64,
    /// Pairs per second: RPS × pairs per request.
    pub qps: f64,
    pub latency_ms: LatencyMs,
    pub stages_ms: StagesMs,
    /// Pairs per forward pass actually formed.
    pub mean_batch_size: Option<f64>,
    /// Real tokens / computed tokens.
    pub padding_efficiency: Option<f64>,
}

/// How a cell was configured, for its row.
#[derive(Debug, Clone)]
pub struct CellLabels {
    pub stage: Stage,
    pub model: String,
    pub tokenizer_workers: usize,
    pub model_workers: usize,
    pub threads_per_worker: usize,
    pub parallelism: bool,
    pub pairs_per_request: usize,
    pub max_batch_size: usize,
    pub timeout_ms: f64,
    pub load: Load,
}

fn ms(us: f64) -> f64 {
    us / 1000.0
}

impl BenchRow {
    pub fn new(c: &CellLabels, out: &RunOutcome) -> Self {
        let r = &out.recorder;
        let h = &r.latency_us;
        let n = r.completed.max(1) as f64;
        let secs = out.wall.as_secs_f64();
        let rps = if secs > 0.0 {
            r.completed as f64 / secs
        } else {
            0.0
        };
        let tokenizes = c.stage != Stage::Infer;
        let infers = c.stage != Stage::Tokenize;
        let (concurrency, rate) = match c.load {
            Load::Closed { concurrency } => (Some(concurrency), None),
            Load::Open { rate, .. } => (None, Some(rate)),
        };
        let q = |p: f64| {
            if r.completed == 0 {
                0.0
            } else {
                ms(h.value_at_quantile(p) as f64)
            }
        };
        Self {
            stage: c.stage,
            model: c.model.clone(),
            tokenizer_workers: tokenizes.then_some(c.tokenizer_workers),
            model_workers: infers.then_some(c.model_workers),
            threads_per_worker: infers.then_some(c.threads_per_worker),
            parallelism: tokenizes.then_some(c.parallelism),
            pairs_per_request: c.pairs_per_request,
            max_batch_size: infers.then_some(c.max_batch_size),
            timeout_ms: infers.then_some(c.timeout_ms),
            concurrency,
            rate,
            requests: r.completed,
            errors: r.errors.clone(),
            duration_s: secs,
            rps,
            qps: rps * c.pairs_per_request as f64,
            latency_ms: LatencyMs {
                mean: if r.completed == 0 { 0.0 } else { ms(h.mean()) },
                p50: q(0.50),
                p95: q(0.95),
                p99: q(0.99),
                max: if r.completed == 0 {
                    0.0
                } else {
                    ms(h.max() as f64)
                },
            },
            stages_ms: StagesMs {
                queue: ms(r.queue_us as f64 / n),
                tokenize: ms(r.tokenize_us as f64 / n),
                batch_wait: ms(r.batch_wait_us as f64 / n),
                inference: ms(r.inference_us as f64 / n),
            },
            mean_batch_size: out.batches.and_then(|b| b.mean_batch_size()),
            padding_efficiency: out.batches.and_then(|b| b.padding_efficiency()),
        }
    }
}

#[derive(Tabled)]
struct Line {
    #[tabled(rename = "Stage")]
    stage: String,
    #[tabled(rename = "Tokenizer Workers")]
    tokenizer_workers: String,
    #[tabled(rename = "Model Workers")]
    model_workers: String,
    #[tabled(rename = "Parallelism")]
    parallelism: String,
    #[tabled(rename = "Pairs/Req")]
    pairs: usize,
    #[tabled(rename = "Load")]
    load: String,
    #[tabled(rename = "RPS")]
    rps: String,
    #[tabled(rename = "QPS")]
    qps: String,
    #[tabled(rename = "Mean")]
    mean: String,
    #[tabled(rename = "P50")]
    p50: String,
    #[tabled(rename = "P95")]
    p95: String,
    #[tabled(rename = "P99")]
    p99: String,
    #[tabled(rename = "Queue")]
    queue: String,
    #[tabled(rename = "Tokenize")]
    tokenize: String,
    #[tabled(rename = "Batch Wait")]
    batch_wait: String,
    #[tabled(rename = "Inference")]
    inference: String,
    #[tabled(rename = "Batch")]
    batch: String,
    #[tabled(rename = "Pad Eff")]
    padding: String,
    #[tabled(rename = "N")]
    n: u64,
    #[tabled(rename = "Errors")]
    errors: u64,
}

fn dash<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map(f).unwrap_or_else(|| "-".to_string())
}

fn millis(v: f64) -> String {
    format!("{v:.1}ms")
}

/// Rows as a markdown table, units in the cells (ms, per second).
pub fn markdown(rows: &[BenchRow]) -> String {
    let lines = rows.iter().map(|r| Line {
        stage: r.stage.to_string(),
        tokenizer_workers: dash(r.tokenizer_workers, |v| v.to_string()),
        model_workers: dash(r.model_workers.zip(r.threads_per_worker), |(m, t)| {
            format!("{m}×{t}t")
        }),
        parallelism: dash(r.parallelism, |p| if p { "on" } else { "off" }.to_string()),
        pairs: r.pairs_per_request,
        load: match (r.concurrency, r.rate) {
            (Some(c), _) => format!("c={c}"),
            (_, Some(rate)) => format!("{rate}/s"),
            _ => "-".into(),
        },
        rps: format!("{:.2}", r.rps),
        qps: format!("{:.1}", r.qps),
        mean: millis(r.latency_ms.mean),
        p50: millis(r.latency_ms.p50),
        p95: millis(r.latency_ms.p95),
        p99: millis(r.latency_ms.p99),
        queue: millis(r.stages_ms.queue),
        tokenize: millis(r.stages_ms.tokenize),
        batch_wait: millis(r.stages_ms.batch_wait),
        inference: millis(r.stages_ms.inference),
        batch: dash(r.mean_batch_size, |b| format!("{b:.1}")),
        padding: dash(r.padding_efficiency, |p| format!("{:.0}%", p * 100.0)),
        n: r.requests,
        errors: r.errors.values().sum(),
    });
    let mut table = Table::new(lines);
    table.with(Style::markdown());
    table.to_string()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::engine::{BatchStats, Timings};
    use crate::loadgen::Recorder;

    fn outcome() -> RunOutcome {
        let mut r = Recorder::default();
        let t0 = Instant::now();
        for i in 1..=100u64 {
            let t = Timings {
                queue: Duration::from_micros(100),
                tokenize: Duration::from_micros(900),
                batch_wait: Duration::from_micros(2_000),
                inference: Duration::from_micros(7_000),
                total: Duration::from_micros(10_000),
            };
            r.record(t0, t0 + Duration::from_millis(i), &t);
        }
        RunOutcome {
            recorder: r,
            wall: Duration::from_secs(4),
            batches: Some(BatchStats {
                batches: 50,
                pairs: 400,
                real_tokens: 30_000,
                computed_tokens: 40_000,
            }),
        }
    }

    fn labels() -> CellLabels {
        CellLabels {
            stage: Stage::Full,
            model: "models/demo-minilm-l6".into(),
            tokenizer_workers: 2,
            model_workers: 1,
            threads_per_worker: 2,
            parallelism: true,
            pairs_per_request: 4,
            max_batch_size: 32,
            timeout_ms: 5.0,
            load: Load::Closed { concurrency: 2 },
        }
    }

    #[test]
    fn the_json_row_is_pinned() {
        let row = BenchRow::new(&labels(), &outcome());
        assert_eq!(row.rps, 25.0);
        assert_eq!(row.qps, 100.0);
        insta::assert_json_snapshot!(row);
    }

    #[test]
    fn the_markdown_row_is_pinned() {
        let mut tokenize = labels();
        tokenize.stage = Stage::Tokenize;
        let mut out = outcome();
        let rows = vec![BenchRow::new(&labels(), &out), {
            out.batches = None;
            BenchRow::new(&tokenize, &out)
        }];
        insta::assert_snapshot!(markdown(&rows));
    }
}
