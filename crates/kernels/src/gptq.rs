//! GPTQ (Frantar et al., 2022): quantizes a weight one input at a time, and spreads the rounding
//! error of each input onto the inputs not yet quantized, in the proportions that least change the
//! product on calibration activations (by the inverse of their Hessian `H = Σ x xᵀ`). Rounding
//! every weight to its nearest level instead lets the errors add up; at 4 bits that is most of
//! int4's error.
//!
//! Weights here are `[inputs, outputs]` row-major, so "an input" is a row of `outputs` values.

use rayon::prelude::*;

/// The Hessian's damping, as a fraction of its mean diagonal: keeps it invertible when the
/// calibration rows are fewer than the inputs, and keeps the error spreading from fitting the few
/// calibration pairs instead of text at large (GPTQ's default, 0.01, is for calibration sets of
/// thousands of sequences). Measured on the demo model with xbench's 24 calibration pairs, int4
/// over the 2,400 pairs of `data/pairs.jsonl` against fp32 (`xbench accuracy --precisions int4`,
/// max / mean |Δlogit|): 0.01: 1.86 / 0.415; 0.1: 1.63 / 0.344; 0.3: 1.51 / 0.308; 1: 1.27 /
/// 0.294; 3: 1.36 / 0.348; 10: 1.29 / 0.322; 100: 1.54 / 0.330 (towards rounding to nearest).
const DAMP: f64 = 1.0;

crate::multiversion! {
    /// `h += x_i · x[i..]` (in f64) for each row `x` of `rows` (`[.., k]`) in order, skipping
    /// rows whose input `i` is zero.
    fn add_rows(h: &mut [f64], rows: &[f32], i: usize, k: usize) {
        for row in rows.chunks_exact(k) {
            let a = row[i];
            if a == 0.0 {
                continue;
            }
            let a = a as f64;
            for (hv, &b) in h.iter_mut().zip(&row[i..]) {
                *hv += a * b as f64;
            }
        }
    }
}

/// `Σ_t x_t x_tᵀ` over calibration rows `x_t` of `inputs` values, in f64.
#[derive(Debug, Clone)]
pub struct Hessian {
    pub inputs: usize,
    h: Vec<f64>,
    pub rows: usize,
}

impl Hessian {
    pub fn new(inputs: usize) -> Self {
        Self {
            inputs,
            h: vec![0.0; inputs * inputs],
            rows: 0,
        }
    }

    /// Adds the rows of `x` (`[rows, inputs]`): the upper triangle, mirrored in
    /// `inverse_factor`. Rows go in chunks; within a chunk each row `i` of `H` (in parallel on the
    /// caller's rayon pool) takes the chunk's rows in order while it stays in cache, so every
    /// entry adds the same terms in the same order as one row at a time would.
    pub fn add(&mut self, x: &[f32]) {
        const CHUNK: usize = 64;
        let k = self.inputs;
        if k == 0 {
            return;
        }
        for rows in x.chunks(CHUNK * k) {
            let rows = &rows[..rows.len() / k * k];
            self.h
                .par_chunks_mut(k)
                .enumerate()
                .for_each(|(i, h)| add_rows(&mut h[i..], rows, i, k));
            self.rows += rows.len() / k;
        }
    }

    /// The Hessian of the inputs multiplied by `m` per input (SmoothQuant multiplies the
    /// activations by `m` and the weight's rows by `1 / m`).
    pub fn multiplied(mut self, m: &[f32]) -> Hessian {
        let k = self.inputs;
        for i in 0..k {
            for j in i..k {
                self.h[i * k + j] *= m[i] as f64 * m[j] as f64;
            }
        }
        self
    }

    /// The upper triangular `U` with `(H + λI)⁻¹ = Uᵀ U`, row-major, where
    /// `λ = damp · mean(diag H)`; inputs never seen (zero diagonal) get a unit diagonal.
    ///
    /// With `J` the order-reversing permutation: the lower Cholesky factor `L` of `J (H + λI) J`
    /// gives `H + λI = U' U'ᵀ` with `U' = J L J` upper triangular, so `(H + λI)⁻¹ = Uᵀ U` with
    /// `U = U'⁻¹ = J L⁻¹ J`: one factorization and one triangular inverse, `k³/2` multiply-adds,
    /// all in the Hessian's own memory.
    fn inverse_factor(mut self, damp: f64) -> Option<Vec<f64>> {
        let k = self.inputs;
        let mean = (0..k).map(|i| self.h[i * k + i]).sum::<f64>() / k.max(1) as f64;
        let lambda = damp * mean.max(1e-12);
        // J (H + λI) J, in place: H's upper triangle mirrored, then the array reversed (index
        // i·k + j goes to k² − 1 − (i·k + j), which is row k−1−i, column k−1−j).
        let h = &mut self.h;
        for i in 0..k {
            if h[i * k + i] == 0.0 {
                h[i * k + i] = 1.0;
            }
            h[i * k + i] += lambda;
            for j in i + 1..k {
                h[j * k + i] = h[i * k + j];
            }
        }
        h.reverse();
        cholesky(h, k)?;
        lower_inverse(h, k);
        h.reverse();
        Some(std::mem::take(h))
    }
}

/// `Σ a_i b_i` in eight independent sums (so the loop vectorizes).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for t in 0..8 {
            acc[t] += x[t] * y[t];
        }
    }
    let tail: f64 = ta.iter().zip(tb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f64>() + tail
}

/// Replaces the symmetric positive definite `a` (`k × k`) by its lower Cholesky factor (zero
/// above the diagonal); `None` if it is not positive definite.
fn cholesky(a: &mut [f64], k: usize) -> Option<()> {
    for i in 0..k {
        for j in 0..=i {
            let (done, row) = a.split_at_mut(i * k);
            let s = if j < i {
                row[j] - dot(&row[..j], &done[j * k..j * k + j])
            } else {
                row[j] - dot(&row[..j], &row[..j])
            };
            if i == j {
                if s <= 0.0 || !s.is_finite() {
                    return None;
                }
                row[i] = s.sqrt();
            } else {
                row[j] = s / done[j * k + j];
            }
        }
        for v in &mut a[i * k + i + 1..(i + 1) * k] {
            *v = 0.0;
        }
    }
    Some(())
}

/// Replaces the lower triangular `l` by its inverse, one column at a time by forward
/// substitution of a unit vector: solving column `j` reads only columns `j..` of `l`, so it can
/// overwrite column `j` once solved.
fn lower_inverse(l: &mut [f64], k: usize) {
    let mut x = vec![0.0; k];
    for j in 0..k {
        x[j] = 1.0 / l[j * k + j];
        for i in j + 1..k {
            x[i] = -dot(&l[i * k + j..i * k + i], &x[j..i]) / l[i * k + i];
        }
        for i in j..k {
            l[i * k + j] = x[i];
        }
    }
}

/// Quantizes `w` (`[inputs, outputs]`) in place by GPTQ. `round(input, w)` must replace row
/// `input` of `w` by its quantized values (dequantized, as f32); it may read the rows after it
/// (to choose a group's scale when it reaches the group's first input). Returns false, leaving `w`
/// rounded without error feedback, when the Hessian cannot be factored.
pub fn quantize(
    w: &mut [f32],
    outputs: usize,
    hessian: Hessian,
    mut round: impl FnMut(usize, &mut [f32]),
) -> bool {
    let k = hessian.inputs;
    assert_eq!(w.len(), k * outputs, "w is not [inputs, outputs]");
    let Some(u) = hessian.inverse_factor(DAMP) else {
        for i in 0..k {
            round(i, w);
        }
        return false;
    };
    let mut before = vec![0f32; outputs];
    // The errors and their spreading in f64: in f32 the result came out measurably worse (int4 on
    // the demo model, max |Δlogit| vs transformers 1.68 instead of 1.24).
    let mut error = vec![0f64; outputs];
    for i in 0..k {
        before.copy_from_slice(&w[i * outputs..(i + 1) * outputs]);
        round(i, w);
        let d = u[i * k + i];
        for ((e, &b), &q) in error
            .iter_mut()
            .zip(&before)
            .zip(&w[i * outputs..(i + 1) * outputs])
        {
            *e = (b as f64 - q as f64) / d;
        }
        let (_, rest) = w.split_at_mut((i + 1) * outputs);
        for (m, row) in rest.chunks_exact_mut(outputs).enumerate() {
            let f = u[i * k + i + 1 + m];
            if f == 0.0 {
                continue;
            }
            for (v, e) in row.iter_mut().zip(&error) {
                *v -= (e * f) as f32;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn the_inverse_factor_inverts() {
        let k = 6;
        let x = values(40 * k, 3);
        let mut h = Hessian::new(k);
        h.add(&x);
        let u = h.clone().inverse_factor(0.0).unwrap();
        // U is upper triangular, and Uᵀ U · H = I.
        for i in 0..k {
            for j in 0..i {
                assert_eq!(u[i * k + j], 0.0);
            }
        }
        let full = |i: usize, j: usize| h.h[i.min(j) * k + i.max(j)];
        for i in 0..k {
            for j in 0..k {
                let v: f64 = (0..k)
                    .map(|m| {
                        let inv_im: f64 = (0..k).map(|t| u[t * k + i] * u[t * k + m]).sum();
                        inv_im * full(m, j)
                    })
                    .sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-9, "[{i}][{j}] = {v}");
            }
        }
    }

    /// On correlated calibration inputs, GPTQ's product error is well below rounding each weight
    /// to its nearest level.
    #[test]
    fn error_feedback_beats_rounding_to_nearest() {
        let (k, n, rows) = (32, 8, 256);
        // Inputs with shared components, as activations have.
        let base = values(rows * 4, 5);
        let noise = values(rows * k, 7);
        let x: Vec<f32> = (0..rows * k)
            .map(|i| {
                let (r, c) = (i / k, i % k);
                base[r * 4 + c % 4] + 0.3 * noise[i]
            })
            .collect();
        let w0 = values(k * n, 11);
        let step = 0.25f32;
        let round = |i: usize, w: &mut [f32]| {
            for v in &mut w[i * n..(i + 1) * n] {
                *v = (*v / step).round() * step;
            }
        };
        let mut nearest = w0.clone();
        for i in 0..k {
            round(i, &mut nearest);
        }
        let mut h = Hessian::new(k);
        h.add(&x);
        let mut fed = w0.clone();
        assert!(quantize(&mut fed, n, h.clone(), round));
        let err = |w: &[f32]| -> f64 {
            let mut e = 0.0;
            for r in 0..rows {
                for j in 0..n {
                    let d: f64 = (0..k)
                        .map(|i| x[r * k + i] as f64 * (w[i * n + j] - w0[i * n + j]) as f64)
                        .sum();
                    e += d * d;
                }
            }
            e
        };
        let (a, b) = (err(&nearest), err(&fed));
        assert!(b < 0.5 * a, "GPTQ {b} vs nearest {a}");
        // Every weight is on the grid.
        assert!(fed
            .iter()
            .all(|v| ((v / step).round() * step - v).abs() < 1e-6));
    }
}
