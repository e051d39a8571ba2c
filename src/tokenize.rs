//! Pair tokenization with the `tokenizers` crate, as transformers' fast tokenizer does it for
//! `tokenizer(query, passage, truncation=True, max_length=N)`: the model's template adds the special
//! tokens and token type ids, truncation is `longest_first`, and padding is left to the model.
//!
//! A request may also cut each passage to a number of tokens before pairing (Cohere v2's
//! `max_tokens_per_doc`) and split a passage too long for the room beside its query into
//! overlapping windows ([`LongDocuments::ChunkMax`]), each a pair of its own
//! ([`PairTokenizer::encode_passages`]).

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tokenizers::{
    PostProcessor, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::batch::Batch;
use crate::model::ModelFiles;
use crate::prompt::PreparedPrompt;

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
    #[error("{0}")]
    Unsupported(String),
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

/// What becomes of a passage too long to fit beside its query within `max_length`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LongDocuments {
    /// Cut to fit, as the pair's truncation says (`longest_first`).
    #[default]
    Truncate,
    /// Split into windows that fit beside the query, consecutive windows sharing
    /// `chunk_overlap_tokens` tokens; each window is scored as a pair, and the passage scores as
    /// its best window (Cohere's and Elastic's choice for long documents).
    ChunkMax,
}

impl LongDocuments {
    pub fn name(self) -> &'static str {
        match self {
            LongDocuments::Truncate => "truncate",
            LongDocuments::ChunkMax => "chunk_max",
        }
    }
}

/// How a request's passages become pairs. `None` fields take the model's settings
/// ([`PairTokenizer::with_long_documents`], [`PairTokenizer::with_prompt`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassageOptions {
    pub truncation: Truncation,
    /// A generative reranker's instruction for this request's prompts.
    pub instruction: Option<String>,
    /// Each passage is cut to its first N tokens before pairing (Cohere v2's
    /// `max_tokens_per_doc`).
    pub max_passage_tokens: Option<usize>,
    pub long_documents: Option<LongDocuments>,
    pub chunk_overlap_tokens: Option<usize>,
}

/// A request's pairs: one per passage, or with [`LongDocuments::ChunkMax`] one per window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedPassages {
    pub pairs: Vec<Encoded>,
    /// How many consecutive pairs each passage became, in passage order; `None` when every
    /// passage is one pair.
    pub windows: Option<Vec<usize>>,
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
    /// The model's settings for passages too long to fit beside their query.
    long_documents: LongDocuments,
    chunk_overlap_tokens: usize,
    /// A generative reranker's prompt: pairs are built by its template, not the tokenizer's.
    prompt: Option<std::sync::Arc<PreparedPrompt>>,
    /// The model instance's instruction for the prompt.
    instruction: Option<String>,
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
            crate::model::family_of(files).is_none_or(|f| {
                f.template
                    .as_ref()
                    .is_none_or(|t| t.type_ids.passed_by_default())
            })
        });
        Ok(Self {
            tokenizer: truncating(direction)?,
            other_side: truncating(other)?,
            model_direction: direction,
            untruncated,
            max_length,
            type_ids,
            long_documents: LongDocuments::Truncate,
            chunk_overlap_tokens: 0,
            prompt: None,
            instruction: None,
        })
    }

    /// Pairs are read through a generative reranker's prompt (its budget becomes `max_length`),
    /// with the model instance's `instruction` where a request gives none.
    pub fn with_prompt(mut self, prompt: PreparedPrompt, instruction: Option<String>) -> Self {
        self.max_length = prompt.max_length();
        self.prompt = Some(std::sync::Arc::new(prompt));
        self.instruction = instruction;
        self
    }

    /// The generative reranker's prompt, if pairs are read through one.
    pub fn prompt(&self) -> Option<&PreparedPrompt> {
        self.prompt.as_deref()
    }

    /// The tokenizer of `tokenizer.json` as it is, truncating nothing.
    pub fn inner(&self) -> &Tokenizer {
        &self.untruncated
    }

    /// Each passage's prompt with `query` (a generative reranker's pairs).
    fn encode_prompts(
        &self,
        prompt: &PreparedPrompt,
        query: &str,
        passages: &[String],
        parallel: bool,
        truncation: Truncation,
        instruction: Option<&str>,
    ) -> Result<Vec<Encoded>, TokenizeError> {
        let instruction = instruction.or(self.instruction.as_deref());
        let one = |(index, p): (usize, &String)| {
            prompt
                .encode(&self.untruncated, query, p, instruction, truncation)
                .map(|ids| Encoded {
                    type_ids: vec![0; ids.len()],
                    ids,
                })
                .map_err(|e| match e {
                    TokenizeError::TooLong {
                        tokens, max_length, ..
                    } => TokenizeError::TooLong {
                        index,
                        tokens,
                        max_length,
                    },
                    e => e,
                })
        };
        if parallel && passages.len() > 1 {
            passages.par_iter().enumerate().map(one).collect()
        } else {
            passages.iter().enumerate().map(one).collect()
        }
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

    /// What becomes of long passages when a request does not say (a model instance's
    /// `long_documents` and `chunk_overlap_tokens`).
    pub fn with_long_documents(mut self, mode: LongDocuments, overlap_tokens: usize) -> Self {
        self.long_documents = mode;
        self.chunk_overlap_tokens = overlap_tokens;
        self
    }

    /// The model's settings for long passages: the mode and the windows' overlap in tokens.
    pub fn long_documents(&self) -> (LongDocuments, usize) {
        (self.long_documents, self.chunk_overlap_tokens)
    }

    /// The truncation length in force, special tokens included.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Encodes one pair, truncated to [`Self::max_length`].
    pub fn encode(&self, query: &str, passage: &str) -> Result<Encoded, TokenizeError> {
        if let Some(prompt) = &self.prompt {
            let mut one = self.encode_prompts(
                prompt,
                query,
                &[passage.to_string()],
                false,
                Truncation::Model,
                None,
            )?;
            return Ok(one.remove(0));
        }
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
        if let Some(prompt) = &self.prompt {
            return self.encode_prompts(prompt, query, passages, parallel, truncation, None);
        }
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

    /// Encodes one query with each passage as `options` say: as [`Self::encode_many_with`] does,
    /// after cutting each passage's text to its first `max_passage_tokens` tokens, unless a pair
    /// does not fit and [`LongDocuments::ChunkMax`] splits its passage into windows. A window
    /// holds as many passage tokens as fit beside the query (the query is cut to half of the room
    /// when it is longer, from the model's truncation side) and starts `chunk_overlap_tokens` (at
    /// most half a window) before the previous one ends; each window is paired with the query by
    /// the tokenizer's template, as `tokenizer(query, passage)` pairs two texts.
    pub fn encode_passages(
        &self,
        query: &str,
        passages: &[String],
        parallel: bool,
        options: &PassageOptions,
    ) -> Result<EncodedPassages, TokenizeError> {
        let chunk =
            options.long_documents.unwrap_or(self.long_documents) == LongDocuments::ChunkMax;
        let cut: Vec<String>;
        let passages = match options.max_passage_tokens {
            Some(n) => {
                cut = passages
                    .iter()
                    .map(|p| self.first_tokens(p, n))
                    .collect::<Result<_, _>>()?;
                &cut[..]
            }
            None => passages,
        };
        if let (false, Some(prompt)) = (chunk, &self.prompt) {
            return Ok(EncodedPassages {
                pairs: self.encode_prompts(
                    prompt,
                    query,
                    passages,
                    parallel,
                    options.truncation,
                    options.instruction.as_deref(),
                )?,
                windows: None,
            });
        }
        if chunk && self.prompt.is_some() {
            return Err(TokenizeError::Unsupported(
                "long_documents chunk_max is not available for generative rerankers yet; use truncate (the template cuts the document to fit)".into(),
            ));
        }
        if !chunk {
            return Ok(EncodedPassages {
                pairs: self.encode_many_with(query, passages, parallel, options.truncation)?,
                windows: None,
            });
        }
        let error = |e: tokenizers::Error| TokenizeError::Encode(e.to_string());
        let added = self
            .untruncated
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(true));
        let whole_query = self.untruncated.encode_fast(query, false).map_err(error)?;
        let mut q = whole_query.clone();
        let room_for_query = self.max_length.saturating_sub(added) / 2;
        if q.len() > room_for_query {
            let side = match options.truncation {
                Truncation::Left => TruncationDirection::Left,
                Truncation::Right => TruncationDirection::Right,
                _ => self.model_direction,
            };
            q.truncate(room_for_query, 0, side);
            q.take_overflowing();
        }
        let room = self.max_length.saturating_sub(added + q.len()).max(1);
        let overlap = options
            .chunk_overlap_tokens
            .unwrap_or(self.chunk_overlap_tokens)
            .min(room / 2);
        let one = |index: usize, passage: &String| -> Result<Vec<Encoded>, TokenizeError> {
            let mut p = self
                .untruncated
                .encode_fast(passage.as_str(), false)
                .map_err(error)?;
            if whole_query.len() + p.len() + added <= self.max_length {
                // It fits: the pair as it always is.
                let e = self
                    .untruncated
                    .encode_fast((query, passage.as_str()), true)
                    .map_err(error)?;
                return Ok(vec![self.encoded(&e)]);
            }
            if options.truncation == Truncation::Off && q.len() < whole_query.len() {
                return Err(TokenizeError::TooLong {
                    index,
                    tokens: whole_query.len() + added + 1,
                    max_length: self.max_length,
                });
            }
            // As tokenizer(query, passage) encodes the second text: type id 1 before the template.
            p.set_type_ids(vec![1; p.len()]);
            p.truncate(room, overlap, TruncationDirection::Right);
            let rest = p.take_overflowing();
            std::iter::once(p)
                .chain(rest)
                .map(|w| {
                    let e = self
                        .untruncated
                        .post_process(q.clone(), Some(w), true)
                        .map_err(error)?;
                    Ok(self.encoded(&e))
                })
                .collect()
        };
        let per_passage: Vec<Vec<Encoded>> = if parallel && passages.len() > 1 {
            passages
                .par_iter()
                .enumerate()
                .map(|(i, p)| one(i, p))
                .collect::<Result<_, _>>()?
        } else {
            passages
                .iter()
                .enumerate()
                .map(|(i, p)| one(i, p))
                .collect::<Result<_, _>>()?
        };
        let windows: Vec<usize> = per_passage.iter().map(Vec::len).collect();
        Ok(EncodedPassages {
            pairs: per_passage.into_iter().flatten().collect(),
            windows: Some(windows),
        })
    }

    /// The text of `passage` up to the end of its `n`-th token (the whole text when it has no
    /// more): a passage cut to `n` tokens.
    fn first_tokens(&self, passage: &str, n: usize) -> Result<String, TokenizeError> {
        let e = self
            .untruncated
            .encode(passage, false)
            .map_err(|e| TokenizeError::Encode(e.to_string()))?;
        if e.len() <= n || n == 0 {
            return Ok(if n == 0 {
                String::new()
            } else {
                passage.to_string()
            });
        }
        let end = e.get_offsets()[n - 1].1;
        Ok(passage.get(..end).unwrap_or(passage).to_string())
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
