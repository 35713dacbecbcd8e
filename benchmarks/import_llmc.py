"""Issue 18: llm-compressor's own GPTQ output of SmolLM2 (a compressed-tensors directory) opened
by netslim (``--model DIR``) and by plain transformers: same perplexity on the same tokens, and its
directory size next to netslim's ``format: hf`` export of the same configuration.

1. The calibration ids and the plain HF checkpoint of SmolLM2 (fp32, dequantized from the
   package's Q4_1 GGUF: its weights are 4-bit) are the ones ``benchmarks/llm_oneshot.py`` makes.
2. ``benchmarks/llmc_run.py --method gptq_g64 --save-compressed DIR`` runs llm-compressor's
   GPTQModifier (int4, group 64, asymmetric, static act-order) in its own venv and saves the model
   with ``save_pretrained(save_compressed=True)``.
3. This process opens DIR with ``netslim.models.sources.open_model`` and scores perplexity with
   netslim's CausalLMTask; a child process that never imports netslim scores the same blocks with
   plain transformers (+ compressed-tensors) — ``benchmarks/export_hf.py``'s child.

Run: ``OMP_NUM_THREADS=2 .venv/bin/python benchmarks/import_llmc.py`` (needs .cache/venv-llmc,
see benchmarks/README.md). Writes benchmarks/results/issue18_llmc_import.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export_hf
import llm_oneshot as lo


def dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num-samples", type=int, default=32)
    ap.add_argument("--eval-blocks", type=int, default=8)
    ap.add_argument("--eval-batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--llmc-python", default=".cache/venv-llmc/bin/python")
    ap.add_argument("--workdir", default="/tmp/netslim_import_llmc")
    ap.add_argument("--out", default="benchmarks/results/issue18_llmc_import.json")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)

    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(args.threads)
    from netslim.models import build_model
    from netslim.models.hf import register_hf_models
    from netslim.models.sources import open_model
    from netslim.train.lm_tasks import CausalLMTask

    register_hf_models()
    prep = CausalLMTask(model_name="smollm2", seq_len=512)
    calib = lo.calibration_file(prep, args.num_samples)
    ckpt = lo.hf_checkpoint(build_model("smollm2"), prep)
    ct_dir = work / "llmc_gptq_g64"
    t0 = time.perf_counter()
    reuse = (ct_dir / "config.json").exists() and (work / "llmc.json").exists()  # llm-compressor's run is kept
    proc = (
        None
        if reuse
        else subprocess.run(
            [
                args.llmc_python,
                str(Path(__file__).parent / "llmc_run.py"),
                "--method",
                "gptq_g64",
                "--model-dir",
                str(ckpt),
                "--calib",
                str(calib),
                "--weights",
                str(work / "w.safetensors"),
                "--result",
                str(work / "llmc.json"),
                "--threads",
                str(args.threads),
                "--batch-size",
                "4",
                "--save-compressed",
                str(ct_dir),
            ],
            capture_output=True,
            text=True,
        )
    )
    if proc is not None and proc.returncode != 0:
        sys.exit(f"llm-compressor failed:\n{proc.stderr[-4000:]}")
    llmc = json.loads((work / "llmc.json").read_text())
    if proc is not None:
        llmc["wall_s"] = round(time.perf_counter() - t0, 1)
    config = json.loads((ct_dir / "config.json").read_text())

    task = CausalLMTask(model_name="smollm2", seq_len=512, limit=args.eval_blocks, eval_batch_size=args.eval_batch)
    t0 = time.perf_counter()
    opened = open_model(str(ct_dir))
    open_s = time.perf_counter() - t0
    kinds: dict[str, int] = {}
    for m in opened.model.modules():
        kinds[type(m).__name__] = kinds.get(type(m).__name__, 0) + 1
    ours = task.evaluate(opened.model)["perplexity"]
    blocks = work / "test_blocks.safetensors"
    save_file({"input_ids": task.blocks("test").contiguous()}, str(blocks))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

    def plain(directory: Path):
        return subprocess.run(
            [
                sys.executable,
                "-c",
                export_hf.PLAIN,
                str(directory),
                str(blocks),
                str(args.eval_batch),
                str(args.threads),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=3600,
        )

    child, plain_error = plain(ct_dir), None
    if child.returncode != 0:  # transformers 5 + compressed-tensors 0.20 cannot load packed asymmetric zero points
        plain_error = [ln for ln in child.stderr.strip().splitlines() if ln.strip()][-1][:300]
        deq = work / "llmc_gptq_g64_dequantize"  # the same files, config asking to decode at load time
        deq.mkdir(exist_ok=True)
        for f in ct_dir.iterdir():
            if f.name != "config.json" and not (deq / f.name).exists():
                (deq / f.name).symlink_to(f.resolve())
        cfg = dict(config, quantization_config={**config["quantization_config"], "dequantize": True})
        (deq / "config.json").write_text(json.dumps(cfg))
        child = plain(deq)
        if child.returncode != 0:
            sys.exit(f"plain transformers failed:\n{child.stderr[-4000:]}")
    theirs = json.loads(child.stdout.strip().splitlines()[-1])
    result = {
        "llmc_dir": str(ct_dir),
        "llmc": llmc,
        "quantization_config": config.get("quantization_config"),
        "llmc_directory_bytes": dir_bytes(ct_dir),
        "llmc_weights_bytes": sum(f.stat().st_size for f in ct_dir.glob("*.safetensors")),
        "netslim_open_s": round(open_s, 2),
        "netslim_module_kinds": {k: v for k, v in kinds.items() if "Quantized" in k or k == "Linear"},
        "netslim_perplexity": ours,
        "transformers_perplexity": theirs["perplexity"],
        "relative_difference": abs(theirs["perplexity"] - ours) / theirs["perplexity"],
        "transformers": theirs,
        "transformers_default_load_error": plain_error,
        "transformers_loaded_with": "quantization_config.dequantize: true" if plain_error else "as saved",
        "eval_tokens": args.eval_blocks * 512,
        "threads": args.threads,
        "versions": export_hf._versions(),
        "load_avg": os.getloadavg()[0],
        "command": "OMP_NUM_THREADS=2 .venv/bin/python benchmarks/import_llmc.py " + " ".join(sys.argv[1:]),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "netslim_perplexity",
                    "transformers_perplexity",
                    "relative_difference",
                    "llmc_directory_bytes",
                )
            }
        )
    )


if __name__ == "__main__":
    main()
