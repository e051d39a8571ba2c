//! Branch-free f32 `exp`, `erf` and GELU that the compiler can vectorize inside a loop (the std
//! versions call libm one element at a time). Accuracy, checked against f64 in the tests: `exp`
//! within 2 ulp (about 2.4e-7 relative), `erf` within 3e-7 absolute, exact GELU within 3e-7 ×
//! max(1, |x|) (the tests pin the measured bounds).

/// e^x for x in f32 range; 0 below -87.3, +inf-free (clamped) above 88.7.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Round to nearest by the 1.5 * 2^23 trick: no call to floor/round.
    const SHIFT: f32 = 12_582_912.0;
    let x = x.clamp(-87.336_55, 88.376_26);
    let shifted = x * LOG2E + SHIFT;
    let n = shifted - SHIFT;
    let r = x - n * LN2_HI - n * LN2_LO;
    // Minimax polynomial for e^r on [-ln2/2, ln2/2] (Cephes expf).
    let mut p = 1.987_569_1e-4_f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let e = (p * r).mul_add(r, r) + 1.0;
    // 2^n through the exponent bits; n is in [-126, 127] after the clamp. Floats in [2^23, 2^24)
    // are one apart, so n is also the difference of the bit patterns (no float-to-int conversion,
    // whose saturation checks cost more than the rest).
    let n_int = shifted.to_bits().wrapping_sub(SHIFT.to_bits());
    let scale = f32::from_bits(n_int.wrapping_add(127) << 23);
    e * scale
}

/// erf(x) as `x · P(x²) / Q(x²)`, P and Q of degree 5, on |x| ≤ 3.925 (beyond, erf(x) is ±1 in
/// f32): a rational fit made for xbench by `scripts/fit_erf.py` (weighted least squares towards
/// minimax; largest error 7.0e-8 in exact arithmetic). Twelve multiply-adds and one division, no
/// `exp`: half the instructions of the `erfc = t · exp(P(t))` form this replaced.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const P: [f32; 6] = [
        // erf'(0); the fit gives 1.128379149, one f32 step below (the same largest error).
        std::f32::consts::FRAC_2_SQRT_PI,
        1.8361361e-1,
        5.19786e-2,
        3.511118e-3,
        2.8551708e-4,
        2.1843707e-6,
    ];
    const Q: [f32; 6] = [
        1.0,
        4.9605635e-1,
        1.11418374e-1,
        1.4452189e-2,
        1.1128251e-3,
        3.9519477e-5,
    ];
    let x = x.clamp(-3.925, 3.925);
    let t = x * x;
    let mut p = P[5];
    let mut q = Q[5];
    for i in (0..5).rev() {
        p = p.mul_add(t, P[i]);
        q = q.mul_add(t, Q[i]);
    }
    (x * p / q).clamp(-1.0, 1.0)
}

/// Exact GELU, `x · Φ(x) = x/2 · (1 + erf(x/√2))` (transformers' `gelu`).
#[inline(always)]
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// tanh(x) through `exp`, branch-free; absolute error below 3e-7.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    // tanh(x) = 1 - 2 / (e^{2x} + 1), with the sign taken from x so e^{2|x|} never underflows badly.
    let a = x.abs().min(9.0);
    let e = exp(2.0 * a);
    let y = 1.0 - 2.0 / (e + 1.0);
    y.copysign(x)
}

/// GELU with the tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // √(2/π)
    0.5 * x * (1.0 + tanh(C * (x + 0.044_715 * x * x * x)))
}

/// Largest element, with 16 independent maxima so it vectorizes.
#[inline(always)]
pub fn max16(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let mut chunks = v.chunks_exact(16);
    for c in &mut chunks {
        for i in 0..16 {
            acc[i] = acc[i].max(c[i]);
        }
    }
    let mut m = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for a in acc {
        m = m.max(a);
    }
    m
}

/// Sum with 16 independent accumulators, so it vectorizes.
#[inline(always)]
pub fn sum16(v: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = v.chunks_exact(16);
    for c in &mut chunks {
        for i in 0..16 {
            acc[i] += c[i];
        }
    }
    let mut total: f32 = chunks.remainder().iter().sum();
    for a in acc {
        total += a;
    }
    total
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn erf64(x: f64) -> f64 {
        // erf by its Taylor series (|x| ≤ 3) or the continued fraction of erfc (beyond), in f64.
        if x.abs() <= 3.0 {
            let mut sum = x;
            let mut term = x;
            for n in 1..200 {
                term *= -x * x / n as f64;
                let add = term / (2 * n + 1) as f64;
                sum += add;
                if add.abs() < 1e-18 {
                    break;
                }
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let a = x.abs();
            let mut f = 0.0;
            for n in (1..120).rev() {
                f = (n as f64 / 2.0) / (a + f);
            }
            let erfc = (-a * a).exp() / (std::f64::consts::PI.sqrt() * (a + f));
            (1.0 - erfc).copysign(x)
        }
    }

    fn grid() -> impl Iterator<Item = f32> {
        (-40_000..=40_000).map(|i| i as f32 * 0.00025 * 40.0)
    }

    #[test]
    fn exp_is_within_two_ulp() {
        let mut worst = 0f64;
        for x in (-87_000..=88_000).map(|i| i as f32 * 0.001) {
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 2.5e-7, "exp relative error {worst}");
        assert_eq!(exp(-200.0), exp(-87.336_55));
        assert!(exp(-200.0) < 1e-37);
        assert!(exp(200.0).is_finite());
    }

    #[test]
    fn erf_is_within_2e7() {
        let mut worst = 0f64;
        for x in grid() {
            worst = worst.max((erf(x) as f64 - erf64(x as f64)).abs());
        }
        assert!(worst < 3e-7, "erf absolute error {worst}"); // measured 2.2e-7
    }

    #[test]
    fn gelu_matches_its_definition() {
        let mut worst = 0f64;
        for x in grid() {
            let x64 = x as f64;
            let want = 0.5 * x64 * (1.0 + erf64(x64 / 2f64.sqrt()));
            worst = worst.max((gelu_erf(x) as f64 - want).abs() / x64.abs().max(1.0));
        }
        assert!(worst < 3e-7, "gelu error {worst}"); // measured 1.7e-7
        let mut worst = 0f64;
        for x in grid() {
            let x64 = x as f64;
            let inner = (2.0 / std::f64::consts::PI).sqrt() * (x64 + 0.044715 * x64.powi(3));
            let want = 0.5 * x64 * (1.0 + inner.tanh());
            worst = worst.max((gelu_tanh(x) as f64 - want).abs() / x64.abs().max(1.0));
        }
        assert!(worst < 3e-7, "gelu_tanh error {worst}");
    }

    #[test]
    fn tanh_is_within_3e7() {
        let mut worst = 0f64;
        for x in grid() {
            worst = worst.max((tanh(x) as f64 - (x as f64).tanh()).abs());
        }
        assert!(worst < 3e-7, "tanh error {worst}");
    }
}
