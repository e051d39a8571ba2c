//! The fused CPU forward pass of a cross-encoder of the shared encoder ([`super::encoder`]), on
//! packed tokens, in every precision.
//!
//! Same computation as [`super::encoder::Encoder::forward`], in fewer passes
//! over memory (see [`crate::kernels`]): Q, K and V are one matrix product against the three
//! weights side by side; attention (biases, scores, softmax, weighted sum) is one kernel per
//! (pair, head); each dense + residual + LayerNorm is a product accumulated onto the residual
//! followed by one bias + LayerNorm pass; the intermediate dense is followed by one bias + GELU pass.
//! The weights are copied out of candle once, at load, transposed for the products.

use rayon::prelude::*;

use super::deberta::Relative;
use super::family::HeadAct;
use crate::batch::Batch;
use xbench_kernels::attention::{packed_attention, Heads, Scores};
use xbench_kernels::gptq::Hessian;
use xbench_kernels::half::HalfKind;
use xbench_kernels::math;
use xbench_kernels::matmul::{feed_forward_in_place, Linear, Weight};
use xbench_kernels::rows::{self, Act};

/// LayerNorm parameters.
#[derive(Debug, Clone)]
pub struct Norm {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub eps: f32,
}

/// One encoder layer: BERT's (post-norm: each block's LayerNorm after its residual sum) or
/// ModernBERT's (pre-norm: each block's LayerNorm on its input, the residual sum left as it is).
#[derive(Debug, Clone)]
pub struct FusedLayer {
    /// query, key and value side by side: `[hidden, 3 * hidden]`.
    pub qkv: Linear,
    pub attention_output: Linear,
    /// Post-norm: the LayerNorm after the attention block. Pre-norm: the one before it (none in
    /// ModernBERT's first layer, which reads the normalized embeddings).
    pub attention_norm: Option<Norm>,
    pub intermediate: Linear,
    pub act: Act,
    /// The intermediate product's outputs are two halves, `[input | gate]`, and the block's
    /// activation is `act(input) * gate` (ModernBERT's GLU).
    pub gated: bool,
    pub output: Linear,
    /// Post-norm: the LayerNorm after the feed-forward block. Pre-norm: the one before it.
    pub output_norm: Norm,
    /// Rotary positions: the inverse frequencies of the head's dimension pairs (queries and keys
    /// are rotated by `position * inv_freq[i]`, after their biases), or none (absolute position
    /// embeddings).
    pub rotary: Option<Vec<f32>>,
    /// Attention only to keys at most this far away (ModernBERT's local layers).
    pub window: Option<usize>,
    /// DeBERTa's disentangled attention: how positions index the relative embeddings, and this
    /// layer's key and query projections of them.
    pub relative: Option<FusedRelative>,
}

/// A layer's share of DeBERTa's relative embeddings: their key projection (content→position
/// terms) and query projection (position→content), `[2 span, hidden]` each, biases included.
#[derive(Debug, Clone)]
pub struct FusedRelative {
    pub params: Relative,
    pub pos_key: Option<Vec<f32>>,
    pub pos_query: Option<Vec<f32>>,
}

/// How the head reads the encoder's output: the first token of each pair, or the mean of its
/// tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    First,
    Mean,
}

/// Embedding tables, `[rows, hidden]` row-major.
#[derive(Debug, Clone)]
pub struct Embeddings {
    pub word: Vec<f32>,
    /// Empty for rotary models (ModernBERT), which add no position table.
    pub position: Vec<f32>,
    /// Added to every position id (XLM-RoBERTa: `pad_token_id + 1`).
    pub position_offset: u32,
    /// Empty for models without token types (DistilBERT), whose type ids are ignored.
    pub token_type: Vec<f32>,
    pub norm: Norm,
    /// The tables' width: the layers' `hidden`, or narrower where `projection` widens the
    /// normalized embeddings to it (ELECTRA).
    pub width: usize,
    pub projection: Option<Weight>,
}

/// A cross-encoder ready for the fused pass: the shared BERT-style encoder or ModernBERT.
#[derive(Debug, Clone)]
pub struct FusedBert {
    pub embeddings: Embeddings,
    pub layers: Vec<FusedLayer>,
    /// Whether the layers normalize their blocks' inputs (ModernBERT) rather than their outputs.
    pub pre_norm: bool,
    /// The LayerNorm after the last layer (pre-norm models).
    pub final_norm: Option<Norm>,
    pub pooling: Pooling,
    /// The head's first dense layer (`BertPooler`'s, `classifier.dense`, `pre_classifier`,
    /// ModernBERT's `head.dense`), its activation, and the LayerNorm after it (ModernBERT's).
    pub pooler: Weight,
    pub pooler_act: HeadAct,
    pub head_norm: Option<Norm>,
    pub classifier: Weight,
    pub hidden: usize,
    pub heads: usize,
    /// The longest pair the positions allow.
    pub max_positions: usize,
    /// Buffers the last pass left for the next one.
    pub scratch: Scratch,
}

/// The activation buffers of a forward pass, kept from one pass to the next: allocated fresh,
/// a pass's ~8 KB per token of them were first touched, page-faulted and zeroed by the kernel
/// every time (3–5% of a bf16 pass). A pass takes them while it runs; a pass that finds them
/// taken (another thread on the same model) allocates its own. They keep the size of the
/// largest batch seen.
#[derive(Default)]
pub struct Scratch(std::sync::Mutex<Buffers>);

#[derive(Default)]
struct Buffers {
    x: Vec<f32>,
    qkv: Vec<f32>,
    context: Vec<f32>,
    inner: Vec<f32>,
    /// Pre-norm layers: a block's normalized input, and the gated activations.
    normed: Vec<f32>,
    gated: Vec<f32>,
}

impl Clone for Scratch {
    /// Fresh, empty buffers (a clone shares nothing with its original).
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scratch")
    }
}

/// Sees the input of every encoder product: `(layer, product, rows, columns)`.
type Observer<'a> = dyn FnMut(usize, usize, &[f32], usize) + 'a;

/// Integer widths of [`FusedBert::quantize_integer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntWidth {
    Int8,
    Int4,
}

/// SmoothQuant's migration strength with calibrated ranges. Measured on the demo model against
/// transformers (110 reference pairs, max / mean |Δlogit|, asymmetric activations): int8 α 0.5:
/// 0.262 / 0.067, 0.6: 0.259 / 0.061, 0.7: 0.326 / 0.107; int4 (groups of 32) α 0.4: 1.82 / 0.41,
/// 0.6: 1.30 / 0.35.
pub(crate) const CALIBRATED_ALPHA: f32 = 0.6;

/// The largest |activation| per input channel of each encoder product, over a calibration batch:
/// `layers[l][p]` for layer `l` and product `p` (0 Q/K/V, 1 attention output, 2 intermediate,
/// 3 output).
#[derive(Debug, Clone, Default)]
pub struct ActivationRanges {
    pub layers: Vec<[Vec<f32>; 4]>,
}

/// What the fused pass refuses (the candle path refuses the same inputs).
#[derive(Debug, thiserror::Error)]
pub enum FusedError {
    #[error("token id {id} is outside the model's vocabulary of {vocab}")]
    TokenId { id: u32, vocab: usize },
    #[error("position {position} exceeds the model's {limit} positions")]
    Position { position: u32, limit: usize },
    #[error("token type {kind} is outside the model's {limit} token types")]
    TokenType { kind: u32, limit: usize },
}

impl FusedBert {
    pub fn num_labels(&self) -> usize {
        self.classifier.outputs
    }

    /// The encoder layers' four products in int8 (weights per output column) or int4 (weights per
    /// group of 32 inputs of a column), activations per token; embeddings, LayerNorms, attention,
    /// the pooler and the classifier stay f32.
    ///
    /// With a `calibration` batch, each product is smoothed by its inputs' measured ranges
    /// (SmoothQuant) and, for int4, rounded by GPTQ on its inputs' Hessian, layer after layer:
    /// the Hessians of layer `l` come from a pass through layers already quantized, so each
    /// layer's rounding also answers the error of the ones before it. Measured against
    /// transformers (110 pairs, max / mean |Δlogit|): int4 1.66 / 0.381 rounding to nearest,
    /// 1.24 / 0.353 with GPTQ; int8 0.259 / 0.061 to nearest, 0.282 / 0.080 with GPTQ (its error
    /// is the activations', which GPTQ does not see), so int8 rounds to nearest.
    pub fn quantize_integer(
        &mut self,
        width: IntWidth,
        calibration: Option<&Batch>,
    ) -> Result<(), FusedError> {
        let Some(batch) = calibration.filter(|b| !b.is_empty()) else {
            self.quantize_uncalibrated(width);
            return Ok(());
        };
        let ranges = self.activation_ranges(batch)?;
        let a = CALIBRATED_ALPHA;
        for l in 0..self.layers.len() {
            let [r_qkv, r_attention_output, r_intermediate, r_output] = &ranges.layers[l];
            let hessians: [Option<Hessian>; 4] = match width {
                IntWidth::Int4 => self.layer_hessians(batch, l)?.map(Some),
                IntWidth::Int8 => Default::default(),
            };
            let layer = &mut self.layers[l];
            let products = [
                &mut layer.qkv,
                &mut layer.attention_output,
                &mut layer.intermediate,
                &mut layer.output,
            ];
            let ranges = [r_qkv, r_attention_output, r_intermediate, r_output];
            // The four products quantize independently: in parallel.
            products
                .into_iter()
                .zip(ranges)
                .zip(hessians)
                .collect::<Vec<_>>()
                .into_par_iter()
                .for_each(|((product, range), hessian)| {
                    *product = match (width, hessian) {
                        (IntWidth::Int4, Some(h)) => product.to_int4_gptq(range, a, h),
                        (IntWidth::Int4, None) => product.to_int4_smoothed(range, a),
                        (IntWidth::Int8, _) => product.to_int8_smoothed(range, a),
                    };
                });
        }
        Ok(())
    }

    /// The Hessians of layer `l`'s four products' inputs over `batch` (as the model computes
    /// now, earlier layers quantized or not).
    fn layer_hessians(&self, batch: &Batch, l: usize) -> Result<[Hessian; 4], FusedError> {
        let mut hessians: [Option<Hessian>; 4] = Default::default();
        self.forward_layers(
            batch,
            l + 1,
            Some(&mut |layer, product, x, columns| {
                if layer == l {
                    hessians[product]
                        .get_or_insert_with(|| Hessian::new(columns))
                        .add(x);
                }
            }),
        )?;
        let h = self.hidden;
        // The output product reads the intermediate activations: half the intermediate
        // product's outputs when they are gated.
        let layer = &self.layers[l];
        let inner = layer.intermediate.outputs() / if layer.gated { 2 } else { 1 };
        let [a, b, c, d] = hessians;
        Ok([
            a.unwrap_or_else(|| Hessian::new(h)),
            b.unwrap_or_else(|| Hessian::new(h)),
            c.unwrap_or_else(|| Hessian::new(h)),
            d.unwrap_or_else(|| Hessian::new(inner)),
        ])
    }

    /// Without calibration: the Q/K/V and intermediate products are smoothed by the preceding
    /// LayerNorm's |γ| + |β| (their inputs are LayerNorm outputs, where BERT's outlier channels
    /// come from), the other two not; every weight rounded to its nearest level.
    fn quantize_uncalibrated(&mut self, width: IntWidth) {
        let smoothed = |l: &Linear, activation: &[f32]| match width {
            IntWidth::Int8 => l.to_int8_smoothed(activation, 0.5),
            IntWidth::Int4 => l.to_int4_smoothed(activation, 0.5),
        };
        let plain = |l: &Linear| match width {
            IntWidth::Int8 => l.to_int8(),
            IntWidth::Int4 => l.to_int4(),
        };
        let magnitude = |n: &Norm| -> Vec<f32> {
            n.gamma
                .iter()
                .zip(&n.beta)
                .map(|(g, b)| g.abs() + b.abs())
                .collect()
        };
        // The LayerNorm whose output each product reads, where one does. A projection after the
        // embeddings' LayerNorm (ELECTRA) hides it from the first layer.
        let mut before = match self.embeddings.projection {
            None => Some(magnitude(&self.embeddings.norm)),
            Some(_) => None,
        };
        let pre_norm = self.pre_norm;
        for layer in &mut self.layers {
            let (qkv_in, intermediate_in) = if pre_norm {
                let qkv_in = layer.attention_norm.as_ref().map(magnitude).or(before);
                (qkv_in, Some(magnitude(&layer.output_norm)))
            } else {
                (before, layer.attention_norm.as_ref().map(magnitude))
            };
            let product = |l: &Linear, input: &Option<Vec<f32>>| match input {
                Some(magnitudes) => smoothed(l, magnitudes),
                None => plain(l),
            };
            layer.qkv = product(&layer.qkv, &qkv_in);
            layer.attention_output = plain(&layer.attention_output);
            layer.intermediate = product(&layer.intermediate, &intermediate_in);
            layer.output = plain(&layer.output);
            // Pre-norm: the next layer reads the residual stream through its own LayerNorm.
            before = (!pre_norm).then(|| magnitude(&layer.output_norm));
        }
    }

    /// The encoder layers' four products in bf16 or fp16 (weights stored in the type, activations
    /// rounded to it, f32 accumulation); embeddings, LayerNorms, the pooler and the classifier
    /// stay f32. With bf16 layers, attention's products run in bf16 too ([`Scores::Bf16`]).
    pub fn to_half(&mut self, kind: HalfKind) {
        for layer in &mut self.layers {
            for product in [
                &mut layer.qkv,
                &mut layer.attention_output,
                &mut layer.intermediate,
                &mut layer.output,
            ] {
                *product = product.to_half(kind);
            }
        }
    }

    /// Runs `batch` and records each product's per-channel input ranges.
    pub fn activation_ranges(&self, batch: &Batch) -> Result<ActivationRanges, FusedError> {
        let mut ranges = ActivationRanges {
            layers: vec![Default::default(); self.layers.len()],
        };
        self.forward_observed(batch, &mut |layer, product, x, columns| {
            let seen = &mut ranges.layers[layer][product];
            if seen.is_empty() {
                *seen = vec![0f32; columns];
            }
            for row in x.chunks_exact(columns) {
                for (m, v) in seen.iter_mut().zip(row) {
                    *m = m.max(v.abs());
                }
            }
        })?;
        Ok(ranges)
    }

    /// Bytes of weights the encoder layers' products read.
    pub fn layer_weight_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| {
                l.qkv.weight_bytes()
                    + l.attention_output.weight_bytes()
                    + l.intermediate.weight_bytes()
                    + l.output.weight_bytes()
            })
            .sum()
    }

    fn check(&self, batch: &Batch) -> Result<(), FusedError> {
        let h = self.embeddings.width;
        let vocab = self.embeddings.word.len() / h;
        let positions = self.max_positions;
        let types = self.embeddings.token_type.len() / h;
        if let Some(&id) = batch.input_ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(FusedError::TokenId { id, vocab });
        }
        if let Some(&position) = batch
            .position_ids
            .iter()
            .find(|&&p| p as usize >= positions)
        {
            return Err(FusedError::Position {
                position,
                limit: positions,
            });
        }
        if types > 0 {
            if let Some(&kind) = batch.token_type_ids.iter().find(|&&t| t as usize >= types) {
                return Err(FusedError::TokenType { kind, limit: types });
            }
        }
        Ok(())
    }

    /// One pre-norm layer (ModernBERT's): `x += Wo · attention(rotary(norm(x) · Wqkv))`, then
    /// `x += Wo2 · (act(a) * g)` where `[a | g] = norm(x) · Wi`. Observed as the post-norm layers
    /// are: product 0 reads the attention block's normalized input, 2 the feed-forward block's.
    #[allow(clippy::too_many_arguments)]
    fn pre_norm_layer(
        &self,
        l: usize,
        layer: &FusedLayer,
        batch: &Batch,
        ranges: &[(usize, usize)],
        shape: Heads,
        scores: Scores,
        observe: &mut Observer<'_>,
        x: &mut [f32],
        qkv: &mut [f32],
        context: &mut [f32],
        normed: &mut [f32],
        inner: &mut Vec<f32>,
        gated: &mut Vec<f32>,
    ) {
        let h = self.hidden;
        let tokens = x.len() / h;
        let input: &[f32] = match &layer.attention_norm {
            Some(n) => {
                normed.copy_from_slice(x);
                rows::bias_layer_norm(normed, None, &n.gamma, &n.beta, n.eps);
                normed
            }
            None => x,
        };
        observe(l, 0, input, h);
        layer.qkv.matmul_into(input, qkv, false);
        let bias = match &layer.rotary {
            // Queries and keys take their biases before the rotation; the kernel adds only the
            // values'.
            Some(inv_freq) => {
                rotate(qkv, layer.qkv.bias(), &batch.position_ids, shape, inv_freq);
                let mut bias = vec![0f32; 3 * h];
                bias[2 * h..].copy_from_slice(&layer.qkv.bias()[2 * h..]);
                bias
            }
            None => layer.qkv.bias().to_vec(),
        };
        packed_attention(qkv, &bias, ranges, shape, scores, context);
        observe(l, 1, context, h);
        layer.attention_output.matmul_into(context, x, true);
        add_bias(x, layer.attention_output.bias());

        normed.copy_from_slice(x);
        let n = &layer.output_norm;
        rows::bias_layer_norm(normed, None, &n.gamma, &n.beta, n.eps);
        observe(l, 2, normed, h);
        let width = layer.intermediate.outputs();
        let up = grow(inner, tokens * width);
        layer.intermediate.matmul_into(normed, up, false);
        let activations: &[f32] = if layer.gated {
            let half = width / 2;
            let out = grow(gated, tokens * half);
            glu(up, layer.intermediate.bias(), layer.act, out);
            out
        } else {
            rows::bias_act(up, layer.intermediate.bias(), layer.act);
            up
        };
        observe(l, 3, activations, activations.len() / tokens.max(1));
        layer.output.matmul_into(activations, x, true);
        add_bias(x, layer.output.bias());
    }

    /// Logits `[pairs, num_labels]`, row-major. Runs on the caller's rayon pool.
    pub fn forward(&self, batch: &Batch) -> Result<Vec<f32>, FusedError> {
        self.forward_layers(batch, self.layers.len(), None)
    }

    /// [`FusedBert::forward`], showing `observe(layer, product, input, columns)` the input of
    /// every encoder product (see [`ActivationRanges`] for the numbering).
    fn forward_observed(
        &self,
        batch: &Batch,
        observe: &mut Observer<'_>,
    ) -> Result<Vec<f32>, FusedError> {
        self.forward_layers(batch, self.layers.len(), Some(observe))
    }

    /// [`FusedBert::forward_observed`] through the first `layers` encoder layers only; the
    /// logits (empty when it stopped early) come from a pass through all of them. Unobserved,
    /// the feed-forward blocks may run fused ([`feed_forward_in_place`]), their intermediate
    /// activations never written out.
    fn forward_layers(
        &self,
        batch: &Batch,
        layers: usize,
        observe: Option<&mut Observer<'_>>,
    ) -> Result<Vec<f32>, FusedError> {
        let watched = observe.is_some();
        let mut ignore = |_: usize, _: usize, _: &[f32], _: usize| {};
        let observe: &mut Observer<'_> = match observe {
            Some(o) => o,
            None => &mut ignore,
        };
        self.check(batch)?;
        let h = self.hidden;
        let tokens = batch.total_tokens();
        let pairs = batch.pairs();
        if pairs == 0 {
            return Ok(Vec::new());
        }
        let mut held = self.scratch.0.try_lock().ok();
        let mut own = Buffers::default();
        let Buffers {
            x,
            qkv,
            context,
            inner,
            normed,
            gated,
        } = match held.as_deref_mut() {
            Some(kept) => kept,
            None => &mut own,
        };
        // Every row of x, qkv and context is written before it is read: their old contents need
        // no clearing.
        x.resize(tokens * h, 0.0);
        qkv.resize(tokens * 3 * h, 0.0);
        context.resize(tokens * h, 0.0);
        let x = &mut x[..tokens * h];
        let qkv = &mut qkv[..tokens * 3 * h];
        let context = &mut context[..tokens * h];
        let e = &self.embeddings;
        let tables = rows::EmbeddingTables {
            word: &e.word,
            position: (!e.position.is_empty()).then_some(e.position.as_slice()),
            position_offset: e.position_offset,
            token_type: (!e.token_type.is_empty()).then_some(e.token_type.as_slice()),
        };
        let embed = |out: &mut [f32]| {
            rows::embed(
                out,
                &tables,
                &batch.input_ids,
                &batch.position_ids,
                &batch.token_type_ids,
            );
            rows::bias_layer_norm(out, None, &e.norm.gamma, &e.norm.beta, e.norm.eps);
        };
        match &e.projection {
            None => embed(x),
            Some(projection) => {
                // The embeddings at their own width, normalized, then projected to the layers'
                // (in the Q/K/V buffer, free until the first layer, where it is wide enough).
                let mut own = Vec::new();
                let narrow = if tokens * e.width <= qkv.len() {
                    &mut qkv[..tokens * e.width]
                } else {
                    own.resize(tokens * e.width, 0.0);
                    &mut own[..]
                };
                embed(narrow);
                projection.matmul_into(narrow, x, false);
                for row in x.chunks_exact_mut(h) {
                    for (v, b) in row.iter_mut().zip(&projection.bias) {
                        *v += b;
                    }
                }
            }
        }

        let ranges: Vec<(usize, usize)> = (0..pairs)
            .map(|i| {
                let r = batch.range(i);
                (r.start, r.len())
            })
            .collect();
        let head_dim = h / self.heads;
        // The intermediate activations, when they are observed (else feed_forward_in_place sizes
        // them, if it needs them).
        if watched {
            let width = self.layers.iter().map(|l| l.intermediate.outputs()).max();
            inner.resize(tokens * width.unwrap_or(0), 0.0);
        }
        if self.pre_norm {
            normed.resize(tokens * h, 0.0);
        }
        for (l, layer) in self.layers.iter().enumerate().take(layers) {
            let shape = Heads {
                heads: self.heads,
                head_dim,
                window: layer.window,
            };
            let scores = match &layer.qkv {
                Linear::Half(w) if w.kind == HalfKind::Bf16 => Scores::Bf16,
                _ => Scores::F32,
            };
            if self.pre_norm {
                self.pre_norm_layer(
                    l, layer, batch, &ranges, shape, scores, observe, x, qkv, context, normed,
                    inner, gated,
                );
                continue;
            }
            observe(l, 0, x, h);
            layer.qkv.matmul_into(x, qkv, false);
            match &layer.relative {
                Some(rel) => {
                    relative_attention(qkv, layer.qkv.bias(), &ranges, shape, rel, context)
                }
                None => packed_attention(qkv, layer.qkv.bias(), &ranges, shape, scores, context),
            }
            // x ← LayerNorm(context · Wo + bo + x)
            observe(l, 1, context, h);
            layer.attention_output.matmul_into(context, x, true);
            if let Some(n) = &layer.attention_norm {
                rows::bias_layer_norm(
                    x,
                    Some(layer.attention_output.bias()),
                    &n.gamma,
                    &n.beta,
                    n.eps,
                );
            }
            // x ← LayerNorm(act(x · Wi + bi) · Wo2 + bo2 + x)
            if watched {
                let inner = &mut inner[..tokens * layer.intermediate.outputs()];
                observe(l, 2, x, h);
                layer.intermediate.matmul_into(x, inner, false);
                rows::bias_act(inner, layer.intermediate.bias(), layer.act);
                observe(l, 3, inner, layer.intermediate.outputs());
                layer.output.matmul_into(inner, x, true);
            } else {
                let (up, down) = (&layer.intermediate, &layer.output);
                feed_forward_in_place(x, up, layer.act, down, inner);
            }
            let n = &layer.output_norm;
            rows::bias_layer_norm(x, Some(layer.output.bias()), &n.gamma, &n.beta, n.eps);
        }
        if let Some(n) = &self.final_norm {
            rows::bias_layer_norm(x, None, &n.gamma, &n.beta, n.eps);
        }

        if layers < self.layers.len() {
            return Ok(Vec::new());
        }
        // The head's dense layer (BertPooler: dense + tanh; DistilBERT: + ReLU; ModernBERT:
        // + its activation and a LayerNorm) on each pair's first token or mean, then the
        // classifier.
        let mut first = Vec::with_capacity(pairs * h);
        for &(start, len) in &ranges {
            match self.pooling {
                Pooling::First => first.extend_from_slice(&x[start * h..(start + 1) * h]),
                Pooling::Mean => {
                    let mut sum = vec![0f64; h];
                    for row in x[start * h..(start + len) * h].chunks_exact(h) {
                        for (s, v) in sum.iter_mut().zip(row) {
                            *s += *v as f64;
                        }
                    }
                    first.extend(sum.iter().map(|s| (*s / len as f64) as f32));
                }
            }
        }
        let mut pooled = vec![0f32; pairs * h];
        self.pooler.matmul_into(&first, &mut pooled, false);
        for row in pooled.chunks_exact_mut(h) {
            for (v, b) in row.iter_mut().zip(&self.pooler.bias) {
                *v = self.pooler_act.apply(*v + b);
            }
        }
        if let Some(n) = &self.head_norm {
            rows::bias_layer_norm(&mut pooled, None, &n.gamma, &n.beta, n.eps);
        }
        let labels = self.num_labels();
        let mut logits = vec![0f32; pairs * labels];
        self.classifier.matmul_into(&pooled, &mut logits, false);
        for row in logits.chunks_exact_mut(labels) {
            for (v, b) in row.iter_mut().zip(&self.classifier.bias) {
                *v += b;
            }
        }
        Ok(logits)
    }
}

/// The first `n` values of `buffer`, grown (with zeros) when it is shorter.
fn grow(buffer: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if buffer.len() < n {
        buffer.resize(n, 0.0);
    }
    &mut buffer[..n]
}

/// `x[r] += bias` for every row (nothing for an all-zero bias, as a layer without one has).
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

/// ModernBERT's gated activation: each row of `up` is `[a | g]` (`2 * width` values, `bias` the
/// same); `out` row = `act(a + b_a) * (g + b_g)`.
fn glu(up: &[f32], bias: &[f32], act: Act, out: &mut [f32]) {
    let width = bias.len() / 2;
    let (ba, bg) = bias.split_at(width);
    out.par_chunks_mut(width)
        .zip(up.par_chunks(2 * width))
        .with_min_len(16)
        .for_each(|(o, row)| {
            let (a, g) = row.split_at(width);
            for j in 0..width {
                let v = a[j] + ba[j];
                let v = match act {
                    Act::GeluErf => math::gelu_erf(v),
                    Act::GeluTanh => math::gelu_tanh(v),
                    Act::Relu => v.max(0.0),
                    Act::Silu => v / (1.0 + math::exp(-v)),
                };
                o[j] = v * (g[j] + bg[j]);
            }
        });
}

/// Rotary positions on the queries and keys of `qkv` (`[tokens, 3 * hidden]`), after adding their
/// biases: each head's dimension pair `(i, i + d/2)` of the token at `positions[t]` turns by
/// `positions[t] * inv_freq[i]`, as transformers' `apply_rotary_pos_emb` (`rotate_half`) does, in
/// f32.
fn rotate(qkv: &mut [f32], bias: &[f32], positions: &[u32], shape: Heads, inv_freq: &[f32]) {
    let (d, h) = (shape.head_dim, shape.heads * shape.head_dim);
    let half = d / 2;
    qkv.par_chunks_mut(3 * h)
        .zip(positions.par_iter())
        .with_min_len(16)
        .for_each(|(row, &p)| {
            let turns: Vec<(f32, f32)> =
                inv_freq.iter().map(|f| (p as f32 * f).sin_cos()).collect();
            for part in 0..2 {
                for head in 0..shape.heads {
                    let at = part * h + head * d;
                    let x = &mut row[at..at + d];
                    for (v, b) in x.iter_mut().zip(&bias[at..at + d]) {
                        *v += b;
                    }
                    for (i, &(sin, cos)) in turns.iter().enumerate().take(half) {
                        let (a, b) = (x[i], x[i + half]);
                        x[i] = a * cos - b * sin;
                        x[i + half] = b * cos + a * sin;
                    }
                }
            }
        });
}

/// `a · b` in eight running sums (vectorizable).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// DeBERTa's disentangled attention over packed sequences, in f32: for each sequence and head,
/// `softmax((q_i · k_j + q_i · Pk[δ(i, j)] + k_j · Pq[δ(i, j)]) / sqrt(d · (1 + terms))) · v`,
/// with `qkv` `[tokens, 3 * hidden]` before its `bias`; writes the context `[tokens, hidden]`.
fn relative_attention(
    qkv: &[f32],
    bias: &[f32],
    ranges: &[(usize, usize)],
    shape: Heads,
    rel: &FusedRelative,
    out: &mut [f32],
) {
    let (heads, d) = (shape.heads, shape.head_dim);
    let h = heads * d;
    let rows = 2 * rel.params.span;
    let scale = 1.0 / ((d * rel.params.scale_factor()) as f32).sqrt();
    let tasks: Vec<((usize, usize), usize)> = ranges
        .iter()
        .flat_map(|&range| (0..heads).map(move |head| (range, head)))
        .collect();
    let contexts: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&((start, len), head)| {
            let col = head * d;
            let part = |offset: usize| -> Vec<f32> {
                let mut m = Vec::with_capacity(len * d);
                for t in start..start + len {
                    let row = &qkv[t * 3 * h + offset + col..][..d];
                    m.extend(
                        row.iter()
                            .zip(&bias[offset + col..][..d])
                            .map(|(x, b)| x + b),
                    );
                }
                m
            };
            let (q, k, v) = (part(0), part(h), part(2 * h));
            // Each token's dot products with every relative embedding's projection.
            let table = |x: &[f32], proj: &Option<Vec<f32>>| -> Option<Vec<f32>> {
                proj.as_ref().map(|p| {
                    x.chunks_exact(d)
                        .flat_map(|row| (0..rows).map(move |r| dot(row, &p[r * h + col..][..d])))
                        .collect()
                })
            };
            let c2p = table(&q, &rel.pos_key);
            let p2c = table(&k, &rel.pos_query);
            // δ(i, j) depends on i - j only: by i - j + len - 1.
            let delta: Vec<usize> = (0..2 * len - 1)
                .map(|t| rel.params.index(t, len - 1))
                .collect();
            let mut context = vec![0f32; len * d];
            let mut scores = vec![0f32; len];
            for i in 0..len {
                let qi = &q[i * d..][..d];
                for (j, s) in scores.iter_mut().enumerate() {
                    let r = delta[i + len - 1 - j];
                    let mut x = dot(qi, &k[j * d..][..d]);
                    if let Some(a) = &c2p {
                        x += a[i * rows + r];
                    }
                    if let Some(b) = &p2c {
                        x += b[j * rows + r];
                    }
                    *s = x * scale;
                }
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for s in scores.iter_mut() {
                    *s = math::exp(*s - max);
                    sum += *s;
                }
                let ctx = &mut context[i * d..][..d];
                for (j, p) in scores.iter().enumerate() {
                    let w = p / sum;
                    for (c, x) in ctx.iter_mut().zip(&v[j * d..][..d]) {
                        *c += w * x;
                    }
                }
            }
            context
        })
        .collect();
    for (((start, len), head), context) in tasks.iter().zip(contexts) {
        for (i, row) in context.chunks_exact(d).enumerate().take(*len) {
            out[(start + i) * h + head * d..][..d].copy_from_slice(row);
        }
    }
}
