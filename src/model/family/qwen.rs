//! Qwen2 and Qwen3 causal LMs as generative rerankers (transformers' `models/qwen2`,
//! `models/qwen3`; [`crate::model::decoder`]): Qwen/Qwen3-Reranker-0.6B/4B/8B (`Qwen3ForCausalLM`,
//! scored by logit("yes") − logit("no") under the `qwen3_reranker` prompt), mixedbread's
//! mxbai-rerank-base-v2 / large-v2 (`Qwen2ForCausalLM`, logit("1") − logit("0") under
//! `mxbai_rerank_v2`), and the `*ForSequenceClassification` checkpoints vLLM users convert them
//! to (a `score` head on the last token, read under the same prompt).

use super::{DecoderLayout, EncoderKind, Family};
use crate::model::decoder::DecoderArch;

pub static QWEN3: Family = Family {
    name: "qwen3",
    architectures: &["Qwen3ForCausalLM", "Qwen3ForSequenceClassification"],
    encoder: EncoderKind::Decoder(DecoderLayout {
        arch: DecoderArch::Qwen3,
        template: "qwen3_reranker",
    }),
    template: None,
    tiny_checkpoints: &["tiny-qwen3-reranker", "tiny-qwen3-reranker-seq-cls"],
};

pub static QWEN2: Family = Family {
    name: "qwen2",
    architectures: &["Qwen2ForCausalLM"],
    encoder: EncoderKind::Decoder(DecoderLayout {
        arch: DecoderArch::Qwen2,
        template: "mxbai_rerank_v2",
    }),
    template: None,
    tiny_checkpoints: &["tiny-qwen2-reranker"],
};
