//! What several integration tests share: the demo model and the sample pairs.

use std::path::Path;

use xbench::score::{read_pairs, Pair};

/// The 6-layer demo model's directory (`./scripts/fetch_demo_model.sh` makes it).
pub fn demo() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo-minilm-l6");
    assert!(
        dir.join("model.safetensors").is_file(),
        "run ./scripts/fetch_demo_model.sh"
    );
    dir.to_str().unwrap().to_string()
}

/// The first `n` pairs of `data/sample_pairs.jsonl`.
pub fn sample(n: usize) -> Vec<Pair> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sample_pairs.jsonl");
    let pairs = read_pairs(std::io::BufReader::new(std::fs::File::open(path).unwrap())).unwrap();
    pairs.into_iter().take(n).collect()
}
