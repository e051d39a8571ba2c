//! Result files of an experiment run: `NAME_results.md` (the original's table plus the swept values
//! and key insights), `NAME_results.json` (every figure and what produced it) and
//! `NAME_results.csv`, and `NAME_results.svg` (throughput against latency). All are rewritten after every cell, each through a temporary file and a
//! rename, so a failure late in a sweep keeps the finished cells.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::BenchRow;
use crate::loadgen::Stage;

/// Fewest measured requests for a percentile to be shown; below it the table says n/a.
pub const MIN_SAMPLES_P95: u64 = 20;
pub const MIN_SAMPLES_P99: u64 = 100;

/// What produced a results file.
#[derive(Debug, Clone, Serialize)]
pub struct Provenance {
    pub experiment: String,
    pub name: String,
    pub description: String,
    pub overrides: Vec<String>,
    pub git_sha: Option<String>,
    pub git_dirty: Option<bool>,
    pub cpu: String,
    pub cores: usize,
    /// The fused kernels' SIMD level (`avx512`, `avx2`, `portable`) and the kernel each product
    /// precision runs at it, `(precision, kernel)`.
    pub simd: String,
    pub kernels: Vec<(String, String)>,
    pub xbench_version: String,
    /// Model id → sha256 of its weights.
    pub models: Vec<(String, String)>,
    pub seed: u64,
    /// UTC, RFC 3339.
    pub date: String,
}

/// The headline figures of one repeat of a cell.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct RepeatFigures {
    pub qps: f64,
    pub p99_ms: f64,
    pub requests: u64,
}

/// One finished cell.
#[derive(Debug, Clone, Serialize)]
pub struct CellResult {
    /// Axis key → value, in axis order.
    pub axes: Vec<(String, Value)>,
    /// Figures over all repeats together (latency histograms merged, windows added up).
    pub row: BenchRow,
    /// Each repeat's own figures (one entry when the cell ran once).
    pub repeats: Vec<RepeatFigures>,
    /// The merged latency histogram (µs) in HdrHistogram's V2 deflate encoding, base64: the
    /// percentiles can be recomputed from it with any HdrHistogram library.
    pub latency_histogram: String,
    /// The cell's composed config.
    pub config: Value,
    /// What the cell's precision does to scores against fp32 (`experiment.accuracy_pairs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<crate::accuracy::Agreement>,
}

/// HdrHistogram's V2 deflate serialization of `h`, base64 ("HISTFAAA...").
pub fn encode_histogram(h: &hdrhistogram::Histogram<u64>) -> Result<String, String> {
    use base64::Engine as _;
    use hdrhistogram::serialization::Serializer as _;
    let mut bytes = Vec::new();
    hdrhistogram::serialization::V2DeflateSerializer::new()
        .serialize(h, &mut bytes)
        .map_err(|e| format!("{e:?}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Mean and sample standard deviation.
fn mean_sd(xs: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let n = xs.clone().count() as f64;
    let mean = xs.clone().sum::<f64>() / n;
    let var = xs.map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

/// Everything a results file holds.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub provenance: Provenance,
    pub axes: Vec<String>,
    pub p99_budget_ms: Option<f64>,
    pub cells: Vec<CellResult>,
}

impl Results {
    /// The cell with the most QPS whose p99 (with enough samples) is within the budget.
    pub fn best_within_budget(&self) -> Option<usize> {
        let budget = self.p99_budget_ms?;
        self.cells
            .iter()
            .enumerate()
            .filter(|(_, c)| c.row.requests >= MIN_SAMPLES_P99 && c.row.latency_ms.p99 <= budget)
            .max_by(|a, b| a.1.row.qps.total_cmp(&b.1.row.qps))
            .map(|(i, _)| i)
    }

    /// Writes the three files into `dir`; returns their paths.
    pub fn write(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let stem = &self.provenance.experiment;
        let files = [
            (format!("{stem}_results.md"), self.markdown()),
            (
                format!("{stem}_results.json"),
                serde_json::to_string_pretty(self).map_err(std::io::Error::other)? + "\n",
            ),
            (format!("{stem}_results.csv"), self.csv()),
            (
                format!("{stem}_results.svg"),
                super::plot::svg(self).map_err(std::io::Error::other)?,
            ),
        ];
        let mut paths = Vec::new();
        for (name, text) in files {
            let path = dir.join(name);
            let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
            tmp.write_all(text.as_bytes())?;
            tmp.persist(&path).map_err(|e| e.error)?;
            paths.push(path);
        }
        Ok(paths)
    }

    fn axis_value(cell: &CellResult, key: &str) -> String {
        cell.axes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .unwrap_or_default()
    }

    /// The markdown report.
    pub fn markdown(&self) -> String {
        let p = &self.provenance;
        let mut out = format!("# {}\n\n{}\n\n", p.name, p.description);
        out += &format!(
            "- experiment: `{}`; overrides: `{}`\n- xbench {}, git {}{}\n- CPU: {} ({} cores); fused kernels at `{}`: {}\n- models: {}\n- seed {}, {}\n\n",
            p.experiment,
            if p.overrides.is_empty() { "none".to_string() } else { p.overrides.join(" ") },
            p.xbench_version,
            p.git_sha.as_deref().unwrap_or("unknown"),
            if p.git_dirty == Some(true) { " (dirty)" } else { "" },
            p.cpu,
            p.cores,
            p.simd,
            p.kernels.iter().map(|(p, k)| format!("{p} `{k}`")).collect::<Vec<_>>().join(", "),
            p.models.iter().map(|(m, h)| format!("`{m}` (sha256 {})", &h[..h.len().min(12)])).collect::<Vec<_>>().join(", "),
            p.seed,
            p.date,
        );
        let swept: Vec<&String> = self.axes.iter().collect();
        let mut header = vec![
            "Configuration",
            "Tokeniser Workers",
            "Model Workers",
            "Parallelism",
            "RPS",
            "Throughput (QPS)",
            "Mean",
            "P50",
            "P95",
            "P99",
        ]
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>();
        header.extend(swept.iter().map(|a| a.to_string()));
        header.extend([
            "Batch".to_string(),
            "Pad Eff".to_string(),
            "N".to_string(),
            "Errors".to_string(),
        ]);
        let accuracy = self.cells.iter().any(|c| c.accuracy.is_some());
        if accuracy {
            header.extend(
                ["Max abs Δlogit", "Spearman", "Top-1 agreement", "NDCG@10"].map(str::to_string),
            );
        }
        out += &format!(
            "| {} |\n|{}\n",
            header.join(" | "),
            "---|".repeat(header.len())
        );
        let best = self.best_within_budget();
        for (i, c) in self.cells.iter().enumerate() {
            let r = &c.row;
            let pct = |v: f64, min: u64| {
                if r.requests >= min {
                    format!("{v:.1}ms")
                } else {
                    format!("n/a (n={})", r.requests)
                }
            };
            let mut cells = vec![
                format!(
                    "{}. {}{}",
                    i + 1,
                    stage_name(r.stage),
                    if best == Some(i) {
                        " **best within budget**"
                    } else {
                        ""
                    }
                ),
                r.tokenizer_workers.map_or("-".into(), |v| v.to_string()),
                r.model_workers.map_or("-".into(), |v| v.to_string()),
                r.parallelism
                    .map_or("-".into(), |p| if p { "on".into() } else { "off".into() }),
                format!("{:.2}", r.rps),
                if c.repeats.len() > 1 {
                    let (m, sd) = mean_sd(c.repeats.iter().map(|x| x.qps));
                    format!("{m:.1} ± {sd:.1}")
                } else {
                    format!("{:.1}", r.qps)
                },
                format!("{:.1}ms", r.latency_ms.mean),
                format!("{:.1}ms", r.latency_ms.p50),
                pct(r.latency_ms.p95, MIN_SAMPLES_P95),
                if c.repeats.len() > 1 && c.repeats.iter().all(|x| x.requests >= MIN_SAMPLES_P99) {
                    let (m, sd) = mean_sd(c.repeats.iter().map(|x| x.p99_ms));
                    format!("{m:.1} ± {sd:.1}ms")
                } else {
                    pct(r.latency_ms.p99, MIN_SAMPLES_P99)
                },
            ];
            cells.extend(swept.iter().map(|a| Self::axis_value(c, a)));
            cells.push(r.mean_batch_size.map_or("-".into(), |b| format!("{b:.1}")));
            cells.push(
                r.padding_efficiency
                    .map_or("-".into(), |e| format!("{:.0}%", e * 100.0)),
            );
            cells.push(r.requests.to_string());
            cells.push(r.errors.values().sum::<u64>().to_string());
            if accuracy {
                match &c.accuracy {
                    Some(a) => cells.extend([
                        format!("{:.4}", a.max_abs_diff),
                        format!("{:.4}", a.spearman),
                        format!("{:.3}", a.top1_agreement),
                        format!("{:.4}", a.ndcg_at_10),
                    ]),
                    None => cells.extend(["-", "-", "-", "-"].map(str::to_string)),
                }
            }
            out += &format!("| {} |\n", cells.join(" | "));
        }
        out += "\n## Key insights\n\n";
        out += &self.insights().join("\n");
        out += "\n";
        out
    }

    /// Sentences computed from the numbers.
    pub fn insights(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let label = |c: &CellResult| {
            c.axes
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let done: Vec<&CellResult> = self.cells.iter().filter(|c| c.row.requests > 0).collect();
        if let Some(best) = done.iter().max_by(|a, b| a.row.qps.total_cmp(&b.row.qps)) {
            lines.push(format!(
                "- Most throughput: {:.1} pairs/s at {}.",
                best.row.qps,
                label(best)
            ));
        }
        if let Some(best) = done
            .iter()
            .filter(|c| c.row.requests >= MIN_SAMPLES_P99)
            .min_by(|a, b| a.row.latency_ms.p99.total_cmp(&b.row.latency_ms.p99))
        {
            lines.push(format!(
                "- Lowest p99: {:.1} ms at {}.",
                best.row.latency_ms.p99,
                label(best)
            ));
        } else {
            lines.push(format!(
                "- No cell measured {MIN_SAMPLES_P99} requests, so no p99 is compared; lowest p50: {}.",
                done.iter()
                    .min_by(|a, b| a.row.latency_ms.p50.total_cmp(&b.row.latency_ms.p50))
                    .map(|c| format!("{:.1} ms at {}", c.row.latency_ms.p50, label(c)))
                    .unwrap_or_else(|| "none".into())
            ));
        }
        for axis in &self.axes {
            let mut values: Vec<(String, f64, usize)> = Vec::new();
            for c in &done {
                let v = Self::axis_value(c, axis);
                match values.iter_mut().find(|(k, _, _)| *k == v) {
                    Some(e) => {
                        e.1 += c.row.qps;
                        e.2 += 1;
                    }
                    None => values.push((v, c.row.qps, 1)),
                }
            }
            if values.len() < 2 {
                continue;
            }
            let means: Vec<(String, f64)> = values
                .into_iter()
                .map(|(k, s, n)| (k, s / n as f64))
                .collect();
            let (lo, hi) = (
                means
                    .iter()
                    .min_by(|a, b| a.1.total_cmp(&b.1))
                    .expect("two values"),
                means
                    .iter()
                    .max_by(|a, b| a.1.total_cmp(&b.1))
                    .expect("two values"),
            );
            if lo.1 > 0.0 {
                lines.push(format!(
                    "- {axis}: {} gives {:.2}× the throughput of {} (mean over the other axes: {:.1} vs {:.1} pairs/s).",
                    hi.0, hi.1 / lo.1, lo.0, hi.1, lo.1
                ));
            }
        }
        // Open loop: the highest arrival rate the pipeline kept up with (answered ≥ 90% of the
        // offered rate, no errors), within the p99 budget when there is one.
        let open: Vec<&&CellResult> = done.iter().filter(|c| c.row.rate.is_some()).collect();
        if !open.is_empty() {
            let sustained = |c: &CellResult| {
                let rate = c.row.rate.unwrap_or(f64::INFINITY);
                c.row.rps >= 0.9 * rate
                    && c.row.errors.is_empty()
                    && self.p99_budget_ms.is_none_or(|b| {
                        c.row.requests >= MIN_SAMPLES_P99 && c.row.latency_ms.p99 <= b
                    })
            };
            let within = match self.p99_budget_ms {
                Some(b) => format!(" with p99 within {b} ms"),
                None => String::new(),
            };
            match open
                .iter()
                .filter(|c| sustained(c))
                .max_by(|a, b| a.row.rate.unwrap_or(0.0).total_cmp(&b.row.rate.unwrap_or(0.0)))
            {
                Some(c) => lines.push(format!(
                    "- Highest arrival rate sustained{within}: {} requests/s ({:.1} pairs/s, p50 {:.1} ms).",
                    c.row.rate.unwrap_or(0.0),
                    c.row.qps,
                    c.row.latency_ms.p50
                )),
                None => lines.push(format!("- No arrival rate was sustained{within}.")),
            }
        }
        match (self.p99_budget_ms, self.best_within_budget()) {
            (Some(b), Some(i)) => lines.push(format!(
                "- Within a p99 budget of {b} ms, the best cell is {}: {:.1} pairs/s at p99 {:.1} ms.",
                label(&self.cells[i]),
                self.cells[i].row.qps,
                self.cells[i].row.latency_ms.p99
            )),
            (Some(b), None) => lines.push(format!(
                "- No cell kept p99 within {b} ms with at least {MIN_SAMPLES_P99} measured requests."
            )),
            (None, _) => {}
        }
        lines
    }

    /// One CSV line per cell, flat columns.
    pub fn csv(&self) -> String {
        let mut head = vec![
            "stage",
            "tokenizer_workers",
            "model_workers",
            "threads_per_worker",
            "parallelism",
            "pairs_per_request",
            "concurrency",
            "rate",
            "requests",
            "errors",
            "duration_s",
            "rps",
            "qps",
            "mean_ms",
            "p50_ms",
            "p95_ms",
            "p99_ms",
            "max_ms",
            "queue_ms",
            "tokenize_ms",
            "batch_wait_ms",
            "inference_ms",
            "mean_batch_size",
            "padding_efficiency",
        ]
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>();
        head.extend(self.axes.iter().cloned());
        let opt = |v: Option<String>| v.unwrap_or_default();
        let mut out = head.join(",") + "\n";
        for c in &self.cells {
            let r = &c.row;
            let mut f = vec![
                stage_name(r.stage).to_string(),
                opt(r.tokenizer_workers.map(|v| v.to_string())),
                opt(r.model_workers.map(|v| v.to_string())),
                opt(r.threads_per_worker.map(|v| v.to_string())),
                opt(r.parallelism.map(|v| v.to_string())),
                r.pairs_per_request.to_string(),
                opt(r.concurrency.map(|v| v.to_string())),
                opt(r.rate.map(|v| v.to_string())),
                r.requests.to_string(),
                r.errors.values().sum::<u64>().to_string(),
                format!("{:.3}", r.duration_s),
                format!("{:.4}", r.rps),
                format!("{:.3}", r.qps),
                format!("{:.3}", r.latency_ms.mean),
                format!("{:.3}", r.latency_ms.p50),
                format!("{:.3}", r.latency_ms.p95),
                format!("{:.3}", r.latency_ms.p99),
                format!("{:.3}", r.latency_ms.max),
                format!("{:.3}", r.stages_ms.queue),
                format!("{:.3}", r.stages_ms.tokenize),
                format!("{:.3}", r.stages_ms.batch_wait),
                format!("{:.3}", r.stages_ms.inference),
                opt(r.mean_batch_size.map(|v| format!("{v:.3}"))),
                opt(r.padding_efficiency.map(|v| format!("{v:.4}"))),
            ];
            f.extend(self.axes.iter().map(|a| csv_field(&Self::axis_value(c, a))));
            out += &(f.join(",") + "\n");
        }
        out
    }
}

fn stage_name(s: Stage) -> &'static str {
    match s {
        Stage::Tokenize => "Tokenizer Only",
        Stage::Infer => "Inference Only",
        Stage::Full => "Full Pipeline",
    }
}

fn csv_field(v: &str) -> String {
    if v.contains([',', '"', '\n']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_string()
    }
}

/// Now, UTC, RFC 3339 (seconds).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use serde_json::json;

    use super::*;
    use crate::engine::{BatchStats, Timings};
    use crate::loadgen::{Load, Recorder, RunOutcome};
    use crate::report::CellLabels;

    /// Two cells with fixed figures: 120 requests each; cell 1 twice as slow as cell 2 (latency and
    /// window).
    fn results() -> Results {
        let t0 = Instant::now();
        let t = Timings {
            queue: Duration::from_micros(100),
            tokenize: Duration::from_micros(900),
            batch_wait: Duration::from_micros(1_000),
            inference: Duration::from_micros(8_000),
            total: Duration::from_micros(10_000),
        };
        let cell = |workers: usize, scale: u64| {
            let mut recorder = Recorder::default();
            for i in 1..=120u64 {
                recorder.record(t0, t0 + Duration::from_millis(i * scale), &t);
            }
            let outcome = RunOutcome {
                recorder,
                wall: Duration::from_secs(10 * scale),
                batches: Some(BatchStats {
                    batches: 60,
                    pairs: 480,
                    real_tokens: 40_000,
                    computed_tokens: 50_000,
                }),
            };
            let labels = CellLabels {
                stage: Stage::Full,
                model: "models/demo-minilm-l6".into(),
                tokenizer_workers: workers,
                model_workers: 1,
                threads_per_worker: 2,
                parallelism: false,
                pairs_per_request: 4,
                max_batch_size: 32,
                timeout_ms: 5.0,
                load: Load::Closed { concurrency: 2 },
            };
            let row = BenchRow::new(&labels, &outcome);
            CellResult {
                axes: vec![
                    ("tokenizer_pool.workers".into(), json!(workers)),
                    ("pairs_per_request".into(), json!(4)),
                ],
                repeats: vec![RepeatFigures {
                    qps: row.qps,
                    p99_ms: row.latency_ms.p99,
                    requests: row.requests,
                }],
                latency_histogram: encode_histogram(&outcome.recorder.latency_us).unwrap(),
                row,
                config: json!({"tokenizer_pool": {"workers": workers}}),
                accuracy: None,
            }
        };
        Results {
            provenance: Provenance {
                experiment: "03_full_pipeline".into(),
                name: "Full Pipeline".into(),
                description: "test".into(),
                overrides: vec!["tokenizer_pool.workers=1,2".into()],
                git_sha: Some("0123abc".into()),
                git_dirty: Some(false),
                cpu: "Test CPU".into(),
                cores: 2,
                simd: "avx2".into(),
                kernels: vec![("int8".into(), "avx2-vpmaddwd".into())],
                xbench_version: "0.1.0".into(),
                models: vec![("models/demo-minilm-l6".into(), "ab".repeat(32))],
                seed: 42,
                date: "2026-11-29T10:00:00Z".into(),
            },
            axes: vec!["tokenizer_pool.workers".into(), "pairs_per_request".into()],
            p99_budget_ms: Some(200.0),
            cells: vec![cell(1, 2), cell(2, 1)],
        }
    }

    #[test]
    fn accuracy_adds_its_columns() {
        let mut r = results();
        assert!(!r.markdown().contains("Spearman"));
        r.cells[1].accuracy = Some(crate::accuracy::agreement(
            &[1.0, 2.0, 3.0],
            &[1.0, 2.5, 2.4],
            &["q", "q", "q"],
        ));
        let md = r.markdown();
        assert!(
            md.contains("| Max abs Δlogit | Spearman | Top-1 agreement | NDCG@10 |"),
            "{md}"
        );
        assert!(md.contains("| 0 | - | - | - | - |"), "{md}");
        assert!(md.contains("| 0 | 0.6000 | 0.5000 | 0.000 |"), "{md}");
    }

    #[test]
    fn the_json_schema_is_pinned() {
        insta::assert_json_snapshot!(results());
    }

    #[test]
    fn the_report_marks_the_best_cell_within_budget_and_explains_it() {
        let r = results();
        // Cell 2 is twice as fast with half the latency: p99 119 ms (≤ 200) vs 238 ms.
        assert_eq!(r.best_within_budget(), Some(1));
        let md = r.markdown();
        assert!(
            md.contains("| 2. Full Pipeline **best within budget** |"),
            "{md}"
        );
        let insights = r.insights().join("\n");
        assert!(
            insights.contains("tokenizer_pool.workers: 2 gives 2.00× the throughput of 1"),
            "{insights}"
        );
        assert!(
            insights.contains(
                "Within a p99 budget of 200 ms, the best cell is tokenizer_pool.workers=2, pairs_per_request=4: 48.0 pairs/s"
            ),
            "{insights}"
        );
        assert_eq!(r.csv().lines().count(), 3);
        assert!(utc_now().ends_with('Z') && utc_now().len() == 20);
    }
}
