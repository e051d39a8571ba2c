#!/usr/bin/env python3
"""Writes tiny random-weight cross-encoders, with transformers reference logits, for xbench's tests.

One per architecture xbench loads (tiny-bert, tiny-xlm-roberta, tiny-roberta, tiny-camembert,
tiny-distilbert, tiny-electra, tiny-modernbert, tiny-deberta-v2; each maker's docstring says what
it exercises) and tiny-xlm-roberta-8k for long pairs. The first three are described below.

Output (under --out-dir, default tests/data/ of this repository):

* tiny-xlm-roberta/: an XLMRobertaForSequenceClassification (hidden 32, 2 layers, 4 heads, FFN 64,
  GELU, 66 position embeddings with padding_idx 1, so 64 usable positions; one label) and a
  SentencePiece-style Unigram tokenizer trained here with the `tokenizers` library: no normalizer,
  WhitespaceSplit + Metaspace("▁", prepend "always") pre-tokenizer (exactly the pipeline transformers
  5's XLMRobertaTokenizer rebuilds from tokenizer.json), special tokens <s>=0 <pad>=1 </s>=2 <unk>=3
  <mask>=4, pair template "<s> A </s> </s> B </s>" with every type id 0.
* tiny-distilbert/: a DistilBertForSequenceClassification (dim 32, 2 layers, 4 heads, hidden_dim 64,
  GELU, 64 learned positions; three labels irrelevant/partial/relevant) and a lowercasing BERT
  WordPiece tokenizer trained here: BertNormalizer, BertPreTokenizer, [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3
  [MASK]=4, pair template "[CLS] A [SEP] B [SEP]" with type ids 0 for A (and its [CLS]/[SEP]) and 1
  for B.
* tiny-bert/: a BertForSequenceClassification (hidden 32, 2 layers, 4 heads, FFN 64, gelu_new, i.e.
  GELU's tanh approximation, 64 learned positions, two token types; two labels) with tiny-distilbert's
  WordPiece tokenizer (copied: the same pipeline and template, type ids 0 for A and 1 for B, which
  BERT's token type table reads).

Each directory holds config.json, model.safetensors (every weight, under transformers' own names),
tokenizer.json, tokenizer_config.json, special_tokens_map.json and reference.json:

    {"transformers": ..., "torch": ..., "max_length": 64,
     "pairs": [{"query", "passage", "input_ids", "token_type_ids", "logits"}, ...]}

The ids come from transformers.AutoTokenizer on the directory, called with lists as cross-encoders
call it (so an empty passage still gets the pair template), truncation=True, max_length=64
(longest_first); the logits are fp32, eager attention, eval mode, the pair run alone (no padding).
The script checks that padded batches give the same logits (1e-5), that the tokenizer.json read by
`tokenizers.Tokenizer.from_file` (what the Rust side uses) encodes every pair to the same ids and type
ids as AutoTokenizer, that the saved checkpoint reloads with no missing or unexpected weights, and
(for XLM-R) that positions start at padding_idx + 1 = 2.

Training a tokenizer with `tokenizers` is not reproducible: its trainers break ties in hash-map order
(the WordPiece vocabulary and the Unigram scores change from run to run), so an existing tokenizer.json
is kept and reused unless --retrain-tokenizers is given. Weights are drawn from torch.manual_seed and
depend only on the vocabulary size (400 for both), so a rerun over the committed tokenizers rewrites
the same bytes. Needs torch, transformers (5.x) and tokenizers; run from anywhere with:

    .venv-peers/bin/python scripts/make_tiny_architectures.py [--out-dir tests/data] [--only tiny-bert] [--retrain-tokenizers]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # quiet the fork warning

import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    CamembertConfig,
    CamembertForSequenceClassification,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    ModernBertConfig,
    ModernBertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
)

MAX_LENGTH = 64
VOCAB_SIZE = 400
SEED_XLMR = 20240611
SEED_DISTILBERT = 20240612
SEED_BERT = 20261201
SEED_ROBERTA = 20261202
SEED_CAMEMBERT = 20261203
SEED_ELECTRA = 20261204
SEED_LONG = 20261205
SEED_MODERNBERT = 20261206
SEED_DEBERTA = 20261207
BATCH_TOLERANCE = 1e-5

CORPUS = [
    "A search engine ranks documents by how well they answer the query.",
    "Cross-encoders read the query and the passage together and output a relevance score.",
    "The index stores every term with the list of documents that contain it.",
    "Rerankers are slower than retrievers, so they only see the top hundred candidates.",
    "Users type short queries and expect the best answer in the first few results.",
    "Precision measures how many of the returned results are relevant to the question.",
    "To cook rice, rinse it twice, add water, and simmer it covered for fifteen minutes.",
    "Fresh bread needs flour, water, salt, yeast and a long, slow rise overnight.",
    "Season the steak with salt and pepper, then sear it in a very hot pan.",
    "A good soup starts with onions, garlic and carrots softened in olive oil.",
    "The chef served a crème brûlée and a café au lait after the jalapeño salsa.",
    "Bake the cake at one hundred eighty degrees until a knife comes out clean.",
    "Rivers form when rain water collects in streams and flows downhill to the sea.",
    "The Danube flows through Vienna, Budapest and Belgrade before reaching the Black Sea.",
    "Floods happen when a river carries more water than its banks can hold.",
    "Salmon swim upstream every autumn to lay their eggs in cold mountain rivers.",
    "Die Flüsse in Österreich fließen meist nach Osten zur Donau.",
    "The delta of a river is built from sand and mud carried down from the mountains.",
    "Rust uses a borrow checker so that references never outlive the data they point to.",
    "Python is a programming language that is easy to read and quick to write.",
    "A compiler translates source code into machine code that the processor can run.",
    "Unit tests check that each function returns the expected value for known inputs.",
    "The program reads the file line by line and counts how often each word appears.",
    "Threads share memory, so every access to shared data needs a lock or an atomic.",
    "Matrix multiplication is the most expensive step of a transformer forward pass.",
    "A tokenizer splits text into pieces and maps each piece to an integer id.",
    "Attention lets every token look at every other token in the same sequence.",
    "The train leaves Zürich at noon and reaches São Paulo never, because it is a train.",
    "Her résumé lists a naïve fiancée, a piñata and a smörgåsbord as hobbies.",
    "Dvořák wrote the New World Symphony; Ångström measured light in tiny units.",
    "The façade of the old library was restored in the spring of last year.",
    "Mountains are cold at the top because the air there is thin and dry.",
    "The weather today is sunny with a light wind from the north.",
    "Children learn to read by sounding out letters and then whole words.",
    "Coffee beans are roasted, ground and brewed with hot water.",
    "The museum opens at nine in the morning and closes at six in the evening.",
    "Electric cars store energy in batteries and need a charger to refill them.",
    "A healthy diet includes vegetables, fruit, whole grains and enough water.",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar and oxygen.",
    "The history of the city goes back more than two thousand years.",
    "Gardeners water their tomatoes in the evening so the leaves stay dry.",
    "Vocabulary tests: crème, café, naïve, façade, jalapeño, Straße, Ωmega, αβγ.",
]

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
    ("best way to cook rice", "Rinse the rice twice, add water, and simmer it covered for fifteen minutes."),
    ("rust borrow checker", "Season the steak with salt and pepper, then sear it in a very hot pan."),
    ("what does a reranker do", ""),
    ("", "A search engine ranks documents by how well they answer the query."),
    ("recette de crème brûlée", "La crème brûlée est un dessert français à base de crème et de sucre caramélisé."),
    ("Flüsse in Österreich", "Die Donau fließt durch Wien und Budapest bis zum Schwarzen Meer."),
    ("quantum chromodynamics 量子 🚀", "Zyxwvq jjjkkk 東京 ☃ ✨ sésquipedalian quokkas vex wizards."),
    ("Python", "Python is a programming language that is easy to read."),
    ("a", "b"),
    ("SEARCH ENGINE Ranking?!", "Precision@10 = 0.73; recall@100 = 0.91 (BM25 + cross-encoder)."),
    ("  multiple   spaces\tand\ttabs ", "line one\nline two\n\nline four"),
    ("electric car battery", "Electric cars store energy in batteries and need a charger to refill them."),
    ("coffee", "The museum opens at nine in the morning and closes at six in the evening."),
    (LONG_QUERY, LONG_PASSAGE),
    ("how do rivers flood", LONG_PASSAGE + " " + LONG_PASSAGE),
    (LONG_QUERY + " " + LONG_QUERY, "simmer rice fifteen minutes"),
]


# ---------------------------------------------------------------- tokenizers


XLMR_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
# CamemBERT's vocabulary opens with unused copies of the specials; its <s> and </s> come later.
DEBERTA_SPECIALS = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
CAMEMBERT_SPECIALS = ["<s>NOTUSED", "<pad>", "</s>NOTUSED", "<unk>", "<unk>NOTUSED", "<s>", "</s>", "<mask>"]


def train_unigram(specials: list[str] = XLMR_SPECIALS) -> Tokenizer:
    """SentencePiece-style Unigram with the pipeline transformers 5's XLMRobertaTokenizer (and
    CamembertTokenizer) rebuilds."""
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=specials,
        unk_token="<unk>",
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))],
    )
    return tok


def train_byte_level_bpe() -> Tokenizer:
    """GPT-2-style byte-level BPE with the pipeline transformers 5's RobertaTokenizer rebuilds
    (ByteLevel pre-tokenizer without a prefix space, RobertaProcessing: `<s> A </s></s> B </s>`)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=XLMR_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")), trim_offsets=True, add_prefix_space=False
    )
    return tok


def train_wordpiece() -> Tokenizer:
    """Lowercasing BERT WordPiece with the pipeline transformers 5's BertTokenizer rebuilds."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return tok


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def save_tokenizer(tok: Tokenizer, out: Path, specials: dict, config: dict) -> None:
    tok.no_truncation()
    tok.no_padding()
    tok.save(str(out / "tokenizer.json"))
    write_json(out / "special_tokens_map.json", specials)
    write_json(out / "tokenizer_config.json", {**config, **specials, "model_max_length": MAX_LENGTH})


# ---------------------------------------------------------------- weights


@torch.no_grad()
def spread_weights(model: torch.nn.Module) -> None:
    """Re-draws every parameter with a larger spread than the default init, so logits vary."""
    touched = set()
    for mname, module in model.named_modules():
        prefix = f"{mname}." if mname else ""
        if isinstance(module, torch.nn.Linear):
            module.weight.normal_(0.0, 0.25)
            module.bias.normal_(0.0, 0.1)
            touched |= {prefix + "weight", prefix + "bias"}
        elif isinstance(module, torch.nn.Embedding):
            module.weight.normal_(0.0, 0.25)  # padding rows too: they must never matter
            touched.add(prefix + "weight")
        elif isinstance(module, torch.nn.LayerNorm):
            module.weight.copy_(1.0 + 0.1 * torch.randn_like(module.weight))
            module.bias.normal_(0.0, 0.1)
            touched |= {prefix + "weight", prefix + "bias"}
    names = {n for n, _ in model.named_parameters()}
    assert names == touched, f"parameters not re-drawn: {sorted(names - touched)}"


def safetensors_listing(path: Path) -> list[tuple[str, str, list[int]]]:
    rows = []
    with safe_open(str(path), framework="pt") as f:
        for name in sorted(f.keys()):
            sl = f.get_slice(name)
            rows.append((name, sl.get_dtype(), list(sl.get_shape())))
    return rows


def build(cls, config, seed: int, out: Path):
    """`cls` from `config` with weights drawn from `seed` (spread_weights), eager attention, eval
    mode, saved to `out`."""
    torch.manual_seed(seed)
    model = cls._from_config(config, attn_implementation="eager")
    spread_weights(model)
    model.eval()
    assert model.config._attn_implementation == "eager"
    model.save_pretrained(str(out), safe_serialization=True)
    return model


# ---------------------------------------------------------------- reference


def forward(model, batch: dict) -> torch.Tensor:
    """The model on what its tokenizer returns: token type ids only where the tokenizer's
    `model_input_names` has them (as sentence-transformers' CrossEncoder passes `**features`)."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    with torch.no_grad():
        return model(**inputs).logits.float()


def encode_pair(hf, q: str, p: str, **kwargs) -> dict:
    """One pair through the list API, as cross-encoders call it.

    Called with two plain strings, transformers treats an empty passage as no passage at all
    (`if text_pair` is false) and applies the single-sequence template; with lists it keeps the
    pair template "<s> q </s></s></s>", which is also what tokenizers' `encode(q, "")` gives.
    """
    enc = hf([q], [p], **kwargs)
    return {k: v[0] for k, v in enc.items()}


def type_ids_as_passed(hf, enc: dict) -> list[int]:
    """The token type ids the model sees: the tokenizer's when its `model_input_names` lists them,
    else none, which the model reads as zeros."""
    if "token_type_ids" in hf.model_input_names:
        return list(enc["token_type_ids"])
    assert "token_type_ids" not in enc
    return [0] * len(enc["input_ids"])


def check_and_reference(name: str, out: Path, model, num_labels: int) -> dict:
    hf = AutoTokenizer.from_pretrained(str(out))
    raw = Tokenizer.from_file(str(out / "tokenizer.json"))
    print(f"[{name}] AutoTokenizer class: {type(hf).__name__}, vocab {len(hf)}, "
          f"model_max_length {hf.model_max_length}")
    assert len(hf) == raw.get_vocab_size(with_added_tokens=True) == model.config.vocab_size

    # 1. AutoTokenizer and the raw tokenizer.json agree, untruncated and truncated.
    raw_trunc = Tokenizer.from_file(str(out / "tokenizer.json"))
    raw_trunc.enable_truncation(MAX_LENGTH, strategy="longest_first")
    n_unk = 0
    # The type ids compared are tokenizer.json's: the model sees them only where the tokenizer's
    # model_input_names lists token_type_ids (type_ids_as_passed).
    passes_types = "token_type_ids" in hf.model_input_names
    for q, p in PAIRS:
        full = encode_pair(hf, q, p, return_token_type_ids=True)
        enc = raw.encode(q, p)
        assert full["input_ids"] == enc.ids, (q, p, full["input_ids"], enc.ids)
        assert full["token_type_ids"] == enc.type_ids, (q, p)
        cut = encode_pair(hf, q, p, truncation=True, max_length=MAX_LENGTH, return_token_type_ids=True)
        enc_cut = raw_trunc.encode(q, p)
        assert cut["input_ids"] == enc_cut.ids and cut["token_type_ids"] == enc_cut.type_ids, (q, p)
        n_unk += enc.ids.count(hf.unk_token_id)
    print(f"[{name}] tokenizer.json == AutoTokenizer on all {len(PAIRS)} pairs "
          f"(with and without truncation); {n_unk} unknown tokens in all")
    sample = encode_pair(hf, "how do rivers form", "Rivers flow.")
    print(f"[{name}] sample pair tokens: {hf.convert_ids_to_tokens(sample['input_ids'])}")
    print(f"[{name}] sample pair type ids (tokenizer.json): "
          f"{encode_pair(hf, 'how do rivers form', 'Rivers flow.', return_token_type_ids=True)['token_type_ids']}; "
          f"model_input_names {hf.model_input_names}: the model {'sees' if passes_types else 'does not see'} them")

    # 2. Logits: each pair alone, and all pairs in one padded batch.
    encs = [encode_pair(hf, q, p, truncation=True, max_length=MAX_LENGTH) for q, p in PAIRS]
    single = []
    for e in encs:
        one = {k: torch.tensor([v]) for k, v in e.items()}
        single.append(forward(model, one)[0])
    single = torch.stack(single)
    batch = hf([q for q, _ in PAIRS], [p for _, p in PAIRS], truncation=True, max_length=MAX_LENGTH,
               padding=True, return_tensors="pt")
    batched = forward(model, batch)
    diff = (batched - single).abs().max().item()
    print(f"[{name}] batch padded to {batch['input_ids'].shape[1]}: max |batched - single| = {diff:.3g}")
    assert diff <= BATCH_TOLERANCE, diff
    # A second batch split and order (reversed, two halves) for good measure.
    order = list(range(len(PAIRS)))[::-1]
    for half in (order[: len(order) // 2], order[len(order) // 2 :]):
        b = hf([PAIRS[i][0] for i in half], [PAIRS[i][1] for i in half], truncation=True,
               max_length=MAX_LENGTH, padding=True, return_tensors="pt")
        d = (forward(model, b) - single[half]).abs().max().item()
        assert d <= BATCH_TOLERANCE, d
        diff = max(diff, d)
    print(f"[{name}] largest batched-vs-single difference over three batches: {diff:.3g}")

    lengths = [len(e["input_ids"]) for e in encs]
    print(f"[{name}] pair lengths (tokens): {lengths}")
    assert max(lengths) == MAX_LENGTH and sum(n == MAX_LENGTH for n in lengths) >= 2
    for j in range(num_labels):
        col = single[:, j]
        print(f"[{name}] label {j} logits: min {col.min().item():+.4f} max {col.max().item():+.4f} "
              f"spread {(col.max() - col.min()).item():.4f} std {col.std().item():.4f}")
        assert (col.max() - col.min()).item() > 0.5, "logits barely vary between pairs"

    # 3. The saved checkpoint reloads with every weight and gives the same logits.
    reloaded, info = type(model).from_pretrained(str(out), attn_implementation="eager", output_loading_info=True)
    reloaded.eval()
    bad = {k: v for k, v in info.items() if v}
    assert not bad, bad
    d = (forward(reloaded, batch) - batched).abs().max().item()
    assert d <= 1e-6, d
    print(f"[{name}] from_pretrained(dir): no missing/unexpected/mismatched keys, max |Δlogit| {d:.3g}")

    return {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "max_length": MAX_LENGTH,
        "pairs": [
            {
                "query": q,
                "passage": p,
                "input_ids": e["input_ids"],
                "token_type_ids": type_ids_as_passed(hf, e),
                "logits": [float(x) for x in single[i].tolist()],
            }
            for i, ((q, p), e) in enumerate(zip(PAIRS, encs))
        ],
    }


def write_reference(out: Path, ref: dict) -> None:
    """One key per line for the pairs, the id lists on one line each."""
    lines = ["{"]
    for key in ("transformers", "torch", "max_length"):
        lines.append(f"  {json.dumps(key)}: {json.dumps(ref[key])},")
    lines.append('  "pairs": [')
    items = []
    for pair in ref["pairs"]:
        fields = [f"      {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in pair.items()]
        items.append("    {\n" + ",\n".join(fields) + "\n    }")
    lines.append(",\n".join(items))
    lines.append("  ]")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == ref
    (out / "reference.json").write_text(text, encoding="utf-8")


def report_dir(name: str, out: Path, limit: int = 400_000) -> None:
    print(f"[{name}] files:")
    total = 0
    for f in sorted(out.iterdir()):
        total += f.stat().st_size
        print(f"    {f.name:28} {f.stat().st_size:>8} bytes")
    print(f"    {'total':28} {total:>8} bytes")
    assert total < limit, total
    print(f"[{name}] model.safetensors tensors:")
    for tname, dtype, shape in safetensors_listing(out / "model.safetensors"):
        print(f"    {tname:55} {dtype} {shape}")
    print(f"[{name}] config.json:\n{(out / 'config.json').read_text()}")


# ---------------------------------------------------------------- models


def make_xlm_roberta(out: Path, tok: Tokenizer | None) -> None:
    name = "tiny-xlm-roberta"
    tok = tok or train_unigram()
    assert tok.get_vocab_size(with_added_tokens=True) == VOCAB_SIZE
    assert [tok.token_to_id(t) for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")] == [0, 1, 2, 3, 4]
    specials = {"bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
                "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>"}
    save_tokenizer(tok, out, specials, {"tokenizer_class": "XLMRobertaTokenizer", "add_prefix_space": True})

    config = XLMRobertaConfig(
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_act="gelu",
        max_position_embeddings=MAX_LENGTH + 2,
        type_vocab_size=1,
        num_labels=1,
        layer_norm_eps=1e-5,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
        architectures=["XLMRobertaForSequenceClassification"],
    )
    model = build(XLMRobertaForSequenceClassification, config, SEED_XLMR, out)

    # Positions: pad id 1, so the first real token sits at padding_idx + 1 = 2.
    ids = torch.tensor([[0, 10, 11, 2, 2, 12, 2, 1, 1]])
    pos = model.roberta.embeddings.create_position_ids_from_input_ids(ids, 1)
    print(f"[{name}] position ids for {ids.tolist()[0]}: {pos.tolist()[0]}")
    assert pos.tolist()[0] == [2, 3, 4, 5, 6, 7, 8, 1, 1]
    e = AutoTokenizer.from_pretrained(str(out))("how do rivers form", "Rivers flow.", return_tensors="pt")
    n = e["input_ids"].shape[1]
    implicit = forward(model, e)
    with torch.no_grad():
        explicit = model(**e, position_ids=torch.arange(2, 2 + n)[None]).logits
        shifted = model(**e, position_ids=torch.arange(0, n)[None]).logits
    assert torch.equal(implicit, explicit), (implicit, explicit)
    print(f"[{name}] logits with explicit positions 2..{n + 1} == implicit ({implicit.item():+.5f}); "
          f"positions 0..{n - 1} would give {shifted.item():+.5f}")

    ref = check_and_reference(name, out, model, 1)
    write_reference(out, ref)
    report_dir(name, out)


def make_distilbert(out: Path, tok: Tokenizer | None) -> None:
    name = "tiny-distilbert"
    tok = tok or train_wordpiece()
    assert tok.get_vocab_size(with_added_tokens=True) == VOCAB_SIZE
    assert [tok.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]
    specials = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                "mask_token": "[MASK]"}
    save_tokenizer(tok, out, specials, {"tokenizer_class": "DistilBertTokenizer", "do_lower_case": True,
                                        "tokenize_chinese_chars": True, "strip_accents": None})

    labels = {0: "irrelevant", 1: "partial", 2: "relevant"}
    config = DistilBertConfig(
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        dim=32,
        n_layers=2,
        n_heads=4,
        hidden_dim=64,
        activation="gelu",
        max_position_embeddings=MAX_LENGTH,
        sinusoidal_pos_embds=False,
        num_labels=3,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
        pad_token_id=0,
        architectures=["DistilBertForSequenceClassification"],
    )
    model = build(DistilBertForSequenceClassification, config, SEED_DISTILBERT, out)

    ref = check_and_reference(name, out, model, 3)
    write_reference(out, ref)
    report_dir(name, out)


def make_bert(out: Path, tok: Tokenizer | None) -> None:
    name = "tiny-bert"
    tok = tok or Tokenizer.from_file(str(out.parent / "tiny-distilbert" / "tokenizer.json"))
    assert tok.get_vocab_size(with_added_tokens=True) == VOCAB_SIZE
    assert [tok.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]
    specials = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                "mask_token": "[MASK]"}
    save_tokenizer(tok, out, specials, {"tokenizer_class": "BertTokenizer", "do_lower_case": True,
                                        "tokenize_chinese_chars": True, "strip_accents": None})

    config = BertConfig(
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_act="gelu_new",
        max_position_embeddings=MAX_LENGTH,
        type_vocab_size=2,
        num_labels=2,
        pad_token_id=0,
        architectures=["BertForSequenceClassification"],
    )
    model = build(BertForSequenceClassification, config, SEED_BERT, out)

    ref = check_and_reference(name, out, model, 2)
    assert any(1 in p["token_type_ids"] for p in ref["pairs"]), "the passage's type ids must be 1"
    write_reference(out, ref)
    report_dir(name, out)


def make_roberta_like(out: Path, name: str, tok: Tokenizer, specials_order: list[str], tokenizer_config: dict,
                      config_class, model_class, seed: int) -> None:
    """A RoBERTa-layout model (XLM-R's shape: hidden 32, 2 layers, 4 heads, FFN 64, positions past
    the padding index, one token type, one label) under `config_class`/`model_class`."""
    assert tok.get_vocab_size(with_added_tokens=True) == VOCAB_SIZE
    assert [tok.token_to_id(t) for t in specials_order] == list(range(len(specials_order)))
    specials = {"bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
                "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>"}
    save_tokenizer(tok, out, specials, tokenizer_config)
    pad = tok.token_to_id("<pad>")
    config = config_class(
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_act="gelu",
        max_position_embeddings=MAX_LENGTH + pad + 1,
        type_vocab_size=1,
        num_labels=1,
        layer_norm_eps=1e-5,
        bos_token_id=tok.token_to_id("<s>"),
        pad_token_id=pad,
        eos_token_id=tok.token_to_id("</s>"),
        architectures=[model_class.__name__],
    )
    model = build(model_class, config, seed, out)
    ref = check_and_reference(name, out, model, 1)
    write_reference(out, ref)
    report_dir(name, out)


def make_roberta(out: Path, tok: Tokenizer | None) -> None:
    tok = tok or train_byte_level_bpe()
    make_roberta_like(out, "tiny-roberta", tok, XLMR_SPECIALS,
                      {"tokenizer_class": "RobertaTokenizer", "add_prefix_space": False, "trim_offsets": True},
                      RobertaConfig, RobertaForSequenceClassification, SEED_ROBERTA)


def make_camembert(out: Path, tok: Tokenizer | None) -> None:
    tok = tok or train_unigram(CAMEMBERT_SPECIALS)
    make_roberta_like(out, "tiny-camembert", tok, CAMEMBERT_SPECIALS,
                      {"tokenizer_class": "CamembertTokenizer", "add_prefix_space": True,
                       "additional_special_tokens": ["<s>NOTUSED", "</s>NOTUSED", "<unk>NOTUSED"]},
                      CamembertConfig, CamembertForSequenceClassification, SEED_CAMEMBERT)


def make_electra(out: Path, tok: Tokenizer | None) -> None:
    """ELECTRA: embeddings narrower than the layers (embedding_size 16, hidden 32: the
    `embeddings_project` layer), BERT's WordPiece tokenizer and type ids, GELU head."""
    name = "tiny-electra"
    tok = tok or Tokenizer.from_file(str(out.parent / "tiny-distilbert" / "tokenizer.json"))
    assert tok.get_vocab_size(with_added_tokens=True) == VOCAB_SIZE
    specials = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                "mask_token": "[MASK]"}
    save_tokenizer(tok, out, specials, {"tokenizer_class": "ElectraTokenizer", "do_lower_case": True,
                                        "tokenize_chinese_chars": True, "strip_accents": None})
    config = ElectraConfig(
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_act="gelu",
        max_position_embeddings=MAX_LENGTH,
        type_vocab_size=2,
        num_labels=1,
        pad_token_id=0,
        architectures=["ElectraForSequenceClassification"],
    )
    model = build(ElectraForSequenceClassification, config, SEED_ELECTRA, out)
    assert hasattr(model.electra, "embeddings_project")
    ref = check_and_reference(name, out, model, 1)
    assert any(1 in p["token_type_ids"] for p in ref["pairs"]), "the passage's type ids must be 1"
    write_reference(out, ref)
    report_dir(name, out)


def make_modernbert(out: Path, tok: Tokenizer | None) -> None:
    """ModernBERT with the options that take other code paths: three layers with global attention
    every second one (layers 0 and 2 global, 1 local), a local window of 16 tokens (8 on each
    side, shorter than most test pairs), `mean` pooling, every bias present (attention, MLP, norms,
    head), GELU; tiny-distilbert's WordPiece tokenizer as a PreTrainedTokenizerFast passing no type
    ids, as ModernBERT's tokenizers do."""
    name = "tiny-modernbert"
    tok = tok or Tokenizer.from_file(str(out.parent / "tiny-distilbert" / "tokenizer.json"))
    specials = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                "mask_token": "[MASK]"}
    save_tokenizer(tok, out, specials, {"tokenizer_class": "PreTrainedTokenizerFast",
                                        "model_input_names": ["input_ids", "attention_mask"]})
    config = ModernBertConfig(
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        hidden_activation="gelu",
        max_position_embeddings=MAX_LENGTH,
        global_attn_every_n_layers=2,
        local_attention=16,
        global_rope_theta=160000.0,
        local_rope_theta=10000.0,
        norm_eps=1e-5,
        norm_bias=True,
        attention_bias=True,
        mlp_bias=True,
        classifier_bias=True,
        classifier_pooling="mean",
        classifier_activation="gelu",
        num_labels=1,
        pad_token_id=0,
        cls_token_id=2,
        sep_token_id=3,
        bos_token_id=2,
        eos_token_id=3,
        architectures=["ModernBertForSequenceClassification"],
    )
    assert config.layer_types == ["full_attention", "sliding_attention", "full_attention"], config.layer_types
    assert config.sliding_window == 8
    model = build(ModernBertForSequenceClassification, config, SEED_MODERNBERT, out)
    ref = check_and_reference(name, out, model, 1)
    lengths = [len(p["input_ids"]) for p in ref["pairs"]]
    assert sum(n > 2 * 8 + 1 for n in lengths) >= 10, "most pairs must be longer than the local window"
    write_reference(out, ref)
    report_dir(name, out)


def train_deberta_unigram() -> Tokenizer:
    """SentencePiece-style Unigram with the pipeline transformers 5's DebertaV2Tokenizer rebuilds:
    whitespace runs and newlines to one space, NFC, right strip; Metaspace (always); the pair
    template `[CLS] A [SEP] B [SEP]` with type ids 0 for A and 1 for B. [PAD]=0 [CLS]=1 [SEP]=2
    [UNK]=3 [MASK]=4, as DeBERTa-v3's vocabulary opens."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([
        normalizers.Replace(tokenizers.Regex(r"\s{2,}|[\n\r\t]"), " "),
        normalizers.NFC(),
        normalizers.Strip(left=False, right=True),
    ])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=VOCAB_SIZE, special_tokens=DEBERTA_SPECIALS, unk_token="[UNK]",
                                      show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return tok


def make_deberta_v2(out: Path, tok: Tokenizer | None) -> None:
    """DeBERTa-v3's layout (relative attention in both directions, c2p and p2c, with shared keys,
    log position buckets narrower than the test pairs, LayerNorm'd relative embeddings, no absolute
    positions, no token types) and the ContextPooler head, with a DebertaV2Tokenizer-style
    Unigram tokenizer."""
    name = "tiny-deberta-v2"
    tok = tok or train_deberta_unigram()
    assert tok.get_vocab_size(with_added_tokens=True) == VOCAB_SIZE
    assert [tok.token_to_id(t) for t in DEBERTA_SPECIALS] == list(range(len(DEBERTA_SPECIALS)))
    specials = {"bos_token": "[CLS]", "eos_token": "[SEP]", "unk_token": "[UNK]", "sep_token": "[SEP]",
                "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"}
    save_tokenizer(tok, out, specials, {"tokenizer_class": "DebertaV2Tokenizer", "do_lower_case": False,
                                        "split_by_punct": False, "add_prefix_space": True})
    config = DebertaV2Config(
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_act="gelu",
        max_position_embeddings=MAX_LENGTH,
        type_vocab_size=0,
        layer_norm_eps=1e-7,
        relative_attention=True,
        max_relative_positions=-1,
        position_buckets=16,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        pos_att_type="p2c|c2p",
        position_biased_input=False,
        pooler_hidden_size=32,
        pooler_hidden_act="gelu",
        pad_token_id=0,
        num_labels=1,
        architectures=["DebertaV2ForSequenceClassification"],
    )
    model = build(DebertaV2ForSequenceClassification, config, SEED_DEBERTA, out)
    ref = check_and_reference(name, out, model, 1)
    lengths = [len(p["input_ids"]) for p in ref["pairs"]]
    assert sum(n > 8 for n in lengths) >= 10, "most pairs reach the log buckets (|i - j| >= 8)"
    write_reference(out, ref)
    report_dir(name, out)


LONG_LENGTH = 8192
LONG_TARGETS = (2048, 4096, 8192)


def make_xlm_roberta_8k(out: Path, tok: Tokenizer | None) -> None:
    """tiny-xlm-roberta's model and tokenizer with 8,194 positions (bge-reranker-v2-m3's table):
    reference logits for three pairs of about 2k, 4k and 8k tokens (the last cut to 8,192), to
    check long pairs against transformers. Weights from SEED_LONG; the tokenizer is
    tiny-xlm-roberta's."""
    name = "tiny-xlm-roberta-8k"
    tok = tok or Tokenizer.from_file(str(out.parent / "tiny-xlm-roberta" / "tokenizer.json"))
    specials = {"bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
                "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>"}
    tok.no_truncation()
    tok.no_padding()
    tok.save(str(out / "tokenizer.json"))
    write_json(out / "special_tokens_map.json", specials)
    write_json(out / "tokenizer_config.json", {"tokenizer_class": "XLMRobertaTokenizer", "add_prefix_space": True,
                                               **specials, "model_max_length": LONG_LENGTH})
    config = XLMRobertaConfig(
        vocab_size=tok.get_vocab_size(with_added_tokens=True), hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, hidden_act="gelu", max_position_embeddings=LONG_LENGTH + 2,
        type_vocab_size=1, num_labels=1, layer_norm_eps=1e-5, bos_token_id=0, pad_token_id=1, eos_token_id=2,
        architectures=["XLMRobertaForSequenceClassification"],
    )
    model = build(XLMRobertaForSequenceClassification, config, SEED_LONG, out)
    hf = AutoTokenizer.from_pretrained(str(out))
    text = " ".join(CORPUS)
    pairs = []
    for target in LONG_TARGETS:
        passage = text
        while len(hf(["q"], [passage])["input_ids"][0]) < target + 64:
            passage = passage + " " + text
        words = passage.split(" ")
        lo, hi = 1, len(words)  # the fewest words that reach the target (the last is cut to it)
        while lo < hi:
            mid = (lo + hi) // 2
            if len(hf(["what does the river carry"], [" ".join(words[:mid])])["input_ids"][0]) >= target:
                hi = mid
            else:
                lo = mid + 1
        extra = 40 if target == LONG_LENGTH else 0  # past the limit: truncated to 8,192
        pairs.append(("what does the river carry", " ".join(words[: lo + extra])))
    refs = []
    for q, p in pairs:
        e = encode_pair(hf, q, p, truncation=True, max_length=LONG_LENGTH)
        ids = torch.tensor([e["input_ids"]])
        raw = Tokenizer.from_file(str(out / "tokenizer.json"))
        raw.enable_truncation(LONG_LENGTH, strategy="longest_first")
        assert raw.encode(q, p).ids == e["input_ids"]
        logits = forward(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})[0]
        print(f"[{name}] pair of {len(e['input_ids'])} tokens: logit {logits.tolist()}")
        refs.append({"query": q, "passage": p, "input_ids": e["input_ids"],
                     "token_type_ids": type_ids_as_passed(hf, e), "logits": [float(x) for x in logits.tolist()]})
    assert [len(r["input_ids"]) for r in refs][-1] == LONG_LENGTH
    write_reference(out, {"transformers": transformers.__version__, "torch": torch.__version__,
                          "max_length": LONG_LENGTH, "pairs": refs})
    report_dir(name, out, limit=1_500_000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent.parent / "tests" / "data")
    parser.add_argument("--retrain-tokenizers", action="store_true",
                        help="train new tokenizers even where tokenizer.json exists (changes every id)")
    parser.add_argument("--only", action="append", metavar="DIR",
                        help="write only this model (tiny-bert, ...); repeatable; default: all")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, tokenizers {tokenizers.__version__}")
    makers = (
        ("tiny-xlm-roberta", make_xlm_roberta),
        ("tiny-distilbert", make_distilbert),
        ("tiny-bert", make_bert),
        ("tiny-roberta", make_roberta),
        ("tiny-camembert", make_camembert),
        ("tiny-electra", make_electra),
        ("tiny-xlm-roberta-8k", make_xlm_roberta_8k),
        ("tiny-modernbert", make_modernbert),
        ("tiny-deberta-v2", make_deberta_v2),
    )
    for dirname, make in makers:
        if args.only and dirname not in args.only:
            continue
        out = args.out_dir / dirname
        tok = None
        if (out / "tokenizer.json").exists() and not args.retrain_tokenizers:
            tok = Tokenizer.from_file(str(out / "tokenizer.json"))
            print(f"[{dirname}] reusing the existing {out / 'tokenizer.json'}")
        else:
            print(f"[{dirname}] no tokenizer.json to reuse: training one (tiny-bert and tiny-electra copy tiny-distilbert's)")
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        make(out, tok)


if __name__ == "__main__":
    main()
