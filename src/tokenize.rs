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
    #[error("pair {index} has {tokens} tokens, more than max_length {max_length}; shorten it or let it be truncated")]
    TooLong {
        index: usize,
        tokens: usize,
        max_length: usize,
    },
}

/// How a request's pairs are cut to `max_length`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Truncation {
    /// As the model's tokenizer config says (`truncation_side`, right when unset).
    #[default]
    Model,
    /// Drop tokens from the end of the longer text.
    Right,
    /// Drop tokens from the start of the longer text.
    Left,
    /// No truncation: a pair longer than `max_length` is an error.
    Off,
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
    /// The inputs the tokenizer hands the model: type ids reach it only when `token_type_ids` is
    /// listed (else it reads zeros, whatever the template assigns).
    #[serde(default)]
    model_input_names: Option<Vec<String>>,
    #[serde(default)]
    tokenizer_class: Option<String>,
}

/// transformers' tokenizer classes whose default `model_input_names` include `token_type_ids`
/// (transformers 5; a `Fast` suffix is the same class).
const CLASSES_WITH_TYPE_IDS: &[&str] = &[
    "BertTokenizer",
    "ElectraTokenizer",
    "DebertaTokenizer",
    "DebertaV2Tokenizer",
    "MobileBertTokenizer",
    "LayoutLMTokenizer",
];

/// Tokenizer classes of the families xbench loads, and transformers' generic ones, whose default
/// `model_input_names` leave type ids out.
const CLASSES_WITHOUT_TYPE_IDS: &[&str] = &[
    "DistilBertTokenizer",
    "RobertaTokenizer",
    "XLMRobertaTokenizer",
    "CamembertTokenizer",
    "MPNetTokenizer",
    "PreTrainedTokenizer",
    "TokenizersBackend",
    "Qwen2Tokenizer",
];

impl TokenizerConfig {
    /// Whether the model is given the template's type ids, as transformers' tokenizer decides:
    /// `model_input_names` when the file lists them, else the class's default; `None` when the
    /// file says neither (no file, or a class not known here).
    fn passes_type_ids(&self) -> Option<bool> {
        if let Some(names) = &self.model_input_names {
            return Some(names.iter().any(|n| n == "token_type_ids"));
        }
        let class = self.tokenizer_class.as_deref()?;
        let class = class.strip_suffix("Fast").unwrap_or(class);
        if CLASSES_WITH_TYPE_IDS.contains(&class) {
            Some(true)
        } else if CLASSES_WITHOUT_TYPE_IDS.contains(&class) {
            Some(false)
        } else {
            None
        }
    }
}

/// One encoded pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

/// One pair as the tokenizer encodes it, with which tokens are special (1) and which text (0, 1;
/// none for special tokens) each comes from: what a family's pair template is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    pub special: Vec<u32>,
}

/// A tokenizer for (query, passage) pairs, truncating to a `max_length` fixed at load time: from the
/// model's side by default, or as a request asks (one prepared tokenizer per way).
#[derive(Clone)]
pub struct PairTokenizer {
    /// Truncates from the model's side.
    tokenizer: Tokenizer,
    /// Truncates from the other side.
    other_side: Tokenizer,
    model_direction: TruncationDirection,
    /// Truncates nothing.
    untruncated: Tokenizer,
    max_length: usize,
    /// Whether the model sees the template's type ids; when not, every type id is 0.
    type_ids: bool,
}

impl PairTokenizer {
    /// Loads `tokenizer.json` and fixes `max_length` to the smallest of `requested`, the model's
    /// `max_positions` and the tokenizer's `model_max_length`. Type ids reach the model only when
    /// the tokenizer passes them (`model_input_names` of `tokenizer_config.json`, else its
    /// `tokenizer_class`'s default, else the model family's: [`crate::model::family::TypeIds`]);
    /// otherwise they are all 0, as the model reads a missing `token_type_ids`.
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
        let load_error = |e: tokenizers::Error| TokenizeError::Load {
            path: files.tokenizer.clone(),
            reason: e.to_string(),
        };
        let mut untruncated = Tokenizer::from_file(&files.tokenizer).map_err(load_error)?;
        untruncated.with_padding(None);
        untruncated.with_truncation(None).map_err(load_error)?;
        let truncating = |direction| -> Result<Tokenizer, TokenizeError> {
            let mut t = untruncated.clone();
            t.with_truncation(Some(TruncationParams {
                direction,
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(load_error)?;
            Ok(t)
        };
        let other = match direction {
            TruncationDirection::Left => TruncationDirection::Right,
            TruncationDirection::Right => TruncationDirection::Left,
        };
        let type_ids = config.passes_type_ids().unwrap_or_else(|| {
            crate::model::family_of(files).is_none_or(|f| f.template.type_ids.passed_by_default())
        });
        Ok(Self {
            tokenizer: truncating(direction)?,
            other_side: truncating(other)?,
            model_direction: direction,
            untruncated,
            max_length,
            type_ids,
        })
    }

    fn for_truncation(&self, truncation: Truncation) -> &Tokenizer {
        let side = |d: TruncationDirection| {
            if d == self.model_direction {
                &self.tokenizer
            } else {
                &self.other_side
            }
        };
        match truncation {
            Truncation::Model => &self.tokenizer,
            Truncation::Right => side(TruncationDirection::Right),
            Truncation::Left => side(TruncationDirection::Left),
            Truncation::Off => &self.untruncated,
        }
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
        Ok(self.encoded(&enc))
    }

    /// What the model is given of an encoding.
    fn encoded(&self, e: &tokenizers::Encoding) -> Encoded {
        let type_ids = if self.type_ids {
            e.get_type_ids().to_vec()
        } else {
            vec![0; e.len()]
        };
        Encoded {
            ids: e.get_ids().to_vec(),
            type_ids,
        }
    }

    /// Whether the model sees the type ids the tokenizer's template assigns (else zeros).
    pub fn passes_type_ids(&self) -> bool {
        self.type_ids
    }

    /// Encodes one pair, untruncated, keeping the special-token mask.
    pub fn probe(&self, query: &str, passage: &str) -> Result<Probe, TokenizeError> {
        let enc = self
            .untruncated
            .encode((query, passage), true)
            .map_err(|e| TokenizeError::Encode(e.to_string()))?;
        Ok(Probe {
            ids: enc.get_ids().to_vec(),
            type_ids: enc.get_type_ids().to_vec(),
            special: enc.get_special_tokens_mask().to_vec(),
        })
    }

    /// Encodes one query with each passage, truncated as the model says. `parallel` uses the
    /// tokenizers crate's batch encoding (rayon, the original's `TOKENIZERS_PARALLELISM=true`);
    /// otherwise pairs are encoded in turn.
    pub fn encode_many(
        &self,
        query: &str,
        passages: &[String],
        parallel: bool,
    ) -> Result<Vec<Encoded>, TokenizeError> {
        self.encode_many_with(query, passages, parallel, Truncation::Model)
    }

    /// [`Self::encode_many`] with the truncation a request asks for. With [`Truncation::Off`] a
    /// pair over `max_length` fails the request ([`TokenizeError::TooLong`]).
    pub fn encode_many_with(
        &self,
        query: &str,
        passages: &[String],
        parallel: bool,
        truncation: Truncation,
    ) -> Result<Vec<Encoded>, TokenizeError> {
        let tokenizer = self.for_truncation(truncation);
        let encodings = if !parallel || passages.len() < 2 {
            passages
                .iter()
                .map(|p| tokenizer.encode_fast((query, p.as_str()), true))
                .collect::<Result<Vec<_>, _>>()
        } else {
            let inputs: Vec<tokenizers::EncodeInput> = passages
                .iter()
                .map(|p| (query, p.as_str()).into())
                .collect();
            tokenizer.encode_batch_fast(inputs, true)
        }
        .map_err(|e| TokenizeError::Encode(e.to_string()))?;
        encodings
            .into_iter()
            .enumerate()
            .map(|(index, e)| {
                if e.len() > self.max_length {
                    return Err(TokenizeError::TooLong {
                        index,
                        tokens: e.len(),
                        max_length: self.max_length,
                    });
                }
                Ok(self.encoded(&e))
            })
            .collect()
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
