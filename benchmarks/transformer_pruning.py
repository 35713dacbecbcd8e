"""Issue 20: transformers pruned as the literature promises, on a labelled BERT task.

The task is ``docs-sections`` (Python docs paragraphs -> their top-level section, split by file;
:mod:`netslim.data.docs_sections`), the dense model ``minilm-docs`` (all-MiniLM-L6-v2 + a
classification head). Sections (``--only`` picks some; results merge into
``benchmarks/results/issue20_transformer_pruning.json``, ``--tiny`` into ``..._tiny.json``):

* ``baseline``: minilm-docs fine-tuned with each of ``--seeds`` (netslim's default: AdamW 5e-5,
  3 epochs, batch 32); test accuracy mean +- std; the first seed's model is the base of the
  sections below (or ``--checkpoint``, e.g. what ``netslim train minilm-docs`` wrote).
* ``heads``: 20 / 30 / 40 % of the 72 heads (global, first-order Taylor), without recovery and
  with a short distillation recovery (``--recovery-epochs``, KD on logits + hidden states).
* ``layers``: 2 and 3 of the 6 blocks dropped, chosen by block influence vs the first / last /
  middle ones, without and with recovery.
* ``width``: hidden size 384 -> 288 and 192 (Minitron ranking, norm correction; BERT keeps
  width / 32 heads), without recovery (also without the norm correction) and with recovery.
* ``cofi``: CoFi at 50 % and 75 % of the blocks' attention + FFN weights (``--cofi-epochs`` of
  mask learning + ``--cofi-finetune-epochs`` of recovery); heads + FFN at the same block size
  with the same total training; CPU latency at batch 1 and 32 (128 tokens, interleaved) of
  all of them vs dense, and CUDA latency when the run is on a GPU.

Every pruned model is saved (``netslim.save``), loaded back (``netslim.load``) and evaluated
again; both accuracies are in the results with ``reload_identical``.

    .venv/bin/python benchmarks/transformer_pruning.py --tiny              # smoke run, minutes on CPU
    .venv/bin/python benchmarks/transformer_pruning.py --device cuda       # the real thing (GPU)
    .venv/bin/python benchmarks/transformer_pruning.py --only heads --checkpoint ~/.cache/netslim/models/minilm-docs.safetensors
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

import netslim
from netslim.core.serialize import atomic_write
from netslim.distill.layerwise import layerwise_task
from netslim.measure import count_params, interleaved_latency
from netslim.prune.cofi import CoFiConfig, cofi_train
from netslim.prune.structured import drop_transformer_blocks, shrink_ffn, shrink_heads, shrink_width
from netslim.prune.structured.hf import block_list
from netslim.train.loop import FinetuneConfig, fit
from netslim.train.tasks import get_task

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "results" / "issue20_transformer_pruning.json"
SECTIONS = ("baseline", "heads", "layers", "width", "cofi")


# --------------------------------------------------------------------------- setup
class Run:
    """Task, device, base model and budgets of one benchmark run."""

    def __init__(self, args):
        self.args, self.tiny = args, args.tiny
        self.device = torch.device(
            "cuda"
            if args.device == "auto" and torch.cuda.is_available()
            else ("cpu" if args.device == "auto" else args.device)
        )
        opts = {"limit": args.limit} if args.limit else {}
        if self.tiny:
            opts = {"model_name": "tiny-bert", "limit": args.limit or 96, "max_length": 32}
        self.task = get_task("docs-sections", **opts)
        self.max_length = 32 if self.tiny else 128
        self.art = Path(args.artifacts)
        self.art.mkdir(parents=True, exist_ok=True)
        self.base: nn.Module | None = None
        self.lr = 1e-3 if self.tiny else 5e-5  # a random tiny model needs a larger step than fine-tuning does

    def train_cfg(self, epochs: float) -> FinetuneConfig:
        steps = self.args.max_steps or None
        return FinetuneConfig(
            epochs=max(1, int(round(epochs))),
            max_steps=steps,
            optimizer="adamw",
            lr=self.lr,
            weight_decay=0.01,
            warmup_epochs=0.1,
            batch_size=self.args.batch_size,
        )

    def fresh(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        if not self.tiny:
            return netslim.build_model("minilm-docs")
        from transformers import BertConfig, BertForSequenceClassification

        labels = list(self.task.classes)
        cfg = BertConfig(
            vocab_size=512,
            hidden_size=64,
            num_hidden_layers=6,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=64,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={n: i for i, n in enumerate(labels)},
            pad_token_id=256,
        )
        return BertForSequenceClassification(cfg).eval()

    def base_model(self) -> nn.Module:
        if self.base is None:
            if self.args.checkpoint:
                self.base = netslim.load(self.args.checkpoint).eval()
            elif (self.art / "base.safetensors").is_file():
                self.base = netslim.load(self.art / "base.safetensors").eval()
            else:
                self.base, _ = self.train_seed(self.args.seeds[0])
        return self.base.to(self.device)

    def train_seed(self, seed: int) -> tuple[nn.Module, dict]:
        from netslim.train.pretrain import baseline_config

        task = get_task("docs-sections", **{**self._task_options(), "seed": seed})
        model = self.fresh(seed).to(self.device)
        steps = self.args.base_steps or self.args.max_steps
        cfg = baseline_config(
            "minilm-docs",
            seed=seed,
            **({"max_steps": steps} if steps else {}),
            batch_size=self.args.batch_size,
            lr=self.lr,
        )
        summary = fit(model, task, cfg)
        model.eval()
        path = self.art / ("base.safetensors" if seed == self.args.seeds[0] else f"seed{seed}.safetensors")
        netslim.save(copy.deepcopy(model).cpu(), path, {"model": "minilm-docs", "dataset": "docs-sections"})
        return model, summary

    def _task_options(self) -> dict:
        return {k: v for k, v in self.task.describe().items() if k not in ("dataset", "metric")}

    # -- one variant
    def acc(self, model: nn.Module) -> float:
        return round(self.task.evaluate(model.to(self.device), "test")["accuracy"] * 100, 2)

    def recover(self, model: nn.Module, epochs: float) -> dict:
        t = layerwise_task(
            self.task, model, teacher=self.base_model(), distill=0.5, distill_temperature=4.0, hidden_weight=1.0
        )
        s = fit(model.to(self.device), t, self.train_cfg(epochs))
        return {"steps": s["steps"], "seconds": round(s["seconds"], 1)}

    def finish(self, name: str, model: nn.Module, row: dict) -> dict:
        """Save, reload, evaluate both: the row gets params, block size, file size and both accuracies."""
        model = model.eval()
        row["test_accuracy"] = self.acc(model)
        path = netslim.save(
            copy.deepcopy(model).cpu(),
            self.art / f"{name}.safetensors",
            {"model": "minilm-docs", "dataset": "docs-sections", "variant": name},
        )
        back = netslim.load(path).eval()
        # Reloaded == saved, checked on the logits of 64 test inputs (bit-identical); the whole test
        # split is evaluated again only when they differ (an evaluation is ~1 min on 2 CPU cores).
        probe = _inputs(self, 64, self.device)
        with torch.inference_mode():
            same = torch.equal(model.to(self.device)(**probe).logits, back.to(self.device)(**probe).logits)
        row["reload_identical"] = same
        row["reloaded_test_accuracy"] = row["test_accuracy"] if same else self.acc(back)
        row.update(
            params=count_params(model),
            block_params=block_params(model),
            file_bytes=Path(path).stat().st_size,
            artifact=str(path),
        )
        log(name, row)
        return row


def block_params(model: nn.Module) -> int:
    """Weight elements of the encoder blocks' Linear layers (CoFi's "encoder parameters")."""
    return sum(m.weight.numel() for b in block_list(model)[0] for m in b.modules() if isinstance(m, nn.Linear))


def log(name: str, row: dict) -> None:
    keys = ("test_accuracy", "accuracy_before_recovery", "params", "block_params", "reload_identical")
    print(f"  {name}: " + ", ".join(f"{k}={row[k]}" for k in keys if k in row), flush=True)


def _spread(values: list[float]) -> dict:
    return {
        "mean": round(statistics.mean(values), 2),
        "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
        "values": values,
    }


# -------------------------------------------------------------------------- sections
def baseline(run: Run) -> dict:
    accs, rows = [], []
    for seed in run.args.seeds:
        model, summary = run.train_seed(seed)
        if seed == run.args.seeds[0] and not run.args.checkpoint:
            run.base = model  # the base of the other sections (unless --checkpoint names one)
        accs.append(run.acc(model))
        rows.append(
            {
                "seed": seed,
                "test_accuracy": accs[-1],
                "best_val_accuracy": summary.get("best_accuracy"),
                "seconds": round(summary["seconds"], 1),
            }
        )
        print(f"  seed {seed}: test accuracy {accs[-1]}", flush=True)
    base = run.base_model()
    return {
        "seeds": rows,
        "test_accuracy": _spread(accs),
        "params": count_params(base),
        "block_params": block_params(base),
        "classes": list(run.task.classes),
        "test_size": len(run.task.splits["test"][0]),
    }


def _calibration(run: Run, n: int = 8, batch: int = 16) -> list:
    """Training batches on the run's device (activation statistics read them as they are)."""
    import itertools

    return [
        ({k: v.to(run.device) for k, v in x.items()}, y.to(run.device))
        for x, y in itertools.islice(run.task.train_batches(123, batch), n)
    ]


def heads(run: Run) -> dict:
    out = {"dense": {"test_accuracy": run.acc(run.base_model())}}
    batches = _calibration(run)
    for ratio in (0.2, 0.3, 0.4):
        for recover in (False, True):
            model = copy.deepcopy(run.base_model())
            model, rep = shrink_heads(
                model, ratio, criterion="taylor", scope="global", batches=batches, loss_fn=run.task.loss
            )
            row = {
                "ratio": ratio,
                "heads_removed": sum(g["size"] - g["kept"] for g in rep["groups"]),
                "heads_total": sum(_heads_per_block(run.base_model())),
                "heads_per_block": _heads_per_block(model),
            }
            if recover:
                row["accuracy_before_recovery"] = run.acc(model)
                row["recovery"] = run.recover(model, run.args.recovery_epochs)
            out[f"heads_{int(ratio * 100)}{'_recovered' if recover else ''}"] = run.finish(
                f"heads_{int(ratio * 100)}{'_rec' if recover else ''}", model, row
            )
    return out


def _heads_per_block(model: nn.Module) -> list[int]:
    cfg = model.config
    return [
        b.attention.self.query.out_features // (cfg.hidden_size // cfg.num_attention_heads)
        for b in block_list(model)[0]
    ]


def layers(run: Run) -> dict:
    n = len(block_list(run.base_model())[0])
    calib = run.task.calibration_inputs(16, seed=0)
    batches = [{k: v[i : i + 4] for k, v in calib.items()} for i in range(0, 16, 4)]
    out = {}
    for count in (2, 3):
        start = (n - count) // 2
        choices = {
            "influence": None,
            "first": list(range(count)),
            "last": list(range(n - count, n)),
            "middle": list(range(start, start + count)),
        }
        for how, indices in choices.items():
            for recover in (False, True):
                model = copy.deepcopy(run.base_model())
                model, rep = drop_transformer_blocks(
                    model, count, [{k: v.to(run.device) for k, v in b.items()} for b in batches], indices=indices
                )
                row = {"count": count, "of": n, "choice": how, "dropped": rep["dropped"], "influence": rep["influence"]}
                if recover:
                    row["accuracy_before_recovery"] = run.acc(model)
                    row["recovery"] = run.recover(model, run.args.recovery_epochs)
                key = f"drop{count}_{how}{'_recovered' if recover else ''}"
                out[key] = run.finish(f"layers_{key}", model, row)
    return out


def width(run: Run) -> dict:
    d = run.base_model().config.hidden_size
    batches = _calibration(run)
    out = {}
    for frac in (0.75, 0.5):
        target = int(d * frac)
        for variant in ("no_correction", "plain", "recovered"):
            model = copy.deepcopy(run.base_model())
            model, rep = shrink_width(model, target, batches=batches, norm_correction=variant != "no_correction")
            row = {
                "hidden_size": target,
                "of": d,
                "heads_per_block": model.config.num_attention_heads,
                "from_pretrained": rep["from_pretrained"],
                "norm_correction": variant != "no_correction",
            }
            if variant == "recovered":
                row["accuracy_before_recovery"] = run.acc(model)
                row["recovery"] = run.recover(model, run.args.recovery_epochs)
            out[f"width_{target}_{variant}"] = run.finish(f"width_{target}_{variant}", model, row)
    return out


def _inputs(run: Run, batch: int, device) -> dict:
    x = run.task.example_inputs(batch)  # padded to max_length tokens
    return {k: v.to(device) for k, v in x.items()}


def _cuda_ms(model: nn.Module, x: dict, repeats: int = 50) -> float:
    with torch.inference_mode():
        for _ in range(10):
            model(**x)
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(**x)
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1e3)
    return round(statistics.median(times), 3)


def cofi(run: Run) -> dict:
    out, models = {}, {"dense": copy.deepcopy(run.base_model()).eval()}
    epochs, ft = run.args.cofi_epochs, run.args.cofi_finetune_epochs
    for sparsity in (0.5, 0.75):
        tag = f"{int(sparsity * 100)}"
        model = copy.deepcopy(run.base_model())
        cfg = CoFiConfig(
            sparsity=sparsity,
            train={
                "epochs": epochs,
                "max_steps": run.args.max_steps or None,
                "batch_size": run.args.batch_size,
                "lr": run.lr,
                "warmup_epochs": 0.1,
            },
        )
        rep = cofi_train(model, run.task, cfg=cfg, teacher=run.base_model().eval())
        row = {
            k: rep[k]
            for k in (
                "sparsity",
                "expected_sparsity_end",
                "heads_kept",
                "neurons_kept",
                "hidden_kept",
                "attention_layers_removed",
                "ffn_layers_removed",
                "block_size_after",
            )
        }
        row["accuracy_before_recovery"] = run.acc(model)
        row["recovery"] = run.recover(model, ft)
        out[f"cofi_{tag}"] = run.finish(f"cofi_{tag}", model, row)
        models[f"cofi_{tag}"] = model
        # heads + FFN at the same block size, the same training (epochs + ft), distilled the same way
        s = rep["sparsity"]
        hf = copy.deepcopy(run.base_model())
        batches = _calibration(run)
        hf, _ = shrink_heads(hf, s, criterion="taylor", scope="global", batches=batches, loss_fn=run.task.loss)
        hf, _ = shrink_ffn(
            hf, s, criterion="taylor", scope="global", batches=batches, loss_fn=run.task.loss, min_keep_ratio=0.01
        )
        row = {"ratio": round(s, 4), "accuracy_before_recovery": run.acc(hf)}
        row["recovery"] = run.recover(hf, epochs + ft)
        out[f"heads_ffn_{tag}"] = run.finish(f"heads_ffn_{tag}", hf, row)
        models[f"heads_ffn_{tag}"] = hf
    out["latency"] = _latency(run, models)
    return out


def _latency(run: Run, models: dict[str, nn.Module]) -> dict:
    res = {"tokens": run.max_length, "threads": torch.get_num_threads()}
    cpu = {k: copy.deepcopy(m).cpu().eval() for k, m in models.items()}
    for batch in (1, 32):
        lat = interleaved_latency(cpu, _inputs(run, batch, "cpu"), rounds=run.args.rounds, repeats=run.args.repeats)
        dense = float(lat["dense"])
        res[f"cpu_b{batch}"] = {
            k: {"ms": round(float(v), 3), "iqr_ms": round(v.iqr_ms, 3), "speedup": round(dense / float(v), 3)}
            for k, v in lat.items()
        }
        print(f"  cpu b{batch}: " + ", ".join(f"{k} {float(v):.1f} ms" for k, v in lat.items()), flush=True)
    if run.device.type == "cuda":
        for batch in (1, 32):
            ms = {k: _cuda_ms(m.to(run.device).eval(), _inputs(run, batch, run.device)) for k, m in models.items()}
            res[f"cuda_b{batch}"] = {k: {"ms": v, "speedup": round(ms["dense"] / v, 3)} for k, v in ms.items()}
    return res


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--tiny", action="store_true", help="a random 6-block tiny BERT, few paragraphs, few steps")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--checkpoint", type=Path, default=None, help="the trained minilm-docs (skips its training)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--limit", type=int, default=None, help="at most N paragraphs per split")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-steps", type=int, default=None, help="cap every training run (smoke runs)")
    ap.add_argument("--base-steps", type=int, default=None, help="cap the baseline's training (default: --max-steps)")
    ap.add_argument("--recovery-epochs", type=float, default=1.0)
    ap.add_argument("--cofi-epochs", type=int, default=3)
    ap.add_argument("--cofi-finetune-epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--artifacts", type=Path, default=ROOT.parent / ".cache" / "issue20")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.tiny:
        args.seeds = args.seeds[:2]
        args.max_steps = args.max_steps or 4
        args.base_steps = args.base_steps or 60  # enough for the tiny model to beat the majority class
        args.batch_size = min(args.batch_size, 16)
        args.rounds, args.repeats = min(args.rounds, 2), min(args.repeats, 3)
        args.artifacts = args.artifacts.with_name(args.artifacts.name + "_tiny")
    out = args.out or (OUT.with_name(OUT.stem + "_tiny.json") if args.tiny else OUT)
    run = Run(args)
    results = json.loads(out.read_text()) if out.is_file() else {}
    for name in [s for s in SECTIONS if s in args.only]:
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        res = globals()[name](run)
        res["seconds"] = round(time.perf_counter() - start, 1)
        res["date"] = dt.datetime.now().isoformat(timespec="seconds")
        res["device"] = str(run.device)
        res["tiny"] = bool(args.tiny)
        results[name] = res
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2)))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
