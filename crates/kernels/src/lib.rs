//! Hand-written CPU kernels for xbench's fused forward pass (`xbench::model::fused`), in every
//! precision: fp32, fp16 and bf16 products (`half`), int8 (`quant`) and int4 with GPTQ (`int4`,
//! `gptq`).
//!
//! candle runs every elementwise op as its own pass over memory, single-threaded, with scalar
//! `erf`/`exp`; the fused pass instead does bias + GELU, bias + residual + LayerNorm and the whole
//! of attention (scores, softmax, weighted sum) each in one pass, over rows in parallel on the
//! caller's rayon pool. fp32 matrix products go to the `gemm` crate (what candle uses), called
//! directly so the residual is accumulated into the product's output instead of added afterwards.
//!
//! Every kernel body is written once, as plain Rust that the compiler vectorizes, and compiled
//! three times: for AVX-512, for AVX2 + FMA + F16C and portable; [`simd`] picks one at run time
//! (the `XBENCH_SIMD` environment variable may force a lower level, which tests and benchmarks
//! use). The reduced precisions' products also have intrinsics kernels per level ([`Kernel`]:
//! AVX-512 VNNI / BF16, AVX2), each tested against the portable loops it must equal.

pub mod attention;
pub mod decoder;
pub mod gptq;
pub mod half;
pub mod int4;
pub mod math;
pub mod matmul;
pub mod quant;
pub mod rows;
mod tiles;

use std::sync::OnceLock;

/// Instruction sets the kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Simd {
    /// Whatever the build target allows (SSE2 on a default x86-64 build).
    Portable,
    /// AVX2, FMA and F16C (every CPU with AVX2 has the other two).
    Avx2,
    /// AVX-512 F/BW/VL/DQ.
    Avx512,
}

impl Simd {
    pub fn name(self) -> &'static str {
        match self {
            Simd::Portable => "portable",
            Simd::Avx2 => "avx2",
            Simd::Avx512 => "avx512",
        }
    }

    fn detect() -> Simd {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                return Simd::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                return Simd::Avx2;
            }
        }
        Simd::Portable
    }
}

/// Which code a product of one precision runs: the precision's AVX-512 kernel, its AVX2 kernel or
/// the plain loops (compiled for the level, so that the compiler vectorizes them). Each module says
/// what its kernels are ([`quant::kernel`], [`half::kernel`], [`int4::kernel`]); every kernel of a
/// precision computes the same values as its portable loops (integers bit for bit; floats within
/// the order of their roundings), which tests check at every level the machine has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Avx512,
    Avx2,
    Portable,
}

impl Kernel {
    /// Best first.
    pub const ALL: [Kernel; 3] = [Kernel::Avx512, Kernel::Avx2, Kernel::Portable];
}

/// The kernels of one precision that this CPU runs, for tests; each one it lacks is named as
/// skipped on stderr, so that a test which ran only the portable loops says so.
#[cfg(test)]
pub(crate) fn kernels_here(
    precision: &str,
    available: impl Fn(Kernel) -> bool,
    name: impl Fn(Kernel) -> &'static str,
) -> Vec<Kernel> {
    Kernel::ALL
        .into_iter()
        .filter(|&k| {
            let here = available(k);
            if !here {
                eprintln!(
                    "skipped: the {} {precision} kernel (not on this CPU)",
                    name(k)
                );
            }
            here
        })
        .collect()
}

/// The kernel each product precision runs here, by name: `(precision, kernel)` for fp32, fp16,
/// bf16, int8 and int4 (what `GET /info`, the load log line and results' provenance report).
pub fn kernels() -> Vec<(&'static str, &'static str)> {
    vec![
        ("fp32", matmul::kernel_name()),
        (
            "fp16",
            half::kernel_name(half::HalfKind::F16, half::kernel(half::HalfKind::F16)),
        ),
        (
            "bf16",
            half::kernel_name(half::HalfKind::Bf16, half::kernel(half::HalfKind::Bf16)),
        ),
        ("int8", quant::kernel_name(quant::kernel())),
        ("int4", int4::kernel_name(int4::kernel())),
    ]
}

/// The level the kernels run at: the best this CPU has, lowered (never raised) by
/// `XBENCH_SIMD=portable|avx2|avx512`.
pub fn simd() -> Simd {
    static LEVEL: OnceLock<Simd> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let best = Simd::detect();
        let asked = match std::env::var("XBENCH_SIMD").ok().as_deref() {
            Some("portable") => Simd::Portable,
            Some("avx2") => Simd::Avx2,
            _ => best,
        };
        asked.min(best)
    })
}

/// Defines `pub fn $name(args)` that runs `$body` compiled for the [`simd`] level: the body is
/// written once and the compiler vectorizes it for each instruction set.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
            #[allow(clippy::too_many_arguments)]
            fn avx512($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,f16c")]
            #[allow(clippy::too_many_arguments)]
            fn avx2($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }

            match $crate::simd() {
                // SAFETY: simd() reports a level only when the CPU has its features.
                #[cfg(target_arch = "x86_64")]
                $crate::Simd::Avx512 => unsafe { avx512($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                $crate::Simd::Avx2 => unsafe { avx2($($arg),*) },
                _ => body($($arg),*),
            }
        }
    };
}
pub(crate) use multiversion;

/// The first `n` values of `buffer`, which grows (with default values) when it is shorter; what
/// the values held before is left in them.
pub(crate) fn grow<T: Copy + Default>(buffer: &mut Vec<T>, n: usize) -> &mut [T] {
    if buffer.len() < n {
        buffer.resize(n, T::default());
    }
    &mut buffer[..n]
}

/// A raw pointer that parallel tasks may share, each writing a region no other task touches.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(*mut f32);

impl SharedMut {
    pub fn new(p: *mut f32) -> Self {
        Self(p)
    }

    /// The pointer (a method, so closures capture the whole `Send + Sync` wrapper).
    pub fn get(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: only used to hand disjoint regions of one buffer to rayon tasks; see each use.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}
