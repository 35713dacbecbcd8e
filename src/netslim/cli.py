"""The ``netslim`` command line. Bad input: one line on stderr, exit code 2."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from netslim.api import recipe_path as _recipe_path
from netslim.api import recipes_dir
from netslim.core.errors import NetslimError
from netslim.recipe.spec import MAX_LIMIT

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="netslim: compress trained PyTorch networks and prove the result."
)
console = Console()


def _table(title: str, header: list[str], rows: list[list[str]]) -> Table:
    t = Table(title=title)
    for h in header:
        t.add_column(h, justify="right" if h not in ("quantity", "name", "type", "layer", "recipe") else "left")
    for r in rows:
        t.add_row(*r)
    return t


def _limit_options(limit: int | None) -> dict:
    return {"limit": limit} if limit is not None else {}


_MODEL_HELP = "zoo name, artifact, Hugging Face model directory, or path/to/file.py:factory"
_NO_VERIFY_HELP = "skip the SHA-256 checks of netslim artifacts (faster loads of trusted files)"
_DATA_HELP = "your data: an image folder, a CSV/JSONL file, text files (.txt/.md), or a folder of them"
_TASK_HELP = "auto | image-classification | text-classification | causal-lm | embedding (default: inferred)"


def _data(data: str | None, task: str | None):
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


# Numbers are range-checked while the command line is parsed (one line, exit 2, before any work).
_MAX_SEED = 2**63 - 1  # torch.manual_seed's range


def _bounded(name: str, lo: float, hi: float | None = None, kind: type = int) -> Callable[[Any], Any]:
    """An option callback: ``name`` must be a ``kind`` in [lo, hi] (hi None: no upper bound;
    ``kind`` float: lo exclusive, finite)."""
    what = "an int" if kind is int else "a number"
    rule = (f">= {lo}" if kind is int else f"> {lo}") if hi is None else f"in [{lo}, {hi:,}]"

    def check(value: Any) -> Any:
        if value is None:
            return value
        ok = (lo <= value if kind is int else lo < value < float("inf")) and (hi is None or value <= hi)
        if not ok:
            raise NetslimError(f"{name} must be {what} {rule}; got {value}.")
        return value

    return check


def _limit(help: str = "use a data subset: at most N samples per split") -> Any:
    return typer.Option(None, callback=_bounded("--limit", 1, MAX_LIMIT), help=help)


@app.command()
def train(
    model_arg: str | None = typer.Argument(None, metavar="[MODEL]", help=_MODEL_HELP),
    model: str | None = typer.Option(None, "--model", help="the model (instead of the argument)"),
    data: str | None = typer.Option(None, help=_DATA_HELP),
    task: str | None = typer.Option(None, help=_TASK_HELP),
    weights: Path | None = typer.Option(None, help="initial weights for file.py:factory models"),
    epochs: int | None = typer.Option(
        None, callback=_bounded("--epochs", 0, 10_000), help="override the default epochs"
    ),
    lr: float | None = typer.Option(
        None, callback=_bounded("--lr", 0, kind=float), help="override the default learning rate"
    ),
    batch_size: int | None = typer.Option(
        None, callback=_bounded("--batch-size", 1, 1 << 20), help="override the default batch size"
    ),
    out: Path | None = typer.Option(None, help="artifact to write (zoo default: the checkpoint cache)"),
    skip_existing: bool = typer.Option(False, help="do nothing if the output exists"),
    seed: int = typer.Option(0, callback=_bounded("--seed", 0, _MAX_SEED)),
    limit: int | None = _limit("train on a data subset"),
):
    """Train a model on its dataset (zoo) or on your data (--data) and save the artifact."""
    from netslim.train.user import train_model

    ref = model or model_arg
    if ref is None or (model and model_arg and model != model_arg):
        raise NetslimError("Give the model once: netslim train MODEL or netslim train --model MODEL.")
    overrides = {k: v for k, v in (("epochs", epochs), ("lr", lr), ("batch_size", batch_size)) if v is not None}
    result = train_model(
        ref,
        data=_data(data, task),
        weights=weights,
        out=out,
        seed=seed,
        limit=limit,
        skip_existing=skip_existing,
        **overrides,
    )
    console.print(result)


@app.command()
def compress(
    recipe: str = typer.Argument(..., help="recipe YAML path or shipped recipe name"),
    model: str | None = typer.Option(None, help=_MODEL_HELP),
    data: str | None = typer.Option(None, help=_DATA_HELP),
    task: str | None = typer.Option(None, help=_TASK_HELP),
    weights: Path | None = typer.Option(None, help="weights for a file.py:factory model"),
    base: str | None = typer.Option(None, help="file.py:factory when --model is an artifact of your class"),
    out: Path = typer.Option(Path("runs/latest"), help="output directory"),
    resume: bool = typer.Option(False, help="continue after the last completed step"),
    force: bool = typer.Option(
        False, help="replace the run in OUT, or resume one whose recipe, model or data differ (recorded in the report)"
    ),
    limit: int | None = _limit("use a data subset (smoke runs)"),
    no_verify: bool = typer.Option(False, "--no-verify", help=_NO_VERIFY_HELP),
):
    """Run a compression recipe; writes the artifact and OUT/report.{json,md,html}."""
    from netslim.recipe import load_recipe, run_recipe
    from netslim.report import summary_rows

    rec = load_recipe(_recipe_path(recipe))
    report = run_recipe(
        rec,
        out,
        model_ref=model,
        resume=resume,
        force=force,
        data_options=_limit_options(limit),
        data=_data(data, task),
        weights=weights,
        base=base,
        verify=not no_verify,
    )
    if not report:  # another rank of a torchrun: rank 0 writes and prints the report
        return
    console.print(
        _table(
            f"{report['recipe']}: {report['model']} on {report['dataset']}",
            ["quantity", "baseline", "compressed", "ratio"],
            [list(r) for r in summary_rows(report)],
        )
    )
    console.print(f"artifact: {report['artifact']}\nreport: {out / 'report.html'}")


def _open(
    artifact: str,
    model: str | None,
    weights: Path | None,
    dataset: str | None,
    data: str | None,
    task: str | None,
    limit: int | None,
    verify: bool = True,
):
    """The model and task of ``eval`` / ``bench`` / ``inspect``, and a line saying which data."""
    from netslim.models.sources import open_model
    from netslim.recipe.inputs import resolve_task, stored_reference

    opened = open_model(artifact, weights=weights, base=model, verify=verify)
    reference = stored_reference(opened)
    t = resolve_task(
        opened, data=_data(data, task), dataset=dataset, options=_limit_options(limit), reference=reference
    )
    if t.metric == "fidelity" and reference is None and opened.info.get("recipe"):
        raise NetslimError(
            f"{artifact}: fidelity compares to the run's original model, whose file "
            f"{opened.info.get('reference', '(not recorded)')!r} is gone; score it against "
            "another original with netslim.compress or re-run the recipe."
        )
    return opened.model, t, _data_line(opened.info.get("data"), t)


def _data_line(stored: dict | None, task) -> str:
    spec = getattr(task, "spec", None)
    if spec is None:
        return f"data: {task.describe().get('dataset', '?')}"
    line = f"data: {spec.path} ({spec.task}, sha256 {str(spec.sha256)[:12]})"
    if stored and stored.get("sha256"):
        if stored.get("path") != spec.path:
            return line + "; not the data of the run that made this artifact (--data given)"
        same = stored["sha256"] == spec.sha256
        return line + (
            "; the data of the run that made this artifact"
            if same
            else f"; WARNING: changed since the run (was sha256 {stored['sha256'][:12]})"
        )
    return line


def _split(value: str) -> str:
    if value not in _SPLITS:
        raise NetslimError(f"--split must be one of {', '.join(_SPLITS)}; got {value[:50]!r}.")
    return value


_SPLITS = ("train", "val", "test")
_ART_HELP = "artifact (.safetensors/.nsz/.onnx), zoo name, Hugging Face directory or file.py:factory"
_BASE_HELP = "path/to/file.py:factory: rebuilds artifacts of your own model class"


@app.command(name="eval")
def eval_(
    artifact: str = typer.Argument(..., help=_ART_HELP),
    model: str | None = typer.Option(None, help=_BASE_HELP),
    weights: Path | None = typer.Option(None, help="weights when ARTIFACT is file.py:factory"),
    dataset: str | None = typer.Option(None, help="a named dataset instead of the stored one"),
    data: str | None = typer.Option(None, help=_DATA_HELP),
    task: str | None = typer.Option(None),
    split: str = typer.Option("test", callback=_split),
    limit: int | None = _limit(),
    no_verify: bool = typer.Option(False, "--no-verify", help=_NO_VERIFY_HELP),
):
    """Evaluate a model on the data it was made on (stored in the artifact), or on --data."""
    net, t, line = _open(artifact, model, weights, dataset, data, task, limit, not no_verify)
    res = t.evaluate(net, split)
    console.print(line)
    console.print(" ".join(f"{k}={v:.4f}" for k, v in res.items()))


@app.command()
def bench(
    artifact: str = typer.Argument(..., help=_ART_HELP),
    model: str | None = typer.Option(None, help=_BASE_HELP),
    batch_size: int = typer.Option(64, callback=_bounded("--batch-size", 1, 65_536)),
    threads: int | None = typer.Option(None, callback=_bounded("--threads", 1, 4096)),
    repeats: int = typer.Option(30, callback=_bounded("--repeats", 1, 10_000)),
    dataset: str | None = typer.Option(None),
    data: str | None = typer.Option(None, help=_DATA_HELP),
    task: str | None = typer.Option(None),
    no_verify: bool = typer.Option(False, "--no-verify", help=_NO_VERIFY_HELP),
):
    """Measure an artifact: metric, params, non-zeros, MACs, bytes on disk, latency."""
    from netslim.measure import model_summary

    net, t, line = _open(artifact, model, None, dataset, data, task, None, not no_verify)
    path = Path(artifact) if Path(artifact).is_file() else None
    s = model_summary(net, t, artifact=path, batch_size=batch_size, threads=threads, repeats=repeats)
    console.print(line)
    console.print(
        _table(
            str(artifact),
            ["quantity", "value"],
            [[k, f"{v:.4g}" if isinstance(v, float) else f"{v:,}"] for k, v in s.items()],
        )
    )


@app.command()
def inspect(
    artifact: str = typer.Argument(..., help=_ART_HELP),
    model: str | None = typer.Option(None, help=_BASE_HELP),
    dataset: str | None = typer.Option(None),
    data: str | None = typer.Option(None, help=_DATA_HELP),
    no_verify: bool = typer.Option(False, "--no-verify", help=_NO_VERIFY_HELP),
):
    """Per-layer table of an artifact: shape, params, non-zeros, bits, MACs (.nsz: where its bits go;
    .onnx: its ops, QDQ layers and the ONNX Runtime check made at export)."""
    from netslim.measure import layer_table
    from netslim.report import layer_rows

    if artifact.lower().endswith(".onnx") and Path(artifact).is_file():  # the graph as stored; no data needed
        from netslim.models.onnx_model import OnnxModel, onnx_overview

        onnx_model = OnnxModel(Path(artifact))
        console.print(_table(f"{artifact} (ONNX)", ["quantity", "value"], onnx_overview(onnx_model)))
        rows = layer_table(onnx_model, onnx_model.example_inputs(1))
        console.print(_table(str(artifact), *layer_rows([r.as_dict() for r in rows])))
        return
    if artifact.endswith(".nsz") and Path(artifact).is_file():  # Huffman-coded: bits per tensor
        from netslim.codec.inspect import breakdown_table

        console.print(_table(str(artifact), *breakdown_table(Path(artifact))))

    net, t, _ = _open(artifact, model, None, dataset, data, None, None, not no_verify)
    rows = layer_table(net, t.example_inputs(1))  # the same rows and columns as the report's layer table
    console.print(_table(str(artifact), *layer_rows([r.as_dict() for r in rows])))


@app.command()
def recipes():
    """List the shipped recipes; 'model' is the zoo model a recipe is tied to, or 'any (--model)'."""
    from netslim.recipe.spec import load_yaml

    rows = []
    for p in sorted(recipes_dir().glob("*.yaml")):
        try:
            d = load_yaml(p) or {}
        except NetslimError:
            d = {"description": "(unreadable: not a recipe file)"}
        if not isinstance(d, dict):
            d = {"description": "(not a recipe mapping)"}
        # A recipe without `model:` is about a technique: it runs on whatever --model names.
        model = str(d["model"]) if d.get("model") else "any (--model)"
        desc = str(d.get("description") or "").strip()
        rows.append([p.stem, model, desc.splitlines()[0] if desc else ""])
    console.print(_table(f"recipes in {recipes_dir()}", ["recipe", "model", "description"], rows))


def main() -> None:
    """Run the CLI. Bad input and usage errors: one line on stderr, ``netslim: error: ...``,
    exit code 2. ``netslim`` alone prints the help on stdout and exits 0."""
    logging.basicConfig(level=os.environ.get("NETSLIM_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    try:  # typer 0.29 (pinned) raises its own click fork's exceptions, not the click package's
        from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
    except ImportError:  # older typer: click's
        from click.exceptions import ClickException, NoArgsIsHelpError, UsageError

    try:
        rc = app(standalone_mode=False, prog_name="netslim")
    except NetslimError as e:
        _fail(str(e))
    except NoArgsIsHelpError as e:
        print(e.format_message())
        sys.exit(0)
    except UsageError as e:
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
        _fail(e.format_message() + hint)
    except ClickException as e:  # e.g. a file option that cannot be opened
        _fail(e.format_message())
    except typer.Abort:
        _fail("aborted", code=130)
    if isinstance(rc, int) and rc:  # typer.Exit(code), Ctrl-C (130)
        sys.exit(rc)


def _fail(message: str, code: int = 2) -> None:
    """One line on stderr (newlines folded, at most 2000 characters), then exit ``code``."""
    from netslim.core.errors import clip

    print(f"netslim: error: {clip(' '.join(message.split()), 2000)}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
