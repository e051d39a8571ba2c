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
use crate::Kernel;

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
        self.matmul_into_with(x, y, accumulate, kernel(self.kind), true);
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
            available(kernel, self.kind),
            "the {} {:?} kernel does not run on this CPU",
            kernel_name(self.kind, kernel),
            self.kind
        );
        let (k, n, kp) = (self.inputs, self.outputs, self.kp);
        let rows = x.len() / k;
        assert_eq!(x.len(), rows * k, "x is not [rows, in]");
        assert_eq!(y.len(), rows * n, "y is not [rows, out]");
        // AVX-512 BF16's `vdpbf16ps` reads bf16 bits; every other kernel f32 values already
        // rounded to the type.
        let native_bf16 = self.kind == HalfKind::Bf16 && kernel == Kernel::Avx512;
        // Each task rounds its rows once.
        let prepare = |chunk: std::ops::Range<usize>| {
            let padded = chunk.len().div_ceil(MR) * MR * kp;
            let mut bits = Vec::new();
            let mut wide = Vec::new();
            if native_bf16 {
                bits.resize(padded, 0u16);
            } else {
                wide.resize(padded, 0f32);
            }
            for (i, r) in chunk.enumerate() {
                let row = &x[r * k..(r + 1) * k];
                match self.kind {
                    #[cfg(target_arch = "x86_64")]
                    HalfKind::Bf16 if native_bf16 => {
                        // SAFETY: available(Avx512, Bf16) checked AVX-512 F/BW/VL and BF16.
                        unsafe { avx512::to_bf16(row, &mut bits[i * kp..i * kp + k]) }
                    }
                    HalfKind::Bf16 => round_bf16(row, &mut wide[i * kp..i * kp + k]),
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: both SIMD levels have F16C (crate::simd checks it).
                    HalfKind::F16 if kernel != Kernel::Portable => unsafe {
                        avx2::round_f16(row, &mut wide[i * kp..i * kp + k])
                    },
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
                match (kernel, self.kind) {
                    // SAFETY (all four): available() checked the CPU features; the group holds
                    // MR rows of kp values and y_tile `valid` rows of the tile's region, which
                    // only this call writes.
                    #[cfg(target_arch = "x86_64")]
                    (Kernel::Avx512, HalfKind::Bf16) => unsafe {
                        avx512::bf16_tile(self, tile, &bits[rows], valid, y_tile, accumulate)
                    },
                    #[cfg(target_arch = "x86_64")]
                    (Kernel::Avx512, HalfKind::F16) => unsafe {
                        avx512::f16_tile(self, tile, &wide[rows], valid, y_tile, accumulate)
                    },
                    #[cfg(target_arch = "x86_64")]
                    (Kernel::Avx2, HalfKind::Bf16) => unsafe {
                        avx2::bf16_tile(self, tile, &wide[rows], valid, y_tile, accumulate)
                    },
                    #[cfg(target_arch = "x86_64")]
                    (Kernel::Avx2, HalfKind::F16) => unsafe {
                        avx2::f16_tile(self, tile, &wide[rows], valid, y_tile, accumulate)
                    },
                    _ => {
                        let _ = bits;
                        portable_tile(self, tile, &wide[rows], valid, y_tile, accumulate)
                    }
                }
            },
            parallel,
        );
    }
}

/// Whether `kernel` runs products of `kind` here (never above the `XBENCH_SIMD` level): AVX-512 is
/// `vdpbf16ps` for bf16 (on AVX-512 BF16 CPUs; other AVX-512 CPUs run the AVX2 kernel) and
/// widening with FMAs for fp16; AVX2 widens either type (F16C's `vcvtph2ps` for fp16, a shift
/// for bf16).
pub fn available(kernel: Kernel, kind: HalfKind) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match kernel {
            Kernel::Avx512 => {
                crate::simd() == crate::Simd::Avx512
                    && match kind {
                        HalfKind::Bf16 => std::arch::is_x86_feature_detected!("avx512bf16"),
                        HalfKind::F16 => true,
                    }
            }
            Kernel::Avx2 => crate::simd() >= crate::Simd::Avx2,
            Kernel::Portable => true,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = kind;
        kernel == Kernel::Portable
    }
}

/// The kernel products of `kind` run: the first [`available`] of AVX-512, AVX2, portable.
pub fn kernel(kind: HalfKind) -> Kernel {
    Kernel::ALL
        .into_iter()
        .find(|&k| available(k, kind))
        .unwrap_or(Kernel::Portable)
}

/// What `kernel` is for `kind`, by name.
pub fn kernel_name(kind: HalfKind, kernel: Kernel) -> &'static str {
    match (kernel, kind) {
        (Kernel::Avx512, HalfKind::Bf16) => "avx512-bf16",
        (Kernel::Avx512, HalfKind::F16) => "avx512-widen",
        (Kernel::Avx2, _) => "avx2-widen",
        (Kernel::Portable, _) => "portable",
    }
}

/// The f32 of the fp16 value with bits `h`, in integer operations and one multiplication that the
/// compiler vectorizes (where `half::f16::to_f32` checks the CPU at each call): exact for every
/// value, subnormals included (their f32 reading times 2^112, a power of two, renormalizes them).
#[inline(always)]
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let sign = (h & 0x8000) << 16;
    // Exponent and mantissa where f32 keeps them: the value times 2^-112 (fp16's exponent bias is
    // 15, f32's 127).
    let rest = (h & 0x7FFF) << 13;
    let scaled = f32::from_bits(rest) * f32::from_bits(0x7780_0000);
    let special = (h & 0x7C00) == 0x7C00;
    let bits = if special {
        rest | 0x7F80_0000
    } else {
        scaled.to_bits()
    };
    f32::from_bits(bits | sign)
}

crate::multiversion! {
    /// `dst[i]` = `src[i]` rounded to bf16 (nearest even, as `half::bf16::from_f32` rounds) and
    /// back, in integer operations the compiler vectorizes (a NaN stays a NaN, made quiet).
    pub(crate) fn round_bf16(src: &[f32], dst: &mut [f32]) {
        assert_eq!(src.len(), dst.len(), "round_bf16: lengths differ");
        for (o, &v) in dst.iter_mut().zip(src) {
            let b = v.to_bits();
            let rounded = b.wrapping_add(0x7FFF + ((b >> 16) & 1)) & 0xFFFF_0000;
            let nan = (b & 0x7FFF_FFFF) > 0x7F80_0000;
            let quiet = (b | 0x0040_0000) & 0xFFFF_0000;
            *o = f32::from_bits(if nan { quiet } else { rounded });
        }
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
                            *o = f16_to_f32(b);
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

/// bf16 and fp16 on AVX2 (and F16C): weights widened to f32 in registers — fp16 by `vcvtph2ps`,
/// bf16 by a shift (its bits are an f32's upper half) — multiplied by activations already rounded
/// to the type, in f32 FMAs: the weights' memory halved, fp32's arithmetic.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    use super::{HalfWeight, MR, TILE_COLS};
    use crate::tiles::avx2::write;

    /// Outputs per slice of a tile: 2 registers of 8.
    const SLICE: usize = 16;

    /// `dst[i]` = `src[i]` rounded to fp16 (nearest even) and back, 8 at a time by F16C.
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C.
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn round_f16(src: &[f32], dst: &mut [f32]) {
        assert_eq!(src.len(), dst.len(), "round_f16: lengths differ");
        let body = src.len() / 8 * 8;
        for i in (0..body).step_by(8) {
            let h =
                _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(src.as_ptr().add(i)));
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
        for (o, &v) in dst[body..].iter_mut().zip(&src[body..]) {
            *o = ::half::f16::from_f32(v).to_f32();
        }
    }

    /// Writes a slice's accumulators for the tile's `valid` rows.
    #[target_feature(enable = "avx2")]
    unsafe fn store(
        acc: &[[__m256; 2]; MR],
        n: usize,
        j: usize,
        valid: usize,
        y: *mut f32,
        accumulate: bool,
    ) {
        for (r, acc) in acc.iter().enumerate().take(valid) {
            for (h, &v) in acc.iter().enumerate() {
                let c = j + 8 * h;
                if c < n {
                    write(y.add(r * n + c), n - c, v, accumulate);
                }
            }
        }
    }

    /// One fp16 tile, `MR` rows × 64 outputs, 16 at a time: per input 2 weight loads widened
    /// (`vcvtph2ps`), 6 broadcasts and 12 FMAs.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `a` holds `MR` rows of `w.kp` f32; `y` points at the
    /// tile's first row of a `[rows, outputs]` matrix with `valid` rows from there.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn f16_tile(
        w: &HalfWeight,
        tile: usize,
        a: &[f32],
        valid: usize,
        y: *mut f32,
        accumulate: bool,
    ) {
        let (kp, n) = (w.kp, w.outputs);
        debug_assert!(a.len() >= MR * kp);
        let base = w.packed.as_ptr().add(tile * kp * TILE_COLS);
        let ap = a.as_ptr();
        for slice in 0..TILE_COLS / SLICE {
            let j = tile * TILE_COLS + slice * SLICE;
            if j >= n {
                break;
            }
            let mut acc = [[_mm256_setzero_ps(); 2]; MR];
            let mut wp = base.add(slice * SLICE);
            for kk in 0..kp {
                let b0 = _mm256_cvtph_ps(_mm_loadu_si128(wp as *const __m128i));
                let b1 = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(8) as *const __m128i));
                wp = wp.add(TILE_COLS);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_set1_ps(*ap.add(r * kp + kk));
                    acc[0] = _mm256_fmadd_ps(x, b0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(x, b1, acc[1]);
                }
            }
            store(&acc, n, j, valid, y, accumulate);
        }
    }

    /// One bf16 tile, `MR` rows × 64 outputs, 16 at a time: per pair of inputs 2 loads of 8
    /// outputs × 2 inputs, split into the pair's two weight vectors (shift, mask), 12 broadcasts
    /// and 24 FMAs, inputs in order.
    ///
    /// # Safety
    /// As for [`f16_tile`] (AVX2 and FMA), `a` rounded to bf16.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn bf16_tile(
        w: &HalfWeight,
        tile: usize,
        a: &[f32],
        valid: usize,
        y: *mut f32,
        accumulate: bool,
    ) {
        let (kp, n) = (w.kp, w.outputs);
        debug_assert!(a.len() >= MR * kp);
        let base = w.packed.as_ptr().add(tile * kp * TILE_COLS);
        let ap = a.as_ptr();
        let upper = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
        for slice in 0..TILE_COLS / SLICE {
            let j = tile * TILE_COLS + slice * SLICE;
            if j >= n {
                break;
            }
            let mut acc = [[_mm256_setzero_ps(); 2]; MR];
            let mut wp = base.add(slice * SLICE * 2);
            for s in 0..kp / 2 {
                let v0 = _mm256_loadu_si256(wp as *const __m256i);
                let v1 = _mm256_loadu_si256(wp.add(16) as *const __m256i);
                wp = wp.add(TILE_COLS * 2);
                let even = [
                    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(v0)),
                    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(v1)),
                ];
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_set1_ps(*ap.add(r * kp + 2 * s));
                    acc[0] = _mm256_fmadd_ps(x, even[0], acc[0]);
                    acc[1] = _mm256_fmadd_ps(x, even[1], acc[1]);
                }
                let odd = [
                    _mm256_castsi256_ps(_mm256_and_si256(v0, upper)),
                    _mm256_castsi256_ps(_mm256_and_si256(v1, upper)),
                ];
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_set1_ps(*ap.add(r * kp + 2 * s + 1));
                    acc[0] = _mm256_fmadd_ps(x, odd[0], acc[0]);
                    acc[1] = _mm256_fmadd_ps(x, odd[1], acc[1]);
                }
            }
            store(&acc, n, j, valid, y, accumulate);
        }
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

    /// Sizes off every slice and tile (rows not a multiple of 6, outputs not of 16 or 64, an odd
    /// input count), both kinds, every kernel this CPU has, overwriting and accumulating.
    #[test]
    fn both_kinds_equal_the_rounded_reference_with_every_kernel() {
        for kind in [HalfKind::Bf16, HalfKind::F16] {
            for (rows, inputs, outputs) in [(1, 7, 5), (13, 33, 70), (50, 64, 130), (7, 96, 200)] {
                let w = weight(outputs, inputs);
                let x = data(rows * inputs, 0.123);
                let h = HalfWeight::new(&w, kind);
                let want = reference(kind, &w, &x, rows);
                for kernel in crate::kernels_here(
                    &format!("{kind:?}"),
                    |k| available(k, kind),
                    |k| kernel_name(kind, k),
                ) {
                    let name = kernel_name(kind, kernel);
                    let mut y = vec![f32::NAN; rows * outputs];
                    h.matmul_into_with(&x, &mut y, false, kernel, true);
                    let mut z = vec![1.0; rows * outputs];
                    h.matmul_into_with(&x, &mut z, true, kernel, false);
                    for i in 0..rows * outputs {
                        let tol = 1e-5 * (1.0 + want[i].abs());
                        assert!(
                            (y[i] as f64 - want[i]).abs() <= tol,
                            "{kind:?} {name} {rows}x{inputs}x{outputs} [{i}]: {} vs {}",
                            y[i],
                            want[i]
                        );
                        assert!((z[i] as f64 - 1.0 - want[i]).abs() <= tol + 1e-6);
                    }
                }
            }
        }
    }

    /// The vectorized roundings equal the half crate's, value for value, over every fp16 value
    /// (as f32), their neighbours, ties, bf16 ties, subnormals, infinities and NaNs.
    #[test]
    fn roundings_equal_the_half_crates() {
        let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        let mut values: Vec<f32> = (0..=u16::MAX)
            .flat_map(|h| {
                let v = f16::from_bits(h).to_f32();
                [
                    v,
                    f32::from_bits(v.to_bits().wrapping_add(1)),
                    f32::from_bits(v.to_bits().wrapping_sub(1)),
                ]
            })
            .collect();
        values.extend(
            (0..=u16::MAX)
                .flat_map(|b| {
                    let v = u32::from(b) << 16;
                    [v | 0x8000, v | 0x8001, v | 0x7FFF, v | 0x1]
                })
                .map(f32::from_bits),
        );
        for h in 0..=u16::MAX {
            let (got, want) = (f16_to_f32(h), f16::from_bits(h).to_f32());
            assert!(same(got, want), "fp16 {h:#x}: {got:e} vs {want:e}");
        }
        values.extend([
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-40,
            -1e-40,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ]);
        let mut out = vec![0f32; values.len()];
        round_bf16(&values, &mut out);
        for (&v, &o) in values.iter().zip(&out) {
            let want = bf16::from_f32(v).to_f32();
            assert!(
                same(o, want),
                "bf16 of {v:e} ({:#x}): {o:e} vs {want:e}",
                v.to_bits()
            );
        }
        #[cfg(target_arch = "x86_64")]
        if available(Kernel::Avx2, HalfKind::F16) {
            // SAFETY: the AVX2 level has F16C.
            unsafe { avx2::round_f16(&values, &mut out) };
            for (&v, &o) in values.iter().zip(&out) {
                let want = f16::from_f32(v).to_f32();
                assert!(
                    same(o, want),
                    "fp16 of {v:e} ({:#x}): {o:e} vs {want:e}",
                    v.to_bits()
                );
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
