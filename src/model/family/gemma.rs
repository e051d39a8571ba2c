//! Gemma causal LMs as generative rerankers (transformers' `models/gemma`;
//! [`crate::model::decoder`]): BAAI/bge-reranker-v2-gemma (`GemmaForCausalLM`, scored by the logit
//! of "Yes" under the `bge_gemma` prompt, as FlagEmbedding scores it).

use super::{DecoderLayout, EncoderKind, Family};
use crate::model::decoder::DecoderArch;

pub static GEMMA: Family = Family {
    name: "gemma",
    architectures: &["GemmaForCausalLM"],
    encoder: EncoderKind::Decoder(DecoderLayout {
        arch: DecoderArch::Gemma,
        template: "bge_gemma",
    }),
    template: None,
    tiny_checkpoints: &["tiny-gemma-reranker"],
};
