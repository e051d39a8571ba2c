//! Batch scoring: reading (query, passage) pairs from JSON lines and scoring them in order with one
//! loaded model ([`crate::backend::load`]), `batch_size` pairs per forward pass, on the calling
//! thread and rayon's global pool. `xbench score` is a thin shell over it.

use std::io::BufRead;

use serde_json::Value;

use crate::backend::{self, Backend, BackendError, LoadError, LoadedModel, ModelSpec};
use crate::model::{relevance, ModelInfo};
use crate::tokenize::{PairTokenizer, TokenizeError};

/// One (query, passage) pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub query: String,
    pub passage: String,
}

impl Pair {
    pub fn new(query: impl Into<String>, passage: impl Into<String>) -> Self {
        Self {
            query: query.into(),
            passage: passage.into(),
        }
    }
}

/// Field names accepted for the passage, in the order they are looked up.
pub const PASSAGE_FIELDS: &[&str] = &["passage", "document", "text"];

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    #[error("cannot read the input")]
    Io(#[from] std::io::Error),
}

/// Parses one JSON line into a pair. Unknown fields are ignored; the error text names the fix.
pub fn parse_pair_line(line: &str) -> Result<Pair, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON ({e})"))?;
    let Value::Object(map) = value else {
        return Err(
            "expected a JSON object like {\"query\": \"...\", \"passage\": \"...\"}".to_string(),
        );
    };
    let query = match map.get("query") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(format!("\"query\" must be a string, found {}", kind(other))),
        None => return Err("missing \"query\"".to_string()),
    };
    let present: Vec<&str> = PASSAGE_FIELDS
        .iter()
        .copied()
        .filter(|f| map.contains_key(*f))
        .collect();
    let field = match present.as_slice() {
        [one] => *one,
        [] => {
            return Err(
                "missing the passage: add \"passage\" (or \"document\" or \"text\")".to_string(),
            )
        }
        many => {
            return Err(format!(
                "has {} passage fields; keep one of them",
                many.iter()
                    .map(|f| format!("\"{f}\""))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ))
        }
    };
    match &map[field] {
        Value::String(s) => Ok(Pair::new(query, s.clone())),
        other => Err(format!(
            "\"{field}\" must be a string, found {}",
            kind(other)
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Reads every line of `reader` as a pair; the first bad line fails the whole read with its number
/// (counted from 1). Every line, blank ones included, must hold a pair, so output lines match input
/// lines one to one.
pub fn read_pairs(mut reader: impl BufRead) -> Result<Vec<Pair>, InputError> {
    let mut pairs = Vec::new();
    let mut buf = Vec::new();
    let mut line = 0;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        line += 1;
        let text = std::str::from_utf8(&buf).map_err(|e| InputError::Line {
            line,
            message: format!("not valid UTF-8 (byte {})", e.valid_up_to()),
        })?;
        let text = text.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            return Err(InputError::Line {
                line,
                message:
                    "empty line; every line must be a JSON object with \"query\" and \"passage\""
                        .to_string(),
            });
        }
        let pair = parse_pair_line(text).map_err(|message| InputError::Line { line, message })?;
        pairs.push(pair);
    }
    Ok(pairs)
}

#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Tokenize(#[from] TokenizeError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("batch size must be at least 1")]
    ZeroBatch,
}

/// A loaded model with its tokenizer, ready to score pairs.
pub struct Scorer {
    model: LoadedModel,
}

impl Scorer {
    /// Loads `spec`'s model (see [`backend::load`]).
    pub fn load(spec: &ModelSpec) -> Result<Self, ScoreError> {
        Ok(Self {
            model: backend::load(spec)?,
        })
    }

    /// Loads `model` (a directory or hub id) on the default backend in fp32, truncating at
    /// `max_length` (default: the model's limit).
    pub fn load_default(model: &str, max_length: Option<usize>) -> Result<Self, ScoreError> {
        Self::load(&ModelSpec {
            max_length,
            ..ModelSpec::new(model)
        })
    }

    /// What was loaded: precision, backend, labels, sizes.
    pub fn info(&self) -> &ModelInfo {
        &self.model.info
    }

    /// The loaded model: its backend, tokenizer and how its quantized layers were come by.
    pub fn model(&self) -> &LoadedModel {
        &self.model
    }

    pub fn backend(&self) -> &dyn Backend {
        self.model.backend.as_ref()
    }

    pub fn tokenizer(&self) -> &PairTokenizer {
        &self.model.tokenizer
    }

    /// Every pair's logits in order, `[pairs × labels]` row-major, `batch_size` pairs per forward
    /// pass.
    pub fn logits(&self, pairs: &[Pair], batch_size: usize) -> Result<Vec<f32>, ScoreError> {
        if batch_size == 0 {
            return Err(ScoreError::ZeroBatch);
        }
        let mut logits = Vec::with_capacity(pairs.len() * self.model.info.num_labels);
        for chunk in pairs.chunks(batch_size) {
            let batch = self
                .tokenizer()
                .encode_batch(chunk.iter().map(|p| (p.query.as_str(), p.passage.as_str())))?;
            logits.extend(self.model.backend.predict(&batch)?);
        }
        Ok(logits)
    }

    /// Raw scores of `pairs` (the logit of a one-label reranker; see [`relevance`] for more
    /// labels), in order, `batch_size` pairs per forward pass.
    pub fn score(&self, pairs: &[Pair], batch_size: usize) -> Result<Vec<f32>, ScoreError> {
        let labels = self.model.info.num_labels.max(1);
        Ok(self
            .logits(pairs, batch_size)?
            .chunks_exact(labels)
            .map(relevance)
            .collect())
    }
}

/// The logistic function: relevance from a raw score.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Vec<Pair>, InputError> {
        read_pairs(text.as_bytes())
    }

    fn line_error(text: &str) -> (usize, String) {
        match read(text) {
            Err(InputError::Line { line, message }) => (line, message),
            other => panic!("expected a line error, got {other:?}"),
        }
    }

    #[test]
    fn accepts_the_three_passage_names_and_ignores_extra_fields() {
        let pairs = read(concat!(
            "{\"query\": \"q1\", \"passage\": \"p1\"}\n",
            "{\"query\": \"q2\", \"document\": \"p2\", \"id\": 7}\r\n",
            "{\"query\": \"q3\", \"text\": \"\"}",
        ))
        .unwrap();
        assert_eq!(
            pairs,
            vec![
                Pair::new("q1", "p1"),
                Pair::new("q2", "p2"),
                Pair::new("q3", "")
            ]
        );
    }

    #[test]
    fn bad_lines_are_named_by_number() {
        let ok = "{\"query\": \"q\", \"passage\": \"p\"}\n";
        let (line, msg) = line_error(&format!("{ok}{ok}{{\"passage\": \"p\"}}\n"));
        assert_eq!(line, 3);
        assert!(msg.contains("missing \"query\""), "{msg}");
        let (line, msg) = line_error(&format!("{ok}not json\n"));
        assert_eq!(line, 2);
        assert!(msg.contains("not valid JSON"), "{msg}");
        let (_, msg) = line_error("{\"query\": 1, \"passage\": \"p\"}");
        assert!(
            msg.contains("\"query\" must be a string, found a number"),
            "{msg}"
        );
        let (_, msg) = line_error("{\"query\": \"q\"}");
        assert!(msg.contains("missing the passage"), "{msg}");
        let (_, msg) = line_error("{\"query\": \"q\", \"passage\": \"a\", \"text\": \"b\"}");
        assert!(msg.contains("\"passage\" and \"text\""), "{msg}");
        let (_, msg) = line_error("[1, 2]");
        assert!(msg.contains("expected a JSON object"), "{msg}");
        let (line, msg) = line_error(&format!("{ok}\n{ok}"));
        assert_eq!(line, 2);
        assert!(msg.contains("empty line"), "{msg}");
        let bad_utf8: &[u8] = b"{\"query\": \"\xff\", \"passage\": \"p\"}";
        match read_pairs(bad_utf8) {
            Err(InputError::Line { line: 1, message }) => assert!(message.contains("UTF-8")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sigmoid_is_the_logistic_function() {
        assert_eq!(sigmoid(0.0), 0.5);
        assert!((sigmoid(2.0) - 0.880_797_1).abs() < 1e-6);
        assert!((sigmoid(-2.0) - 0.119_202_92).abs() < 1e-6);
    }
}
