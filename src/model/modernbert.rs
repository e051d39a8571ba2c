//! ModernBERT (`ModernBertForSequenceClassification`, transformers'
//! `models/modernbert/modeling_modernbert.py`) in candle, and laid out for the fused pass.
//!
//! Pre-norm layers over token embeddings alone (no position table): each layer normalizes its
//! attention block's input (except the first, which reads the normalized embeddings), rotates
//! queries and keys by their positions (rotary, `rope_theta` per layer type), attends globally or
//! within a window of `local_attention / 2` tokens on each side (`layer_types`, else every
//! `global_attn_every_n_layers`-th layer global), then normalizes the MLP block's input, whose
//! `Wi` gives `[input | gate]` halves and the block `Wo · (act(input) * gate)`. A final norm, then
//! the head: `cls` or `mean` pooling, dense → act → norm, classifier. Every bias and the norms'
//! shifts are optional (`attention_bias`, `mlp_bias`, `norm_bias`, `classifier_bias`).

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

use super::encoder::{attend_in_blocks, fused_norm, fused_weight, values, Activation};
use super::family::HeadAct;
use super::fused::{Embeddings, FusedBert, FusedLayer, Pooling};
use super::ModelError;
use crate::batch::Batch;
use xbench_kernels::matmul::Linear as FusedLinear;

/// The keys of a ModernBERT `config.json` that change the computation, with transformers'
/// defaults (`ModernBertConfig`), both its current names (`layer_types`, `rope_parameters`) and
/// the older ones checkpoints on the hub still carry (`global_attn_every_n_layers`,
/// `global_rope_theta`, `local_rope_theta`).
#[derive(Debug, Clone, Deserialize)]
struct RawConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default = "gelu")]
    hidden_activation: Activation,
    #[serde(default = "default_positions")]
    max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    norm_eps: f64,
    #[serde(default)]
    norm_bias: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default)]
    classifier_bias: bool,
    #[serde(default = "cls")]
    classifier_pooling: String,
    #[serde(default = "gelu_name")]
    classifier_activation: String,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
    #[serde(default = "three")]
    global_attn_every_n_layers: usize,
    #[serde(default = "default_local")]
    local_attention: usize,
    #[serde(default)]
    rope_parameters: Option<BTreeMap<String, Option<RopeParameters>>>,
    #[serde(default)]
    global_rope_theta: Option<f64>,
    #[serde(default)]
    local_rope_theta: Option<f64>,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pad_token_id: Option<u32>,
    #[serde(default)]
    num_labels: Option<usize>,
    #[serde(default)]
    id2label: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Deserialize)]
struct RopeParameters {
    #[serde(default)]
    rope_type: Option<String>,
    #[serde(default)]
    rope_theta: Option<f64>,
}

fn gelu() -> Activation {
    Activation::Gelu
}
fn gelu_name() -> String {
    "gelu".into()
}
fn cls() -> String {
    "cls".into()
}
fn default_positions() -> usize {
    8192
}
fn default_eps() -> f64 {
    1e-5
}
fn three() -> usize {
    3
}
fn default_local() -> usize {
    128
}

/// A ModernBERT config, resolved and checked.
#[derive(Debug, Clone)]
pub struct ModernBertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub hidden_activation: Activation,
    pub max_position_embeddings: usize,
    pub norm_eps: f64,
    pub norm_bias: bool,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub classifier_bias: bool,
    pub pooling: Pooling,
    pub classifier_activation: HeadAct,
    /// Per layer: `None` for global attention, `Some(w)` for a window of `w` tokens each side.
    pub windows: Vec<Option<usize>>,
    /// Rotary base of the global and of the local layers.
    pub global_theta: f64,
    pub local_theta: f64,
    pub pad_token_id: u32,
    pub num_labels: usize,
    pub labels: Vec<String>,
}

impl ModernBertConfig {
    /// Reads `config.json`; every option that changes the computation is honoured or refused by
    /// name.
    pub fn read(path: &Path, text: &str) -> std::result::Result<Self, ModelError> {
        let c: RawConfig = super::parse_json(path, text)?;
        let invalid = |message: String| ModelError::InvalidConfig {
            path: path.to_path_buf(),
            message,
        };
        if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return Err(invalid(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                c.hidden_size, c.num_attention_heads
            )));
        }
        if !(c.hidden_size / c.num_attention_heads).is_multiple_of(2) {
            return Err(invalid(
                "the head size (hidden_size / num_attention_heads) is odd; rotary positions need pairs of dimensions".into(),
            ));
        }
        let pooling = match c.classifier_pooling.as_str() {
            "cls" => Pooling::First,
            "mean" => Pooling::Mean,
            other => {
                return Err(invalid(format!(
                    "classifier_pooling \"{other}\" is not supported; supported: cls, mean"
                )))
            }
        };
        let classifier_activation = match c.classifier_activation.as_str() {
            "gelu" => HeadAct::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => HeadAct::GeluTanh,
            "relu" => HeadAct::Relu,
            "silu" | "swish" => HeadAct::Silu,
            "tanh" => HeadAct::Tanh,
            other => {
                return Err(invalid(format!(
                    "classifier_activation \"{other}\" is not supported; supported: gelu, gelu_new, gelu_pytorch_tanh, relu, silu, tanh"
                )))
            }
        };
        let kinds: Vec<String> = match &c.layer_types {
            Some(kinds) => kinds.clone(),
            None => {
                let every = c.global_attn_every_n_layers.max(1);
                (0..c.num_hidden_layers)
                    .map(|i| {
                        if i % every == 0 {
                            "full_attention".to_string()
                        } else {
                            "sliding_attention".to_string()
                        }
                    })
                    .collect()
            }
        };
        if kinds.len() != c.num_hidden_layers {
            return Err(invalid(format!(
                "layer_types lists {} layers, num_hidden_layers is {}",
                kinds.len(),
                c.num_hidden_layers
            )));
        }
        // transformers' `sliding_window` is half of `local_attention`; a query sees the keys at
        // most that far from it.
        let half_window = c.local_attention / 2;
        let windows = kinds
            .iter()
            .map(|k| match k.as_str() {
                "full_attention" => Ok(None),
                "sliding_attention" => Ok(Some(half_window)),
                other => Err(invalid(format!(
                    "layer type \"{other}\" is not supported; supported: full_attention, sliding_attention"
                ))),
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if c.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(invalid(
                "rope_scaling is set; only default rotary positions are supported".into(),
            ));
        }
        let theta = |kind: &str, old: Option<f64>, default: f64| {
            let params = c
                .rope_parameters
                .as_ref()
                .and_then(|p| p.get(kind).cloned().flatten());
            if let Some(t) = params.as_ref().and_then(|p| p.rope_type.as_deref()) {
                if t != "default" {
                    return Err(invalid(format!(
                        "rope_parameters.{kind}.rope_type \"{t}\" is not supported; supported: default"
                    )));
                }
            }
            Ok(params.and_then(|p| p.rope_theta).or(old).unwrap_or(default))
        };
        let global_theta = theta("full_attention", c.global_rope_theta, 160_000.0)?;
        let local_theta = theta("sliding_attention", c.local_rope_theta, 10_000.0)?;
        let num_labels = c
            .num_labels
            .or_else(|| c.id2label.as_ref().map(|m| m.len()))
            .unwrap_or(2);
        if num_labels == 0 {
            return Err(invalid("num_labels is 0".into()));
        }
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
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_hidden_layers: c.num_hidden_layers,
            num_attention_heads: c.num_attention_heads,
            hidden_activation: c.hidden_activation,
            max_position_embeddings: c.max_position_embeddings,
            norm_eps: c.norm_eps,
            norm_bias: c.norm_bias,
            attention_bias: c.attention_bias,
            mlp_bias: c.mlp_bias,
            classifier_bias: c.classifier_bias,
            pooling,
            classifier_activation,
            windows,
            global_theta,
            local_theta,
            pad_token_id: c.pad_token_id.unwrap_or(0),
            num_labels,
            labels,
        })
    }

    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The rotary inverse frequencies of layer `l`, as transformers computes them in f32:
    /// `1 / theta^(2i / d)`.
    fn inv_freq(&self, l: usize) -> Vec<f32> {
        let d = self.head_dim();
        let theta = match self.windows[l] {
            None => self.global_theta,
            Some(_) => self.local_theta,
        } as f32;
        (0..d / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / d as f32))
            .collect()
    }
}

fn norm(size: usize, bias: bool, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    let weight = vb.get(size, "weight")?;
    Ok(if bias {
        LayerNorm::new(weight, vb.get(size, "bias")?, eps)
    } else {
        LayerNorm::new_no_bias(weight, eps)
    })
}

/// One `ModernBertEncoderLayer`.
struct Layer {
    attn_norm: Option<LayerNorm>,
    wqkv: Linear,
    wo: Linear,
    mlp_norm: LayerNorm,
    wi: Linear,
    mlp_wo: Linear,
    act: Activation,
    inv_freq: Vec<f32>,
    window: Option<usize>,
}

/// A ModernBERT cross-encoder.
pub struct ModernBert {
    tok_embeddings: Embedding,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
    head_dense: Linear,
    head_act: HeadAct,
    head_norm: LayerNorm,
    classifier: Linear,
    pooling: Pooling,
    heads: usize,
    head_dim: usize,
    pad_token_id: u32,
    max_positions: usize,
}

/// The most negative value of `dtype`, what transformers adds to masked scores.
pub(crate) fn masked(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => -65504.0,
        DType::BF16 => -3.38e38,
        _ => f32::MIN,
    }
}

/// `cos` and `sin` of positions `0..len` times `inv_freq`, each `[len, d]` (the frequencies twice
/// over, as transformers concatenates them), in `dtype`.
pub(crate) fn rotary_tables(
    inv_freq: &[f32],
    d: usize,
    len: usize,
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let (mut cos, mut sin) = (Vec::with_capacity(len * d), Vec::with_capacity(len * d));
    for p in 0..len {
        let turns: Vec<(f32, f32)> = inv_freq.iter().map(|f| (p as f32 * f).sin_cos()).collect();
        for _ in 0..2 {
            sin.extend(turns.iter().map(|t| t.0));
            cos.extend(turns.iter().map(|t| t.1));
        }
    }
    Ok((
        Tensor::from_vec(cos, (len, d), device)?.to_dtype(dtype)?,
        Tensor::from_vec(sin, (len, d), device)?.to_dtype(dtype)?,
    ))
}

/// `x * cos + rotate_half(x) * sin` over `[.., len, d]` (computed in f32, as transformers does,
/// then back to `x`'s dtype).
pub(crate) fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let d = x.dim(candle_core::D::Minus1)?;
    let x1 = x.narrow(candle_core::D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(candle_core::D::Minus1, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], candle_core::D::Minus1)?;
    let (cos, sin) = (cos.to_dtype(DType::F32)?, sin.to_dtype(DType::F32)?);
    (x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?.to_dtype(dtype)
}

impl ModernBert {
    pub fn load(vb: VarBuilder, c: &ModernBertConfig) -> Result<Self> {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let model = vb.pp("model");
        let layers = (0..c.num_hidden_layers)
            .map(|l| {
                let vb = model.pp("layers").pp(l);
                Ok(Layer {
                    attn_norm: if l == 0 {
                        None
                    } else {
                        Some(norm(h, c.norm_bias, c.norm_eps, vb.pp("attn_norm"))?)
                    },
                    wqkv: candle_nn::linear_b(
                        h,
                        3 * h,
                        c.attention_bias,
                        vb.pp("attn").pp("Wqkv"),
                    )?,
                    wo: candle_nn::linear_b(h, h, c.attention_bias, vb.pp("attn").pp("Wo"))?,
                    mlp_norm: norm(h, c.norm_bias, c.norm_eps, vb.pp("mlp_norm"))?,
                    wi: candle_nn::linear_b(h, 2 * i, c.mlp_bias, vb.pp("mlp").pp("Wi"))?,
                    mlp_wo: candle_nn::linear_b(i, h, c.mlp_bias, vb.pp("mlp").pp("Wo"))?,
                    act: c.hidden_activation,
                    inv_freq: c.inv_freq(l),
                    window: c.windows[l],
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            tok_embeddings: candle_nn::embedding(
                c.vocab_size,
                h,
                model.pp("embeddings").pp("tok_embeddings"),
            )?,
            embeddings_norm: norm(
                h,
                c.norm_bias,
                c.norm_eps,
                model.pp("embeddings").pp("norm"),
            )?,
            layers,
            final_norm: norm(h, c.norm_bias, c.norm_eps, model.pp("final_norm"))?,
            head_dense: candle_nn::linear_b(h, h, c.classifier_bias, vb.pp("head").pp("dense"))?,
            head_act: c.classifier_activation,
            head_norm: norm(h, c.norm_bias, c.norm_eps, vb.pp("head").pp("norm"))?,
            classifier: candle_nn::linear(h, c.num_labels, vb.pp("classifier"))?,
            pooling: c.pooling,
            heads: c.num_attention_heads,
            head_dim: c.head_dim(),
            pad_token_id: c.pad_token_id,
            max_positions: c.max_position_embeddings,
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

    /// The window's additive mask for queries `first..first + n` over `keys` keys: `[n, keys]`,
    /// 0 where `|i - j| <= w`, the dtype's most negative value elsewhere.
    fn window_bias(
        w: usize,
        first: usize,
        n: usize,
        keys: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let low = masked(dtype);
        let bias: Vec<f32> = (first..first + n)
            .flat_map(|i| (0..keys).map(move |j| if i.abs_diff(j) <= w { 0.0 } else { low }))
            .collect();
        Tensor::from_vec(bias, (n, keys), device)?.to_dtype(dtype)
    }

    /// The MLP block: `Wo · (act(input) * gate)` with `[input | gate] = Wi · x`.
    fn mlp(layer: &Layer, x: &Tensor) -> Result<Tensor> {
        let up = layer.wi.forward(x)?;
        let width = up.dim(candle_core::D::Minus1)? / 2;
        let input = up.narrow(candle_core::D::Minus1, 0, width)?;
        let gate = up.narrow(candle_core::D::Minus1, width, width)?;
        layer.mlp_wo.forward(&(layer.act.forward(&input)? * gate)?)
    }

    /// Logits `[pairs, num_labels]` on the packed tokens: attention runs per pair.
    pub fn forward(&self, batch: &Batch, device: &Device) -> Result<Tensor> {
        self.check_positions(batch)?;
        let tokens = batch.total_tokens();
        let ids = Tensor::from_slice(&batch.input_ids, tokens, device)?;
        let mut x = self
            .embeddings_norm
            .forward(&self.tok_embeddings.forward(&ids)?)?;
        let dtype = x.dtype();
        let (h, d) = (self.heads * self.head_dim, self.head_dim);
        for layer in &self.layers {
            let input = match &layer.attn_norm {
                Some(n) => n.forward(&x)?,
                None => x.clone(),
            };
            let qkv = layer.wqkv.forward(&input)?;
            let mut contexts = Vec::with_capacity(batch.pairs());
            for i in 0..batch.pairs() {
                let r = batch.range(i);
                let (start, len) = (r.start, r.len());
                let part = |p: usize| -> Result<Tensor> {
                    qkv.narrow(0, start, len)?
                        .narrow(1, p * h, h)?
                        .reshape((len, self.heads, d))?
                        .transpose(0, 1)?
                        .contiguous()
                };
                let (cos, sin) = rotary_tables(&layer.inv_freq, self.head_dim, len, dtype, device)?;
                let q = rotate(&part(0)?, &cos, &sin)?;
                let k = rotate(&part(1)?, &cos, &sin)?;
                let v = part(2)?;
                let scale = 1.0 / (d as f64).sqrt();
                let bias = |first: usize, n: usize| -> Result<Option<Tensor>> {
                    layer
                        .window
                        .map(|w| Self::window_bias(w, first, n, len, dtype, device))
                        .transpose()
                };
                let context = attend_in_blocks(&q, &k, &v, scale, &bias)?;
                contexts.push(context.transpose(0, 1)?.reshape((len, h))?);
            }
            let context = Tensor::cat(&contexts, 0)?;
            x = (x + layer.wo.forward(&context)?)?;
            x = (&x + Self::mlp(layer, &layer.mlp_norm.forward(&x)?)?)?;
        }
        let x = self.final_norm.forward(&x)?;
        let pooled = (0..batch.pairs())
            .map(|i| {
                let r = batch.range(i);
                match self.pooling {
                    Pooling::First => x.narrow(0, r.start, 1),
                    Pooling::Mean => x.narrow(0, r.start, r.len())?.mean_keepdim(0),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        self.head(&Tensor::cat(&pooled, 0)?)
    }

    /// The head on `[pairs, hidden]` pooled states.
    fn head(&self, pooled: &Tensor) -> Result<Tensor> {
        let x = self.head_dense.forward(pooled)?;
        let x = self.head_act.forward(&x)?;
        let logits = self.classifier.forward(&self.head_norm.forward(&x)?)?;
        logits.to_dtype(DType::F32)
    }

    /// Logits over the padded rectangle `[pairs, longest]`, padded keys masked (and padded tokens
    /// left out of `mean` pooling), as transformers computes a padded batch.
    pub fn forward_padded(&self, batch: &Batch, device: &Device) -> Result<Tensor> {
        self.check_positions(batch)?;
        let p = batch.padded(self.pad_token_id);
        let (pairs, length) = (p.pairs, p.length);
        let ids = Tensor::from_slice(&p.input_ids, pairs * length, device)?;
        let mut x = self
            .embeddings_norm
            .forward(&self.tok_embeddings.forward(&ids)?)?;
        let dtype = x.dtype();
        let low = masked(dtype);
        let keep: Vec<f32> = p.attention_mask.iter().map(|&m| m as f32).collect();
        let pad_bias: Vec<f32> = keep
            .iter()
            .map(|&m| if m == 1.0 { 0.0 } else { low })
            .collect();
        let pad_bias =
            Tensor::from_vec(pad_bias, (pairs, 1, 1, length), device)?.to_dtype(dtype)?;
        let (h, d) = (self.heads * self.head_dim, self.head_dim);
        for layer in &self.layers {
            let input = match &layer.attn_norm {
                Some(n) => n.forward(&x)?,
                None => x.clone(),
            };
            let qkv = layer.wqkv.forward(&input)?;
            let part = |i: usize| -> Result<Tensor> {
                qkv.narrow(1, i * h, h)?
                    .reshape((pairs, length, self.heads, d))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let (cos, sin) = rotary_tables(&layer.inv_freq, self.head_dim, length, dtype, device)?;
            let q = rotate(&part(0)?, &cos, &sin)?;
            let k = rotate(&part(1)?, &cos, &sin)?;
            let v = part(2)?;
            let bias = |first: usize, n: usize| -> Result<Option<Tensor>> {
                Ok(Some(match layer.window {
                    None => pad_bias.clone(),
                    Some(w) => pad_bias.broadcast_add(
                        &Self::window_bias(w, first, n, length, dtype, device)?
                            .unsqueeze(0)?
                            .unsqueeze(0)?,
                    )?,
                }))
            };
            let context = attend_in_blocks(&q, &k, &v, 1.0 / (d as f64).sqrt(), &bias)?;
            let context = context.transpose(1, 2)?.reshape((pairs * length, h))?;
            x = (x + layer.wo.forward(&context)?)?;
            x = (&x + Self::mlp(layer, &layer.mlp_norm.forward(&x)?)?)?;
        }
        let x = self.final_norm.forward(&x)?.reshape((pairs, length, h))?;
        let pooled = match self.pooling {
            Pooling::First => x.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Mean => {
                let mask = Tensor::from_vec(keep, (pairs, length, 1), device)?.to_dtype(dtype)?;
                let sum = x.broadcast_mul(&mask)?.sum(1)?;
                let count = mask.sum(1)?;
                sum.broadcast_div(&count)?
            }
        };
        self.head(&pooled)
    }

    /// The same weights laid out for the fused CPU pass.
    pub fn fused(&self) -> Result<FusedBert> {
        let h = self.heads * self.head_dim;
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Ok(FusedLayer {
                    qkv: FusedLinear::F32(fused_weight(&l.wqkv)?),
                    attention_output: FusedLinear::F32(fused_weight(&l.wo)?),
                    attention_norm: l.attn_norm.as_ref().map(fused_norm).transpose()?,
                    intermediate: FusedLinear::F32(fused_weight(&l.wi)?),
                    act: l.act.kernel(),
                    gated: true,
                    output: FusedLinear::F32(fused_weight(&l.mlp_wo)?),
                    output_norm: fused_norm(&l.mlp_norm)?,
                    rotary: Some(l.inv_freq.clone()),
                    window: l.window,
                    relative: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(FusedBert {
            embeddings: Embeddings {
                word: values(self.tok_embeddings.embeddings())?,
                position: Vec::new(),
                position_offset: 0,
                token_type: Vec::new(),
                norm: fused_norm(&self.embeddings_norm)?,
                width: h,
                projection: None,
            },
            layers,
            pre_norm: true,
            final_norm: Some(fused_norm(&self.final_norm)?),
            pooling: self.pooling,
            pooler: fused_weight(&self.head_dense)?,
            pooler_act: self.head_act,
            head_norm: Some(fused_norm(&self.head_norm)?),
            classifier: fused_weight(&self.classifier)?,
            hidden: h,
            heads: self.heads,
            max_positions: self.max_positions,
            scratch: Default::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(extra: serde_json::Value) -> std::result::Result<ModernBertConfig, ModelError> {
        let mut c = serde_json::json!({
            "vocab_size": 10, "hidden_size": 8, "intermediate_size": 12,
            "num_hidden_layers": 4, "num_attention_heads": 2
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        ModernBertConfig::read(Path::new("config.json"), &c.to_string())
    }

    /// The hub's older keys (`global_attn_every_n_layers`, `global_rope_theta`,
    /// `local_rope_theta`) and transformers' defaults give the same layers as the newer ones.
    #[test]
    fn older_and_newer_config_keys_give_the_same_layers() {
        let old = read(serde_json::json!({
            "global_attn_every_n_layers": 2, "local_attention": 64,
            "global_rope_theta": 80000.0, "local_rope_theta": 5000.0
        }))
        .unwrap();
        assert_eq!(old.windows, [None, Some(32), None, Some(32)]);
        assert_eq!((old.global_theta, old.local_theta), (80000.0, 5000.0));
        let new = read(serde_json::json!({
            "layer_types": ["full_attention", "sliding_attention", "full_attention", "sliding_attention"],
            "local_attention": 64,
            "rope_parameters": {
                "full_attention": {"rope_type": "default", "rope_theta": 80000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 5000.0}
            }
        }))
        .unwrap();
        assert_eq!(new.windows, old.windows);
        assert_eq!((new.global_theta, new.local_theta), (80000.0, 5000.0));
        let defaults = read(serde_json::json!({})).unwrap();
        assert_eq!(defaults.windows, [None, Some(64), Some(64), None]);
        assert_eq!(
            (defaults.global_theta, defaults.local_theta),
            (160000.0, 10000.0)
        );
        assert_eq!(defaults.pooling, Pooling::First);
        assert_eq!(defaults.max_position_embeddings, 8192);
    }

    /// What xbench does not compute is refused by name, never ignored.
    #[test]
    fn options_that_change_the_computation_are_refused_by_name() {
        for (extra, says) in [
            (
                serde_json::json!({"classifier_pooling": "max"}),
                "classifier_pooling",
            ),
            (
                serde_json::json!({"classifier_activation": "mish"}),
                "classifier_activation",
            ),
            (
                serde_json::json!({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
                "rope_scaling",
            ),
            (
                serde_json::json!({"rope_parameters": {"full_attention": {"rope_type": "yarn"}}}),
                "rope_type",
            ),
            (
                serde_json::json!({"layer_types": ["full_attention"]}),
                "layer_types",
            ),
            (
                serde_json::json!({"layer_types": ["full_attention", "chunked", "full_attention", "full_attention"]}),
                "chunked",
            ),
            (serde_json::json!({"hidden_activation": "mish"}), "config"),
        ] {
            let err = read(extra).expect_err("refused");
            let text = format!(
                "{err} {}",
                std::error::Error::source(&err)
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            );
            assert!(text.contains(says), "{says}: {text}");
        }
    }
}
