"""One-shot LLM compression of SmolLM2-135M: magnitude / Wanda / SparseGPT / GPTQ / RTN.

Each row runs in its own process (``--rows a,b``; one process per row so that peak RSS is
that row's): build SmolLM2 (fp32, dequantized from its Q4_1 GGUF), compress it on
``--num-samples`` x ``--seq-len`` calibration tokens of the pydocs calibration split,
evaluate perplexity on the first ``--eval-blocks`` x 512 tokens of the pydocs test split,
and append a JSON line to ``--out``.

    /tmp/cpu .venv/bin/python benchmarks/llm_oneshot.py --rows dense,sparsegpt50 --threads 2
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROWS = {
    "dense": None,
    "magnitude50": {"method": "magnitude_oneshot", "sparsity": 0.5},
    "magnitude24": {"method": "magnitude_oneshot", "n": 2, "m": 4},
    "wanda50": {"method": "wanda", "sparsity": 0.5},
    "wanda50_owl": {"method": "wanda", "sparsity": 0.5, "owl": True},
    "wanda24": {"method": "wanda", "n": 2, "m": 4},
    "sparsegpt50": {"method": "sparsegpt", "sparsity": 0.5},
    "sparsegpt24": {"method": "sparsegpt", "n": 2, "m": 4},
    "sparsegpt50_owl": {"method": "sparsegpt", "sparsity": 0.5, "owl": True},
    "sparsegpt50_offload": {"method": "sparsegpt", "sparsity": 0.5, "offload_dir": "/tmp"},
    "rtn_g64": {"method": "weight_only", "bits": 4, "group_size": 64, "symmetric": False},
    "rtn_g64_sym": {"method": "weight_only", "bits": 4, "group_size": 64, "symmetric": True},
    "rtn_g32": {"method": "weight_only", "bits": 4, "group_size": 32, "symmetric": False},
    "gptq_g64": {"method": "gptq", "bits": 4, "group_size": 64, "act_order": True},
    "gptq_g64_noact": {"method": "gptq", "bits": 4, "group_size": 64, "act_order": False},
    "gptq_g64_clip": {"method": "gptq", "bits": 4, "group_size": 64, "act_order": True, "clip_search": True},
    "gptq_g64_sym": {"method": "gptq", "bits": 4, "group_size": 64, "act_order": True, "symmetric": True},
}
BLOCKS = "re:model[.]layers[.].*"  # decoder blocks only: the tied embedding / LM head stays (as ignore=lm_head)
PROMPT = "The Python standard library module"


class PeakRSS:
    """Peak resident memory of this process while a block of code runs (sampled every 20 ms)."""

    def __enter__(self):
        import threading

        import psutil

        self.proc, self.peak, self.stop = psutil.Process(), 0, threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self.stop.wait(0.02)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def _malloc_trim() -> None:
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


def run_row(row: str, args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from netslim.core.config import apply, make_config
    from netslim.core.context import StepContext
    from netslim.models import build_model
    from netslim.models.hf import register_hf_models
    from netslim.train.lm_tasks import CausalLMTask

    register_hf_models()
    task = CausalLMTask(model_name="smollm2", seq_len=512, limit=args.eval_blocks)
    model = build_model("smollm2")
    fp32_bytes = sum(p.numel() * 4 for p in model.parameters())
    import gc

    gc.collect()
    _malloc_trim()  # give the GGUF loading's freed heap back to the OS, so RSS shows what is live
    import psutil

    rss_loaded = psutil.Process().memory_info().rss
    step = ROWS[row]
    seconds, compress_peak = 0.0, rss_loaded
    if step is not None:
        step = dict(step)
        if step["method"] in ("wanda", "sparsegpt", "gptq"):
            step.update(num_samples=args.num_samples, seq_len=512, batch_size=args.batch_size)
        if step["method"] == "weight_only":
            step["include"] = [BLOCKS]
        cfg = make_config(step)
        ctx = StepContext(task=task, out_dir=Path(args.tmp))
        task.tokenizer  # tokenizer is loaded; calibration tokenisation counts in the time (as for llm-compressor)
        t0 = time.perf_counter()
        with torch.no_grad(), PeakRSS() as peak:
            model = apply(model, cfg, ctx)
        seconds = time.perf_counter() - t0
        compress_peak = peak.peak
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    ppl = task.evaluate(model)["perplexity"]
    sample = task.generate_sample(model, PROMPT, max_new_tokens=args.gen_tokens) if args.gen_tokens else ""
    return {"row": row, "step": step, "perplexity": ppl, "compress_s": round(seconds, 1),
            "process_peak_rss_mb": round(rss_peak / 2**20), "rss_after_load_mb": round(rss_loaded / 2**20),
            "compress_peak_rss_mb": round(compress_peak / 2**20),
            "fp32_model_mb": round(fp32_bytes / 2**20), "num_samples": args.num_samples,
            "eval_tokens": args.eval_blocks * 512, "threads": args.threads, "sample": sample,
            "load_avg": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="dense")
    ap.add_argument("--num-samples", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--eval-blocks", type=int, default=8)
    ap.add_argument("--gen-tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/llm_oneshot.jsonl")
    ap.add_argument("--tmp", default="/tmp/netslim_llm_oneshot")
    ap.add_argument("--child", action="store_true")
    args = ap.parse_args()
    rows = args.rows.split(",")
    if args.child:
        res = run_row(rows[0], args)
        with open(args.out, "a") as f:
            f.write(json.dumps(res) + "\n")
        print(json.dumps({k: v for k, v in res.items() if k != "step"}))
        return
    for row in rows:
        if row not in ROWS:
            sys.exit(f"unknown row {row!r}; known: {', '.join(ROWS)}")
        cmd = [sys.executable, __file__, "--child", "--rows", row, "--num-samples", str(args.num_samples),
               "--batch-size", str(args.batch_size), "--eval-blocks", str(args.eval_blocks),
               "--gen-tokens", str(args.gen_tokens), "--threads", str(args.threads), "--out", args.out,
               "--tmp", args.tmp]
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
