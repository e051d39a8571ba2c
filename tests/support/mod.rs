//! What the integration tests share: the demo model and the sample pairs, and the real server on
//! 127.0.0.1:0 with its HTTP helpers (`server_api.rs`, `server_ops.rs`). Each test binary uses
//! some of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use reqwest::StatusCode;
use serde_json::Value;
use xbench::backend::{self, Backend, BackendError, LoadedModel};
use xbench::batch::Batch;
use xbench::engine::{BatchingConfig, Engine, EngineConfig, ModelSpec, TokenizerPoolConfig};
use xbench::score::{read_pairs, Pair};
use xbench::server::{BackgroundServer, EngineStarter, ServeSummary, ServerSettings};

/// The 6-layer demo model's directory (`./scripts/fetch_demo_model.sh` makes it).
pub fn demo() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo-minilm-l6");
    assert!(
        dir.join("model.safetensors").is_file(),
        "run ./scripts/fetch_demo_model.sh"
    );
    dir.to_str().unwrap().to_string()
}

/// The first `n` pairs of `data/sample_pairs.jsonl`.
pub fn sample(n: usize) -> Vec<Pair> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sample_pairs.jsonl");
    let pairs = read_pairs(std::io::BufReader::new(std::fs::File::open(path).unwrap())).unwrap();
    pairs.into_iter().take(n).collect()
}

pub fn engine_config(batching: BatchingConfig) -> EngineConfig {
    EngineConfig {
        models: vec![ModelSpec {
            threads: Some(1),
            ..ModelSpec::new(demo())
        }],
        tokenizer_pool: TokenizerPoolConfig::default(),
        batching,
    }
}

pub fn settings() -> ServerSettings {
    ServerSettings {
        port: 0,
        ..ServerSettings::default()
    }
}

/// The tests share one process, whose RSS moves with whatever the others load and compute (a
/// model load is over 100 MB): a test that measures RSS holds this for writing, every other
/// server or engine for reading.
pub static PROCESS: RwLock<()> = RwLock::new(());

/// A hold on [`PROCESS`].
#[allow(dead_code)] // held for its drop
pub enum Hold {
    Shared(RwLockReadGuard<'static, ()>),
    Alone(RwLockWriteGuard<'static, ()>),
}

pub fn shared() -> Hold {
    Hold::Shared(PROCESS.read().unwrap_or_else(PoisonError::into_inner))
}

/// The real server on its own runtime thread (dropped before its hold on the process).
pub struct TestServer(Option<BackgroundServer>, #[allow(dead_code)] Hold);

impl TestServer {
    /// The running server's batch counters.
    pub fn stats(&self) -> xbench::server::ServerStats {
        self.0.as_ref().unwrap().stats_handle()
    }

    pub fn start(
        settings: ServerSettings,
        config: EngineConfig,
        starter: Option<EngineStarter>,
    ) -> Self {
        let s = Self::start_loading(settings, config, starter);
        s.wait_ready();
        s
    }

    /// [`TestServer::start`] with no other server or engine in the process while it lives.
    pub fn start_alone(settings: ServerSettings, config: EngineConfig) -> Self {
        let hold = Hold::Alone(PROCESS.write().unwrap_or_else(PoisonError::into_inner));
        let s = Self(
            Some(BackgroundServer::start(settings, config).unwrap()),
            hold,
        );
        s.wait_ready();
        s
    }

    pub fn start_loading(
        settings: ServerSettings,
        config: EngineConfig,
        starter: Option<EngineStarter>,
    ) -> Self {
        let server = match starter {
            Some(s) => BackgroundServer::start_with(settings, config, s),
            None => BackgroundServer::start(settings, config),
        };
        Self(Some(server.unwrap()), shared())
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.as_ref().unwrap().addr()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Ok(r) = client().get(self.url("/health")).send() {
                if r.status() == StatusCode::OK {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the server did not become ready in 120 s");
    }

    pub fn stop(mut self) -> ServeSummary {
        self.0.take().unwrap().stop().unwrap()
    }
}

pub fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

pub fn post(server: &TestServer, path: &str, body: &Value) -> (StatusCode, Value) {
    let r = client().post(server.url(path)).json(body).send().unwrap();
    let status = r.status();
    (status, r.json().unwrap())
}

/// The error envelope: exactly `error` (non-empty) and `error_type`.
pub fn assert_envelope(v: &Value, kind: &str) -> String {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"));
    assert_eq!(obj.len(), 2, "{v}");
    assert_eq!(v["error_type"], kind, "{v}");
    let msg = v["error"].as_str().unwrap().to_string();
    assert!(!msg.is_empty());
    msg
}

/// Posts `body` and checks the answer is the error envelope with this status, kind and message.
pub fn expect_error(
    server: &TestServer,
    path: &str,
    body: &Value,
    status: StatusCode,
    kind: &str,
    says: &str,
) {
    let (s, v) = post(server, path, body);
    assert_eq!(s, status, "{v}");
    let message = assert_envelope(&v, kind);
    assert!(message.contains(says), "{message}");
}

/// Queries with their passages, in file order.
pub fn grouped(pairs: &[Pair]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for p in pairs {
        match out.last_mut() {
            Some((q, ps)) if *q == p.query => ps.push(p.passage.clone()),
            _ => out.push((p.query.clone(), vec![p.passage.clone()])),
        }
    }
    out
}

/// A server made to overload: queues of one request, batching off, a model that takes 300 ms a
/// batch; a dozen concurrent requests get some 429s.
pub fn overloadable_server() -> TestServer {
    TestServer::start(
        settings(),
        EngineConfig {
            tokenizer_pool: TokenizerPoolConfig {
                queue_capacity: 1,
                ..TokenizerPoolConfig::default()
            },
            ..engine_config(BatchingConfig {
                enabled: false,
                queue_capacity: 1,
                ..BatchingConfig::default()
            })
        },
        Some(test_backend(
            Duration::from_millis(300),
            512,
            Duration::ZERO,
        )),
    )
}

/// Scores as the loaded backend does, but can sleep per batch and fails any batch holding a pair
/// longer than `fail_over` tokens.
pub struct TestBackend {
    inner: Arc<dyn Backend>,
    sleep: Duration,
    fail_over: usize,
}

impl Backend for TestBackend {
    fn is_padded(&self) -> bool {
        true
    }
    fn health(&self) -> Result<(), BackendError> {
        Ok(())
    }
    fn predict(&self, batch: &Batch) -> Result<Vec<f32>, BackendError> {
        std::thread::sleep(self.sleep);
        if batch.max_length > self.fail_over {
            return Err(BackendError::inference(std::io::Error::other(
                "injected failure",
            )));
        }
        self.inner.predict(batch)
    }
}

pub fn test_backend(sleep: Duration, fail_over: usize, load_delay: Duration) -> EngineStarter {
    Box::new(move |config: &EngineConfig| {
        std::thread::sleep(load_delay);
        Engine::start_with(config, |spec| {
            let loaded = backend::load(spec)?;
            Ok(LoadedModel {
                backend: Arc::new(TestBackend {
                    inner: loaded.backend.clone(),
                    sleep,
                    fail_over,
                }),
                ..loaded
            })
        })
    })
}

/// Checks `value` against an OpenAPI 3.1 schema (the subset utoipa writes): types, `$ref`,
/// `required`, `properties`, `items`, `oneOf`/`anyOf`, `enum`; unknown properties are errors.
pub fn check_schema(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/components/schemas/");
        return check_schema(doc, &doc["components"]["schemas"][name], value, at);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema[key].as_array() {
            let ok = options
                .iter()
                .filter(|o| check_schema(doc, o, value, at).is_ok())
                .count();
            return if ok >= 1 {
                Ok(())
            } else {
                Err(format!("{at}: {value} matches no option of {schema}"))
            };
        }
    }
    if let Some(options) = schema["enum"].as_array() {
        if !options.contains(value) {
            return Err(format!("{at}: {value} is not one of {options:?}"));
        }
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if !types.is_empty() {
        let actual = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_u64() || n.is_i64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        let ok = types.contains(&actual) || (actual == "integer" && types.contains(&"number"));
        if !ok {
            return Err(format!(
                "{at}: {value} is {actual}, the schema says {types:?}"
            ));
        }
    }
    if let Value::Object(obj) = value {
        let props = schema["properties"].as_object();
        for req in schema["required"].as_array().into_iter().flatten() {
            let req = req.as_str().unwrap();
            if !obj.contains_key(req) {
                return Err(format!("{at}: required '{req}' is missing from {value}"));
            }
        }
        if let Some(props) = props {
            for (k, v) in obj {
                let Some(s) = props.get(k) else {
                    return Err(format!("{at}: '{k}' is not in the schema"));
                };
                check_schema(doc, s, v, &format!("{at}.{k}"))?;
            }
        }
    }
    if let (Value::Array(items), Some(s)) = (value, schema.get("items")) {
        for (i, v) in items.iter().enumerate() {
            check_schema(doc, s, v, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// text-embeddings-inference's published OpenAPI document, vendored unmodified with its licence
/// noted (`tests/data/tei/README.md`).
pub fn tei_doc() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tei/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The schema of a response in an OpenAPI document, by path, method and status.
pub fn response_schema(doc: &Value, path: &str, method: &str, status: &str) -> Value {
    doc["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"].clone()
}

/// Checks `value` against an OpenAPI 3.0 schema as another server's published document writes it
/// (text-embeddings-inference's, `tests/data/tei/openapi.json`): types, `$ref`, `required`,
/// `properties` (others allowed, as JSON Schema allows them), `additionalProperties`, `items`,
/// `oneOf`/`anyOf`/`allOf`, `enum`, `nullable`, `minimum`.
pub fn check_openapi30(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/components/schemas/");
        let target = &doc["components"]["schemas"][name];
        if target.is_null() {
            return Err(format!("{at}: no schema {r}"));
        }
        return check_openapi30(doc, target, value, at);
    }
    if value.is_null() && schema["nullable"] == Value::Bool(true) {
        return Ok(());
    }
    if let Some(all) = schema["allOf"].as_array() {
        for s in all {
            check_openapi30(doc, s, value, at)?;
        }
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema[key].as_array() {
            let ok = options
                .iter()
                .filter(|o| check_openapi30(doc, o, value, at).is_ok())
                .count();
            if ok == 0 || (key == "oneOf" && ok > 1) {
                return Err(format!(
                    "{at}: {value} matches {ok} options of {key} {schema}"
                ));
            }
        }
    }
    if let Some(options) = schema["enum"].as_array() {
        if !options.contains(value) {
            return Err(format!("{at}: {value} is not one of {options:?}"));
        }
    }
    if let Some(t) = schema["type"].as_str() {
        let ok = match t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "boolean" => value.is_boolean(),
            "integer" => value.is_u64() || value.is_i64(),
            "number" => value.is_number(),
            _ => false,
        };
        if !ok {
            return Err(format!("{at}: {value} is not of type {t}"));
        }
    }
    if let (Some(min), Some(v)) = (schema["minimum"].as_f64(), value.as_f64()) {
        if v < min {
            return Err(format!("{at}: {v} is under the minimum {min}"));
        }
    }
    if let Value::Object(obj) = value {
        for req in schema["required"].as_array().into_iter().flatten() {
            let req = req.as_str().unwrap_or_default();
            if !obj.contains_key(req) {
                return Err(format!("{at}: required '{req}' is missing from {value}"));
            }
        }
        for (k, v) in obj {
            let here = format!("{at}.{k}");
            match schema["properties"].get(k) {
                Some(s) => check_openapi30(doc, s, v, &here)?,
                None => match &schema["additionalProperties"] {
                    Value::Bool(false) => return Err(format!("{here} is not allowed")),
                    s @ Value::Object(_) => check_openapi30(doc, s, v, &here)?,
                    _ => {}
                },
            }
        }
    }
    if let (Value::Array(items), Some(s)) = (value, schema.get("items")) {
        for (i, v) in items.iter().enumerate() {
            check_openapi30(doc, s, v, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// Kills the child when dropped.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Spawns `xbench serve ARGS`; returns the process, its address (from its log) and the thread
/// that collects its log lines until it exits.
pub fn spawn_serve(
    args: &[&std::ffi::OsStr],
) -> (Child, String, std::thread::JoinHandle<Vec<String>>) {
    spawn_serve_with(args, &[("RUST_LOG", "xbench=info")])
}

/// [`spawn_serve`] with these environment variables.
pub fn spawn_serve_with(
    args: &[&std::ffi::OsStr],
    envs: &[(&str, &str)],
) -> (Child, String, std::thread::JoinHandle<Vec<String>>) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_xbench"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("serve")
        .args(args)
        .envs(envs.iter().copied())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let child = Child(child);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line.clone());
            all.push(line);
        }
        all
    });
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("xbench serve logs its address");
        if let Some(at) = line.find("listening on http://") {
            let rest = &line[at + "listening on http://".len()..];
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let url = format!("http://{addr}");
    let deadline = Instant::now() + Duration::from_secs(120);
    while client()
        .get(format!("{url}/health"))
        .send()
        .map_or(true, |r| r.status() != StatusCode::OK)
    {
        assert!(Instant::now() < deadline, "not ready in 120 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    (child, url, reader)
}

/// POST /rerank: status, Retry-After and body.
pub fn post_rerank(server: &TestServer, body: &Value) -> (StatusCode, Option<String>, Value) {
    let r = client()
        .post(server.url("/rerank"))
        .json(body)
        .send()
        .unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (r.status(), retry, r.json::<Value>().unwrap())
}

/// Resident set size of this process, in MB (Linux).
pub fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Runs `xbench serve ARGS`, which must exit by itself within 60 s; its status and stderr.
pub fn serve_until_exit(args: &[std::ffi::OsString]) -> (std::process::ExitStatus, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_xbench"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("serve")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("xbench serve {args:?} kept running; it should have stopped with an error");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}
