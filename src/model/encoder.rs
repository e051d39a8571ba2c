//! The encoder the registered families share ([`super::family`]), in candle: post-LayerNorm
//! layers of self-attention and a feed-forward block, embeddings, and a two-layer head on the first
//! token, one struct per module of transformers' `models/bert/modeling_bert.py`. What differs
//! between families (config keys, weight names, positions, token types, an embedding projection,
//! head) comes from their [`Family`].
//!
//! Hidden states are kept as a `[tokens, hidden]` matrix so every linear layer is one matrix
//! product. The default forward pass runs on the packed tokens of a [`Batch`], with no padding:
//! embeddings, linear layers, LayerNorm and the activation see only real tokens, and attention runs
//! per pair on its own token range. [`Encoder::forward_padded`] keeps the padded path
//! (`[pairs, heads, length, head_dim]` over [`Batch::padded`], padded keys masked as transformers
//! does) for devices that want rectangles and as the reference in tests.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

use super::deberta::Relative;
use super::family::{BertLayout, HeadAct};
use super::fused::{Embeddings, FusedBert, FusedLayer, FusedRelative, Norm, Pooling};
use super::ModelError;
use crate::batch::Batch;
use xbench_kernels::matmul::{Linear as FusedLinear, Weight};
use xbench_kernels::rows::Act;

/// `hidden_act` values this implementation runs (transformers' `ACT2FN` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact GELU, `x * Φ(x)` with erf (transformers' `gelu`).
    Gelu,
    /// tanh approximation (`gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`).
    #[serde(alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluNew,
    Relu,
    #[serde(alias = "swish")]
    Silu,
}

impl Activation {
    /// The same activation in xbench's kernels.
    pub fn kernel(self) -> Act {
        match self {
            Activation::Gelu => Act::GeluErf,
            Activation::GeluNew => Act::GeluTanh,
            Activation::Relu => Act::Relu,
            Activation::Silu => Act::Silu,
        }
    }

    pub(crate) fn forward(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Gelu => x.gelu_erf(),
            Activation::GeluNew => x.gelu(),
            Activation::Relu => x.relu(),
            Activation::Silu => x.silu(),
        }
    }
}

/// The encoder's hyperparameters, under the keys of a BERT `config.json` (families with other
/// key names map theirs onto these).
#[derive(Debug, Clone, Deserialize)]
pub struct EncoderConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: Activation,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: u32,
    #[serde(default = "default_position_type")]
    pub position_embedding_type: String,
    #[serde(default)]
    pub num_labels: Option<usize>,
    #[serde(default)]
    pub id2label: Option<BTreeMap<String, String>>,
    /// A decoder attends causally: refused (a cross-encoder reads the whole pair).
    #[serde(default)]
    pub is_decoder: bool,
    /// The width of the embeddings where a family's differ from `hidden_size` (ELECTRA's
    /// `embedding_size`, set by its config reader; BERT's `config.json` has no such key).
    #[serde(skip)]
    pub embedding_size: Option<usize>,
    /// Whether the embeddings add a position table (DeBERTa's `position_biased_input`: its
    /// positions may be relative only).
    #[serde(skip, default = "yes")]
    pub absolute_positions: bool,
    /// DeBERTa's disentangled attention, when on (set by its config reader).
    #[serde(skip)]
    pub relative: Option<Relative>,
}

fn yes() -> bool {
    true
}

fn default_act() -> Activation {
    Activation::Gelu
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_position_type() -> String {
    "absolute".to_string()
}

impl EncoderConfig {
    /// Reads and checks a `config.json` with BERT's key names.
    pub fn read(path: &Path, text: &str) -> std::result::Result<Self, ModelError> {
        let config: Self = super::parse_json(path, text)?;
        config.validate(path)?;
        Ok(config)
    }

    /// Labels as transformers counts them: `num_labels`, else the size of `id2label`, else 2.
    pub fn num_labels(&self) -> usize {
        self.num_labels
            .or_else(|| self.id2label.as_ref().map(|m| m.len()))
            .unwrap_or(2)
    }

    /// Label names in id order: `id2label`'s, else `LABEL_i`.
    pub fn labels(&self) -> Vec<String> {
        (0..self.num_labels())
            .map(|i| {
                self.id2label
                    .as_ref()
                    .and_then(|m| m.get(&i.to_string()))
                    .cloned()
                    .unwrap_or_else(|| format!("LABEL_{i}"))
            })
            .collect()
    }

    /// The width of the embedding tables.
    pub fn embedding_width(&self) -> usize {
        self.embedding_size.unwrap_or(self.hidden_size)
    }

    pub fn validate(&self, path: &Path) -> std::result::Result<(), ModelError> {
        let invalid = |message: String| ModelError::InvalidConfig {
            path: path.to_path_buf(),
            message,
        };
        if self.is_decoder {
            return Err(invalid(
                "is_decoder is true (causal attention); a cross-encoder reads the whole pair: set it to false or use the model's sequence-classification checkpoint".to_string(),
            ));
        }
        if self.embedding_width() == 0 {
            return Err(invalid("embedding_size is 0".to_string()));
        }
        if self.position_embedding_type != "absolute" {
            return Err(invalid(format!(
                "position_embedding_type \"{}\" is not supported; supported: absolute",
                self.position_embedding_type
            )));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(invalid(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if self.num_labels() == 0 {
            return Err(invalid("num_labels is 0".to_string()));
        }
        Ok(())
    }
}

fn layer_norm(size: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    // Checkpoints converted from TensorFlow name the parameters gamma/beta; transformers renames them.
    let (w, b) = if vb.contains_tensor("weight") || !vb.contains_tensor("gamma") {
        (vb.get(size, "weight")?, vb.get(size, "bias")?)
    } else {
        (vb.get(size, "gamma")?, vb.get(size, "beta")?)
    };
    Ok(LayerNorm::new(w, b, eps))
}

/// `BertEmbeddings`: word + position + token type, then LayerNorm (dropout is off in inference).
/// DistilBERT's have no token type table; RoBERTa's positions start past the padding index;
/// ELECTRA's may be narrower than the layers, and projected to their width.
struct BertEmbeddings {
    word_embeddings: Embedding,
    /// None where positions are relative only (DeBERTa-v3).
    position_embeddings: Option<Embedding>,
    token_type_embeddings: Option<Embedding>,
    layer_norm: LayerNorm,
    position_offset: u32,
    /// `[hidden, embedding width]`, where the embeddings are narrower than the layers.
    projection: Option<Linear>,
}

impl BertEmbeddings {
    /// `root` is the encoder's root (the embeddings are `root.embeddings`, a projection
    /// `root.<family's name for it>`).
    fn load(root: VarBuilder, c: &EncoderConfig, family: &BertLayout, name: &str) -> Result<Self> {
        let vb = root.pp("embeddings");
        let width = c.embedding_width();
        let token_type_embeddings = if family.token_types && c.type_vocab_size > 0 {
            Some(candle_nn::embedding(
                c.type_vocab_size,
                width,
                vb.pp("token_type_embeddings"),
            )?)
        } else {
            None
        };
        let position_embeddings = if c.absolute_positions {
            Some(candle_nn::embedding(
                c.max_position_embeddings,
                width,
                vb.pp("position_embeddings"),
            )?)
        } else {
            None
        };
        let projection = if width == c.hidden_size {
            None
        } else {
            let Some(name) = family.weights.embedding_projection else {
                candle_core::bail!(
                    "embedding_size {width} differs from hidden_size {} and a {name} model has no projection between them",
                    c.hidden_size,
                );
            };
            Some(candle_nn::linear(width, c.hidden_size, root.pp(name))?)
        };
        Ok(Self {
            word_embeddings: candle_nn::embedding(c.vocab_size, width, vb.pp("word_embeddings"))?,
            position_embeddings,
            token_type_embeddings,
            layer_norm: layer_norm(width, c.layer_norm_eps, vb.pp("LayerNorm"))?,
            position_offset: (family.position_offset)(c) as u32,
            projection,
        })
    }

    /// All inputs are `[tokens]` on `device`'s host side; returns `[tokens, hidden]`.
    fn forward(
        &self,
        ids: &[u32],
        types: &[u32],
        positions: &[u32],
        device: &Device,
    ) -> Result<Tensor> {
        let tokens = ids.len();
        let ids = Tensor::from_slice(ids, tokens, device)?;
        let mut x = self.word_embeddings.forward(&ids)?;
        if let Some(table) = &self.token_type_embeddings {
            let types = Tensor::from_slice(types, tokens, device)?;
            x = (x + table.forward(&types)?)?;
        }
        if let Some(table) = &self.position_embeddings {
            let positions: Vec<u32> = positions.iter().map(|p| p + self.position_offset).collect();
            let positions = Tensor::from_vec(positions, tokens, device)?;
            x = (x + table.forward(&positions)?)?;
        }
        let x = self.layer_norm.forward(&x)?;
        match &self.projection {
            Some(projection) => projection.forward(&x),
            None => Ok(x),
        }
    }
}

/// `BertSelfAttention` (eager attention, absolute positions).
struct BertSelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    heads: usize,
    head_dim: usize,
}

impl BertSelfAttention {
    /// `names` are the query, key and value layers' names under `vb`.
    fn load(vb: VarBuilder, c: &EncoderConfig, names: [&str; 3]) -> Result<Self> {
        let h = c.hidden_size;
        Ok(Self {
            query: candle_nn::linear(h, h, vb.pp(names[0]))?,
            key: candle_nn::linear(h, h, vb.pp(names[1]))?,
            value: candle_nn::linear(h, h, vb.pp(names[2]))?,
            heads: c.num_attention_heads,
            head_dim: h / c.num_attention_heads,
        })
    }

    /// DeBERTa's position keys and queries of this layer: the key and query projections of the
    /// relative embeddings, `[heads, 2 span, d]` (those of the terms the model has).
    fn positions(&self, rel: &RelativeTable) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let rows = rel.table.dim(0)?;
        let split = |t: Tensor| {
            t.reshape((rows, self.heads, self.head_dim))?
                .transpose(0, 1)?
                .contiguous()
        };
        let keys = rel
            .params
            .c2p
            .then(|| split(self.key.forward(&rel.table)?))
            .transpose()?;
        let queries = rel
            .params
            .p2c
            .then(|| split(self.query.forward(&rel.table)?))
            .transpose()?;
        Ok((keys, queries))
    }

    /// The scale of the scores: `1 / sqrt(d)`, or DeBERTa's `1 / sqrt(d · (1 + terms))`.
    fn scale(&self, rel: Option<&RelativeTable>) -> f64 {
        let factor = rel.map_or(1, |r| r.params.scale_factor());
        1.0 / ((self.head_dim * factor) as f64).sqrt()
    }

    /// Packed attention: `x` is `[tokens, hidden]`; the pair at `(start, len)` attends only to its
    /// own tokens, so no padding is computed or masked.
    fn forward_packed(
        &self,
        x: &Tensor,
        ranges: &[(usize, usize)],
        rel: Option<&RelativeTable>,
    ) -> Result<Tensor> {
        let q = self.query.forward(x)?;
        let k = self.key.forward(x)?;
        let v = self.value.forward(x)?;
        let scale = self.scale(rel);
        let positions = rel.map(|r| self.positions(r)).transpose()?;
        let mut contexts = Vec::with_capacity(ranges.len());
        for &(start, len) in ranges {
            let split = |t: &Tensor| {
                t.narrow(0, start, len)?
                    .reshape((len, self.heads, self.head_dim))?
                    .transpose(0, 1)?
                    .contiguous()
            };
            let (q, k, v) = (split(&q)?, split(&k)?, split(&v)?);
            let bias = |first: usize, n: usize| -> Result<Option<Tensor>> {
                match (rel, &positions) {
                    (Some(rel), Some((pk, pq))) => Ok(Some(relative_bias(
                        &q,
                        &k,
                        pk.as_ref(),
                        pq.as_ref(),
                        &rel.params,
                        first,
                        n,
                        scale,
                    )?)),
                    _ => Ok(None),
                }
            };
            let context = attend_in_blocks(&q, &k, &v, scale, &bias)?;
            contexts.push(
                context
                    .transpose(0, 1)?
                    .reshape((len, self.heads * self.head_dim))?,
            );
        }
        Tensor::cat(&contexts, 0)
    }

    /// `x` is `[pairs * length, hidden]`, `mask_bias` `[pairs, 1, 1, length]`.
    fn forward(
        &self,
        x: &Tensor,
        mask_bias: &Tensor,
        pairs: usize,
        length: usize,
        rel: Option<&RelativeTable>,
    ) -> Result<Tensor> {
        let split = |t: Tensor| {
            t.reshape((pairs, length, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.query.forward(x)?)?;
        let k = split(self.key.forward(x)?)?;
        let v = split(self.value.forward(x)?)?;
        let scale = self.scale(rel);
        let positions = rel.map(|r| self.positions(r)).transpose()?;
        let bias = |first: usize, n: usize| -> Result<Option<Tensor>> {
            match (rel, &positions) {
                (Some(rel), Some((pk, pq))) => {
                    let b = relative_bias(
                        &q,
                        &k,
                        pk.as_ref(),
                        pq.as_ref(),
                        &rel.params,
                        first,
                        n,
                        scale,
                    )?;
                    Ok(Some(b.broadcast_add(mask_bias)?))
                }
                _ => Ok(Some(mask_bias.clone())),
            }
        };
        let context = attend_in_blocks(&q, &k, &v, scale, &bias)?;
        context
            .transpose(1, 2)?
            .reshape((pairs * length, self.heads * self.head_dim))
    }
}

/// DeBERTa's relative embeddings, LayerNorm'd when the config says so, `[2 span, hidden]`, and
/// how positions index them.
struct RelativeTable {
    table: Tensor,
    params: Relative,
}

/// DeBERTa's disentangled terms, scaled, for queries `first..first + n` against every key of
/// `q`, `k` (`[.., heads, len, d]`): `q_i · pk[δ(i, j)] + k_j · pq[δ(i, j)]` times `scale`,
/// `[.., heads, n, len]`. `pk`, `pq` are `[heads, 2 span, d]`.
#[allow(clippy::too_many_arguments)]
fn relative_bias(
    q: &Tensor,
    k: &Tensor,
    pk: Option<&Tensor>,
    pq: Option<&Tensor>,
    params: &Relative,
    first: usize,
    n: usize,
    scale: f64,
) -> Result<Tensor> {
    let r = q.rank();
    let len = k.dim(r - 2)?;
    let device = q.device();
    let mut dims = q.dims().to_vec();
    // δ for (query first + i, key j), as [n, len], and transposed, [len, n].
    let by_query: Vec<u32> = (first..first + n)
        .flat_map(|i| (0..len).map(move |j| params.index(i, j) as u32))
        .collect();
    let by_key: Vec<u32> = (0..len)
        .flat_map(|j| (first..first + n).map(move |i| params.index(i, j) as u32))
        .collect();
    let mut total: Option<Tensor> = None;
    if let Some(pk) = pk {
        let q = q.narrow(r - 2, first, n)?.contiguous()?;
        let scores = q.broadcast_matmul(&pk.t()?)?;
        dims[r - 2] = n;
        dims[r - 1] = len;
        let index = Tensor::from_vec(by_query, (n, len), device)?
            .broadcast_as(dims.as_slice())?
            .contiguous()?;
        total = Some(scores.gather(&index, r - 1)?);
    }
    if let Some(pq) = pq {
        let scores = k.broadcast_matmul(&pq.t()?)?;
        dims[r - 2] = len;
        dims[r - 1] = n;
        let index = Tensor::from_vec(by_key, (len, n), device)?
            .broadcast_as(dims.as_slice())?
            .contiguous()?;
        let term = scores.gather(&index, r - 1)?.transpose(r - 2, r - 1)?;
        total = Some(match total {
            Some(t) => (t + term)?,
            None => term,
        });
    }
    match total {
        Some(t) => t * scale,
        None => {
            dims[r - 2] = n;
            dims[r - 1] = len;
            Tensor::zeros(dims.as_slice(), q.dtype(), device)
        }
    }
}

/// Queries per block of [`attend_in_blocks`]: a block's scores are `[heads, 256, keys]`, so a pair
/// of 8,192 tokens holds 8 MB per head of them at a time rather than 256 MB.
const QUERY_BLOCK: usize = 256;

/// Softmax attention, `softmax(q·kᵀ · scale + bias)·v`, over `[.., queries, d]` query, key and
/// value tensors (keys and values `[.., keys, d]`), computed for [`QUERY_BLOCK`] queries at a
/// time: the scores of a long sequence never exist for all its queries at once, so attention's
/// memory grows with the sequence's length, not its square. `bias(first, n)` is what is added to
/// the scores of queries `first..first + n` (broadcast over them: a padding mask
/// `[.., 1, keys]`, a window `[n, keys]`), or nothing.
pub(crate) fn attend_in_blocks(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    bias: &dyn Fn(usize, usize) -> Result<Option<Tensor>>,
) -> Result<Tensor> {
    let axis = q.rank() - 2;
    let queries = q.dim(axis)?;
    let kt = k.t()?;
    let block = |first: usize, n: usize| -> Result<Tensor> {
        let q = if n == queries {
            q.clone()
        } else {
            q.narrow(axis, first, n)?.contiguous()?
        };
        let mut scores = (q.matmul(&kt)? * scale)?;
        if let Some(bias) = bias(first, n)? {
            scores = scores.broadcast_add(&bias)?;
        }
        candle_nn::ops::softmax_last_dim(&scores)?.matmul(v)
    };
    if queries <= QUERY_BLOCK {
        return block(0, queries);
    }
    let parts = (0..queries)
        .step_by(QUERY_BLOCK)
        .map(|s| block(s, QUERY_BLOCK.min(queries - s)))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, axis)
}

/// `BertSelfOutput` / `BertOutput`: dense, residual, LayerNorm.
struct DenseResidualNorm {
    dense: Linear,
    layer_norm: LayerNorm,
}

impl DenseResidualNorm {
    fn load(dense: VarBuilder, norm: VarBuilder, input: usize, c: &EncoderConfig) -> Result<Self> {
        Ok(Self {
            dense: candle_nn::linear(input, c.hidden_size, dense)?,
            layer_norm: layer_norm(c.hidden_size, c.layer_norm_eps, norm)?,
        })
    }

    fn forward(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.layer_norm
            .forward(&(self.dense.forward(x)? + residual)?)
    }
}

/// `BertLayer`: `BertAttention` (self-attention + `BertSelfOutput`), `BertIntermediate`,
/// `BertOutput`.
struct BertLayer {
    attention: BertSelfAttention,
    attention_output: DenseResidualNorm,
    intermediate: Linear,
    act: Activation,
    output: DenseResidualNorm,
}

impl BertLayer {
    /// Layer `vb` of `family`'s encoder, under that family's weight names.
    fn load(vb: VarBuilder, c: &EncoderConfig, family: &BertLayout) -> Result<Self> {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let n = &family.weights;
        Ok(Self {
            attention: BertSelfAttention::load(vb.clone(), c, n.qkv)?,
            attention_output: DenseResidualNorm::load(
                vb.pp(n.attention_output),
                vb.pp(n.attention_norm),
                h,
                c,
            )?,
            intermediate: candle_nn::linear(h, i, vb.pp(n.intermediate))?,
            act: c.hidden_act,
            output: DenseResidualNorm::load(vb.pp(n.output), vb.pp(n.output_norm), i, c)?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        mask_bias: &Tensor,
        pairs: usize,
        length: usize,
        rel: Option<&RelativeTable>,
    ) -> Result<Tensor> {
        let attended = self.attention.forward(x, mask_bias, pairs, length, rel)?;
        self.feed_forward(x, &attended)
    }

    fn forward_packed(
        &self,
        x: &Tensor,
        ranges: &[(usize, usize)],
        rel: Option<&RelativeTable>,
    ) -> Result<Tensor> {
        let attended = self.attention.forward_packed(x, ranges, rel)?;
        self.feed_forward(x, &attended)
    }

    /// `BertSelfOutput`, `BertIntermediate`, `BertOutput`: token-wise, so padded or packed alike.
    fn feed_forward(&self, x: &Tensor, attended: &Tensor) -> Result<Tensor> {
        let x = self.attention_output.forward(attended, x)?;
        let inner = self.act.forward(&self.intermediate.forward(&x)?)?;
        self.output.forward(&inner, &x)
    }
}

/// A cross-encoder of one of the registered families: embeddings, the layers, and the head (two
/// dense layers on the first token, named as its [`Family`] says).
pub struct Encoder {
    embeddings: BertEmbeddings,
    layers: Vec<BertLayer>,
    /// The head's first dense layer (`BertPooler`'s dense, `classifier.dense`, `pre_classifier`).
    pooler: Linear,
    pooler_act: HeadAct,
    /// The head's last layer, `[num_labels, hidden]`.
    classifier: Linear,
    pad_token_id: u32,
    max_positions: usize,
    /// DeBERTa's relative embeddings, when its attention is disentangled.
    relative: Option<RelativeTable>,
}

impl Encoder {
    /// The encoder of a family of the shared layout (`name` for messages).
    pub fn load(
        vb: VarBuilder,
        c: &EncoderConfig,
        family: &BertLayout,
        name: &str,
    ) -> Result<Self> {
        let (h, labels) = (c.hidden_size, c.num_labels());
        let root = vb.pp(family.weights.root);
        let layer_list = root.pp(family.weights.layers);
        let layers = (0..c.num_hidden_layers)
            .map(|i| BertLayer::load(layer_list.pp(i), c, family))
            .collect::<Result<Vec<_>>>()?;
        // DeBERTa: `<root>.encoder.rel_embeddings`, through `<root>.encoder.LayerNorm` once here
        // (it is the same for every layer and every pass).
        let relative = match &c.relative {
            None => None,
            Some(params) => {
                let encoder = root.pp("encoder");
                let table = encoder
                    .pp("rel_embeddings")
                    .get((2 * params.span, h), "weight")?;
                let table = if params.norm {
                    layer_norm(h, c.layer_norm_eps, encoder.pp("LayerNorm"))?.forward(&table)?
                } else {
                    table
                };
                Some(RelativeTable {
                    table,
                    params: params.clone(),
                })
            }
        };
        Ok(Self {
            embeddings: BertEmbeddings::load(root.clone(), c, family, name)?,
            layers,
            relative,
            pooler: candle_nn::linear(h, h, vb.pp(family.head.dense))?,
            pooler_act: family.head.act,
            classifier: candle_nn::linear(h, labels, vb.pp(family.head.classifier))?,
            pad_token_id: c.pad_token_id,
            max_positions: family.max_positions(c),
        })
    }

    fn check_positions(&self, batch: &Batch) -> Result<()> {
        if batch.max_length > self.max_positions {
            candle_core::bail!(
                "a pair of {} tokens exceeds the model's {} positions",
                batch.max_length,
                self.max_positions
            );
        }
        Ok(())
    }

    /// Logits `[pairs, num_labels]`, computed on the packed tokens (no padding).
    pub fn forward(&self, batch: &Batch, device: &Device) -> Result<Tensor> {
        self.check_positions(batch)?;
        let ranges: Vec<(usize, usize)> = (0..batch.pairs())
            .map(|i| {
                let r = batch.range(i);
                (r.start, r.len())
            })
            .collect();
        let mut x = self.embeddings.forward(
            &batch.input_ids,
            &batch.token_type_ids,
            &batch.position_ids,
            device,
        )?;
        for layer in &self.layers {
            x = layer.forward_packed(&x, &ranges, self.relative.as_ref())?;
        }
        // The head (`BertPooler` and the classifier) on the first token of each pair.
        let firsts = Tensor::from_slice(
            &batch.cu_seq_lengths[..batch.pairs()],
            batch.pairs(),
            device,
        )?;
        self.head(&x.index_select(&firsts, 0)?)
    }

    /// The head (`BertPooler`'s dense + tanh, or the family's) and the classifier, on
    /// `[pairs, hidden]` first tokens.
    fn head(&self, first: &Tensor) -> Result<Tensor> {
        let pooled = self.pooler.forward(first)?;
        let pooled = self.pooler_act.forward(&pooled)?;
        let logits = self.classifier.forward(&pooled)?;
        if logits.dtype() == DType::F32 {
            Ok(logits)
        } else {
            logits.to_dtype(DType::F32)
        }
    }

    /// Logits `[pairs, num_labels]` over the padded rectangle `[pairs, longest]`, as transformers
    /// computes a padded batch.
    pub fn forward_padded(&self, batch: &Batch, device: &Device) -> Result<Tensor> {
        self.check_positions(batch)?;
        let p = batch.padded(self.pad_token_id);
        let (pairs, length) = (p.pairs, p.length);
        // transformers' extended attention mask: 0 where attended, the dtype's minimum where padded.
        let dtype = self.classifier.weight().dtype();
        let bias: Vec<f32> = p
            .attention_mask
            .iter()
            .map(|&m| if m == 1 { 0.0 } else { f32::MIN })
            .collect();
        let mask_bias = Tensor::from_vec(bias, (pairs, 1, 1, length), device)?.to_dtype(dtype)?;

        let mut x =
            self.embeddings
                .forward(&p.input_ids, &p.token_type_ids, &p.position_ids, device)?;
        for layer in &self.layers {
            x = layer.forward(&x, &mask_bias, pairs, length, self.relative.as_ref())?;
        }
        let first = x.reshape((pairs, length, ()))?.i((.., 0))?;
        self.head(&first)
    }
}

/// The values of a candle tensor as a flat f32 vector.
pub(crate) fn values(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

pub(crate) fn fused_weight(linear: &Linear) -> Result<Weight> {
    let (outputs, inputs) = linear.weight().dims2()?;
    let bias = match linear.bias() {
        Some(b) => values(b)?,
        None => vec![0.0; outputs],
    };
    Ok(Weight::from_out_in(
        &values(linear.weight())?,
        bias,
        outputs,
        inputs,
    ))
}

pub(crate) fn fused_norm(norm: &LayerNorm) -> Result<Norm> {
    let gamma = values(norm.weight())?;
    let beta = match norm.bias() {
        Some(b) => values(b)?,
        None => vec![0.0; gamma.len()],
    };
    Ok(Norm {
        gamma,
        beta,
        eps: norm.eps() as f32,
    })
}

impl Encoder {
    /// The same weights laid out for the fused CPU pass ([`FusedBert`]).
    pub fn fused(&self) -> Result<FusedBert> {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                let a = &l.attention;
                let (q, k, v) = (
                    fused_weight(&a.query)?,
                    fused_weight(&a.key)?,
                    fused_weight(&a.value)?,
                );
                let (h, out) = (q.inputs, q.outputs);
                // [in, 3 * out]: each input row holds its query, key and value weights side by side.
                let mut w = Vec::with_capacity(h * 3 * out);
                for row in 0..h {
                    for part in [&q, &k, &v] {
                        w.extend_from_slice(&part.w[row * out..(row + 1) * out]);
                    }
                }
                let bias = [q.bias, k.bias, v.bias].concat();
                Ok(FusedLayer {
                    qkv: FusedLinear::F32(Weight {
                        w,
                        bias,
                        inputs: h,
                        outputs: 3 * out,
                    }),
                    attention_output: FusedLinear::F32(fused_weight(&l.attention_output.dense)?),
                    attention_norm: Some(fused_norm(&l.attention_output.layer_norm)?),
                    intermediate: FusedLinear::F32(fused_weight(&l.intermediate)?),
                    act: l.act.kernel(),
                    gated: false,
                    output: FusedLinear::F32(fused_weight(&l.output.dense)?),
                    output_norm: fused_norm(&l.output.layer_norm)?,
                    rotary: None,
                    window: None,
                    relative: match &self.relative {
                        None => None,
                        Some(rel) => {
                            let (keys, queries) = (&a.key, &a.query);
                            let project = |on: bool, l: &Linear| -> Result<Option<Vec<f32>>> {
                                on.then(|| values(&l.forward(&rel.table)?)).transpose()
                            };
                            Some(FusedRelative {
                                params: rel.params.clone(),
                                pos_key: project(rel.params.c2p, keys)?,
                                pos_query: project(rel.params.p2c, queries)?,
                            })
                        }
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let e = &self.embeddings;
        Ok(FusedBert {
            embeddings: Embeddings {
                word: values(e.word_embeddings.embeddings())?,
                position: match &e.position_embeddings {
                    Some(table) => values(table.embeddings())?,
                    None => Vec::new(),
                },
                position_offset: e.position_offset,
                token_type: match &e.token_type_embeddings {
                    Some(table) => values(table.embeddings())?,
                    None => Vec::new(),
                },
                norm: fused_norm(&e.layer_norm)?,
                width: e.word_embeddings.hidden_size(),
                projection: e.projection.as_ref().map(fused_weight).transpose()?,
            },
            layers,
            pre_norm: false,
            final_norm: None,
            pooling: Pooling::First,
            pooler: fused_weight(&self.pooler)?,
            pooler_act: self.pooler_act,
            head_norm: None,
            classifier: fused_weight(&self.classifier)?,
            hidden: self.pooler.weight().dims2()?.1,
            heads: self.layers.first().map_or(1, |l| l.attention.heads),
            max_positions: self.max_positions,
            scratch: Default::default(),
        })
    }
}
