//! The dynamic batcher: one thread per model takes requests from a bounded queue and cuts packed
//! batches of at most `max_batch_size` pairs and `max_batch_tokens` tokens (counted as the backend
//! computes them), waiting at most `timeout_ms` after the oldest waiting pair arrived. A request
//! larger than a batch is split across batches; its scores are reassembled in order. Requests whose
//! caller has gone are dropped before they are computed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{BatchCounters, EngineError};
use crate::batch::Batch;
pub use crate::config::settings::BatchingConfig;
use crate::tokenize::Encoded;

impl BatchingConfig {
    fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_ms / 1000.0)
    }
}

/// What the model pool sends back for one request.
#[derive(Debug)]
pub(crate) struct InferOutput {
    /// `[pairs × labels]` row-major.
    pub logits: Vec<f32>,
    pub batch_wait: Duration,
    pub inference: Duration,
}

type Reply = oneshot::Sender<Result<InferOutput, EngineError>>;

/// The places of a batch queue. A request holds one from submission until the batcher takes it
/// or its caller leaves, whichever comes first: a caller that disconnects frees its place at once,
/// though its entry stays in the channel until the batcher reaches it and skips it.
pub(crate) struct QueueSlots {
    used: AtomicUsize,
    capacity: usize,
}

impl QueueSlots {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            capacity,
        })
    }

    /// Takes a place; false when every place is held.
    pub fn try_take(&self) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used < self.capacity).then_some(used + 1)
            })
            .is_ok()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    #[cfg(test)]
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// One request's shared state while its pairs are spread over batches.
pub(crate) struct RequestState {
    enqueued: Instant,
    /// `[pairs × labels]`, filled as batches complete.
    logits: Mutex<Vec<f32>>,
    labels: usize,
    /// Logits not yet arrived.
    remaining: AtomicUsize,
    inference_ns: AtomicU64,
    reply: Mutex<Option<Reply>>,
    /// The queue place this request holds, until [`RequestState::release_slot`].
    slot: Mutex<Option<Arc<QueueSlots>>>,
}

impl RequestState {
    pub fn new(pairs: usize, labels: usize, reply: Reply) -> Self {
        let labels = labels.max(1);
        Self {
            enqueued: Instant::now(),
            logits: Mutex::new(vec![0.0; pairs * labels]),
            labels,
            remaining: AtomicUsize::new(pairs * labels),
            inference_ns: AtomicU64::new(0),
            reply: Mutex::new(Some(reply)),
            slot: Mutex::new(None),
        }
    }

    /// The request holds a place of `slots` (taken by the caller) until released.
    pub fn holding(self, slots: Arc<QueueSlots>) -> Self {
        if let Ok(mut slot) = self.slot.lock() {
            *slot = Some(slots);
        }
        self
    }

    /// Gives the queue place back (once; later calls do nothing).
    pub fn release_slot(&self) {
        if let Some(slots) = self.slot.lock().ok().and_then(|mut s| s.take()) {
            slots.used.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// True when nobody waits for the answer any more (caller gone, or already failed).
    pub fn is_abandoned(&self) -> bool {
        match self.reply.lock() {
            Ok(reply) => reply.as_ref().is_none_or(|r| r.is_closed()),
            Err(_) => true,
        }
    }

    /// Stores the logits of the pairs from `start` on (`logits` holds whole rows of `labels`);
    /// answers when all have arrived.
    pub fn complete(&self, start: usize, logits: &[f32], inference: Duration) {
        let at = start * self.labels;
        if let Ok(mut all) = self.logits.lock() {
            all[at..at + logits.len()].copy_from_slice(logits);
        }
        self.inference_ns
            .fetch_add(inference.as_nanos() as u64, Ordering::Relaxed);
        if self.remaining.fetch_sub(logits.len(), Ordering::AcqRel) == logits.len() {
            let logits = self
                .logits
                .lock()
                .map(|mut s| std::mem::take(&mut *s))
                .unwrap_or_default();
            let inference = Duration::from_nanos(self.inference_ns.load(Ordering::Relaxed));
            let total = self.enqueued.elapsed();
            self.answer(Ok(InferOutput {
                logits,
                batch_wait: total.saturating_sub(inference),
                inference,
            }));
        }
    }

    pub fn fail(&self, error: EngineError) {
        self.answer(Err(error));
    }

    fn answer(&self, result: Result<InferOutput, EngineError>) {
        if let Some(reply) = self.reply.lock().ok().and_then(|mut r| r.take()) {
            let _ = reply.send(result);
        }
    }
}

/// A request waiting in the batcher, with how many of its pairs were already batched.
pub(crate) struct Pending {
    state: Arc<RequestState>,
    encoded: Arc<[Encoded]>,
    next: usize,
}

impl Pending {
    pub fn new(state: Arc<RequestState>, encoded: Arc<[Encoded]>) -> Self {
        Self {
            state,
            encoded,
            next: 0,
        }
    }
}

/// Pairs `start..start + len` of one request, inside a batch.
pub(crate) struct Segment {
    pub state: Arc<RequestState>,
    pub start: usize,
    pub len: usize,
}

/// A packed batch and the requests its pairs belong to, in batch order.
pub(crate) struct Work {
    pub batch: Batch,
    pub segments: Vec<Segment>,
}

/// A request the batcher has taken from the queue: its queue place is free again.
fn admit(waiting: &mut VecDeque<Pending>, p: Pending) {
    p.state.release_slot();
    waiting.push_back(p);
}

/// Cuts batches from `queue` and hands them to `out` until the queue closes.
///
/// A batch is cut when an instance is free (`idle` holds one token per free instance), not
/// before: while every instance is busy, requests keep joining the waiting batch until it is full,
/// so under load batches grow to the limits instead of leaving one request each.
pub(crate) fn run(
    queue: crossbeam_channel::Receiver<Pending>,
    out: crossbeam_channel::Sender<Work>,
    idle: crossbeam_channel::Receiver<()>,
    config: BatchingConfig,
    padded: bool,
    counters: Arc<BatchCounters>,
) {
    let mut waiting: VecDeque<Pending> = VecDeque::new();
    let timeout = config.timeout();
    let mut queue_open = true;
    // Idle tokens taken but not yet used for a batch.
    let mut free = 0usize;
    loop {
        if waiting.is_empty() {
            if !queue_open {
                return;
            }
            match queue.recv() {
                Ok(p) => admit(&mut waiting, p),
                Err(_) => return,
            }
        }
        if config.enabled {
            let deadline = waiting
                .front()
                .map(|p| p.state.enqueued + timeout)
                .expect("waiting is not empty here. This is a bug.");
            loop {
                waiting.retain(|p| !p.state.is_abandoned());
                if waiting.is_empty() || is_full(&waiting, &config, padded) {
                    break;
                }
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                match queue.recv_timeout(deadline - now) {
                    Ok(p) => admit(&mut waiting, p),
                    Err(_) => break,
                }
            }
        }
        // Wait for a free instance, taking new requests meanwhile while the batch is not full.
        while free == 0 {
            waiting.retain(|p| !p.state.is_abandoned());
            if waiting.is_empty() {
                break;
            }
            let growing = config.enabled && queue_open && !is_full(&waiting, &config, padded);
            let token = if growing {
                crossbeam_channel::select! {
                    recv(idle) -> token => Some(token.is_ok()),
                    recv(queue) -> p => {
                        match p {
                            Ok(p) => admit(&mut waiting, p),
                            Err(_) => queue_open = false,
                        }
                        None
                    }
                }
            } else {
                Some(idle.recv().is_ok())
            };
            match token {
                Some(true) => free += 1,
                Some(false) => {
                    // Every instance has stopped: nothing will compute what waits.
                    for p in waiting.drain(..) {
                        p.state.fail(EngineError::Shutdown);
                    }
                    return;
                }
                None => {}
            }
        }
        if free == 0 {
            // Every waiting caller left before an instance was free: start over (cutting now
            // would send a batch with no instance free to take it).
            continue;
        }
        // Requests that arrived meanwhile join, up to a full batch.
        while config.enabled && queue_open && !is_full(&waiting, &config, padded) {
            match queue.try_recv() {
                Ok(p) => admit(&mut waiting, p),
                Err(_) => break,
            }
        }
        waiting.retain(|p| !p.state.is_abandoned());
        // Several instances free: share the waiting pairs among them rather than hand everything
        // to one while the others idle (each instance computes on its own share of the cores).
        while let Ok(()) = idle.try_recv() {
            free += 1;
        }
        let limits = share(&waiting, &config, padded, free);
        let Some(work) = cut(&mut waiting, &limits, padded) else {
            // No work after all (every waiting caller left): the token is kept for the next batch.
            continue;
        };
        free -= 1;
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters
            .pairs
            .fetch_add(work.batch.pairs() as u64, Ordering::Relaxed);
        counters
            .real_tokens
            .fetch_add(work.batch.total_tokens() as u64, Ordering::Relaxed);
        counters
            .computed_tokens
            .fetch_add(cost(&work.batch, padded) as u64, Ordering::Relaxed);
        if let Err(crossbeam_channel::SendError(work)) = out.send(work) {
            for s in work.segments {
                s.state.fail(EngineError::Shutdown);
            }
            return;
        }
    }
}

/// Tokens the backend computes for `batch`.
fn cost(batch: &Batch, padded: bool) -> usize {
    if padded {
        batch.padded_tokens()
    } else {
        batch.total_tokens()
    }
}

/// Whether the waiting pairs already fill a batch (by count or by tokens).
fn is_full(waiting: &VecDeque<Pending>, config: &BatchingConfig, padded: bool) -> bool {
    let (mut pairs, mut tokens, mut longest) = (0usize, 0usize, 0usize);
    for p in waiting {
        for e in &p.encoded[p.next..] {
            pairs += 1;
            tokens += e.ids.len();
            longest = longest.max(e.ids.len());
            let cost = if padded { longest * pairs } else { tokens };
            if pairs >= config.max_batch_size || cost >= config.max_batch_tokens {
                return true;
            }
        }
    }
    false
}

/// The limits of the next batch when `free` instances are free: the configured ones, lowered so
/// the waiting pairs split about evenly among the free instances (by tokens where the backend
/// computes real tokens, by pairs where it pads). A batch that would be full anyway is not split.
fn share(
    waiting: &VecDeque<Pending>,
    config: &BatchingConfig,
    padded: bool,
    free: usize,
) -> BatchingConfig {
    let mut limits = config.clone();
    if !config.enabled || free < 2 {
        return limits;
    }
    let (mut pairs, mut tokens) = (0usize, 0usize);
    for p in waiting {
        for e in &p.encoded[p.next..] {
            pairs += 1;
            tokens += e.ids.len();
        }
    }
    let ways = free.min(pairs).max(1);
    if padded {
        limits.max_batch_size = limits.max_batch_size.min(pairs.div_ceil(ways)).max(1);
    } else {
        limits.max_batch_tokens = limits.max_batch_tokens.min(tokens.div_ceil(ways)).max(1);
    }
    limits
}

/// Takes the next batch from the front of `waiting`: whole requests while they fit, the first
/// pairs of one that does not. The first pair always goes, even above the token limit. With
/// batching disabled a batch holds pairs of one request only.
fn cut(waiting: &mut VecDeque<Pending>, config: &BatchingConfig, padded: bool) -> Option<Work> {
    let mut batch = Batch::new();
    let mut segments = Vec::new();
    let (mut tokens, mut longest) = (0usize, 0usize);
    'requests: while let Some(front) = waiting.front_mut() {
        let start = front.next;
        while front.next < front.encoded.len() {
            let e = &front.encoded[front.next];
            let n = batch.pairs() + 1;
            let cost = if padded {
                longest.max(e.ids.len()) * n
            } else {
                tokens + e.ids.len()
            };
            if n > config.max_batch_size || (n > 1 && cost > config.max_batch_tokens) {
                break;
            }
            batch.push(&e.ids, &e.type_ids);
            tokens += e.ids.len();
            longest = longest.max(e.ids.len());
            front.next += 1;
        }
        if front.next > start {
            segments.push(Segment {
                state: front.state.clone(),
                start,
                len: front.next - start,
            });
        }
        if front.next < front.encoded.len() {
            break 'requests;
        }
        waiting.pop_front();
        if !config.enabled {
            break;
        }
    }
    (!batch.is_empty()).then_some(Work { batch, segments })
}
