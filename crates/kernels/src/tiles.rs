//! The tiling that xbench's own matrix products share (int8 in [`crate::quant`], bf16 and fp16 in
//! [`crate::half`]): `y [rows, n]` is cut into tiles of [`MR`] rows × [`TILE_COLS`] outputs, which a
//! microkernel computes with `MR × BLOCKS` accumulators in registers; rows are grouped into parallel
//! tasks of [`TASK_ROWS`], and the columns into ranges of tiles so that a few rows still keep every
//! thread busy.

use std::ops::Range;

use rayon::prelude::*;

use crate::SharedMut;

/// Outputs per block (f32 or i32 lanes of a 512-bit register).
pub(crate) const LANES: usize = 16;
/// Blocks per tile: a tile is `MR` rows × 64 outputs, 24 accumulators.
pub(crate) const BLOCKS: usize = 4;
pub(crate) const TILE_COLS: usize = LANES * BLOCKS;
/// Rows per tile.
pub(crate) const MR: usize = 6;
/// Rows per parallel task (a multiple of MR).
pub(crate) const TASK_ROWS: usize = 8 * MR;

/// Runs a product over `tiles` column tiles of `y` (`[rows, n]`), in parallel on the caller's
/// rayon pool (or, without `parallel`, task after task on the calling thread). Each task first calls `prepare(rows)` once on its range of rows (to convert them
/// into what the microkernel reads), then `kernel(&prepared, tile, group, valid, y_tile)` for each
/// of its tiles and each group of `MR` rows: `group` counts the groups from the task's first row,
/// `valid` is how many of the group's `MR` rows exist, `y_tile` points at the group's first row of
/// `y`. A kernel writes only rows `0..valid` × the tile's columns (below `n`) from `y_tile`, a
/// region no other call writes.
pub(crate) fn for_each_tile<P>(
    rows: usize,
    n: usize,
    tiles: usize,
    y: &mut [f32],
    prepare: impl Fn(Range<usize>) -> P + Sync,
    kernel: impl Fn(&P, usize, usize, usize, *mut f32) + Sync,
    parallel: bool,
) {
    assert_eq!(y.len(), rows * n, "y is not [rows, n]");
    if rows == 0 || tiles == 0 {
        return;
    }
    let row_chunks = rows.div_ceil(TASK_ROWS);
    let wanted = if parallel {
        4 * rayon::current_num_threads()
    } else {
        1
    };
    let col_chunks = wanted.div_ceil(row_chunks).clamp(1, tiles);
    let tiles_per_chunk = tiles.div_ceil(col_chunks);
    let col_chunks = tiles.div_ceil(tiles_per_chunk);
    let out = SharedMut::new(y.as_mut_ptr());
    let run = |task: usize| {
        let (rc, cc) = (task / col_chunks, task % col_chunks);
        let r0 = rc * TASK_ROWS;
        let r1 = (r0 + TASK_ROWS).min(rows);
        let t0 = cc * tiles_per_chunk;
        let t1 = (t0 + tiles_per_chunk).min(tiles);
        let prepared = prepare(r0..r1);
        let out = out.get();
        for tile in t0..t1 {
            for (group, first) in (r0..r1).step_by(MR).enumerate() {
                let valid = (r1 - first).min(MR);
                // SAFETY: `first * n` is inside y (first < rows); the task owns rows r0..r1 ×
                // the columns of tiles t0..t1, which no other task writes, and `y` outlives
                // the parallel loop.
                let y_tile = unsafe { out.add(first * n) };
                kernel(&prepared, tile, group, valid, y_tile);
            }
        }
    };
    if parallel {
        (0..row_chunks * col_chunks).into_par_iter().for_each(run);
    } else {
        (0..row_chunks * col_chunks).for_each(run);
    }
}

/// Where a tile's `valid` rows × columns below `n` go: `y[r * n + j]` from the tile's first row,
/// overwritten or (with `accumulate`) added to.
///
/// # Safety
/// `y` points at the first of `valid` rows of a `[rows, n]` matrix that the caller may write.
#[inline]
pub(crate) unsafe fn store(y: *mut f32, n: usize, r: usize, j: usize, v: f32, accumulate: bool) {
    let p = y.add(r * n + j);
    *p = if accumulate { *p + v } else { v };
}

/// The mask of the lanes of block `j..j + LANES` that lie below `n` (`j < n`).
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn lane_mask(n: usize, j: usize) -> u16 {
    let left = n - j;
    if left >= LANES {
        0xFFFF
    } else {
        (1u16 << left) - 1
    }
}

/// What AVX2 tile kernels share.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    /// Writes the first `left` lanes of `v` (all 8 when `left` ≥ 8) at `p`, overwriting or (with
    /// `accumulate`) added to what is there, as [`super::store`] does lane by lane.
    ///
    /// # Safety
    /// The CPU has AVX; `p` points at `left.min(8)` floats the caller may write.
    #[target_feature(enable = "avx")]
    #[inline]
    pub unsafe fn write(p: *mut f32, left: usize, v: __m256, accumulate: bool) {
        if left >= 8 {
            let v = if accumulate {
                _mm256_add_ps(_mm256_loadu_ps(p), v)
            } else {
                v
            };
            _mm256_storeu_ps(p, v);
            return;
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), v);
        for (i, &l) in lanes.iter().enumerate().take(left) {
            super::store(p, 0, 0, i, l, accumulate);
        }
    }
}

/// A deterministic `[outputs, inputs]` weight for the products' tests.
#[cfg(test)]
pub(crate) fn test_weight(outputs: usize, inputs: usize) -> crate::matmul::Weight {
    let w: Vec<f32> = (0..outputs * inputs)
        .map(|i| (i as f32 * 0.37).sin() * 0.1)
        .collect();
    let bias = (0..outputs).map(|j| j as f32 * 0.01).collect();
    crate::matmul::Weight::from_out_in(&w, bias, outputs, inputs)
}
