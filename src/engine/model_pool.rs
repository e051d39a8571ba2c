//! The model pool of one model: its batcher thread and M worker threads (model instances). They share one
//! backend (one copy of the weights serves every instance); each instance runs its forward passes
//! on the executor its backend gives it for `threads` compute threads (a CPU backend's own pool),
//! so the workers × threads split of the cores is what actually runs.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use super::batcher::{self, BatchingConfig, Pending, Work};
use super::{BatchCounters, EngineError};
use crate::backend::{Backend, BackendError};

pub(crate) struct ModelPool {
    threads: Vec<JoinHandle<()>>,
}

impl ModelPool {
    pub fn start(
        name: &str,
        backend: Arc<dyn Backend>,
        workers: usize,
        threads: usize,
        queue: crossbeam_channel::Receiver<Pending>,
        config: BatchingConfig,
        counters: Arc<BatchCounters>,
    ) -> Self {
        // The batcher hands a batch over only to a free instance (idle tokens below), so this
        // channel never holds more than one batch per instance; meanwhile the next batch keeps
        // filling in the batcher.
        let (work_tx, work_rx) = crossbeam_channel::bounded::<Work>(workers);
        // One token per free instance: the batcher cuts a batch only when one can take it.
        let (idle_tx, idle_rx) = crossbeam_channel::bounded::<()>(workers);
        let padded = backend.is_padded();
        let mut handles = Vec::with_capacity(workers + 1);
        handles.push(
            std::thread::Builder::new()
                .name(format!("batcher-{}", short(name)))
                .spawn(move || batcher::run(queue, work_tx, idle_rx, config, padded, counters))
                .expect("spawning the batcher thread failed. This is a bug."),
        );
        for i in 0..workers {
            let rx = work_rx.clone();
            let idle = idle_tx.clone();
            let backend = backend.clone();
            let model = name.to_string();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("model-{}-{i}", short(name)))
                    .spawn(move || run_instance(&model, i, backend, threads, rx, idle))
                    .expect("spawning a model instance thread failed. This is a bug."),
            );
        }
        Self { threads: handles }
    }
}

impl Drop for ModelPool {
    fn drop(&mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn short(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

fn run_instance(
    model: &str,
    index: usize,
    backend: Arc<dyn Backend>,
    threads: usize,
    work: crossbeam_channel::Receiver<Work>,
    idle: crossbeam_channel::Sender<()>,
) {
    let executor = backend.executor(model, index, threads);
    let labels = [
        ("model", model.to_string()),
        ("instance", index.to_string()),
    ];
    let batches = metrics::counter!("xbench_batches_total", &labels);
    let failures = metrics::counter!("xbench_batch_failures_total", &labels);
    let sizes = metrics::histogram!("xbench_batch_size", &labels);
    let efficiency = metrics::histogram!("xbench_batch_padding_efficiency", &labels);
    let durations = metrics::histogram!("xbench_batch_duration_seconds", &labels);
    let padded = backend.is_padded();
    let logits_per_pair = backend.labels().max(1);
    // Free: ask for work. (The batcher may have stopped; then the loop below ends too.)
    let _ = idle.send(());
    while let Ok(Work { batch, segments }) = work.recv() {
        let computed = if padded {
            batch.pairs() * batch.max_length
        } else {
            batch.total_tokens()
        };
        batches.increment(1);
        sizes.record(batch.pairs() as f64);
        if computed > 0 {
            efficiency.record(batch.total_tokens() as f64 / computed as f64);
        }
        let started = Instant::now();
        let predict = || {
            std::panic::catch_unwind(AssertUnwindSafe(|| backend.predict(&batch))).unwrap_or_else(
                |panic| {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".to_string());
                    Err(BackendError::Panic(what))
                },
            )
        };
        let result = executor.run(predict);
        let elapsed = started.elapsed();
        durations.record(elapsed.as_secs_f64());
        let expected = batch.pairs() * logits_per_pair;
        if !matches!(&result, Ok(logits) if logits.len() == expected) {
            failures.increment(1);
        }
        match result {
            Ok(logits) if logits.len() == expected => {
                let mut offset = 0;
                for s in segments {
                    let rows = offset * logits_per_pair..(offset + s.len) * logits_per_pair;
                    s.state.complete(s.start, &logits[rows], elapsed);
                    offset += s.len;
                }
            }
            Ok(logits) => {
                let error = BackendError::Shape {
                    got: logits.len(),
                    pairs: batch.pairs(),
                    labels: logits_per_pair,
                };
                tracing::error!(model, index, %error, "batch failed");
                for s in segments {
                    s.state.fail(EngineError::Backend(error.clone()));
                }
            }
            Err(error) => {
                tracing::error!(
                    model,
                    index,
                    error = crate::error_chain(&error),
                    "batch failed"
                );
                for s in segments {
                    s.state.fail(EngineError::Backend(error.clone()));
                }
            }
        }
        let _ = idle.send(());
    }
}
