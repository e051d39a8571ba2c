//! Int8 matrix products: weights quantized per output column (symmetric, once, at load),
//! activations per row (symmetric, at each product), products accumulated in i32 — with AVX-512
//! VNNI's `vpdpbusd` (64 int8 multiply-adds per instruction, 4× an fp32 FMA's) where the CPU has it,
//! a portable loop elsewhere — then scaled back to f32.
//!
//! A row's result depends on that row alone (its own scale), so a pair's score never depends on the
//! other pairs of its batch. Activations are quantized asymmetrically to u8 (`q = x / s + z`, the
//! row's range mapped onto 0..=255 with zero exact), which suits `vpdpbusd` (unsigned × signed bytes)
//! and skewed rows such as GELU outputs; the `z · Σₖ w` this adds is subtracted per column after.

use crate::matmul::Weight;
use crate::multiversion;
use crate::tiles::{for_each_tile, store, BLOCKS, LANES, MR, TILE_COLS};

/// A linear layer's weight quantized to int8, packed for the product, and its bias (f32).
#[derive(Debug, Clone)]
pub struct QWeight {
    /// `[tile][group of 4 inputs][block][16 outputs][4 inputs]`, zero past the real sizes.
    packed: Vec<i8>,
    /// Per output (padded to whole tiles with 0): `w ≈ scale · q`.
    scales: Vec<f32>,
    /// Per output: `Σₖ q`, times a row's zero point the offset its activations add.
    col_sums: Vec<i32>,
    pub bias: Vec<f32>,
    pub inputs: usize,
    pub outputs: usize,
    /// Groups of 4 inputs (the last one zero-padded).
    groups: usize,
    tiles: usize,
    /// Per input, what activations are multiplied by before quantizing (the weights' rows were
    /// multiplied by its inverse): evens out channels whose activations run far larger than the
    /// rest, so they do not coarsen every other channel's step. All ones when not smoothed.
    smooth: Vec<f32>,
}

impl QWeight {
    /// Quantizes an fp32 weight: each output column gets the scale that maps its largest
    /// magnitude to 127.
    pub fn quantize(w: &Weight) -> Self {
        Self::quantize_scaled(w, None)
    }

    /// Quantizes with activations smoothed per input channel (SmoothQuant): given each input's
    /// activation magnitude `activation[k]`, the channel is scaled by
    /// `s = activation^α / max|w row|^(1-α)` — activations divided by `s`, the weight row
    /// multiplied by it, the product unchanged — moving quantization difficulty from activations
    /// with outlier channels to the weights (α = ½ meets halfway).
    pub fn quantize_smoothed(w: &Weight, activation: &[f32], alpha: f32) -> Self {
        assert_eq!(
            activation.len(),
            w.inputs,
            "one activation magnitude per input"
        );
        Self::quantize_scaled(w, Some(smoothing(w, activation, alpha)))
    }

    fn quantize_scaled(w: &Weight, s: Option<Vec<f32>>) -> Self {
        let (scaled, smooth) = smoothed(w, s);
        let (k, n) = (scaled.inputs, scaled.outputs);
        let groups = k.div_ceil(4);
        let tiles = n.div_ceil(TILE_COLS);
        let padded = tiles * TILE_COLS;
        let mut scales = vec![0f32; padded];
        for (j, scale) in scales.iter_mut().enumerate().take(n) {
            let max = (0..k)
                .map(|kk| scaled.w[kk * n + j].abs())
                .fold(0f32, f32::max);
            *scale = max / 127.0;
        }
        let level = |v: f32, scale: f32| {
            if scale > 0.0 {
                (v / scale).round().clamp(-127.0, 127.0)
            } else {
                0.0
            }
        };
        let w = &scaled;
        let mut packed = vec![0i8; tiles * groups * TILE_COLS * 4];
        let mut col_sums = vec![0i32; padded];
        for kk in 0..k {
            let (g, t) = (kk / 4, kk % 4);
            for j in 0..n {
                let q = level(w.w[kk * n + j], scales[j]) as i8;
                let (tile, col) = (j / TILE_COLS, j % TILE_COLS);
                packed[((tile * groups + g) * TILE_COLS + col) * 4 + t] = q;
                col_sums[j] += q as i32;
            }
        }
        // The arrays fit the shape by construction.
        Self::from_stored(w, (packed, scales, col_sums, smooth))
            .expect("quantization builds arrays of the weight's shape")
    }

    /// Its arrays, for a cache: `(packed, scales, col_sums, smooth)`.
    pub fn stored(&self) -> (Vec<i8>, Vec<f32>, Vec<i32>, Vec<f32>) {
        (
            self.packed.clone(),
            self.scales.clone(),
            self.col_sums.clone(),
            self.smooth.clone(),
        )
    }

    /// The weight of `w`'s shape and bias from the arrays [`QWeight::stored`] gave; an error
    /// names the array whose length does not fit the shape.
    pub fn from_stored(
        w: &Weight,
        (packed, scales, col_sums, smooth): (Vec<i8>, Vec<f32>, Vec<i32>, Vec<f32>),
    ) -> Result<Self, String> {
        let (k, n) = (w.inputs, w.outputs);
        let groups = k.div_ceil(4);
        let tiles = n.div_ceil(TILE_COLS);
        check_len("packed", packed.len(), tiles * groups * TILE_COLS * 4)?;
        check_len("scales", scales.len(), tiles * TILE_COLS)?;
        check_len("col_sums", col_sums.len(), tiles * TILE_COLS)?;
        check_len("smooth", smooth.len(), k)?;
        Ok(Self {
            packed,
            scales,
            col_sums,
            bias: w.bias.clone(),
            inputs: k,
            outputs: n,
            groups,
            tiles,
            smooth,
        })
    }

    /// Bytes the quantized weight holds (packed values, scales, column sums; not the bias).
    pub fn weight_bytes(&self) -> usize {
        self.packed.len() + 4 * (self.scales.len() + self.col_sums.len())
    }

    /// `y = x · W` for `x` `[rows, in]` (no bias), as [`Weight::matmul_into`] does, with each
    /// row of `x` quantized to int8 on the way. With `accumulate`, `y += x · W`.
    pub fn matmul_into(&self, x: &[f32], y: &mut [f32], accumulate: bool) {
        self.matmul_into_with(x, y, accumulate, vnni_available(), true);
    }

    /// [`QWeight::matmul_into`] with the VNNI kernel or the portable loop (tests run both).
    pub(crate) fn matmul_into_with(
        &self,
        x: &[f32],
        y: &mut [f32],
        accumulate: bool,
        vnni: bool,
        parallel: bool,
    ) {
        let (k, n) = (self.inputs, self.outputs);
        let rows = x.len() / k;
        assert_eq!(x.len(), rows * k, "x is not [rows, in]");
        assert_eq!(y.len(), rows * n, "y is not [rows, out]");
        if rows == 0 {
            return;
        }
        let kp = self.groups * 4;
        // Each task quantizes its rows once, then runs them against its tiles.
        let prepare = |chunk| quantize_rows(x, k, kp, &self.smooth, chunk);
        for_each_tile(
            rows,
            n,
            self.tiles,
            y,
            prepare,
            |(xq, sx), tile, ti, valid, y_tile| {
                let a = &xq[ti * MR * kp..(ti + 1) * MR * kp];
                let s = &sx[ti * MR..(ti + 1) * MR];
                #[cfg(target_arch = "x86_64")]
                if vnni {
                    // SAFETY: vnni_available() checked the CPU features; `a` holds MR rows of kp
                    // bytes and y_tile `valid` rows of the tile's region, which only this call writes.
                    unsafe {
                        vnni::tile(self, tile, a, kp, s, valid, y_tile, accumulate);
                    }
                    return;
                }
                let _ = vnni;
                portable_tile(self, tile, a, kp, s, valid, y_tile, accumulate);
            },
            parallel,
        );
    }
}

/// An error when a stored array's length is not what the weight's shape needs.
pub(crate) fn check_len(name: &str, found: usize, want: usize) -> Result<(), String> {
    if found == want {
        Ok(())
    } else {
        Err(format!(
            "{name} holds {found} values; the shape needs {want}"
        ))
    }
}

/// Quantizes rows `chunk` of `x` (`[rows, k]`, multiplied by `smooth`) to u8 rows of `kp` bytes
/// (the padding holds the zero of 128, against zero weights), in whole groups of `MR` rows, with
/// each row's scale: what a task of an integer product computes once for all its tiles.
pub(crate) fn quantize_rows(
    x: &[f32],
    k: usize,
    kp: usize,
    smooth: &[f32],
    chunk: std::ops::Range<usize>,
) -> (Vec<u8>, Vec<RowScale>) {
    let mut xq = vec![128u8; chunk.len().div_ceil(MR) * MR * kp];
    let mut sx = vec![RowScale::default(); chunk.len().div_ceil(MR) * MR];
    for (i, r) in chunk.enumerate() {
        let row = &x[r * k..(r + 1) * k];
        sx[i] = quantize_row(row, smooth, &mut xq[i * kp..i * kp + k]);
    }
    (xq, sx)
}

/// SmoothQuant's per-input multipliers `s = activation^α / max|w row|^(1-α)` (1 where that is not
/// a positive finite number): activations are divided by `s`, the weight's rows multiplied by it.
pub(crate) fn smoothing(w: &Weight, activation: &[f32], alpha: f32) -> Vec<f32> {
    assert_eq!(
        activation.len(),
        w.inputs,
        "one activation magnitude per input"
    );
    let n = w.outputs;
    activation
        .iter()
        .enumerate()
        .map(|(k, &a)| {
            let wmax = w.w[k * n..(k + 1) * n]
                .iter()
                .fold(0f32, |m, v| m.max(v.abs()));
            let s = a.abs().powf(alpha) / wmax.powf(1.0 - alpha);
            if s.is_finite() && s > 0.0 {
                s
            } else {
                1.0
            }
        })
        .collect()
}

/// The weight with its rows multiplied by `s` (a copy when `s` is `None`), and the multipliers
/// the activations then take: `1 / s`, or ones.
pub(crate) fn smoothed(w: &Weight, s: Option<Vec<f32>>) -> (Weight, Vec<f32>) {
    let n = w.outputs;
    let mut m = w.clone();
    let smooth = match s {
        Some(s) => {
            for (k, &s) in s.iter().enumerate() {
                for v in &mut m.w[k * n..(k + 1) * n] {
                    *v *= s;
                }
            }
            s.iter().map(|v| 1.0 / v).collect()
        }
        None => vec![1.0; w.inputs],
    };
    (m, smooth)
}

/// Whether the AVX-512 VNNI kernel runs here (never when `XBENCH_SIMD` lowers the level).
pub fn vnni_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::simd() == crate::Simd::Avx512 && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// How a row was quantized: `x ≈ scale · (q − zero)`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct RowScale {
    pub scale: f32,
    pub zero: i32,
}

multiversion! {
    /// Quantizes the row `x · m` (`m`: the smoothing multipliers): writes `q = round(x·m / s) + z`
    /// (0..=255) for its range `[lo, hi]` (widened to hold 0, which stays exact),
    /// `s = (hi − lo) / 255`, `z = round(−lo / s)`. The scale is NaN when the row holds a NaN or an
    /// infinity, which then comes out of the product.
    pub(crate) fn quantize_row(x: &[f32], m: &[f32], q: &mut [u8]) -> RowScale {
        // 16 independent extremes so it vectorizes; `poison` turns NaN if any value is not finite.
        let mut lo = [0f32; 16];
        let mut hi = [0f32; 16];
        let mut poison = [0f32; 16];
        let m = &m[..x.len()];
        let mut chunks = x.chunks_exact(16).zip(m.chunks_exact(16));
        for (c, m) in &mut chunks {
            for i in 0..16 {
                let v = c[i] * m[i];
                lo[i] = lo[i].min(v);
                hi[i] = hi[i].max(v);
                poison[i] += v * 0.0;
            }
        }
        let tail = x.len() / 16 * 16;
        let (mut l, mut h, mut p) = (0f32, 0f32, 0f32);
        for (&v, &m) in x[tail..].iter().zip(&m[tail..]) {
            let v = v * m;
            l = l.min(v);
            h = h.max(v);
            p += v * 0.0;
        }
        for i in 0..16 {
            l = l.min(lo[i]);
            h = h.max(hi[i]);
            p += poison[i];
        }
        if h == l || p.is_nan() {
            q.fill(0);
            let scale = if p.is_nan() { f32::NAN } else { 0.0 };
            return RowScale { scale, zero: 0 };
        }
        let scale = (h - l) / 255.0;
        let inv = 1.0 / scale;
        let zero = (-l * inv).round().clamp(0.0, 255.0);
        // x·inv + z lies in [−½, 255½]: adding ½ and truncating rounds it (half up); the cast
        // saturates at both ends.
        let offset = zero + 0.5;
        for ((q, &v), &m) in q.iter_mut().zip(x).zip(m) {
            *q = (v * m * inv + offset) as u8;
        }
        RowScale {
            scale,
            zero: zero as i32,
        }
    }
}

crate::multiversion! {
    /// One tile in plain loops, compiled for the CPU's level so that they vectorize (integer
    /// sums: the same values as `vpdpbusd` at every level). Each group's 4 × 64 weights are
    /// widened once for all the tile's rows.
    #[allow(clippy::too_many_arguments)]
    fn portable_tile(
        w: &QWeight,
        tile: usize,
        a: &[u8],
        kp: usize,
        sx: &[RowScale],
        valid: usize,
        y: *mut f32,
        accumulate: bool,
    ) {
        let n = w.outputs;
        let base = tile * w.groups * TILE_COLS * 4;
        let mut acc = [[0i32; TILE_COLS]; MR];
        let mut wide = [[0i32; TILE_COLS]; 4];
        for g in 0..w.groups {
            let block = &w.packed[base + g * TILE_COLS * 4..base + (g + 1) * TILE_COLS * 4];
            for (t, wide) in wide.iter_mut().enumerate() {
                for (o, &b) in wide.iter_mut().zip(block[t..].iter().step_by(4)) {
                    *o = i32::from(b);
                }
            }
            for (r, acc) in acc.iter_mut().enumerate().take(valid) {
                let xs = &a[r * kp + g * 4..r * kp + g * 4 + 4];
                for (&x, wide) in xs.iter().zip(&wide) {
                    let x = i32::from(x);
                    for (acc, &v) in acc.iter_mut().zip(wide) {
                        *acc += x * v;
                    }
                }
            }
        }
        for ((r, s), acc) in sx.iter().enumerate().take(valid).zip(&acc) {
            for (c, &acc) in acc.iter().enumerate() {
                let j = tile * TILE_COLS + c;
                if j >= n {
                    break;
                }
                let v = (acc - s.zero * w.col_sums[j]) as f32 * (s.scale * w.scales[j]);
                // SAFETY: row r < valid and column j < n lie inside the task's region of y.
                unsafe { store(y, n, r, j, v, accumulate) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::{QWeight, RowScale, BLOCKS, LANES, MR, TILE_COLS};
    use crate::tiles::lane_mask;

    /// One tile, `MR` rows × 64 outputs, over every input: 24 accumulators in registers, per
    /// group of 4 inputs 4 weight loads, 6 broadcasts and 24 `vpdpbusd`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and VNNI; `a` holds `MR` rows of `kp` bytes; `y` points at the tile's
    /// first row of a `[rows, outputs]` matrix with `valid` rows from there.
    #[target_feature(enable = "avx512f,avx512vnni")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn tile(
        w: &QWeight,
        tile: usize,
        a: &[u8],
        kp: usize,
        sx: &[RowScale],
        valid: usize,
        y: *mut f32,
        accumulate: bool,
    ) {
        let mut acc = [[_mm512_setzero_si512(); BLOCKS]; MR];
        let mut wp = w.packed.as_ptr().add(tile * w.groups * TILE_COLS * 4);
        let ap = a.as_ptr();
        for g in 0..w.groups {
            let b = [
                _mm512_loadu_si512(wp as *const _),
                _mm512_loadu_si512(wp.add(64) as *const _),
                _mm512_loadu_si512(wp.add(128) as *const _),
                _mm512_loadu_si512(wp.add(192) as *const _),
            ];
            wp = wp.add(TILE_COLS * 4);
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_epi32((ap.add(r * kp + g * 4) as *const i32).read_unaligned());
                for (acc, b) in acc.iter_mut().zip(&b) {
                    *acc = _mm512_dpbusd_epi32(*acc, x, *b);
                }
            }
        }
        let n = w.outputs;
        for (r, acc) in acc.iter().enumerate().take(valid) {
            let s = _mm512_set1_ps(sx[r].scale);
            let zero = _mm512_set1_epi32(sx[r].zero);
            for (bl, acc) in acc.iter().enumerate() {
                let j = tile * TILE_COLS + bl * LANES;
                if j >= n {
                    break;
                }
                let mask = lane_mask(n, j);
                let sums = _mm512_loadu_si512(w.col_sums.as_ptr().add(j) as *const _);
                let offset = _mm512_mullo_epi32(zero, sums);
                let scale = _mm512_loadu_ps(w.scales.as_ptr().add(j));
                let v = _mm512_mul_ps(
                    _mm512_cvtepi32_ps(_mm512_sub_epi32(*acc, offset)),
                    _mm512_mul_ps(scale, s),
                );
                let p = y.add(r * n + j);
                let v = if accumulate {
                    _mm512_add_ps(_mm512_maskz_loadu_ps(mask, p), v)
                } else {
                    v
                };
                _mm512_mask_storeu_ps(p, mask, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::tiles::test_weight as weight;

    /// What the kernels must compute exactly: the same quantization, in f64.
    fn reference(w: &QWeight, x: &[f32], rows: usize) -> Vec<f64> {
        let (k, n) = (w.inputs, w.outputs);
        let mut out = vec![0f64; rows * n];
        for r in 0..rows {
            let mut q = vec![0u8; k];
            let s = quantize_row(&x[r * k..(r + 1) * k], &w.smooth, &mut q);
            for j in 0..n {
                let (tile, col) = (j / TILE_COLS, j % TILE_COLS);
                let mut acc = 0i64;
                for (kk, &q) in q.iter().enumerate() {
                    let wq = w.packed[((tile * w.groups + kk / 4) * TILE_COLS + col) * 4 + kk % 4];
                    acc += (q as i64 - s.zero as i64) * wq as i64;
                }
                out[r * n + j] = acc as f64 * s.scale as f64 * w.scales[j] as f64;
            }
        }
        out
    }

    #[test]
    fn int8_products_match_their_reference_and_the_fp32_product() {
        // Sizes off every tile and group boundary, and the model's.
        for (rows, inputs, outputs) in [(1, 5, 3), (7, 33, 70), (13, 64, 128), (50, 384, 1152)] {
            let fp32 = weight(outputs, inputs);
            let q = QWeight::quantize(&fp32);
            let x: Vec<f32> = (0..rows * inputs)
                .map(|i| (i as f32 * 0.11).cos() * (1.0 + (i % 7) as f32))
                .collect();
            let want = reference(&q, &x, rows);
            let mut exact = vec![0f32; rows * outputs];
            fp32.matmul_into(&x, &mut exact, false);
            for vnni in [false, vnni_available()] {
                let mut y = vec![f32::NAN; rows * outputs];
                q.matmul_into_with(&x, &mut y, false, vnni, true);
                let mut z = vec![1.0f32; rows * outputs];
                q.matmul_into_with(&x, &mut z, true, vnni, true);
                for i in 0..rows * outputs {
                    let tol = 1e-5 * want[i].abs().max(1.0);
                    assert!(
                        (y[i] as f64 - want[i]).abs() < tol,
                        "{i}: {} vs {}",
                        y[i],
                        want[i]
                    );
                    assert!((z[i] as f64 - 1.0 - want[i]).abs() < tol);
                    // Against fp32: within the rounding bound, half a step of each operand per term.
                    let (r, j) = (i / outputs, i % outputs);
                    let row = &x[r * inputs..(r + 1) * inputs];
                    let hi = row.iter().fold(0f32, |m, &v| m.max(v));
                    let lo = row.iter().fold(0f32, |m, &v| m.min(v));
                    let sx = (hi - lo) / 255.0;
                    let sw = q.scales[j];
                    let bound: f32 = (0..inputs)
                        .map(|k| {
                            let w = fp32.w[k * outputs + j].abs();
                            row[k].abs() * sw / 2.0 + w * sx / 2.0 + sx * sw / 4.0
                        })
                        .sum();
                    assert!(
                        (y[i] - exact[i]).abs() <= bound * 1.001 + 1e-6,
                        "{} vs {} (bound {bound})",
                        y[i],
                        exact[i]
                    );
                }
            }
        }
    }

    #[test]
    fn smoothed_products_match_their_reference_and_stay_near_fp32() {
        let (rows, inputs, outputs) = (20, 96, 80);
        let fp32 = weight(outputs, inputs);
        // Channel 5 runs 50× the others: the outlier smoothing is for.
        let x: Vec<f32> = (0..rows * inputs)
            .map(|i| (i as f32 * 0.29).sin() * if i % inputs == 5 { 50.0 } else { 1.0 })
            .collect();
        let activation: Vec<f32> = (0..inputs)
            .map(|k| (0..rows).fold(0f32, |m, r| m.max(x[r * inputs + k].abs())))
            .collect();
        let q = QWeight::quantize_smoothed(&fp32, &activation, 0.6);
        let want = reference(&q, &x, rows);
        let mut exact = vec![0f32; rows * outputs];
        fp32.matmul_into(&x, &mut exact, false);
        let plain = QWeight::quantize(&fp32);
        let mut unsmoothed = vec![0f32; rows * outputs];
        plain.matmul_into(&x, &mut unsmoothed, false);
        let (mut err, mut plain_err) = (0f64, 0f64);
        for vnni in [false, vnni_available()] {
            let mut y = vec![0f32; rows * outputs];
            q.matmul_into_with(&x, &mut y, false, vnni, true);
            for i in 0..rows * outputs {
                assert!((y[i] as f64 - want[i]).abs() < 1e-5 * want[i].abs().max(1.0));
                err += (y[i] - exact[i]).abs() as f64;
                plain_err += (unsmoothed[i] - exact[i]).abs() as f64;
            }
        }
        assert!(
            err < plain_err / 2.0,
            "smoothed error {err} vs plain {plain_err}"
        );
    }

    #[test]
    fn a_rows_result_does_not_depend_on_the_other_rows() {
        let fp32 = weight(96, 40);
        let q = QWeight::quantize(&fp32);
        let x: Vec<f32> = (0..20 * 40)
            .map(|i| (i as f32 * 0.7).sin() * (i / 40) as f32)
            .collect();
        let mut all = vec![0f32; 20 * 96];
        q.matmul_into(&x, &mut all, false);
        for r in 0..20 {
            let mut one = vec![0f32; 96];
            q.matmul_into(&x[r * 40..(r + 1) * 40], &mut one, false);
            assert_eq!(&all[r * 96..(r + 1) * 96], &one[..], "row {r}");
        }
    }
}
