"""One-shot LLM compression of SmolLM2-135M: magnitude / Wanda / SparseGPT / GPTQ / RTN, and llm-compressor.

Each row runs in its own process (``--rows a,b``; one process per row so that peak RSS is
that row's): build SmolLM2 (fp32, dequantized from its Q4_1 GGUF), compress it on
``--num-samples`` x 512 calibration tokens of the pydocs calibration split,
evaluate perplexity on the first ``--eval-blocks`` x 512 tokens of the pydocs test split,
and append a JSON line to ``--out``.

Calibration tokens are drawn once per ``--num-samples`` (seed 0, the draw netslim's
recipe steps make) and stored in ``<cache>/llmc/calib_<model>_<n>x512.safetensors``: every
calibrated row, netslim's and llm-compressor's, is handed exactly these ids, so
tokenisation is outside every row's time, and each row records the file's sha256.

``llmc_*`` rows are llm-compressor's: the model is saved once as a plain HF checkpoint
(``<cache>/llmc/<model>_hf``), ``benchmarks/llmc_run.py`` compresses it in the separate
llmc venv (``--llmc-python``; see ``benchmarks/README.md``) and writes the compressed
block weights; this process loads them into its own SmolLM2 and evaluates them with the
same task as netslim's rows. Time and peak RSS of those rows are the llmc process's.

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
    "wanda50_b4": {"method": "wanda", "sparsity": 0.5, "batch_size": 4},  # same method, other summation order
    "wanda24": {"method": "wanda", "n": 2, "m": 4},
    "sparsegpt50": {"method": "sparsegpt", "sparsity": 0.5},
    "sparsegpt24": {"method": "sparsegpt", "n": 2, "m": 4},
    "sparsegpt50_owl": {"method": "sparsegpt", "sparsity": 0.5, "owl": True},
    "sparsegpt50_offload": {"method": "sparsegpt", "sparsity": 0.5, "offload_dir": "/tmp"},
    # the memory row: one sequence per forward (small transients), block activations on disk
    "sparsegpt50_lowmem": {"method": "sparsegpt", "sparsity": 0.5, "batch_size": 1, "offload_dir": "/tmp"},
    # + every block but the current one parked on disk, zeros baked in (no 1-byte-per-weight mask buffers)
    "sparsegpt50_stream": {
        "method": "sparsegpt",
        "sparsity": 0.5,
        "batch_size": 1,
        "offload_dir": "/tmp",
        "offload_blocks": True,
        "permanent": True,
    },
    "sparsegpt24_exact": {"method": "sparsegpt", "n": 2, "m": 4, "nm_select": "exact"},  # exact 2:4 pattern choice
    "rtn_g64": {"method": "weight_only", "bits": 4, "group_size": 64, "symmetric": False},
    "rtn_g64_sym": {"method": "weight_only", "bits": 4, "group_size": 64, "symmetric": True},
    "rtn_g32": {"method": "weight_only", "bits": 4, "group_size": 32, "symmetric": False},
    "gptq_g64": {"method": "gptq", "bits": 4, "group_size": 64, "act_order": True},
    "gptq_g64_up": {"method": "gptq", "bits": 4, "group_size": 64, "act_order": True, "scale_rounding": "up"},
    "gptq_g64_noact": {"method": "gptq", "bits": 4, "group_size": 64, "act_order": False},
    "gptq_g64_clip": {"method": "gptq", "bits": 4, "group_size": 64, "act_order": True, "clip_search": True},
    "gptq_g64_sym": {"method": "gptq", "bits": 4, "group_size": 64, "act_order": True, "symmetric": True},
    # llm-compressor 0.14 (benchmarks/llmc_run.py: modifiers, their settings)
    "llmc_sparsegpt50": {"llmc": "sparsegpt50"},
    "llmc_sparsegpt24": {"llmc": "sparsegpt24"},
    "llmc_wanda50": {"llmc": "wanda50"},
    "llmc_gptq_g64": {"llmc": "gptq_g64"},
    "llmc_gptq_g64_sym": {"llmc": "gptq_g64_sym"},
    "llmc_wanda50_owl": {"llmc": "wanda50_owl"},
    "llmc_gptq_g64_mse": {"llmc": "gptq_g64_mse"},
}
CALIBRATED = ("wanda", "sparsegpt", "gptq")
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


def _cache_dir() -> Path:
    return Path(os.environ.get("NETSLIM_CACHE", ".cache/netslim")) / "llmc"


def calib_path(model: str, num_samples: int) -> Path:
    return _cache_dir() / f"calib_{model}_{num_samples}x512.safetensors"


def ckpt_path(model: str) -> Path:
    return _cache_dir() / f"{model}_hf"


def _atomic_save(tensors: dict, path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def calibration_file(task, num_samples: int) -> Path:
    """The calibration ids every row uses, drawn once (netslim's own draw: seed 0, whole split)."""
    from netslim.core.layerwise import calibration_from_task

    path = calib_path(task.model_name, num_samples)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        ids = calibration_from_task(task, num_samples, 512, seed=0)  # (n, 512) int64
        _atomic_save({"input_ids": ids.contiguous()}, path)
    return path


def hf_checkpoint(model, task) -> Path:
    """SmolLM2 (as netslim builds it) saved once as a plain HF checkpoint + tokenizer, for llm-compressor."""
    path = ckpt_path(task.model_name)
    if not (path / "done").exists():
        import shutil

        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp))
        task.tokenizer.save_pretrained(str(tmp))
        (tmp / "done").write_text("ok\n")
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    return path


def _first_nll(model, ids) -> float:
    """Mean next-token NLL of one calibration sequence: checks that both venvs see the same model."""
    import torch.nn.functional as F

    logits = model(input_ids=ids[:1], use_cache=False).logits[0, :-1].float()
    return F.cross_entropy(logits, ids[0, 1:]).item()


def run_llmc(row: str, model, task, calib: Path, args) -> tuple[dict, dict]:
    """Compress with llm-compressor in its venv; load its block weights into ``model``. -> (figures, step)."""
    from safetensors.torch import load_file

    method = ROWS[row]["llmc"]
    ckpt = hf_checkpoint(model, task)
    out = Path(args.tmp) / row
    out.mkdir(parents=True, exist_ok=True)
    weights, result = out / "weights.safetensors", out / "result.json"
    for f in (weights, result):
        f.unlink(missing_ok=True)
    here = Path(__file__).resolve().parent
    cmd = [
        args.llmc_python,
        str(here / "llmc_run.py"),
        "--method",
        method,
        "--model-dir",
        str(ckpt),
        "--calib",
        str(calib),
        "--weights",
        str(weights),
        "--result",
        str(result),
        "--batch-size",
        str(args.batch_size),
        "--threads",
        str(args.threads),
    ]
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    figures = json.loads(result.read_text())
    state = load_file(str(weights))
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown or not state:
        raise SystemExit(f"llmc weights do not match SmolLM2: unknown {unknown[:3]}, {len(state)} tensors")
    model.load_state_dict(state, strict=False)
    figures["layers_replaced"] = len(state)
    return figures, {"llmc": method, "modifier": figures.pop("modifier")}


def prepare(args) -> None:
    """Draw the calibration ids and save the HF checkpoint for llmc rows, if the rows need them and they are missing."""
    steps = [ROWS[r] for r in args.rows.split(",") if ROWS[r] is not None]
    need_calib = any("llmc" in s or s["method"] in CALIBRATED for s in steps)
    need_ckpt = any("llmc" in s for s in steps)
    if not need_calib or (
        calib_path(args.model, args.num_samples).exists()
        and (not need_ckpt or (ckpt_path(args.model) / "done").exists())
    ):
        return
    from netslim.models import build_model
    from netslim.models.hf import register_hf_models
    from netslim.train.lm_tasks import CausalLMTask

    register_hf_models()
    task = CausalLMTask(model_name=args.model, seq_len=512)
    calibration_file(task, args.num_samples)
    if need_ckpt:
        hf_checkpoint(build_model(args.model), task)


def run_row(row: str, args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from safetensors.torch import load_file

    from netslim.core.config import apply, make_config
    from netslim.core.context import StepContext
    from netslim.models import build_model
    from netslim.models.hf import register_hf_models
    from netslim.prune.oneshot import sparsegpt, wanda
    from netslim.quantize.gptq import gptq
    from netslim.train.lm_tasks import CausalLMTask

    register_hf_models()
    task = CausalLMTask(model_name=args.model, seq_len=512, limit=args.eval_blocks)
    import psutil

    rss_before_model = psutil.Process().memory_info().rss  # interpreter + torch + transformers + tokenizer
    model = build_model(args.model)
    fp32_bytes = sum(p.numel() * 4 for p in model.parameters())
    import gc

    gc.collect()
    _malloc_trim()  # give the GGUF loading's freed heap back to the OS, so RSS shows what is live
    rss_loaded = psutil.Process().memory_info().rss
    step = ROWS[row]
    seconds, compress_peak, extra = 0.0, rss_loaded, {}
    calib = (
        calibration_file(task, args.num_samples)
        if step is not None and ("llmc" in step or step["method"] in CALIBRATED)
        else None
    )
    if calib is not None:
        ids = load_file(str(calib))["input_ids"]
        extra = {"calib_sha256": _sha256(calib)[:16], "calib_tokens": list(ids.shape)}
    if step is not None and "llmc" in step:
        with torch.no_grad():
            extra["first_nll_dense"] = round(_first_nll(model, ids), 5)
        figures, step = run_llmc(row, model, task, calib, args)
        seconds, compress_peak = figures.pop("compress_s"), figures.pop("compress_peak_rss_mb") * 2**20
        extra.update(figures)
    elif step is not None:
        step = dict(step)
        if step["method"] in CALIBRATED:
            step.update(num_samples=args.num_samples, seq_len=512)
            step.setdefault("batch_size", args.batch_size)  # a row may fix its own (the memory row)
        if step["method"] == "weight_only":
            step["include"] = [BLOCKS]
        cfg = make_config(step)
        t0 = time.perf_counter()
        with torch.no_grad(), PeakRSS() as peak:
            if step["method"] in CALIBRATED:  # the stored ids, as given to llm-compressor
                fn = {"wanda": wanda, "sparsegpt": sparsegpt, "gptq": gptq}[step["method"]]
                model = fn(model, ids, cfg=cfg)
            else:
                model = apply(model, cfg, StepContext(task=task, out_dir=Path(args.tmp)))
        seconds = time.perf_counter() - t0
        compress_peak = peak.peak
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if "process_peak_rss_mb" in extra:  # llmc row: the compressing process is the llmc one
        rss_peak = extra.pop("process_peak_rss_mb") * 2**20
        rss_loaded = extra.pop("rss_after_load_mb") * 2**20
        rss_before_model = extra.pop("rss_before_model_mb", 0) * 2**20  # 0: an older llmc_run.py
    ppl = task.evaluate(model)["perplexity"]
    sample = task.generate_sample(model, PROMPT, max_new_tokens=args.gen_tokens) if args.gen_tokens else ""
    return {
        "row": row,
        "model": args.model,
        "step": step,
        "perplexity": ppl,
        "compress_s": round(seconds, 1),
        "process_peak_rss_mb": round(rss_peak / 2**20),
        "rss_after_load_mb": round(rss_loaded / 2**20),
        "compress_peak_rss_mb": round(compress_peak / 2**20),
        "rss_before_model_mb": round(rss_before_model / 2**20),
        "fp32_model_mb": round(fp32_bytes / 2**20),
        "num_samples": args.num_samples if calib else 0,
        "eval_tokens": args.eval_blocks * 512,
        "threads": args.threads,
        "sample": sample,
        "load_avg": os.getloadavg()[0],
        **extra,
    }


def table(path: str, num_samples: int) -> str:
    """Markdown table of the latest JSON line per row (at ``num_samples`` calibration sequences) in ``path``."""
    latest: dict[str, dict] = {}
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        if r.get("model") == "smollm2" and r["num_samples"] in (0, num_samples):
            latest[r["row"]] = r
    out = [
        "| row | perplexity | compress s | load avg | RSS before model MB | RSS loaded MB | peak RSS "
        "compressing MB | peak - before model MB | greedy sample |",
        "|---" * 9 + "|",
    ]
    for name in ROWS:
        r = latest.get(name)
        if r is None:
            continue
        before = r.get("rss_before_model_mb")
        sample = r["sample"].replace("\n", " ").replace("|", "\\|").strip()
        out.append(
            f"| {name} | {r['perplexity']:.2f} | {r['compress_s']:.1f} | {r['load_avg']:.1f} | "
            f"{before if before else '-'} | {r['rss_after_load_mb']} | {r['compress_peak_rss_mb']} | "
            f"{r['compress_peak_rss_mb'] - before if before else '-'} | {sample[:70]} |"
        )
    return "\n".join(out)


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
    ap.add_argument("--llmc-python", default=".cache/venv-llmc/bin/python")
    ap.add_argument("--model", default="smollm2", help="tiny-llama: a quick smoke test of the script")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--prepare", action="store_true")
    ap.add_argument("--table", action="store_true", help="print the markdown table of --out and exit")
    args = ap.parse_args()
    if args.table:
        print(table(args.out, args.num_samples))
        return
    rows = args.rows.split(",")
    if args.prepare:
        prepare(args)
        return
    if args.child:
        res = run_row(rows[0], args)
        with open(args.out, "a") as f:
            f.write(json.dumps(res) + "\n")
        print(json.dumps({k: v for k, v in res.items() if k != "step"}))
        return
    for row in rows:
        if row not in ROWS:
            sys.exit(f"unknown row {row!r}; known: {', '.join(ROWS)}")
    common = ["--num-samples", str(args.num_samples), "--model", args.model]
    # calibration ids / HF checkpoint are made in a process of their own: no row's peak RSS includes it
    subprocess.run([sys.executable, __file__, "--prepare", "--rows", args.rows, *common], check=True)
    for row in rows:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--rows",
            row,
            "--num-samples",
            str(args.num_samples),
            "--batch-size",
            str(args.batch_size),
            "--eval-blocks",
            str(args.eval_blocks),
            "--gen-tokens",
            str(args.gen_tokens),
            "--threads",
            str(args.threads),
            "--out",
            args.out,
            "--tmp",
            args.tmp,
            "--llmc-python",
            args.llmc_python,
            "--model",
            args.model,
        ]
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
