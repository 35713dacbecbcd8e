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

from netslim.core.errors import NetslimError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="netslim: compress trained PyTorch networks and prove the result.")
console = Console()


def recipes_dir() -> Path:
    """``$NETSLIM_RECIPES`` if set, else the recipes shipped inside the package (works from a wheel)."""
    env = os.environ.get("NETSLIM_RECIPES")
    return Path(env) if env else Path(__file__).resolve().parent / "recipes"


def _recipe_path(ref: str) -> Path:
    p = Path(ref)
    if p.exists() or p.suffix in (".yaml", ".yml"):
        return p
    return recipes_dir() / f"{ref}.yaml"


def _table(title: str, header: list[str], rows: list[list[str]]) -> Table:
    t = Table(title=title)
    for h in header:
        t.add_column(h, justify="right" if h not in ("quantity", "name", "type", "layer", "recipe") else "left")
    for r in rows:
        t.add_row(*r)
    return t


def _limit_options(limit: Optional[int]) -> dict:
    return {"limit": limit} if limit else {}


@app.command()
def train(model: str = typer.Argument(..., help="zoo model name, e.g. lenet300"),
          epochs: Optional[int] = typer.Option(None, help="override the model's default epochs"),
          out: Optional[Path] = typer.Option(None, help="where to write (default: the checkpoint cache)"),
          skip_existing: bool = typer.Option(False, help="do nothing if the checkpoint exists"),
          seed: int = typer.Option(0), limit: Optional[int] = typer.Option(None, help="train on a data subset")):
    """Train a zoo model from scratch on its dataset and save the checkpoint."""
    from netslim.core.serialize import save
    from netslim.models import model_entry
    from netslim.train.pretrain import AUGMENT, checkpoint_path, train_baseline
    from netslim.train.tasks import get_task

    entry = model_entry(model)
    path = out or checkpoint_path(model)
    if skip_existing and path.is_file():
        console.print(f"checkpoint exists: {path}")
        return
    task = get_task(entry.dataset, augment=AUGMENT.get(model, False), seed=seed, **_limit_options(limit))
    overrides = {"epochs": epochs} if epochs is not None else {}
    net, summary = train_baseline(model, task=task, seed=seed, **overrides)
    save(net, path, {"model": model, "dataset": entry.dataset})
    test = task.evaluate(net, "test")
    console.print(f"trained {model}: {summary['epochs']} epochs in {summary['seconds']:.0f} s; "
                  f"test {task.metric} {test[task.metric]:.4f}; saved {path}")


@app.command()
def compress(recipe: str = typer.Argument(..., help="recipe YAML path or shipped recipe name"),
             model: Optional[str] = typer.Option(None, help="zoo model name or artifact path"),
             out: Path = typer.Option(Path("runs/latest"), help="output directory"),
             resume: bool = typer.Option(False, help="continue after the last completed step"),
             limit: Optional[int] = typer.Option(None, help="use a data subset (smoke runs)")):
    """Run a compression recipe; writes the artifact and OUT/report.{json,md,html}."""
    from netslim.recipe import load_recipe, run_recipe
    from netslim.report import summary_rows

    rec = load_recipe(_recipe_path(recipe))
    report = run_recipe(rec, out, model_ref=model, resume=resume, data_options=_limit_options(limit))
    console.print(_table(f"{report['recipe']}: {report['model']} on {report['dataset']}",
                         ["quantity", "baseline", "compressed", "ratio"], [list(r) for r in summary_rows(report)]))
    console.print(f"artifact: {report['artifact']}\nreport: {out / 'report.html'}")


def _artifact_task(artifact: Path, dataset: Optional[str], limit: Optional[int]):
    from netslim.core.serialize import load, read_description
    from netslim.train.tasks import get_task

    model = load(artifact)
    info = read_description(artifact).get("info", {}) if artifact.suffix == ".safetensors" else {}
    if artifact.suffix == ".nsz":
        from netslim.codec import read_nsz_info

        info = read_nsz_info(artifact)
    ds = dataset or info.get("dataset")
    if ds is None:
        raise NetslimError(f"{artifact} does not record its dataset; pass --dataset.")
    options = _limit_options(limit)
    if info.get("model") and ds.startswith("pydocs"):
        options["model_name"] = info["model"]
    return model, get_task(ds, **options)


@app.command(name="eval")
def eval_(artifact: Path, dataset: Optional[str] = typer.Option(None), split: str = typer.Option("test"),
          limit: Optional[int] = typer.Option(None)):
    """Evaluate an artifact on its dataset."""
    model, task = _artifact_task(artifact, dataset, limit)
    res = task.evaluate(model, split)
    console.print(" ".join(f"{k}={v:.4f}" for k, v in res.items()))


@app.command()
def bench(artifact: Path, batch_size: int = typer.Option(64), threads: Optional[int] = typer.Option(None),
          repeats: int = typer.Option(30), dataset: Optional[str] = typer.Option(None)):
    """Measure an artifact: metric, params, non-zeros, MACs, bytes on disk, latency."""
    from netslim.measure import model_summary

    model, task = _artifact_task(artifact, dataset, None)
    s = model_summary(model, task, artifact=artifact, batch_size=batch_size, threads=threads, repeats=repeats)
    console.print(_table(str(artifact), ["quantity", "value"], [[k, f"{v:.4g}" if isinstance(v, float) else f"{v:,}"]
                                                                  for k, v in s.items()]))


@app.command()
def inspect(artifact: Path, dataset: Optional[str] = typer.Option(None)):
    """Per-layer table of an artifact: shape, params, non-zeros, bits, MACs (.nsz: where its bits go)."""
    from netslim.measure import layer_table

    if artifact.suffix == ".nsz":  # Huffman-coded: weight, index, table and codebook bits per tensor
        from netslim.codec.inspect import breakdown_table

        console.print(_table(str(artifact), *breakdown_table(artifact)))

    model, task = _artifact_task(artifact, dataset, None)
    rows = layer_table(model, task.example_inputs(1))
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
