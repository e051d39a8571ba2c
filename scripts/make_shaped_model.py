#!/usr/bin/env python3
"""Writes a random-weight cross-encoder of a real reranker's shape, for speed and memory
measurements (speed does not depend on the values): transformers' own classes with their default
init (fixed seed), the demo model's WordPiece tokenizer (run ./scripts/fetch_demo_model.sh first).

    .venv-peers/bin/python scripts/make_shaped_model.py SHAPE OUT_DIR [--long-pairs FILE]

SHAPE is one of:
  minilm-8k        BERT, MiniLM-L6-H384 (6 layers, hidden 384, 12 heads, FFN 1536), 8,192 positions
  bert-base        BERT-base (12 layers, hidden 768, 12 heads, FFN 3072), 512 positions
  modernbert-base  ModernBERT-base (22 layers, hidden 768, 12 heads, GLU 1152, local window 128
                   every layer but each third, 8,192 positions)
  deberta-v3-base  DeBERTa-v3-base (12 layers, hidden 768, 12 heads, FFN 3072, relative attention
                   both ways, 256 buckets)
  electra-base     ELECTRA-base (12 layers, hidden 768, FFN 3072, embeddings 768)
  xlm-roberta-base XLM-RoBERTa-base's layers (bge-reranker-base's; 514 positions), BERT's vocabulary
  distilbert-base  DistilBERT-base (6 layers, hidden 768, FFN 3072)

With --long-pairs FILE it also writes FILE: three JSON-lines pairs of about 2,048, 4,096 and 8,192
tokens (the last cut to the model's limit) from data/pairs.jsonl's passages, and prints
transformers' fp32 logit for each (eager attention), to compare with `xbench score`.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    ModernBertConfig,
    ModernBertForSequenceClassification,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
)

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo-minilm-l6"


def shape(name: str, vocab: int):
    common = dict(vocab_size=vocab, num_labels=1, pad_token_id=0)
    if name == "minilm-8k":
        return BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                          max_position_embeddings=8192, **common), BertForSequenceClassification, 8192
    if name == "bert-base":
        return BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                          max_position_embeddings=512, **common), BertForSequenceClassification, 512
    if name == "modernbert-base":
        return ModernBertConfig(hidden_size=768, num_hidden_layers=22, num_attention_heads=12,
                                intermediate_size=1152, max_position_embeddings=8192, local_attention=128,
                                global_attn_every_n_layers=3, cls_token_id=101, sep_token_id=102,
                                bos_token_id=101, eos_token_id=102, **common), ModernBertForSequenceClassification, 8192
    if name == "deberta-v3-base":
        return DebertaV2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                               max_position_embeddings=512, relative_attention=True, position_buckets=256,
                               norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type="p2c|c2p",
                               position_biased_input=False, type_vocab_size=0, layer_norm_eps=1e-7,
                               **common), DebertaV2ForSequenceClassification, 512
    if name == "xlm-roberta-base":
        return XLMRobertaConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                                max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
                                vocab_size=vocab, num_labels=1, pad_token_id=1), XLMRobertaForSequenceClassification, 512
    if name == "distilbert-base":
        return DistilBertConfig(dim=768, n_layers=6, n_heads=12, hidden_dim=3072, max_position_embeddings=512,
                                vocab_size=vocab, num_labels=1, pad_token_id=0), DistilBertForSequenceClassification, 512
    if name == "electra-base":
        return ElectraConfig(hidden_size=768, embedding_size=768, num_hidden_layers=12, num_attention_heads=12,
                             intermediate_size=3072, max_position_embeddings=512,
                             **common), ElectraForSequenceClassification, 512
    raise SystemExit(f"unknown shape {name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shape")
    ap.add_argument("out", type=Path)
    ap.add_argument("--long-pairs", type=Path)
    args = ap.parse_args()
    if not (DEMO / "tokenizer.json").is_file():
        raise SystemExit("the demo model is missing: run ./scripts/fetch_demo_model.sh")
    tok_config = json.loads((DEMO / "tokenizer_config.json").read_text())
    vocab = json.loads((DEMO / "config.json").read_text())["vocab_size"]
    config, cls, max_length = shape(args.shape, vocab)
    config.architectures = [cls.__name__]
    torch.manual_seed(20261201)
    model = cls._from_config(config, attn_implementation="eager").eval()
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(args.out), safe_serialization=True)
    for f in ("tokenizer.json", "special_tokens_map.json", "vocab.txt"):
        if (DEMO / f).exists():
            shutil.copy(DEMO / f, args.out / f)
    tok_config["model_max_length"] = max_length
    if args.shape == "modernbert-base":
        tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    if args.shape in ("modernbert-base", "xlm-roberta-base", "distilbert-base"):
        # Their tokenizers pass no type ids (XLM-R's one type would not take BERT's 1s).
        tok_config["model_input_names"] = ["input_ids", "attention_mask"]
    (args.out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.shape}: {params / 1e6:.1f} M parameters in {args.out}")

    if args.long_pairs:
        hf = AutoTokenizer.from_pretrained(str(args.out))
        passages = [json.loads(l)["passage"] for l in (ROOT / "data" / "pairs.jsonl").read_text().splitlines() if l]
        query = "how does the borrow checker decide when a reference is valid"
        lines = []
        for target in (2048, 4096, 8192):
            words, text = [], ""
            for p in passages:
                words.append(p)
                text = " ".join(words)
                if len(hf([query], [text])["input_ids"][0]) >= target + 16:
                    break
            lines.append((query, text))
        with args.long_pairs.open("w") as f:
            for q, p in lines:
                f.write(json.dumps({"query": q, "passage": p}) + "\n")
        torch.set_num_threads(2)
        for q, p in lines:
            enc = hf([q], [p], truncation=True, max_length=max_length, return_tensors="pt")
            with torch.no_grad():
                logit = model(**enc).logits[0, 0].item()
            print(json.dumps({"tokens": enc["input_ids"].shape[1], "transformers_logit": logit}))


if __name__ == "__main__":
    main()
