//! Pair tokenization with the `tokenizers` crate, as transformers' fast tokenizer does it for
//! `tokenizer(query, passage, truncation=True, max_length=N)`: the model's template adds the special
//! tokens and token type ids, truncation is `longest_first`, and padding is left to the model.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::batch::Batch;
use crate::model::ModelFiles;

#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    #[error("cannot load tokenizer {}: {reason}", .path.display())]
    Load { path: PathBuf, reason: String },
    #[error("{} is not valid JSON: {reason}", .path.display())]
    Config { path: PathBuf, reason: String },
    #[error("max_length {0} is too small: a pair needs at least {MIN_MAX_LENGTH} tokens (its special tokens and one of each text)")]
    MaxLengthTooSmall(usize),
    #[error("cannot tokenize pair: {0}")]
    Encode(String),
}

/// The smallest `max_length` accepted: `[CLS] q [SEP] p [SEP]` with one token of each text.
pub const MIN_MAX_LENGTH: usize = 5;

/// `tokenizer_config.json` keys that change how pairs are encoded.
#[derive(Debug, Default, Deserialize)]
struct TokenizerConfig {
    #[serde(default)]
    model_max_length: Option<f64>,
    #[serde(default)]
    truncation_side: Option<String>,
}

/// One encoded pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

/// A tokenizer for (query, passage) pairs with truncation fixed at load time.
#[derive(Clone)]
pub struct PairTokenizer {
    tokenizer: Tokenizer,
    max_length: usize,
}

impl PairTokenizer {
    /// Loads `tokenizer.json` and fixes `max_length` to the smallest of `requested`, the model's
    /// `max_positions` and the tokenizer's `model_max_length`.
    pub fn load(
        files: &ModelFiles,
        max_positions: usize,
        requested: Option<usize>,
    ) -> Result<Self, TokenizeError> {
        let config = match &files.tokenizer_config {
            Some(path) => read_tokenizer_config(path)?,
            None => TokenizerConfig::default(),
        };
        // transformers writes a huge sentinel (1e30) when the tokenizer has no limit of its own.
        let model_max = config
            .model_max_length
            .filter(|&m| m > 0.0 && m < 1e9)
            .map(|m| m as usize)
            .unwrap_or(usize::MAX);
        let max_length = requested
            .unwrap_or(usize::MAX)
            .min(max_positions)
            .min(model_max);
        if max_length < MIN_MAX_LENGTH {
            return Err(TokenizeError::MaxLengthTooSmall(max_length));
        }
        let direction = match config.truncation_side.as_deref() {
            Some("left") => TruncationDirection::Left,
            _ => TruncationDirection::Right,
        };
        let mut tokenizer =
            Tokenizer::from_file(&files.tokenizer).map_err(|e| TokenizeError::Load {
                path: files.tokenizer.clone(),
                reason: e.to_string(),
            })?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction,
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| TokenizeError::Load {
                path: files.tokenizer.clone(),
                reason: e.to_string(),
            })?;
        tokenizer.with_padding(None);
        Ok(Self {
            tokenizer,
            max_length,
        })
    }

    /// The truncation length in force, special tokens included.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Encodes one pair, truncated to [`Self::max_length`].
    pub fn encode(&self, query: &str, passage: &str) -> Result<Encoded, TokenizeError> {
        let enc = self
            .tokenizer
            .encode_fast((query, passage), true)
            .map_err(|e| TokenizeError::Encode(e.to_string()))?;
        Ok(Encoded {
            ids: enc.get_ids().to_vec(),
            type_ids: enc.get_type_ids().to_vec(),
        })
    }

    /// Encodes one query with each passage. `parallel` uses the tokenizers crate's batch encoding
    /// (rayon, the original's `TOKENIZERS_PARALLELISM=true`); otherwise pairs are encoded in turn.
    pub fn encode_many(
        &self,
        query: &str,
        passages: &[String],
        parallel: bool,
    ) -> Result<Vec<Encoded>, TokenizeError> {
        if !parallel || passages.len() < 2 {
            return passages.iter().map(|p| self.encode(query, p)).collect();
        }
        let inputs: Vec<tokenizers::EncodeInput> = passages
            .iter()
            .map(|p| (query, p.as_str()).into())
            .collect();
        let encodings = self
            .tokenizer
            .encode_batch_fast(inputs, true)
            .map_err(|e| TokenizeError::Encode(e.to_string()))?;
        Ok(encodings
            .into_iter()
            .map(|e| Encoded {
                ids: e.get_ids().to_vec(),
                type_ids: e.get_type_ids().to_vec(),
            })
            .collect())
    }

    /// Encodes pairs one by one into a packed batch.
    pub fn encode_batch<'a>(
        &self,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Batch, TokenizeError> {
        let mut batch = Batch::new();
        for (query, passage) in pairs {
            let e = self.encode(query, passage)?;
            batch.push(&e.ids, &e.type_ids);
        }
        Ok(batch)
    }
}

fn read_tokenizer_config(path: &Path) -> Result<TokenizerConfig, TokenizeError> {
    let text = std::fs::read_to_string(path).map_err(|e| TokenizeError::Config {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| TokenizeError::Config {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}
