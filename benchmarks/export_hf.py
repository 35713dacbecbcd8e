"""Issue 18: SmolLM2-135M GPTQ int4 -> ``format: hf`` -> perplexity in plain transformers.

Builds SmolLM2-135M (fp32, dequantized from its Q4_1 GGUF) and runs GPTQ w4 (``--group-size``,
default 128; asymmetric, activation order) on ``--num-samples`` x 512 tokens of the pydocs
calibration split, as a recipe step draws them - or opens a given netslim artifact
(``--artifact``, e.g. the ``gptq_w4g128`` recipe's export). Then:

1. netslim's perplexity on the first ``--eval-blocks`` x 512 tokens of the pydocs test split;
2. the ``hf`` export (:func:`netslim.export.hf.export_hf`) into ``--workdir``;
3. in a **subprocess that never imports netslim** (it asserts so), the directory loaded with
   ``transformers.AutoModelForCausalLM.from_pretrained`` and its perplexity on the very same
   token blocks (handed over as a safetensors file), summed the same way;

and writes ``--out`` (JSON): both perplexities, their relative difference, the directory's
bytes against the fp32 model's, the export's notes and the GPTQ layer count.

    /tmp/cpu .venv/bin/python benchmarks/export_hf.py                 # the real run (minutes)
    .venv/bin/python benchmarks/export_hf.py --tiny                   # smoke test: tiny-llama, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import record

# Runs in the child: transformers only. Perplexity = exp(summed next-token NLL / tokens), the
# blocks in batches of --eval-batch, exactly as netslim's CausalLMTask.nll sums them.
PLAIN = r"""
import json, math, sys, time
import torch, torch.nn.functional as F, transformers
from safetensors.torch import load_file
directory, blocks_file, batch, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
t0 = time.perf_counter()
model = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
load_s = time.perf_counter() - t0
ids = load_file(blocks_file)["input_ids"]
total, count = 0.0, 0
with torch.no_grad():
    for i in range(0, len(ids), batch):
        x = ids[i:i + batch]
        logits = model(input_ids=x, use_cache=False).logits[:, :-1].float()
        total += F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="sum").item()
        count += x[:, 1:].numel()
assert "netslim" not in sys.modules, "the plain-transformers process imported netslim"
print(json.dumps({"perplexity": math.exp(total / count), "tokens": count, "load_s": round(load_s, 2),
                  "dtype": str(model.dtype), "class": type(model).__name__,
                  "transformers": transformers.__version__}))
"""


def _versions() -> dict:
    """The package versions a record carries (``record.versions``; kept for ``import_llmc.py``)."""
    return record.versions()


def fp32_bytes(model) -> int:
    """Bytes of the uncompressed architecture in fp32 (tied tensors once), from its config."""
    import torch

    from netslim.models.hf_arch import build_hf

    cfg = {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"}
    with torch.device("meta"):
        dense = build_hf({"class": type(model).__name__, "config": cfg})
    return sum(p.numel() * 4 for p in dense.parameters())


def compress(args, task):
    """The model to export and facts about how it was made."""
    import torch

    from netslim.models.sources import open_model

    if args.artifact:
        return open_model(args.artifact).model, {"artifact": str(args.artifact)}
    import netslim
    from netslim.core.layerwise import calibration_from_task
    from netslim.quantize.gptq import gptq

    model = open_model(args.model).model
    ids = calibration_from_task(task, args.num_samples, args.seq_len, 0)
    t0 = time.perf_counter()
    with torch.no_grad():
        model = gptq(
            model,
            ids,
            bits=4,
            group_size=args.group_size,
            symmetric=False,
            act_order=True,
            num_samples=args.num_samples,
            seq_len=args.seq_len,
            batch_size=args.batch_size,
        )
    report = netslim.report_of(model)
    return model, {
        "gptq": {
            **report.notes,
            "seconds": round(time.perf_counter() - t0, 1),
            "skipped_layers": len(report.skipped),
            "calibration_tokens": list(ids.shape),
        }
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny-llama, 2 eval blocks: a smoke test of the script")
    ap.add_argument("--artifact", default=None, help="a netslim artifact to export instead of running GPTQ")
    ap.add_argument("--group-size", type=int, default=None, help="GPTQ group size (default 128; --tiny: 32)")
    ap.add_argument("--num-samples", type=int, default=None, help="calibration blocks (default 32; --tiny: 4)")
    ap.add_argument("--eval-blocks", type=int, default=None, help="test blocks of 512 tokens (default 8; --tiny: 2)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--eval-batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/netslim_export_hf")
    ap.add_argument("--out", default=None, help="default benchmarks/results/issue18_hf.json (--tiny: in --workdir)")
    args = ap.parse_args()
    rec = record.start("export_hf")
    args.model = "tiny-llama" if args.tiny else "smollm2"
    args.seq_len = 512
    args.group_size = args.group_size or (32 if args.tiny else 128)
    args.num_samples = args.num_samples or (4 if args.tiny else 32)
    args.eval_blocks = args.eval_blocks or (2 if args.tiny else 8)
    work = Path(args.workdir)
    out = Path(args.out or (work / "issue18_hf_tiny.json" if args.tiny else "benchmarks/results/issue18_hf.json"))
    work.mkdir(parents=True, exist_ok=True)

    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(args.threads)
    from netslim.export.hf import export_hf
    from netslim.models.hf import register_hf_models
    from netslim.train.lm_tasks import CausalLMTask

    register_hf_models()
    task = CausalLMTask(
        model_name=args.model, seq_len=args.seq_len, limit=args.eval_blocks, eval_batch_size=args.eval_batch
    )
    model, made = compress(args, task)
    t0 = time.perf_counter()
    ours = task.evaluate(model)["perplexity"]
    eval_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    directory, notes = export_hf(model, work / f"{args.model}_hf", {"source": args.model})
    export_s = time.perf_counter() - t0
    blocks = work / "test_blocks.safetensors"
    save_file({"input_ids": task.blocks("test").contiguous()}, str(blocks))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", PLAIN, str(directory), str(blocks), str(args.eval_batch), str(args.threads)],
        capture_output=True,
        text=True,
        env=env,
        timeout=3600,
    )
    if proc.returncode != 0:
        sys.exit(f"plain transformers failed:\n{proc.stderr[-4000:]}")
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    dir_bytes = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
    weights = (directory / "model.safetensors").stat().st_size
    dense = fp32_bytes(model)
    result = {
        "model": args.model,
        "made": made,
        "eval_tokens": args.eval_blocks * args.seq_len,
        "netslim_perplexity": ours,
        "transformers_perplexity": theirs["perplexity"],
        "relative_difference": abs(theirs["perplexity"] - ours) / ours,
        "directory_bytes": dir_bytes,
        "weights_file_bytes": weights,
        "fp32_bytes": dense,
        "directory_vs_fp32": dir_bytes / dense,
        "netslim_eval_s": round(eval_s, 1),
        "export_s": round(export_s, 1),
        "transformers": theirs,
        "export_notes": notes,
        "threads": args.threads,
    }
    record.write(out, record.finish(rec, result))
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "netslim_perplexity",
                    "transformers_perplexity",
                    "relative_difference",
                    "directory_bytes",
                    "fp32_bytes",
                    "directory_vs_fp32",
                )
            }
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
