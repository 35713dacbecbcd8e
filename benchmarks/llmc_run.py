"""llm-compressor reference rows for ``benchmarks/llm_oneshot.py`` (runs in the llmc venv, not netslim's).

llmcompressor pins an older transformers than netslim, so it lives in its own venv
(``.cache/venv-llmc``, see ``benchmarks/README.md``). ``llm_oneshot.py`` (netslim's venv)
saves SmolLM2 as a plain Hugging Face checkpoint and the exact calibration token ids
netslim uses; this script, run in the llmc venv,

1. loads that checkpoint (fp32),
2. runs ``llmcompressor.oneshot`` with one modifier on those ids (no shuffling, no
   re-tokenisation: the dataset already holds ``input_ids``), ``ignore=["re:.*lm_head"]``,
3. times the ``oneshot`` call and samples the process's peak RSS during it,
4. writes every decoder-block Linear weight afterwards (sparse, or dequantized to fp32 for
   GPTQ) to a safetensors file, and a JSON line of figures to ``--result``.

netslim's venv then loads those weights into its own SmolLM2 and evaluates them with the
same ``CausalLMTask`` as its own rows.

    .cache/venv-llmc/bin/python benchmarks/llmc_run.py --method sparsegpt50 \\
        --model-dir DIR --calib calib.safetensors --weights out.safetensors --result out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_oneshot import PeakRSS

IGNORE = ["re:.*lm_head"]
METHODS = ("sparsegpt50", "sparsegpt24", "wanda50", "wanda50_owl", "gptq_g64", "gptq_g64_sym", "gptq_g64_mse")


def modifier(method: str):
    """The llm-compressor modifier of a row (llmcompressor's own defaults unless stated)."""
    if method in ("sparsegpt50", "sparsegpt24"):
        from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier

        return SparseGPTModifier(
            sparsity=0.5,
            mask_structure="2:4" if method.endswith("24") else "0:0",
            block_size=128,
            dampening_frac=0.01,
            targets=["Linear"],
            ignore=IGNORE,
        )
    if method in ("wanda50", "wanda50_owl"):
        from llmcompressor.modifiers.pruning.wanda import WandaPruningModifier

        # OWL as netslim's wanda50_owl row: outlier = score > 5 x the block's mean, sparsities 0.5 +- 0.08
        owl = {"sparsity_profile": "owl", "owl_m": 5, "owl_lmbda": 0.08} if method.endswith("_owl") else {}
        return WandaPruningModifier(sparsity=0.5, mask_structure="0:0", targets=["Linear"], ignore=IGNORE, **owl)
    if method in ("gptq_g64", "gptq_g64_sym", "gptq_g64_mse"):
        from llmcompressor.modifiers.gptq import GPTQModifier

        weights = {
            "num_bits": 4,
            "type": "int",
            "symmetric": method.endswith("_sym"),
            "strategy": "group",
            "group_size": 64,
        }  # asymmetric by default, as netslim's gptq_g64 row
        if method.endswith("_mse"):  # range shrink search by |w - q|^2.4 (as netslim's clip_search)
            weights["observer"] = "mse"
        return GPTQModifier(
            config_groups={"group_0": {"targets": ["Linear"], "weights": weights}},
            ignore=IGNORE,
            block_size=128,
            dampening_frac=0.01,
            actorder="static",
        )
    raise SystemExit(f"unknown --method {method!r}; known: {', '.join(METHODS)}")


def block_weights(model) -> dict:
    """Every decoder-block Linear weight, as plain fp32 tensors (GPTQ: the dequantized grid values)."""
    import torch

    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".layers." in name:
            out[f"{name}.weight"] = mod.weight.detach().to(torch.float32).contiguous().clone()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", required=True, choices=METHODS)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--calib", required=True, help="safetensors with 'input_ids' (N, L)")
    ap.add_argument("--weights", required=True, help="output safetensors of the compressed block weights")
    ap.add_argument("--result", required=True, help="output JSON of the figures")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--save-compressed",
        default=None,
        help="also save the model as llm-compressor's compressed-tensors directory here (issue 18)",
    )
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import llmcompressor
    import transformers
    from datasets import Dataset
    from llmcompressor import oneshot
    from safetensors.torch import load_file, save_file

    ids = load_file(args.calib)["input_ids"]  # (N, L) int64
    import psutil

    rss_before_model = psutil.Process().memory_info().rss  # interpreter + torch + transformers + llmcompressor
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model_dir)
    ds = Dataset.from_dict({"input_ids": ids.tolist()})
    with torch.no_grad():  # same figure as netslim's process computes: both load the same model
        logits = model(input_ids=ids[:1], use_cache=False).logits[0, :-1].float()
        first_nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item()
    rss_loaded = psutil.Process().memory_info().rss
    mod = modifier(args.method)
    t0 = time.perf_counter()
    with PeakRSS() as peak:
        oneshot(
            model=model,
            tokenizer=tokenizer,
            dataset=ds,
            recipe=[mod],
            num_calibration_samples=len(ids),
            max_seq_length=ids.shape[1],
            batch_size=args.batch_size,
            shuffle_calibration_samples=False,
            pipeline="sequential",
        )
    seconds = time.perf_counter() - t0
    weights = block_weights(model)
    tmp = Path(args.weights).with_suffix(".tmp")
    save_file(weights, str(tmp))
    os.replace(tmp, args.weights)
    if args.save_compressed:  # llm-compressor's own output, as its users ship it
        out_dir = Path(args.save_compressed)
        model.save_pretrained(out_dir, save_compressed=True)
        tokenizer.save_pretrained(out_dir)
    res = {
        "compress_s": round(seconds, 1),
        "compress_peak_rss_mb": round(peak.peak / 2**20),
        "rss_after_load_mb": round(rss_loaded / 2**20),
        "rss_before_model_mb": round(rss_before_model / 2**20),
        "first_nll_llmc": round(first_nll, 5),
        "process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "modifier": repr(mod),
        "llmcompressor": llmcompressor.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "num_samples": len(ids),
        "seq_len": ids.shape[1],
        "batch_size": args.batch_size,
        "threads": args.threads,
        "load_avg": os.getloadavg()[0],
    }
    tmp = Path(args.result).with_suffix(".tmp")
    tmp.write_text(json.dumps(res))
    os.replace(tmp, args.result)
    print(json.dumps({k: v for k, v in res.items() if k != "modifier"}))


if __name__ == "__main__":
    main()
