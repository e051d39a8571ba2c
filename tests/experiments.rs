//! The shipped experiment suite composes and validates; a small experiment runs end to end and its
//! markdown, JSON and CSV agree; the runner, called directly, reports each cell.

use std::path::Path;

use assert_cmd::Command;
use xbench::config::sweep;
use xbench::experiment::{Experiment, ExperimentError, RunOptions, Sink};
use xbench::report::results::Results;

fn decode(b64: &str) -> hdrhistogram::Histogram<u64> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .unwrap()
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_shipped_experiment_composes_and_validates() {
    let conf = root().join("conf");
    let names = xbench::config::compose::options(&conf.join("experiment"));
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        let (_, cells) =
            sweep::expand(&conf, Some(&name), &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!cells.is_empty(), "{name}");
        for cell in &cells {
            let engine = xbench::engine::EngineConfig::from_config(&cell.config);
            assert!(!engine.models.is_empty(), "{name}");
        }
    }
}

#[test]
fn a_small_experiment_runs_end_to_end_and_its_files_agree() {
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_xbench"))
        .current_dir(root())
        .args([
            "run",
            "01_tokenizer_only",
            "tokenizer_pool.workers=1,2",
            "experiment.sweep={tokenizer_pool.parallelism: [false, true]}",
            "experiment.min_requests=12",
            "experiment.duration_s=0",
            "--repeats",
            "2",
            "--p99-budget-ms",
            "1000",
            "--output-dir",
        ])
        .arg(out.path())
        .assert()
        .success();
    let stdout = String::from_utf8(run.get_output().stdout.clone()).unwrap();
    let md = std::fs::read_to_string(out.path().join("01_tokenizer_only_results.md")).unwrap();
    assert_eq!(stdout.trim(), md.trim());
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("01_tokenizer_only_results.json")).unwrap(),
    )
    .unwrap();
    let csv = std::fs::read_to_string(out.path().join("01_tokenizer_only_results.csv")).unwrap();
    let cells = json["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 4);
    let csv_rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(csv_rows.len(), 4);
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let qps_col = header.iter().position(|h| *h == "qps").unwrap();
    let table_rows: Vec<&str> = md
        .lines()
        .filter(|l| l.contains(". Tokenizer Only"))
        .collect();
    assert_eq!(table_rows.len(), 4);
    for ((cell, csv_row), md_row) in cells.iter().zip(&csv_rows).zip(&table_rows) {
        let qps = cell["row"]["qps"].as_f64().unwrap();
        let csv_qps: f64 = csv_row.split(',').nth(qps_col).unwrap().parse().unwrap();
        assert!(
            (qps - csv_qps).abs() < 1e-3 * qps.max(1.0),
            "{qps} vs {csv_qps}"
        );
        // Two repeats: the row merges both (24 requests); the table gives mean ± sd of QPS.
        let reps = cell["repeats"].as_array().unwrap();
        assert_eq!(reps.len(), 2);
        let mean = (reps[0]["qps"].as_f64().unwrap() + reps[1]["qps"].as_f64().unwrap()) / 2.0;
        assert!(
            md_row.contains(&format!("| {mean:.1} ± ")),
            "{md_row} lacks {mean:.1} ±"
        );
        assert_eq!(cell["row"]["requests"], 24);
        // 24 requests are too few for p99: the table says so.
        assert!(md_row.contains("n/a (n=24)"), "{md_row}");
        // The merged histogram is in the JSON, and its percentiles are the row's.
        let hist = decode(cell["latency_histogram"].as_str().unwrap());
        assert_eq!(hist.len(), 24);
        let p50_ms = hist.value_at_quantile(0.5) as f64 / 1000.0;
        assert!((p50_ms - cell["row"]["latency_ms"]["p50"].as_f64().unwrap()).abs() < 1e-9);
    }
    assert_eq!(
        json["axes"],
        serde_json::json!([
            "tokenizer_pool.parallelism",
            "tokenizer_pool.workers",
            "pairs_per_request"
        ])
    );
    assert_eq!(json["provenance"]["experiment"], "01_tokenizer_only");
    assert!(json["provenance"]["models"][0][1].as_str().unwrap().len() == 64);
    assert!(md.contains("## Key insights"));
    let svg = std::fs::read_to_string(out.path().join("01_tokenizer_only_results.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
        "{}",
        &svg[..80.min(svg.len())]
    );
    // 4 p50 points and the two legend markers; no p99 points from 24 requests.
    assert_eq!(svg.matches("<circle").count(), 4 + 2);
    assert!(md.contains("No cell kept p99 within 1000 ms with at least 100 measured requests"));
}

/// Tests drive the runner as `xbench run` does: the sink sees the results after every cell (so an
/// interrupted sweep keeps what it measured) and once more at the end, and the progress callback
/// hears of each cell in order.
#[test]
fn the_runner_gives_its_sink_the_results_after_every_cell() {
    struct Counting(Vec<usize>);
    impl Sink for Counting {
        fn write(&mut self, results: &Results) -> Result<(), ExperimentError> {
            self.0.push(results.cells.len());
            Ok(())
        }
    }
    let experiment = Experiment::compose(
        &root().join("conf"),
        "01_tokenizer_only",
        &[
            "tokenizer_pool.workers=1,2".to_string(),
            "tokenizer_pool.parallelism=false".to_string(),
            "experiment.min_requests=4".to_string(),
            "experiment.duration_s=0".to_string(),
            "experiment.warmup=0".to_string(),
            format!(
                "workload.input={}",
                root().join("data/pairs.jsonl").display()
            ),
        ],
    )
    .unwrap();
    assert_eq!(experiment.cells.len(), 2);
    let mut sink = Counting(Vec::new());
    let mut seen = Vec::new();
    let results = experiment
        .run(&RunOptions::default(), &mut sink, &mut |done| {
            seen.push((done.index, done.total, done.row.requests))
        })
        .unwrap();
    assert_eq!(sink.0, [1, 2, 2]);
    assert_eq!(seen, [(0, 2, 4), (1, 2, 4)]);
    assert_eq!(results.cells.len(), 2);
    assert_eq!(results.cells[1].row.tokenizer_workers, Some(2));
    assert_eq!(results.provenance.experiment, "01_tokenizer_only");
}
