//! DistilBERT (`DistilBertForSequenceClassification`): BERT's layers under other names
//! (transformers' `TransformerBlock`: `attention.{q,k,v,out}_lin`, `sa_layer_norm`, `ffn.lin1`,
//! `ffn.lin2`, `output_layer_norm`) and other config keys; no token type embeddings (the type ids a
//! tokenizer makes are ignored); `pre_classifier` + ReLU on `[CLS]`, then `classifier`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::{
    positions_from_zero, BertLayout, EncoderKind, Family, Head, HeadAct, PairTemplate, TypeIds,
    WeightNames,
};
use crate::model::encoder::{Activation, EncoderConfig};
use crate::model::{parse_json, ModelError};

pub static DISTILBERT: Family = Family {
    name: "distilbert",
    architectures: &["DistilBertForSequenceClassification"],
    encoder: EncoderKind::Bert(BertLayout {
        config: read_config,
        position_offset: positions_from_zero,
        token_types: false,
        weights: WeightNames {
            root: "distilbert",
            layers: "transformer.layer",
            embedding_projection: None,
            qkv: ["attention.q_lin", "attention.k_lin", "attention.v_lin"],
            attention_output: "attention.out_lin",
            attention_norm: "sa_layer_norm",
            intermediate: "ffn.lin1",
            output: "ffn.lin2",
            output_norm: "output_layer_norm",
        },
        head: Head {
            dense: "pre_classifier",
            act: HeadAct::Relu,
            classifier: "classifier",
        },
    }),
    template: Some(PairTemplate {
        text: "[CLS] A [SEP] B [SEP]",
        type_ids: TypeIds::Ignored,
    }),
    tiny_checkpoints: &["tiny-distilbert"],
};

/// The keys of a DistilBERT `config.json` the forward pass reads (its names differ from BERT's).
#[derive(Debug, Clone, Deserialize)]
struct DistilBertConfig {
    vocab_size: usize,
    dim: usize,
    n_layers: usize,
    n_heads: usize,
    hidden_dim: usize,
    #[serde(default = "gelu")]
    activation: Activation,
    max_position_embeddings: usize,
    #[serde(default)]
    pad_token_id: u32,
    #[serde(default)]
    num_labels: Option<usize>,
    #[serde(default)]
    id2label: Option<BTreeMap<String, String>>,
}

fn gelu() -> Activation {
    Activation::Gelu
}

fn read_config(path: &Path, text: &str) -> Result<EncoderConfig, ModelError> {
    let c: DistilBertConfig = parse_json(path, text)?;
    let config = EncoderConfig {
        vocab_size: c.vocab_size,
        hidden_size: c.dim,
        num_hidden_layers: c.n_layers,
        num_attention_heads: c.n_heads,
        intermediate_size: c.hidden_dim,
        hidden_act: c.activation,
        max_position_embeddings: c.max_position_embeddings,
        type_vocab_size: 0,
        // transformers builds every DistilBERT LayerNorm with eps 1e-12.
        layer_norm_eps: 1e-12,
        pad_token_id: c.pad_token_id,
        position_embedding_type: "absolute".to_string(),
        num_labels: c.num_labels,
        id2label: c.id2label,
        is_decoder: false,
        embedding_size: None,
        absolute_positions: true,
        relative: None,
    };
    config.validate(path)?;
    Ok(config)
}
