"""The ``netslim`` command line. Bad input: one line on stderr, exit code 2."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from netslim.api import recipe_path as _recipe_path
from netslim.api import recipes_dir  # noqa: F401  (netslim.cli.recipes_dir: where `recipes` looks)
from netslim.core.errors import NetslimError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="netslim: compress trained PyTorch networks and prove the result.")
console = Console()


def _table(title: str, header: list[str], rows: list[list[str]]) -> Table:
    t = Table(title=title)
    for h in header:
        t.add_column(h, justify="right" if h not in ("quantity", "name", "type", "layer", "recipe") else "left")
    for r in rows:
        t.add_row(*r)
    return t


def _limit_options(limit: Optional[int]) -> dict:
    return {"limit": limit} if limit else {}


_MODEL_HELP = "zoo name, artifact, Hugging Face model directory, or path/to/file.py:factory"
_DATA_HELP = "your data: an image folder, a CSV/JSONL file, text files (.txt/.md), or a folder of them"
_TASK_HELP = "auto | image-classification | text-classification | causal-lm | embedding (default: inferred)"


def _data(data: Optional[str], task: Optional[str]):
    if task is not None:
        import typing

        from netslim.train.file_tasks import TaskName

        if task not in typing.get_args(TaskName):
            raise NetslimError(f"--task must be one of {', '.join(typing.get_args(TaskName))}; got {task[:100]!r}.")
        if data is None:
            raise NetslimError("--task goes with --data PATH.")
    if data is None:
        return None
    return {"path": data, **({"task": task} if task else {})}


def _check_limit(limit: Optional[int]) -> None:
    if limit is not None and limit < 1:
        raise NetslimError(f"--limit must be an int >= 1; got {limit}.")


@app.command()
def train(model_arg: Optional[str] = typer.Argument(None, metavar="[MODEL]", help=_MODEL_HELP),
          model: Optional[str] = typer.Option(None, "--model", help="the model (instead of the argument)"),
          data: Optional[str] = typer.Option(None, help=_DATA_HELP),
          task: Optional[str] = typer.Option(None, help=_TASK_HELP),
          weights: Optional[Path] = typer.Option(None, help="initial weights for file.py:factory models"),
          epochs: Optional[int] = typer.Option(None, help="override the default epochs"),
          lr: Optional[float] = typer.Option(None, help="override the default learning rate"),
          batch_size: Optional[int] = typer.Option(None, help="override the default batch size"),
          out: Optional[Path] = typer.Option(None, help="artifact to write (zoo default: the checkpoint cache)"),
          skip_existing: bool = typer.Option(False, help="do nothing if the output exists"),
          seed: int = typer.Option(0), limit: Optional[int] = typer.Option(None, help="train on a data subset")):
    """Train a model on its dataset (zoo) or on your data (--data) and save the artifact."""
    from netslim.train.user import train_model

    ref = model or model_arg
    if ref is None or (model and model_arg and model != model_arg):
        raise NetslimError("Give the model once: netslim train MODEL or netslim train --model MODEL.")
    _check_limit(limit)
    overrides = {k: v for k, v in (("epochs", epochs), ("lr", lr), ("batch_size", batch_size)) if v is not None}
    result = train_model(ref, data=_data(data, task), weights=weights, out=out, seed=seed, limit=limit,
                         skip_existing=skip_existing, **overrides)
    console.print(result)


@app.command()
def compress(recipe: str = typer.Argument(..., help="recipe YAML path or shipped recipe name"),
             model: Optional[str] = typer.Option(None, help=_MODEL_HELP),
             data: Optional[str] = typer.Option(None, help=_DATA_HELP),
             task: Optional[str] = typer.Option(None, help=_TASK_HELP),
             weights: Optional[Path] = typer.Option(None, help="weights for a file.py:factory model"),
             base: Optional[str] = typer.Option(None, help="file.py:factory when --model is an artifact of your class"),
             out: Path = typer.Option(Path("runs/latest"), help="output directory"),
             resume: bool = typer.Option(False, help="continue after the last completed step"),
             limit: Optional[int] = typer.Option(None, help="use a data subset (smoke runs)")):
    """Run a compression recipe; writes the artifact and OUT/report.{json,md,html}."""
    from netslim.recipe import load_recipe, run_recipe
    from netslim.report import summary_rows

    _check_limit(limit)
    rec = load_recipe(_recipe_path(recipe))
    report = run_recipe(rec, out, model_ref=model, resume=resume, data_options=_limit_options(limit),
                        data=_data(data, task), weights=weights, base=base)
    console.print(_table(f"{report['recipe']}: {report['model']} on {report['dataset']}",
                         ["quantity", "baseline", "compressed", "ratio"], [list(r) for r in summary_rows(report)]))
    console.print(f"artifact: {report['artifact']}\nreport: {out / 'report.html'}")


def _open(artifact: str, model: Optional[str], weights: Optional[Path], dataset: Optional[str],
          data: Optional[str], task: Optional[str], limit: Optional[int]):
    """The model and task of ``eval`` / ``bench`` / ``inspect``, and a line saying which data."""
    from netslim.models.sources import open_model
    from netslim.recipe.inputs import resolve_task, stored_reference

    _check_limit(limit)
    opened = open_model(artifact, weights=weights, base=model)
    reference = stored_reference(opened)
    t = resolve_task(opened, data=_data(data, task), dataset=dataset, options=_limit_options(limit),
                     reference=reference)
    if t.metric == "fidelity" and reference is None and opened.info.get("recipe"):
        raise NetslimError(f"{artifact}: fidelity compares to the run's original model, whose file "
                           f"{opened.info.get('reference', '(not recorded)')!r} is gone; score it against "
                           "another original with netslim.compress or re-run the recipe.")
    return opened.model, t, _data_line(opened.info.get("data"), t)


def _data_line(stored: Optional[dict], task) -> str:
    spec = getattr(task, "spec", None)
    if spec is None:
        return f"data: {task.describe().get('dataset', '?')}"
    line = f"data: {spec.path} ({spec.task}, sha256 {str(spec.sha256)[:12]})"
    if stored and stored.get("sha256"):
        if stored.get("path") != spec.path:
            return line + "; not the data of the run that made this artifact (--data given)"
        same = stored["sha256"] == spec.sha256
        return line + ("; the data of the run that made this artifact" if same
                       else f"; WARNING: changed since the run (was sha256 {stored['sha256'][:12]})")
    return line


_ART_HELP = "artifact (.safetensors/.nsz), zoo name, Hugging Face directory or file.py:factory"
_BASE_HELP = "path/to/file.py:factory: rebuilds artifacts of your own model class"


@app.command(name="eval")
def eval_(artifact: str = typer.Argument(..., help=_ART_HELP),
          model: Optional[str] = typer.Option(None, help=_BASE_HELP),
          weights: Optional[Path] = typer.Option(None, help="weights when ARTIFACT is file.py:factory"),
          dataset: Optional[str] = typer.Option(None, help="a named dataset instead of the stored one"),
          data: Optional[str] = typer.Option(None, help=_DATA_HELP), task: Optional[str] = typer.Option(None),
          split: str = typer.Option("test"), limit: Optional[int] = typer.Option(None)):
    """Evaluate a model on the data it was made on (stored in the artifact), or on --data."""
    net, t, line = _open(artifact, model, weights, dataset, data, task, limit)
    res = t.evaluate(net, split)
    console.print(line)
    console.print(" ".join(f"{k}={v:.4f}" for k, v in res.items()))


@app.command()
def bench(artifact: str = typer.Argument(..., help=_ART_HELP),
          model: Optional[str] = typer.Option(None, help=_BASE_HELP),
          batch_size: int = typer.Option(64), threads: Optional[int] = typer.Option(None),
          repeats: int = typer.Option(30), dataset: Optional[str] = typer.Option(None),
          data: Optional[str] = typer.Option(None, help=_DATA_HELP), task: Optional[str] = typer.Option(None)):
    """Measure an artifact: metric, params, non-zeros, MACs, bytes on disk, latency."""
    from netslim.measure import model_summary

    for name, v in (("--batch-size", batch_size), ("--repeats", repeats), ("--threads", threads)):
        if v is not None and v < 1:
            raise NetslimError(f"{name} must be an int >= 1; got {v}.")
    net, t, line = _open(artifact, model, None, dataset, data, task, None)
    path = Path(artifact) if Path(artifact).is_file() else None
    s = model_summary(net, t, artifact=path, batch_size=batch_size, threads=threads, repeats=repeats)
    console.print(line)
    console.print(_table(str(artifact), ["quantity", "value"], [[k, f"{v:.4g}" if isinstance(v, float) else f"{v:,}"]
                                                                  for k, v in s.items()]))


@app.command()
def inspect(artifact: str = typer.Argument(..., help=_ART_HELP),
            model: Optional[str] = typer.Option(None, help=_BASE_HELP),
            dataset: Optional[str] = typer.Option(None), data: Optional[str] = typer.Option(None, help=_DATA_HELP)):
    """Per-layer table of an artifact: shape, params, non-zeros, bits, MACs (.nsz: where its bits go)."""
    from netslim.measure import layer_table

    if artifact.endswith(".nsz") and Path(artifact).is_file():  # Huffman-coded: bits per tensor
        from netslim.codec.inspect import breakdown_table

        console.print(_table(str(artifact), *breakdown_table(Path(artifact))))

    net, t, _ = _open(artifact, model, None, dataset, data, None, None)
    rows = layer_table(net, t.example_inputs(1))
    console.print(_table(str(artifact), ["layer", "type", "shape", "params", "nonzero", "bits", "macs"],
                         [[r.name, r.type, "x".join(map(str, r.shape)), f"{r.params:,}", f"{r.nonzero:,}",
                           f"{r.bits:g}", f"{r.macs:,}"] for r in rows]))


@app.command()
def recipes():
    """List the shipped recipes; 'model' is the zoo model a recipe is tied to, or 'any (--model)'."""
    import yaml

    rows = []
    for p in sorted(recipes_dir().glob("*.yaml")):
        try:
            d = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError:
            d = {"description": "(malformed YAML)"}
        if not isinstance(d, dict):
            d = {"description": "(not a recipe mapping)"}
        # A recipe without `model:` is about a technique: it runs on whatever --model names.
        model = str(d["model"]) if d.get("model") else "any (--model)"
        desc = str(d.get("description") or "").strip()
        rows.append([p.stem, model, desc.splitlines()[0] if desc else ""])
    console.print(_table(f"recipes in {recipes_dir()}", ["recipe", "model", "description"], rows))


def main() -> None:
    logging.basicConfig(level=os.environ.get("NETSLIM_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    try:
        app(standalone_mode=False)
    except NetslimError as e:
        print(f"netslim: error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # typer/click usage errors
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(2)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
