//! The decoder rerankers of [`super::decoder`] in candle's ops, on any device candle opens and in
//! fp32, fp16 or bf16 (the whole model in that dtype, as `model.to(dtype)` does in transformers):
//! the reference the fused pass is tested against, and the path for GPUs.
//!
//! Products run over every packed token at once; attention runs per pair, causally, with each
//! key-value head repeated for its group of query heads. RMSNorm is computed in f32 and cast back
//! as transformers does (Qwen: normalized, cast, then times the weight; Gemma: times `1 + weight`
//! in f32, then cast).

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Linear, VarBuilder};

use super::decoder::{DecoderArch, DecoderConfig, DecoderHead};
use super::encoder::attend_in_blocks;
use super::modernbert::{masked, rotary_tables, rotate};
use crate::batch::Batch;

/// An RMSNorm over the last dimension.
struct RmsNorm {
    weight: Tensor,
    eps: f64,
    gemma: bool,
}

impl RmsNorm {
    fn load(size: usize, c: &DecoderConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?,
            eps: c.rms_norm_eps,
            gemma: c.arch == DecoderArch::Gemma,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x32 = x.to_dtype(DType::F32)?;
        let mean = x32.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = x32.broadcast_div(&(mean + self.eps)?.sqrt()?)?;
        if self.gemma {
            let gain = (self.weight.to_dtype(DType::F32)? + 1.0)?;
            normed.broadcast_mul(&gain)?.to_dtype(dtype)
        } else {
            normed.to_dtype(dtype)?.broadcast_mul(&self.weight)
        }
    }
}

struct Layer {
    input_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    post_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// A decoder reranker in candle.
pub struct CandleDecoder {
    embed: Tensor,
    embed_scale: f64,
    layers: Vec<Layer>,
    norm: RmsNorm,
    /// `[labels, hidden]` and its bias.
    head: Tensor,
    head_bias: Option<Tensor>,
    config: DecoderConfig,
    inv_freq: Vec<f32>,
}

impl CandleDecoder {
    /// Loads the weights (`vb` in the serving dtype); the scoring rows as
    /// [`super::decoder::FusedDecoder::load`] takes them.
    pub fn load(
        vb: VarBuilder,
        config: &DecoderConfig,
        head: DecoderHead,
        answer_ids: &[u32],
    ) -> Result<Self> {
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let s = config.shape;
        let (qw, kvw) = (s.q_width(), s.kv_heads * s.head_dim);
        let model = vb.pp("model");
        let linear = |inputs: usize, outputs: usize, bias: bool, vb: VarBuilder| {
            candle_nn::linear_b(inputs, outputs, bias, vb)
        };
        let layers = (0..config.num_hidden_layers)
            .map(|l| {
                let vb = model.pp("layers").pp(l);
                let attn = vb.pp("self_attn");
                let mlp = vb.pp("mlp");
                let qk_norm = config.arch == DecoderArch::Qwen3;
                Ok(Layer {
                    input_norm: RmsNorm::load(h, config, vb.pp("input_layernorm"))?,
                    q: linear(h, qw, config.qkv_bias, attn.pp("q_proj"))?,
                    k: linear(h, kvw, config.qkv_bias, attn.pp("k_proj"))?,
                    v: linear(h, kvw, config.qkv_bias, attn.pp("v_proj"))?,
                    o: linear(qw, h, config.o_bias, attn.pp("o_proj"))?,
                    q_norm: qk_norm
                        .then(|| RmsNorm::load(s.head_dim, config, attn.pp("q_norm")))
                        .transpose()?,
                    k_norm: qk_norm
                        .then(|| RmsNorm::load(s.head_dim, config, attn.pp("k_norm")))
                        .transpose()?,
                    post_norm: RmsNorm::load(h, config, vb.pp("post_attention_layernorm"))?,
                    gate: linear(h, i, false, mlp.pp("gate_proj"))?,
                    up: linear(h, i, false, mlp.pp("up_proj"))?,
                    down: linear(i, h, false, mlp.pp("down_proj"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embed = model.get((config.vocab_size, h), "embed_tokens.weight")?;
        let (head, head_bias) = match head {
            DecoderHead::Classifier => {
                let n = config.num_labels;
                let bias = vb
                    .contains_tensor("score.bias")
                    .then(|| vb.get(n, "score.bias"))
                    .transpose()?;
                (vb.get((n, h), "score.weight")?, bias)
            }
            DecoderHead::AnswerTokens => {
                let ids = Tensor::from_slice(answer_ids, answer_ids.len(), embed.device())?;
                let table = if config.tie_word_embeddings {
                    embed.clone()
                } else {
                    vb.get((config.vocab_size, h), "lm_head.weight")?
                };
                (table.index_select(&ids, 0)?, None)
            }
        };
        Ok(Self {
            embed,
            embed_scale: match config.arch {
                DecoderArch::Gemma => (h as f64).sqrt(),
                _ => 1.0,
            },
            layers,
            norm: RmsNorm::load(h, config, model.pp("norm"))?,
            head,
            head_bias,
            config: config.clone(),
            inv_freq: config.inv_freq(),
        })
    }

    /// Logits `[pairs, labels]` at each pair's last token; products over the packed tokens,
    /// attention per pair.
    pub fn forward(&self, batch: &Batch, device: &Device) -> Result<Tensor> {
        if batch.max_length > self.config.max_position_embeddings {
            candle_core::bail!(
                "a pair of {} tokens exceeds the model's {} positions",
                batch.max_length,
                self.config.max_position_embeddings
            );
        }
        let s = self.config.shape;
        let (heads, kv, d) = (s.q_heads, s.kv_heads, s.head_dim);
        let group = heads / kv;
        let tokens = batch.total_tokens();
        let ids = Tensor::from_slice(&batch.input_ids, tokens, device)?;
        let mut x = self.embed.embedding(&ids)?;
        if self.embed_scale != 1.0 {
            // transformers multiplies by sqrt(hidden) cast to the weights' dtype.
            let scale = Tensor::new(self.embed_scale as f32, device)?.to_dtype(x.dtype())?;
            x = x.broadcast_mul(&scale)?;
        }
        let dtype = x.dtype();
        let scale = 1.0 / (d as f64).sqrt();
        for layer in &self.layers {
            let input = layer.input_norm.forward(&x)?;
            let q = layer.q.forward(&input)?;
            let k = layer.k.forward(&input)?;
            let v = layer.v.forward(&input)?;
            let mut contexts = Vec::with_capacity(batch.pairs());
            for p in 0..batch.pairs() {
                let r = batch.range(p);
                let (start, len) = (r.start, r.len());
                let split = |t: &Tensor, n: usize, norm: Option<&RmsNorm>| -> Result<Tensor> {
                    let t = t.narrow(0, start, len)?.reshape((len, n, d))?;
                    let t = match norm {
                        Some(norm) => norm.forward(&t)?,
                        None => t,
                    };
                    t.transpose(0, 1)?.contiguous()
                };
                let (cos, sin) = rotary_tables(&self.inv_freq, d, len, dtype, device)?;
                let q = rotate(&split(&q, heads, layer.q_norm.as_ref())?, &cos, &sin)?;
                let repeat = |t: Tensor| -> Result<Tensor> {
                    t.unsqueeze(1)?
                        .expand((kv, group, len, d))?
                        .reshape((heads, len, d))
                };
                let k = repeat(rotate(&split(&k, kv, layer.k_norm.as_ref())?, &cos, &sin)?)?;
                let v = repeat(split(&v, kv, None)?)?;
                let low = masked(dtype);
                let causal = |first: usize, n: usize| -> Result<Option<Tensor>> {
                    let bias: Vec<f32> = (first..first + n)
                        .flat_map(|i| (0..len).map(move |j| if j <= i { 0.0 } else { low }))
                        .collect();
                    Ok(Some(
                        Tensor::from_vec(bias, (n, len), device)?.to_dtype(dtype)?,
                    ))
                };
                let context = attend_in_blocks(&q, &k, &v, scale, &causal)?;
                contexts.push(context.transpose(0, 1)?.reshape((len, heads * d))?);
            }
            let context = Tensor::cat(&contexts, 0)?;
            x = (x + layer.o.forward(&context)?)?;
            let normed = layer.post_norm.forward(&x)?;
            let gate = candle_act(self.config.act, &layer.gate.forward(&normed)?)?;
            x = (&x + layer.down.forward(&(gate * layer.up.forward(&normed)?)?)?)?;
        }
        let last: Vec<u32> = (0..batch.pairs())
            .map(|p| batch.range(p).end as u32 - 1)
            .collect();
        let last = Tensor::from_slice(&last, last.len(), device)?;
        let x = self.norm.forward(&x.index_select(&last, 0)?)?;
        let mut logits = x.matmul(&self.head.t()?)?;
        if let Some(b) = &self.head_bias {
            logits = logits.broadcast_add(b)?;
        }
        logits.to_dtype(DType::F32)
    }
}

/// The MLP's activation in candle.
fn candle_act(act: xbench_kernels::rows::Act, x: &Tensor) -> Result<Tensor> {
    use xbench_kernels::rows::Act;
    match act {
        Act::GeluErf => x.gelu_erf(),
        Act::GeluTanh => x.gelu(),
        Act::Relu => x.relu(),
        Act::Silu => x.silu(),
    }
}
