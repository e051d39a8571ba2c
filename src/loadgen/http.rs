//! The load generator's HTTP target: TEI's `POST /rerank` on xbench's server or any TEI-compatible
//! one, over a bounded pool of reused connections.

use std::time::Duration;

use crate::engine::{BatchStats, RerankInput, Timings};
use crate::server::api::{InfoResponse, RerankRequest};

#[derive(Debug, thiserror::Error)]
pub enum HttpTargetError {
    #[error("'{0}' is not an http:// or https:// URL")]
    Url(String),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error("{url} does not answer /health with 200 within {waited_s} s: {last}")]
    NotReady {
        url: String,
        waited_s: u64,
        last: String,
    },
}

/// Reads the server's batch counters, where the caller can (a server in this process).
pub type StatsSource = Box<dyn Fn() -> Option<BatchStats> + Send + Sync>;

/// A server to send requests to.
pub struct HttpTarget {
    base: String,
    stats: Option<StatsSource>,
    client: reqwest::Client,
    api_key: Option<String>,
    /// At most this many requests in flight (and connections open).
    slots: tokio::sync::Semaphore,
}

impl HttpTarget {
    /// `base`: the server's URL (`http://127.0.0.1:8080`); `max_connections` bounds the requests in
    /// flight and the pool of kept-alive connections.
    pub fn new(
        base: &str,
        api_key: Option<String>,
        max_connections: usize,
        timeout: Duration,
    ) -> Result<Self, HttpTargetError> {
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(HttpTargetError::Url(base));
        }
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(max_connections)
            .timeout(timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| HttpTargetError::Client(e.to_string()))?;
        Ok(Self {
            base,
            stats: None,
            client,
            api_key,
            slots: tokio::sync::Semaphore::new(max_connections.max(1)),
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// Reports the batches the server formed during each run (mean batch size, padding).
    pub fn with_stats(mut self, source: StatsSource) -> Self {
        self.stats = Some(source);
        self
    }

    pub fn batch_stats(&self) -> Option<BatchStats> {
        self.stats.as_ref().and_then(|s| s())
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        let r = self.client.get(format!("{}{path}", self.base));
        match &self.api_key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    /// Waits until `/health` answers 200.
    pub async fn wait_ready(&self, within: Duration) -> Result<(), HttpTargetError> {
        let deadline = tokio::time::Instant::now() + within;
        let mut last;
        loop {
            match self.get("/health").send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => last = format!("status {}", r.status()),
                Err(e) => last = e.to_string(),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(HttpTargetError::NotReady {
                    url: self.base.clone(),
                    waited_s: within.as_secs(),
                    last,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// xbench's `/info`, when the server is xbench (`None` for other servers).
    pub async fn info(&self) -> Option<InfoResponse> {
        let r = self.get("/info").send().await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    /// The body of one request.
    pub fn body(model: Option<&str>, input: &RerankInput) -> Vec<u8> {
        let req = RerankRequest {
            query: input.query.clone(),
            texts: input.passages.clone(),
            raw_scores: true,
            return_text: false,
            truncate: Some(true),
            truncation_direction: None,
            model: model.map(str::to_string),
            timeout_ms: None,
            long_documents: None,
            chunk_overlap_tokens: None,
            instruction: input.options.instruction.clone(),
            return_chunks: false,
        };
        let mut v = serde_json::to_value(&req).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            // Only what TEI knows, so any TEI-compatible server takes it.
            o.retain(|k, v| {
                !v.is_null()
                    && !matches!(
                        k.as_str(),
                        "return_text" | "truncation_direction" | "return_chunks"
                    )
            });
        }
        serde_json::to_vec(&v).unwrap_or_default()
    }

    /// Sends one `POST /rerank` and reads the whole answer. On success returns the stage timings
    /// from the server's headers (zero where absent); on failure, a short kind for the counts.
    pub async fn rerank(&self, body: Vec<u8>) -> Result<Timings, String> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| "shutdown".to_string())?;
        let mut r = self
            .client
            .post(format!("{}/rerank", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(k) = &self.api_key {
            r = r.bearer_auth(k);
        }
        let response = r.send().await.map_err(|e| transport_kind(&e))?;
        let status = response.status();
        let ms = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v >= 0.0)
                .map(|v| Duration::from_secs_f64(v / 1e3))
                .unwrap_or_default()
        };
        let timings = Timings {
            queue: ms("x-queue-time"),
            tokenize: ms("x-tokenization-time"),
            batch_wait: Duration::ZERO,
            inference: ms("x-inference-time"),
            total: ms("x-total-time"),
        };
        let bytes = response.bytes().await.map_err(|e| transport_kind(&e))?;
        match status.as_u16() {
            200..=299 if !bytes.is_empty() => Ok(timings),
            200..=299 => Err("empty_body".into()),
            429 => Err("overloaded".into()),
            503 => Err("unavailable".into()),
            s => Err(format!("http_{s}")),
        }
    }
}

fn transport_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else {
        "transport".into()
    }
}
