//! Int4 matrix products: weights quantized to 4 bits in groups of [`GROUP`] inputs per output
//! column (symmetric, −7..=7, one fp16 scale per group and column: 4.5 bits a weight, about half
//! of int8's memory), activations per row to u8 as int8 does ([`crate::quant`]). In the kernel the
//! nibbles are unpacked to int8 and multiplied with AVX-512 VNNI's `vpdpbusd`; each group's i32
//! sums are scaled into f32 accumulators.
//!
//! With `x ≈ s_r (q_x − z_r)` and `w ≈ s_g q_w` for the group `g` holding input `k`:
//! `y = s_r (Σ_g s_g Σ_{k∈g} q_x q_w − z_r C)`, where the column's `C = Σ_g s_g Σ_{k∈g} q_w` is
//! computed once, at load. A row's result depends on that row alone.

use ::half::f16;

use crate::gptq::{self, Hessian};
use crate::matmul::Weight;
use crate::quant::{check_len, quantize_rows, smoothed, smoothing, RowScale};
use crate::tiles::{for_each_tile, store, BLOCKS, LANES, MR, TILE_COLS};
use crate::Kernel;

/// Inputs per scale group (8 steps of 4 inputs in the kernel).
pub const GROUP: usize = 32;
/// Largest magnitude of a 4-bit weight (symmetric: the offset-binary nibble is `q + 8`, 1..=15).
const LEVELS: f32 = 7.0;

/// A linear layer's weight in int4, packed for the product, and its bias (f32).
#[derive(Debug, Clone)]
pub struct Q4Weight {
    /// `[tile][step of 4 inputs][2 vectors][16 outputs][4 inputs]` bytes: vector 0 holds blocks
    /// 0 (low nibble) and 1 (high nibble), vector 1 blocks 2 and 3. Zero weights (nibble 8) past
    /// the real sizes.
    packed: Vec<u8>,
    /// `[tile][group][64 outputs]` fp16 bits: `w ≈ scale · q`.
    scales: Vec<u16>,
    /// Per output (padded to whole tiles): `Σ_g scale_g Σ_{k∈g} q`, times a row's zero point the
    /// offset its activations add.
    offsets: Vec<f32>,
    pub bias: Vec<f32>,
    pub inputs: usize,
    pub outputs: usize,
    groups: usize,
    tiles: usize,
    /// Per input, what activations are multiplied by before quantizing (SmoothQuant; ones when
    /// not smoothed).
    smooth: Vec<f32>,
}

impl Q4Weight {
    /// Quantizes an fp32 weight, each group of 32 inputs of each column with its own scale.
    pub fn quantize(w: &Weight) -> Self {
        Self::quantize_scaled(w, None, None)
    }

    /// Quantizes with activations smoothed per input channel (SmoothQuant, as
    /// [`crate::quant::QWeight::quantize_smoothed`]).
    pub fn quantize_smoothed(w: &Weight, activation: &[f32], alpha: f32) -> Self {
        Self::quantize_scaled(w, Some(smoothing(w, activation, alpha)), None)
    }

    /// [`Q4Weight::quantize_smoothed`], rounding by GPTQ ([`crate::gptq`]) on the Hessian of the
    /// product's calibration inputs; each group's scale is chosen when GPTQ reaches its first
    /// input, from the weights as the errors before it left them.
    pub fn quantize_gptq(w: &Weight, activation: &[f32], alpha: f32, hessian: Hessian) -> Self {
        Self::quantize_scaled(w, Some(smoothing(w, activation, alpha)), Some(hessian))
    }

    fn quantize_scaled(w: &Weight, s: Option<Vec<f32>>, hessian: Option<Hessian>) -> Self {
        let (mut w, smooth) = smoothed(w, s);
        let (k, n) = (w.inputs, w.outputs);
        let groups = k.div_ceil(GROUP);
        let steps = groups * GROUP / 4;
        let tiles = n.div_ceil(TILE_COLS);
        // `[group][output]`, fp16-rounded.
        let mut group_scales = vec![0f32; groups * n];
        let choose = |g: usize, w: &[f32], scales: &mut [f32]| {
            for (j, scale) in scales[g * n..(g + 1) * n].iter_mut().enumerate() {
                let max = (g * GROUP..((g + 1) * GROUP).min(k))
                    .map(|kk| w[kk * n + j].abs())
                    .fold(0f32, f32::max);
                *scale = f16::from_f32(max / LEVELS).to_f32();
            }
        };
        let level = |v: f32, scale: f32| {
            if scale > 0.0 {
                (v / scale).round().clamp(-LEVELS, LEVELS)
            } else {
                0.0
            }
        };
        match hessian {
            Some(h) => {
                gptq::quantize(&mut w.w, n, h.multiplied(&smooth), |kk, w| {
                    let g = kk / GROUP;
                    if kk % GROUP == 0 {
                        choose(g, w, &mut group_scales);
                    }
                    let scales = &group_scales[g * n..(g + 1) * n];
                    for (v, &scale) in w[kk * n..(kk + 1) * n].iter_mut().zip(scales) {
                        *v = level(*v, scale) * scale;
                    }
                });
            }
            None => {
                for g in 0..groups {
                    choose(g, &w.w, &mut group_scales);
                }
            }
        }
        let mut packed = vec![0x88u8; tiles * steps * 2 * 64];
        let mut scales = vec![0u16; tiles * groups * TILE_COLS];
        let mut offsets = vec![0f32; tiles * TILE_COLS];
        for (j, offset) in offsets.iter_mut().enumerate().take(n) {
            let (tile, col) = (j / TILE_COLS, j % TILE_COLS);
            let (block, c) = (col / LANES, col % LANES);
            for g in 0..groups {
                let scale = group_scales[g * n + j];
                scales[(tile * groups + g) * TILE_COLS + col] = f16::from_f32(scale).to_bits();
                let mut sum = 0i32;
                for kk in g * GROUP..((g + 1) * GROUP).min(k) {
                    let q = level(w.w[kk * n + j], scale) as i32;
                    sum += q;
                    let (step, t) = (kk / 4, kk % 4);
                    let byte = ((tile * steps + step) * 2 + block / 2) * 64 + c * 4 + t;
                    let nibble = (q + 8) as u8;
                    packed[byte] = if block % 2 == 0 {
                        (packed[byte] & 0xF0) | nibble
                    } else {
                        (packed[byte] & 0x0F) | (nibble << 4)
                    };
                }
                *offset += scale * sum as f32;
            }
        }
        // The arrays fit the shape by construction.
        Self::from_stored(&w, (packed, scales, offsets, smooth))
            .expect("quantization builds arrays of the weight's shape")
    }

    /// Its arrays, for a cache: `(packed, scales, offsets, smooth)`.
    pub fn stored(&self) -> (Vec<u8>, Vec<u16>, Vec<f32>, Vec<f32>) {
        (
            self.packed.clone(),
            self.scales.clone(),
            self.offsets.clone(),
            self.smooth.clone(),
        )
    }

    /// The weight of `w`'s shape and bias from the arrays [`Q4Weight::stored`] gave.
    pub fn from_stored(
        w: &Weight,
        (packed, scales, offsets, smooth): (Vec<u8>, Vec<u16>, Vec<f32>, Vec<f32>),
    ) -> Result<Self, String> {
        let (k, n) = (w.inputs, w.outputs);
        let groups = k.div_ceil(GROUP);
        let tiles = n.div_ceil(TILE_COLS);
        check_len("packed", packed.len(), tiles * (groups * GROUP / 4) * 128)?;
        check_len("scales", scales.len(), tiles * groups * TILE_COLS)?;
        check_len("offsets", offsets.len(), tiles * TILE_COLS)?;
        check_len("smooth", smooth.len(), k)?;
        Ok(Self {
            packed,
            scales,
            offsets,
            bias: w.bias.clone(),
            inputs: k,
            outputs: n,
            groups,
            tiles,
            smooth,
        })
    }

    /// Bytes the quantized weight holds (nibbles, scales, offsets; not the bias).
    pub fn weight_bytes(&self) -> usize {
        self.packed.len() + 2 * self.scales.len() + 4 * self.offsets.len()
    }

    /// `y = x · W` for `x` `[rows, in]` (no bias), each row quantized to u8 on the way; with
    /// `accumulate`, `y += x · W`.
    pub fn matmul_into(&self, x: &[f32], y: &mut [f32], accumulate: bool) {
        self.matmul_into_with(x, y, accumulate, kernel(), true);
    }

    /// With the given kernel (tests run each), which must be [`available`] here: asked for one
    /// the CPU lacks, it panics rather than run another.
    pub(crate) fn matmul_into_with(
        &self,
        x: &[f32],
        y: &mut [f32],
        accumulate: bool,
        kernel: Kernel,
        parallel: bool,
    ) {
        assert!(
            available(kernel),
            "the {} int4 kernel does not run on this CPU",
            kernel_name(kernel)
        );
        let (k, n) = (self.inputs, self.outputs);
        let rows = x.len() / k;
        assert_eq!(x.len(), rows * k, "x is not [rows, in]");
        assert_eq!(y.len(), rows * n, "y is not [rows, out]");
        let kp = self.groups * GROUP;
        // Each task quantizes its rows once (and widens them to i16 for the AVX2 kernel), then
        // runs them against its tiles.
        let prepare = |chunk| quantize_rows(x, k, kp, &self.smooth, chunk, kernel == Kernel::Avx2);
        for_each_tile(
            rows,
            n,
            self.tiles,
            y,
            prepare,
            |(xq, sx, wide), tile, group, valid, y| {
                let a = &xq[group * MR * kp..(group + 1) * MR * kp];
                let s = &sx[group * MR..(group + 1) * MR];
                match kernel {
                    // SAFETY (both): available() checked the CPU features; `a` (and `wide`'s
                    // group) hold MR rows of kp values and y `valid` rows of the tile's region,
                    // which only this call writes.
                    #[cfg(target_arch = "x86_64")]
                    Kernel::Avx512 => unsafe { vnni::tile(self, tile, a, s, valid, y, accumulate) },
                    #[cfg(target_arch = "x86_64")]
                    Kernel::Avx2 => unsafe {
                        let a = &wide[group * MR * kp..(group + 1) * MR * kp];
                        avx2::tile(self, tile, a, s, valid, y, accumulate)
                    },
                    _ => {
                        let _ = wide;
                        portable_tile(self, tile, a, s, valid, y, accumulate)
                    }
                }
            },
            parallel,
        );
    }

    /// The int4 value of input `kk`, output `j` (for tests, which check the packing by it).
    #[cfg(test)]
    fn q(&self, kk: usize, j: usize) -> i32 {
        let (tile, col) = (j / TILE_COLS, j % TILE_COLS);
        let (block, c) = (col / LANES, col % LANES);
        let steps = self.groups * GROUP / 4;
        let byte = ((tile * steps + kk / 4) * 2 + block / 2) * 64 + c * 4 + kk % 4;
        let nibble = if block % 2 == 0 {
            self.packed[byte] & 0x0F
        } else {
            self.packed[byte] >> 4
        };
        nibble as i32 - 8
    }

    #[cfg(test)]
    fn scale(&self, g: usize, j: usize) -> f32 {
        let (tile, col) = (j / TILE_COLS, j % TILE_COLS);
        f16::from_bits(self.scales[(tile * self.groups + g) * TILE_COLS + col]).to_f32()
    }
}

/// int4's kernels are int8's, on unpacked nibbles (AVX-512: VNNI's `vpdpbusd` on nibbles unpacked
/// to int8; AVX2: unpacked to i16 for `vpmaddwd`): the same availability and names.
pub use crate::quant::{available, kernel, kernel_name};

crate::multiversion! {
    /// One tile in plain loops, compiled for the CPU's level so that they vectorize: the same
    /// arithmetic as the VNNI kernel (a group's integer sums, then scaled into f32 accumulators
    /// group after group). Each group's 32 × 64 weights are unpacked once for all the tile's rows.
    fn portable_tile(
        w: &Q4Weight,
        tile: usize,
        a: &[u8],
        sx: &[RowScale],
        valid: usize,
        y: *mut f32,
        accumulate: bool,
    ) {
        let (n, kp) = (w.outputs, w.groups * GROUP);
        let steps = w.groups * GROUP / 4;
        let mut acc = [[0f32; TILE_COLS]; MR];
        // i16 operands: a u8 times a weight of −8..=7 fits in i16, one 16-bit multiply each.
        let mut q = [[0i16; TILE_COLS]; GROUP];
        let mut scale = [0f32; TILE_COLS];
        for g in 0..w.groups {
            for st in 0..GROUP / 4 {
                let step = g * GROUP / 4 + st;
                for v in 0..2 {
                    let first = ((tile * steps + step) * 2 + v) * 64;
                    let bytes = &w.packed[first..first + 64];
                    for c in 0..LANES {
                        for t in 0..4 {
                            let b = bytes[c * 4 + t];
                            q[st * 4 + t][2 * v * LANES + c] = i16::from(b & 0x0F) - 8;
                            q[st * 4 + t][(2 * v + 1) * LANES + c] = i16::from(b >> 4) - 8;
                        }
                    }
                }
            }
            let scales = &w.scales[(tile * w.groups + g) * TILE_COLS..][..TILE_COLS];
            for (o, &b) in scale.iter_mut().zip(scales) {
                *o = crate::half::f16_to_f32(b);
            }
            for (r, acc) in acc.iter_mut().enumerate().take(valid) {
                let row = &a[r * kp + g * GROUP..r * kp + (g + 1) * GROUP];
                let mut sum = [0i32; TILE_COLS];
                for (&x, q) in row.iter().zip(&q) {
                    let x = i16::from(x);
                    for (sum, &q) in sum.iter_mut().zip(q) {
                        *sum += i32::from(x.wrapping_mul(q));
                    }
                }
                for ((acc, &sum), &scale) in acc.iter_mut().zip(&sum).zip(&scale) {
                    *acc += sum as f32 * scale;
                }
            }
        }
        for ((r, s), acc) in sx.iter().enumerate().take(valid).zip(&acc) {
            for (c, &acc) in acc.iter().enumerate() {
                let j = tile * TILE_COLS + c;
                if j >= n {
                    break;
                }
                let v = s.scale * (acc - s.zero as f32 * w.offsets[j]);
                // SAFETY: row r < valid and column j < n lie inside the task's region of y.
                unsafe { store(y, n, r, j, v, accumulate) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::{Q4Weight, RowScale, BLOCKS, GROUP, LANES, MR, TILE_COLS};
    use crate::tiles::lane_mask;

    /// One tile, `MR` rows × 64 outputs. Per step of 4 inputs: 2 loads of 64 bytes unpacked into
    /// 4 int8 weight vectors (mask, shift, −8), 6 broadcasts, 24 `vpdpbusd` into i32
    /// accumulators; per group of 32 inputs, those are scaled by the group's fp16 scales into f32
    /// accumulators.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and VNNI; `a` holds `MR` rows of `groups * GROUP` bytes; `y`
    /// points at the tile's first row of a `[rows, outputs]` matrix with `valid` rows from there.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn tile(
        w: &Q4Weight,
        tile: usize,
        a: &[u8],
        sx: &[RowScale],
        valid: usize,
        y: *mut f32,
        accumulate: bool,
    ) {
        let kp = w.groups * GROUP;
        let low = _mm512_set1_epi8(0x0F);
        let eight = _mm512_set1_epi8(8);
        let mut total = [[_mm512_setzero_ps(); BLOCKS]; MR];
        let mut wp = w.packed.as_ptr().add(tile * (kp / 4) * 128);
        let mut sp = w.scales.as_ptr().add(tile * w.groups * TILE_COLS);
        let ap = a.as_ptr();
        for g in 0..w.groups {
            let mut acc = [[_mm512_setzero_si512(); BLOCKS]; MR];
            for step in 0..GROUP / 4 {
                let p0 = _mm512_loadu_si512(wp as *const _);
                let p1 = _mm512_loadu_si512(wp.add(64) as *const _);
                wp = wp.add(128);
                let b = [
                    _mm512_sub_epi8(_mm512_and_si512(p0, low), eight),
                    _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(p0, 4), low), eight),
                    _mm512_sub_epi8(_mm512_and_si512(p1, low), eight),
                    _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(p1, 4), low), eight),
                ];
                let at = g * GROUP + step * 4;
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_epi32((ap.add(r * kp + at) as *const i32).read_unaligned());
                    for (acc, b) in acc.iter_mut().zip(&b) {
                        *acc = _mm512_dpbusd_epi32(*acc, x, *b);
                    }
                }
            }
            let scales = [
                _mm512_cvtph_ps(_mm256_loadu_si256(sp as *const _)),
                _mm512_cvtph_ps(_mm256_loadu_si256(sp.add(16) as *const _)),
                _mm512_cvtph_ps(_mm256_loadu_si256(sp.add(32) as *const _)),
                _mm512_cvtph_ps(_mm256_loadu_si256(sp.add(48) as *const _)),
            ];
            sp = sp.add(TILE_COLS);
            for (total, acc) in total.iter_mut().zip(&acc) {
                for ((t, a), s) in total.iter_mut().zip(acc).zip(&scales) {
                    *t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(*a), *s, *t);
                }
            }
        }
        let n = w.outputs;
        for (r, total) in total.iter().enumerate().take(valid) {
            let s = _mm512_set1_ps(sx[r].scale);
            let zero = _mm512_set1_ps(sx[r].zero as f32);
            for (bl, t) in total.iter().enumerate() {
                let j = tile * TILE_COLS + bl * LANES;
                if j >= n {
                    break;
                }
                let mask = lane_mask(n, j);
                let offsets = _mm512_loadu_ps(w.offsets.as_ptr().add(j));
                let v = _mm512_mul_ps(_mm512_fnmadd_ps(zero, offsets, *t), s);
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

/// Int4 on AVX2: per step of 4 inputs, 8 outputs' nibbles unpacked to int8 (mask, shift, −8) and
/// widened to i16 for `vpmaddwd` (as int8's AVX2 kernel, [`crate::quant`]); each group's i32 sums
/// scaled into f32 accumulators exactly as the portable loops do (multiply, then add).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Q4Weight, RowScale, GROUP, LANES, MR, TILE_COLS};
    use crate::tiles::avx2::write;

    /// Outputs per slice of a tile.
    const SLICE: usize = 8;

    /// One tile, `MR` rows × 64 outputs, 8 outputs at a time.
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C; `a` holds `MR` rows of `groups * GROUP` activations widened to
    /// i16; `y` points at the tile's first row of a `[rows, outputs]` matrix with `valid` rows
    /// from there.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tile(
        w: &Q4Weight,
        tile: usize,
        a: &[i16],
        sx: &[RowScale],
        valid: usize,
        y: *mut f32,
        accumulate: bool,
    ) {
        let kp = w.groups * GROUP;
        debug_assert!(a.len() >= MR * kp && sx.len() >= valid);
        let n = w.outputs;
        let low = _mm256_set1_epi8(0x0F);
        let eight = _mm256_set1_epi8(8);
        let ap = a.as_ptr();
        for slice in 0..TILE_COLS / SLICE {
            let j = tile * TILE_COLS + slice * SLICE;
            if j >= n {
                break;
            }
            // Block `slice / 2` (16 outputs) holds this slice in its half `slice % 2`; blocks
            // 0 and 1 share vector 0 (low and high nibbles), 2 and 3 vector 1.
            let block = slice * SLICE / LANES;
            let high = block % 2 == 1;
            let mut wp = w
                .packed
                .as_ptr()
                .add(tile * (kp / 4) * 128 + (block / 2) * 64 + (slice % 2) * 32);
            let mut sp = w
                .scales
                .as_ptr()
                .add(tile * w.groups * TILE_COLS + slice * SLICE);
            let mut total = [_mm256_setzero_ps(); MR];
            for g in 0..w.groups {
                let mut acc = [[_mm256_setzero_si256(); 2]; MR];
                for step in 0..GROUP / 4 {
                    let p = _mm256_loadu_si256(wp as *const __m256i);
                    wp = wp.add(128);
                    let p = if high { _mm256_srli_epi16::<4>(p) } else { p };
                    let q = _mm256_sub_epi8(_mm256_and_si256(p, low), eight);
                    let b0 = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(q));
                    let b1 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(q));
                    let at = g * GROUP + step * 4;
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let x = _mm256_set1_epi64x(
                            (ap.add(r * kp + at) as *const i64).read_unaligned(),
                        );
                        acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(x, b0));
                        acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(x, b1));
                    }
                }
                let scale = _mm256_cvtph_ps(_mm_loadu_si128(sp as *const __m128i));
                sp = sp.add(TILE_COLS);
                for (total, acc) in total.iter_mut().zip(&acc) {
                    // Outputs in order, as in int8's AVX2 kernel.
                    let sum = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_hadd_epi32(
                        acc[0], acc[1],
                    ));
                    *total = _mm256_add_ps(*total, _mm256_mul_ps(_mm256_cvtepi32_ps(sum), scale));
                }
            }
            let offsets = _mm256_loadu_ps(w.offsets.as_ptr().add(j));
            let left = (n - j).min(SLICE);
            for (r, total) in total.iter().enumerate().take(valid) {
                let zero = _mm256_set1_ps(sx[r].zero as f32);
                let v = _mm256_mul_ps(
                    _mm256_set1_ps(sx[r].scale),
                    _mm256_sub_ps(*total, _mm256_mul_ps(zero, offsets)),
                );
                write(y.add(r * n + j), left, v, accumulate);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::quantize_row;

    fn weight(outputs: usize, inputs: usize) -> Weight {
        let w: Vec<f32> = (0..outputs * inputs)
            .map(|i| (i as f32 * 0.37).sin() * 0.1 * (1.0 + (i % 7) as f32))
            .collect();
        let bias = (0..outputs).map(|j| j as f32 * 0.01).collect();
        Weight::from_out_in(&w, bias, outputs, inputs)
    }

    fn data(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (i as f32 * 0.123).cos() * 2.0 + 0.3)
            .collect()
    }

    /// What the kernels must compute: the same quantization, in f64.
    fn reference(w: &Q4Weight, x: &[f32], rows: usize) -> Vec<f64> {
        let (k, n) = (w.inputs, w.outputs);
        let mut out = vec![0f64; rows * n];
        for r in 0..rows {
            let mut q = vec![0u8; k];
            let s = quantize_row(&x[r * k..(r + 1) * k], &w.smooth, &mut q);
            for j in 0..n {
                let dot: f64 = (0..k)
                    .map(|kk| {
                        (q[kk] as f64 - s.zero as f64)
                            * w.q(kk, j) as f64
                            * w.scale(kk / GROUP, j) as f64
                    })
                    .sum();
                out[r * n + j] = s.scale as f64 * dot;
            }
        }
        out
    }

    /// Sizes off every slice, tile and group, every kernel this CPU has, overwriting and
    /// accumulating; and the result within the analytic rounding bound of the fp32 product.
    #[test]
    fn every_kernel_equals_the_reference_and_stays_near_fp32() {
        for (rows, inputs, outputs) in [(1, 7, 5), (13, 45, 70), (50, 96, 130), (7, 64, 200)] {
            let w = weight(outputs, inputs);
            let x = data(rows * inputs);
            let q = Q4Weight::quantize(&w);
            let want = reference(&q, &x, rows);
            let mut exact = vec![0f32; rows * outputs];
            w.matmul_into(&x, &mut exact, false);
            let mut portable = vec![0f32; rows * outputs];
            q.matmul_into_with(&x, &mut portable, false, Kernel::Portable, true);
            for kernel in crate::kernels_here("int4", available, kernel_name) {
                let name = kernel_name(kernel);
                let mut y = vec![f32::NAN; rows * outputs];
                q.matmul_into_with(&x, &mut y, false, kernel, true);
                let mut z = vec![1.0; rows * outputs];
                q.matmul_into_with(&x, &mut z, true, kernel, true);
                if kernel == Kernel::Avx2 {
                    // The portable loops' arithmetic, operation for operation.
                    for (i, (a, b)) in y.iter().zip(&portable).enumerate() {
                        assert_eq!(a.to_bits(), b.to_bits(), "{name} [{i}]: {a} vs {b}");
                    }
                }
                for i in 0..rows * outputs {
                    let tol = 1e-4 * (1.0 + want[i].abs());
                    assert!(
                        (y[i] as f64 - want[i]).abs() <= tol,
                        "{name} {rows}x{inputs}x{outputs} [{i}]: {} vs {}",
                        y[i],
                        want[i]
                    );
                    assert!((z[i] as f64 - 1.0 - want[i]).abs() <= tol + 1e-5);
                    // Each weight is off by at most half its group's step, each activation by
                    // half its row's step.
                    let (r, j) = (i / outputs, i % outputs);
                    let xs = &x[r * inputs..(r + 1) * inputs];
                    let row_step = {
                        let (lo, hi) = xs
                            .iter()
                            .fold((0f32, 0f32), |(l, h), &v| (l.min(v), h.max(v)));
                        (hi - lo) / 255.0
                    };
                    let bound: f32 = (0..inputs)
                        .map(|kk| {
                            let wk = w.w[kk * outputs + j];
                            xs[kk].abs() * q.scale(kk / GROUP, j) / 2.0
                                + (wk.abs() + q.scale(kk / GROUP, j)) * row_step / 2.0
                        })
                        .sum();
                    assert!(
                        (y[i] - exact[i]).abs() <= bound * 1.001 + 1e-5,
                        "[{i}] {} vs fp32 {} (bound {bound})",
                        y[i],
                        exact[i]
                    );
                }
            }
        }
    }

    /// A row's result does not depend on the other rows; the weight takes about half of int8's
    /// memory.
    #[test]
    fn rows_are_independent_and_the_weight_is_half_of_int8() {
        let (rows, inputs, outputs) = (20, 384, 1152);
        let w = weight(outputs, inputs);
        let x = data(rows * inputs);
        let q = Q4Weight::quantize(&w);
        let mut y = vec![0f32; rows * outputs];
        q.matmul_into(&x, &mut y, false);
        let mut alone = vec![0f32; outputs];
        q.matmul_into(&x[7 * inputs..8 * inputs], &mut alone, false);
        assert_eq!(alone, y[7 * outputs..8 * outputs]);
        let int8 = crate::quant::QWeight::quantize(&w).weight_bytes();
        let ratio = q.weight_bytes() as f64 / int8 as f64;
        assert!(
            ratio < 0.58,
            "int4 {} vs int8 {int8} bytes",
            q.weight_bytes()
        );
    }
}
