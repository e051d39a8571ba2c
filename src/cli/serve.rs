//! `xbench serve`: the HTTP server, configured by the same composition as the sweeps, or by the
//! best cell of a results file.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use serde_json::Value;

use super::run::{parse_overrides, split_experiment};
use crate::config::{compose, tree, Override, XbenchConfig};
use crate::engine::EngineConfig;
use crate::report::results::MIN_SAMPLES_P99;
use crate::server::{Server, REDACTED};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// An experiment of conf/experiment/ whose config to serve (optional), then Hydra-style
    /// overrides (key=value, group=option, ...).
    pub args: Vec<String>,
    /// Bind address (server.host).
    #[arg(long)]
    pub host: Option<String>,
    /// Port (server.port); 0 picks a free one.
    #[arg(long)]
    pub port: Option<u16>,
    /// Require `Authorization: Bearer KEY` on every route but /health and /live (server.api_key).
    #[arg(long, env = "XBENCH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Another name requests may give for the (first) model, as vLLM's --served-model-name;
    /// repeat for more (model_pool.instances[].served_model_names).
    #[arg(long = "served-model-name", value_name = "NAME")]
    pub served_model_names: Vec<String>,
    /// With one model served, send a request naming an unknown model to it instead of answering
    /// 404 (server.ignore_unknown_model), as a TEI client expects.
    #[arg(long)]
    pub ignore_unknown_model: bool,
    /// Serve the best cell of a results JSON file (xbench run's NAME_results.json): the most QPS
    /// whose p99 is within the budget, or the most QPS when there is no budget.
    #[arg(long)]
    pub from_results: Option<PathBuf>,
    /// The p99 budget for --from-results, ms (default: the one the file was run with).
    #[arg(long, requires = "from_results")]
    pub p99_budget_ms: Option<f64>,
    /// The config folder.
    #[arg(long, default_value = "conf")]
    pub conf: PathBuf,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = resolve(&args)?;
    if let Some(h) = &args.host {
        config.server.host = h.clone();
    }
    if let Some(p) = args.port {
        config.server.port = p;
    }
    if let Some(k) = &args.api_key {
        config.server.api_key = Some(k.clone());
    }
    if args.ignore_unknown_model {
        config.server.ignore_unknown_model = true;
    }
    if !args.served_model_names.is_empty() {
        // Every entry of the first model (entries of one model must agree).
        if let Some(first) = config.model_pool.instances.first().map(|m| m.name.clone()) {
            for m in &mut config.model_pool.instances {
                if m.name == first {
                    m.served_model_names = args.served_model_names.clone();
                }
            }
        }
    }
    config.validate()?;
    let engine = EngineConfig::from_config(&config);
    let mut shown = config.clone();
    shown.server = shown.server.redacted();
    shown.experiment = Default::default();
    tracing::info!(
        "resolved config:\n{}",
        serde_yaml_ng::to_string(&shown).context("cannot print the config")?
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores.clamp(1, 4))
        .thread_name("http")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let server = Server::bind(config.server.clone(), engine).await?;
        let addr = server.local_addr()?;
        tracing::info!(%addr, "listening on http://{addr} (ready once /health says ok)");
        server.run(shutdown_signal()).await?;
        Ok(())
    })
}

/// SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// The config to serve: an experiment's composition with overrides, or a results file's best cell
/// with overrides on top.
fn resolve(args: &ServeArgs) -> anyhow::Result<XbenchConfig> {
    let (name, overrides) = split_experiment(&args.args);
    let overrides = parse_overrides(&overrides)?;
    if let Some(file) = &args.from_results {
        anyhow::ensure!(
            name.is_none(),
            "give an experiment or --from-results, not both"
        );
        let (mut chosen, why) = best_cell(file, args.p99_budget_ms)?;
        tracing::info!(file = %file.display(), "{why}");
        for o in &overrides {
            tree::apply(&mut chosen, o)?;
        }
        let config = XbenchConfig::from_tree(&chosen)?;
        anyhow::ensure!(
            config.server.api_key.as_deref() != Some(REDACTED) || args.api_key.is_some(),
            "the chosen cell's server had an API key, which results files never store: give it \
             with --api-key or XBENCH_API_KEY (or server.api_key=null to serve without one)"
        );
        return Ok(config);
    }
    let mut all = overrides;
    if let Some(name) = &name {
        all.insert(0, Override::parse(&format!("+experiment={name}"))?);
    }
    let composed = compose(&args.conf, "config", &all)?;
    Ok(XbenchConfig::from_composed(&composed)?)
}

/// The config tree of a results file's best cell, and a line saying why it is the best.
pub fn best_cell(file: &Path, budget: Option<f64>) -> anyhow::Result<(Value, String)> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the results file {}", file.display()))?;
    let results: Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not JSON; pass the NAME_results.json that xbench run wrote",
            file.display()
        )
    })?;
    let cells = results["cells"].as_array().with_context(|| {
        format!(
            "{} has no 'cells': pass the NAME_results.json that xbench run wrote",
            file.display()
        )
    })?;
    let budget = budget.or_else(|| results["p99_budget_ms"].as_f64());
    let figures = |c: &Value| {
        let row = &c["row"];
        (
            row["qps"].as_f64().unwrap_or(0.0),
            row["latency_ms"]["p99"].as_f64().unwrap_or(f64::INFINITY),
            row["requests"].as_u64().unwrap_or(0),
        )
    };
    let candidates = cells.iter().enumerate().filter(|(_, c)| {
        let (qps, p99, n) = figures(c);
        qps > 0.0
            && match budget {
                Some(b) => n >= MIN_SAMPLES_P99 && p99 <= b,
                None => true,
            }
    });
    let best = candidates.max_by(|a, b| figures(a.1).0.total_cmp(&figures(b.1).0));
    let Some((i, cell)) = best else {
        anyhow::bail!(match budget {
            Some(b) => format!(
                "no cell of {} kept p99 within {b} ms with at least {MIN_SAMPLES_P99} measured requests; raise --p99-budget-ms or run longer cells",
                file.display()
            ),
            None => format!("{} has no cell with a measured throughput", file.display()),
        });
    };
    let (qps, p99, n) = figures(cell);
    let why = match budget {
        Some(b) => format!(
            "serving cell {} of {}: {qps:.1} pairs/s, p99 {p99:.1} ms within the {b} ms budget ({n} requests)",
            i + 1,
            cells.len()
        ),
        None => format!(
            "serving cell {} of {}: the most throughput, {qps:.1} pairs/s (no p99 budget given)",
            i + 1,
            cells.len()
        ),
    };
    let mut config = cell
        .get("config")
        .cloned()
        .with_context(|| format!("cell {} of {} has no 'config'", i + 1, file.display()))?;
    upgrade_kernels(&mut config);
    Ok((config, why))
}

/// Results files written before `backend` replaced `kernels` name the computation in
/// `model_pool.instances[].kernels` (with `backend: candle` meaning only the library): read
/// their `kernels` value as the backend.
fn upgrade_kernels(config: &mut Value) {
    let Some(instances) = config
        .pointer_mut("/model_pool/instances")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for entry in instances.iter_mut().filter_map(Value::as_object_mut) {
        if let Some(kernels) = entry.remove("kernels") {
            entry.insert("backend".to_string(), kernels);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn old_results_read_kernels_as_the_backend() {
        let mut config = serde_json::json!({"model_pool": {"instances": [
            {"name": "m", "backend": "candle", "kernels": "fused"},
            {"name": "n", "backend": "candle", "kernels": "candle"},
            {"name": "o", "backend": "fused"},
        ]}});
        super::upgrade_kernels(&mut config);
        assert_eq!(
            config,
            serde_json::json!({"model_pool": {"instances": [
                {"name": "m", "backend": "fused"},
                {"name": "n", "backend": "candle"},
                {"name": "o", "backend": "fused"},
            ]}})
        );
    }

    use super::*;
    use serde_json::json;

    fn cell(qps: f64, p99: f64, requests: u64, port: u64) -> Value {
        json!({"row": {"qps": qps, "latency_ms": {"p99": p99}, "requests": requests},
               "config": {"server": {"port": port}}})
    }

    #[test]
    fn the_best_cell_is_the_most_qps_within_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x_results.json");
        let results = json!({"p99_budget_ms": 500.0, "cells": [
            cell(10.0, 400.0, 200, 1),   // within budget
            cell(30.0, 900.0, 200, 2),   // fastest, over budget
            cell(20.0, 450.0, 200, 3),   // best within budget
            cell(25.0, 100.0, 50, 4),    // too few requests for p99
        ]});
        std::fs::write(&file, results.to_string()).unwrap();
        let (config, why) = best_cell(&file, None).unwrap();
        assert_eq!(config["server"]["port"], 3);
        assert!(
            why.contains("cell 3 of 4") && why.contains("500 ms budget"),
            "{why}"
        );
        let (config, _) = best_cell(&file, Some(1000.0)).unwrap();
        assert_eq!(config["server"]["port"], 2);
        let err = best_cell(&file, Some(50.0)).unwrap_err().to_string();
        assert!(
            err.contains("no cell") && err.contains("--p99-budget-ms"),
            "{err}"
        );
        std::fs::write(
            &file,
            json!({"cells": [cell(10.0, 1.0, 5, 1), cell(12.0, 1.0, 5, 2)]}).to_string(),
        )
        .unwrap();
        let (config, why) = best_cell(&file, None).unwrap();
        assert_eq!(config["server"]["port"], 2);
        assert!(why.contains("no p99 budget"), "{why}");
        std::fs::write(&file, "[]").unwrap();
        let err = best_cell(&file, None).unwrap_err().to_string();
        assert!(err.contains("no 'cells'"), "{err}");
    }
}
