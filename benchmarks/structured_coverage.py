"""Issue 22 coverage table: structured pruning on many architectures, netslim vs Torch-Pruning.

For each tiny random-config family of ``tests/structured/test_structured_families.py`` and each
unit kind (channels, heads, FFN neurons), netslim prunes 50 % through its public API
(``prune_channels`` / ``prune_heads`` / ``prune_ffn``) and the result is checked: forward works,
parameters fewer, ``netslim.save`` + ``netslim.load`` gives the same outputs. A kind that removes
nothing is recorded with the reason netslim gives. Torch-Pruning (the ``bench`` extra) runs on
the same models in the same process: ``MetaPruner`` at 50 % with the output layer ignored,
heads pruned where its ``num_heads`` dict can be filled from the config (as its HF examples
do), and its result counts as pruned when the forward works and parameters drop.

    OMP_NUM_THREADS=1 python benchmarks/structured_coverage.py

writes ``benchmarks/results/issue22_coverage.json`` and ``issue22_coverage.md`` (the table),
plus the time to build the generic graph of each family. Real-size graph-build timings
(SmolLM2, MobileNetV2) come from ``--real`` (run by the coordinator, not in tests).
"""
from __future__ import annotations

import argparse
import copy
import json
import signal
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "structured"))

import netslim  # noqa: E402
from netslim.prune.structured import prune_channels, prune_ffn, prune_heads  # noqa: E402
from netslim.prune.structured.generic import structured_graph  # noqa: E402
from test_structured_families import FAMILIES, build, n_params, out  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def _netslim(family: str, kind: str, tmp: Path) -> dict:
    model, x = build(family)
    before = n_params(model)
    try:
        if kind == "channels":
            model, r = prune_channels(model, x, ratio=0.5, scope="uniform")
        else:
            model, r = (prune_heads if kind == "heads" else prune_ffn)(model, 0.5, example_inputs=x)
    except netslim.NetslimError as e:
        return {"status": "error", "reason": str(e)[:200]}
    after = n_params(model)
    if after >= before:
        reasons = [s["reason"] for s in r.get("skipped", [])]
        return {"status": "skipped", "reason": (reasons[-1] if reasons else "nothing removed")[:200]}
    y = out(model, x)
    try:
        back = netslim.load(netslim.save(model, tmp / f"{family}-{kind}.safetensors"))
        reloaded = bool(torch.allclose(out(back, x), y, atol=1e-5))
    except netslim.NetslimError as e:
        return {"status": "pruned", "reloaded": False, "reason": str(e)[:200], "params": [before, after]}
    return {"status": "pruned", "reloaded": reloaded, "params": [before, after]}


def _heads_dict(model) -> dict:
    """Torch-Pruning's num_heads: the q/k/v Linears of each attention and their head count."""
    cfg = model.config
    n = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None) or getattr(cfg, "num_heads", None)
    heads = {}
    if not isinstance(n, int):
        return heads
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and name.rpartition(".")[2] in (
                "query", "key", "value", "q_proj", "k_proj", "v_proj", "q_lin", "k_lin", "v_lin"):
            heads[m] = n if name.rpartition(".")[2] not in ("k_proj", "v_proj") else \
                getattr(cfg, "num_key_value_heads", None) or n
    return heads


PEER_TIMEOUT_S = 30  # Torch-Pruning 1.6.1 loops for ever building Falcon's and Llama's graphs (tiny models: < 5 s otherwise)


class _TooLong(Exception):
    pass


def _too_long(signum, frame):
    raise _TooLong


def _torch_pruning(family: str, kind: str) -> dict:
    try:
        import torch_pruning as tp
    except ImportError:
        return {"status": "absent", "reason": "pip install netslim[bench] (torch-pruning)"}
    if kind == "ffn":
        return {"status": "n/a", "reason": "no FFN-only mode: its channel pruning covers FFN Linears"}
    model, x = build(family)
    before = n_params(model)
    head = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][-1:]  # the output layer
    heads = _heads_dict(model) if kind == "heads" else {}
    if kind == "heads" and not heads:
        return {"status": "skipped", "reason": "no q/k/v Linears for its num_heads"}
    if kind == "heads":  # heads only: every Linear but the q/k/v projections is kept as a pruning root
        head = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m not in heads]
    signal.signal(signal.SIGALRM, _too_long)
    signal.alarm(PEER_TIMEOUT_S)
    try:
        pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                      pruning_ratio=0.5, ignored_layers=head,
                                      num_heads=heads, prune_head_dims=False, prune_num_heads=kind == "heads",
                                      head_pruning_ratio=0.5, global_pruning=False,
                                      output_transform=lambda y: y.logits if hasattr(y, "logits") else y)
        pruner.step()
        y = out(model, x)
    except _TooLong:
        return {"status": "hang", "reason": f"stopped after {PEER_TIMEOUT_S} s (building its dependency graph)"}
    except Exception as e:  # noqa: BLE001 - a peer's failure is a result
        return {"status": "error", "reason": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
    finally:
        signal.alarm(0)
    after = n_params(model)
    if after >= before:
        return {"status": "skipped", "reason": "nothing removed"}
    if y.shape != out(build(family)[0], x).shape:
        return {"status": "error", "reason": "output shape changed"}
    return {"status": "pruned", "params": [before, after]}


def _cell(r: dict) -> str:
    if r["status"] == "pruned":
        return "pruned, reloaded" if r.get("reloaded", True) and "reloaded" in r else "pruned"
    return f"{r['status']}: {r.get('reason', '')[:70]}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="*", default=list(FAMILIES))
    p.add_argument("--real", action="store_true", help="also time the graph of SmolLM2 and MobileNetV2 (zoo)")
    args = p.parse_args()
    tmp = RESULTS / ".issue22_tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    rows, times = {}, {}
    for fam in args.families:
        model, x = build(fam)
        t0 = time.perf_counter()
        structured_graph(model, x)
        times[fam] = round(time.perf_counter() - t0, 3)
        rows[fam] = {kind: {"netslim": _netslim(fam, kind, tmp), "torch_pruning": _torch_pruning(fam, kind)}
                     for kind in ("channels", "heads", "ffn")}
        print(fam, {k: (v["netslim"]["status"], v["torch_pruning"]["status"]) for k, v in rows[fam].items()},
              flush=True)
    if args.real:
        from netslim.models import build_model

        for name, x in (("smollm2", None), ("mobilenetv2", torch.randn(1, 1, 28, 28))):
            model = build_model(name)
            t0 = time.perf_counter()
            structured_graph(model, x)
            times[name] = round(time.perf_counter() - t0, 3)
    data = {"torch": torch.__version__, "torch_pruning": getattr(sys.modules.get("torch_pruning"), "__version__", None),
            "rows": rows, "graph_seconds": times}
    (RESULTS / "issue22_coverage.json").write_text(json.dumps(data, indent=1))
    lines = ["| family | kind | netslim | Torch-Pruning |", "|---|---|---|---|"]
    for fam, kinds in rows.items():
        for kind, r in kinds.items():
            lines.append(f"| {fam} | {kind} | {_cell(r['netslim'])} | {_cell(r['torch_pruning'])} |")
    (RESULTS / "issue22_coverage.md").write_text("\n".join(lines) + "\n")
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()


if __name__ == "__main__":
    main()
