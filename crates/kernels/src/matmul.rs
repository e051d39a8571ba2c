//! Matrix products of activations by a layer's weights, through the `gemm` crate (the kernels
//! candle uses, AVX-512 / AVX2 / portable chosen at run time), called directly so that a product can
//! accumulate onto a matrix that already holds the residual.

use gemm::Parallelism;
use rayon::prelude::*;

use crate::gptq::Hessian;
use crate::grow;
use crate::half::{HalfKind, HalfWeight};
use crate::int4::Q4Weight;
use crate::quant::QWeight;
use crate::rows::{self, Act};
use crate::tiles::TASK_ROWS;

/// The fp32 products' kernel, by name: the gemm crate's, which picks its own instruction set
/// (AVX-512 on a CPU with AVX-512 F, whatever `XBENCH_SIMD` says).
pub fn kernel_name() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "gemm-avx512";
        }
        if std::arch::is_x86_feature_detected!("fma") {
            return "gemm-avx2";
        }
    }
    "gemm"
}

/// A linear layer's weight stored transposed, `[in, out]` row-major, and its bias.
#[derive(Debug, Clone)]
pub struct Weight {
    /// `w[k * out + j]` is the weight from input `k` to output `j`.
    pub w: Vec<f32>,
    pub bias: Vec<f32>,
    pub inputs: usize,
    pub outputs: usize,
}

impl Weight {
    /// From transformers' layout: `weight` `[out, in]` row-major, `bias` `[out]`.
    pub fn from_out_in(weight: &[f32], bias: Vec<f32>, outputs: usize, inputs: usize) -> Self {
        assert_eq!(weight.len(), outputs * inputs, "weight is not [out, in]");
        assert_eq!(bias.len(), outputs, "bias is not [out]");
        let mut w = vec![0f32; inputs * outputs];
        for j in 0..outputs {
            for k in 0..inputs {
                w[k * outputs + j] = weight[j * inputs + k];
            }
        }
        Self {
            w,
            bias,
            inputs,
            outputs,
        }
    }

    /// `y = x · W` for `x` `[rows, in]` (no bias). With `accumulate`, `y += x · W` onto what `y`
    /// holds; otherwise `y` is overwritten.
    pub fn matmul_into(&self, x: &[f32], y: &mut [f32], accumulate: bool) {
        let threads = rayon::current_num_threads();
        let parallelism = if threads > 1 {
            Parallelism::Rayon(threads)
        } else {
            Parallelism::None
        };
        self.gemm_into(x, y, accumulate, parallelism);
    }

    fn gemm_into(&self, x: &[f32], y: &mut [f32], accumulate: bool, parallelism: Parallelism) {
        let rows = x.len() / self.inputs;
        assert_eq!(x.len(), rows * self.inputs, "x is not [rows, in]");
        assert_eq!(y.len(), rows * self.outputs, "y is not [rows, out]");
        if rows == 0 {
            return;
        }
        // SAFETY: the pointers cover the asserted [rows, in], [in, out] and [rows, out] row-major
        // matrices (column stride 1, row stride = columns), y does not alias x or the weights
        // (distinct borrows), and gemm only reads y when `accumulate` says so.
        unsafe {
            gemm::gemm(
                rows,
                self.outputs,
                self.inputs,
                y.as_mut_ptr(),
                1,
                self.outputs as isize,
                accumulate,
                x.as_ptr(),
                1,
                self.inputs as isize,
                self.w.as_ptr(),
                1,
                self.outputs as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
    }
}

/// A layer's product in one of the precisions the fused pass runs: fp32 weights, int8 or int4
/// weights with activations quantized per row ([`QWeight`], [`Q4Weight`]), or bf16 / fp16 weights
/// with activations rounded to that type ([`HalfWeight`]). Either way the bias stays f32 and is added by the pass
/// that follows the product.
#[derive(Debug, Clone)]
pub enum Linear {
    F32(Weight),
    Int8(QWeight),
    Int4(Q4Weight),
    Half(HalfWeight),
}

/// A converted layer's arrays, as a cache stores them (the bias and the shape come from the fp32
/// layer they were made from).
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    Int8 {
        packed: Vec<i8>,
        scales: Vec<f32>,
        col_sums: Vec<i32>,
        smooth: Vec<f32>,
    },
    Int4 {
        packed: Vec<u8>,
        scales: Vec<u16>,
        offsets: Vec<f32>,
        smooth: Vec<f32>,
    },
    Half {
        kind: HalfKind,
        packed: Vec<u16>,
    },
}

impl Linear {
    /// A converted layer's arrays; `None` for fp32.
    pub fn stored(&self) -> Option<Stored> {
        match self {
            Linear::F32(_) => None,
            Linear::Int8(w) => {
                let (packed, scales, col_sums, smooth) = w.stored();
                Some(Stored::Int8 {
                    packed,
                    scales,
                    col_sums,
                    smooth,
                })
            }
            Linear::Int4(w) => {
                let (packed, scales, offsets, smooth) = w.stored();
                Some(Stored::Int4 {
                    packed,
                    scales,
                    offsets,
                    smooth,
                })
            }
            Linear::Half(w) => Some(Stored::Half {
                kind: w.kind,
                packed: w.stored(),
            }),
        }
    }

    /// This fp32 layer converted as `stored` says, without computing anything; an error when the
    /// arrays do not fit its shape, or when the layer is already converted.
    pub fn from_stored(&self, stored: Stored) -> Result<Linear, String> {
        let w = self
            .fp32()
            .ok_or_else(|| "the layer is already converted".to_string())?;
        Ok(match stored {
            Stored::Int8 {
                packed,
                scales,
                col_sums,
                smooth,
            } => Linear::Int8(QWeight::from_stored(w, (packed, scales, col_sums, smooth))?),
            Stored::Int4 {
                packed,
                scales,
                offsets,
                smooth,
            } => Linear::Int4(Q4Weight::from_stored(w, (packed, scales, offsets, smooth))?),
            Stored::Half { kind, packed } => {
                Linear::Half(HalfWeight::from_stored(w, kind, packed)?)
            }
        })
    }

    /// `y = x · W`, or `y += x · W` with `accumulate` (see [`Weight::matmul_into`]).
    pub fn matmul_into(&self, x: &[f32], y: &mut [f32], accumulate: bool) {
        match self {
            Linear::F32(w) => w.matmul_into(x, y, accumulate),
            Linear::Int8(w) => w.matmul_into(x, y, accumulate),
            Linear::Int4(w) => w.matmul_into(x, y, accumulate),
            Linear::Half(w) => w.matmul_into(x, y, accumulate),
        }
    }

    /// [`Linear::matmul_into`] on the calling thread alone (for a task that already owns its
    /// rows).
    pub fn matmul_serial_into(&self, x: &[f32], y: &mut [f32], accumulate: bool) {
        match self {
            Linear::F32(w) => w.gemm_into(x, y, accumulate, Parallelism::None),
            Linear::Int8(w) => w.matmul_into_with(x, y, accumulate, crate::quant::kernel(), false),
            Linear::Int4(w) => w.matmul_into_with(x, y, accumulate, crate::int4::kernel(), false),
            Linear::Half(w) => {
                w.matmul_into_with(x, y, accumulate, crate::half::kernel(w.kind), false)
            }
        }
    }

    pub fn bias(&self) -> &[f32] {
        match self {
            Linear::F32(w) => &w.bias,
            Linear::Int8(w) => &w.bias,
            Linear::Int4(w) => &w.bias,
            Linear::Half(w) => &w.bias,
        }
    }

    pub fn outputs(&self) -> usize {
        match self {
            Linear::F32(w) => w.outputs,
            Linear::Int8(w) => w.outputs,
            Linear::Int4(w) => w.outputs,
            Linear::Half(w) => w.outputs,
        }
    }

    /// Bytes of weights the product reads (not the bias).
    pub fn weight_bytes(&self) -> usize {
        match self {
            Linear::F32(w) => 4 * w.w.len(),
            Linear::Int8(w) => w.weight_bytes(),
            Linear::Int4(w) => w.weight_bytes(),
            Linear::Half(w) => w.weight_bytes(),
        }
    }

    /// The fp32 weight this layer converts from; `None` once converted.
    fn fp32(&self) -> Option<&Weight> {
        match self {
            Linear::F32(w) => Some(w),
            Linear::Int8(_) | Linear::Int4(_) | Linear::Half(_) => None,
        }
    }

    /// The same layer with int8 weights, activations smoothed per input channel by their typical
    /// magnitudes (see [`QWeight::quantize_smoothed`]). A converted layer stays as it is.
    pub fn to_int8_smoothed(&self, activation: &[f32], alpha: f32) -> Linear {
        match self.fp32() {
            Some(w) => Linear::Int8(QWeight::quantize_smoothed(w, activation, alpha)),
            None => self.clone(),
        }
    }

    /// The same layer with int8 weights (a converted layer stays as it is).
    pub fn to_int8(&self) -> Linear {
        match self.fp32() {
            Some(w) => Linear::Int8(QWeight::quantize(w)),
            None => self.clone(),
        }
    }

    /// [`Linear::to_int4_smoothed`] with GPTQ's rounding on the Hessian of the layer's inputs.
    pub fn to_int4_gptq(&self, activation: &[f32], alpha: f32, hessian: Hessian) -> Linear {
        match self.fp32() {
            Some(w) => Linear::Int4(Q4Weight::quantize_gptq(w, activation, alpha, hessian)),
            None => self.clone(),
        }
    }

    /// The same layer with int4 weights in groups of 32 inputs, smoothed as
    /// [`Linear::to_int8_smoothed`] (a converted layer stays as it is).
    pub fn to_int4_smoothed(&self, activation: &[f32], alpha: f32) -> Linear {
        match self.fp32() {
            Some(w) => Linear::Int4(Q4Weight::quantize_smoothed(w, activation, alpha)),
            None => self.clone(),
        }
    }

    /// The same layer with int4 weights (a converted layer stays as it is).
    pub fn to_int4(&self) -> Linear {
        match self.fp32() {
            Some(w) => Linear::Int4(Q4Weight::quantize(w)),
            None => self.clone(),
        }
    }

    /// The same layer in bf16 or fp16 (a converted layer stays as it is).
    pub fn to_half(&self, kind: HalfKind) -> Linear {
        match self.fp32() {
            Some(w) => Linear::Half(HalfWeight::new(w, kind)),
            None => self.clone(),
        }
    }
}

/// A BERT layer's feed-forward block on the residual stream `x` (`[rows, in]`):
/// `x += act(x · Wi + bi) · Wo`, without `Wo`'s bias (the LayerNorm pass after it adds that).
///
/// With xbench's own kernels for both products and rows enough for every thread, each task takes
/// a block of rows through both products and the activation with its intermediate rows in cache:
/// the `[rows, intermediate]` matrix is never written out, and the second product reads its
/// inputs from cache instead of memory. Otherwise (fp32 through gemm, or a few rows, which split
/// better by columns) it is the two products and the activation pass over `scratch`.
pub fn feed_forward_in_place(
    x: &mut [f32],
    intermediate: &Linear,
    act: Act,
    output: &Linear,
    scratch: &mut Vec<f32>,
) {
    let (k, inner) = (output.outputs(), intermediate.outputs());
    let rows = x.len() / k;
    assert_eq!(x.len(), rows * k, "x is not [rows, in]");
    let own = |l: &Linear| !matches!(l, Linear::F32(_));
    let threads = rayon::current_num_threads().max(1);
    if own(intermediate) && own(output) && rows >= 2 * threads * TASK_ROWS {
        thread_local! {
            // Each thread's block of intermediate activations, kept between calls.
            static HIDDEN: std::cell::RefCell<Vec<f32>> = std::cell::RefCell::default();
        }
        x.par_chunks_mut(TASK_ROWS * k).for_each(|block| {
            HIDDEN.with_borrow_mut(|hidden| {
                let hidden = grow(hidden, block.len() / k * inner);
                intermediate.matmul_serial_into(block, hidden, false);
                rows::bias_act_rows(hidden, intermediate.bias(), act);
                output.matmul_serial_into(hidden, block, true);
            })
        });
        return;
    }
    scratch.resize(rows * inner, 0.0);
    let hidden = &mut scratch[..rows * inner];
    intermediate.matmul_into(x, hidden, false);
    rows::bias_act(hidden, intermediate.bias(), act);
    output.matmul_into(hidden, x, true);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every converted layer comes back from its stored arrays computing the same products; arrays
    /// of the wrong length are refused.
    #[test]
    fn converted_layers_come_back_from_their_stored_arrays() {
        let w = Linear::F32(crate::tiles::test_weight(70, 45));
        let x: Vec<f32> = (0..9 * 45).map(|i| (i as f32 * 0.13).cos()).collect();
        for converted in [
            w.to_int8(),
            w.to_int4(),
            w.to_half(HalfKind::Bf16),
            w.to_half(HalfKind::F16),
        ] {
            let stored = converted.stored().unwrap();
            let back = w.from_stored(stored.clone()).unwrap();
            let (mut a, mut b) = (vec![0f32; 9 * 70], vec![0f32; 9 * 70]);
            converted.matmul_into(&x, &mut a, false);
            back.matmul_into(&x, &mut b, false);
            assert_eq!(a, b);
            assert_eq!(back.stored(), Some(stored));
            assert!(back.from_stored(converted.stored().unwrap()).is_err());
        }
        let short = match w.to_int8().stored().unwrap() {
            Stored::Int8 {
                packed,
                scales,
                col_sums,
                smooth,
            } => Stored::Int8 {
                packed,
                scales: scales[1..].to_vec(),
                col_sums,
                smooth,
            },
            _ => unreachable!(),
        };
        let err = w.from_stored(short).unwrap_err();
        assert!(err.contains("scales"), "{err}");
        assert!(w.stored().is_none());
    }

    #[test]
    fn matmul_overwrites_or_accumulates() {
        let (rows, inputs, outputs) = (5, 7, 3);
        let weight: Vec<f32> = (0..outputs * inputs)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let x: Vec<f32> = (0..rows * inputs)
            .map(|i| (i as f32 * 0.11).cos())
            .collect();
        let w = Weight::from_out_in(&weight, vec![0.0; outputs], outputs, inputs);
        let want = |r: usize, j: usize| -> f32 {
            (0..inputs)
                .map(|k| x[r * inputs + k] * weight[j * inputs + k])
                .sum()
        };
        let mut y = vec![f32::NAN; rows * outputs];
        w.matmul_into(&x, &mut y, false);
        let mut z = vec![1.0; rows * outputs];
        w.matmul_into(&x, &mut z, true);
        for r in 0..rows {
            for j in 0..outputs {
                assert!((y[r * outputs + j] - want(r, j)).abs() < 1e-5);
                assert!((z[r * outputs + j] - 1.0 - want(r, j)).abs() < 1e-5);
            }
        }
    }
}
