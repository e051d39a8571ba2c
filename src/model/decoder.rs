//! Decoder-only rerankers (Qwen2, Qwen3, Gemma; transformers' `models/{qwen2,qwen3,gemma}`) on
//! xbench's fused CPU kernels: a causal LM reads a prompt holding the query and one document
//! ([`crate::prompt`]) and is scored by the logits of answer tokens at the prompt's last token,
//! or a converted `*ForSequenceClassification` checkpoint by its `score` head there.
//!
//! Each layer: `x += o(attention(rotary(qk_norm(RMSNorm(x) · Wqkv))))` (grouped-query, causal),
//! then `x += down(act(gate(RMSNorm(x))) · up(RMSNorm(x)))`; a final RMSNorm. Qwen2 has biases on
//! Q/K/V; Qwen3 per-head RMSNorms of queries and keys and an explicit `head_dim`; Gemma scales the
//! embeddings by `sqrt(hidden)`, multiplies its norms by `1 + weight` and uses GELU (tanh). Only the
//! last token of each pair reaches the final norm, and only the answer tokens' rows of the output
//! embedding (`lm_head`, or the input embedding where they are tied) are ever multiplied: never
//! the whole vocabulary.
//!
//! **Shared prefixes.** Consecutive pairs of a batch that start with the same tokens (a request's
//! pairs share the system prompt, instruction and query) are laid out as the prefix once followed
//! by each pair's remaining tokens, which attend to the prefix's keys and values: the prefix is
//! computed once, not once per pair. Causal attention makes this exact (a prefix token never sees
//! what follows it).

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;
use serde::Deserialize;

use super::encoder::Activation;
use super::fused::{FusedError, IntWidth, CALIBRATED_ALPHA};
use super::{quant_cache, ModelError};
use crate::batch::Batch;
use xbench_kernels::decoder::{
    causal_attention, gated, prepare_qkv, rms_norm_into, Gqa, HeadNorms, RmsNorm, Segment,
};
use xbench_kernels::half::HalfKind;
use xbench_kernels::matmul::{Linear, Weight};
use xbench_kernels::rows::Act;

/// The decoder architectures xbench computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderArch {
    Qwen2,
    Qwen3,
    Gemma,
}

/// What scores a pair: answer tokens' rows of the output embedding (a causal LM), or a
/// classification head (`score`, a converted `*ForSequenceClassification`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderHead {
    AnswerTokens,
    Classifier,
}

/// The keys of `config.json` that change the computation, transformers' defaults where a key is
/// missing.
#[derive(Debug, Deserialize)]
struct RawConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    #[serde(default = "default_positions")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    attention_bias: Option<bool>,
    #[serde(default)]
    use_sliding_window: bool,
    #[serde(default)]
    max_window_layers: Option<usize>,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
    #[serde(default)]
    num_labels: Option<usize>,
    #[serde(default)]
    id2label: Option<BTreeMap<String, String>>,
    /// Gemma's encoder variants (EmbeddingGemma) attend both ways.
    #[serde(default)]
    use_bidirectional_attention: Option<bool>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_positions() -> usize {
    32768
}

/// A decoder's config, resolved and checked.
#[derive(Debug, Clone)]
pub struct DecoderConfig {
    pub arch: DecoderArch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub shape: Gqa,
    pub act: Act,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on the Q/K/V projections, and on the attention's output projection.
    pub qkv_bias: bool,
    pub o_bias: bool,
    /// A classification head's labels (`*ForSequenceClassification`).
    pub num_labels: usize,
    pub labels: Vec<String>,
}

impl DecoderConfig {
    /// Reads `config.json`; what xbench does not compute is refused by name.
    pub fn read(path: &Path, text: &str, arch: DecoderArch) -> Result<Self, ModelError> {
        let c: RawConfig = super::parse_json(path, text)?;
        let invalid = |message: String| ModelError::InvalidConfig {
            path: path.to_path_buf(),
            message,
        };
        let heads = c.num_attention_heads;
        if heads == 0 {
            return Err(invalid("num_attention_heads is 0".into()));
        }
        let kv_heads = c.num_key_value_heads.unwrap_or(heads);
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(invalid(format!(
                "num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
            )));
        }
        let head_dim = match c.head_dim {
            Some(d) => d,
            None if c.hidden_size.is_multiple_of(heads) => c.hidden_size / heads,
            None => {
                return Err(invalid(format!(
                    "hidden_size {} is not a multiple of num_attention_heads {heads}, and head_dim is not set",
                    c.hidden_size
                )))
            }
        };
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(invalid(format!(
                "head_dim {head_dim} is odd; rotary positions need pairs of dimensions"
            )));
        }
        let act_name = c.hidden_act.clone().unwrap_or_else(|| match arch {
            DecoderArch::Gemma => "gelu_pytorch_tanh".into(),
            _ => "silu".into(),
        });
        let act = match (arch, act_name.as_str()) {
            // transformers reads Gemma's legacy "gelu" as the tanh approximation it was trained
            // with.
            (DecoderArch::Gemma, "gelu") => Act::GeluTanh,
            (_, name) => serde_json::from_value::<Activation>(serde_json::Value::String(
                name.to_string(),
            ))
            .map(Activation::kernel)
            .map_err(|_| {
                invalid(format!(
                    "hidden_act \"{name}\" is not supported; supported: silu, gelu, gelu_new, gelu_pytorch_tanh, relu"
                ))
            })?,
        };
        if c.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(invalid(
                "rope_scaling is set; only default rotary positions are supported".into(),
            ));
        }
        let mut rope_theta = c.rope_theta;
        if let Some(p) = c.rope_parameters.as_ref().filter(|p| !p.is_null()) {
            let kind = p
                .get("rope_type")
                .and_then(|t| t.as_str())
                .unwrap_or("default");
            if kind != "default" {
                return Err(invalid(format!(
                    "rope_parameters.rope_type \"{kind}\" is not supported; supported: default"
                )));
            }
            if let Some(t) = p.get("rope_theta").and_then(|t| t.as_f64()) {
                rope_theta = Some(t);
            }
        }
        let sliding = match &c.layer_types {
            Some(kinds) => kinds.iter().any(|k| k != "full_attention"),
            None => {
                c.use_sliding_window
                    && c.max_window_layers.unwrap_or(c.num_hidden_layers) < c.num_hidden_layers
            }
        };
        if c.use_bidirectional_attention == Some(true) {
            return Err(invalid(
                "use_bidirectional_attention is true: not a causal LM; a generative reranker reads its prompt causally".into(),
            ));
        }
        if sliding {
            return Err(invalid(
                "some layers use sliding-window attention (use_sliding_window / layer_types); only full attention is supported".into(),
            ));
        }
        let (qkv_bias, o_bias) = match arch {
            DecoderArch::Qwen2 => (true, false),
            DecoderArch::Qwen3 | DecoderArch::Gemma => {
                let b = c.attention_bias.unwrap_or(false);
                (b, b)
            }
        };
        let num_labels = c
            .num_labels
            .or_else(|| c.id2label.as_ref().map(|m| m.len()))
            .unwrap_or(2);
        let labels = (0..num_labels)
            .map(|i| {
                c.id2label
                    .as_ref()
                    .and_then(|m| m.get(&i.to_string()))
                    .cloned()
                    .unwrap_or_else(|| format!("LABEL_{i}"))
            })
            .collect();
        Ok(Self {
            arch,
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_hidden_layers: c.num_hidden_layers,
            shape: Gqa {
                q_heads: heads,
                kv_heads,
                head_dim,
            },
            act,
            rms_norm_eps: c.rms_norm_eps,
            rope_theta: rope_theta.unwrap_or(10_000.0),
            max_position_embeddings: c.max_position_embeddings,
            tie_word_embeddings: c.tie_word_embeddings.unwrap_or(arch == DecoderArch::Gemma),
            qkv_bias,
            o_bias,
            num_labels,
            labels,
        })
    }

    /// The rotary inverse frequencies, as transformers computes them in f32: `1 / theta^(2i/d)`.
    pub(crate) fn inv_freq(&self) -> Vec<f32> {
        let d = self.shape.head_dim;
        let theta = self.rope_theta as f32;
        (0..d / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / d as f32))
            .collect()
    }

    fn norm(&self, weight: Vec<f32>) -> RmsNorm {
        RmsNorm {
            weight,
            eps: self.rms_norm_eps as f32,
            offset: if self.arch == DecoderArch::Gemma {
                1.0
            } else {
                0.0
            },
        }
    }
}

/// One decoder layer, laid out for the kernels.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    pub input_norm: RmsNorm,
    /// Q, K and V side by side: `[hidden, (q_heads + 2 kv_heads) · head_dim]`.
    pub qkv: Linear,
    /// The Q/K/V biases (empty without them), added before the head norms and rotation.
    pub qkv_bias: Vec<f32>,
    pub head_norms: Option<HeadNorms>,
    pub o: Linear,
    pub post_norm: RmsNorm,
    /// Gate and up projections side by side: `[hidden, 2 · intermediate]`.
    pub gate_up: Linear,
    pub down: Linear,
}

/// A decoder reranker ready for the fused pass.
#[derive(Debug, Clone)]
pub struct FusedDecoder {
    /// `[vocab, hidden]`.
    pub embed: Vec<f32>,
    /// Gemma's `sqrt(hidden)`; 1 otherwise.
    pub embed_scale: f32,
    pub layers: Vec<DecoderLayer>,
    pub final_norm: RmsNorm,
    /// The rows that score: `[hidden → answers]` (the answer tokens' rows of the output embedding,
    /// or the classification head).
    pub head: Weight,
    pub shape: Gqa,
    pub hidden: usize,
    pub act: Act,
    pub inv_freq: Vec<f32>,
    pub max_positions: usize,
    /// Lay consecutive pairs that share a prefix out as the prefix once (on by default).
    pub share_prefix: bool,
}

/// The fewest tokens two pairs must share for their prefix to be computed once.
const MIN_SHARED: usize = 8;

/// Reads the tensor `name` as f32 values.
fn values(vb: &VarBuilder, shape: &[usize], name: &str) -> candle_core::Result<Vec<f32>> {
    vb.get(shape, name)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()
}

impl FusedDecoder {
    /// Loads the weights of `config`'s decoder from `files` in f32, converting each layer's
    /// products to `precision` as it is read (so an fp32 copy of the whole model never exists);
    /// the scoring rows are `answer_ids`' rows of the output embedding, or the `score` head. For
    /// int8 and int4, `calibration` pairs run through each layer in fp32 as it is read, measuring
    /// its products' input ranges before it is quantized. With `cached` (the stored arrays of every
    /// layer, from the cache of quantized layers, and the file they came from), each layer's
    /// products are made from them instead, and nothing is calibrated.
    pub fn load(
        weights: &[std::path::PathBuf],
        config: &DecoderConfig,
        head: DecoderHead,
        answer_ids: &[u32],
        precision: super::Precision,
        calibration: Option<&Batch>,
        cached: Option<quant_cache::Cached>,
    ) -> candle_core::Result<Self> {
        // SAFETY: as in load_encoder: memory-mapped read-only weight files.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(weights, DType::F32, &Device::Cpu) }?;
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let shape = config.shape;
        let (qw, kvw) = (shape.q_width(), shape.kv_heads * shape.head_dim);
        let model = vb.pp("model");
        let embed = values(&model, &[config.vocab_size, h], "embed_tokens.weight")?;
        let linear = |w: Vec<f32>, bias: Vec<f32>, outputs: usize, inputs: usize| {
            Linear::F32(Weight::from_out_in(&w, bias, outputs, inputs))
        };
        let inv_freq = config.inv_freq();
        let context = LayerContext {
            shape,
            act: config.act,
            inv_freq: &inv_freq,
        };
        let embed_scale = match config.arch {
            DecoderArch::Gemma => (h as f64).sqrt() as f32,
            _ => 1.0,
        };
        let integer = matches!(precision, super::Precision::Int8 | super::Precision::Int4);
        let mut cached = cached.map(|(path, layers)| (path, layers.into_iter()));
        let mut calibrating = calibration
            .filter(|b| integer && !b.is_empty() && cached.is_none())
            .map(|b| Pass::new(&embed, embed_scale, h, Layout::of(b, true)));
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let vb = model.pp("layers").pp(l);
            let attn = vb.pp("self_attn");
            let mut w = values(&attn, &[qw, h], "q_proj.weight")?;
            w.extend(values(&attn, &[kvw, h], "k_proj.weight")?);
            w.extend(values(&attn, &[kvw, h], "v_proj.weight")?);
            let qkv_bias = if config.qkv_bias {
                let mut b = values(&attn, &[qw], "q_proj.bias")?;
                b.extend(values(&attn, &[kvw], "k_proj.bias")?);
                b.extend(values(&attn, &[kvw], "v_proj.bias")?);
                b
            } else {
                Vec::new()
            };
            let width = shape.width();
            let qkv = linear(w, vec![0.0; width], width, h);
            let head_norms = match config.arch {
                DecoderArch::Qwen3 => Some(HeadNorms {
                    q: config.norm(values(&attn, &[shape.head_dim], "q_norm.weight")?),
                    k: config.norm(values(&attn, &[shape.head_dim], "k_norm.weight")?),
                }),
                _ => None,
            };
            let o_bias = if config.o_bias {
                values(&attn, &[h], "o_proj.bias")?
            } else {
                vec![0.0; h]
            };
            let o = linear(values(&attn, &[h, qw], "o_proj.weight")?, o_bias, h, qw);
            let mlp = vb.pp("mlp");
            let mut w = values(&mlp, &[i, h], "gate_proj.weight")?;
            w.extend(values(&mlp, &[i, h], "up_proj.weight")?);
            let gate_up = linear(w, vec![0.0; 2 * i], 2 * i, h);
            let down = linear(
                values(&mlp, &[h, i], "down_proj.weight")?,
                vec![0.0; h],
                h,
                i,
            );
            let mut layer = DecoderLayer {
                input_norm: config.norm(values(&vb, &[h], "input_layernorm.weight")?),
                qkv,
                qkv_bias,
                head_norms,
                o,
                post_norm: config.norm(values(&vb, &[h], "post_attention_layernorm.weight")?),
                gate_up,
                down,
            };
            if let Some((path, stored)) = cached.as_mut() {
                let four = stored.next().ok_or_else(|| {
                    candle_core::Error::Msg(format!("{} holds too few layers", path.display()))
                })?;
                let products = [&layer.qkv, &layer.o, &layer.gate_up, &layer.down];
                let [qkv, o, gate_up, down] =
                    quant_cache::convert(path, l, &quant_cache::DECODER, products, four)
                        .map_err(candle_core::Error::Msg)?;
                (layer.qkv, layer.o, layer.gate_up, layer.down) = (qkv, o, gate_up, down);
                layers.push(layer);
                continue;
            }
            let ranges = calibrating.as_mut().map(|pass| {
                let mut ranges: [Vec<f32>; 4] = Default::default();
                pass.layer(&context, &layer, &mut |product, x, columns| {
                    let seen = &mut ranges[product];
                    if seen.is_empty() {
                        *seen = vec![0f32; columns];
                    }
                    for row in x.chunks_exact(columns) {
                        for (m, v) in seen.iter_mut().zip(row) {
                            *m = m.max(v.abs());
                        }
                    }
                });
                ranges
            });
            layer.convert(precision, ranges.as_ref());
            layers.push(layer);
        }
        let final_norm = config.norm(values(&model, &[h], "norm.weight")?);
        let head = match head {
            DecoderHead::Classifier => {
                let n = config.num_labels;
                let w = values(&vb, &[n, h], "score.weight")?;
                let bias = if vb.contains_tensor("score.bias") {
                    values(&vb, &[n], "score.bias")?
                } else {
                    vec![0.0; n]
                };
                Weight::from_out_in(&w, bias, n, h)
            }
            DecoderHead::AnswerTokens => {
                let rows = |table: &[f32]| -> Vec<f32> {
                    answer_ids
                        .iter()
                        .flat_map(|&id| table[id as usize * h..][..h].iter().copied())
                        .collect()
                };
                if let Some(&id) = answer_ids
                    .iter()
                    .find(|&&id| id as usize >= config.vocab_size)
                {
                    candle_core::bail!(
                        "answer token id {id} is outside the model's vocabulary of {}",
                        config.vocab_size
                    );
                }
                let w = if config.tie_word_embeddings {
                    rows(&embed)
                } else {
                    // Only the answer tokens' rows of lm_head are kept.
                    let table = vb.get((config.vocab_size, h), "lm_head.weight")?;
                    let ids = Tensor::from_slice(answer_ids, answer_ids.len(), &Device::Cpu)?;
                    table
                        .index_select(&ids, 0)?
                        .flatten_all()?
                        .to_vec1::<f32>()?
                };
                Weight::from_out_in(&w, vec![0.0; answer_ids.len()], answer_ids.len(), h)
            }
        };
        Ok(Self {
            embed,
            embed_scale,
            layers,
            final_norm,
            head,
            shape,
            hidden: h,
            act: config.act,
            inv_freq,
            max_positions: config.max_position_embeddings,
            share_prefix: true,
        })
    }

    /// Logits per pair.
    pub fn num_labels(&self) -> usize {
        self.head.outputs
    }

    /// Bytes of weights the layers' products read.
    pub fn layer_weight_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| {
                l.qkv.weight_bytes()
                    + l.o.weight_bytes()
                    + l.gate_up.weight_bytes()
                    + l.down.weight_bytes()
            })
            .sum()
    }

    /// Logits `[pairs, labels]` at each pair's last token, row-major. Runs on the caller's rayon
    /// pool.
    pub fn forward(&self, batch: &Batch) -> Result<Vec<f32>, FusedError> {
        let vocab = self.embed.len() / self.hidden;
        if let Some(&id) = batch.input_ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(FusedError::TokenId { id, vocab });
        }
        if batch.max_length > self.max_positions {
            return Err(FusedError::Position {
                position: batch.max_length as u32 - 1,
                limit: self.max_positions,
            });
        }
        let pairs = batch.pairs();
        if pairs == 0 {
            return Ok(Vec::new());
        }
        let layout = Layout::of(batch, self.share_prefix);
        let h = self.hidden;
        let mut pass = Pass::new(&self.embed, self.embed_scale, h, layout);
        let context = self.context();
        for layer in &self.layers {
            pass.layer(&context, layer, &mut |_, _, _| {});
        }
        let mut last = Vec::with_capacity(pairs * h);
        for &t in &pass.layout.last {
            last.extend_from_slice(&pass.x[t * h..][..h]);
        }
        let mut normed = vec![0f32; pairs * h];
        rms_norm_into(&last, &self.final_norm, &mut normed);
        let labels = self.num_labels();
        let mut logits = vec![0f32; pairs * labels];
        self.head.matmul_into(&normed, &mut logits, false);
        add_bias(&mut logits, &self.head.bias);
        Ok(logits)
    }

    fn context(&self) -> LayerContext<'_> {
        LayerContext {
            shape: self.shape,
            act: self.act,
            inv_freq: &self.inv_freq,
        }
    }
}

/// What every layer's pass reads besides its weights.
struct LayerContext<'a> {
    shape: Gqa,
    act: Act,
    inv_freq: &'a [f32],
}

/// Sees the input of each of a layer's products: `(product, rows, columns)`, products numbered 0
/// Q/K/V, 1 attention output, 2 gate/up, 3 down.
type Observer<'a> = dyn FnMut(usize, &[f32], usize) + 'a;

/// One forward pass's tokens and activation buffers.
struct Pass {
    layout: Layout,
    x: Vec<f32>,
    normed: Vec<f32>,
    qkv: Vec<f32>,
    context: Vec<f32>,
    up: Vec<f32>,
    act: Vec<f32>,
}

impl Pass {
    /// The embeddings of `layout`'s tokens (times `scale`).
    fn new(embed: &[f32], scale: f32, h: usize, layout: Layout) -> Self {
        let tokens = layout.ids.len();
        let mut x = vec![0f32; tokens * h];
        x.par_chunks_mut(h)
            .zip(layout.ids.par_iter())
            .with_min_len(16)
            .for_each(|(row, &id)| {
                let e = &embed[id as usize * h..][..h];
                for (o, v) in row.iter_mut().zip(e) {
                    *o = v * scale;
                }
            });
        Self {
            layout,
            x,
            normed: Vec::new(),
            qkv: Vec::new(),
            context: Vec::new(),
            up: Vec::new(),
            act: Vec::new(),
        }
    }

    /// Runs `layer` over the pass's tokens, showing `observe` each product's input.
    fn layer(&mut self, c: &LayerContext<'_>, layer: &DecoderLayer, observe: &mut Observer<'_>) {
        let shape = c.shape;
        let h = layer.post_norm.weight.len();
        let tokens = self.layout.ids.len();
        let inner = layer.gate_up.outputs() / 2;
        let sized = |v: &mut Vec<f32>, n: usize| v.resize(n, 0.0);
        sized(&mut self.normed, tokens * h);
        sized(&mut self.qkv, tokens * shape.width());
        sized(&mut self.context, tokens * shape.q_width());
        sized(&mut self.up, tokens * 2 * inner);
        sized(&mut self.act, tokens * inner);
        rms_norm_into(&self.x, &layer.input_norm, &mut self.normed);
        observe(0, &self.normed, h);
        layer.qkv.matmul_into(&self.normed, &mut self.qkv, false);
        prepare_qkv(
            &mut self.qkv,
            shape,
            &layer.qkv_bias,
            layer.head_norms.as_ref(),
            &self.layout.positions,
            c.inv_freq,
        );
        causal_attention(&self.qkv, shape, &self.layout.segments, &mut self.context);
        observe(1, &self.context, shape.q_width());
        layer.o.matmul_into(&self.context, &mut self.x, true);
        add_bias(&mut self.x, layer.o.bias());
        rms_norm_into(&self.x, &layer.post_norm, &mut self.normed);
        observe(2, &self.normed, h);
        layer.gate_up.matmul_into(&self.normed, &mut self.up, false);
        gated(&self.up, inner, c.act, &mut self.act);
        observe(3, &self.act, inner);
        layer.down.matmul_into(&self.act, &mut self.x, true);
        add_bias(&mut self.x, layer.down.bias());
    }
}

impl DecoderLayer {
    /// The four products in `precision`: bf16 / fp16 weights, or int8 / int4 weights. With the
    /// per-channel ranges of the products' inputs measured on calibration pairs (`ranges`, in
    /// product order), each product is smoothed by them (SmoothQuant, α
    /// [`CALIBRATED_ALPHA`]); without, Q/K/V and gate/up are smoothed (α 0.5) by the gains of
    /// the RMSNorm they read, the other two rounded plainly.
    fn convert(&mut self, precision: super::Precision, ranges: Option<&[Vec<f32>; 4]>) {
        use super::Precision;
        let width = match precision {
            Precision::Fp32 => return,
            Precision::Bf16 | Precision::Fp16 => {
                let kind = if precision == Precision::Bf16 {
                    HalfKind::Bf16
                } else {
                    HalfKind::F16
                };
                for p in [
                    &mut self.qkv,
                    &mut self.o,
                    &mut self.gate_up,
                    &mut self.down,
                ] {
                    *p = p.to_half(kind);
                }
                return;
            }
            Precision::Int8 => IntWidth::Int8,
            Precision::Int4 => IntWidth::Int4,
        };
        if let Some(ranges) = ranges {
            let a = CALIBRATED_ALPHA;
            let products = [
                &mut self.qkv,
                &mut self.o,
                &mut self.gate_up,
                &mut self.down,
            ];
            for (p, range) in products.into_iter().zip(ranges) {
                *p = match width {
                    IntWidth::Int8 => p.to_int8_smoothed(range, a),
                    IntWidth::Int4 => p.to_int4_smoothed(range, a),
                };
            }
            return;
        }
        let gains = |n: &RmsNorm| -> Vec<f32> { n.gains().iter().map(|g| g.abs()).collect() };
        let smoothed = |l: &Linear, activation: &[f32]| match width {
            IntWidth::Int8 => l.to_int8_smoothed(activation, 0.5),
            IntWidth::Int4 => l.to_int4_smoothed(activation, 0.5),
        };
        let plain = |l: &Linear| match width {
            IntWidth::Int8 => l.to_int8(),
            IntWidth::Int4 => l.to_int4(),
        };
        self.qkv = smoothed(&self.qkv, &gains(&self.input_norm));
        self.o = plain(&self.o);
        self.gate_up = smoothed(&self.gate_up, &gains(&self.post_norm));
        self.down = plain(&self.down);
    }
}

/// `x[r] += bias` for every row (nothing for an all-zero bias).
fn add_bias(x: &mut [f32], bias: &[f32]) {
    if bias.iter().all(|&b| b == 0.0) {
        return;
    }
    x.par_chunks_mut(bias.len())
        .with_min_len(64)
        .for_each(|row| {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        });
}

/// The tokens a forward pass computes: each group of consecutive pairs sharing a prefix as the
/// prefix once, then each pair's remaining tokens; each pair alone otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub ids: Vec<u32>,
    pub positions: Vec<u32>,
    pub segments: Vec<Segment>,
    /// The row of each pair's last token.
    pub last: Vec<usize>,
}

impl Layout {
    /// Lays `batch` out; with `share`, consecutive pairs sharing at least [`MIN_SHARED`] leading
    /// tokens (every pair keeping one of its own) compute them once.
    pub fn of(batch: &Batch, share: bool) -> Self {
        let pair = |i: usize| &batch.input_ids[batch.range(i)];
        let mut out = Layout {
            ids: Vec::with_capacity(batch.total_tokens()),
            positions: Vec::with_capacity(batch.total_tokens()),
            segments: Vec::new(),
            last: Vec::with_capacity(batch.pairs()),
        };
        let mut i = 0;
        while i < batch.pairs() {
            let first = pair(i);
            // The group i..end and the prefix its pairs share.
            let mut shared = first.len().saturating_sub(1);
            let mut end = i + 1;
            if share {
                while end < batch.pairs() {
                    let next = pair(end);
                    let common = first.iter().zip(next).take_while(|(a, b)| a == b).count();
                    let candidate = shared.min(common).min(next.len().saturating_sub(1));
                    if candidate < MIN_SHARED {
                        break;
                    }
                    shared = candidate;
                    end += 1;
                }
            }
            if end - i == 1 {
                out.push(first, 0, None);
            } else {
                let start = out.ids.len();
                out.push(&first[..shared], 0, None);
                out.last.pop();
                for j in i..end {
                    out.push(&pair(j)[shared..], shared, Some((start, shared)));
                }
            }
            i = end;
        }
        out
    }

    fn push(&mut self, ids: &[u32], first_position: usize, context: Option<(usize, usize)>) {
        let start = self.ids.len();
        self.ids.extend_from_slice(ids);
        self.positions
            .extend((first_position..first_position + ids.len()).map(|p| p as u32));
        self.segments.push(Segment {
            start,
            len: ids.len(),
            context,
        });
        self.last.push(start + ids.len().saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_sharing_a_prefix_compute_it_once() {
        let mut b = Batch::new();
        let prefix: Vec<u32> = (1..=10).collect();
        for tail in [[20u32, 21].as_slice(), &[30], &[40, 41, 42]] {
            let ids: Vec<u32> = prefix.iter().chain(tail).copied().collect();
            b.push(&ids, &vec![0; ids.len()]);
        }
        b.push(&[7, 8, 9], &[0, 0, 0]);
        let l = Layout::of(&b, true);
        assert_eq!(l.ids.len(), 10 + 2 + 1 + 3 + 3);
        assert_eq!(
            l.segments,
            vec![
                Segment {
                    start: 0,
                    len: 10,
                    context: None
                },
                Segment {
                    start: 10,
                    len: 2,
                    context: Some((0, 10))
                },
                Segment {
                    start: 12,
                    len: 1,
                    context: Some((0, 10))
                },
                Segment {
                    start: 13,
                    len: 3,
                    context: Some((0, 10))
                },
                Segment {
                    start: 16,
                    len: 3,
                    context: None
                },
            ]
        );
        assert_eq!(l.last, vec![11, 12, 15, 18]);
        assert_eq!(&l.positions[10..13], &[10, 11, 10]);
        let alone = Layout::of(&b, false);
        assert_eq!(alone.ids, b.input_ids);
        assert_eq!(alone.positions, b.position_ids);
        assert_eq!(alone.last, vec![11, 22, 35, 38]);
        // Two equal pairs still keep a token each of their own.
        let mut b = Batch::new();
        b.push(&prefix, &[0; 10]);
        b.push(&prefix, &[0; 10]);
        let l = Layout::of(&b, true);
        assert_eq!(
            l.segments[0],
            Segment {
                start: 0,
                len: 9,
                context: None
            }
        );
        assert_eq!(l.last, vec![9, 10]);
    }
}
