//! The row passes of decoder-only transformers (Qwen2, Qwen3, Gemma) scored as rerankers: RMSNorm,
//! the Q/K/V product's biases, per-head norms and rotary positions in one pass, causal
//! grouped-query attention over packed sequences, some of which continue a shared prefix (its keys
//! and values computed once), and the gated activation of their MLPs. Written once as plain loops
//! that the compiler vectorizes for each SIMD level ([`crate::simd`]), spread over the caller's
//! rayon threads.

use rayon::prelude::*;

use super::rows::Act;
use super::{math, multiversion, SharedMut};

/// RMSNorm parameters, as transformers computes the norm in f32: `x / sqrt(mean(x²) + eps) ·
/// (offset + weight)`, `offset` 0 for Qwen (`weight · x`) and 1 for Gemma (`(1 + weight) · x`).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub weight: Vec<f32>,
    pub eps: f32,
    pub offset: f32,
}

impl RmsNorm {
    /// The scale each column is multiplied by after normalization: `offset + weight`.
    pub fn gains(&self) -> Vec<f32> {
        self.weight.iter().map(|w| self.offset + w).collect()
    }
}

multiversion! {
    /// One row (or one head) normalized into `out`.
    fn rms_row(x: &[f32], weight: &[f32], eps: f32, offset: f32, out: &mut [f32]) {
        let mut acc = [0f32; 8];
        let chunks = x.chunks_exact(8);
        let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
        for c in chunks {
            for l in 0..8 {
                acc[l] += c[l] * c[l];
            }
        }
        let mean = (acc.iter().sum::<f32>() + tail) / x.len() as f32;
        let r = 1.0 / (mean + eps).sqrt();
        for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
            *o = (v * r) * (offset + w);
        }
    }
}

/// Every row of `x` (`norm.weight.len()` columns) normalized into `out`, rows in parallel.
pub fn rms_norm_into(x: &[f32], norm: &RmsNorm, out: &mut [f32]) {
    let cols = norm.weight.len();
    assert_eq!(
        x.len(),
        out.len(),
        "rms_norm_into: x and out differ in size"
    );
    out.par_chunks_mut(cols)
        .zip(x.par_chunks(cols))
        .with_min_len(16)
        .for_each(|(o, row)| rms_row(row, &norm.weight, norm.eps, norm.offset, o));
}

/// The shape of a `[tokens, (q_heads + 2 kv_heads) · head_dim]` Q/K/V product: queries, keys and
/// values side by side, each head's `head_dim` columns together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gqa {
    pub q_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl Gqa {
    /// Columns of one row of the Q/K/V product.
    pub fn width(self) -> usize {
        (self.q_heads + 2 * self.kv_heads) * self.head_dim
    }

    /// Columns of the attention's output (the queries' width).
    pub fn q_width(self) -> usize {
        self.q_heads * self.head_dim
    }
}

/// Per-head norms of queries and keys (Qwen3's `q_norm`, `k_norm`), over `head_dim` columns each.
#[derive(Debug, Clone)]
pub struct HeadNorms {
    pub q: RmsNorm,
    pub k: RmsNorm,
}

/// Prepares the Q/K/V product for attention, row by row: adds `bias` (`[width]`; empty for none),
/// normalizes each query and key head by `norms` (where the model has them), then turns each
/// query and key head's dimension pairs `(i, i + d/2)` by `position · inv_freq[i]` (rotary
/// positions, as transformers' `rotate_half` does, in f32).
pub fn prepare_qkv(
    qkv: &mut [f32],
    shape: Gqa,
    bias: &[f32],
    norms: Option<&HeadNorms>,
    positions: &[u32],
    inv_freq: &[f32],
) {
    let width = shape.width();
    assert_eq!(
        qkv.len(),
        positions.len() * width,
        "prepare_qkv: qkv is not [tokens, width]"
    );
    assert!(
        bias.is_empty() || bias.len() == width,
        "prepare_qkv: bias is not [width]"
    );
    qkv.par_chunks_mut(width)
        .zip(positions.par_iter())
        .with_min_len(8)
        .for_each(|(row, &p)| prepare_row(row, shape, bias, norms, p, inv_freq));
}

fn prepare_row(
    row: &mut [f32],
    shape: Gqa,
    bias: &[f32],
    norms: Option<&HeadNorms>,
    position: u32,
    inv_freq: &[f32],
) {
    if !bias.is_empty() {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
    let d = shape.head_dim;
    let rotated = shape.q_heads + shape.kv_heads;
    let mut head = vec![0f32; d];
    if let Some(n) = norms {
        for h in 0..rotated {
            let norm = if h < shape.q_heads { &n.q } else { &n.k };
            let x = &mut row[h * d..][..d];
            head.copy_from_slice(x);
            rms_row(&head, &norm.weight, norm.eps, norm.offset, x);
        }
    }
    let turns: Vec<(f32, f32)> = inv_freq
        .iter()
        .map(|f| (position as f32 * f).sin_cos())
        .collect();
    let half = d / 2;
    for h in 0..rotated {
        let x = &mut row[h * d..][..d];
        for (i, &(sin, cos)) in turns.iter().enumerate().take(half) {
            let (a, b) = (x[i], x[i + half]);
            x[i] = a * cos - b * sin;
            x[i + half] = b * cos + a * sin;
        }
    }
}

/// One packed sequence of an attention call: its own tokens `start..start + len`, each attending
/// to the tokens of `context` (a shared prefix computed once, which it continues), then causally to
/// its own tokens up to itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub start: usize,
    pub len: usize,
    /// `(start, len)` of the prefix this sequence continues, if any.
    pub context: Option<(usize, usize)>,
}

/// Causal grouped-query attention: for each segment and query head,
/// `softmax(q · Kᵀ / √d) · V` over the keys the segment's queries see (query head `h` reads key and
/// value head `h / (q_heads / kv_heads)`), softmax in f32. `qkv` is `[tokens, width]` after
/// [`prepare_qkv`]; writes `out` `[tokens, q_width]` at every segment's rows.
pub fn causal_attention(qkv: &[f32], shape: Gqa, segments: &[Segment], out: &mut [f32]) {
    let (width, qw) = (shape.width(), shape.q_width());
    let tokens = qkv.len() / width;
    assert_eq!(
        out.len(),
        tokens * qw,
        "causal_attention: out is not [tokens, q_width]"
    );
    assert!(
        shape.kv_heads > 0 && shape.q_heads.is_multiple_of(shape.kv_heads),
        "causal_attention: {} query heads do not share {} key-value heads evenly",
        shape.q_heads,
        shape.kv_heads
    );
    for s in segments {
        assert!(
            s.start + s.len <= tokens,
            "causal_attention: a segment lies past the tokens"
        );
        if let Some((c, n)) = s.context {
            assert!(
                c + n <= tokens,
                "causal_attention: a context lies past the tokens"
            );
        }
    }
    let tasks: Vec<(Segment, usize)> = segments
        .iter()
        .flat_map(|&s| (0..shape.kv_heads).map(move |g| (s, g)))
        .collect();
    let shared = SharedMut::new(out.as_mut_ptr());
    tasks.par_iter().for_each(|&(s, g)| {
        let d = shape.head_dim;
        let group = shape.q_heads / shape.kv_heads;
        let n_ctx = s.context.map_or(0, |(_, n)| n);
        let keys = n_ctx + s.len;
        let mut k = vec![0f32; keys * d];
        let mut v = vec![0f32; keys * d];
        let k_col = (shape.q_heads + g) * d;
        let v_col = (shape.q_heads + shape.kv_heads + g) * d;
        let rows = s
            .context
            .map(|(c, n)| c..c + n)
            .into_iter()
            .flatten()
            .chain(s.start..s.start + s.len);
        for (j, t) in rows.enumerate() {
            let row = &qkv[t * width..][..width];
            k[j * d..][..d].copy_from_slice(&row[k_col..k_col + d]);
            v[j * d..][..d].copy_from_slice(&row[v_col..v_col + d]);
        }
        let mut q = vec![0f32; s.len * d];
        let mut context = vec![0f32; s.len * d];
        for h in g * group..(g + 1) * group {
            for i in 0..s.len {
                let row = &qkv[(s.start + i) * width..][..width];
                q[i * d..][..d].copy_from_slice(&row[h * d..(h + 1) * d]);
            }
            attend_head(&q, &k, &v, n_ctx, s.len, d, &mut context);
            for i in 0..s.len {
                // SAFETY: task (segment, g) alone writes the columns of heads g·group..(g+1)·group
                // of its segment's rows; segments do not overlap, and out is [tokens, q_width].
                unsafe {
                    let dst = shared.get().add((s.start + i) * qw + h * d);
                    std::ptr::copy_nonoverlapping(context[i * d..].as_ptr(), dst, d);
                }
            }
        }
    });
}

multiversion! {
    /// One head of one segment: queries `q` `[len, d]`, keys and values `[n_ctx + len, d]` (the
    /// context's first); query `i` sees keys `0..=n_ctx + i`. Writes `context` `[len, d]`.
    fn attend_head(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        n_ctx: usize,
        len: usize,
        d: usize,
        context: &mut [f32],
    ) {
        let scale = 1.0 / (d as f32).sqrt();
        let mut scores = vec![0f32; n_ctx + len];
        for i in 0..len {
            let qi = &q[i * d..][..d];
            let seen = n_ctx + i + 1;
            let mut max = f32::NEG_INFINITY;
            for (j, s) in scores[..seen].iter_mut().enumerate() {
                *s = dot(qi, &k[j * d..][..d]) * scale;
                max = max.max(*s);
            }
            let mut sum = 0f32;
            for s in scores[..seen].iter_mut() {
                *s = math::exp(*s - max);
                sum += *s;
            }
            let out = &mut context[i * d..][..d];
            out.fill(0.0);
            let inv = 1.0 / sum;
            for (j, p) in scores[..seen].iter().enumerate() {
                let w = p * inv;
                for (o, x) in out.iter_mut().zip(&v[j * d..][..d]) {
                    *o += w * x;
                }
            }
        }
    }
}

/// `a · b` in eight running sums (vectorizable).
#[inline(always)]
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

/// The gated activation of a Qwen or Gemma MLP: each row of `up` is `[gate | up]` (`2 · width`
/// values); `out` row (`width` values) = `act(gate) · up`.
pub fn gated(up: &[f32], width: usize, act: Act, out: &mut [f32]) {
    assert_eq!(up.len(), 2 * out.len(), "gated: up is not twice out");
    if out.is_empty() {
        return;
    }
    // About 64 KB of `up` per task.
    let rows = (8192 / width).max(1);
    out.par_chunks_mut(rows * width)
        .zip(up.par_chunks(rows * 2 * width))
        .for_each(|(o, u)| gated_rows(u, width, act, o));
}

multiversion! {
    fn gated_rows(up: &[f32], width: usize, act: Act, out: &mut [f32]) {
        // One loop per activation (a match per element would keep the loop from vectorizing).
        match act {
            Act::GeluErf => gate(up, width, out, math::gelu_erf),
            Act::GeluTanh => gate(up, width, out, math::gelu_tanh),
            Act::Relu => gate(up, width, out, |y| y.max(0.0)),
            Act::Silu => gate(up, width, out, |y| y / (1.0 + math::exp(-y))),
        }
    }
}

#[inline(always)]
fn gate(up: &[f32], width: usize, out: &mut [f32], f: impl Fn(f32) -> f32) {
    for (o, row) in out.chunks_exact_mut(width).zip(up.chunks_exact(2 * width)) {
        let (g, u) = row.split_at(width);
        for ((o, g), u) in o.iter_mut().zip(g).zip(u) {
            *o = f(*g) * u;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attention of one sequence computed plainly, in f64.
    fn naive(qkv: &[f32], shape: Gqa, rows: &[usize], out_rows: usize) -> Vec<f64> {
        let (w, d) = (shape.width(), shape.head_dim);
        let group = shape.q_heads / shape.kv_heads;
        let n = rows.len();
        let mut out = vec![0f64; out_rows * shape.q_width()];
        for (i, &ti) in rows.iter().enumerate().skip(n - out_rows) {
            for h in 0..shape.q_heads {
                let g = h / group;
                let q = &qkv[ti * w + h * d..][..d];
                let scores: Vec<f64> = rows[..=i]
                    .iter()
                    .map(|&tj| {
                        let k = &qkv[tj * w + (shape.q_heads + g) * d..][..d];
                        q.iter()
                            .zip(k)
                            .map(|(a, b)| (*a as f64) * (*b as f64))
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                let o = &mut out[(i - (n - out_rows)) * shape.q_width() + h * d..][..d];
                for (p, &tj) in e.iter().zip(&rows[..=i]) {
                    let v = &qkv[tj * w + (shape.q_heads + shape.kv_heads + g) * d..][..d];
                    for (o, x) in o.iter_mut().zip(v) {
                        *o += p / sum * (*x as f64);
                    }
                }
            }
        }
        out
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    /// Sequences alone and sequences continuing a shared prefix both equal attention over the
    /// whole sequence computed plainly.
    #[test]
    fn causal_attention_with_and_without_a_shared_prefix() {
        let shape = Gqa {
            q_heads: 4,
            kv_heads: 2,
            head_dim: 8,
        };
        let w = shape.width();
        // Tokens: a prefix of 5 (rows 0..5), then two continuations of 3 and 4 (rows 5..8,
        // 8..12), then a sequence of its own of 6 (rows 12..18).
        let qkv = values(18 * w, 7);
        let segments = [
            Segment {
                start: 0,
                len: 5,
                context: None,
            },
            Segment {
                start: 5,
                len: 3,
                context: Some((0, 5)),
            },
            Segment {
                start: 8,
                len: 4,
                context: Some((0, 5)),
            },
            Segment {
                start: 12,
                len: 6,
                context: None,
            },
        ];
        let mut out = vec![0f32; 18 * shape.q_width()];
        causal_attention(&qkv, shape, &segments, &mut out);
        let cases: [(Vec<usize>, usize, usize); 4] = [
            ((0..5).collect(), 5, 0),
            ((0..5).chain(5..8).collect(), 3, 5),
            ((0..5).chain(8..12).collect(), 4, 8),
            ((12..18).collect(), 6, 12),
        ];
        for (rows, own, start) in cases {
            let want = naive(&qkv, shape, &rows, own);
            let got = &out[start * shape.q_width()..(start + own) * shape.q_width()];
            for (g, w) in got.iter().zip(&want) {
                assert!((*g as f64 - w).abs() < 1e-5, "{g} vs {w}");
            }
        }
    }

    #[test]
    fn rms_norm_and_the_gate_compute_as_written() {
        let x = [1.0f32, -2.0, 3.0, 0.5];
        let norm = RmsNorm {
            weight: vec![0.5, 1.0, -1.0, 2.0],
            eps: 1e-6,
            offset: 1.0,
        };
        let mut out = [0f32; 4];
        rms_norm_into(&x, &norm, &mut out);
        let rms = ((1.0 + 4.0 + 9.0 + 0.25) / 4.0 + 1e-6f64).sqrt();
        for ((o, v), w) in out.iter().zip(x).zip(&norm.weight) {
            assert!((*o as f64 - v as f64 / rms * (1.0 + *w as f64)).abs() < 1e-6);
        }
        let up = [1.0f32, -1.0, 2.0, 3.0];
        let mut out = [0f32; 2];
        gated(&up, 2, Act::Silu, &mut out);
        let silu = |x: f64| x / (1.0 + (-x).exp());
        assert!((out[0] as f64 - silu(1.0) * 2.0).abs() < 1e-5);
        assert!((out[1] as f64 - silu(-1.0) * 3.0).abs() < 1e-5);
    }
}
