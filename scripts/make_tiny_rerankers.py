#!/usr/bin/env python3
"""Writes tiny random-weight generative (decoder-only) rerankers, with transformers reference logits, for xbench's tests.

Four fixtures, each a directory under --out-dir (default tests/data/ of this repository):

* tiny-qwen3-reranker/: a Qwen3ForCausalLM (hidden 32, 2 layers, 4 query heads and 2 key-value heads
  of head_dim 16, so the query projection is 64 wide, not hidden: an explicit head_dim; per-head q/k
  RMSNorm; intermediate 64, SiLU; RMSNorm eps 1e-6; RoPE theta 1e6; 8,192 positions; TIED word
  embeddings, so the file has no lm_head.weight; no attention biases) behind the Qwen3-Reranker prompt
  (template `qwen3_reranker`), scored on the answer tokens ["no", "yes"]. Its reference has a `long`
  case: one pair of about 8,000 tokens.
* tiny-qwen2-reranker/: a Qwen2ForCausalLM (hidden 32, 2 layers, 4 heads, 2 key-value heads of
  head_dim 8, q/k/v biases as Qwen2 has them; intermediate 64, SiLU; RoPE theta 1e4; 8,192
  positions; UNTIED lm_head.weight) behind mxbai-rerank-v2's prompt (template `mxbai_rerank_v2`),
  scored on ["0", "1"] (score = logit 1 - logit 0).
* tiny-gemma-reranker/: a GemmaForCausalLM (hidden 32, 2 layers, 4 heads, 1 key-value head, head_dim
  16, intermediate 64, gelu_pytorch_tanh, embeddings scaled by sqrt(hidden), RMSNorm weights used as
  1 + w, tied embeddings, 2,048 positions) behind bge-reranker-v2-gemma's prompt (template
  `bge_gemma`, with <bos>), scored on ["Yes"].
* tiny-qwen3-reranker-seq-cls/: tiny-qwen3-reranker converted to a Qwen3ForSequenceClassification the
  way vLLM's examples/.../convert_model_to_seq_cls.py (from_2_way_softmax) converts Qwen3-Reranker:
  score.weight = (embedding row of "yes") - (row of "no"), num_labels 1, pad_token_id set; same
  tokenizer and prompts. Its one logit equals logit(yes) - logit(no) of tiny-qwen3-reranker
  (checked here, 1e-5).

The prompt rules (what each template's upstream code does, with citations) are in the functions
qwen3_reranker_ids, mxbai_rerank_v2_ids and bge_gemma_ids below; in short, with tok(x) = the ids of x
tokenized alone without special tokens, and cut(ids, n) = ids[:n]:

  qwen3_reranker:  tok(PREFIX) + cut(tok("<Instruct>: {instruction}\\n<Query>: {query}\\n<Document>: {passage}"),
                   max_length - len(tok(PREFIX)) - len(tok(SUFFIX))) + tok(SUFFIX);
                   instruction null = "Given a web search query, retrieve relevant passages that answer the query".
  mxbai_rerank_v2: m = min(max_length, max_position_embeddings - P), P = len(tok(prefix) + tok(task) +
                   tok(suffix) + tok("\\n")); q = cut(tok(["instruction: {instruction}\\n"] "query: {query}"), m * 3 // 4);
                   tok(prefix) + q + tok("\\n") + cut(tok("document: {passage}"), m - len(q) - 1)
                   + tok("\\n") + tok(task) + tok(suffix); instruction null (or "") = no instruction.
  bge_gemma:       q = cut(tok("A: {query}"), max_length * 3 // 4);
                   [bos] + q + tok("\\n") + cut(tok("B: {passage}"), max_length - 1 - len(q) - 1) + tok("\\n") + tok(prompt);
                   `instruction` (null = the default) replaces the prompt (FlagEmbedding's `prompt` argument).

Each directory holds config.json and model.safetensors (save_pretrained, safe_serialization), the
tokenizer (tokenizer.json, tokenizer_config.json, special_tokens_map.json) and reference.json:

    {"transformers": ..., "torch": ..., "architecture": "Qwen3ForCausalLM", "template": "qwen3_reranker",
     "template_params": {...},            # e.g. mxbai's model_max_length (config.max_position_embeddings)
     "answer_tokens": ["no", "yes"], "answer_ids": [..],
     "cases": [{"name": "default", "max_length": 8192, "instruction": null,
                "pairs": [{"query", "passage", "input_ids", "logits"}, ...]},
               {"name": "truncated", "max_length": <short>, ...},      # truncation exercised
               {"name": "instruction", "max_length": ..., "instruction": "...", ...},
               {"name": "long", ...}]}                                  # qwen3 fixtures only

`input_ids` is the whole prompt (what the model sees, no padding). `logits` are the fp32, eager
attention, eval-mode logits of the answer tokens, in answer_tokens order, at the last position of
the prompt run alone; for the seq-cls fixture, the score head's one output (answer_tokens
["no", "yes"] and answer_ids there name the rows it was built from). Answer ids are obtained as
upstream does: Qwen3-Reranker `convert_tokens_to_ids("no"/"yes")`; mxbai
`tokenizer("0"/"1", add_special_tokens=False).input_ids[0]`; bge-gemma
`tokenizer("Yes", add_special_tokens=False).input_ids[0]`.

The script checks: every prompt part encodes the same with `tokenizers.Tokenizer.from_file(tokenizer.json)`
(what the Rust side uses, add_special_tokens=False) as with AutoTokenizer; the whole prompt built from
tokenizer.json with the cut rules above equals the one built with upstream's transformers calls; left-
padded batches (attention mask, as the model cards batch) give the same answer logits as lone runs
(1e-5); the saved checkpoints reload with no missing, unexpected or mismatched weights; tied
checkpoints hold no lm_head.weight; the truncated cases really truncate.

Tokenizers are trained here with the `tokenizers` library (Qwen: byte-level BPE with Qwen2's split
regex and NFC, the pipeline transformers 5's Qwen2Tokenizer rebuilds, specials <|endoftext|>,
<|im_start|>, <|im_end|> after the vocabulary, plus <think> and </think> as non-special added tokens
for Qwen3; Gemma: BPE with byte fallback over "▁"-replaced text, <pad>=0 <eos>=1 <bos>=2 <unk>=3
<mask>=4, then the 256 <0xXX> byte tokens). Training is not reproducible (hash-map tie order), so an
existing tokenizer.json is reused unless --retrain-tokenizers is given; weights come from fixed
seeds. Needs torch, transformers (5.x) and tokenizers:

    .venv-peers/bin/python scripts/make_tiny_rerankers.py [--out-dir tests/data] [--only tiny-qwen3-reranker] [--retrain-tokenizers]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoTokenizer,
    GemmaConfig,
    GemmaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3ForSequenceClassification,
)

SEED_QWEN3 = 20270101
SEED_QWEN2 = 20270102
SEED_GEMMA = 20270103
BATCH_TOLERANCE = 1e-5
SEQ_CLS_TOLERANCE = 1e-5
QWEN_BPE_VOCAB = 768  # byte alphabet (256) + merges; specials come after
GEMMA_BPE_VOCAB = 480  # trained pieces; specials and byte tokens come before
LONG_TARGET = 8000
LONG_SECONDS_LIMIT = 60.0

# ---------------------------------------------------------------- templates (upstream strings)

# Qwen/Qwen3-Reranker-0.6B model card (format_instruction / process_inputs / compute_logits).
QWEN3_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
QWEN3_MAX_LENGTH = 8192

# mixedbread-ai/mxbai-rerank, mxbai_rerank/mxbai_rerank_v2.py, class MxbaiRerankV2.
MXBAI_SEP = "\n"
MXBAI_INSTRUCTION_PROMPT = "instruction: {instruction}"
MXBAI_QUERY_PROMPT = "query: {query}"
MXBAI_DOC_PROMPT = "document: {document}"
MXBAI_TASK_PROMPT = (
    "You are a search relevance expert who evaluates how well documents match search queries. For each "
    "query-document pair, carefully analyze the semantic relationship between them, then provide your "
    "binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:"
)
MXBAI_PREFIX = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n"
)
MXBAI_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
MXBAI_MAX_LENGTH = 8192

# BAAI/bge-reranker-v2-gemma model card (FlagEmbedding README), get_inputs(pairs, tokenizer, prompt=None, max_length=1024).
BGE_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query by "
    "providing a prediction of either 'Yes' or 'No'."
)
BGE_SEP = "\n"
BGE_MAX_LENGTH = 1024

CUSTOM_INSTRUCTION = "Given a question, find the passage that answers it"
CUSTOM_BGE_PROMPT = "Given a question A and a text B, say 'Yes' if B answers A and 'No' otherwise."

# ---------------------------------------------------------------- texts

LONG_QUERY = (
    "what are the most important steps for cooking a really good pot of rice at home, and how "
    "long should the rice simmer, and should it be rinsed before cooking, and how much water "
    "does each cup of rice need when you cook it on a normal stove in a small kitchen"
)
LONG_PASSAGE = (
    "Rivers form when rain water collects in small streams high in the mountains. The streams join "
    "and flow downhill, carrying sand and mud, until they reach a lake or the sea. Along the way a "
    "river cuts valleys, feeds farms and cities, and floods when it carries more water than its "
    "banks can hold. The Danube flows through Vienna, Budapest and Belgrade before reaching the "
    "Black Sea, and salmon swim upstream every autumn to lay their eggs in cold mountain rivers."
)

PAIRS = [
    ("how do rivers form", "Rivers form when rain water collects in streams and flows downhill to the sea."),
    ("what does a reranker do", ""),  # empty passage
    ("recette de crème brûlée", "La crème brûlée est un dessert français à base de crème et de sucre caramélisé."),
    ("東京の天気は？ 量子", "東京は今日晴れです。Tokyo is sunny ☃ 🚀 today."),  # CJK; ☃ 🚀 are in no corpus (byte fallback)
    ("Is Python easy to read?", "Python is a programming language that is easy to read and quick to write."),
    ("  multiple   spaces\tand\ttabs ", "line one\nline two\n\nline four\n"),  # newlines and whitespace runs
    ("rust borrow checker", "Season the steak with salt and pepper, then sear it in a very hot pan."),
    ("how do rivers flood", LONG_PASSAGE + " " + LONG_PASSAGE),  # long passage: cut in the truncated case
    (LONG_QUERY, LONG_PASSAGE),  # both long: the query caps
    ("", "A search engine ranks documents by how well they answer the query."),  # empty query
    ("yes or no? 0 or 1?", "Yes. No. yes no 0 1 <think> Relevance: document: query:"),  # template words inside texts
    ("a", "b"),
]

CORPUS = [
    "A search engine ranks documents by how well they answer the query.",
    "Cross-encoders read the query and the passage together and output a relevance score.",
    "Rerankers are slower than retrievers, so they only see the top hundred candidates.",
    "Users type short queries and expect the best answer in the first few results.",
    "To cook rice, rinse it twice, add water, and simmer it covered for fifteen minutes.",
    "Season the steak with salt and pepper, then sear it in a very hot pan.",
    "A good soup starts with onions, garlic and carrots softened in olive oil.",
    "The chef served a crème brûlée and a café au lait after the jalapeño salsa.",
    "Rivers form when rain water collects in streams and flows downhill to the sea.",
    "The Danube flows through Vienna, Budapest and Belgrade before reaching the Black Sea.",
    "Floods happen when a river carries more water than its banks can hold.",
    "Salmon swim upstream every autumn to lay their eggs in cold mountain rivers.",
    "Rust uses a borrow checker so that references never outlive the data they point to.",
    "Python is a programming language that is easy to read and quick to write.",
    "A tokenizer splits text into pieces and maps each piece to an integer id.",
    "Attention lets every token look at every other token in the same sequence.",
    "La crème brûlée est un dessert français. Die Flüsse in Österreich fließen zur Donau.",
    "東京は日本の首都です。今日は晴れです。天気がいい。",
    "Is it relevant? yes. Is it relevant? no. Yes or No? Yes! No! yes, no, yes; no.",
    "Relevance: 1. Relevance: 0. The answer is 0 or 1, 10, 01, 2024.",
    "line one\nline two\n\nline four\n\ttabbed\n",
]


def training_texts() -> list[str]:
    """The corpus the tokenizers learn from: the templates' fixed texts (weighted, so they become
    few tokens, as in the real vocabularies), the test pairs and some general sentences."""
    fixed = [
        QWEN3_PREFIX, QWEN3_SUFFIX, QWEN3_DEFAULT_INSTRUCTION, CUSTOM_INSTRUCTION, MXBAI_PREFIX, MXBAI_SUFFIX,
        MXBAI_TASK_PROMPT, "instruction: query: document:", BGE_PROMPT, CUSTOM_BGE_PROMPT, "A: B: ",
        "<Instruct>: <Query>: <Document>: ", "Yes No yes no 0 1",
    ]
    texts = fixed * 8 + CORPUS * 2
    for q, p in PAIRS:
        if "🚀" in p:  # keep ☃ and 🚀 out of the vocabularies
            p = p.replace("☃", "").replace("🚀", "")
        texts += [q, p]
    return texts


# ---------------------------------------------------------------- tokenizers

QWEN2_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN3_THINK = ["<think>", "</think>"]


def train_qwen_bpe() -> Tokenizer:
    """Byte-level BPE with Qwen2's pipeline (NFC; Split on Qwen2's regex, isolated; ByteLevel without
    its own regex or prefix space; ByteLevel decoder and post-processor), i.e. what transformers 5's
    Qwen2Tokenizer rebuilds from tokenizer.json. No specials yet."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=QWEN_BPE_VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(training_texts(), trainer=trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def qwen_tokenizer(base: Tokenizer, with_think: bool) -> Tokenizer:
    """`base` (a trained byte-level BPE, or a saved fixture's tokenizer) with Qwen's added tokens after
    the vocabulary: <|endoftext|>, <|im_start|>, <|im_end|> (special), then, for Qwen3, <think>,
    </think> (not special, as in Qwen3's tokenizer)."""
    tok = Tokenizer.from_str(base.to_str())
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIALS])
    if with_think:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN3_THINK])
    return tok


GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
GEMMA_BYTES = [f"<0x{b:02X}>" for b in range(256)]


def train_gemma_bpe() -> Tokenizer:
    """Gemma-style BPE: spaces replaced by "▁" (no dummy prefix), byte fallback to <0xXX> tokens, no
    effective pre-tokenizer (transformers 5's GemmaTokenizer's Split(" ") after the normalizer finds no
    spaces), the vocabulary <pad>=0 <eos>=1 <bos>=2 <unk>=3 <mask>=4, the 256 byte tokens, then the
    trained pieces. Trained on words split before each "▁" so that no merge crosses a word start."""
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.normalizer = normalizers.Replace(" ", "▁")
    trainer_tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=GEMMA_BPE_VOCAB, show_progress=False)
    trainer_tok.train_from_iterator(training_texts(), trainer=trainer)
    trained = json.loads(trainer_tok.to_str())["model"]
    vocab = {t: i for i, t in enumerate(GEMMA_SPECIALS + GEMMA_BYTES)}
    for piece, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        assert piece not in vocab, piece
        vocab[piece] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    return gemma_pipeline(tok)


def gemma_pipeline(tok: Tokenizer) -> Tokenizer:
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous", invert=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in GEMMA_SPECIALS])
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos>:0 $A:0", pair="<bos>:0 $A:0 <bos>:1 $B:1", special_tokens=[("<bos>", bos)]
    )
    return tok


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def added_tokens_decoder(tok: Tokenizer) -> dict:
    out = {}
    for tid, added in sorted(tok.get_added_tokens_decoder().items()):
        out[str(tid)] = {"content": added.content, "lstrip": added.lstrip, "normalized": added.normalized,
                         "rstrip": added.rstrip, "single_word": added.single_word, "special": added.special}
    return out


def save_tokenizer(tok: Tokenizer, out: Path, specials: dict, config: dict) -> None:
    tok.no_truncation()
    tok.no_padding()
    tok.save(str(out / "tokenizer.json"))
    write_json(out / "special_tokens_map.json", specials)
    write_json(out / "tokenizer_config.json",
               {**config, **specials, "added_tokens_decoder": added_tokens_decoder(tok)})


def save_qwen_tokenizer(tok: Tokenizer, out: Path, with_think: bool) -> None:
    # As Qwen3-Reranker / Qwen2.5's tokenizer_config.json: no bos, <|im_end|> ends, <|endoftext|> pads.
    specials = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    config = {"tokenizer_class": "Qwen2Tokenizer", "add_prefix_space": False, "errors": "replace",
              "bos_token": None, "unk_token": None, "clean_up_tokenization_spaces": False,
              "split_special_tokens": False, "model_max_length": 131072}
    if with_think:
        specials["additional_special_tokens"] = ["<|im_start|>", "<|im_end|>"]
    save_tokenizer(tok, out, specials, config)


def save_gemma_tokenizer(tok: Tokenizer, out: Path) -> None:
    specials = {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>",
                "mask_token": "<mask>"}
    save_tokenizer(tok, out, specials, {"tokenizer_class": "GemmaTokenizer", "add_bos_token": True,
                                        "add_eos_token": False, "padding_side": "left",
                                        "clean_up_tokenization_spaces": False, "model_max_length": 8192})


# ---------------------------------------------------------------- prompt construction


class Enc:
    """Tokenizes as the upstream code does (`hf`: transformers' AutoTokenizer calls) or as the Rust side
    will (`raw`: tokenizers' Tokenizer.from_file(tokenizer.json), add_special_tokens=False, then a cut
    of the ids). `enc(text, max_length)` = ids of `text`, cut to `max_length` when given."""

    def __init__(self, hf=None, raw: Tokenizer | None = None):
        assert (hf is None) != (raw is None)
        self.hf, self.raw = hf, raw

    def __call__(self, text: str, max_length: int | None = None, card_default_specials: bool = False) -> list[int]:
        if self.hf is not None:
            kwargs = {} if max_length is None else {"max_length": max_length, "truncation": True}
            if card_default_specials:  # Qwen3's card: tokenizer(pairs, truncation='longest_first', max_length=...)
                kwargs = {"truncation": "longest_first", "max_length": max_length}
                return list(self.hf(text, padding=False, return_attention_mask=False, **kwargs)["input_ids"])
            return list(self.hf(text, add_special_tokens=False, return_attention_mask=False, **kwargs)["input_ids"])
        ids = self.raw.encode(text, add_special_tokens=False).ids
        return ids if max_length is None else ids[:max_length]

    def token_id(self, token: str) -> int:
        """convert_tokens_to_ids (a vocabulary lookup of the token string)."""
        if self.hf is not None:
            return self.hf.convert_tokens_to_ids(token)
        tid = self.raw.token_to_id(token)
        assert tid is not None, token
        return tid


def prepare_for_model_only_second(ids: list[int], pair_ids: list[int], max_length: int) -> list[int]:
    """transformers 4's `tokenizer.prepare_for_model(ids, pair_ids, truncation='only_second',
    max_length=max_length, add_special_tokens=False)["input_ids"]` (transformers 5's fast tokenizers
    no longer have prepare_for_model): the second sequence loses its last tokens until both fit; when
    it is too short for that, transformers 4 logs an error and cuts nothing (never reached here)."""
    remove = len(ids) + len(pair_ids) - max_length
    if remove > 0:
        assert len(pair_ids) > remove, "only_second cannot fit: transformers 4 would leave the pair uncut"
        pair_ids = pair_ids[:-remove]
    return ids + pair_ids


def qwen3_reranker_ids(enc: Enc, query: str, passage: str, instruction: str | None, max_length: int) -> list[int]:
    """Qwen/Qwen3-Reranker-0.6B model card: prefix_tokens = encode(prefix, add_special_tokens=False),
    likewise suffix; the middle format_instruction(instruction, query, doc) =
    "<Instruct>: {instruction}\\n<Query>: {query}\\n<Document>: {doc}" (instruction None -> the default)
    tokenized with truncation='longest_first', max_length=max_length - len(prefix_tokens) -
    len(suffix_tokens) (right cut; Qwen's tokenizer adds no special tokens); ids = prefix + middle + suffix."""
    prefix, suffix = enc(QWEN3_PREFIX), enc(QWEN3_SUFFIX)
    if instruction is None:
        instruction = QWEN3_DEFAULT_INSTRUCTION
    middle = f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {passage}"
    budget = max_length - len(prefix) - len(suffix)
    assert budget > 0
    return prefix + enc(middle, budget, card_default_specials=True) + suffix


def mxbai_predefined_length(enc: Enc) -> int:
    return len(enc(MXBAI_PREFIX)) + len(enc(MXBAI_TASK_PROMPT)) + len(enc(MXBAI_SUFFIX)) + len(enc(MXBAI_SEP))


def mxbai_rerank_v2_ids(enc: Enc, query: str, passage: str, instruction: str | None, max_length: int,
                        model_max_length: int) -> list[int]:
    """mixedbread-ai/mxbai-rerank mxbai_rerank_v2.py MxbaiRerankV2.prepare_inputs (newest version:
    model_max_length = config.max_position_embeddings):
    max_length -> model_max_length - predefined when max_length + predefined exceeds it; query string
    "query: {q}", preceded by "instruction: {i}" + "\\n" in the same string when an instruction is
    truthy, cut to max_length * 3 // 4; document "document: {d}" cut to min(model_max_length -
    len(q) - predefined, max_length); prepare_for_model(q, sep + d, only_second, max_length); then
    prefix + that + sep + task + suffix. Separators are tok("\\n")."""
    predefined = mxbai_predefined_length(enc)
    if max_length + predefined > model_max_length:
        max_length = model_max_length - predefined
    query_prompt = MXBAI_QUERY_PROMPT.format(query=query)
    if instruction:
        query_prompt = "".join([MXBAI_INSTRUCTION_PROMPT.format(instruction=instruction), MXBAI_SEP, query_prompt])
    q = enc(query_prompt, max_length * 3 // 4)
    doc_maxlen = min(model_max_length - len(q) - predefined, max_length)
    d = enc(MXBAI_DOC_PROMPT.format(document=passage), doc_maxlen)
    sep = enc(MXBAI_SEP)
    item = prepare_for_model_only_second(q, sep + d, max_length)
    return enc(MXBAI_PREFIX) + item + sep + enc(MXBAI_TASK_PROMPT) + enc(MXBAI_SUFFIX)


def bge_gemma_ids(enc: Enc, query: str, passage: str, instruction: str | None, max_length: int, bos_id: int) -> list[int]:
    """BAAI/bge-reranker-v2-gemma model card get_inputs: "A: {query}" cut to max_length * 3 // 4,
    "B: {passage}" cut to max_length, prepare_for_model([bos] + A, sep + B, only_second, max_length),
    then + sep + prompt (prompt None -> the default; our `instruction`)."""
    prompt = BGE_PROMPT if instruction is None else instruction
    prompt_ids, sep = enc(prompt), enc(BGE_SEP)
    q = enc(f"A: {query}", max_length * 3 // 4)
    p = enc(f"B: {passage}", max_length)
    item = prepare_for_model_only_second([bos_id] + q, sep + p, max_length)
    return item + sep + prompt_ids


# ---------------------------------------------------------------- weights


@torch.no_grad()
def spread_weights(model: torch.nn.Module, gemma_norms: bool) -> None:
    """Re-draws every parameter: linear and embedding weights N(0, 0.2), biases N(0, 0.1), RMSNorm
    weights 1 + N(0, 0.1) (Gemma's, used as 1 + w: N(0, 0.1))."""
    touched = set()
    for mname, module in model.named_modules():
        prefix = f"{mname}." if mname else ""
        if isinstance(module, torch.nn.Linear):
            module.weight.normal_(0.0, 0.2)
            touched.add(prefix + "weight")
            if module.bias is not None:
                module.bias.normal_(0.0, 0.1)
                touched.add(prefix + "bias")
        elif isinstance(module, torch.nn.Embedding):
            module.weight.normal_(0.0, 0.2)
            touched.add(prefix + "weight")
        elif type(module).__name__.endswith("RMSNorm"):
            w = 0.1 * torch.randn_like(module.weight)
            module.weight.copy_(w if gemma_norms else 1.0 + w)
            touched.add(prefix + "weight")
    names = {n for n, _ in model.named_parameters()}
    assert names <= touched, f"parameters not re-drawn: {sorted(names - touched)}"


def build(cls, config, seed: int, out: Path, gemma_norms: bool = False):
    torch.manual_seed(seed)
    model = cls._from_config(config, attn_implementation="eager")
    spread_weights(model, gemma_norms)
    model.eval()
    assert model.config._attn_implementation == "eager"
    model.save_pretrained(str(out), safe_serialization=True)
    return model


def safetensors_listing(path: Path) -> list[tuple[str, str, list[int]]]:
    with safe_open(str(path), framework="pt") as f:
        return [(n, f.get_slice(n).get_dtype(), list(f.get_slice(n).get_shape())) for n in sorted(f.keys())]


def check_reload(cls, out: Path, model, ids: list[int]) -> None:
    reloaded, info = cls.from_pretrained(str(out), attn_implementation="eager", output_loading_info=True)
    reloaded.eval()
    bad = {k: v for k, v in info.items() if v}
    assert not bad, bad
    x = torch.tensor([ids])
    with torch.no_grad():
        d = (reloaded(input_ids=x).logits - model(input_ids=x).logits).abs().max().item()
    assert d == 0.0, d
    print(f"[{out.name}] from_pretrained(dir): no missing/unexpected/mismatched keys, identical logits")


# ---------------------------------------------------------------- reference


def check_tokenizer(name: str, out: Path, texts: list[str]):
    """AutoTokenizer on the directory and tokenizers' Tokenizer.from_file(tokenizer.json) give the same
    ids for every text (add_special_tokens=False)."""
    hf = AutoTokenizer.from_pretrained(str(out))
    raw = Tokenizer.from_file(str(out / "tokenizer.json"))
    print(f"[{name}] AutoTokenizer: {type(hf).__name__}, {len(hf)} tokens (tokenizer.json: "
          f"{raw.get_vocab_size(with_added_tokens=True)})")
    assert len(hf) == raw.get_vocab_size(with_added_tokens=True)
    assert hf.get_vocab() == raw.get_vocab(with_added_tokens=True)
    for t in texts:
        a = hf(t, add_special_tokens=False)["input_ids"]
        b = raw.encode(t, add_special_tokens=False).ids
        assert a == b, (t, a, b)
    print(f"[{name}] tokenizer.json == AutoTokenizer on {len(texts)} prompt parts")
    print(f"[{name}] has prepare_for_model: {hasattr(hf, 'prepare_for_model')}")
    return hf, raw


def answer_logits(model, ids_list: list[list[int]], answer_ids: list[int], seq_cls: bool) -> torch.Tensor:
    rows = []
    with torch.no_grad():
        for ids in ids_list:
            out = model(input_ids=torch.tensor([ids])).logits
            rows.append(out[0] if seq_cls else out[0, -1, answer_ids])
    return torch.stack(rows).float()


def batched_answer_logits(model, hf, ids_list, answer_ids, seq_cls: bool) -> torch.Tensor:
    """Left padding with an attention mask, as the model cards batch (tokenizer.pad, padding_side left)."""
    hf.padding_side = "left"
    batch = hf.pad({"input_ids": ids_list}, padding=True, return_tensors="pt")
    assert (batch["attention_mask"][:, -1] == 1).all()
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return (out if seq_cls else out[:, -1, answer_ids]).float()


def run_case(name: str, model, hf, enc_hf: Enc, enc_raw: Enc, build_ids, answer_ids, case: dict,
             seq_cls: bool = False) -> dict:
    """Builds every pair's ids with upstream's calls and with tokenizer.json (must agree), runs them
    alone and batched (must agree), returns the case with ids and logits."""
    pairs = case["pairs"]
    ids_list = []
    for q, p in pairs:
        a = build_ids(enc_hf, q, p, case["instruction"], case["max_length"])
        b = build_ids(enc_raw, q, p, case["instruction"], case["max_length"])
        assert a == b, (name, case["name"], q[:30], p[:30])
        ids_list.append(a)
    t0 = time.time()
    single = answer_logits(model, ids_list, answer_ids, seq_cls)
    elapsed = time.time() - t0
    if len(pairs) > 1:
        diff = 0.0
        order = list(range(len(pairs)))[::-1]
        for group in (list(range(len(pairs))), order[: len(order) // 2], order[len(order) // 2:]):
            b = batched_answer_logits(model, hf, [ids_list[i] for i in group], answer_ids, seq_cls)
            diff = max(diff, (b - single[group]).abs().max().item())
        assert diff <= BATCH_TOLERANCE, diff
        print(f"[{name}] case {case['name']}: largest |batched - single| over three batches {diff:.3g}")
    lengths = [len(x) for x in ids_list]
    print(f"[{name}] case {case['name']} (max_length {case['max_length']}, instruction "
          f"{case['instruction']!r}): prompt lengths {lengths}, forward {elapsed:.1f}s")
    return {
        "name": case["name"],
        "max_length": case["max_length"],
        "instruction": case["instruction"],
        "pairs": [
            {"query": q, "passage": p, "input_ids": ids, "logits": [float(x) for x in single[i].tolist()]}
            for i, ((q, p), ids) in enumerate(zip(pairs, ids_list))
        ],
    }


def check_spread(name: str, cases: list[dict], k: int = 0) -> None:
    vals = torch.tensor([pr["logits"][k] for c in cases for pr in c["pairs"]])
    print(f"[{name}] answer {k} logits: min {vals.min():+.4f} max {vals.max():+.4f} std {vals.std():.4f}")
    assert (vals.max() - vals.min()).item() > 0.5, "logits barely vary between pairs"


def write_reference(out: Path, ref: dict) -> None:
    """Readable JSON: header keys one per line, each pair's fields one per line (ids on one line)."""
    lines = ["{"]
    for key, value in ref.items():
        if key != "cases":
            lines.append(f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)},")
    lines.append('  "cases": [')
    case_texts = []
    for case in ref["cases"]:
        head = [f"      {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in case.items() if k != "pairs"]
        items = []
        for pair in case["pairs"]:
            fields = [f"          {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in pair.items()]
            items.append("        {\n" + ",\n".join(fields) + "\n        }")
        case_texts.append("    {\n" + ",\n".join(head) + ',\n      "pairs": [\n' + ",\n".join(items) + "\n      ]\n    }")
    lines.append(",\n".join(case_texts))
    lines.append("  ]")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == ref
    (out / "reference.json").write_text(text, encoding="utf-8")


def report_dir(out: Path, model_limit: int = 1_000_000) -> None:
    print(f"[{out.name}] files:")
    for f in sorted(out.iterdir()):
        print(f"    {f.name:28} {f.stat().st_size:>8} bytes")
    assert (out / "model.safetensors").stat().st_size < model_limit
    print(f"[{out.name}] model.safetensors tensors:")
    for tname, dtype, shape in safetensors_listing(out / "model.safetensors"):
        print(f"    {tname:50} {dtype} {shape}")
    print(f"[{out.name}] config.json:\n{(out / 'config.json').read_text()}")


def header(architecture: str, template: str, answer_tokens, answer_ids, params: dict | None = None) -> dict:
    ref = {"transformers": transformers.__version__, "torch": torch.__version__, "tokenizers": tokenizers.__version__,
           "architecture": architecture, "template": template}
    if params:
        ref["template_params"] = params
    ref.update({"answer_tokens": answer_tokens, "answer_ids": answer_ids})
    return ref


def padded_vocab(n: int, multiple: int = 64) -> int:
    """The model's vocab_size: the tokenizer's rounded up, as Qwen's checkpoints pad it (151,936 rows
    for 151,669 tokens), so the embedding has rows no token reaches."""
    return (n + multiple - 1) // multiple * multiple


def truncated(case_pairs_ids: list[list[int]], full_pairs_ids: list[list[int]]) -> int:
    return sum(a != b for a, b in zip(case_pairs_ids, full_pairs_ids))


# ---------------------------------------------------------------- fixtures


def qwen3_parts(instruction: str | None, q: str, p: str) -> list[str]:
    inst = QWEN3_DEFAULT_INSTRUCTION if instruction is None else instruction
    return [QWEN3_PREFIX, QWEN3_SUFFIX, f"<Instruct>: {inst}\n<Query>: {q}\n<Document>: {p}"]


def long_passage(enc: Enc, target_prompt_len: int, query: str) -> str:
    """Corpus sentences repeated until the qwen3 prompt is about `target_prompt_len` tokens."""
    text = " ".join(CORPUS).replace("\n", " ")
    words = []
    while True:
        words += text.split(" ")
        n = len(qwen3_reranker_ids(enc, query, " ".join(words), None, 10**9))
        if n >= target_prompt_len:
            break
    lo, hi = 1, len(words)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(qwen3_reranker_ids(enc, query, " ".join(words[:mid]), None, 10**9)) >= target_prompt_len:
            hi = mid
        else:
            lo = mid + 1
    return " ".join(words[:lo])


def make_qwen3(out_dir: Path, base: Tokenizer | None) -> dict:
    name = "tiny-qwen3-reranker"
    out = out_dir / name
    tok = qwen_tokenizer(base, with_think=True)
    save_qwen_tokenizer(tok, out, with_think=True)
    ntok = tok.get_vocab_size(with_added_tokens=True)
    config = Qwen3Config(
        vocab_size=padded_vocab(ntok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, hidden_act="silu",
        max_position_embeddings=8192, rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        tie_word_embeddings=True, attention_bias=False, use_sliding_window=False,
        bos_token_id=tok.token_to_id("<|endoftext|>"), eos_token_id=tok.token_to_id("<|im_end|>"),
        architectures=["Qwen3ForCausalLM"],
    )
    model = build(Qwen3ForCausalLM, config, SEED_QWEN3, out)
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert "lm_head.weight" not in f.keys(), "tied: no lm_head.weight expected"
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (64, 32)

    texts = [t for inst in (None, CUSTOM_INSTRUCTION) for q, p in PAIRS for t in qwen3_parts(inst, q, p)]
    texts += ["yes", "no", "<think>", "</think>"]
    hf, raw = check_tokenizer(name, out, texts)
    enc_hf, enc_raw = Enc(hf=hf), Enc(raw=raw)
    for t in ("yes", "no", "<think>", "</think>"):
        assert len(enc_raw(t)) == 1, t
    answer_tokens = ["no", "yes"]
    answer_ids = [enc_hf.token_id(t) for t in answer_tokens]
    assert answer_ids == [enc_raw.token_id(t) for t in answer_tokens] == [enc_raw("no")[0], enc_raw("yes")[0]]
    print(f"[{name}] prefix {len(enc_raw(QWEN3_PREFIX))} tokens, suffix {len(enc_raw(QWEN3_SUFFIX))}; "
          f"answer ids {dict(zip(answer_tokens, answer_ids))}")
    print(f"[{name}] suffix tokens: {hf.convert_ids_to_tokens(enc_raw(QWEN3_SUFFIX))}")

    def build_ids(enc, q, p, inst, max_length):
        return qwen3_reranker_ids(enc, q, p, inst, max_length)

    fixed = len(enc_raw(QWEN3_PREFIX)) + len(enc_raw(QWEN3_SUFFIX))
    inst_len = len(enc_raw(f"<Instruct>: {QWEN3_DEFAULT_INSTRUCTION}\n<Query>: "))
    short = fixed + inst_len + 24  # room for the instruction, a short query and a bit of passage
    cases = [
        {"name": "default", "max_length": QWEN3_MAX_LENGTH, "instruction": None, "pairs": PAIRS},
        {"name": "truncated", "max_length": short, "instruction": None, "pairs": PAIRS},
        {"name": "instruction", "max_length": QWEN3_MAX_LENGTH, "instruction": CUSTOM_INSTRUCTION, "pairs": PAIRS},
    ]
    done = [run_case(name, model, hf, enc_hf, enc_raw, build_ids, answer_ids, c) for c in cases]
    n_cut = truncated([p["input_ids"] for p in done[1]["pairs"]], [p["input_ids"] for p in done[0]["pairs"]])
    assert 3 <= n_cut < len(PAIRS), n_cut
    assert max(len(p["input_ids"]) for p in done[1]["pairs"]) == short
    print(f"[{name}] truncated case: {n_cut} of {len(PAIRS)} prompts cut to {short}")

    # The long case: about 8,000 tokens if transformers runs it in under a minute, else about 4,000.
    long_query = "what does the river carry"
    target = LONG_TARGET
    passage = long_passage(enc_raw, target, long_query)
    t0 = time.time()
    answer_logits(model, [qwen3_reranker_ids(enc_raw, long_query, passage, None, QWEN3_MAX_LENGTH)], answer_ids, False)
    elapsed = time.time() - t0
    print(f"[{name}] {target}-token prompt: {elapsed:.1f}s in transformers")
    if elapsed > LONG_SECONDS_LIMIT:
        target = 4000
        passage = long_passage(enc_raw, target, long_query)
    long_case = {"name": "long", "max_length": QWEN3_MAX_LENGTH, "instruction": None, "pairs": [(long_query, passage)]}
    done.append(run_case(name, model, hf, enc_hf, enc_raw, build_ids, answer_ids, long_case))
    check_spread(name, done, 0)
    check_spread(name, done, 1)

    check_reload(Qwen3ForCausalLM, out, model, done[0]["pairs"][0]["input_ids"])
    ref = header("Qwen3ForCausalLM", "qwen3_reranker", answer_tokens, answer_ids)
    ref["cases"] = done
    write_reference(out, ref)
    report_dir(out)
    return {"model": model, "tok": tok, "cases": cases + [long_case], "ref": ref, "answer_ids": answer_ids}


def make_qwen3_seq_cls(out_dir: Path, qwen3: dict) -> None:
    """vLLM's from_2_way_softmax conversion of tiny-qwen3-reranker."""
    name = "tiny-qwen3-reranker-seq-cls"
    out = out_dir / name
    tok = qwen3["tok"]
    save_qwen_tokenizer(tok, out, with_think=True)
    causal = qwen3["model"]
    config = Qwen3Config.from_dict(causal.config.to_dict())
    config.architectures = ["Qwen3ForSequenceClassification"]
    config.num_labels = 1
    config.pad_token_id = tok.token_to_id("<|endoftext|>")  # tokenizer.pad_token_id
    config.use_pad_token = False  # what vLLM's convert_model_to_seq_cls.py writes
    torch.manual_seed(0)
    model = Qwen3ForSequenceClassification._from_config(config, attn_implementation="eager")
    model.eval()
    missing, unexpected = model.model.load_state_dict(causal.model.state_dict(), strict=True)
    assert not missing and not unexpected
    false_id, true_id = qwen3["answer_ids"]
    lm_head = causal.lm_head.weight
    assert lm_head.data_ptr() == causal.model.embed_tokens.weight.data_ptr(), "tied"
    with torch.no_grad():
        model.score.weight.copy_((lm_head[true_id].float() - lm_head[false_id].float()).unsqueeze(0))
        assert model.score.bias is None
    model.save_pretrained(str(out), safe_serialization=True)

    hf = AutoTokenizer.from_pretrained(str(out))
    raw = Tokenizer.from_file(str(out / "tokenizer.json"))
    enc_hf, enc_raw = Enc(hf=hf), Enc(raw=raw)

    def build_ids(enc, q, p, inst, max_length):
        return qwen3_reranker_ids(enc, q, p, inst, max_length)

    done = [run_case(name, model, hf, enc_hf, enc_raw, build_ids, None, c, seq_cls=True) for c in qwen3["cases"]]
    worst = 0.0
    for case, causal_case in zip(done, qwen3["ref"]["cases"]):
        for pr, cp in zip(case["pairs"], causal_case["pairs"]):
            assert pr["input_ids"] == cp["input_ids"]
            worst = max(worst, abs(pr["logits"][0] - (cp["logits"][1] - cp["logits"][0])))
    assert worst <= SEQ_CLS_TOLERANCE, worst
    print(f"[{name}] score == logit(yes) - logit(no) of tiny-qwen3-reranker: largest difference {worst:.3g}")
    check_spread(name, done, 0)
    check_reload(Qwen3ForSequenceClassification, out, model, done[0]["pairs"][0]["input_ids"])
    ref = header("Qwen3ForSequenceClassification", "qwen3_reranker", ["no", "yes"], list(qwen3["answer_ids"]),
                 {"converted_from": "tiny-qwen3-reranker", "score": "score.weight = row(yes) - row(no)"})
    ref["cases"] = done
    write_reference(out, ref)
    report_dir(out)


def make_qwen2(out_dir: Path, base: Tokenizer | None) -> None:
    name = "tiny-qwen2-reranker"
    out = out_dir / name
    tok = qwen_tokenizer(base, with_think=False)
    save_qwen_tokenizer(tok, out, with_think=False)
    ntok = tok.get_vocab_size(with_added_tokens=True)
    config = Qwen2Config(
        vocab_size=padded_vocab(ntok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, hidden_act="silu", max_position_embeddings=8192,
        rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1e4}, tie_word_embeddings=False,
        use_sliding_window=False, bos_token_id=tok.token_to_id("<|endoftext|>"),
        eos_token_id=tok.token_to_id("<|im_end|>"), architectures=["Qwen2ForCausalLM"],
    )
    model = build(Qwen2ForCausalLM, config, SEED_QWEN2, out)
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert "lm_head.weight" in keys and "model.layers.0.self_attn.q_proj.bias" in keys
    model_max_length = config.max_position_embeddings  # mxbai's newest version reads the model config

    texts = [MXBAI_PREFIX, MXBAI_SUFFIX, MXBAI_TASK_PROMPT, MXBAI_SEP, "0", "1"]
    for q, p in PAIRS:
        texts += [MXBAI_QUERY_PROMPT.format(query=q), MXBAI_DOC_PROMPT.format(document=p),
                  MXBAI_INSTRUCTION_PROMPT.format(instruction=CUSTOM_INSTRUCTION) + MXBAI_SEP + MXBAI_QUERY_PROMPT.format(query=q)]
    hf, raw = check_tokenizer(name, out, texts)
    enc_hf, enc_raw = Enc(hf=hf), Enc(raw=raw)
    answer_tokens = ["0", "1"]
    answer_ids = [enc_hf("0")[0], enc_hf("1")[0]]  # mxbai: tokenizer(x, add_special_tokens=False)["input_ids"][0]
    assert answer_ids == [enc_raw("0")[0], enc_raw("1")[0]] == [enc_raw.token_id("0"), enc_raw.token_id("1")]
    assert len(enc_raw("0")) == len(enc_raw("1")) == len(enc_raw("\n")) == 1
    predefined = mxbai_predefined_length(enc_raw)
    print(f"[{name}] predefined length {predefined} (prefix {len(enc_raw(MXBAI_PREFIX))}, task "
          f"{len(enc_raw(MXBAI_TASK_PROMPT))}, suffix {len(enc_raw(MXBAI_SUFFIX))}, sep 1); "
          f"answer ids {dict(zip(answer_tokens, answer_ids))}")

    def build_ids(enc, q, p, inst, max_length):
        return mxbai_rerank_v2_ids(enc, q, p, inst, max_length, model_max_length)

    short = 48
    cases = [
        {"name": "default", "max_length": MXBAI_MAX_LENGTH, "instruction": None, "pairs": PAIRS},
        {"name": "truncated", "max_length": short, "instruction": None, "pairs": PAIRS},
        {"name": "instruction", "max_length": MXBAI_MAX_LENGTH, "instruction": CUSTOM_INSTRUCTION, "pairs": PAIRS},
    ]
    done = [run_case(name, model, hf, enc_hf, enc_raw, build_ids, answer_ids, c) for c in cases]
    n_cut = truncated([p["input_ids"] for p in done[1]["pairs"]], [p["input_ids"] for p in done[0]["pairs"]])
    assert 3 <= n_cut < len(PAIRS), n_cut
    assert max(len(p["input_ids"]) for p in done[1]["pairs"]) == short + predefined
    # The both-long pair: its query is cut to 3/4 of max_length, the document gets the rest.
    both_long = done[1]["pairs"][PAIRS.index((LONG_QUERY, LONG_PASSAGE))]["input_ids"]
    assert len(enc_raw(MXBAI_QUERY_PROMPT.format(query=LONG_QUERY))) > short * 3 // 4
    assert len(both_long) == short + predefined
    print(f"[{name}] truncated case: {n_cut} of {len(PAIRS)} prompts cut (middle {short}, query cap {short * 3 // 4})")
    check_spread(name, done, 0)
    check_spread(name, done, 1)
    check_reload(Qwen2ForCausalLM, out, model, done[0]["pairs"][0]["input_ids"])
    ref = header("Qwen2ForCausalLM", "mxbai_rerank_v2", answer_tokens, answer_ids,
                 {"model_max_length": model_max_length, "predefined_length": predefined})
    ref["cases"] = done
    write_reference(out, ref)
    report_dir(out)


def make_gemma(out_dir: Path, tok: Tokenizer | None) -> None:
    name = "tiny-gemma-reranker"
    out = out_dir / name
    tok = gemma_pipeline(Tokenizer.from_str(tok.to_str())) if tok is not None else train_gemma_bpe()
    assert [tok.token_to_id(t) for t in GEMMA_SPECIALS] == [0, 1, 2, 3, 4]
    assert tok.token_to_id("<0x00>") == 5 and tok.token_to_id("<0xFF>") == 260
    save_gemma_tokenizer(tok, out)
    ntok = tok.get_vocab_size(with_added_tokens=True)
    config = GemmaConfig(
        vocab_size=ntok, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=16, hidden_act="gelu_pytorch_tanh", max_position_embeddings=2048,
        rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=True,
        attention_bias=False, pad_token_id=0, eos_token_id=1, bos_token_id=2, architectures=["GemmaForCausalLM"],
    )
    model = build(GemmaForCausalLM, config, SEED_GEMMA, out, gemma_norms=True)
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert "lm_head.weight" not in f.keys()

    texts = [BGE_PROMPT, CUSTOM_BGE_PROMPT, BGE_SEP, "Yes"]
    for q, p in PAIRS:
        texts += [f"A: {q}", f"B: {p}"]
    hf, raw = check_tokenizer(name, out, texts)
    enc_hf, enc_raw = Enc(hf=hf), Enc(raw=raw)
    bos = hf.bos_token_id
    assert bos == 2 and hf.pad_token_id == 0
    answer_tokens = ["Yes"]
    answer_ids = [enc_hf("Yes")[0]]  # tokenizer('Yes', add_special_tokens=False)['input_ids'][0]
    assert answer_ids == [enc_raw("Yes")[0]]
    fallback = [t for t in hf.convert_ids_to_tokens(enc_raw(f"B: {PAIRS[3][1]}")) if t.startswith("<0x")]
    assert fallback, "the ☃/🚀 pair should fall back to byte tokens"
    print(f"[{name}] 'Yes' -> {hf.convert_ids_to_tokens(enc_raw('Yes'))}; byte-fallback tokens in pair 4: {fallback}; "
          f"prompt {len(enc_raw(BGE_PROMPT))} tokens; sep {enc_raw(BGE_SEP)}")

    def build_ids(enc, q, p, inst, max_length):
        return bge_gemma_ids(enc, q, p, inst, max_length, bos)

    short = 48
    cases = [
        {"name": "default", "max_length": BGE_MAX_LENGTH, "instruction": None, "pairs": PAIRS},
        {"name": "truncated", "max_length": short, "instruction": None, "pairs": PAIRS},
        {"name": "instruction", "max_length": BGE_MAX_LENGTH, "instruction": CUSTOM_BGE_PROMPT, "pairs": PAIRS},
    ]
    done = [run_case(name, model, hf, enc_hf, enc_raw, build_ids, answer_ids, c) for c in cases]
    n_cut = truncated([p["input_ids"] for p in done[1]["pairs"]], [p["input_ids"] for p in done[0]["pairs"]])
    assert 3 <= n_cut < len(PAIRS), n_cut
    tail = len(enc_raw(BGE_SEP)) + len(enc_raw(BGE_PROMPT))
    assert max(len(p["input_ids"]) for p in done[1]["pairs"]) == short + tail
    assert len(enc_raw(f"A: {LONG_QUERY}")) > short * 3 // 4
    assert all(p["input_ids"][0] == bos for c in done for p in c["pairs"])
    print(f"[{name}] truncated case: {n_cut} of {len(PAIRS)} prompts cut ([bos]+A+sep+B <= {short}, A <= {short * 3 // 4})")
    check_spread(name, done, 0)
    check_reload(GemmaForCausalLM, out, model, done[0]["pairs"][0]["input_ids"])
    ref = header("GemmaForCausalLM", "bge_gemma", answer_tokens, answer_ids, {"bos_token_id": bos})
    ref["cases"] = done
    write_reference(out, ref)
    report_dir(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent.parent / "tests" / "data")
    parser.add_argument("--retrain-tokenizers", action="store_true",
                        help="train new tokenizers even where tokenizer.json exists (changes every id)")
    parser.add_argument("--only", action="append", metavar="DIR",
                        help="tiny-qwen3-reranker (with its -seq-cls), tiny-qwen2-reranker or tiny-gemma-reranker; repeatable")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, tokenizers {tokenizers.__version__}")

    def existing(dirname: str) -> Tokenizer | None:
        path = args.out_dir / dirname / "tokenizer.json"
        if path.exists() and not args.retrain_tokenizers:
            print(f"[{dirname}] reusing the existing {path}")
            return Tokenizer.from_file(str(path))
        return None

    def fresh(dirname: str) -> None:
        out = args.out_dir / dirname
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)

    want = lambda d: not args.only or d in args.only  # noqa: E731
    qwen_base = None
    if want("tiny-qwen3-reranker") or want("tiny-qwen2-reranker"):
        # Both Qwen fixtures share one byte-level BPE; the added tokens are stripped and re-added.
        for d in ("tiny-qwen3-reranker", "tiny-qwen2-reranker"):
            saved = existing(d)
            if saved is not None:
                data = json.loads(saved.to_str())
                n_model = len(data["model"]["vocab"])
                assert all(a["id"] >= n_model for a in data["added_tokens"])
                data["added_tokens"] = []
                qwen_base = Tokenizer.from_str(json.dumps(data))
                break
        if qwen_base is None:
            print("[qwen] training a byte-level BPE")
            qwen_base = train_qwen_bpe()
    if want("tiny-qwen3-reranker"):
        fresh("tiny-qwen3-reranker")
        fresh("tiny-qwen3-reranker-seq-cls")
        qwen3 = make_qwen3(args.out_dir, qwen_base)
        make_qwen3_seq_cls(args.out_dir, qwen3)
    if want("tiny-qwen2-reranker"):
        fresh("tiny-qwen2-reranker")
        make_qwen2(args.out_dir, qwen_base)
    if want("tiny-gemma-reranker"):
        saved = existing("tiny-gemma-reranker")
        fresh("tiny-gemma-reranker")
        make_gemma(args.out_dir, saved)


if __name__ == "__main__":
    main()
