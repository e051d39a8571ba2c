//! How far one precision's scores are from another's: the figures the precision tests pin and
//! `xbench accuracy` reports.

use std::collections::HashMap;

/// What a precision does to a reference's scores and rankings.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Agreement {
    pub pairs: usize,
    /// Queries with at least two passages (the ranking figures are over these).
    pub queries: usize,
    pub max_abs_diff: f32,
    pub mean_abs_diff: f32,
    /// Spearman's rank correlation of all scores.
    pub spearman: f64,
    /// Share of queries whose top passage is the reference's top passage.
    pub top1_agreement: f64,
    /// Mean over queries of NDCG@10 of this ranking, with the reference's ranking as the graded
    /// relevance (its first passage 10, second 9, ..., tenth 1, the rest 0).
    pub ndcg_at_10: f64,
}

/// Compares `scores` with `reference` (same pairs, same order); `queries[i]` is pair i's query,
/// which groups pairs into rankings.
pub fn agreement(reference: &[f32], scores: &[f32], queries: &[&str]) -> Agreement {
    assert_eq!(reference.len(), queries.len(), "one query per pair");
    let (max_abs_diff, mean_abs_diff) = abs_diff(reference, scores);
    let mut groups: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    for (i, q) in queries.iter().enumerate() {
        groups
            .entry(q)
            .or_insert_with(|| {
                order.push(q);
                Vec::new()
            })
            .push(i);
    }
    let (mut top1, mut ndcg, mut n) = (0usize, 0f64, 0usize);
    for q in order {
        let members = &groups[q];
        if members.len() < 2 {
            continue;
        }
        n += 1;
        let ranked = |s: &[f32]| {
            let mut m = members.clone();
            // Highest first; ties keep input order.
            m.sort_by(|&a, &b| s[b].total_cmp(&s[a]));
            m
        };
        let (want, got) = (ranked(reference), ranked(scores));
        top1 += usize::from(want[0] == got[0]);
        ndcg += ndcg_at_10(&want, &got);
    }
    let share = |x: f64| if n == 0 { 1.0 } else { x / n as f64 };
    Agreement {
        pairs: reference.len(),
        queries: n,
        max_abs_diff,
        mean_abs_diff,
        spearman: spearman(reference, scores),
        top1_agreement: share(top1 as f64),
        ndcg_at_10: share(ndcg),
    }
}

/// NDCG@10 of ranking `got` against the reference ranking `want` (both lists of pair indices).
fn ndcg_at_10(want: &[usize], got: &[usize]) -> f64 {
    let relevance = |pair: usize| -> f64 {
        match want.iter().position(|&p| p == pair) {
            Some(rank) if rank < 10 => (10 - rank) as f64,
            _ => 0.0,
        }
    };
    let dcg = |ranking: &[usize]| -> f64 {
        ranking
            .iter()
            .take(10)
            .enumerate()
            .map(|(i, &p)| (2f64.powf(relevance(p)) - 1.0) / (i as f64 + 2.0).log2())
            .sum()
    };
    dcg(got) / dcg(want)
}

/// Largest and mean absolute difference between two score lists of equal length.
pub fn abs_diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len(), "score lists differ in length");
    if a.is_empty() {
        return (0.0, 0.0);
    }
    let (max, sum) = a.iter().zip(b).fold((0f32, 0f64), |(m, s), (x, y)| {
        let d = (x - y).abs();
        (m.max(d), s + d as f64)
    });
    (max, (sum / a.len() as f64) as f32)
}

/// Ranks from 1, ties sharing their mean rank.
fn ranks(v: &[f32]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
    let mut r = vec![0f64; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            r[k] = mean;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation (Pearson's on ranks, ties averaged); 1 for fewer than 2 scores
/// or constant lists that are equal.
pub fn spearman(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "score lists differ in length");
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    if a.len() < 2 {
        return 1.0;
    }
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let (mut cov, mut va, mut vb) = (0f64, 0f64, 0f64);
    for (x, y) in ra.iter().zip(&rb) {
        cov += (x - ma) * (y - mb);
        va += (x - ma).powi(2);
        vb += (y - mb).powi(2);
    }
    if va == 0.0 || vb == 0.0 {
        return if va == vb { 1.0 } else { 0.0 };
    }
    cov / (va * vb).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_of_known_lists() {
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]), 1.0);
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), -1.0);
        // d = (0, 1, -1, 0): 1 - 6·2 / (4·15) = 0.8
        let s = spearman(&[1.0, 2.0, 3.0, 4.0], &[1.0, 3.0, 2.0, 4.0]);
        assert!((s - 0.8).abs() < 1e-12, "{s}");
        // Ties share their mean rank.
        assert_eq!(ranks(&[5.0, 1.0, 5.0]), vec![2.5, 1.0, 2.5]);
        assert_eq!(abs_diff(&[1.0, 2.0], &[1.5, 1.0]), (1.0, 0.75));
    }

    #[test]
    fn agreement_of_known_rankings() {
        // Two queries of three passages; the second query's top two are swapped.
        let queries = ["a", "a", "a", "b", "b", "b", "c"];
        let reference = [3.0, 2.0, 1.0, 3.0, 2.0, 1.0, 0.0];
        let same = agreement(&reference, &reference, &queries);
        assert_eq!(
            (same.top1_agreement, same.ndcg_at_10, same.queries),
            (1.0, 1.0, 2)
        );
        let swapped = [3.0, 2.0, 1.0, 2.0, 3.0, 1.0, 0.0];
        let a = agreement(&reference, &swapped, &queries);
        assert_eq!(a.top1_agreement, 0.5);
        // Query b: gains 2^10-1, 2^9-1, 2^8-1 in order 9, 10, 8.
        let ideal = 1023.0 + 511.0 / 3f64.log2() + 255.0 / 2.0;
        let got = 511.0 + 1023.0 / 3f64.log2() + 255.0 / 2.0;
        assert!((a.ndcg_at_10 - (1.0 + got / ideal) / 2.0).abs() < 1e-12);
        assert_eq!(a.max_abs_diff, 1.0);
    }
}
