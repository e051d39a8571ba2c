#!/usr/bin/env python3
"""Reference logits for xbench's parity tests, from transformers on the demo model (fp32, CPU).

Scores data/sample_pairs.jsonl plus edge cases (empty texts, passages truncated at 512 tokens, a
query and passage both over the limit, non-ASCII text, control characters) with
AutoModelForSequenceClassification in padded batches of mixed lengths, and writes the pairs, their
token ids and logits to tests/data/reference_scores.json. As a check of the reference itself it also
scores every pair alone and with sentence-transformers' CrossEncoder (raw logits), and prints the
largest differences.

Needs torch, transformers and sentence-transformers (not needed by xbench or its tests):
    python3 -m venv .venv-ref && .venv-ref/bin/pip install torch transformers sentence-transformers
    .venv-ref/bin/python scripts/reference_scores.py
"""

import argparse
import hashlib
import json
import os
import sys

import torch
import transformers
from transformers import AutoModelForSequenceClassification, AutoTokenizer

MAX_LENGTH = 512
BATCH = 16


def edge_cases(sample):
    long = " ".join(p["passage"] for p in sample if len(p["passage"]) > 800)
    assert len(long) > 4000, "sample_pairs.jsonl needs long passages"
    return [
        ("what is the capital of france", ""),
        ("", "Paris is the capital and largest city of France."),
        ("   ", "A query of spaces only."),
        ("why are long passages truncated", long),
        ("why are long passages truncated", long + " " + long),
        (long, long[::-1]),
        (long[:6000], "A short passage after a very long query."),
        ("Zürich café naïve 東京 Ελληνικά 🙂", "Straße, São Paulo, 東京タワー, Ωμέγα — “quoted” 🚀"),
        ("Сколько стоит билет на поезд", "Билет на поезд стоит сто рублей."),
        ("ما هي عاصمة مصر", "القاهرة هي عاصمة مصر."),
        ("tabs\tand\nnewlines", "control \u0000 and \u0007 chars, a zero\u200bwidth space, \u00a0nbsp"),
        ("UPPER case Query", "MiXeD CaSe PaSsAgE with accents: ÉCOLE, ÀÖÜ"),
        ("numbers 3.14159 and 2,718", "ids like ABC-123_x and emails a.b@example.org"),
        ("a", "b"),
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="models/demo-minilm-l6")
    ap.add_argument("--pairs", default="data/sample_pairs.jsonl")
    ap.add_argument("--out", default="tests/data/reference_scores.json")
    args = ap.parse_args()

    torch.manual_seed(0)
    sample = [json.loads(line) for line in open(args.pairs, encoding="utf-8")]
    pairs = [(p["query"], p["passage"]) for p in sample] + edge_cases(sample)

    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, dtype=torch.float32)
    model.eval()

    def logits_of(batch):
        enc = tok(
            [q for q, _ in batch],
            [p for _, p in batch],
            padding=True,
            truncation="longest_first",
            max_length=MAX_LENGTH,
            return_tensors="pt",
        )
        with torch.no_grad():
            return model(**enc).logits[:, 0].tolist()

    batched = []
    for i in range(0, len(pairs), BATCH):
        batched += logits_of(pairs[i : i + BATCH])
    alone = [logits_of([p])[0] for p in pairs]
    alone_diff = max(abs(a - b) for a, b in zip(batched, alone))

    st_diff = None
    try:
        from sentence_transformers import CrossEncoder

        ce = CrossEncoder(args.model, max_length=MAX_LENGTH, activation_fn=torch.nn.Identity())
        st = ce.predict(pairs, batch_size=32, convert_to_numpy=True).reshape(-1).tolist()
        st_diff = max(abs(a - b) for a, b in zip(batched, st))
    except ImportError:
        print("sentence-transformers not installed: CrossEncoder check skipped", file=sys.stderr)

    rows = []
    for (q, p), logit in zip(pairs, batched):
        # Lists, as the batched scoring above and CrossEncoder call it: a single call with an empty
        # passage would drop the pair's second [SEP], which no scoring path does.
        enc = tok([q], [p], truncation="longest_first", max_length=MAX_LENGTH)
        rows.append(
            {
                "query": q,
                "passage": p,
                "input_ids": enc["input_ids"][0],
                "token_type_ids": enc["token_type_ids"][0],
                "logit": logit,
            }
        )
    with open(os.path.join(args.model, "model.safetensors"), "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    mean = sum(batched) / len(batched)
    std = (sum((x - mean) ** 2 for x in batched) / len(batched)) ** 0.5
    out = {
        "generated_by": "scripts/reference_scores.py",
        "model": args.model,
        "model_sha256": sha,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "max_length": MAX_LENGTH,
        "batch_size": BATCH,
        "logit_std": std,
        "batched_vs_alone_max_abs_diff": alone_diff,
        "sentence_transformers_max_abs_diff": st_diff,
        "pairs": rows,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    longest = max(len(r["input_ids"]) for r in rows)
    print(
        f"{len(rows)} pairs, longest {longest} tokens, logit mean {mean:.3f} std {std:.3f}; "
        f"batched vs alone {alone_diff:.2e}; CrossEncoder vs AutoModel {st_diff}"
    )


if __name__ == "__main__":
    main()
