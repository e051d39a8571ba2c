#!/usr/bin/env python3
"""xbench against its CPU peers, side by side in one run (run by scripts/compare_peers.sh).

On the same pairs (the first --pairs lines of --input, in file order), with the same checkpoint (any
family xbench loads) and the same number of compute threads, it measures pairs/s "at batch B" for
every B in --batches:

* xbench fp32 and int8: `xbench bench --stage full`, B pairs per request, max_batch_size B, one
  client, one model worker with --threads threads (tokenization, batching and the forward pass
  included);
* sentence-transformers CrossEncoder.predict, PyTorch fp32, torch.set_num_threads(--threads);
* ONNX Runtime fp32: the checkpoint exported to ONNX (opset 17, the inputs its tokenizer passes),
  ORT_ENABLE_ALL graph optimizations, intra_op_num_threads = --threads, the HF fast tokenizer in
  the timed loop; once on batches cut in file order, once on batches of pairs sorted by length
  (what Infinity does: the strongest CPU peer on padding);
* ONNX Runtime int8: the same graph through onnxruntime's quantize_dynamic (int8 weights, dynamic
  activations), on length-sorted batches.

The peers pad each batch to its longest pair. The engines are interleaved: each round runs one pass
of every engine in turn, --passes rounds; the report gives each engine's median pass and the spread
(min–max). A peer that cannot run the model (an export that fails) is reported as such, with why.
It also measures the machine's fp32 GEMM peak (ONNX Runtime MatMul on large square shapes, best of
several) and reports each engine's model FLOPs per second, counted on real tokens only, as a share
of that peak ("model FLOPs utilisation"; the FLOP count is BERT's layer arithmetic, exact for the
BERT-style families, approximate for others). Scores of every fp32 engine are checked against
sentence-transformers on the same pairs before anything is timed.

Writes the report to stdout and, with --json-out, everything measured as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


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
    return {
        "model": model,
        "logical_cpus": os.cpu_count(),
        "simd_flags": [f for f in wanted if f in flags],
    }


def read_pairs(path: Path, n: int) -> list[tuple[str, str]]:
    pairs = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            obj = json.loads(line)
            pairs.append((obj["query"], obj["passage"]))
            if len(pairs) == n:
                break
    if len(pairs) < n:
        sys.exit(f"{path} has {len(pairs)} pairs; --pairs asks for {n}")
    return pairs


def model_flops(config: dict, lengths: list[int]) -> float:
    """Forward-pass FLOPs of a BERT cross-encoder over pairs of these real token counts."""
    h = config["hidden_size"]
    i = config["intermediate_size"]
    if config.get("model_type") == "modernbert":
        i = i * 3 // 2  # Wi is [2I, H] and Wo [H, I]: 3·H·I multiply-adds per token, BERT's 2·H·I
    layers = config["num_hidden_layers"]
    labels = config.get("num_labels") or len(config.get("id2label") or {}) or 2
    total = 0.0
    for n in lengths:
        per_layer = 2 * n * (4 * h * h + 2 * h * i) + 4 * n * n * h  # linear layers + QK^T, PV
        total += layers * per_layer + 2 * h * h + 2 * h * labels  # pooler, classifier
    return total


def gemm_peak(threads: int) -> dict:
    """fp32 GEMM FLOP/s of ONNX Runtime's MatMul on large shapes (best shape, median of runs)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    results = []
    for m, k, n in [(1024, 1024, 1024), (2048, 1024, 1024), (2048, 2048, 2048), (4096, 384, 1536)]:
        rng = np.random.default_rng(0)
        b = rng.standard_normal((k, n), dtype=np.float32)
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["a", "b"], ["c"])],
            "gemm",
            [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])],
            [helper.make_tensor_value_info("c", TensorProto.FLOAT, [m, n])],
            [numpy_helper.from_array(b, "b")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        a = rng.standard_normal((m, k), dtype=np.float32)
        for _ in range(3):
            sess.run(None, {"a": a})
        times = []
        deadline = time.perf_counter() + 3.0
        while len(times) < 5 or (time.perf_counter() < deadline and len(times) < 30):
            t = time.perf_counter()
            sess.run(None, {"a": a})
            times.append(time.perf_counter() - t)
        flops = 2.0 * m * k * n / statistics.median(times)
        results.append({"m": m, "k": k, "n": n, "gflops": flops / 1e9})
    best = max(results, key=lambda r: r["gflops"])
    return {"gflops": best["gflops"], "shapes": results}


def timed_passes(run_pass, passes: int) -> list[float]:
    times = []
    for _ in range(passes):
        t = time.perf_counter()
        run_pass()
        times.append(time.perf_counter() - t)
    return times


def batches(pairs, b):
    return [pairs[s : s + b] for s in range(0, len(pairs), b)]


class SentenceTransformersPeer:
    name = "sentence-transformers CrossEncoder, PyTorch fp32"

    def __init__(self, model_dir: Path, threads: int):
        import torch
        from sentence_transformers import CrossEncoder

        torch.set_num_threads(threads)
        self.model = CrossEncoder(
            str(model_dir), device="cpu", activation_fn=torch.nn.Identity()
        )

    def scores(self, pairs, b):
        return np.asarray(
            self.model.predict(pairs, batch_size=b, show_progress_bar=False), dtype=np.float64
        ).ravel()

    def run(self, pairs, b):
        self.model.predict(pairs, batch_size=b, show_progress_bar=False)


def export_onnx(model_dir: Path, workdir: Path, tokenizer) -> tuple[Path, list[str]]:
    """The checkpoint as ONNX (opset 17) with the inputs its tokenizer passes."""
    import torch
    from transformers import AutoModelForSequenceClassification

    path = workdir / "model.onnx"
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    enc = tokenizer(["q"], ["a passage"], return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in enc]
    axes = {k: {0: "batch", 1: "sequence"} for k in names}
    axes["logits"] = {0: "batch"}
    with torch.no_grad():
        torch.onnx.export(
            model,
            tuple(enc[k] for k in names),
            str(path),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    return path, names


class OnnxRuntimePeer:
    def __init__(self, name: str, path: Path, names: list[str], tokenizer, max_length: int, threads: int,
                 sort_by_length: bool):
        import onnxruntime as ort

        self.name = name
        self.tokenizer = tokenizer
        self.names = names
        self.max_length = max_length
        self.sort_by_length = sort_by_length
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        # The graph's own inputs: an export drops those the model ignores (DeBERTa-v3's type ids).
        graph_inputs = {i.name for i in self.session.get_inputs()}
        self.names = [n for n in names if n in graph_inputs]

    def _batch(self, chunk):
        enc = self.tokenizer(
            [q for q, _ in chunk],
            [p for _, p in chunk],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="np",
        )
        feed = {k: enc[k].astype(np.int64) for k in self.names}
        return self.session.run(None, feed)[0]

    def _ordered(self, pairs):
        if not self.sort_by_length:
            return list(range(len(pairs)))
        # Sorting is part of the work: it tokenizes once to measure, as a server sorting its
        # queue would.
        lengths = [len(ids) for ids in self.tokenizer([q for q, _ in pairs], [p for _, p in pairs],
                                                       truncation=True, max_length=self.max_length)["input_ids"]]
        return sorted(range(len(pairs)), key=lambda i: lengths[i])

    def scores(self, pairs, b):
        order = self._ordered(pairs)
        ordered = [pairs[i] for i in order]
        out = np.concatenate([self._batch(c)[:, 0] for c in batches(ordered, b)]).astype(np.float64)
        result = np.empty(len(pairs))
        result[order] = out
        return result

    def run(self, pairs, b):
        order = self._ordered(pairs)
        for c in batches([pairs[i] for i in order], b):
            self._batch(c)


def xbench_scores(xbench: Path, model_dir: Path, pairs_file: Path) -> np.ndarray:
    out = subprocess.run(
        [str(xbench), "score", "--model", str(model_dir), "--input", str(pairs_file), "--batch-size", "32"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return np.array([json.loads(l)["score"] for l in out.splitlines() if l.strip()], dtype=np.float64)


def xbench_pass(xbench: Path, model_dir: Path, pairs_file: Path, n: int, b: int, threads: int, extra: list[str]) -> dict:
    """One pass of xbench over the n pairs at batch b; returns its JSON report."""
    cmd = [
        str(xbench), "bench", "--model", str(model_dir), "--input", str(pairs_file),
        "--stage", "full", "--pairs-per-request", str(b), "--max-batch-size", str(b),
        "--max-batch-tokens", "1000000", "--concurrency", "1", "--model-workers", "1",
        "--threads", str(threads), "--warmup", "1", "--duration", "0",
        "--min-requests", str((n + b - 1) // b), "--json", *extra,
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


class XbenchEngine:
    """`xbench bench` over the pairs at batch b, as one pass."""

    def __init__(self, name: str, xbench: Path, model_dir: Path, pairs_file: Path, n: int, threads: int, extra: list[str]):
        self.name, self.xbench, self.model_dir, self.pairs_file = name, xbench, model_dir, pairs_file
        self.n, self.threads, self.extra = n, threads, extra

    def pass_pairs_per_s(self, b: int) -> float:
        return xbench_pass(self.xbench, self.model_dir, self.pairs_file, self.n, b, self.threads, self.extra)["qps"]


# xbench's rows: the fused CPU kernels in fp32 and int8; candle's own ops with CANDLE=1.
XBENCH_ROWS = [("xbench fp32", ["--backend", "fused"]), ("xbench int8", ["--backend", "fused", "--quantization", "int8"])]
if os.environ.get("CANDLE") == "1":
    XBENCH_ROWS.append(("xbench fp32, candle kernels", ["--backend", "candle"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", type=Path, default=Path("data/pairs.jsonl"))
    ap.add_argument("--model", type=Path, default=Path("models/demo-minilm-l6"))
    ap.add_argument("--xbench", type=Path, default=Path("target/release/xbench"))
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--batches", default="8,32,128")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()
    sizes = [int(b) for b in args.batches.split(",")]

    import onnxruntime
    import sentence_transformers
    import torch
    import transformers

    cpu = cpu_info()
    versions = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence-transformers": sentence_transformers.__version__,
        "onnxruntime": onnxruntime.__version__,
        "xbench": subprocess.run([str(args.xbench), "--version"], capture_output=True, text=True).stdout.strip(),
    }
    pairs = read_pairs(args.input, args.pairs)
    config = json.loads((args.model / "config.json").read_text())

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pairs_file = tmp / "pairs.jsonl"
        with pairs_file.open("w", encoding="utf-8") as f:
            for q, p in pairs:
                f.write(json.dumps({"query": q, "passage": p}, ensure_ascii=False) + "\n")

        print(f"CPU: {cpu['model']}, {cpu['logical_cpus']} logical CPUs, {' '.join(cpu['simd_flags'])}", flush=True)
        print(f"versions: {json.dumps(versions)}", flush=True)
        peak = gemm_peak(args.threads)
        shapes = ", ".join(f"{s['m']}x{s['k']}x{s['n']} {s['gflops']:.0f}" for s in peak["shapes"])
        print(f"fp32 GEMM peak (ONNX Runtime MatMul, {args.threads} threads): {peak['gflops']:.0f} GFLOP/s  [{shapes}]", flush=True)

        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(args.model))
        max_length = min(config.get("max_position_embeddings", 512), tokenizer.model_max_length)
        st = SentenceTransformersPeer(args.model, args.threads)
        peers = [st]
        unavailable = {}
        try:
            onnx_path, names = export_onnx(args.model, tmp, tokenizer)
            peers.append(OnnxRuntimePeer("ONNX Runtime fp32, ORT_ENABLE_ALL", onnx_path, names, tokenizer,
                                         max_length, args.threads, sort_by_length=False))
            peers.append(OnnxRuntimePeer("ONNX Runtime fp32, length-sorted batches", onnx_path, names, tokenizer,
                                         max_length, args.threads, sort_by_length=True))
            from onnxruntime.quantization import QuantType, quantize_dynamic

            int8_path = tmp / "model.int8.onnx"
            quantize_dynamic(str(onnx_path), str(int8_path), weight_type=QuantType.QInt8)
            peers.append(OnnxRuntimePeer("ONNX Runtime int8 (quantize_dynamic), length-sorted batches", int8_path,
                                         names, tokenizer, max_length, args.threads, sort_by_length=True))
        except Exception as e:  # an export a family's graph does not survive: reported, not fatal
            unavailable["ONNX Runtime"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            print(f"ONNX Runtime cannot run this model: {unavailable['ONNX Runtime']}", flush=True)
        lengths = [len(ids) for ids in tokenizer(
            [q for q, _ in pairs], [p for _, p in pairs], truncation=True, max_length=max_length
        )["input_ids"]]
        flops = model_flops(config, lengths)
        print(
            f"workload: first {len(pairs)} pairs of {args.input}; tokens per pair mean {statistics.mean(lengths):.0f}, "
            f"median {statistics.median(lengths):.0f}, max {max(lengths)}; {flops / len(pairs) / 1e9:.2f} GFLOP per pair",
            flush=True,
        )
        for b in sizes:
            padded = sum(len(c) * max(lengths[s : s + len(c)]) for s, c in zip(range(0, len(pairs), b), batches(pairs, b)))
            print(f"  padding to the longest in a batch of {b} computes {padded / sum(lengths):.2f}x the real tokens")

        # Same scores everywhere before timing anything.
        ref = st.scores(pairs, 32)
        agree = {p.name: float(np.max(np.abs(p.scores(pairs, 32) - ref))) for p in peers[1:]}
        agree["xbench fp32"] = float(np.max(np.abs(xbench_scores(args.xbench, args.model, pairs_file) - ref)))
        print(f"scores vs sentence-transformers, max |diff|: {json.dumps(agree)}", flush=True)

        engines = [XbenchEngine(name, args.xbench, args.model, pairs_file, len(pairs), args.threads, extra)
                   for name, extra in XBENCH_ROWS]
        rows: dict[str, dict[int, dict]] = {}
        for b in sizes:
            print(f"batch {b} ...", flush=True)
            for peer in peers:
                peer.run(pairs[:b], b)  # warm-up
            samples: dict[str, list[float]] = {}
            for _ in range(args.passes):  # rounds: every engine once per round, in turn
                for peer in peers:
                    t = timed_passes(lambda: peer.run(pairs, b), 1)[0]
                    samples.setdefault(peer.name, []).append(len(pairs) / t)
                for engine in engines:
                    samples.setdefault(engine.name, []).append(engine.pass_pairs_per_s(b))
            for name, values in samples.items():
                rows.setdefault(name, {})[b] = {"pairs_per_s": statistics.median(values), "passes_pairs_per_s": values}

    names = list(rows)
    print()
    print(f"pairs/s, {args.threads} threads, median (min–max) of {args.passes} interleaved rounds over {len(pairs)} pairs")
    print("| engine | " + " | ".join(f"B={b}" for b in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for name in names:
        cells = []
        for b in sizes:
            r = rows[name][b]
            cells.append(f"{r['pairs_per_s']:.1f} ({min(r['passes_pairs_per_s']):.1f}–{max(r['passes_pairs_per_s']):.1f})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    for name, why in unavailable.items():
        print(f"| {name} | " + " | ".join("n/a" for _ in sizes) + f" |  ({why})")
    print()
    print("ratios of medians")
    print("| | " + " | ".join(f"B={b}" for b in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    comparisons = [("xbench fp32", p.name) for p in peers] + [
        ("xbench int8", n) for n in rows if n.startswith("ONNX Runtime int8")]
    if "xbench fp32, candle kernels" in rows:
        comparisons.append(("xbench fp32", "xbench fp32, candle kernels"))
    for ours, theirs in comparisons:
        print(f"| {ours} / {theirs} | " + " | ".join(
            f"{rows[ours][b]['pairs_per_s'] / rows[theirs][b]['pairs_per_s']:.2f}x" for b in sizes) + " |")
    print()
    per_pair = flops / len(pairs)
    print(f"model FLOPs utilisation (real tokens only, vs the {peak['gflops']:.0f} GFLOP/s GEMM peak)")
    print("| engine | " + " | ".join(f"B={b}" for b in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for name in names:
        cells = []
        for b in sizes:
            gf = rows[name][b]["pairs_per_s"] * per_pair / 1e9
            rows[name][b]["model_gflops"] = gf
            rows[name][b]["mfu"] = gf / peak["gflops"]
            cells.append(f"{gf:.0f} GFLOP/s ({gf / peak['gflops']:.0%})")
        print(f"| {name} | " + " | ".join(cells) + " |")

    if args.json_out:
        args.json_out.write_text(json.dumps({
            "cpu": cpu, "versions": versions, "threads": args.threads, "pairs": len(pairs),
            "input": str(args.input), "gemm_peak": peak, "flops_per_pair": per_pair,
            "score_agreement": agree, "results": rows, "unavailable": unavailable,
            "model": str(args.model), "architecture": (config.get("architectures") or ["?"])[0],
        }, indent=2))


if __name__ == "__main__":
    main()
