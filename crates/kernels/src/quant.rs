//! Int8 matrix products: weights quantized per output column (symmetric, once, at load),
//! activations per row (symmetric, at each product), products accumulated in i32 — with AVX-512
//! VNNI's `vpdpbusd` (64 int8 multiply-adds per instruction, 4× an fp32 FMA's) where the CPU has it,
//! a portable loop elsewhere — then scaled back to f32.
//!
//! A row's result depends on that row alone (its own scale), so a pair's score never depends on the
//! other pairs of its batch. `vpdpbusd` multiplies unsigned by signed bytes: activations are stored
//! as `q + 128` (u8) and the `128 · Σₖ w` this adds is subtracted per column afterwards.

use rayon::prelude::*;

use crate::matmul::Weight;
use crate::{multiversion, SharedMut};

/// Outputs per block (i32 lanes of a 512-bit register).
const LANES: usize = 16;
/// Blocks per tile: a tile is `MR` rows × 64 outputs, 24 accumulators.
const BLOCKS: usize = 4;
const TILE_COLS: usize = LANES * BLOCKS;
/// Rows per tile.
const MR: usize = 6;
/// Rows per parallel task (a multiple of MR).
const TASK_ROWS: usize = 8 * MR;

/// A linear layer's weight quantized to int8, packed for the product, and its bias (f32).
#[derive(Debug, Clone)]
pub struct QWeight {
    /// `[tile][group of 4 inputs][block][16 outputs][4 inputs]`, zero past the real sizes.
    packed: Vec<i8>,
    /// Per output (padded to whole tiles with 0): `w ≈ scale · q`.
    scales: Vec<f32>,
    /// Per output: `128 · Σₖ q`, the offset that unsigned activations add.
    offsets: Vec<i32>,
    pub bias: Vec<f32>,
    pub inputs: usize,
    pub outputs: usize,
    /// Groups of 4 inputs (the last one zero-padded).
    groups: usize,
    tiles: usize,
    /// Per input, what activations are multiplied by before quantizing (the weights' rows were
    /// multiplied by its inverse): evens out channels whose activations run far larger than the
    /// rest, so they do not coarsen every other channel's step. `None`: all ones.
    smooth: Option<Vec<f32>>,
}

impl QWeight {
    /// Quantizes an fp32 weight: each output column gets the scale that maps its largest
    /// magnitude to 127.
    pub fn quantize(w: &Weight) -> Self {
        Self::quantize_scaled(w, None)
    }

    /// Quantizes with activations smoothed per input channel (SmoothQuant, α = ½): given each
    /// input's typical activation magnitude `activation[k]`, the channel is scaled by
    /// `s = √(activation / max|w row|)` — activations divided by `s`, the weight row multiplied by
    /// it, the product unchanged — so activation and weight ranges meet halfway.
    pub fn quantize_smoothed(w: &Weight, activation: &[f32]) -> Self {
        assert_eq!(
            activation.len(),
            w.inputs,
            "one activation magnitude per input"
        );
        let n = w.outputs;
        let s: Vec<f32> = activation
            .iter()
            .enumerate()
            .map(|(k, &a)| {
                let wmax = w.w[k * n..(k + 1) * n]
                    .iter()
                    .fold(0f32, |m, v| m.max(v.abs()));
                let s = (a.abs() / wmax).sqrt();
                if s.is_finite() && s > 0.0 {
                    s
                } else {
                    1.0
                }
            })
            .collect();
        Self::quantize_scaled(w, Some(s))
    }

    fn quantize_scaled(w: &Weight, s: Option<Vec<f32>>) -> Self {
        let scaled;
        let w = match &s {
            Some(s) => {
                let n = w.outputs;
                let mut m = w.clone();
                for (k, &s) in s.iter().enumerate() {
                    for v in &mut m.w[k * n..(k + 1) * n] {
                        *v *= s;
                    }
                }
                scaled = m;
                &scaled
            }
            None => w,
        };
        let smooth = s.map(|s| s.iter().map(|v| 1.0 / v).collect());
        let (k, n) = (w.inputs, w.outputs);
        let groups = k.div_ceil(4);
        let tiles = n.div_ceil(TILE_COLS);
        let padded = tiles * TILE_COLS;
        let mut scales = vec![0f32; padded];
        for (j, scale) in scales.iter_mut().enumerate().take(n) {
            let max = (0..k).map(|kk| w.w[kk * n + j].abs()).fold(0f32, f32::max);
            *scale = max / 127.0;
        }
        let mut packed = vec![0i8; tiles * groups * TILE_COLS * 4];
        let mut offsets = vec![0i32; padded];
        for kk in 0..k {
            let (g, t) = (kk / 4, kk % 4);
            for j in 0..n {
                let scale = scales[j];
                let q = if scale > 0.0 {
                    (w.w[kk * n + j] / scale).round().clamp(-127.0, 127.0) as i8
                } else {
                    0
                };
                let (tile, col) = (j / TILE_COLS, j % TILE_COLS);
                packed[((tile * groups + g) * TILE_COLS + col) * 4 + t] = q;
                offsets[j] += 128 * q as i32;
            }
        }
        Self {
            packed,
            scales,
            offsets,
            bias: w.bias.clone(),
            inputs: k,
            outputs: n,
            groups,
            tiles,
            smooth,
        }
    }

    /// Bytes the quantized weight holds (packed values, scales, offsets; not the bias).
    pub fn weight_bytes(&self) -> usize {
        self.packed.len() + 4 * (self.scales.len() + self.offsets.len())
    }

    /// `y = x · W` for `x` `[rows, in]` (no bias), as [`Weight::matmul_into`] does, with each
    /// row of `x` quantized to int8 on the way. With `accumulate`, `y += x · W`.
    pub fn matmul_into(&self, x: &[f32], y: &mut [f32], accumulate: bool) {
        self.matmul_into_with(x, y, accumulate, vnni_available());
    }

    /// [`QWeight::matmul_into`] with the VNNI kernel or the portable loop (tests run both).
    fn matmul_into_with(&self, x: &[f32], y: &mut [f32], accumulate: bool, vnni: bool) {
        let (k, n) = (self.inputs, self.outputs);
        let rows = x.len() / k;
        assert_eq!(x.len(), rows * k, "x is not [rows, in]");
        assert_eq!(y.len(), rows * n, "y is not [rows, out]");
        if rows == 0 {
            return;
        }
        // Tasks: row chunks × tile ranges, enough of them to keep every thread busy even when
        // there are few rows.
        let row_chunks = rows.div_ceil(TASK_ROWS);
        let wanted = 4 * rayon::current_num_threads();
        let col_chunks = wanted.div_ceil(row_chunks).clamp(1, self.tiles);
        let tiles_per_chunk = self.tiles.div_ceil(col_chunks);
        let col_chunks = self.tiles.div_ceil(tiles_per_chunk);
        let out = SharedMut::new(y.as_mut_ptr());
        (0..row_chunks * col_chunks)
            .into_par_iter()
            .for_each(|task| {
                let (rc, cc) = (task / col_chunks, task % col_chunks);
                let r0 = rc * TASK_ROWS;
                let r1 = (r0 + TASK_ROWS).min(rows);
                let t0 = cc * tiles_per_chunk;
                let t1 = (t0 + tiles_per_chunk).min(self.tiles);
                let kp = self.groups * 4;
                let mut xq = vec![128u8; (r1 - r0).div_ceil(MR) * MR * kp];
                let mut sx = vec![0f32; (r1 - r0).div_ceil(MR) * MR];
                let mut smoothed = vec![0f32; if self.smooth.is_some() { k } else { 0 }];
                for r in r0..r1 {
                    let i = r - r0;
                    let row = &x[r * k..(r + 1) * k];
                    let row = match &self.smooth {
                        Some(m) => {
                            for ((o, v), m) in smoothed.iter_mut().zip(row).zip(m) {
                                *o = v * m;
                            }
                            &smoothed[..]
                        }
                        None => row,
                    };
                    sx[i] = quantize_row(row, &mut xq[i * kp..i * kp + k]);
                }
                let out = out.get();
                for tile in t0..t1 {
                    for (ti, tile_rows) in (r0..r1).step_by(MR).enumerate() {
                        let valid = (r1 - tile_rows).min(MR);
                        let a = &xq[ti * MR * kp..(ti + 1) * MR * kp];
                        let s = &sx[ti * MR..(ti + 1) * MR];
                        // SAFETY: the task writes rows r0..r1 × the columns of tiles t0..t1 of
                        // y, which no other task writes; `y` outlives the parallel loop.
                        let y_tile = unsafe { out.add(tile_rows * n) };
                        #[cfg(target_arch = "x86_64")]
                        if vnni {
                            // SAFETY: vnni_available() checked the CPU features.
                            unsafe {
                                vnni::tile(self, tile, a, kp, s, valid, y_tile, accumulate);
                            }
                            continue;
                        }
                        let _ = vnni;
                        portable_tile(self, tile, a, kp, s, valid, y_tile, accumulate);
                    }
                }
            });
    }
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

multiversion! {
    /// Writes `round(x / s) + 128` for the row's scale `s = max|x| / 127`, and returns `s`
    /// (NaN when the row holds a NaN or an infinity, which then comes out of the product).
    fn quantize_row(x: &[f32], q: &mut [u8]) -> f32 {
        // 16 independent maxima so it vectorizes; `poison` turns NaN if any value is not finite.
        let mut max = [0f32; 16];
        let mut poison = [0f32; 16];
        let mut chunks = x.chunks_exact(16);
        for c in &mut chunks {
            for i in 0..16 {
                max[i] = max[i].max(c[i].abs());
                poison[i] += c[i] * 0.0;
            }
        }
        let mut m = 0f32;
        let mut p = 0f32;
        for &v in chunks.remainder() {
            m = m.max(v.abs());
            p += v * 0.0;
        }
        for i in 0..16 {
            m = m.max(max[i]);
            p += poison[i];
        }
        if m == 0.0 || p.is_nan() {
            q.fill(128);
            return if p.is_nan() { f32::NAN } else { 0.0 };
        }
        let inv = 127.0 / m;
        // x·inv + 128 lies in [1, 255]: adding ½ and truncating rounds it (half up).
        for (q, &v) in q.iter_mut().zip(x) {
            *q = (v * inv + 128.5) as u8;
        }
        m / 127.0
    }
}

/// One tile without VNNI: the same arithmetic, in plain loops.
#[allow(clippy::too_many_arguments)]
fn portable_tile(
    w: &QWeight,
    tile: usize,
    a: &[u8],
    kp: usize,
    sx: &[f32],
    valid: usize,
    y: *mut f32,
    accumulate: bool,
) {
    let n = w.outputs;
    let base = tile * w.groups * TILE_COLS * 4;
    for (r, &s) in sx.iter().enumerate().take(valid) {
        let row = &a[r * kp..(r + 1) * kp];
        let mut acc = [0i32; TILE_COLS];
        for g in 0..w.groups {
            let block = &w.packed[base + g * TILE_COLS * 4..base + (g + 1) * TILE_COLS * 4];
            let xs = &row[g * 4..g * 4 + 4];
            for (c, acc) in acc.iter_mut().enumerate() {
                let ws = &block[c * 4..c * 4 + 4];
                *acc += (0..4).map(|t| xs[t] as i32 * ws[t] as i32).sum::<i32>();
            }
        }
        for (c, &acc) in acc.iter().enumerate() {
            let j = tile * TILE_COLS + c;
            if j >= n {
                break;
            }
            let v = (acc - w.offsets[j]) as f32 * (s * w.scales[j]);
            // SAFETY: row r < valid and column j < n lie inside the task's region of y.
            unsafe {
                let p = y.add(r * n + j);
                *p = if accumulate { *p + v } else { v };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::{QWeight, BLOCKS, LANES, MR, TILE_COLS};

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
        sx: &[f32],
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
            let s = _mm512_set1_ps(sx[r]);
            for (bl, acc) in acc.iter().enumerate() {
                let j = tile * TILE_COLS + bl * LANES;
                if j >= n {
                    break;
                }
                let left = n - j;
                let mask: __mmask16 = if left >= LANES {
                    0xFFFF
                } else {
                    (1u16 << left) - 1
                };
                let offset = _mm512_loadu_si512(w.offsets.as_ptr().add(j) as *const _);
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

    fn weight(outputs: usize, inputs: usize) -> Weight {
        let w: Vec<f32> = (0..outputs * inputs)
            .map(|i| (i as f32 * 0.37).sin() * 0.1)
            .collect();
        let bias = (0..outputs).map(|j| j as f32 * 0.01).collect();
        Weight::from_out_in(&w, bias, outputs, inputs)
    }

    /// What the kernels must compute exactly: the same quantization, in f64.
    fn reference(w: &QWeight, x: &[f32], rows: usize) -> Vec<f64> {
        let (k, n) = (w.inputs, w.outputs);
        let mut out = vec![0f64; rows * n];
        for r in 0..rows {
            let mut q = vec![0u8; k];
            let s = quantize_row(&x[r * k..(r + 1) * k], &mut q);
            for j in 0..n {
                let (tile, col) = (j / TILE_COLS, j % TILE_COLS);
                let mut acc = 0i64;
                for (kk, &q) in q.iter().enumerate() {
                    let wq = w.packed[((tile * w.groups + kk / 4) * TILE_COLS + col) * 4 + kk % 4];
                    acc += (q as i64 - 128) * wq as i64;
                }
                out[r * n + j] = acc as f64 * s as f64 * w.scales[j] as f64;
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
                q.matmul_into_with(&x, &mut y, false, vnni);
                let mut z = vec![1.0f32; rows * outputs];
                q.matmul_into_with(&x, &mut z, true, vnni);
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
                    let sx = row.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
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
