#!/usr/bin/env python3
"""Writes a random-weight cross-encoder of a real reranker's shape, for speed and memory
measurements (speed does not depend on the values): transformers' own classes with their default
init (fixed seed), the demo model's WordPiece tokenizer (run ./scripts/fetch_demo_model.sh first).
The generative shapes (qwen3-reranker-*, mxbai-rerank-base-v2, bge-reranker-v2-gemma) are causal-LM
checkpoints instead, with the byte-level BPE tokenizer of the tiny reranker of their family
(tests/data/tiny-*-reranker; its ids are all below 1,000, well inside the vocabulary) and no demo
model needed.

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
  qwen3-reranker-0.6b  Qwen3-Reranker-0.6B's Qwen3ForCausalLM (28 layers, hidden 1024, 16 query heads,
                   8 key-value heads, head_dim 128, SwiGLU 3072, vocabulary 151,669, tied embeddings,
                   RoPE theta 1e6, 40,960 positions), saved in bfloat16 as the real one ships (1.2 GB)
  qwen3-reranker-4b    Qwen3-Reranker-4B's (36 layers, hidden 2560, 32 query heads, 8 key-value heads,
                   head_dim 128, SwiGLU 9728, same vocabulary, tied), bfloat16: 8 GB on disk, and
                   about as much memory while it is written
  mxbai-rerank-base-v2 mxbai-rerank-base-v2's Qwen2ForCausalLM (Qwen2.5-0.5B: 24 layers, hidden 896,
                   14 query heads, 2 key-value heads, Q/K/V biases, SwiGLU 4864, vocabulary 151,936,
                   tied), bfloat16 (1 GB), with the tiny Qwen2 reranker's tokenizer
  bge-reranker-v2-gemma  bge-reranker-v2-gemma's GemmaForCausalLM (Gemma-2B: 18 layers, hidden 2048,
                   8 query heads, 1 key-value head, head_dim 256, GeGLU 16384, vocabulary 256,000,
                   tied), bfloat16 (5 GB), with the tiny Gemma reranker's tokenizer

With --long-pairs FILE it also writes FILE: three JSON-lines pairs of about 2,048, 4,096 and 8,192
tokens (the last cut to the model's limit) from data/pairs.jsonl's passages, and prints
transformers' fp32 logit for each (eager attention), to compare with `xbench score` (cross-encoder
shapes only). The generative shapes draw every linear and embedding weight from N(0, 0.02)
(transformers' init at initializer_range 0.02; biases too) with the RMSNorms at identity, directly in
bfloat16.
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
    GemmaConfig,
    GemmaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
)

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo-minilm-l6"
TINY = ROOT / "tests" / "data"
TINY_QWEN3 = TINY / "tiny-qwen3-reranker"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


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


def generative_shape(name: str):
    """The config of a generative reranker's shape (Qwen/Qwen3-Reranker-0.6B's and -4B's,
    mixedbread-ai/mxbai-rerank-base-v2's, BAAI/bge-reranker-v2-gemma's config.json), its model
    class and the tiny checkpoint whose tokenizer goes with it (the special tokens' ids are that
    tokenizer's)."""
    def special(tiny: Path) -> dict:
        c = json.loads((tiny / "config.json").read_text())
        return dict(bos_token_id=c["bos_token_id"], eos_token_id=c["eos_token_id"], pad_token_id=c.get("pad_token_id"))
    qwen = dict(hidden_act="silu", rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                tie_word_embeddings=True, initializer_range=0.02, use_sliding_window=False, sliding_window=None,
                use_cache=True)
    if name.startswith("qwen3-reranker"):
        common = dict(vocab_size=151669, head_dim=128, num_key_value_heads=8, max_position_embeddings=40960,
                      attention_bias=False, **qwen, **special(TINY_QWEN3))
        if name == "qwen3-reranker-0.6b":
            return Qwen3Config(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16,
                               intermediate_size=3072, max_window_layers=28, **common), Qwen3ForCausalLM, TINY_QWEN3
        if name == "qwen3-reranker-4b":
            return Qwen3Config(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32,
                               intermediate_size=9728, max_window_layers=36, **common), Qwen3ForCausalLM, TINY_QWEN3
    if name == "mxbai-rerank-base-v2":
        tiny = TINY / "tiny-qwen2-reranker"
        return Qwen2Config(vocab_size=151936, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                           num_key_value_heads=2, intermediate_size=4864, max_position_embeddings=32768,
                           max_window_layers=24, **qwen, **special(tiny)), Qwen2ForCausalLM, tiny
    if name == "bge-reranker-v2-gemma":
        tiny = TINY / "tiny-gemma-reranker"
        return GemmaConfig(vocab_size=256000, hidden_size=2048, num_hidden_layers=18, num_attention_heads=8,
                           num_key_value_heads=1, head_dim=256, intermediate_size=16384,
                           hidden_act="gelu_pytorch_tanh", max_position_embeddings=8192, rms_norm_eps=1e-6,
                           rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                           tie_word_embeddings=True, initializer_range=0.02, attention_bias=False,
                           **special(tiny)), GemmaForCausalLM, tiny
    return None


@torch.no_grad()
def write_generative(name: str, config, cls, tiny: Path, out: Path) -> None:
    """Builds the model in bfloat16 (never a float32 copy: the 4B one would take 16 GB), draws its
    weights and saves it with the tiny reranker's tokenizer."""
    config.architectures = [cls.__name__]
    torch.manual_seed(20261201)
    model = cls._from_config(config, dtype=torch.bfloat16).eval()
    for mname, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            module.weight.normal_(0.0, config.initializer_range)
            if getattr(module, "bias", None) is not None:
                module.bias.normal_(0.0, config.initializer_range)
        elif type(module).__name__.endswith("RMSNorm"):
            # Gemma's norms scale by (1 + weight): 0 is its identity, 1 the others'.
            module.weight.fill_(0.0 if isinstance(model, GemmaForCausalLM) else 1.0)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "embeddings not tied"
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    for f in TOKENIZER_FILES:
        shutil.copy(tiny / f, out / f)
    params = sum(p.numel() for p in model.parameters())
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    print(f"{name}: {params / 1e6:.1f} M parameters (bfloat16, {size / 1e9:.2f} GB) in {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shape")
    ap.add_argument("out", type=Path)
    ap.add_argument("--long-pairs", type=Path)
    args = ap.parse_args()
    generative = generative_shape(args.shape)
    if generative is not None:
        if args.long_pairs:
            raise SystemExit("--long-pairs is for the cross-encoder shapes")
        write_generative(args.shape, *generative, args.out)
        return
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
