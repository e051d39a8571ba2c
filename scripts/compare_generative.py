#!/usr/bin/env python3
"""xbench against transformers (PyTorch) on a generative reranker, side by side in one run (run by
scripts/compare_generative.sh).

The model is a Qwen3ForCausalLM read through the Qwen3-Reranker prompt (xbench's template
`qwen3_reranker`), scored by logit(yes) - logit(no) at the prompt's last token: a real
Qwen3-Reranker, or one of scripts/make_shaped_model.py's random-weight ones of the same shape
(`qwen3-reranker-0.6b`). The workload: --workload-requests requests of 32 documents each, request r
taking the r-th query of --input (data/pairs.jsonl: 300 queries of 8 consecutive lines each) and the
32 passages of the lines from that query's first one on (its own 8, then the next queries'), each
passage cut to its first --passage-words words. It is written as a JSON-lines file whose 32
consecutive lines per request all carry the request's query, which is how `xbench bench` cuts a file
into requests (src/loadgen/workload.rs: consecutive pairs, the first pair's query); both engines
read that file, in the same order: request 0 warms up, then requests 1, 2, ... (cycling).

Engines (pick a subset with --engines, names in ENGINES below), all with --threads compute threads:

* torch-fp32: AutoModelForCausalLM.from_pretrained(dir, dtype=torch.float32), its default attention
  (sdpa), torch.set_num_threads(--threads); a request is built as the Qwen3-Reranker model card
  does: the middle texts tokenized (truncation 'longest_first', max_length 8192 - len(prefix) -
  len(suffix)), prefix and suffix ids around them, the 32 prompts left-padded into one batch with
  its attention mask (tokenizer.pad, padding_side left), then one `model(..., logits_to_keep=1,
  use_cache=False)` in torch.inference_mode() (only the last position reaches the vocabulary);
  score = logits[:, -1, yes] - logits[:, -1, no];
* torch-bf16: the same with dtype=torch.bfloat16 (slow on CPUs without native bf16: a request over
  --slow-request-s ends its engine's measurements, reported with what was measured);
* xbench-fp32, xbench-fp32-unshared (XBENCH_SHARE_PREFIX=off: every pair computes its shared prefix
  again), xbench-bf16, xbench-int8: `xbench bench --stage full`, 32 pairs per request, one client,
  one model worker, max_batch_size 32 (a request is one forward pass).

Both sides are timed end to end per request, tokenization included: `xbench bench --stage full`
(tokenizer pool, batcher, model) against torch's tokenization, padding and forward pass. xbench's
`qps` is pairs per second (src/report/mod.rs: rps x pairs per request); torch's is 32 x requests /
the requests' summed time.

First, on request 0, every engine's 32 scores are compared with torch fp32's (xbench's through
`xbench score --batch-size 32`): max |diff|. Then --rounds rounds, each running one cell of every
engine in turn, the order rotated by one each round; a cell is --requests-per-cell measured
requests (1, 2, ...), or by default as many as take about --cell-seconds, from a probe of each engine
(one warm-up and one timed request) before the rounds. Each xbench cell is a fresh process: it loads
the model (not timed) and sends request 0 as its warm-up; the torch models stay loaded in this
process, warm since the probe, so their cells send no warm-up (--torch-cell-warmup adds one). The report: each engine's median pairs/s over
the rounds with the spread (min-max), ratios to PyTorch fp32 and xbench fp32, and what sharing the
prefix saves (xbench fp32 / xbench fp32 unshared). Everything measured goes to --json-out.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Qwen/Qwen3-Reranker-0.6B model card (as scripts/make_tiny_rerankers.py and src/prompt.rs have it).
PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
MAX_LENGTH = 8192
DOCS = 32

# name -> (label, kind, precision, extra environment)
ENGINES = {
    "torch-fp32": ("PyTorch fp32 (transformers, sdpa)", "torch", "fp32", {}),
    "torch-bf16": ("PyTorch bf16 (transformers, sdpa)", "torch", "bf16", {}),
    "xbench-fp32": ("xbench fp32", "xbench", "fp32", {}),
    "xbench-fp32-unshared": ("xbench fp32, prefix not shared", "xbench", "fp32", {"XBENCH_SHARE_PREFIX": "off"}),
    "xbench-bf16": ("xbench bf16", "xbench", "bf16", {}),
    "xbench-int8": ("xbench int8", "xbench", "int8", {}),
}


def cpu_info() -> dict:
    model, flags = platform.processor() or "unknown", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                break
    except OSError:
        pass
    wanted = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile")
    return {"model": model, "logical_cpus": os.cpu_count(), "simd_flags": [f for f in wanted if f in flags]}


def build_workload(path: Path, requests: int, passage_words: int) -> list[tuple[str, list[str]]]:
    lines = [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]
    if len(lines) < DOCS:
        sys.exit(f"{path} has {len(lines)} pairs; a request takes {DOCS}")
    starts = [i for i, x in enumerate(lines) if i == 0 or x["query"] != lines[i - 1]["query"]]
    out = []
    for r in range(requests):
        s = starts[r % len(starts)]
        passages = [" ".join(lines[(s + k) % len(lines)]["passage"].split()[:passage_words]) for k in range(DOCS)]
        out.append((lines[s]["query"], passages))
    return out


def write_workload(path: Path, requests: list[tuple[str, list[str]]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for q, passages in requests:
            for p in passages:
                f.write(json.dumps({"query": q, "passage": p}, ensure_ascii=False) + "\n")


class CardPrompts:
    """The Qwen3-Reranker model card's process_inputs, with a left-padding tokenizer."""

    def __init__(self, model_dir: Path):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")
        self.prefix = self.tok.encode(PREFIX, add_special_tokens=False)
        self.suffix = self.tok.encode(SUFFIX, add_special_tokens=False)
        self.yes = self.tok.convert_tokens_to_ids("yes")
        self.no = self.tok.convert_tokens_to_ids("no")

    def ids(self, query: str, passages: list[str]) -> list[list[int]]:
        middles = [f"<Instruct>: {INSTRUCTION}\n<Query>: {query}\n<Document>: {p}" for p in passages]
        enc = self.tok(middles, padding=False, truncation="longest_first", return_attention_mask=False,
                       max_length=MAX_LENGTH - len(self.prefix) - len(self.suffix))
        return [self.prefix + x + self.suffix for x in enc["input_ids"]]

    def batch(self, query: str, passages: list[str]):
        return self.tok.pad({"input_ids": self.ids(query, passages)}, padding=True, return_tensors="pt",
                            max_length=MAX_LENGTH)


class TorchEngine:
    def __init__(self, model_dir: Path, precision: str, prompts: CardPrompts):
        import torch
        from transformers import AutoModelForCausalLM

        self.torch, self.prompts = torch, prompts
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).eval()
        self.attention = self.model.config._attn_implementation

    def request(self, query: str, passages: list[str]) -> tuple[list[float], float, float]:
        """Scores, seconds end to end (tokenization included), seconds of tokenization and padding."""
        torch = self.torch
        t0 = time.perf_counter()
        batch = self.prompts.batch(query, passages)
        t1 = time.perf_counter()
        with torch.inference_mode():
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                logits_to_keep=1, use_cache=False).logits
            scores = (logits[:, -1, self.prompts.yes].float() - logits[:, -1, self.prompts.no].float()).tolist()
        return scores, time.perf_counter() - t0, t1 - t0


def xbench_env(extra: dict) -> dict:
    env = dict(os.environ)
    env.update(extra)
    return env


def xbench_scores(xbench: Path, model_dir: Path, pairs_file: Path, precision: str, extra: dict) -> list[float]:
    out = subprocess.run(
        [str(xbench), "score", "--model", str(model_dir), "--input", str(pairs_file), "--batch-size", str(DOCS),
         "--quantization", precision],
        check=True, capture_output=True, text=True, env=xbench_env(extra),
    ).stdout
    return [json.loads(l)["score"] for l in out.splitlines() if l.strip()]


def xbench_cell(xbench: Path, model_dir: Path, workload: Path, precision: str, extra: dict, requests: int,
                threads: int) -> dict:
    """One `xbench bench` cell: one warm-up request, then `requests` measured ones; its JSON row."""
    cmd = [
        str(xbench), "bench", "--model", str(model_dir), "--input", str(workload), "--stage", "full",
        "--pairs-per-request", str(DOCS), "--max-batch-size", str(DOCS), "--max-batch-tokens", "200000",
        "--concurrency", "1", "--model-workers", "1", "--threads", str(threads), "--quantization", precision,
        "--warmup", "1", "--duration", "0", "--min-requests", str(requests), "--max-duration", "100000", "--json",
    ]
    row = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=xbench_env(extra)).stdout)
    if row.get("errors"):
        raise SystemExit(f"xbench bench reported errors: {row['errors']}")
    if row["requests"] < requests:
        raise SystemExit(f"xbench bench answered {row['requests']} requests, {requests} asked")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="a Qwen3ForCausalLM reranker directory")
    ap.add_argument("--input", type=Path, default=Path("data/pairs.jsonl"))
    ap.add_argument("--xbench", type=Path, default=Path("target/release/xbench"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests-per-cell", type=int, help="measured requests per cell (default: from a probe)")
    ap.add_argument("--cell-seconds", type=float, default=15.0, help="a cell's target length when probing")
    ap.add_argument("--workload-requests", type=int, default=32, help="distinct requests in the workload")
    ap.add_argument("--passage-words", type=int, default=40)
    ap.add_argument("--engines", default=",".join(ENGINES), help=f"comma list of: {', '.join(ENGINES)}")
    ap.add_argument("--slow-request-s", type=float, default=120.0,
                    help="a torch request slower than this ends that engine's measurements")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--torch-cell-warmup", action="store_true",
                    help="a warm-up request before each torch cell too (default: none; its process stays warm)")
    ap.add_argument("--json-out", type=Path, default=Path("experiments/results/compare_generative.json"))
    args = ap.parse_args()
    names = [n.strip() for n in args.engines.split(",") if n.strip()]
    for n in names:
        if n not in ENGINES:
            sys.exit(f"unknown engine {n}; known: {', '.join(ENGINES)}")
    if not args.xbench.is_file() and any(ENGINES[n][1] == "xbench" for n in names):
        sys.exit(f"{args.xbench} is missing: cargo build --release --locked")

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    cpu = cpu_info()
    config = json.loads((args.model / "config.json").read_text())
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    if args.xbench.is_file():
        versions["xbench"] = subprocess.run([str(args.xbench), "--version"], capture_output=True, text=True).stdout.strip()
    print(f"CPU: {cpu['model']}, {cpu['logical_cpus']} logical CPUs ({' '.join(cpu['simd_flags'])}); "
          f"{args.threads} compute threads per engine", flush=True)
    print(f"versions: {json.dumps(versions)}", flush=True)
    print(f"model: {args.model} ({(config.get('architectures') or ['?'])[0]}, {config.get('num_hidden_layers')} layers, "
          f"hidden {config.get('hidden_size')}, {config.get('dtype', config.get('torch_dtype'))} on disk)", flush=True)

    requests = build_workload(args.input, args.workload_requests, args.passage_words)
    prompts = CardPrompts(args.model)
    lengths, shared = [], []
    for q, passages in requests:
        ids = prompts.ids(q, passages)
        lengths += [len(x) for x in ids]
        common = min(len(x) for x in ids)
        for x in ids[1:]:
            common = next((i for i in range(common) if x[i] != ids[0][i]), common)
        shared.append(common)
    padded = sum(DOCS * max(lengths[r * DOCS:(r + 1) * DOCS]) for r in range(len(requests)))
    workload_stats = {
        "requests": len(requests), "docs_per_request": DOCS, "passage_words": args.passage_words,
        "prompt_tokens_mean": statistics.mean(lengths), "prompt_tokens_min": min(lengths),
        "prompt_tokens_max": max(lengths), "shared_prefix_tokens_mean": statistics.mean(shared),
        "shared_prefix_tokens_min": min(shared), "shared_prefix_tokens_max": max(shared),
        "torch_padded_over_real_tokens": padded / sum(lengths),
    }
    print(f"workload: {len(requests)} requests x {DOCS} documents from {args.input}, passages cut to "
          f"{args.passage_words} words; prompt tokens mean {workload_stats['prompt_tokens_mean']:.1f} "
          f"(min {min(lengths)}, max {max(lengths)}); shared prefix per request mean "
          f"{workload_stats['shared_prefix_tokens_mean']:.1f} tokens (min {min(shared)}, max {max(shared)}), "
          f"i.e. {workload_stats['shared_prefix_tokens_mean'] / workload_stats['prompt_tokens_mean']:.0%} of a prompt; "
          f"torch's left padding computes {padded / sum(lengths):.2f}x the real tokens", flush=True)

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workload = Path(tmp) / "workload.jsonl"
        write_workload(workload, requests)
        first = Path(tmp) / "first_request.jsonl"
        write_workload(first, requests[:1])

        torch_engines = {}
        for n in names:
            label, kind, precision, extra = ENGINES[n]
            if kind == "torch":
                t = time.perf_counter()
                torch_engines[n] = TorchEngine(args.model, precision, prompts)
                print(f"{label}: loaded in {time.perf_counter() - t:.1f} s (attention: {torch_engines[n].attention})",
                      flush=True)
            results[n] = {"label": label, "kind": kind, "precision": precision, "env": extra, "rounds": [],
                          "notes": []}

        # Scores of request 0 and probes (one warm-up request, one timed) before any round.
        reference = None
        scores: dict[str, list[float]] = {}
        active = []
        for n in names:
            label, kind, precision, extra = ENGINES[n]
            r = results[n]
            if kind == "torch":
                engine = torch_engines[n]
                s, warm_s, _ = engine.request(*requests[0])
                scores[n] = s
                r["probe"] = {"warmup_s": warm_s}
                if warm_s > args.slow_request_s:
                    r["notes"].append(f"warm-up request took {warm_s:.1f} s (> {args.slow_request_s:g} s): not measured "
                                      f"further; pairs/s from the warm-up request only")
                    r["rounds"].append({"round": 0, "requests": 1, "seconds": warm_s, "pairs_per_s": DOCS / warm_s,
                                        "warmup_only": True})
                    print(f"{label}: warm-up request {warm_s:.1f} s, over the cap: no rounds", flush=True)
                    continue
                t = None
                if not args.requests_per_cell:
                    _, t, _ = engine.request(*requests[1 % len(requests)])
                    r["probe"]["request_s"] = t
            else:
                t0 = time.perf_counter()
                scores[n] = xbench_scores(args.xbench, args.model, first, precision, extra)
                r["probe"] = {"score_run_s": time.perf_counter() - t0}
                t = None
                if not args.requests_per_cell:
                    row = xbench_cell(args.xbench, args.model, workload, precision, extra, 1, args.threads)
                    t = row["duration_s"]
                    r["probe"].update(request_s=t, row=row)
            n_req = args.requests_per_cell or max(1, math.ceil(args.cell_seconds / t))
            r["requests_per_cell"] = n_req
            active.append(n)
            print(f"{label}: " + (f"probe request {t:.2f} s -> " if t is not None else "") + f"{n_req} requests per cell",
                  flush=True)
            if kind == "torch" and t is not None and t > args.slow_request_s:
                r["notes"].append(f"a request took {t:.1f} s (> {args.slow_request_s:g} s): the probe is its only "
                                  "measurement")
                r["rounds"].append({"round": 0, "requests": 1, "seconds": t, "pairs_per_s": DOCS / t, "probe_only": True})
                active.remove(n)

        if "torch-fp32" in scores:
            reference, ref_name = scores["torch-fp32"], "torch-fp32"
        elif "xbench-fp32" in scores:
            reference, ref_name = scores["xbench-fp32"], "xbench-fp32"
        agreement = {}
        if reference is not None:
            for n, s in scores.items():
                if n != ref_name:
                    agreement[n] = max(abs(a - b) for a, b in zip(s, reference))
            print(f"request 0's {DOCS} scores vs {ENGINES[ref_name][0]}, max |diff|: "
                  + ", ".join(f"{ENGINES[n][0]} {d:.2e}" for n, d in agreement.items())
                  + f"  (scores spread: sd {statistics.pstdev(reference):.3f})", flush=True)

        for rnd in range(args.rounds):
            k = rnd % len(active) if active else 0
            order = active[k:] + active[:k]
            print(f"round {rnd + 1}/{args.rounds}: {', '.join(order)}", flush=True)
            for n in list(order):
                if n not in active:
                    continue
                label, kind, precision, extra = ENGINES[n]
                r = results[n]
                n_req = r["requests_per_cell"]
                gc.collect()
                if kind == "torch":
                    engine = torch_engines[n]
                    if args.torch_cell_warmup:
                        engine.request(*requests[0])
                    times, tok_times, stopped = [], [], False
                    for i in range(1, n_req + 1):
                        _, t, tt = engine.request(*requests[i % len(requests)])
                        times.append(t)
                        tok_times.append(tt)
                        if t > args.slow_request_s:
                            r["notes"].append(f"round {rnd + 1}: a request took {t:.1f} s (> {args.slow_request_s:g} s): "
                                              "no further measurements")
                            active.remove(n)
                            stopped = True
                            break
                    cell = {"round": rnd + 1, "requests": len(times), "seconds": sum(times),
                            "pairs_per_s": DOCS * len(times) / sum(times), "request_s": times,
                            "tokenize_s_mean": statistics.mean(tok_times), "stopped_early": stopped}
                else:
                    row = xbench_cell(args.xbench, args.model, workload, precision, extra, n_req, args.threads)
                    cell = {"round": rnd + 1, "requests": row["requests"], "seconds": row["duration_s"],
                            "pairs_per_s": row["qps"], "row": row}
                r["rounds"].append(cell)
                print(f"  {label}: {cell['pairs_per_s']:.2f} pairs/s ({cell['requests']} requests, "
                      f"{cell['seconds']:.1f} s)", flush=True)

    for n, r in results.items():
        values = [c["pairs_per_s"] for c in r["rounds"]]
        r["pairs_per_s_samples"] = values
        if values:
            r["pairs_per_s_median"] = statistics.median(values)
            r["pairs_per_s_min"], r["pairs_per_s_max"] = min(values), max(values)
        r["score_max_abs_diff_vs_reference"] = agreement.get(n)

    def median(n):
        return results.get(n, {}).get("pairs_per_s_median")

    print()
    print(f"CPU: {cpu['model']}, {cpu['logical_cpus']} logical CPUs, {args.threads} compute threads per engine; "
          f"model {args.model}; {DOCS} documents per request, prompts of {workload_stats['prompt_tokens_mean']:.0f} "
          f"tokens on average, {workload_stats['shared_prefix_tokens_mean']:.0f} of them shared within a request")
    print(f"pairs/s, median (min–max) of {args.rounds} interleaved rounds; end to end per request, tokenization included")
    print()
    print("| engine | pairs/s median (min–max) | × PyTorch fp32 | × xbench fp32 | score max abs diff |")
    print("|---|---|---|---|---|")
    for n, r in results.items():
        m = r.get("pairs_per_s_median")
        if m is None:
            print(f"| {r['label']} | n/a | | | |")
            continue
        cells = [f"{m:.2f} ({r['pairs_per_s_min']:.2f}–{r['pairs_per_s_max']:.2f})"]
        for base in ("torch-fp32", "xbench-fp32"):
            cells.append(f"{m / median(base):.2f}x" if median(base) else "")
        d = agreement.get(n)
        cells.append("reference" if reference is not None and n == ref_name else ("" if d is None else f"{d:.1e}"))
        print(f"| {r['label']}{' *' if r['notes'] else ''} | " + " | ".join(cells) + " |")
    for r in results.values():
        for note in r["notes"]:
            print(f"* {r['label']}: {note}")
    saving = None
    if median("xbench-fp32") and median("xbench-fp32-unshared"):
        saving = median("xbench-fp32") / median("xbench-fp32-unshared")
        print(f"\nshared prefix: xbench fp32 shared / unshared = {saving:.2f}x "
              f"({workload_stats['shared_prefix_tokens_mean']:.0f} of {workload_stats['prompt_tokens_mean']:.0f} "
              "prompt tokens shared)")

    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps({
            "cpu": cpu, "versions": versions, "threads": args.threads, "model": str(args.model),
            "config": {k: config.get(k) for k in ("architectures", "num_hidden_layers", "hidden_size",
                                                   "num_attention_heads", "num_key_value_heads", "head_dim",
                                                   "intermediate_size", "vocab_size", "dtype")},
            "input": str(args.input), "workload": workload_stats, "rounds": args.rounds,
            "timing": "end to end per request, tokenization included (xbench bench --stage full)",
            "score_reference": ref_name if reference is not None else None, "scores_request_0": scores,
            "score_max_abs_diff": agreement, "shared_prefix_speedup": saving, "engines": results,
        }, indent=2))
        print(f"\nwrote {args.json_out}")


if __name__ == "__main__":
    main()
