//! Workloads: the requests a load generator sends, built from a JSON-lines file of pairs or
//! generated with a fixed seed from a length distribution.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::{Rng, SeedableRng};

use crate::engine::RerankInput;
use crate::score::{read_pairs, InputError, Pair};

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("cannot open workload {}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("workload {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: InputError,
    },
    #[error("workload {} has no pairs", .path.display())]
    Empty { path: PathBuf },
}

/// The requests of a run, each a query with `pairs_per_request` passages; runs cycle through them.
#[derive(Debug, Clone)]
pub struct Workload {
    pub requests: Vec<Arc<RerankInput>>,
    pub pairs_per_request: usize,
}

/// Word counts for generated pairs (inclusive ranges, drawn uniformly).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeneratedLengths {
    pub query_words: (usize, usize),
    pub passage_words: (usize, usize),
}

impl Default for GeneratedLengths {
    fn default() -> Self {
        Self {
            query_words: (3, 12),
            passage_words: (10, 300),
        }
    }
}

/// Common English words (one WordPiece token each in BERT's uncased vocabulary), for generated
/// text whose token count follows its word count.
const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "had",
    "they",
    "you",
    "were",
    "their",
    "one",
    "all",
    "we",
    "can",
    "her",
    "has",
    "there",
    "been",
    "if",
    "more",
    "when",
    "will",
    "would",
    "who",
    "so",
    "no",
    "time",
    "people",
    "year",
    "way",
    "day",
    "man",
    "thing",
    "woman",
    "life",
    "child",
    "world",
    "school",
    "state",
    "family",
    "student",
    "group",
    "country",
    "problem",
    "hand",
    "part",
    "place",
    "case",
    "week",
    "company",
    "system",
    "program",
    "question",
    "work",
    "government",
    "number",
    "night",
    "point",
    "home",
    "water",
    "room",
    "mother",
    "area",
    "money",
    "story",
    "fact",
    "month",
    "lot",
    "right",
    "study",
    "book",
    "eye",
    "job",
    "word",
    "business",
    "issue",
    "side",
    "kind",
    "head",
    "house",
    "service",
    "friend",
    "father",
    "power",
    "hour",
    "game",
    "line",
    "end",
    "member",
    "law",
    "car",
    "city",
    "community",
    "name",
    "president",
    "team",
    "minute",
    "idea",
    "kid",
    "body",
    "information",
    "back",
    "parent",
    "face",
    "others",
    "level",
    "office",
    "door",
    "health",
    "person",
    "art",
    "war",
    "history",
    "party",
    "result",
    "change",
    "morning",
    "reason",
    "research",
    "girl",
    "guy",
    "moment",
    "air",
    "teacher",
    "force",
    "education",
    "river",
    "music",
    "data",
    "model",
];

impl Workload {
    /// Reads a JSON-lines file of pairs (as `xbench score` does) into requests of
    /// `pairs_per_request` pairs; see [`Workload::from_pairs`].
    pub fn from_jsonl(path: &Path, pairs_per_request: usize) -> Result<Self, WorkloadError> {
        let file = std::fs::File::open(path).map_err(|source| WorkloadError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let pairs =
            read_pairs(std::io::BufReader::new(file)).map_err(|source| WorkloadError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        if pairs.is_empty() {
            return Err(WorkloadError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(Self::from_pairs(&pairs, pairs_per_request))
    }

    /// Requests of `pairs_per_request` consecutive pairs (cycling over `pairs`), enough requests to
    /// use every pair at least once; each request takes the query of its first pair.
    pub fn from_pairs(pairs: &[Pair], pairs_per_request: usize) -> Self {
        assert!(
            !pairs.is_empty() && pairs_per_request > 0,
            "an empty workload reached Workload::from_pairs. This is a bug."
        );
        let count = pairs.len().div_ceil(pairs_per_request);
        let requests = (0..count)
            .map(|r| {
                let at = |k: usize| &pairs[(r * pairs_per_request + k) % pairs.len()];
                Arc::new(RerankInput::new(
                    at(0).query.clone(),
                    (0..pairs_per_request)
                        .map(|k| at(k).passage.clone())
                        .collect(),
                ))
            })
            .collect();
        Self {
            requests,
            pairs_per_request,
        }
    }

    /// `count` generated requests; the same seed gives the same text.
    pub fn generate(
        seed: u64,
        lengths: GeneratedLengths,
        pairs_per_request: usize,
        count: usize,
    ) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut text = |(lo, hi): (usize, usize)| {
            let n = rng.random_range(lo..=hi.max(lo));
            (0..n)
                .map(|_| WORDS[rng.random_range(0..WORDS.len())])
                .collect::<Vec<_>>()
                .join(" ")
        };
        let requests = (0..count.max(1))
            .map(|_| {
                let query = text(lengths.query_words);
                let passages = (0..pairs_per_request)
                    .map(|_| text(lengths.passage_words))
                    .collect();
                Arc::new(RerankInput::new(query, passages))
            })
            .collect();
        Self {
            requests,
            pairs_per_request,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_cycle_over_the_pairs() {
        let pairs: Vec<Pair> = (0..5)
            .map(|i| Pair::new(format!("q{i}"), format!("p{i}")))
            .collect();
        let w = Workload::from_pairs(&pairs, 2);
        assert_eq!(w.requests.len(), 3);
        assert_eq!(w.requests[2].query, "q4");
        assert_eq!(w.requests[2].passages, vec!["p4", "p0"]);
    }

    #[test]
    fn generation_is_seeded() {
        let a = Workload::generate(1, GeneratedLengths::default(), 4, 3);
        let b = Workload::generate(1, GeneratedLengths::default(), 4, 3);
        let c = Workload::generate(2, GeneratedLengths::default(), 4, 3);
        assert_eq!(a.requests[2].passages, b.requests[2].passages);
        assert_ne!(a.requests[2].passages, c.requests[2].passages);
        let words = a.requests[0].passages[0].split(' ').count();
        assert!((10..=300).contains(&words));
    }
}
