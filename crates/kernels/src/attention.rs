//! Self-attention over packed sequences: bias of Q/K/V, QKᵀ scaled, softmax and the weighted sum
//! of V, with no padding. Each task takes one sequence and a run of its heads: it first copies
//! their queries, keys and values out of the `[tokens, 3 * hidden]` product in one pass down the
//! rows (reading each row's slices in turn, as memory lies, instead of one head's 128 bytes per
//! row in a 4.6 KB stride, which missed the cache and the TLB on every row), then attends head by
//! head in cache. Tasks are spread over the caller's rayon threads.

use rayon::prelude::*;

use super::{grow, math, multiversion, SharedMut};

/// Shapes of one attention call, and which keys a query sees.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub heads: usize,
    pub head_dim: usize,
    /// `Some(w)`: a query attends only to the keys at most `w` positions from it (ModernBERT's
    /// local layers, `|i - j| <= local_attention / 2`); `None`: to every key of its sequence.
    pub window: Option<usize>,
}

impl Heads {
    fn hidden(self) -> usize {
        self.heads * self.head_dim
    }
}

/// The arithmetic of attention's two products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scores {
    /// Everything in f32 (the fp32, fp16 and integer models).
    F32,
    /// Queries, keys, values and probabilities rounded to bf16, products accumulated in f32,
    /// softmax in f32 (a bf16 model, as PyTorch's bf16 attention rounds its inputs): on AVX-512
    /// BF16's `vdpbf16ps` where the CPU has it, the same values in plain loops elsewhere.
    Bf16,
}

/// `qkv` is `[tokens, 3 * hidden]` (query, key, value side by side, before their biases);
/// `bias` is `[3 * hidden]`; `ranges` are the `(start, len)` token ranges of the sequences, which
/// attend only to themselves. Writes the context `[tokens, hidden]` into `out` (every row of every
/// range; rows outside the ranges are left as they were).
pub fn packed_attention(
    qkv: &[f32],
    bias: &[f32],
    ranges: &[(usize, usize)],
    shape: Heads,
    scores: Scores,
    out: &mut [f32],
) {
    // The AVX-512 BF16 kernel attends to every key; a windowed call takes the plain loops.
    let simd = scores == Scores::Bf16
        && shape.window.is_none()
        && crate::half::available(crate::Kernel::Avx512, crate::half::HalfKind::Bf16);
    packed_attention_with(qkv, bias, ranges, shape, scores, simd, out);
}

/// [`packed_attention`] with the bf16 kernel allowed or not (tests run both).
fn packed_attention_with(
    qkv: &[f32],
    bias: &[f32],
    ranges: &[(usize, usize)],
    shape: Heads,
    scores: Scores,
    simd: bool,
    out: &mut [f32],
) {
    let hidden = shape.hidden();
    let tokens = out.len() / hidden;
    assert_eq!(
        qkv.len(),
        tokens * 3 * hidden,
        "attention: qkv is not [tokens, 3 * hidden]"
    );
    assert_eq!(
        bias.len(),
        3 * hidden,
        "attention: bias is not [3 * hidden]"
    );
    assert!(
        ranges.iter().all(|&(s, l)| s + l <= tokens),
        "attention: a range runs past the tokens"
    );
    // Ranges must not overlap, or two tasks would write the same rows.
    let mut sorted: Vec<(usize, usize)> = ranges.to_vec();
    sorted.sort_unstable();
    assert!(
        sorted.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0),
        "attention: ranges overlap"
    );
    if ranges.is_empty() || shape.heads == 0 {
        return;
    }
    // Whole sequences per task when there are enough of them to keep every thread busy; runs of
    // heads otherwise (one short request still uses every core).
    let wanted = 4 * rayon::current_num_threads().max(1);
    let per_task = shape
        .heads
        .div_ceil(wanted.div_ceil(ranges.len()).min(shape.heads));
    let runs = shape.heads.div_ceil(per_task);
    let dst = SharedMut::new(out.as_mut_ptr());
    (0..ranges.len() * runs).into_par_iter().for_each(|task| {
        let (start, len) = ranges[task / runs];
        let first = (task % runs) * per_task;
        let count = per_task.min(shape.heads - first);
        if len == 0 {
            return;
        }
        let width = count * shape.head_dim;
        let head = Head {
            heads: shape.heads,
            d: shape.head_dim,
            bf16: scores == Scores::Bf16,
            simd,
            window: shape.window,
        };
        BUFFERS.with_borrow_mut(|buffers| {
            let mut context = std::mem::take(&mut buffers.context);
            let context_rows = grow(&mut context, len * width);
            attend(
                qkv,
                bias,
                start,
                len,
                first,
                count,
                head,
                context_rows,
                buffers,
            );
            let col = first * shape.head_dim;
            for (i, row) in context_rows.chunks_exact(width).enumerate() {
                // SAFETY: rows start..start+len of this range and columns col..col+width belong
                // to this (range, run of heads) task alone: ranges were checked not to overlap,
                // runs of heads are disjoint column blocks, and `out` outlives the parallel loop.
                unsafe {
                    let p = dst.get().add((start + i) * hidden + col);
                    std::ptr::copy_nonoverlapping(row.as_ptr(), p, width);
                }
            }
            buffers.context = context;
        });
    });
}

/// Each thread's attention buffers, kept from one call to the next: allocated afresh, a
/// sequence's copied queries, keys and values were page-faulted in and zeroed at every call
/// (about 5% of a bf16 pass). They keep the size of the longest sequence seen.
#[derive(Default)]
struct Buffers {
    context: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    #[cfg(target_arch = "x86_64")]
    bf16: bf16::Buffers,
}

thread_local! {
    static BUFFERS: std::cell::RefCell<Buffers> = std::cell::RefCell::default();
}

/// What [`attend`] needs to know of the heads besides where they lie.
#[derive(Debug, Clone, Copy)]
struct Head {
    heads: usize,
    d: usize,
    /// Round queries, keys, values and probabilities to bf16.
    bf16: bool,
    /// With `bf16`, through the AVX-512 BF16 kernel (when the head's size is even).
    simd: bool,
    /// Keys at most this far from the query, or all.
    window: Option<usize>,
}

/// Keys per block of the scores product, and queries per block of the weighted sum: each vector
/// loaded serves this many rows, whose accumulators are independent chains enough to keep two FMA
/// units busy.
const ROWS: usize = 8;
/// Queries per block (lanes of one AVX-512 register of f32).
const LANES: usize = 16;

multiversion! {
    /// Heads `first..first + count` of the sequence at `start..start + len`; the context goes to
    /// `context` `[len, count * d]`.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        qkv: &[f32],
        bias: &[f32],
        start: usize,
        len: usize,
        first: usize,
        count: usize,
        head: Head,
        context: &mut [f32],
        buffers: &mut Buffers,
    ) {
        let (heads, d) = (head.heads, head.d);
        let hidden = heads * d;
        let stride = 3 * hidden;
        let width = count * d;
        let scale = 1.0 / (d as f32).sqrt();
        // Per head: queries `[len][d]` with their bias and the 1/√d scale (as transformers scales
        // the scores); keys `[len rounded up to ROWS][d]`, zero past `len`, without their bias,
        // which adds the same q·b_k to a query's every score and softmax cancels; values
        // `[len][d rounded up to LANES]` with their bias, zero past `d`.
        let dp = d.div_ceil(LANES) * LANES;
        let blocks = len.div_ceil(ROWS);
        // Whole blocks of 16 keys (the bf16 kernel's), a whole number of ROWS.
        let lenp = len.div_ceil(LANES) * LANES;
        let q = grow(&mut buffers.q, count * len * d);
        let k = grow(&mut buffers.k, count * lenp * d);
        let v = grow(&mut buffers.v, count * len * dp);
        for h in 0..count {
            k[(h * lenp + len) * d..(h + 1) * lenp * d].fill(0.0);
        }
        let c0 = first * d;
        for j in 0..len {
            let row = &qkv[(start + j) * stride..][..stride];
            for h in 0..count {
                let c = c0 + h * d;
                let dst = &mut q[(h * len + j) * d..][..d];
                for ((o, x), b) in dst.iter_mut().zip(&row[c..c + d]).zip(&bias[c..c + d]) {
                    *o = (x + b) * scale;
                }
                k[(h * lenp + j) * d..][..d].copy_from_slice(&row[hidden + c..][..d]);
                let (vc, dst) = (2 * hidden + c, &mut v[(h * len + j) * dp..][..dp]);
                for ((o, x), b) in dst.iter_mut().zip(&row[vc..vc + d]).zip(&bias[vc..vc + d]) {
                    *o = x + b;
                }
                dst[d..].fill(0.0);
            }
        }
        #[cfg(target_arch = "x86_64")]
        if head.bf16 && head.simd && head.window.is_none() && d.is_multiple_of(2) {
            for h in 0..count {
                let q = &q[h * len * d..][..len * d];
                let k = &k[h * lenp * d..][..lenp * d];
                let v = &v[h * len * dp..][..len * dp];
                // SAFETY: `simd` says the CPU has AVX-512 F/BW/VL and BF16; the slices have the
                // shapes bf16_head documents, and `context` is `[len, width]` with the head's
                // columns h·d..(h+1)·d inside it.
                unsafe { bf16::head(q, k, v, len, d, context, width, h * d, &mut buffers.bf16) };
            }
            return;
        }
        if head.bf16 {
            let round = |x: &mut f32| *x = ::half::bf16::from_f32(*x).to_f32();
            q.iter_mut().chain(k.iter_mut()).chain(v.iter_mut()).for_each(round);
        }
        // Scores are computed transposed, `[key][LANES queries]`, in blocks of ROWS keys, so the
        // softmax over keys runs down the columns with every lane busy; queries are read from a
        // `[d][LANES]` panel.
        let mut panel = vec![0f32; d * LANES];
        let mut st = vec![[[0f32; LANES]; ROWS]; blocks];
        for h in 0..count {
            let q = &q[h * len * d..][..len * d];
            let k = &k[h * lenp * d..][..lenp * d];
            let v = &v[h * len * dp..][..len * dp];
            for q0 in (0..len).step_by(LANES) {
                let nq = LANES.min(len - q0);
                if nq < LANES {
                    panel.fill(0.0);
                }
                for i in 0..nq {
                    for (t, &x) in q[(q0 + i) * d..][..d].iter().enumerate() {
                        panel[t * LANES + i] = x;
                    }
                }
                // The keys these queries see: all, or the blocks that reach within the window
                // of one of them (keys outside a query's own window are masked below).
                let (first_block, keys) = match head.window {
                    None => (0, len),
                    Some(w) => {
                        let lo = q0.saturating_sub(w) / ROWS * ROWS;
                        (lo / ROWS, (q0 + nq + w).min(len) - lo)
                    }
                };
                let k0 = first_block * ROWS;
                let seen = &mut st[first_block..first_block + keys.div_ceil(ROWS)];
                for (kb, block) in seen.iter_mut().enumerate() {
                    *block = [[0f32; LANES]; ROWS];
                    let at = (first_block + kb) * ROWS * d;
                    micro::outer_products(&panel, LANES, &k[at..], 1, d, d, block);
                }
                let real = &mut seen.as_flattened_mut()[..keys];
                if let Some(w) = head.window {
                    for (j, row) in real.iter_mut().enumerate() {
                        let key = k0 + j;
                        for (l, x) in row.iter_mut().enumerate() {
                            if (q0 + l).abs_diff(key) > w {
                                *x = -f32::MAX;
                            }
                        }
                    }
                }
                let sum = softmax_columns(real.as_flattened_mut());
                if head.bf16 {
                    for x in real.as_flattened_mut() {
                        *x = ::half::bf16::from_f32(*x).to_f32();
                    }
                }
                // Context: probabilities times V, ROWS queries by LANES value columns at a time.
                let p = seen.as_flattened().as_flattened();
                let v = &v[k0 * dp..];
                for half in (0..nq).step_by(ROWS) {
                    for cb in (0..dp).step_by(LANES) {
                        let mut acc = [[0f32; LANES]; ROWS];
                        micro::outer_products(&v[cb..], dp, &p[half..], LANES, 1, keys, &mut acc);
                        let w = LANES.min(d - cb);
                        for (r, a) in acc.iter().enumerate().take(nq - half) {
                            let inv = 1.0 / sum[half + r];
                            let out = &mut context[(q0 + half + r) * width + h * d + cb..][..w];
                            for (o, x) in out.iter_mut().zip(a) {
                                *o = x * inv;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Softmax down each of the LANES columns of `scores` (`[keys][LANES queries]`), in place and
/// unnormalized: each column's largest score is subtracted before `exp`, and the column sums are
/// returned for the outputs to divide by. Inlined into the caller's instruction set.
#[inline(always)]
fn softmax_columns(scores: &mut [f32]) -> [f32; LANES] {
    let mut max = [f32::NEG_INFINITY; LANES];
    for row in scores.chunks_exact(LANES) {
        for l in 0..LANES {
            // Not f32::max, whose NaN rules cost two more instructions per vector.
            if row[l] > max[l] {
                max[l] = row[l];
            }
        }
    }
    let mut sum = [0f32; LANES];
    for row in scores.chunks_exact_mut(LANES) {
        for l in 0..LANES {
            row[l] = math::exp(row[l] - max[l]);
            sum[l] += row[l];
        }
    }
    sum
}

/// Attention of one head in bf16 on AVX-512 BF16: `vdpbf16ps` multiplies pairs of bf16 and adds
/// both products to an f32 accumulator, so the scores pair a query's dimensions (2s, 2s + 1) with a
/// key's, and the weighted sum pairs two keys' probabilities with their values.
#[cfg(target_arch = "x86_64")]
mod bf16 {
    use std::arch::x86_64::*;

    use super::LANES;
    use crate::grow;
    use crate::half::avx512::to_bf16;
    use crate::tiles::lane_mask;

    /// The kernel's own buffers (see [`super::Buffers`]).
    #[derive(Default)]
    pub(super) struct Buffers {
        qb: Vec<u16>,
        kb: Vec<u16>,
        vb: Vec<i32>,
        st: Vec<f32>,
        probs: Vec<i32>,
    }

    /// Queries per block of the weighted sum (times two blocks of 16 value columns: 16
    /// accumulators).
    const QROWS: usize = 8;

    /// Two f32 vectors rounded to bf16 and interleaved: lane i holds `(a[i], b[i])` as a pair.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn pairs(a: __m512, b: __m512) -> __m512i {
        let lo = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(
            _mm512_cvtneps_pbh(a),
        ));
        let hi = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(
            _mm512_cvtneps_pbh(b),
        ));
        _mm512_or_si512(lo, _mm512_slli_epi32::<16>(hi))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn dot(acc: __m512, a: __m512i, b: __m512i) -> __m512 {
        _mm512_dpbf16_ps(
            acc,
            std::mem::transmute::<__m512i, __m512bh>(a),
            std::mem::transmute::<__m512i, __m512bh>(b),
        )
    }

    /// One head: `q` `[len][d]` (bias added, scaled), `k` `[len rounded up to 16][d]` (zero past
    /// `len`), `v` `[len][d rounded up to 16]` (bias added, zero past `d`); writes columns
    /// `col..col + d` of `context` `[len][width]`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW, VL and BF16; `d` is even; the slices have those shapes and
    /// `col + d <= width`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn head(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        len: usize,
        d: usize,
        context: &mut [f32],
        width: usize,
        col: usize,
        buffers: &mut Buffers,
    ) {
        let dp = d.div_ceil(LANES) * LANES;
        let keys = len.div_ceil(LANES) * LANES;
        let key_pairs = len.div_ceil(2);
        assert!(
            d.is_multiple_of(2) && q.len() == len * d && k.len() == keys * d && v.len() == len * dp,
            "bf16 attention: shapes"
        );
        assert!(
            col + d <= width && context.len() == len * width,
            "bf16 attention: context"
        );
        // Queries and keys in bf16, rows of d (so a row's pair s is one 32-bit value).
        let qb = grow(&mut buffers.qb, len * d);
        to_bf16(q, qb);
        let kb = grow(&mut buffers.kb, keys * d);
        to_bf16(k, kb);
        // Values by pairs of keys: `[key pair][dp columns]` of (v[2j][c], v[2j + 1][c]).
        let vb = grow(&mut buffers.vb, key_pairs * dp);
        for j in 0..key_pairs {
            for c in (0..dp).step_by(LANES) {
                let a = _mm512_loadu_ps(v.as_ptr().add(2 * j * dp + c));
                let b = if 2 * j + 1 < len {
                    _mm512_loadu_ps(v.as_ptr().add((2 * j + 1) * dp + c))
                } else {
                    _mm512_setzero_ps()
                };
                _mm512_storeu_si512(vb.as_mut_ptr().add(j * dp + c) as *mut _, pairs(a, b));
            }
        }
        let half_d = d / 2;
        let (qp, kp) = (qb.as_ptr() as *const i32, kb.as_ptr() as *const i32);
        // Scores `[key][16 queries]` (rows past `len` up to the next pair zeroed for the sum).
        // `keys`, a multiple of 16, is at least 2 · key_pairs.
        let st = grow(&mut buffers.st, keys * LANES);
        let probs = grow(&mut buffers.probs, key_pairs * LANES);
        let mut panel = vec![0i32; half_d * LANES];
        for q0 in (0..len).step_by(LANES) {
            let nq = LANES.min(len - q0);
            // The queries' pairs of dimensions, `[d / 2][16 queries]`.
            panel.fill(0);
            for i in 0..nq {
                for s in 0..half_d {
                    panel[s * LANES + i] = qp.add((q0 + i) * half_d + s).read_unaligned();
                }
            }
            // Scores of 16 keys at a time: 16 accumulators, one per key, lanes the queries.
            for kb0 in (0..keys).step_by(LANES) {
                let mut acc = [_mm512_setzero_ps(); LANES];
                for s in 0..half_d {
                    let a = _mm512_loadu_si512(panel.as_ptr().add(s * LANES) as *const _);
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let key =
                            _mm512_set1_epi32(kp.add((kb0 + r) * half_d + s).read_unaligned());
                        *acc = dot(*acc, a, key);
                    }
                }
                for (r, acc) in acc.iter().enumerate() {
                    _mm512_storeu_ps(st.as_mut_ptr().add((kb0 + r) * LANES), *acc);
                }
            }
            let sum = super::softmax_columns(&mut st[..len * LANES]);
            st[len * LANES..2 * key_pairs * LANES].fill(0.0);
            // Probabilities by pairs of keys, `[key pair][16 queries]`.
            for j in 0..key_pairs {
                let a = _mm512_loadu_ps(st.as_ptr().add(2 * j * LANES));
                let b = _mm512_loadu_ps(st.as_ptr().add((2 * j + 1) * LANES));
                _mm512_storeu_si512(probs.as_mut_ptr().add(j * LANES) as *mut _, pairs(a, b));
            }
            // Context: QROWS queries by two blocks of 16 value columns at a time.
            for r0 in (0..nq).step_by(QROWS) {
                for c0 in (0..dp).step_by(2 * LANES) {
                    let two = c0 + LANES < dp;
                    let mut acc = [[_mm512_setzero_ps(); 2]; QROWS];
                    for j in 0..key_pairs {
                        let row = vb.as_ptr().add(j * dp + c0);
                        let b0 = _mm512_loadu_si512(row as *const _);
                        let b1 = if two {
                            _mm512_loadu_si512(row.add(LANES) as *const _)
                        } else {
                            _mm512_setzero_si512()
                        };
                        let p = probs.as_ptr().add(j * LANES + r0);
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let x = _mm512_set1_epi32(*p.add(r));
                            acc[0] = dot(acc[0], x, b0);
                            acc[1] = dot(acc[1], x, b1);
                        }
                    }
                    for (r, acc) in acc.iter().enumerate().take(nq - r0) {
                        let inv = _mm512_set1_ps(1.0 / sum[r0 + r]);
                        let out = context.as_mut_ptr().add((q0 + r0 + r) * width + col);
                        for (b, &acc) in acc.iter().enumerate() {
                            let c = c0 + b * LANES;
                            if c >= d {
                                break;
                            }
                            let mask = lane_mask(d, c);
                            _mm512_mask_storeu_ps(out.add(c), mask, _mm512_mul_ps(acc, inv));
                        }
                    }
                }
            }
        }
    }
}

/// The inner block of all three products: for t in 0..steps,
/// `acc[r][l] += a[t * a_step + r * a_row] · b[t * b_step + l]` (r < ROWS, l < LANES): a sum of
/// outer products of ROWS values of `a` (broadcast) by LANES values of `b` (one vector). Written with
/// intrinsics: left to itself the compiler vectorized across ROWS and spilled the accumulators.
mod micro {
    use super::{LANES, ROWS};

    pub fn outer_products(
        b: &[f32],
        b_step: usize,
        a: &[f32],
        a_step: usize,
        a_row: usize,
        steps: usize,
        acc: &mut [[f32; LANES]; ROWS],
    ) {
        if steps == 0 {
            return;
        }
        assert!(b.len() >= (steps - 1) * b_step + LANES, "b too short");
        assert!(
            a.len() > (steps - 1) * a_step + (ROWS - 1) * a_row,
            "a too short"
        );
        #[cfg(target_arch = "x86_64")]
        match crate::simd() {
            // SAFETY: the level says the CPU has the features; the asserts above keep every load
            // inside `a` and `b`.
            crate::Simd::Avx512 => {
                return unsafe { avx512(b, b_step, a, a_step, a_row, steps, acc) }
            }
            crate::Simd::Avx2 => return unsafe { avx2(b, b_step, a, a_step, a_row, steps, acc) },
            crate::Simd::Portable => {}
        }
        for t in 0..steps {
            let bv = &b[t * b_step..t * b_step + LANES];
            for (r, row) in acc.iter_mut().enumerate() {
                let av = a[t * a_step + r * a_row];
                for (x, y) in row.iter_mut().zip(bv) {
                    *x += av * y;
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512(
        b: &[f32],
        b_step: usize,
        a: &[f32],
        a_step: usize,
        a_row: usize,
        steps: usize,
        acc: &mut [[f32; LANES]; ROWS],
    ) {
        use std::arch::x86_64::*;
        let mut regs = [_mm512_setzero_ps(); ROWS];
        let (bp, ap) = (b.as_ptr(), a.as_ptr());
        for t in 0..steps {
            let bv = _mm512_loadu_ps(bp.add(t * b_step));
            let at = ap.add(t * a_step);
            for (r, reg) in regs.iter_mut().enumerate() {
                *reg = _mm512_fmadd_ps(_mm512_set1_ps(*at.add(r * a_row)), bv, *reg);
            }
        }
        for (row, reg) in acc.iter_mut().zip(regs) {
            let p = row.as_mut_ptr();
            _mm512_storeu_ps(p, _mm512_add_ps(_mm512_loadu_ps(p), reg));
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2(
        b: &[f32],
        b_step: usize,
        a: &[f32],
        a_step: usize,
        a_row: usize,
        steps: usize,
        acc: &mut [[f32; LANES]; ROWS],
    ) {
        use std::arch::x86_64::*;
        // Two halves of 8 lanes, each with ROWS accumulators in registers.
        for half in 0..2 {
            let mut regs = [_mm256_setzero_ps(); ROWS];
            let (bp, ap) = (b.as_ptr().add(half * 8), a.as_ptr());
            for t in 0..steps {
                let bv = _mm256_loadu_ps(bp.add(t * b_step));
                let at = ap.add(t * a_step);
                for (r, reg) in regs.iter_mut().enumerate() {
                    *reg = _mm256_fmadd_ps(_mm256_set1_ps(*at.add(r * a_row)), bv, *reg);
                }
            }
            for (row, reg) in acc.iter_mut().zip(regs) {
                let p = row.as_mut_ptr().add(half * 8);
                _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), reg));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention of one sequence, head by head, in f64 straight from the definition.
    fn reference(qkv: &[f32], bias: &[f32], start: usize, len: usize, shape: Heads) -> Vec<f64> {
        let sees = |i: usize, j: usize| shape.window.is_none_or(|w| i.abs_diff(j) <= w);
        let h = shape.hidden();
        let d = shape.head_dim;
        let at = |t: usize, c: usize| (qkv[t * 3 * h + c] + bias[c]) as f64;
        let mut out = vec![0f64; len * h];
        for head in 0..shape.heads {
            for i in 0..len {
                let scores: Vec<f64> = (0..len)
                    .map(|j| {
                        if !sees(i, j) {
                            return f64::NEG_INFINITY;
                        }
                        (0..d)
                            .map(|c| at(start + i, head * d + c) * at(start + j, h + head * d + c))
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for c in 0..d {
                    out[i * h + head * d + c] = (0..len)
                        .map(|j| e[j] / sum * at(start + j, 2 * h + head * d + c))
                        .sum();
                }
            }
        }
        out
    }

    #[test]
    fn packed_attention_matches_the_definition() {
        // Head sizes below, at and above one vector block; lengths around the 4-row and
        // 16-key blocks.
        // Windows narrower than the sequences, within a block and across several.
        for (heads, head_dim, ranges, window) in [
            (3, 8, vec![(0, 5), (5, 1), (6, 17), (23, 2)], None),
            (2, 32, vec![(0, 40), (40, 16), (56, 3)], None),
            (1, 20, vec![(0, 33), (33, 4)], None),
            (2, 8, vec![(0, 70), (70, 9), (79, 33)], Some(3)),
            (1, 16, vec![(0, 100), (100, 20)], Some(24)),
        ] {
            let shape = Heads {
                heads,
                head_dim,
                window,
            };
            let h = shape.hidden();
            let tokens: usize = ranges.iter().map(|r| r.1).sum();
            let mut s = 7u32;
            let mut next = || {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 4.0 - 2.0
            };
            let qkv: Vec<f32> = (0..tokens * 3 * h).map(|_| next()).collect();
            let bias: Vec<f32> = (0..3 * h).map(|_| next()).collect();
            let error = |out: &[f32]| {
                let mut worst = 0f64;
                for &(start, len) in &ranges {
                    let want = reference(&qkv, &bias, start, len, shape);
                    for (a, b) in out[start * h..(start + len) * h].iter().zip(&want) {
                        worst = worst.max((*a as f64 - b).abs());
                    }
                }
                worst
            };
            let run = |scores, simd| {
                let mut out = vec![f32::NAN; tokens * h];
                packed_attention_with(&qkv, &bias, &ranges, shape, scores, simd, &mut out);
                out
            };
            let exact = run(Scores::F32, false);
            assert!(
                error(&exact) < 2e-6,
                "head_dim {head_dim}: attention error {}",
                error(&exact)
            );
            // bf16: the rounding of its inputs (measured 0.0092 at most here), and the AVX-512
            // kernel computes what the plain loops do.
            let portable = run(Scores::Bf16, false);
            assert!(
                (1e-3..0.02).contains(&error(&portable)),
                "head_dim {head_dim}: bf16 attention error {}",
                error(&portable)
            );
            if crate::half::available(crate::Kernel::Avx512, crate::half::HalfKind::Bf16) {
                let simd = run(Scores::Bf16, true);
                let apart = simd
                    .iter()
                    .zip(&portable)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(
                    apart < 4e-6,
                    "head_dim {head_dim}: bf16 kernels differ by {apart}"
                );
            }
        }
    }

    #[test]
    #[should_panic(expected = "ranges overlap")]
    fn overlapping_ranges_are_refused() {
        let shape = Heads {
            heads: 1,
            head_dim: 2,
            window: None,
        };
        let qkv = vec![0f32; 4 * 6];
        let mut out = vec![0f32; 4 * 2];
        packed_attention(
            &qkv,
            &[0.0; 6],
            &[(0, 3), (2, 2)],
            shape,
            Scores::F32,
            &mut out,
        );
    }
}
