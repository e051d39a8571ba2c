//! Row-wise kernels over `[rows, cols]` row-major matrices: bias + activation, and bias + LayerNorm
//! (the residual is already in the matrix: the fused pass accumulates the product onto it). Rows are
//! split among the caller's rayon threads.

use rayon::prelude::*;

use super::{math, multiversion};

/// Rows per rayon task: enough work per task to amortise scheduling, enough tasks to balance.
fn rows_per_task(rows: usize, cols: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let by_balance = rows.div_ceil(threads * 4).max(1);
    let by_size = (16_384 / cols.max(1)).max(1);
    by_balance.max(by_size).min(rows.max(1))
}

/// Which activation follows the bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    GeluErf,
    GeluTanh,
    Relu,
    Silu,
}

/// `x[r][c] = act(x[r][c] + bias[c])` for every row of `x` (`bias.len()` columns).
pub fn bias_act(x: &mut [f32], bias: &[f32], act: Act) {
    let cols = bias.len();
    assert_eq!(
        x.len() % cols,
        0,
        "bias_act: x is not a whole number of rows"
    );
    let chunk = rows_per_task(x.len() / cols, cols) * cols;
    x.par_chunks_mut(chunk)
        .for_each(|rows| bias_act_rows(rows, bias, act));
}

multiversion! {
    pub(crate) fn bias_act_rows(x: &mut [f32], bias: &[f32], act: Act) {
        // One loop per activation (a match per element would keep the loop from vectorizing).
        match act {
            Act::GeluErf => apply(x, bias, math::gelu_erf),
            Act::GeluTanh => apply(x, bias, math::gelu_tanh),
            Act::Relu => apply(x, bias, |y| y.max(0.0)),
            Act::Silu => apply(x, bias, |y| y / (1.0 + math::exp(-y))),
        }
    }
}

/// `x[r][c] = f(x[r][c] + bias[c])`, inlined into the caller's instruction set.
#[inline(always)]
fn apply(x: &mut [f32], bias: &[f32], f: impl Fn(f32) -> f32) {
    for row in x.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v = f(*v + b);
        }
    }
}

/// LayerNorm over each row of `x` after adding `bias` (if any): `x = (x + b - mean) / sqrt(var +
/// eps) * gamma + beta`, mean and (biased) variance of the row as torch computes them.
pub fn bias_layer_norm(x: &mut [f32], bias: Option<&[f32]>, gamma: &[f32], beta: &[f32], eps: f32) {
    let cols = gamma.len();
    assert_eq!(
        x.len() % cols,
        0,
        "layer_norm: x is not a whole number of rows"
    );
    let chunk = rows_per_task(x.len() / cols, cols) * cols;
    x.par_chunks_mut(chunk)
        .for_each(|rows| layer_norm_rows(rows, bias.unwrap_or(&[]), gamma, beta, eps));
}

multiversion! {
    fn layer_norm_rows(x: &mut [f32], bias: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
        let cols = gamma.len();
        for row in x.chunks_exact_mut(cols) {
            if !bias.is_empty() {
                for (v, b) in row.iter_mut().zip(bias) {
                    *v += b;
                }
            }
            let mean = math::sum16(row) / cols as f32;
            let mut acc = [0f32; 16];
            let mut chunks = row.chunks_exact(16);
            for c in &mut chunks {
                for i in 0..16 {
                    let d = c[i] - mean;
                    acc[i] += d * d;
                }
            }
            let mut var: f32 = chunks.remainder().iter().map(|v| (v - mean) * (v - mean)).sum();
            for a in acc {
                var += a;
            }
            let inv = 1.0 / (var / cols as f32 + eps).sqrt();
            for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
                *v = (*v - mean) * inv * g + b;
            }
        }
    }
}

/// The embedding tables of a BERT-family model, `[rows, hidden]` row-major.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddingTables<'a> {
    pub word: &'a [f32],
    /// `None` for models without absolute positions (ModernBERT's rotary ones, DeBERTa's relative
    /// ones): no position table is added.
    pub position: Option<&'a [f32]>,
    /// Added to every position id before the lookup (XLM-RoBERTa's positions start past the
    /// padding index).
    pub position_offset: u32,
    /// `None` for models without token types (DistilBERT): the type ids are ignored.
    pub token_type: Option<&'a [f32]>,
}

/// BERT's embeddings: `out[t] = word[ids[t]] + position[positions[t] + offset] +
/// token_type[types[t]]`, rows of `hidden = out.len() / ids.len()` columns. Indices are checked by
/// the caller.
pub fn embed(
    out: &mut [f32],
    tables: &EmbeddingTables<'_>,
    ids: &[u32],
    positions: &[u32],
    types: &[u32],
) {
    let hidden = out.len() / ids.len().max(1);
    let offset = tables.position_offset as usize;
    out.par_chunks_mut(hidden)
        .zip(
            ids.par_iter()
                .zip(positions.par_iter().zip(types.par_iter())),
        )
        .with_min_len(64)
        .for_each(|(row, (&id, (&pos, &ty)))| {
            let w = &tables.word[id as usize * hidden..][..hidden];
            let p = tables
                .position
                .map(|table| &table[(pos as usize + offset) * hidden..][..hidden]);
            let t = tables
                .token_type
                .map(|table| &table[ty as usize * hidden..][..hidden]);
            match (p, t) {
                (Some(p), Some(t)) => {
                    for (((o, a), b), c) in row.iter_mut().zip(w).zip(p).zip(t) {
                        *o = a + c + b;
                    }
                }
                (Some(e), None) | (None, Some(e)) => {
                    for ((o, a), b) in row.iter_mut().zip(w).zip(e) {
                        *o = a + b;
                    }
                }
                (None, None) => row.copy_from_slice(w),
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 8.0 - 4.0
            })
            .collect()
    }

    #[test]
    fn bias_gelu_matches_the_scalar_definition() {
        let cols = 37;
        let mut x = data(cols * 53, 1);
        let bias = data(cols, 2);
        let want: Vec<f64> = x
            .chunks(cols)
            .flat_map(|r| {
                r.iter().zip(&bias).map(|(&v, &b)| {
                    let y = (v + b) as f64;
                    0.5 * y * (1.0 + math::tests::erf64(y / 2f64.sqrt()))
                })
            })
            .collect();
        bias_act(&mut x, &bias, Act::GeluErf);
        let worst = x
            .iter()
            .zip(&want)
            .map(|(&a, &b)| (a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < 2e-6, "bias + gelu error {worst}");
    }

    #[test]
    fn layer_norm_matches_a_two_pass_f64_reference() {
        let cols = 384;
        let rows = 29;
        let mut x = data(cols * rows, 3);
        for (i, v) in x.iter_mut().enumerate() {
            *v += (i / cols) as f32 * 0.25 - 3.0; // rows with means from -3 to 4
        }
        let bias = data(cols, 4);
        let gamma = data(cols, 5);
        let beta = data(cols, 6);
        let eps = 1e-12;
        let want: Vec<f64> = x
            .chunks(cols)
            .flat_map(|r| {
                let y: Vec<f64> = r.iter().zip(&bias).map(|(&v, &b)| (v + b) as f64).collect();
                let mean = y.iter().sum::<f64>() / cols as f64;
                let var = y.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / cols as f64;
                let inv = 1.0 / (var + eps).sqrt();
                y.into_iter()
                    .zip(&gamma)
                    .zip(&beta)
                    .map(move |((v, &g), &b)| (v - mean) * inv * g as f64 + b as f64)
                    .collect::<Vec<_>>()
            })
            .collect();
        bias_layer_norm(&mut x, Some(&bias), &gamma, &beta, eps as f32);
        let worst = x
            .iter()
            .zip(&want)
            .map(|(&a, &b)| (a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-5, "layer norm error {worst}");
    }

    #[test]
    fn bias_gelu_tanh_matches_scalar_rows() {
        // 19 columns: the vector loops' remainders run too. (Each SIMD level against the others:
        // tests/cli.rs scores the demo model under XBENCH_SIMD=avx2 and portable.)
        let cols = 19;
        let mut a = data(cols * 7, 9);
        let mut b = a.clone();
        let bias = data(cols, 10);
        bias_act(&mut a, &bias, Act::GeluTanh);
        for row in b.chunks_mut(cols) {
            for (v, bb) in row.iter_mut().zip(&bias) {
                *v = math::gelu_tanh(*v + bb);
            }
        }
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-6 * x.abs().max(1.0), "{x} vs {y}");
        }
    }
}
