"""Issue 19: streaming one-shot compression at real size, through the CLI, under a hard memory limit.

Part ``big``: a random-initialised Llama-architecture model of >= 1B parameters (TinyLlama-1.1B's
geometry: hidden 2048, 22 blocks, 32 heads / 4 KV heads, FFN 5632, vocab 32000) written as
sharded safetensors under ``--work`` one tensor at a time (the writer never holds the model),
then ``netslim compress`` with GPTQ w4 g128 and with SparseGPT 50 % (``stream: true``), each
run under a hard memory limit below the model's fp32 bytes: ``systemd-run --user --scope -p
MemoryMax=`` 0.5 x fp32 where a user systemd answers, else ``prlimit --as=`` 0.75 x fp32 (an
address-space limit: torch, transformers and glibc reserve ~1 GB of address space beyond what
is resident, so the same figure as for resident memory would stop the interpreter, not the
model); ``--limit-x`` overrides. The JSON says which. Target: peak RSS <= 0.5 x fp32, read
from ``wait4`` (ru_maxrss); time per block and each stage's measured peak from the report.
``memory_budget`` = 0.5 x fp32 less 0.4 GB (interpreter and libraries).

Part ``smollm2``: the shipped recipe ``sparsegpt_smollm2_50`` (``stream: true``) and the same
recipe with ``stream: false``: identical perplexity (and artifact tensors), peak RSS of each and
their ratio. The zoo model's safetensors copy (``$NETSLIM_CACHE/stream/smollm2``) is written
first, in its own command, so that neither measured run pays for it.

    .venv/bin/python benchmarks/streaming.py [--parts big,smollm2] [--work .cache/streaming]
    .venv/bin/python benchmarks/streaming.py --tiny        # seconds: a 2-block model, checks the script

Results: ``benchmarks/results/issue19_streaming.json`` (``issue19_streaming_tiny.json`` with --tiny).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = str(ROOT / ".venv" / "bin" / "python")
NETSLIM = [PY, "-m", "netslim"]
RESULTS = ROOT / "benchmarks" / "results"

BIG = {
    "vocab_size": 32000,
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
}
TINY = {
    "vocab_size": 512,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
}


# ------------------------------------------------------------------------ the model
def write_random_llama(path: Path, geometry: dict, shard_bytes: int, seed: int = 0) -> int:
    """A random Llama (HF's initialisation: N(0, 0.02) matrices, unit norms) as sharded safetensors,
    written tensor by tensor (at most one shard in memory); returns the fp32 bytes."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from netslim.models.hf_tokenizers import byte_tokenizer

    if (path / "model.safetensors.index.json").is_file():
        return json.loads((path / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cfg = LlamaConfig(**geometry, bos_token_id=256, eos_token_id=256, pad_token_id=256, tie_word_embeddings=False)
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(cfg)
    gen = torch.Generator().manual_seed(seed)
    weight_map, shard, size, total, k = {}, {}, 0, 0, 0

    def flush() -> None:
        nonlocal shard, size, k
        if shard:
            k += 1
            name = f"model-{k:05d}.safetensors"
            save_file(shard, str(tmp / name), metadata={"format": "pt"})
            weight_map.update({n: name for n in shard})
            shard, size = {}, 0

    for name, t in skeleton.state_dict().items():
        value = (
            torch.ones(t.shape)
            if name.endswith("norm.weight")
            else torch.empty(t.shape).normal_(0, 0.02, generator=gen)
        )
        shard[name] = value
        size += value.numel() * 4
        total += value.numel() * 4
        if size >= shard_bytes:
            flush()
    flush()
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.save_pretrained(tmp)
    byte_tokenizer("causal").save_pretrained(tmp)
    os.replace(tmp, path)
    return total


def write_corpus(path: Path, lines: int) -> Path:
    """Plain English-and-code text (netslim's own sources), deterministic: calibration and test text."""
    if not path.is_file():
        text = []
        for f in sorted((ROOT / "src" / "netslim").rglob("*.py")):
            text += [ln for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
        path.write_text("\n".join(text[:lines]) + "\n")
    return path


# --------------------------------------------------------------------- the limit
def limiter(fp32: int, limit_x: float | None) -> tuple[list[str], str, int]:
    """The command prefix that caps a run's memory below ``fp32`` bytes, how, and the limit."""
    probe = (
        subprocess.run(["systemd-run", "--user", "--scope", "-q", "true"], capture_output=True)
        if shutil.which("systemd-run")
        else None
    )
    if probe is not None and probe.returncode == 0:
        limit = int((limit_x or 0.5) * fp32)
        return (
            ["systemd-run", "--user", "--scope", "-q", "-p", f"MemoryMax={limit}", "-p", "MemorySwapMax=0"],
            f"systemd-run --user --scope MemoryMax={limit}",
            limit,
        )
    if shutil.which("prlimit"):
        limit = int((limit_x or 0.75) * fp32)
        return ["prlimit", f"--as={limit}"], f"prlimit --as={limit} (address space)", limit
    raise SystemExit("no way to limit memory here (neither systemd-run --user nor prlimit works)")


def run(cmd: list[str], prefix: list[str] = ()) -> dict:
    """Run ``cmd`` from the repo root: wall seconds, peak RSS (bytes, wait4), exit code, last lines."""
    env = {
        **os.environ,
        "NETSLIM_PROGRESS": "0",
        "COLUMNS": "160",
        "MALLOC_ARENA_MAX": "2",  # fewer 64 MB arenas
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1)),
    }
    full = [*prefix, *map(str, cmd)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(full, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    record = {
        "command": " ".join(full),
        "seconds": round(seconds, 1),
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "exit": code,
        "output": out.strip().splitlines()[-8:],
    }
    print(f"[{seconds:7.1f} s, {usage.ru_maxrss / 1024:,.0f} MiB, exit {code}] {record['command']}", flush=True)
    if code != 0:
        print(out[-4000:], file=sys.stderr)
    return record


def recipe(
    path: Path, step: dict, *, stream: bool, budget: str | None, export: dict, data: dict, base: str | None = None
) -> Path:
    import yaml

    spec = (
        yaml.safe_load((ROOT / "src" / "netslim" / "recipes" / f"{base}.yaml").read_text())
        if base
        else {
            "name": path.stem,
            "data": data,
            "measure": {"batch_size": 1, "repeats": 3, "paired": False},
            "steps": [step, {"method": "evaluate"}, {"method": "export", **export}],
        }
    )
    spec["stream"] = stream
    if budget is not None:
        spec["memory_budget"] = budget
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def summary(out: Path, run_record: dict, fp32: int) -> dict:
    rep = json.loads((out / "report.json").read_text())
    step = rep["steps"][0]
    return {
        "run": run_record,
        "peak_rss_x_fp32": round(run_record["peak_rss_bytes"] / fp32, 3),
        "perplexity": {"baseline": rep["baseline"].get("perplexity"), "final": rep["final"].get("perplexity")},
        "size_bytes": {"baseline": rep["baseline"]["size_bytes"], "final": rep["final"]["size_bytes"]},
        "step_seconds": round(step["seconds"], 1),
        "stream": step["notes"].get("stream"),
        "memory": rep["memory"],
        "artifact": rep["artifact"],
    }


# -------------------------------------------------------------------------- parts
def part_big(work: Path, tiny: bool, samples: int, seq_len: int, limit_x: float) -> dict:
    geometry = TINY if tiny else BIG
    model = work / ("tiny_llama" if tiny else "llama_1b")
    t0 = time.perf_counter()
    fp32 = write_random_llama(model, geometry, 2**20 if tiny else 1 << 30)
    made = round(time.perf_counter() - t0, 1)
    corpus = write_corpus(work / "corpus.txt", 4000 if tiny else 40000)
    prefix, how, limit = limiter(3 << 30, 1.0) if tiny else limiter(fp32, limit_x)
    # What a step may use beyond the interpreter and libraries (~0.4 GB): the RSS target less that.
    budget = "256MiB" if tiny else f"{max(256, (fp32 // 2 - (400 << 20)) >> 20)}MiB"
    data = {"seq_len": seq_len, "limit": 2 if tiny else 4, "eval_batch_size": 1}
    out: dict = {
        "model": {"path": str(model), "geometry": geometry, "fp32_bytes": fp32, "written_seconds": made},
        "limit": {"bytes": limit, "how": how, "x_fp32": None if tiny else round(limit / fp32, 3)},
        "memory_budget": budget,
    }
    for name, step, export in (
        (
            "gptq_w4g128",
            {
                "method": "gptq",
                "bits": 4,
                "group_size": 128 if not tiny else 64,
                "num_samples": samples,
                "seq_len": seq_len,
                "batch_size": 1,
            },
            {"filename": "gptq"},
        ),
        (
            "sparsegpt_50",
            {"method": "sparsegpt", "sparsity": 0.5, "num_samples": samples, "seq_len": seq_len, "batch_size": 1},
            {"format": "sparse", "filename": "sparsegpt"},
        ),
    ):
        rec = recipe(work / f"{name}_stream.yaml", step, stream=True, budget=budget, export=export, data=data)
        dest = work / f"run_{name}"
        shutil.rmtree(dest, ignore_errors=True)
        r = run([*NETSLIM, "compress", rec, "--model", model, "--data", corpus, "--out", dest], prefix)
        out[name] = summary(dest, r, fp32) if r["exit"] == 0 else {"run": r}
        if r["exit"] == 0 and not tiny:
            out[name]["peak_rss_within_0.5x_fp32"] = r["peak_rss_bytes"] <= 0.5 * fp32
    return out


def part_smollm2(work: Path, tiny: bool) -> dict:
    """The shipped sparsegpt_smollm2_50 streamed (as shipped) and in memory (stream: false)."""
    name = "tiny-llama" if tiny else "smollm2"
    prep = run([PY, "-c", f"from netslim.models.streamed import zoo_dir; print(zoo_dir({name!r}))"])
    out: dict = {"zoo_safetensors_copy": prep}
    reports = {}
    for stream in (True, False):
        base = None if tiny else "sparsegpt_smollm2_50"
        step = {"method": "sparsegpt", "sparsity": 0.5, "num_samples": 8, "seq_len": 64, "batch_size": 2}
        rec = recipe(
            work / f"smollm2_{stream}.yaml",
            step,
            stream=stream,
            budget="384MiB" if stream else None,
            export={"format": "sparse", "filename": "sparsegpt"},
            data={"limit": 2, "seq_len": 64},
            base=base,
        )
        dest = work / f"run_smollm2_{'stream' if stream else 'memory'}"
        shutil.rmtree(dest, ignore_errors=True)
        r = run([*NETSLIM, "compress", rec, "--model", name, "--out", dest])
        if r["exit"] != 0:
            out[f"stream_{stream}"] = {"run": r}
            return out
        fp32 = json.loads((dest / "report.json").read_text())["memory"]["fp32_model_bytes"]
        reports[stream] = out["streamed" if stream else "in_memory"] = summary(dest, r, fp32)
    s, m = reports[True], reports[False]
    out["identical_perplexity"] = s["perplexity"] == m["perplexity"]
    out["identical_artifact_tensors"] = _same_tensors(Path(s["artifact"]), Path(m["artifact"]))
    out["peak_rss_ratio_streamed_over_in_memory"] = round(s["run"]["peak_rss_bytes"] / m["run"]["peak_rss_bytes"], 3)
    return out


def _same_tensors(a: Path, b: Path) -> bool:
    from safetensors import safe_open

    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        if set(fa.keys()) != set(fb.keys()):
            return False
        return all(fa.get_tensor(k).equal(fb.get_tensor(k)) for k in fa.keys())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="big,smollm2")
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "streaming")
    ap.add_argument("--tiny", action="store_true", help="a 2-block model and short runs: checks the script")
    ap.add_argument("--samples", type=int, default=16, help="calibration sequences of the 1B runs")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument(
        "--limit-x",
        type=float,
        default=None,
        help="hard limit as a multiple of fp32 bytes (default 0.5 with systemd-run, 0.75 with prlimit --as)",
    )
    args = ap.parse_args()
    work = args.work / ("tiny" if args.tiny else "real")
    work.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        os.environ.setdefault("NETSLIM_CACHE", str(work / "cache"))
    result = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "tiny": args.tiny,
    }
    parts = args.parts.split(",")
    if "big" in parts:
        result["big"] = part_big(
            work, args.tiny, 8 if args.tiny else args.samples, 64 if args.tiny else args.seq_len, args.limit_x
        )
    if "smollm2" in parts:
        result["smollm2"] = part_smollm2(work, args.tiny)
    RESULTS.mkdir(parents=True, exist_ok=True)
    dest = RESULTS / f"issue19_streaming{'_tiny' if args.tiny else ''}.json"
    if dest.is_file() and not args.tiny:  # one part per run: keep the other part's record
        previous = json.loads(dest.read_text())
        result = {
            **previous,
            **result,
            "part_dates": {**previous.get("part_dates", {}), **{p: result["date"] for p in parts}},
        }
    tmp = dest.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str))
    tmp.replace(dest)
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
