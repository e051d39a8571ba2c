//! The tokenizer pool: T worker threads, each owning its own copy of every model's tokenizer
//! (cloned once at start), fed by one bounded channel; replies go back on oneshot channels.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{EngineError, RerankInput, Tokenized};
pub use crate::config::settings::TokenizerPoolConfig;
use crate::tokenize::{PairTokenizer, TokenizeError};

struct Job {
    model: usize,
    input: Arc<RerankInput>,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Tokenized, EngineError>>,
}

pub(crate) struct TokenizerPool {
    jobs: Option<crossbeam_channel::Sender<Job>>,
    capacity: usize,
    workers: Vec<JoinHandle<()>>,
}

impl TokenizerPool {
    pub fn start(config: &TokenizerPoolConfig, tokenizers: Vec<PairTokenizer>) -> Self {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(config.queue_capacity);
        let workers = (0..config.workers)
            .map(|i| {
                let rx = rx.clone();
                let tokenizers = tokenizers.clone();
                let parallel = config.parallelism;
                std::thread::Builder::new()
                    .name(format!("tokenizer-{i}"))
                    .spawn(move || work(rx, tokenizers, parallel))
                    .expect("spawning a tokenizer thread failed. This is a bug.")
            })
            .collect();
        Self {
            jobs: Some(tx),
            capacity: config.queue_capacity,
            workers,
        }
    }

    /// Requests waiting for a worker.
    pub fn depth(&self) -> usize {
        self.jobs.as_ref().map_or(0, |j| j.len())
    }

    pub async fn submit(
        &self,
        model: usize,
        input: Arc<RerankInput>,
    ) -> Result<Tokenized, EngineError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            model,
            input,
            enqueued: Instant::now(),
            reply,
        };
        let jobs = self.jobs.as_ref().ok_or(EngineError::Shutdown)?;
        jobs.try_send(job).map_err(|e| match e {
            crossbeam_channel::TrySendError::Full(_) => EngineError::Overloaded {
                queue: "tokenizer",
                capacity: self.capacity,
            },
            crossbeam_channel::TrySendError::Disconnected(_) => EngineError::Shutdown,
        })?;
        rx.await.map_err(|_| EngineError::Shutdown)?
    }
}

impl Drop for TokenizerPool {
    fn drop(&mut self) {
        self.jobs.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn work(jobs: crossbeam_channel::Receiver<Job>, tokenizers: Vec<PairTokenizer>, parallel: bool) {
    while let Ok(job) = jobs.recv() {
        if job.reply.is_closed() {
            continue; // the caller has gone: nothing to compute
        }
        let started = Instant::now();
        let queue: Duration = started - job.enqueued;
        let input = &job.input;
        // A panic inside the tokenizer fails this request only; the worker goes on serving.
        let encode = || {
            #[cfg(test)]
            if input.query == tests::PANIC_QUERY {
                panic!("injected tokenizer panic");
            }
            tokenizers[job.model].encode_passages(
                &input.query,
                &input.passages,
                parallel,
                &input.options,
            )
        };
        let encoded = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(encode)) {
            Ok(result) => result,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_string());
                tracing::error!(panic = %what, "tokenizer panicked; the request fails, the worker goes on");
                let _ = job.reply.send(Err(EngineError::Tokenize(format!(
                    "the tokenizer panicked: {what}"
                ))));
                continue;
            }
        };
        let result = encoded
            .map(|encoded| Tokenized {
                encoded: encoded.pairs,
                windows: encoded.windows,
                queue,
                tokenize: started.elapsed(),
            })
            .map_err(|e| match e {
                TokenizeError::TooLong {
                    index,
                    tokens,
                    max_length,
                } => EngineError::TooLong {
                    index,
                    tokens,
                    max_length,
                },
                TokenizeError::Unsupported(what) => EngineError::Unsupported(what),
                e => EngineError::Tokenize(e.to_string()),
            });
        let _ = job.reply.send(result);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    /// A query that makes a tokenizer worker panic in unit tests (fault injection).
    pub(crate) const PANIC_QUERY: &str = "\u{0}inject a tokenizer panic";
}
