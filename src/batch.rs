//! The batch a model receives: every pair's token ids, token type ids and positions laid end to end,
//! with cumulative sequence offsets and no padding. A model that needs a padded rectangle builds it
//! from here ([`Batch::padded`]); one that runs unpadded never pays for padding.

/// Pairs packed end to end. Pair `i` occupies tokens `cu_seq_lengths[i]..cu_seq_lengths[i + 1]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub input_ids: Vec<u32>,
    pub token_type_ids: Vec<u32>,
    pub position_ids: Vec<u32>,
    /// `pairs + 1` offsets, starting at 0.
    pub cu_seq_lengths: Vec<u32>,
    /// Length of the longest pair.
    pub max_length: usize,
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

/// A padded rectangle `[pairs, max_length]`, row-major, with its attention mask (1 = real token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Padded {
    pub pairs: usize,
    pub length: usize,
    pub input_ids: Vec<u32>,
    pub token_type_ids: Vec<u32>,
    pub position_ids: Vec<u32>,
    pub attention_mask: Vec<u8>,
}

impl Batch {
    pub fn new() -> Self {
        Self {
            input_ids: Vec::new(),
            token_type_ids: Vec::new(),
            position_ids: Vec::new(),
            cu_seq_lengths: vec![0],
            max_length: 0,
        }
    }

    /// Appends one encoded pair. `ids` and `type_ids` have the same length.
    pub fn push(&mut self, ids: &[u32], type_ids: &[u32]) {
        assert_eq!(
            ids.len(),
            type_ids.len(),
            "token ids and token type ids differ in length. This is a bug."
        );
        self.input_ids.extend_from_slice(ids);
        self.token_type_ids.extend_from_slice(type_ids);
        self.position_ids.extend(0..ids.len() as u32);
        self.cu_seq_lengths.push(self.input_ids.len() as u32);
        self.max_length = self.max_length.max(ids.len());
    }

    pub fn pairs(&self) -> usize {
        self.cu_seq_lengths.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.pairs() == 0
    }

    /// Real tokens in the batch.
    pub fn total_tokens(&self) -> usize {
        self.input_ids.len()
    }

    /// Tokens a padded backend computes: `pairs × max_length`.
    pub fn padded_tokens(&self) -> usize {
        self.pairs() * self.max_length
    }

    /// The token range of pair `i`.
    pub fn range(&self, i: usize) -> std::ops::Range<usize> {
        self.cu_seq_lengths[i] as usize..self.cu_seq_lengths[i + 1] as usize
    }

    /// Lays the pairs out as a rectangle padded on the right with `pad_id` (type and position 0).
    pub fn padded(&self, pad_id: u32) -> Padded {
        let (pairs, length) = (self.pairs(), self.max_length);
        let mut out = Padded {
            pairs,
            length,
            input_ids: vec![pad_id; pairs * length],
            token_type_ids: vec![0; pairs * length],
            position_ids: vec![0; pairs * length],
            attention_mask: vec![0; pairs * length],
        };
        for i in 0..pairs {
            let src = self.range(i);
            let dst = i * length..i * length + src.len();
            out.input_ids[dst.clone()].copy_from_slice(&self.input_ids[src.clone()]);
            out.token_type_ids[dst.clone()].copy_from_slice(&self.token_type_ids[src.clone()]);
            out.position_ids[dst.clone()].copy_from_slice(&self.position_ids[src]);
            out.attention_mask[dst].fill(1);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_and_pads() {
        let mut b = Batch::new();
        assert!(b.is_empty());
        b.push(&[101, 7, 102], &[0, 0, 0]);
        b.push(&[101, 8, 9, 102, 10], &[0, 0, 0, 0, 1]);
        assert_eq!(b.pairs(), 2);
        assert_eq!(b.cu_seq_lengths, vec![0, 3, 8]);
        assert_eq!(b.position_ids, vec![0, 1, 2, 0, 1, 2, 3, 4]);
        assert_eq!(b.total_tokens(), 8);
        assert_eq!(b.padded_tokens(), 10);
        let p = b.padded(0);
        assert_eq!(p.input_ids, vec![101, 7, 102, 0, 0, 101, 8, 9, 102, 10]);
        assert_eq!(p.token_type_ids, vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(p.position_ids, vec![0, 1, 2, 0, 0, 0, 1, 2, 3, 4]);
        assert_eq!(p.attention_mask, vec![1, 1, 1, 0, 0, 1, 1, 1, 1, 1]);
    }
}
