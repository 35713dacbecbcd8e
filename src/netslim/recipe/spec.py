"""Recipes: YAML -> an ordered list of validated method configs.

```yaml
name: demo
model: lenet300            # default model (CLI --model overrides)
dataset: fashion-mnist     # optional: the model's default dataset
data: {limit: 2000}        # optional: options for the dataset's task
steps:
  - method: finetune
    epochs: 1
  - method: export
```
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field

from netslim.core.config import MethodConfig, make_config
from netslim.core.errors import NetslimError


class MeasureOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    batch_size: int = Field(64, ge=1, description="the N of latency_ms_bN")
    repeats: int = Field(20, ge=1)
    threads: int | None = Field(None, ge=1)


class Recipe(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)
    name: str = "recipe"
    description: str = ""
    model: str | None = None
    dataset: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    measure: MeasureOptions = MeasureOptions()
    seed: int = 0
    steps: tuple[MethodConfig, ...]

    def to_dict(self) -> dict[str, Any]:
        d = self.model_dump(mode="json", exclude={"steps"})
        d["steps"] = [s.to_dict() for s in self.steps]
        return d


def parse_recipe(data: Any, source: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise NetslimError(f"{source}: a recipe must be a mapping with a 'steps' list; got {type(data).__name__}.")
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise NetslimError(f"{source}: 'steps' must be a non-empty list of {{method: ..., ...}} mappings.")
    steps = tuple(make_config(s, f"{source}: step {i + 1}") for i, s in enumerate(raw_steps))
    try:
        recipe = Recipe(**{**data, "steps": steps})
    except pydantic.ValidationError as err:
        e = err.errors()[0]
        field = ".".join(str(p) for p in e["loc"])
        raise NetslimError(f"{source}: field {field!r}: {e['msg']}; got {e.get('input')!r}.") from None
    validate_order(recipe, source)
    return recipe


def validate_order(recipe: Recipe, source: str) -> None:
    """Whole-recipe checks: each step's ``requires`` must appear earlier; nothing that
    changes weights may follow a step that froze them (``freezes``), except steps that only
    convert layers still in float form (``float_layers_only``)."""
    seen: list[str] = []
    frozen_by: str | None = None
    for i, step in enumerate(recipe.steps, start=1):
        for need in getattr(step, "requires", ()):
            if need not in seen:
                raise NetslimError(f"{source}: step {i} ({step.method!r}) needs a {need!r} step before it.")
        if frozen_by and getattr(step, "modifies_weights", True) and not getattr(step, "float_layers_only", False):
            raise NetslimError(
                f"{source}: step {i} ({step.method!r}) changes weights after {frozen_by!r} froze them; "
                "move it before that step."
            )
        if getattr(step, "freezes", False):
            frozen_by = step.method
        seen.append(step.method)


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise NetslimError(f"Recipe file {str(path)!r} does not exist; `netslim recipes` lists the shipped ones.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise NetslimError(f"{path}: malformed YAML{where}: {getattr(e, 'problem', e)}.") from None
    return parse_recipe(data, str(path))
