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

Optional run-level keys: ``measure: {batch_size, repeats, threads, paired}`` (``paired: false``
times baseline and final one at a time: one model in memory); ``stream: true | false | auto``
and ``memory_budget: 2GiB`` (:mod:`netslim.recipe.streamed`: the model stays on disk and one
decoder block is in memory at a time; ``auto`` streams a model whose fp32 size exceeds half the
available memory when every step can stream).

Reading a recipe file is bounded (``load_recipe``): at most 1 MiB, UTF-8 (a BOM is fine),
nesting at most 50 levels deep, at most 10,000 values once aliases are expanded (YAML
anchors and aliases are allowed, but a "billion laughs" file stops at the budget, while
it is composed: cost linear in the file's size), numbers at most 100 characters, no
duplicate keys in a mapping.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from netslim.core.config import MethodConfig, make_config
from netslim.core.errors import NetslimError, clip, shown
from netslim.core.history import StepHistory

MAX_RECIPE_BYTES = 1 << 20  # a recipe is a page of YAML; 1 MiB is ~1000x the largest shipped one
MAX_YAML_DEPTH = 50  # shipped recipes nest 4 levels deep
MAX_YAML_VALUES = 10_000  # nodes once aliases are expanded ("billion laughs"); shipped recipes: <= 87
MAX_NUMBER_CHARS = 100  # int("1" * 10**6) or a sexagesimal 1:2:3:... costs seconds
MAX_SEED = 2**63 - 1  # torch.manual_seed's range


class MeasureOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    batch_size: int = Field(64, ge=1, le=65_536, description="the N of latency_ms_bN")
    repeats: int = Field(20, ge=1, le=10_000)
    threads: int | None = Field(None, ge=1, le=4096)
    paired: bool = Field(
        True,
        description="baseline and final latency A/B interleaved, both models in memory "
        "at once (false: each timed alone, one model in memory)",
    )


class Recipe(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)
    name: str = "recipe"
    description: str = ""
    model: str | None = None
    dataset: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    measure: MeasureOptions = MeasureOptions()
    seed: int = Field(0, ge=0, le=MAX_SEED)
    # Streaming (netslim.recipe.streamed): the model stays on disk, one decoder block in memory.
    stream: bool | Literal["auto"] = Field(
        "auto", description="true: stream from disk; auto: when the model's fp32 size exceeds half the available memory"
    )
    memory_budget: str | int | None = Field(None, description="working memory of a streamed step, e.g. 2GiB")
    steps: tuple[MethodConfig, ...]

    @field_validator("data")
    @classmethod
    def _data_limit(cls, data: dict[str, Any]) -> dict[str, Any]:
        check_data_options(data, "data")
        return data

    @field_validator("memory_budget")
    @classmethod
    def _budget(cls, v: Any) -> Any:
        from netslim.core.stream_io import parse_bytes

        parse_bytes(v)  # a size it can read, or a NetslimError (a ValueError: pydantic reports the field)
        return v

    def to_dict(self) -> dict[str, Any]:
        d = self.model_dump(mode="json", exclude={"steps"})
        for key, default in (("stream", "auto"), ("memory_budget", None)):  # unchanged fingerprints without them
            if d.get(key) == default:
                d.pop(key)
        if d["measure"].get("paired") is True:
            d["measure"].pop("paired")
        d["steps"] = [s.to_dict() for s in self.steps]
        return d


def parse_recipe(data: Any, source: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise NetslimError(f"{source}: a recipe must be a mapping with a 'steps' list; got {type(data).__name__}.")
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise NetslimError(f"{source}: 'steps' must be a non-empty list of {{method: ..., ...}} mappings.")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise NetslimError(f"{source}: recipe keys must be strings; got {shown(bad[0])}.")
    check_data_options(data.get("data"), f"{source}: data")
    steps = tuple(make_config(s, f"{source}: step {i + 1}") for i, s in enumerate(raw_steps))
    try:
        recipe = Recipe(**{**data, "steps": steps})
    except pydantic.ValidationError as err:
        e = err.errors(include_url=False)[0]
        field = clip(".".join(str(p) for p in e["loc"]))
        raise NetslimError(f"{source}: field {field!r}: {clip(e['msg'])}; got {shown(e.get('input'))}.") from None
    validate_order(recipe, source)
    return recipe


def validate_order(recipe: Recipe, source: str) -> None:
    """Whole-recipe check, before any work, of the rule :func:`netslim.core.config.apply` enforces
    step by step (:class:`~netslim.core.history.StepHistory`): each step's ``requires`` must
    appear earlier; nothing that changes weights may follow a step that froze them."""
    history = StepHistory()
    for i, step in enumerate(recipe.steps, start=1):
        problem = history.problem(step)
        if problem:
            raise NetslimError(f"{source}: step {i} ({step.method!r}) {problem}.")
        history = history.after(step)


MAX_LIMIT = 2**31 - 1  # samples per split: beyond any data set, and still an int32 index


def check_data_options(options: Any, where: str = "data") -> None:
    """Run-level data options (``data:`` of a recipe, ``--limit``): ``limit`` is a count in
    [1, :data:`MAX_LIMIT`].

    ``limit: 0`` or ``-5`` used to mean "all" / "all but 5" through slicing."""
    if options is None:
        return
    if not isinstance(options, dict):
        raise NetslimError(f"{where}: data options must be a mapping; got {type(options).__name__}.")
    limit = options.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT):
        raise NetslimError(
            f"{where}: 'limit' must be an int in [1, {MAX_LIMIT:,}] (the number of samples per "
            f"split); "
            f"got {shown(limit)}."
        )


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise NetslimError(f"Recipe file {shown(str(path))} does not exist; `netslim recipes` lists the shipped ones.")
    return parse_recipe(load_yaml(path), str(path))


def read_text(path: Path, limit: int = MAX_RECIPE_BYTES) -> str:
    """The UTF-8 text of ``path`` (a leading BOM dropped), at most ``limit`` bytes."""
    try:
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
    except OSError as e:
        raise NetslimError(f"{path}: cannot be read ({e.strerror or e}).") from None
    if len(raw) > limit:
        raise NetslimError(f"{path}: too large for a recipe (more than {limit:,} bytes; the limit is 1 MiB).")
    skip = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
    bad = raw.find(b"\x00", skip)  # valid UTF-8, but binary (or UTF-16 without a BOM)
    try:
        text = raw[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        bad = skip + e.start if bad < 0 else min(bad, skip + e.start)
    if bad >= 0:
        raise NetslimError(
            f"{path} is not UTF-8 text (byte 0x{raw[bad]:02x} at offset {bad}); save the recipe as UTF-8."
        )
    odd = yaml.reader.Reader.NON_PRINTABLE.search(text)  # control characters YAML does not allow
    if odd:
        raise NetslimError(
            f"{path} is not YAML text: character U+{ord(odd.group()):04X} is not allowed "
            f"(offset {skip + len(text[: odd.start()].encode())})."
        )
    return text


def load_yaml(path: Path) -> Any:
    """``yaml.safe_load`` of ``path`` within the budgets of the module docstring."""
    text = read_text(path)
    loader = None
    try:
        loader = _BudgetLoader(text, str(path))
        return loader.get_single_data()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise NetslimError(f"{path}: malformed YAML{where}: {clip(str(getattr(e, 'problem', None) or e))}.") from None
    except RecursionError:  # a constructor deeper than the composer's depth check allows
        raise NetslimError(f"{path}: YAML nested too deeply (at most {MAX_YAML_DEPTH} levels).") from None
    finally:
        if loader is not None:
            loader.dispose()


try:
    from yaml.cyaml import CParser as _CParser  # libyaml: scanning and parsing ~15x faster
except ImportError:  # PyYAML built without libyaml
    _CParser = None

if _CParser is not None:

    class _SafeLoader(yaml.composer.Composer, _CParser, yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
        """libyaml's events, composed and constructed in Python (where the budgets are kept)."""

        def __init__(self, text: str):
            _CParser.__init__(self, text)
            yaml.composer.Composer.__init__(self)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)

        def dispose(self) -> None:
            pass
else:
    _SafeLoader = yaml.SafeLoader  # type: ignore[misc]


class _BudgetLoader(_SafeLoader):
    """A safe loader that composes within budgets (in Python, from the parser's events):
    nesting depth, the number of values once aliases are expanded (counted per node, an
    alias adds its target's count: O(1) each), no recursive aliases, no duplicate keys, no
    over-long numbers."""

    def __init__(self, text: str, source: str):
        super().__init__(text)
        self.source = source
        self._depth = 0
        self._total = 0  # values composed so far, aliases expanded: checked as it grows
        self._sizes: dict[int, int] = {}  # id(node) -> values under it, aliases expanded

    def _fail(self, mark: Any, what: str) -> NetslimError:
        line = f" at line {mark.line + 1}" if mark is not None else ""
        return NetslimError(f"{self.source}{line}: {what}.")

    def _count(self, n: int, mark: Any) -> None:
        self._total += n
        if self._total > MAX_YAML_VALUES:
            raise self._fail(
                mark,
                f"YAML expands to more than {MAX_YAML_VALUES:,} values (anchors and aliases "
                "are expanded; a recipe needs a few hundred)",
            )

    def compose_node(self, parent: Any, index: Any) -> Any:
        mark = self.peek_event().start_mark
        if self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)
            if id(node) not in self._sizes:
                raise self._fail(mark, "recursive YAML alias (a node that contains itself)")
            self._count(self._sizes[id(node)], mark)
            return node
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise self._fail(mark, f"YAML nested more than {MAX_YAML_DEPTH} levels deep")
        self._count(1, mark)
        node = super().compose_node(parent, index)
        self._depth -= 1
        children = (
            node.value
            if isinstance(node, yaml.SequenceNode)
            else [n for pair in node.value for n in pair]
            if isinstance(node, yaml.MappingNode)
            else ()
        )
        self._sizes[id(node)] = 1 + sum(self._sizes[id(c)] for c in children)
        if isinstance(node, yaml.MappingNode):
            self._check_duplicate_keys(node)
        return node

    def _check_duplicate_keys(self, node: yaml.MappingNode) -> None:
        seen: dict[Any, int] = {}  # key -> the line it is first given on
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key, line = self.construct_object(key_node), key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise self._fail(
                        key_node.start_mark,
                        f"duplicate key {shown(key)} (first given at line {seen[key]}); give each key once",
                    )
                seen[key] = line
            except TypeError:  # an unhashable key: the constructor reports it
                continue

    def _number(self, node: Any, construct: Any) -> Any:
        if len(node.value) > MAX_NUMBER_CHARS:
            raise self._fail(
                node.start_mark, f"a number of {len(node.value):,} characters (at most {MAX_NUMBER_CHARS})"
            )
        return construct(self, node)

    def _int(self, node: Any) -> int:
        return self._number(node, yaml.SafeLoader.construct_yaml_int)

    def _float(self, node: Any) -> float:
        return self._number(node, yaml.SafeLoader.construct_yaml_float)


def _tag_checked(construct: Any) -> Any:
    """``construct`` with PyYAML's own failures on an explicitly tagged scalar that does not
    parse as its tag (``!!timestamp ''``: AttributeError, ``!!bool abc``: KeyError, ``!!int ''``:
    IndexError) turned into one line naming the tag, the value and the line."""

    def checked(loader: _BudgetLoader, node: Any) -> Any:
        try:
            return construct(loader, node)
        except NetslimError:  # a budget of the loader (a NetslimError is a ValueError)
            raise
        except (ValueError, TypeError, AttributeError, IndexError, KeyError):
            tag = str(node.tag).rsplit(":", 1)[-1]
            value = node.value if isinstance(node, yaml.ScalarNode) else f"a {type(node).__name__[:-4].lower()}"
            raise loader._fail(node.start_mark, f"{shown(value)} is not a valid YAML {tag} (tagged !!{tag})") from None

    return checked


_BudgetLoader.yaml_constructors = {
    tag: _tag_checked(fn) for tag, fn in yaml.SafeLoader.yaml_constructors.items() if tag is not None
}
_BudgetLoader.yaml_constructors[None] = yaml.SafeLoader.yaml_constructors[None]  # unknown tags: ConstructorError
_BudgetLoader.add_constructor("tag:yaml.org,2002:int", _tag_checked(_BudgetLoader._int))
_BudgetLoader.add_constructor("tag:yaml.org,2002:float", _tag_checked(_BudgetLoader._float))
