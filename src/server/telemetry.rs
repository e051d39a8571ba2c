//! Prometheus metrics: the `metrics` facade with its Prometheus exporter. The engine records its
//! batch metrics through the same facade; the server adds per-request metrics and sets the queue
//! gauges when scraped. Names follow Prometheus conventions (`xbench_*_total`, `*_seconds`).

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Every metric xbench exports (the dashboard test checks its queries against these).
pub const METRICS: &[(&str, &str)] = &[
    (
        "xbench_requests_total",
        "HTTP requests answered, by route and status",
    ),
    (
        "xbench_request_duration_seconds",
        "HTTP request latency, by route",
    ),
    ("xbench_requests_in_flight", "HTTP requests being handled"),
    ("xbench_pairs_total", "pairs scored, by model"),
    (
        "xbench_tokens_total",
        "tokens of the pairs scored (after truncation), by model",
    ),
    (
        "xbench_stage_duration_seconds",
        "time per request in each stage (tokenizer_queue, tokenize, batch_queue, inference), by model",
    ),
    ("xbench_batches_total", "forward passes, by model and instance"),
    (
        "xbench_batch_failures_total",
        "forward passes that failed, by model and instance",
    ),
    (
        "xbench_batch_size",
        "pairs per forward pass, by model and instance",
    ),
    (
        "xbench_batch_padding_efficiency",
        "real tokens / computed tokens per forward pass, by model and instance",
    ),
    (
        "xbench_batch_duration_seconds",
        "forward pass time, by model and instance",
    ),
    (
        "xbench_queue_depth",
        "requests waiting, by queue (tokenizer, batch) and model",
    ),
    ("xbench_ready", "1 when the models are loaded and warm"),
];

const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
const BATCH_SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
const FRACTIONS: &[f64] = &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0];

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// The process-wide Prometheus recorder, installed on first use (a process has one recorder).
pub fn handle() -> Result<PrometheusHandle, String> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full("xbench_batch_size".into()), BATCH_SIZES)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("xbench_batch_padding_efficiency".into()),
                        FRACTIONS,
                    )
                })
                .map_err(|e| e.to_string())?;
            let handle = builder.install_recorder().map_err(|e| e.to_string())?;
            for (name, help) in METRICS {
                describe(name, help);
            }
            // Histogram samples wait in buffers until drained: drain them even when nobody scrapes.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                })
                .map_err(|e| e.to_string())?;
            Ok(handle)
        })
        .clone()
}

fn describe(name: &'static str, help: &'static str) {
    if name.ends_with("_total") {
        metrics::describe_counter!(name, help);
    } else if name.ends_with("_seconds")
        || name == "xbench_batch_size"
        || name == "xbench_batch_padding_efficiency"
    {
        metrics::describe_histogram!(name, help);
    } else {
        metrics::describe_gauge!(name, help);
    }
}
