//! Int8 matrix products: weights quantized per output column (symmetric, once, at load),
//! activations per row (asymmetric, at each product), products accumulated in i32 — with AVX-512
//! VNNI's `vpdpbusd` (64 int8 multiply-adds per instruction, 4× an fp32 FMA's) where the CPU has it,
//! AVX2's `vpmaddwd` on operands widened to i16 on other x86 CPUs, a portable loop elsewhere, the
//! same integers on all three — then scaled back to f32.
//!
//! A row's result depends on that row alone (its own scale), so a pair's score never depends on the
//! other pairs of its batch. Activations are quantized asymmetrically to u8 (`q = x / s + z`, the
//! row's range mapped onto 0..=255 with zero exact), which suits `vpdpbusd` (unsigned × signed bytes)
//! and skewed rows such as GELU outputs; the `z · Σₖ w` this adds is subtracted per column after.

use crate::matmul::Weight;
use crate::multiversion;
use crate::tiles::{for_each_tile, store, BLOCKS, LANES, MR, TILE_COLS};
use crate::Kernel;

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
        self.matmul_into_with(x, y, accumulate, kernel(), true);
    }

    /// [`QWeight::matmul_into`] with the given kernel (tests run each), which must be
    /// [`available`] here: asked for one the CPU lacks, it panics rather than run another.
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
            "the {} int8 kernel does not run on this CPU",
            kernel_name(kernel)
        );
        let (k, n) = (self.inputs, self.outputs);
        let rows = x.len() / k;
        assert_eq!(x.len(), rows * k, "x is not [rows, in]");
        assert_eq!(y.len(), rows * n, "y is not [rows, out]");
        if rows == 0 {
            return;
        }
        let kp = self.groups * 4;
        // Each task quantizes its rows once (and widens them to i16 for the AVX2 kernel), then
        // runs them against its tiles.
        let prepare = |chunk| quantize_rows(x, k, kp, &self.smooth, chunk, kernel == Kernel::Avx2);
        for_each_tile(
            rows,
            n,
            self.tiles,
            y,
            prepare,
            |(xq, sx, wide), tile, ti, valid, y_tile| {
                let a = &xq[ti * MR * kp..(ti + 1) * MR * kp];
                let s = &sx[ti * MR..(ti + 1) * MR];
                match kernel {
                    // SAFETY (both): available() checked the CPU features; `a` (and `wide`'s
                    // group) hold MR rows of kp values and y_tile `valid` rows of the tile's
                    // region, which only this call writes.
                    #[cfg(target_arch = "x86_64")]
                    Kernel::Avx512 => unsafe {
                        vnni::tile(self, tile, a, kp, s, valid, y_tile, accumulate)
                    },
                    #[cfg(target_arch = "x86_64")]
                    Kernel::Avx2 => unsafe {
                        let a = &wide[ti * MR * kp..(ti + 1) * MR * kp];
                        avx2::tile(self, tile, a, kp, s, valid, y_tile, accumulate)
                    },
                    _ => {
                        let _ = wide;
                        portable_tile(self, tile, a, kp, s, valid, y_tile, accumulate)
                    }
                }
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
/// each row's scale: what a task of an integer product computes once for all its tiles. With
/// `widen`, also those bytes as i16 (what the AVX2 kernels read); otherwise that is empty.
pub(crate) fn quantize_rows(
    x: &[f32],
    k: usize,
    kp: usize,
    smooth: &[f32],
    chunk: std::ops::Range<usize>,
    widen: bool,
) -> (Vec<u8>, Vec<RowScale>, Vec<i16>) {
    let mut xq = vec![128u8; chunk.len().div_ceil(MR) * MR * kp];
    let mut sx = vec![RowScale::default(); chunk.len().div_ceil(MR) * MR];
    for (i, r) in chunk.enumerate() {
        let row = &x[r * k..(r + 1) * k];
        sx[i] = quantize_row(row, smooth, &mut xq[i * kp..i * kp + k]);
    }
    let wide = if widen {
        xq.iter().map(|&v| i16::from(v)).collect()
    } else {
        Vec::new()
    };
    (xq, sx, wide)
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

/// Whether `kernel` runs here: AVX-512 is VNNI's `vpdpbusd` (an AVX-512 CPU without VNNI runs
/// the AVX2 kernel), AVX2 widens to i16 for `vpmaddwd`; never above the `XBENCH_SIMD` level.
pub fn available(kernel: Kernel) -> bool {
    match kernel {
        Kernel::Avx512 => vnni_available(),
        Kernel::Avx2 => cfg!(target_arch = "x86_64") && crate::simd() >= crate::Simd::Avx2,
        Kernel::Portable => true,
    }
}

/// The int8 kernel products run: the first [`available`] of VNNI, AVX2, portable. (On an
/// AVX2-only AMD EPYC, Zen 1, the demo model scored 1.45–1.51× fp32's pairs/s in int8 with the
/// AVX2 kernel, against about 0.05× with the portable loops before it: README, "Per SIMD level
/// and precision". VNNI does 4× the work per instruction of `vpmaddwd`.)
pub fn kernel() -> Kernel {
    Kernel::ALL
        .into_iter()
        .find(|&k| available(k))
        .unwrap_or(Kernel::Portable)
}

/// What `kernel` is, by name.
pub fn kernel_name(kernel: Kernel) -> &'static str {
    match kernel {
        Kernel::Avx512 => "avx512-vnni",
        Kernel::Avx2 => "avx2-vpmaddwd",
        Kernel::Portable => "portable",
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
        // i16 operands: a u8 times an int8 weight (|w| ≤ 127) fits in i16 (255 · 127 < 2^15),
        // so each product is one 16-bit multiply (SSE2's `pmullw`, NEON's `mul`), widened to i32
        // only to be added; no 32-bit multiply, which baseline x86-64 lacks.
        let mut wide = [[0i16; TILE_COLS]; 4];
        for g in 0..w.groups {
            let block = &w.packed[base + g * TILE_COLS * 4..base + (g + 1) * TILE_COLS * 4];
            for (t, wide) in wide.iter_mut().enumerate() {
                for (o, &b) in wide.iter_mut().zip(block[t..].iter().step_by(4)) {
                    *o = i16::from(b);
                }
            }
            for (r, acc) in acc.iter_mut().enumerate().take(valid) {
                let xs = &a[r * kp + g * 4..r * kp + g * 4 + 4];
                for (&x, wide) in xs.iter().zip(&wide) {
                    let x = i16::from(x);
                    for (acc, &v) in acc.iter_mut().zip(wide) {
                        *acc += i32::from(x.wrapping_mul(v));
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

/// Int8 on AVX2 without VNNI: `vpmaddubsw` would saturate (two u8 × s8 products of up to
/// 255 · 127 each pass i16's range), so both operands are widened to i16 and multiplied with
/// `vpmaddwd`, whose pair sums are exact in i32: the same integers as `vpdpbusd`.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    use super::{QWeight, RowScale, MR, TILE_COLS};
    use crate::tiles::avx2::write;

    /// Outputs per slice of a tile: 2 registers of 4 outputs × 4 inputs (i16).
    const SLICE: usize = 8;

    /// One tile, `MR` rows × 64 outputs, 8 outputs at a time: per group of 4 inputs, 2 weight
    /// loads widened to i16, 6 broadcasts (a row's 4 inputs as one 64-bit value) and 12
    /// `vpmaddwd` + 12 `vpaddd` into 12 accumulators, each holding 4 outputs × 2 partial sums
    /// (added together at the end).
    ///
    /// # Safety
    /// The CPU has AVX2; `a` holds `MR` rows of `kp` activations widened to i16; `y` points at
    /// the tile's first row of a `[rows, outputs]` matrix with `valid` rows from there.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn tile(
        w: &QWeight,
        tile: usize,
        a: &[i16],
        kp: usize,
        sx: &[RowScale],
        valid: usize,
        y: *mut f32,
        accumulate: bool,
    ) {
        debug_assert!(a.len() >= MR * kp && sx.len() >= valid);
        let n = w.outputs;
        let base = w.packed.as_ptr().add(tile * w.groups * TILE_COLS * 4);
        let ap = a.as_ptr();
        for slice in 0..TILE_COLS / SLICE {
            let j = tile * TILE_COLS + slice * SLICE;
            if j >= n {
                break;
            }
            let mut acc = [[_mm256_setzero_si256(); 2]; MR];
            let mut wp = base.add(slice * SLICE * 4);
            for g in 0..w.groups {
                let b0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(wp as *const __m128i));
                let b1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(wp.add(16) as *const __m128i));
                wp = wp.add(TILE_COLS * 4);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x =
                        _mm256_set1_epi64x((ap.add(r * kp + g * 4) as *const i64).read_unaligned());
                    acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(x, b0));
                    acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(x, b1));
                }
            }
            let sums = _mm256_loadu_si256(w.col_sums.as_ptr().add(j) as *const __m256i);
            let scale = _mm256_loadu_ps(w.scales.as_ptr().add(j));
            let left = (n - j).min(SLICE);
            for (r, acc) in acc.iter().enumerate().take(valid) {
                // Per 128-bit lane, hadd gives outputs (0, 1, 4, 5) and (2, 3, 6, 7): the permute
                // puts them in order.
                let dot =
                    _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_hadd_epi32(acc[0], acc[1]));
                let offset = _mm256_mullo_epi32(_mm256_set1_epi32(sx[r].zero), sums);
                let v = _mm256_mul_ps(
                    _mm256_cvtepi32_ps(_mm256_sub_epi32(dot, offset)),
                    _mm256_mul_ps(scale, _mm256_set1_ps(sx[r].scale)),
                );
                write(y.add(r * n + j), left, v, accumulate);
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
            for kernel in crate::kernels_here("int8", available, kernel_name) {
                let mut y = vec![f32::NAN; rows * outputs];
                q.matmul_into_with(&x, &mut y, false, kernel, true);
                let mut z = vec![1.0f32; rows * outputs];
                q.matmul_into_with(&x, &mut z, true, kernel, true);
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

    /// Every int8 kernel this CPU has computes the portable loops' values bit for bit (the same
    /// integers, scaled the same way), at sizes off every slice, tile and group boundary.
    #[test]
    fn every_int8_kernel_equals_the_portable_loops_bit_for_bit() {
        for (rows, inputs, outputs) in [(1, 5, 3), (7, 33, 70), (13, 68, 136), (50, 384, 1152)] {
            let q = QWeight::quantize(&weight(outputs, inputs));
            // Rows with large positive and negative values: products near i16's range and past.
            let x: Vec<f32> = (0..rows * inputs)
                .map(|i| (i as f32 * 0.61).sin() * 40.0 + if i % 5 == 0 { 90.0 } else { 0.0 })
                .collect();
            let mut want = vec![0f32; rows * outputs];
            q.matmul_into_with(&x, &mut want, false, Kernel::Portable, true);
            for kernel in crate::kernels_here("int8", available, kernel_name) {
                for accumulate in [false, true] {
                    let mut y = vec![0.5f32; rows * outputs];
                    q.matmul_into_with(&x, &mut y, accumulate, kernel, false);
                    for (i, (&got, &want)) in y.iter().zip(&want).enumerate() {
                        let want = if accumulate { 0.5 + want } else { want };
                        assert_eq!(
                            got.to_bits(),
                            want.to_bits(),
                            "{} {rows}x{inputs}x{outputs} [{i}]: {got} vs {want}",
                            kernel_name(kernel)
                        );
                    }
                }
            }
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn a_kernel_the_cpu_lacks_is_refused_not_replaced() {
        for kernel in Kernel::ALL.into_iter().filter(|&k| !available(k)) {
            let q = QWeight::quantize(&weight(8, 8));
            let run = std::panic::catch_unwind(|| {
                let mut y = vec![0f32; 8];
                q.matmul_into_with(&[1.0; 8], &mut y, false, kernel, false);
            });
            assert!(run.is_err(), "{} ran", kernel_name(kernel));
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
        for kernel in crate::kernels_here("int8", available, kernel_name) {
            let mut y = vec![0f32; rows * outputs];
            q.matmul_into_with(&x, &mut y, false, kernel, true);
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
