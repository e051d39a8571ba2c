//! `xbench score` driven as a user drives it: output format and order, atomic output files, the
//! Hugging Face cache path, and one-line errors for bad input.

use std::path::Path;

mod support;

use assert_cmd::Command;
use xbench::score::{sigmoid, Pair, Scorer};
use xbench::testing::TinyBert;

fn xbench() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xbench"));
    cmd.env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_ENDPOINT")
        .env_remove("RUST_LOG");
    cmd
}

const INPUT: &str = concat!(
    "{\"query\": \"what is rust\", \"passage\": \"rust is a language\"}\n",
    "{\"query\": \"how to cook steak\", \"document\": \"rest the steak\", \"id\": 3}\n",
    "{\"query\": \"capital of france\", \"text\": \"paris is the capital\"}\n",
    "{\"query\": \"bread\", \"passage\": \"\"}\n",
    "{\"query\": \"the river\", \"passage\": \"the city of paris and the river\"}\n",
);

fn expected(model: &Path) -> Vec<f32> {
    let scorer = Scorer::load_default(model.to_str().unwrap(), None).unwrap();
    let pairs = [
        Pair::new("what is rust", "rust is a language"),
        Pair::new("how to cook steak", "rest the steak"),
        Pair::new("capital of france", "paris is the capital"),
        Pair::new("bread", ""),
        Pair::new("the river", "the city of paris and the river"),
    ];
    scorer.score(&pairs, 1).unwrap()
}

fn parse_output(text: &str) -> Vec<(f32, f32)> {
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let obj = v.as_object().unwrap();
            assert_eq!(obj.len(), 2, "{l}");
            (
                v["score"].as_f64().unwrap() as f32,
                v["relevance"].as_f64().unwrap() as f32,
            )
        })
        .collect()
}

fn model_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    TinyBert::default().write(dir.path()).unwrap();
    dir
}

#[test]
fn scores_every_line_in_input_order() {
    let model = model_dir();
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("pairs.jsonl");
    std::fs::write(&input, INPUT).unwrap();
    let out = xbench()
        .args(["score", "--model"])
        .arg(model.path())
        .arg("--input")
        .arg(&input)
        .args(["--batch-size", "2"])
        .assert()
        .success();
    let lines = parse_output(&String::from_utf8(out.get_output().stdout.clone()).unwrap());
    let want = expected(model.path());
    assert_eq!(lines.len(), want.len());
    for ((score, relevance), w) in lines.iter().zip(&want) {
        assert!((score - w).abs() <= 1e-5, "{score} vs {w}");
        assert!((relevance - sigmoid(*score)).abs() <= 1e-6);
    }
    // stdin works too.
    let out = xbench()
        .args(["score", "--input", "-", "--model"])
        .arg(model.path())
        .write_stdin(INPUT)
        .assert()
        .success();
    assert_eq!(
        parse_output(&String::from_utf8(out.get_output().stdout.clone()).unwrap()).len(),
        5
    );
}

#[test]
fn output_file_is_written_whole_or_not_at_all() {
    let model = model_dir();
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("pairs.jsonl");
    let output = work.path().join("scores.jsonl");
    std::fs::write(&input, INPUT).unwrap();
    xbench()
        .args(["score", "--model"])
        .arg(model.path())
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .assert()
        .success()
        .stdout("");
    assert_eq!(
        parse_output(&std::fs::read_to_string(&output).unwrap()).len(),
        5
    );

    std::fs::write(&output, "previous results\n").unwrap();
    std::fs::write(&input, format!("{INPUT}{{\"query\": \"q\"}}\n")).unwrap();
    xbench()
        .args(["score", "--model"])
        .arg(model.path())
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .assert()
        .failure()
        .stderr(predicates::str::contains("line 6: missing the passage"));
    assert_eq!(
        std::fs::read_to_string(&output).unwrap(),
        "previous results\n"
    );
    let names: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        names.len(),
        2,
        "no temporary file is left behind: {names:?}"
    );
}

/// Runs `xbench score` expecting failure; returns stderr, checked to be a single `Error:` line.
fn one_line_error(model: &str, input: &str) -> String {
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("pairs.jsonl");
    std::fs::write(&path, input).unwrap();
    let out = xbench()
        .args(["score", "--model", model, "--input"])
        .arg(&path)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", work.path())
        .assert()
        .failure()
        .code(1);
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("Error: "), "{stderr}");
    assert!(out.get_output().stdout.is_empty());
    stderr
}

#[test]
fn bad_input_gets_one_line_that_names_the_problem() {
    let model = model_dir();
    let m = model.path().to_str().unwrap();
    let ok = "{\"query\": \"q\", \"passage\": \"p\"}\n";

    let e = one_line_error("/nonexistent/xbench-model", ok);
    assert!(
        e.contains("'/nonexistent/xbench-model' does not exist"),
        "{e}"
    );

    let empty = tempfile::tempdir().unwrap();
    let e = one_line_error(empty.path().to_str().unwrap(), ok);
    assert!(e.contains("has no config.json"), "{e}");

    let embedder = tempfile::tempdir().unwrap();
    TinyBert::default().write(embedder.path()).unwrap();
    let config = embedder.path().join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("BertForSequenceClassification", "BertModel"),
    )
    .unwrap();
    let e = one_line_error(embedder.path().to_str().unwrap(), ok);
    assert!(
        e.contains("unsupported architecture BertModel; supported: BertForSequenceClassification"),
        "{e}"
    );

    let e = one_line_error(m, &format!("{ok}{{\"query\": \"q\", \"passage\": }}\n"));
    assert!(e.contains("line 2: not valid JSON"), "{e}");

    let e = one_line_error(m, "{\"passage\": \"p\"}\n");
    assert!(e.contains("line 1: missing \"query\""), "{e}");

    let out = xbench()
        .args(["score", "--model", m, "--input", "/nonexistent/pairs.jsonl"])
        .assert()
        .failure();
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(
        stderr.contains("cannot open input /nonexistent/pairs.jsonl"),
        "{stderr}"
    );
}

/// Every registered family's tiny checkpoint loads from a hub id through a pre-filled cache, offline,
/// and scores as it does from its directory.
#[test]
fn every_family_loads_from_a_hub_id() {
    let hf_home = tempfile::tempdir().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    for family in xbench::model::family::REGISTRY {
        for name in family.tiny_checkpoints {
            fill_hub_cache(
                hf_home.path(),
                &format!("models--xbench-test--{name}"),
                &data.join(name),
            );
            let score = |model: &str| {
                let out = xbench()
                    .args(["score", "--model", model, "--input", "-"])
                    .env("HF_HOME", hf_home.path())
                    .env("HF_HUB_OFFLINE", "1")
                    .write_stdin(INPUT)
                    .assert()
                    .success();
                String::from_utf8(out.get_output().stdout.clone()).unwrap()
            };
            let from_hub = score(&format!("xbench-test/{name}"));
            assert_eq!(
                parse_output(&from_hub).len(),
                INPUT.lines().count(),
                "{name}"
            );
            assert_eq!(from_hub, score(data.join(name).to_str().unwrap()), "{name}");
        }
    }
}

/// Lays `model` out as the HF cache does: blobs, a snapshot of symlinks, and refs/main.
fn fill_hub_cache(hf_home: &Path, repo_folder: &str, model: &Path) {
    let repo = hf_home.join("hub").join(repo_folder);
    let revision = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo.join("snapshots").join(revision);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    for (i, entry) in std::fs::read_dir(model).unwrap().enumerate() {
        let entry = entry.unwrap();
        let blob = repo.join("blobs").join(format!("blob{i}"));
        std::fs::copy(entry.path(), &blob).unwrap();
        std::os::unix::fs::symlink(
            Path::new("../../blobs").join(format!("blob{i}")),
            snapshot.join(entry.file_name()),
        )
        .unwrap();
    }
    std::fs::write(repo.join("refs").join("main"), revision).unwrap();
}

#[test]
fn a_hub_id_loads_from_the_hf_cache_offline() {
    let model = model_dir();
    let hf_home = tempfile::tempdir().unwrap();
    fill_hub_cache(
        hf_home.path(),
        "models--xbench-test--tiny-reranker",
        model.path(),
    );
    let out = xbench()
        .args([
            "score",
            "--model",
            "xbench-test/tiny-reranker",
            "--input",
            "-",
        ])
        .env("HF_HOME", hf_home.path())
        .env("HF_HUB_OFFLINE", "1")
        .write_stdin(INPUT)
        .assert()
        .success();
    let lines = parse_output(&String::from_utf8(out.get_output().stdout.clone()).unwrap());
    let want = expected(model.path());
    for ((score, _), w) in lines.iter().zip(&want) {
        assert!((score - w).abs() <= 1e-5, "{score} vs {w}");
    }
    assert_eq!(lines.len(), want.len());

    // Offline and not cached: the error says so and how to get out of it.
    let out = xbench()
        .args(["score", "--model", "xbench-test/absent", "--input", "-"])
        .env("HF_HOME", hf_home.path())
        .env("HF_HUB_OFFLINE", "1")
        .write_stdin(INPUT)
        .assert()
        .failure();
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(
        stderr.contains("model 'xbench-test/absent' is not in the Hugging Face cache"),
        "{stderr}"
    );
    assert!(stderr.contains("HF_HUB_OFFLINE is set"), "{stderr}");
}

#[test]
fn a_failed_download_names_the_model_and_the_way_out() {
    let hf_home = tempfile::tempdir().unwrap();
    // Nothing listens on port 1 of the loopback: the connection is refused at once.
    let out = xbench()
        .args(["score", "--model", "xbench-test/absent", "--input", "-"])
        .env("HF_HOME", hf_home.path())
        .env("HF_ENDPOINT", "http://127.0.0.1:1")
        .write_stdin(INPUT)
        .timeout(std::time::Duration::from_secs(60))
        .assert()
        .failure();
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(
        stderr.contains("could not download config.json of model 'xbench-test/absent'"),
        "{stderr}"
    );
    assert!(stderr.contains("pass its directory instead"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

/// The fused kernels give the same scores at every SIMD level this CPU has (`XBENCH_SIMD` lowers
/// the level; portable is plain Rust), and the same as candle's ops, on the demo model's shapes.
#[test]
fn every_simd_level_and_both_backends_score_alike() {
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("pairs.jsonl");
    let lines: String = support::sample(24)
        .iter()
        .map(|p| serde_json::json!({"query": p.query, "passage": p.passage}).to_string() + "\n")
        .collect();
    std::fs::write(&input, lines).unwrap();
    let model = support::demo();
    let run_with = |simd: Option<&str>, kernels: &str, quantization: &str| {
        let mut cmd = xbench();
        if let Some(level) = simd {
            cmd.env("XBENCH_SIMD", level);
        }
        let out = cmd
            .args([
                "score",
                "--model",
                &model,
                "--backend",
                kernels,
                "--batch-size",
                "8",
                "--quantization",
                quantization,
            ])
            .arg("--input")
            .arg(&input)
            .assert()
            .success();
        parse_output(&String::from_utf8(out.get_output().stdout.clone()).unwrap())
    };
    let run = |simd: Option<&str>, kernels: &str| run_with(simd, kernels, "fp32");
    let best = run(None, "fused");
    assert_eq!(best.len(), 24);
    for (simd, kernels) in [
        (Some("avx2"), "fused"),
        (Some("portable"), "fused"),
        (None, "candle"),
    ] {
        let other = run(simd, kernels);
        for (i, (a, b)) in best.iter().zip(&other).enumerate() {
            assert!(
                (a.0 - b.0).abs() <= 1e-5,
                "pair {i}: {simd:?} {kernels}: {} vs best {}",
                b.0,
                a.0
            );
        }
    }
    // Every other precision at every level, within its tolerance of fp32 (tests/parity.rs) and
    // of its own scores at the best level. int8's kernels compute the same integers at every
    // level, but the f32 kernels around them (and the fp32 calibration pass that sets the
    // smoothing at load) differ in the last bits between levels, which moves values across
    // rounding steps: its scores move between levels as much as they differ from fp32. The half
    // types' kernels differ only in the order of their roundings.
    for (quantization, from_fp32, across_levels) in [
        ("int8", 0.35, 0.35),
        ("bf16", 0.1, 0.05),
        ("fp16", 0.02, 0.01),
    ] {
        let at_best = run_with(None, "fused", quantization);
        for simd in [None, Some("avx2"), Some("portable")] {
            let scores = run_with(simd, "fused", quantization);
            for (i, ((fp32, best), got)) in best.iter().zip(&at_best).zip(&scores).enumerate() {
                assert!(
                    (fp32.0 - got.0).abs() <= from_fp32,
                    "pair {i}: {quantization} {simd:?} {} vs fp32 {}",
                    got.0,
                    fp32.0
                );
                assert!(
                    (best.0 - got.0).abs() <= across_levels,
                    "pair {i}: {quantization} {simd:?} {} vs the best level's {}",
                    got.0,
                    best.0
                );
            }
        }
    }
}

/// `xbench accuracy` scores the pairs at fp32 and, by default, fp16, bf16, int8 and int4, and reports
/// the differences: the fp32 row against itself is exact, the others stay close (the tolerances of
/// tests/parity.rs).
#[test]
fn accuracy_reports_what_each_precision_does_to_scores_and_rankings() {
    let out = xbench()
        .args([
            "accuracy",
            "--model",
            &support::demo(),
            "--limit",
            "48",
            "--json",
        ])
        .assert()
        .success();
    let report: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(report["pairs"], 48);
    assert_eq!(
        report["queries"], 6,
        "data/pairs.jsonl has 8 passages per query"
    );
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows[0]["precision"], "fp32");
    assert_eq!(rows[0]["max_abs_diff"], 0.0);
    assert_eq!(rows[0]["ndcg_at_10"], 1.0);
    assert_eq!(rows.len(), 5);
    for (row, (name, tolerance)) in rows[1..].iter().zip([
        ("fp16", 0.01),
        ("bf16", 0.05),
        ("int8", 0.35),
        ("int4", 2.0),
    ]) {
        assert_eq!(row["precision"], name);
        let diff = row["max_abs_diff"].as_f64().unwrap();
        assert!(diff > 0.0 && diff <= tolerance, "{report}");
        assert!(row["spearman"].as_f64().unwrap() >= 0.95, "{report}");
        assert!(row["ndcg_at_10"].as_f64().unwrap() >= 0.85, "{report}");
        assert!(row["pairs_per_s"].as_f64().unwrap() > 0.0);
    }
}

/// `experiment.accuracy_pairs` adds each cell's accuracy against fp32 to the results: exact for
/// the fp32 cell, within int8's tolerance for the int8 cell.
#[test]
fn run_records_each_cells_accuracy() {
    let out = tempfile::tempdir().unwrap();
    xbench()
        .args([
            "run",
            "07_precision",
            "experiment.min_requests=2",
            "experiment.duration_s=0",
            "experiment.batch_sizes=[8]",
        ])
        .args(["experiment.warmup=1", "experiment.accuracy_pairs=16"])
        .arg("--output-dir")
        .arg(out.path())
        .assert()
        .success();
    let text = std::fs::read_to_string(out.path().join("07_precision_results.json")).unwrap();
    let results: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cells = results["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 5, "fp32, fp16, bf16, int8, int4");
    assert_eq!(cells[0]["accuracy"]["pairs"], 16);
    assert_eq!(cells[0]["accuracy"]["max_abs_diff"], 0.0);
    // The tolerances of tests/parity.rs.
    for (cell, tolerance) in cells[1..].iter().zip([0.01, 0.05, 0.35, 2.0]) {
        let diff = cell["accuracy"]["max_abs_diff"].as_f64().unwrap();
        assert!(diff > 0.0 && diff <= tolerance, "{}", cell["accuracy"]);
    }
}

/// `xbench bench` is a one-cell experiment: its flags are validated as the config keys they set,
/// and an error names both the flag and the key.
#[test]
fn bench_flags_are_checked_as_their_config_keys() {
    for (args, want) in [
        (
            &["--concurrency", "0"][..],
            "--concurrency (config key experiment.concurrency_levels): list client counts of at least 1",
        ),
        (
            &["--duration", "30", "--max-duration", "10"],
            "--max-duration (config key experiment.max_duration_s): the hard cap (10 s) is shorter",
        ),
        (
            &["--backend", "candle", "--quantization", "int8"],
            "--quantization (config key model_pool.instances[0].quantization): int8 runs on backend fused",
        ),
        (
            &["--rate=-1"],
            "--rate (config key experiment.rate): must be a positive number",
        ),
    ] {
        let out = xbench()
            .arg("bench")
            .args(args)
            .assert()
            .failure()
            .code(1);
        let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}

/// `xbench kernels` names the level and each precision's kernel; `XBENCH_SIMD=portable` moves every
/// kernel xbench writes to its portable loops (fp32 stays the gemm crate's, which picks its own).
#[test]
fn kernels_names_what_each_precision_runs_at_each_level() {
    let at = |level: Option<&str>| {
        let mut cmd = xbench();
        if let Some(level) = level {
            cmd.env("XBENCH_SIMD", level);
        }
        let out = cmd.args(["kernels", "--json"]).assert().success();
        serde_json::from_slice::<serde_json::Value>(&out.get_output().stdout).unwrap()
    };
    let best = at(None);
    let products = best["products"].as_object().unwrap();
    let names: Vec<&str> = products.keys().map(String::as_str).collect();
    assert_eq!(names.len(), 5, "{best}");
    for p in ["fp32", "fp16", "bf16", "int8", "int4"] {
        assert!(products.contains_key(p), "{best}");
    }
    assert_eq!(best["simd"], xbench::kernels::simd().name());
    let portable = at(Some("portable"));
    assert_eq!(portable["simd"], "portable");
    for p in ["fp16", "bf16", "int8", "int4"] {
        assert_eq!(portable["products"][p], "portable", "{portable}");
    }
    if best["simd"] != "portable" {
        let avx2 = at(Some("avx2"));
        assert_eq!(avx2["products"]["int8"], "avx2-vpmaddwd", "{avx2}");
        assert_eq!(avx2["products"]["int4"], "avx2-vpmaddwd", "{avx2}");
        assert_eq!(avx2["products"]["bf16"], "avx2-widen", "{avx2}");
        assert_eq!(avx2["products"]["fp16"], "avx2-widen", "{avx2}");
    }
}
