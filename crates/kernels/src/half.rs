//! bf16 and fp16 matrix products: weights stored in the 16-bit type (half of fp32's memory),
//! activations rounded to it at each product (round to nearest even), products accumulated in f32.
//!
//! - **bf16** runs on AVX-512 BF16's `vdpbf16ps` where the CPU has it: one instruction multiplies 16
//!   pairs of bf16 and adds both products to 16 f32 accumulators, twice an fp32 FMA's work. Weights
//!   are packed in pairs of inputs to match.
//! - **fp16** has no arithmetic on x86 CPUs before AVX512-FP16 (which this code does not assume):
//!   weights are widened to f32 in registers (`vcvtph2ps`) and multiplied by activations rounded
//!   to fp16, in f32 FMAs. It halves the weight memory and shows fp16's rounding; it is not faster
//!   than fp32 here. (On GPUs fp16 runs through candle.)
//!
//! Elsewhere, a portable loop computes the same values. A row's result depends on that row alone.

use ::half::{bf16, f16};

use crate::matmul::Weight;
use crate::tiles::{for_each_tile, store, BLOCKS, LANES, MR, TILE_COLS};

/// The 16-bit type of a [`HalfWeight`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HalfKind {
    Bf16,
    F16,
}

impl HalfKind {
    fn to_bits(self, v: f32) -> u16 {
        match self {
            HalfKind::Bf16 => bf16::from_f32(v).to_bits(),
            HalfKind::F16 => f16::from_f32(v).to_bits(),
        }
    }

    fn to_f32(self, bits: u16) -> f32 {
        match self {
            HalfKind::Bf16 => bf16::from_bits(bits).to_f32(),
            HalfKind::F16 => f16::from_bits(bits).to_f32(),
        }
    }

    /// `v` rounded to this type and back.
    pub fn round(self, v: f32) -> f32 {
        self.to_f32(self.to_bits(v))
    }

    /// Inputs side by side in the packed weight: `vdpbf16ps` takes bf16 in pairs.
    fn step(self) -> usize {
        match self {
            HalfKind::Bf16 => 2,
            HalfKind::F16 => 1,
        }
    }
}

/// A linear layer's weight in bf16 or fp16, packed for the product, and its bias (f32).
#[derive(Debug, Clone)]
pub struct HalfWeight {
    pub kind: HalfKind,
    /// `[tile][step of inputs][block][16 outputs][step]` (step: 2 for bf16, 1 for fp16), zero
    /// past the real sizes.
    packed: Vec<u16>,
    pub bias: Vec<f32>,
    pub inputs: usize,
    pub outputs: usize,
    /// Inputs rounded up to a whole step.
    kp: usize,
    tiles: usize,
}

impl HalfWeight {
    /// Rounds an fp32 weight to `kind` (nearest even) and packs it.
    pub fn new(w: &Weight, kind: HalfKind) -> Self {
        let (k, n) = (w.inputs, w.outputs);
        let step = kind.step();
        let kp = k.div_ceil(step) * step;
        let tiles = n.div_ceil(TILE_COLS);
        let mut packed = vec![0u16; tiles * kp * TILE_COLS];
        for kk in 0..k {
            let (s, t) = (kk / step, kk % step);
            for j in 0..n {
                let (tile, col) = (j / TILE_COLS, j % TILE_COLS);
                packed[((tile * (kp / step) + s) * TILE_COLS + col) * step + t] =
                    kind.to_bits(w.w[kk * n + j]);
            }
        }
        Self {
            kind,
            packed,
            bias: w.bias.clone(),
            inputs: k,
            outputs: n,
            kp,
            tiles,
        }
    }

    /// Its packed 16-bit values, for a cache.
    pub fn stored(&self) -> Vec<u16> {
        self.packed.clone()
    }

    /// The weight of `w`'s shape and bias in `kind` from the values [`HalfWeight::stored`] gave.
    pub fn from_stored(w: &Weight, kind: HalfKind, packed: Vec<u16>) -> Result<Self, String> {
        let step = kind.step();
        let kp = w.inputs.div_ceil(step) * step;
        let tiles = w.outputs.div_ceil(TILE_COLS);
        crate::quant::check_len("packed", packed.len(), tiles * kp * TILE_COLS)?;
        Ok(Self {
            kind,
            packed,
            bias: w.bias.clone(),
            inputs: w.inputs,
            outputs: w.outputs,
            kp,
            tiles,
        })
    }

    /// Bytes of the packed weight (not the bias).
    pub fn weight_bytes(&self) -> usize {
        2 * self.packed.len()
    }

    /// `y = x · W` for `x` `[rows, in]` (no bias), with each activation rounded to the weight's
    /// type on the way; `y += x · W` with `accumulate`.
    pub fn matmul_into(&self, x: &[f32], y: &mut [f32], accumulate: bool) {
        self.matmul_into_with(x, y, accumulate, simd_available(self.kind), true);
    }

    /// With the AVX-512 kernel or the portable loop (tests run both).
    pub(crate) fn matmul_into_with(
        &self,
        x: &[f32],
        y: &mut [f32],
        accumulate: bool,
        simd: bool,
        parallel: bool,
    ) {
        let (k, n, kp) = (self.inputs, self.outputs, self.kp);
        let rows = x.len() / k;
        assert_eq!(x.len(), rows * k, "x is not [rows, in]");
        assert_eq!(y.len(), rows * n, "y is not [rows, out]");
        // Each task rounds its rows once: bf16 bits for `vdpbf16ps`, fp16-rounded f32 for the FMAs.
        let prepare = |chunk: std::ops::Range<usize>| {
            let padded = chunk.len().div_ceil(MR) * MR * kp;
            let mut bits = Vec::new();
            let mut wide = Vec::new();
            // The AVX-512 bf16 kernel reads bf16 bits; every other path f32 values already
            // rounded to the type.
            if self.kind == HalfKind::Bf16 && simd {
                bits.resize(padded, 0u16);
            } else {
                wide.resize(padded, 0f32);
            }
            for (i, r) in chunk.enumerate() {
                let row = &x[r * k..(r + 1) * k];
                match self.kind {
                    #[cfg(target_arch = "x86_64")]
                    HalfKind::Bf16 if simd => {
                        // SAFETY: simd_available(Bf16) checked AVX-512 F/BW/VL and BF16.
                        unsafe { avx512::to_bf16(row, &mut bits[i * kp..i * kp + k]) }
                    }
                    HalfKind::Bf16 => {
                        for (o, &v) in wide[i * kp..].iter_mut().zip(row) {
                            *o = bf16::from_f32(v).to_f32();
                        }
                    }
                    HalfKind::F16 => {
                        for (o, &v) in wide[i * kp..].iter_mut().zip(row) {
                            *o = f16::from_f32(v).to_f32();
                        }
                    }
                }
            }
            (bits, wide)
        };
        for_each_tile(
            rows,
            n,
            self.tiles,
            y,
            prepare,
            |(bits, wide), tile, group, valid, y_tile| {
                let rows = group * MR * kp..(group + 1) * MR * kp;
                #[cfg(target_arch = "x86_64")]
                if simd {
                    // SAFETY: simd_available() checked the CPU features; the group holds MR rows of kp
                    // values and y_tile `valid` rows of the tile's region, which only this call writes.
                    unsafe {
                        match self.kind {
                            HalfKind::Bf16 => avx512::bf16_tile(
                                self,
                                tile,
                                &bits[rows],
                                valid,
                                y_tile,
                                accumulate,
                            ),
                            HalfKind::F16 => {
                                avx512::f16_tile(self, tile, &wide[rows], valid, y_tile, accumulate)
                            }
                        }
                    }
                    return;
                }
                let _ = (simd, bits);
                portable_tile(self, tile, &wide[rows], valid, y_tile, accumulate);
            },
            parallel,
        );
    }
}

/// Whether the AVX-512 kernel of `kind` runs here (never when `XBENCH_SIMD` lowers the level).
pub fn simd_available(kind: HalfKind) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::simd() == crate::Simd::Avx512
            && match kind {
                HalfKind::Bf16 => std::arch::is_x86_feature_detected!("avx512bf16"),
                HalfKind::F16 => true,
            }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = kind;
        false
    }
}

crate::multiversion! {
    /// One tile in plain loops, compiled for the CPU's level so that they vectorize: `a` holds
    /// `MR` rows of `kp` activations already rounded to the type. Each step's 64 weights are
    /// widened once for all the tile's rows; every output adds its products in input order, as
    /// the AVX-512 kernels do.
    fn portable_tile(
        w: &HalfWeight,
        tile: usize,
        a: &[f32],
        valid: usize,
        y: *mut f32,
        accumulate: bool,
    ) {
        let (n, kp, step) = (w.outputs, w.kp, w.kind.step());
        let base = tile * kp * TILE_COLS;
        let mut acc = [[0f32; TILE_COLS]; MR];
        let mut wide = [0f32; TILE_COLS];
        for s in 0..kp / step {
            let block = &w.packed[base + s * TILE_COLS * step..base + (s + 1) * TILE_COLS * step];
            for t in 0..step {
                match w.kind {
                    HalfKind::Bf16 => {
                        for (o, &b) in wide.iter_mut().zip(block[t..].iter().step_by(step)) {
                            *o = f32::from_bits(u32::from(b) << 16);
                        }
                    }
                    HalfKind::F16 => {
                        for (o, &b) in wide.iter_mut().zip(block[t..].iter().step_by(step)) {
                            *o = f16::from_bits(b).to_f32();
                        }
                    }
                }
                for (r, acc) in acc.iter_mut().enumerate().take(valid) {
                    let x = a[r * kp + s * step + t];
                    for (acc, &v) in acc.iter_mut().zip(&wide) {
                        *acc += x * v;
                    }
                }
            }
        }
        for (r, acc) in acc.iter().enumerate().take(valid) {
            for (c, &v) in acc.iter().enumerate() {
                let j = tile * TILE_COLS + c;
                if j >= n {
                    break;
                }
                // SAFETY: row r < valid and column j < n lie inside the task's region of y.
                unsafe { store(y, n, r, j, v, accumulate) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    use super::{HalfWeight, BLOCKS, LANES, MR, TILE_COLS};
    use crate::tiles::lane_mask;

    /// Writes the accumulators of a tile's `valid` rows (masked at the last columns).
    #[target_feature(enable = "avx512f")]
    unsafe fn write(
        w: &HalfWeight,
        tile: usize,
        acc: &[[__m512; BLOCKS]; MR],
        valid: usize,
        y: *mut f32,
        accumulate: bool,
    ) {
        let n = w.outputs;
        for (r, acc) in acc.iter().enumerate().take(valid) {
            for (bl, &v) in acc.iter().enumerate() {
                let j = tile * TILE_COLS + bl * LANES;
                if j >= n {
                    break;
                }
                let mask = lane_mask(n, j);
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

    /// `dst[i]` = the bf16 bits of `src[i]`, rounded to nearest even by `vcvtneps2bf16`, 16 at a
    /// time (which reads subnormal inputs as zero: values below 1.2e-38, far under anything a
    /// product of this model adds up).
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW, VL and BF16; `dst` is as long as `src`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub unsafe fn to_bf16(src: &[f32], dst: &mut [u16]) {
        assert_eq!(src.len(), dst.len(), "to_bf16: lengths differ");
        let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
        for i in (0..src.len()).step_by(LANES) {
            let mask = lane_mask(src.len(), i);
            let v = _mm512_maskz_loadu_ps(mask, sp.add(i));
            let b = std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(v));
            _mm256_mask_storeu_epi16(dp.add(i) as *mut i16, mask, b);
        }
    }

    /// One bf16 tile, `MR` rows × 64 outputs: per pair of inputs 4 weight loads, 6 broadcasts
    /// (a row's two bf16 as one 32-bit value) and 24 `vdpbf16ps`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BF16; `a` holds `MR` rows of `w.kp` bf16 bits; `y` points at
    /// the tile's first row of a `[rows, outputs]` matrix with `valid` rows from there.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn bf16_tile(
        w: &HalfWeight,
        tile: usize,
        a: &[u16],
        valid: usize,
        y: *mut f32,
        accumulate: bool,
    ) {
        let kp = w.kp;
        let mut acc = [[_mm512_setzero_ps(); BLOCKS]; MR];
        let mut wp = w.packed.as_ptr().add(tile * kp * TILE_COLS);
        let ap = a.as_ptr();
        for s in 0..kp / 2 {
            let b: [__m512bh; BLOCKS] = [
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(wp as *const _)),
                std::mem::transmute::<__m512i, __m512bh>(
                    _mm512_loadu_si512(wp.add(32) as *const _),
                ),
                std::mem::transmute::<__m512i, __m512bh>(
                    _mm512_loadu_si512(wp.add(64) as *const _),
                ),
                std::mem::transmute::<__m512i, __m512bh>(
                    _mm512_loadu_si512(wp.add(96) as *const _),
                ),
            ];
            wp = wp.add(TILE_COLS * 2);
            for (r, acc) in acc.iter_mut().enumerate() {
                let pair = (ap.add(r * kp + s * 2) as *const i32).read_unaligned();
                let x = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(pair));
                for (acc, b) in acc.iter_mut().zip(&b) {
                    *acc = _mm512_dpbf16_ps(*acc, x, *b);
                }
            }
        }
        write(w, tile, &acc, valid, y, accumulate);
    }

    /// One fp16 tile, `MR` rows × 64 outputs: per input 4 weight loads widened to f32
    /// (`vcvtph2ps`), 6 broadcasts and 24 FMAs.
    ///
    /// # Safety
    /// The CPU has AVX-512 F; `a` holds `MR` rows of `w.kp` f32; `y` as for [`bf16_tile`].
    #[target_feature(enable = "avx512f")]
    pub unsafe fn f16_tile(
        w: &HalfWeight,
        tile: usize,
        a: &[f32],
        valid: usize,
        y: *mut f32,
        accumulate: bool,
    ) {
        let kp = w.kp;
        let mut acc = [[_mm512_setzero_ps(); BLOCKS]; MR];
        let mut wp = w.packed.as_ptr().add(tile * kp * TILE_COLS);
        let ap = a.as_ptr();
        for kk in 0..kp {
            let b = [
                _mm512_cvtph_ps(_mm256_loadu_si256(wp as *const _)),
                _mm512_cvtph_ps(_mm256_loadu_si256(wp.add(16) as *const _)),
                _mm512_cvtph_ps(_mm256_loadu_si256(wp.add(32) as *const _)),
                _mm512_cvtph_ps(_mm256_loadu_si256(wp.add(48) as *const _)),
            ];
            wp = wp.add(TILE_COLS);
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*ap.add(r * kp + kk));
                for (acc, b) in acc.iter_mut().zip(&b) {
                    *acc = _mm512_fmadd_ps(x, *b, *acc);
                }
            }
        }
        write(w, tile, &acc, valid, y, accumulate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::tiles::test_weight as weight;

    fn data(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * seed).cos() * 2.0).collect()
    }

    /// What the kernels must compute: weights and activations rounded to the type, products in
    /// f64.
    fn reference(kind: HalfKind, w: &Weight, x: &[f32], rows: usize) -> Vec<f64> {
        let (k, n) = (w.inputs, w.outputs);
        let mut out = vec![0f64; rows * n];
        for r in 0..rows {
            for j in 0..n {
                out[r * n + j] = (0..k)
                    .map(|kk| kind.round(x[r * k + kk]) as f64 * kind.round(w.w[kk * n + j]) as f64)
                    .sum();
            }
        }
        out
    }

    /// Sizes off every tile (rows not a multiple of 6, outputs not of 64, an odd input count),
    /// both kinds, both paths, overwriting and accumulating.
    #[test]
    fn both_kinds_equal_the_rounded_reference_on_both_paths() {
        for kind in [HalfKind::Bf16, HalfKind::F16] {
            for (rows, inputs, outputs) in [(1, 7, 5), (13, 33, 70), (50, 64, 130)] {
                let w = weight(outputs, inputs);
                let x = data(rows * inputs, 0.123);
                let h = HalfWeight::new(&w, kind);
                let want = reference(kind, &w, &x, rows);
                let mut paths = vec![false];
                if simd_available(kind) {
                    paths.push(true);
                }
                for simd in paths {
                    let mut y = vec![f32::NAN; rows * outputs];
                    h.matmul_into_with(&x, &mut y, false, simd, true);
                    let mut z = vec![1.0; rows * outputs];
                    h.matmul_into_with(&x, &mut z, true, simd, true);
                    for i in 0..rows * outputs {
                        let tol = 1e-5 * (1.0 + want[i].abs());
                        assert!(
                            (y[i] as f64 - want[i]).abs() <= tol,
                            "{kind:?} simd={simd} {rows}x{inputs}x{outputs} [{i}]: {} vs {}",
                            y[i],
                            want[i]
                        );
                        assert!((z[i] as f64 - 1.0 - want[i]).abs() <= tol + 1e-6);
                    }
                }
            }
        }
    }

    /// The rounding error against fp32 is what the type's precision allows (bf16: 8 bits of
    /// mantissa, fp16: 11), and a row does not depend on the others.
    #[test]
    fn error_is_the_types_rounding_and_rows_are_independent() {
        let (rows, inputs, outputs) = (20, 384, 96);
        let w = weight(outputs, inputs);
        let x = data(rows * inputs, 0.071);
        let mut exact = vec![0f32; rows * outputs];
        w.matmul_into(&x, &mut exact, false);
        for (kind, bound) in [(HalfKind::Bf16, 2e-2), (HalfKind::F16, 5e-3)] {
            let h = HalfWeight::new(&w, kind);
            let mut y = vec![0f32; rows * outputs];
            h.matmul_into(&x, &mut y, false);
            let scale = exact.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = y
                .iter()
                .zip(&exact)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(err / scale < bound, "{kind:?}: {err} of {scale}");
            assert!(err > 0.0, "{kind:?} rounded nothing");
            let mut alone = vec![0f32; outputs];
            h.matmul_into(&x[7 * inputs..8 * inputs], &mut alone, false);
            assert_eq!(alone, y[7 * outputs..8 * outputs], "{kind:?}");
        }
        assert_eq!(
            HalfWeight::new(&w, HalfKind::Bf16).weight_bytes(),
            2 * inputs * outputs.div_ceil(64) * 64
        );
    }
}
