//! Prompts of generative rerankers: how a decoder LLM reads a (query, document) pair, and which
//! answer tokens score it.
//!
//! A template is a list of parts, each tokenized alone without special tokens and their ids
//! concatenated, as the reference implementations build prompts (the Qwen3-Reranker model card,
//! mixedbread's `mxbai-rerank`, FlagEmbedding's LLM reranker). Parts may hold `{instruction}`,
//! `{query}` and `{document}`. A budget of `max_length` tokens covers the parts marked `budget`
//! (and the BOS token, where the template starts with one): a part with a `cap` is first cut to
//! that share of the budget, then the parts marked `cut` are shortened in their order until the
//! budget parts fit. Parts outside the budget are fixed text, added on top (so a prompt may be
//! longer than `max_length`, as it is upstream for mxbai-rerank-v2 and bge-reranker-v2-gemma); the
//! budget shrinks so that the whole prompt always fits the model's positions.
//!
//! Named templates ([`PromptTemplate::named`]): `qwen3_reranker`, `mxbai_rerank_v2`, `bge_gemma`.
//! Others come from a YAML file ([`PromptTemplate::from_yaml`]).

use std::path::Path;

use serde::Deserialize;
use tokenizers::Tokenizer;

use crate::tokenize::{TokenizeError, Truncation};

/// Which placeholder a part's text holds (for refusing an instruction a template cannot take).
const INSTRUCTION: &str = "{instruction}";

/// One part of a prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// The text, with `{instruction}`, `{query}`, `{document}` placeholders.
    pub text: String,
    /// The text used instead when the instruction is absent or empty (mxbai-rerank-v2's query
    /// line without its `instruction:` line); `None`: `text` always.
    pub without_instruction: Option<String>,
    /// Whether the part counts against `max_length`.
    pub budget: bool,
    /// At most `cap.0 / cap.1` of the budget, cut from its end (the query's 3/4).
    pub cap: Option<(usize, usize)>,
    /// The order in which parts are shortened to fit (lower first); `None`: never.
    pub cut: Option<u8>,
}

impl Part {
    fn fixed(text: &str, budget: bool) -> Self {
        Self {
            text: text.to_string(),
            without_instruction: None,
            budget,
            cap: None,
            cut: None,
        }
    }

    fn has_placeholders(&self) -> bool {
        let holds = |t: &str| {
            ["{instruction}", "{query}", "{document}"]
                .iter()
                .any(|p| t.contains(p))
        };
        holds(&self.text) || self.without_instruction.as_deref().is_some_and(holds)
    }
}

/// How a generative reranker reads a pair and is scored.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptTemplate {
    /// `qwen3_reranker`, or the YAML file's path.
    pub name: String,
    /// The prompt starts with the tokenizer's BOS token (counted in the budget).
    pub bos: bool,
    pub parts: Vec<Part>,
    /// The instruction when neither the request nor the model instance gives one.
    pub default_instruction: Option<String>,
    /// The tokens whose logits at the prompt's last token score the pair, in the order of the
    /// model's labels: `[no, yes]` scores `logit(yes) - logit(no)`, one token its logit.
    pub answer_tokens: Vec<String>,
    /// `max_length` when the model instance sets none (capped by the model's positions).
    pub default_max_length: usize,
}

/// Every named template.
pub const NAMED: [&str; 3] = ["qwen3_reranker", "mxbai_rerank_v2", "bge_gemma"];

impl PromptTemplate {
    /// A named template: `qwen3_reranker` (Qwen3-Reranker's model card), `mxbai_rerank_v2`
    /// (mixedbread's `mxbai-rerank` package), `bge_gemma` (the bge-reranker-v2-gemma card).
    pub fn named(name: &str) -> Option<Self> {
        let budget_cut = |text: &str| Part {
            cut: Some(1),
            ..Part::fixed(text, true)
        };
        let capped = |text: &str, without: Option<&str>| Part {
            without_instruction: without.map(str::to_string),
            cap: Some((3, 4)),
            ..Part::fixed(text, true)
        };
        Some(match name {
            "qwen3_reranker" => Self {
                name: name.into(),
                bos: false,
                parts: vec![
                    Part::fixed(
                        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n",
                        true,
                    ),
                    budget_cut("<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"),
                    Part::fixed("<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n", true),
                ],
                default_instruction: Some(
                    "Given a web search query, retrieve relevant passages that answer the query"
                        .into(),
                ),
                answer_tokens: vec!["no".into(), "yes".into()],
                default_max_length: 8192,
            },
            "mxbai_rerank_v2" => Self {
                name: name.into(),
                bos: false,
                parts: vec![
                    Part::fixed(
                        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\n",
                        false,
                    ),
                    capped("instruction: {instruction}\nquery: {query}", Some("query: {query}")),
                    Part::fixed("\n", true),
                    budget_cut("document: {document}"),
                    Part::fixed("\n", false),
                    Part::fixed(
                        "You are a search relevance expert who evaluates how well documents match search queries. For each query-document pair, carefully analyze the semantic relationship between them, then provide your binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:",
                        false,
                    ),
                    Part::fixed("<|im_end|>\n<|im_start|>assistant\n", false),
                ],
                default_instruction: None,
                answer_tokens: vec!["0".into(), "1".into()],
                default_max_length: 8192,
            },
            "bge_gemma" => Self {
                name: name.into(),
                bos: true,
                parts: vec![
                    capped("A: {query}", None),
                    Part::fixed("\n", true),
                    budget_cut("B: {document}"),
                    Part::fixed("\n", false),
                    // FlagEmbedding's `prompt` argument: the instruction replaces this line.
                    Part::fixed("{instruction}", false),
                ],
                default_instruction: Some(
                    "Given a query A and a passage B, determine whether the passage contains an answer to the query by providing a prediction of either 'Yes' or 'No'.".into(),
                ),
                answer_tokens: vec!["Yes".into()],
                default_max_length: 1024,
            },
            _ => return None,
        })
    }

    /// A named template, or a YAML file of one ([`TemplateFile`]); the error names the choices.
    pub fn resolve(name_or_path: &str) -> Result<Self, String> {
        if let Some(t) = Self::named(name_or_path) {
            return Ok(t);
        }
        let path = Path::new(name_or_path);
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            return Self::from_yaml(path);
        }
        Err(format!(
            "'{name_or_path}' is not a prompt template; use {} or a YAML file (prefix, query, document, suffix)",
            NAMED.join(", ")
        ))
    }

    /// Reads a template from a YAML file ([`TemplateFile`]).
    pub fn from_yaml(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read prompt template {}: {e}", path.display()))?;
        let file: TemplateFile = serde_yaml_ng::from_str(&text)
            .map_err(|e| format!("prompt template {} is not valid: {e}", path.display()))?;
        file.template(&path.display().to_string())
            .map_err(|e| format!("prompt template {}: {e}", path.display()))
    }

    /// Whether some part takes an instruction.
    pub fn takes_instruction(&self) -> bool {
        self.parts.iter().any(|p| p.text.contains(INSTRUCTION))
    }

    /// The answer tokens' ids in `tokenizer`: each a vocabulary token, else its text's token where
    /// the text encodes to one (as mxbai-rerank and FlagEmbedding look "1" and "Yes" up). A token
    /// the tokenizer does not have is refused, naming it.
    pub fn answer_ids(&self, tokenizer: &Tokenizer) -> Result<Vec<u32>, String> {
        if self.answer_tokens.is_empty() {
            return Err("the template names no answer tokens".into());
        }
        let unk = tokenizer.token_to_id("<unk>");
        self.answer_tokens
            .iter()
            .map(|t| {
                if let Some(id) = tokenizer.token_to_id(t) {
                    return Ok(id);
                }
                let ids = tokenizer
                    .encode_fast(t.as_str(), false)
                    .map(|e| e.get_ids().to_vec())
                    .unwrap_or_default();
                match ids[..] {
                    [id] if Some(id) != unk => Ok(id),
                    _ => Err(format!(
                        "answer token '{t}' of template {} is not in the tokenizer's vocabulary (its text encodes to {} tokens); set answer_tokens to tokens the model has",
                        self.name,
                        ids.len()
                    )),
                }
            })
            .collect()
    }

    /// The template prepared for `tokenizer`: fixed parts tokenized once, the budget fixed.
    /// `max_length` is the budget asked for (default: the template's), `max_positions` the
    /// model's limit.
    pub fn prepare(
        &self,
        tokenizer: &Tokenizer,
        max_length: Option<usize>,
        max_positions: usize,
    ) -> Result<PreparedPrompt, TokenizeError> {
        let encode = |text: &str| -> Result<Vec<u32>, TokenizeError> {
            tokenizer
                .encode_fast(text, false)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| TokenizeError::Encode(e.to_string()))
        };
        let fixed = self
            .parts
            .iter()
            .map(|p| (!p.has_placeholders()).then(|| encode(&p.text)).transpose())
            .collect::<Result<Vec<_>, _>>()?;
        // Parts outside the budget are fixed text but for an instruction, counted as the default.
        let mut outside = 0;
        for (p, ids) in self.parts.iter().zip(&fixed) {
            if !p.budget {
                outside += match ids {
                    Some(ids) => ids.len(),
                    None => encode(&p.text.replace(
                        "{instruction}",
                        self.default_instruction.as_deref().unwrap_or(""),
                    ))?
                    .len(),
                };
            }
        }
        let bos = if self.bos {
            let id = tokenizer
                .token_to_id("<bos>")
                .or_else(|| tokenizer.token_to_id("<s>"));
            Some(id.ok_or_else(|| {
                TokenizeError::Encode(format!(
                    "template {} starts with a BOS token, and the tokenizer has neither <bos> nor <s>",
                    self.name
                ))
            })?)
        } else {
            None
        };
        let budget = max_length
            .unwrap_or(self.default_max_length)
            .min(max_positions.saturating_sub(outside));
        let least: usize = self
            .parts
            .iter()
            .zip(&fixed)
            .filter(|(p, _)| p.budget)
            .map(|(_, ids)| ids.as_ref().map_or(0, Vec::len))
            .sum::<usize>()
            + usize::from(bos.is_some());
        if budget <= least {
            return Err(TokenizeError::MaxLengthTooSmall(budget));
        }
        Ok(PreparedPrompt {
            template: self.clone(),
            fixed,
            bos,
            budget,
            outside,
            max_positions,
        })
    }
}

/// A template ready to encode pairs with one tokenizer.
#[derive(Debug, Clone)]
pub struct PreparedPrompt {
    pub template: PromptTemplate,
    /// Per part: its ids, when it holds no placeholder.
    fixed: Vec<Option<Vec<u32>>>,
    bos: Option<u32>,
    /// Tokens the budget parts may take.
    budget: usize,
    /// Tokens of the parts outside the budget (with the default instruction).
    outside: usize,
    /// The model's positions, which no prompt may exceed.
    max_positions: usize,
}

impl PreparedPrompt {
    /// The budget of the parts that count against `max_length`.
    pub fn max_length(&self) -> usize {
        self.budget
    }

    /// The longest prompt this template makes.
    pub fn longest(&self) -> usize {
        self.budget + self.outside
    }

    /// The prompt's ids for one pair. `instruction`: the request's or model instance's, else the
    /// template's default. `truncation` says which end of a part is cut (`Off`: a prompt over
    /// the budget is an error).
    pub fn encode(
        &self,
        tokenizer: &Tokenizer,
        query: &str,
        document: &str,
        instruction: Option<&str>,
        truncation: Truncation,
    ) -> Result<Vec<u32>, TokenizeError> {
        let t = &self.template;
        let instruction = instruction.or(t.default_instruction.as_deref());
        let mut parts: Vec<Vec<u32>> = Vec::with_capacity(t.parts.len());
        for (part, fixed) in t.parts.iter().zip(&self.fixed) {
            let ids = match fixed {
                Some(ids) => ids.clone(),
                None => {
                    let text = match (&part.without_instruction, instruction) {
                        (Some(without), None | Some("")) => without,
                        _ => &part.text,
                    };
                    let text = text
                        .replace("{instruction}", instruction.unwrap_or(""))
                        .replace("{query}", query)
                        .replace("{document}", document);
                    let mut ids = tokenizer
                        .encode_fast(text.as_str(), false)
                        .map_err(|e| TokenizeError::Encode(e.to_string()))?
                        .get_ids()
                        .to_vec();
                    if let Some((num, den)) = part.cap {
                        ids.truncate(self.budget * num / den);
                    }
                    ids
                }
            };
            parts.push(ids);
        }
        let used: usize = t
            .parts
            .iter()
            .zip(&parts)
            .filter(|(p, _)| p.budget)
            .map(|(_, ids)| ids.len())
            .sum::<usize>()
            + usize::from(self.bos.is_some());
        let mut excess = used.saturating_sub(self.budget);
        if excess > 0 && truncation == Truncation::Off {
            return Err(TokenizeError::TooLong {
                index: 0,
                tokens: used,
                max_length: self.budget,
            });
        }
        let mut order: Vec<usize> = (0..t.parts.len())
            .filter(|&i| t.parts[i].cut.is_some())
            .collect();
        order.sort_by_key(|&i| t.parts[i].cut);
        for i in order {
            if excess == 0 {
                break;
            }
            let ids = &mut parts[i];
            let take = excess.min(ids.len());
            match truncation {
                Truncation::Left => {
                    ids.drain(..take);
                }
                _ => ids.truncate(ids.len() - take),
            }
            excess -= take;
        }
        if excess > 0 {
            return Err(TokenizeError::TooLong {
                index: 0,
                tokens: used,
                max_length: self.budget,
            });
        }
        let mut out = Vec::with_capacity(used + self.outside);
        out.extend(self.bos);
        for ids in parts {
            out.extend(ids);
        }
        if out.len() > self.max_positions {
            // Only an instruction outside the budget, longer than the default, gets here.
            return Err(TokenizeError::TooLong {
                index: 0,
                tokens: out.len(),
                max_length: self.max_positions,
            });
        }
        Ok(out)
    }
}

/// A prompt template in YAML: `prefix`, `query`, `document` and `suffix` parts (each tokenized
/// alone; `{instruction}`, `{query}`, `{document}` placeholders), every part counting against
/// `max_length`; `truncate` names the part cut first (`document`, the default, or `query`), the
/// other cut next.
///
/// ```yaml
/// prefix: "<|im_start|>system\nJudge the document.<|im_end|>\n<|im_start|>user\n"
/// query: "<Instruct>: {instruction}\n<Query>: {query}\n"
/// document: "<Document>: {document}"
/// suffix: "<|im_end|>\n<|im_start|>assistant\n"
/// instruction: "Given a web search query, retrieve relevant passages"
/// answer_tokens: [no, yes]
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateFile {
    #[serde(default)]
    prefix: String,
    query: String,
    document: String,
    #[serde(default)]
    suffix: String,
    #[serde(default = "document")]
    truncate: String,
    /// The default instruction.
    #[serde(default)]
    instruction: Option<String>,
    /// Start with the tokenizer's BOS token.
    #[serde(default)]
    bos: bool,
    answer_tokens: Vec<String>,
    #[serde(default = "default_max_length")]
    max_length: usize,
}

fn document() -> String {
    "document".into()
}
fn default_max_length() -> usize {
    8192
}

impl TemplateFile {
    fn template(self, name: &str) -> Result<PromptTemplate, String> {
        let (query_cut, document_cut) = match self.truncate.as_str() {
            "document" => (2, 1),
            "query" => (1, 2),
            other => {
                return Err(format!(
                    "truncate: '{other}' is not a part; use document or query"
                ))
            }
        };
        if !self.query.contains("{query}") {
            return Err("the query part has no {query} placeholder".into());
        }
        if !self.document.contains("{document}") {
            return Err("the document part has no {document} placeholder".into());
        }
        if self.answer_tokens.is_empty() || self.answer_tokens.len() > 2 {
            return Err("answer_tokens lists one token ([yes]) or two ([no, yes])".into());
        }
        let part = |text: String, cut: Option<u8>| Part {
            text,
            without_instruction: None,
            budget: true,
            cap: None,
            cut,
        };
        Ok(PromptTemplate {
            name: name.to_string(),
            bos: self.bos,
            parts: vec![
                part(self.prefix, None),
                part(self.query, Some(query_cut)),
                part(self.document, Some(document_cut)),
                part(self.suffix, None),
            ],
            default_instruction: self.instruction,
            answer_tokens: self.answer_tokens,
            default_max_length: self.max_length,
        })
    }
}
