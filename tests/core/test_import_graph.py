"""The layering, read from the source with ``ast``: core imports nothing above it, the
top-level subpackages import each other (at module level) without a cycle, and the places
where a cycle used to be closed by an import inside a function import one way only."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

import netslim

PACKAGE = Path(netslim.__file__).resolve().parent
SOURCES = sorted(PACKAGE.rglob("*.py"))


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p) for p in SOURCES}


def _module_level(body: list[ast.stmt]):
    """Import statements that run when the module is imported (inside if / try too, not in functions)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            for field in ("body", "orelse", "finalbody"):
                yield from _module_level(getattr(node, field, []))
            for handler in getattr(node, "handlers", []):
                yield from _module_level(handler.body)


def imported(path: Path, module_level_only: bool, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, netslim module) for every import of netslim in ``path``: ``import``, ``from ... import``
    (relative ones resolved; ``from pkg import name`` counts ``pkg.name`` when that is a module) and
    ``importlib.import_module("netslim...")`` / ``__import__`` with a literal name."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    nodes = list(_module_level(tree.body)) if module_level_only else list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((node.lineno, target))
            out += [(node.lineno, f"{target}.{a.name}") for a in node.names if f"{target}.{a.name}" in MODULES]
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")
        ):
            out.append((node.lineno, node.args[0].value))
    return [(line, t) for line, t in out if t == "netslim" or t.startswith("netslim.")]


def subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # None: the package root (netslim/__init__.py)


def test_the_parser_sees_every_kind_of_import(tmp_path):
    probe = tmp_path / "netslim" / "core" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text(
        "import netslim.models\nfrom ..train import loop\nfrom . import errors\n"
        "try:\n    from ..export import hf\nexcept ImportError:\n    pass\n"
        "def f():\n    from netslim.data import files\n    importlib.import_module('netslim.prune')\n"
    )
    everything = {t for _, t in imported(probe, False, root=tmp_path / "netslim")}
    top = {t for _, t in imported(probe, True, root=tmp_path / "netslim")}
    assert {
        "netslim.models",
        "netslim.train",
        "netslim.core",
        "netslim.export",
        "netslim.data",
        "netslim.prune",
    } <= everything
    assert {"netslim.train", "netslim.export"} <= top and not {"netslim.data", "netslim.prune"} & top


def test_core_imports_nothing_above_it():
    core = [p for p in SOURCES if module_name(p).startswith("netslim.core")]
    assert len(core) > 15
    upward = [
        f"{p.relative_to(PACKAGE.parent)}:{line}: {t}"
        for p in core
        for line, t in imported(p, module_level_only=False)
        if t != "netslim.core" and not t.startswith("netslim.core.")
    ]
    assert not upward, "netslim.core imports above itself:\n" + "\n".join(upward)


def test_core_names_no_module_above_it_to_import_later():
    """A hand-kept list of module names (imported by string at run time) is an upward import too."""
    above = {m for m in MODULES if not m.startswith("netslim.core")} - {"netslim"}
    named = [
        f"{p.relative_to(PACKAGE.parent)}:{node.lineno}: {node.value!r}"
        for p in SOURCES
        if module_name(p).startswith("netslim.core")
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.Constant) and node.value in above
    ]
    assert not named, "netslim.core names modules above it:\n" + "\n".join(named)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return stack[stack.index(w) :] + [w]
            if w not in state:
                found = visit(w)
                if found:
                    return found
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state:
            found = visit(v)
            if found:
                return found
    return None


def test_cycle_finder_finds_a_cycle_and_accepts_a_dag():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def _import_graph(node_of, module_level_only: bool) -> tuple[dict[str, set[str]], dict[tuple[str, str], str]]:
    """Edges between the nodes ``node_of(module)`` names (None: left out), and one import that
    makes each edge (``file:line imports target``)."""
    graph: dict[str, set[str]] = defaultdict(set)
    why: dict[tuple[str, str], str] = {}
    for path in SOURCES:
        src = node_of(module_name(path))
        for line, target in imported(path, module_level_only=module_level_only):
            dst = node_of(target)
            if src and dst and src != dst:
                graph[src].add(dst)
                why.setdefault((src, dst), f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    return graph, why


def _assert_no_cycle(graph: dict[str, set[str]], why: dict[tuple[str, str], str], what: str) -> None:
    cycle = _cycle(graph)
    assert cycle is None, (
        f"import cycle {what}: " + " -> ".join(cycle) + "\n" + "\n".join(why[(a, b)] for a, b in zip(cycle, cycle[1:]))
    )


def test_top_level_subpackages_have_no_import_cycle_at_module_level():
    graph, why = _import_graph(subpackage, module_level_only=True)
    assert "core" not in graph  # core depends on no other subpackage
    assert {"prune", "quantize", "recipe"} <= set(graph)  # the graph was read
    _assert_no_cycle(graph, why, "between subpackages")


def test_train_models_and_codec_import_one_way_even_inside_functions():
    """codec -> train -> models: the codec fine-tunes with train's loop, tasks load models and
    tokenizers; models opens an .nsz through core.serialize.read_info and finds a baseline
    checkpoint through core.cache, importing neither codec nor train (not even lazily)."""
    three = {"train", "models", "codec"}
    graph, why = _import_graph(lambda m: subpackage(m) if subpackage(m) in three else None, module_level_only=False)
    assert {"train", "codec"} <= set(graph)  # the graph was read
    assert not graph["models"], "models imports above itself:\n" + "\n".join(
        why[("models", d)] for d in sorted(graph["models"])
    )
    _assert_no_cycle(graph, why, "between train, models and codec")


# Modules whose cycle was closed by an import inside a function (issue 24). A lazy import kept
# for start-up cost (transformers, GGUF reading) is fine, as long as nothing imports back.
ONE_WAY_GROUPS = {
    "int8 body surgery": ["netslim.quantize.dynamic", "netslim.quantize.int8_body"],
    "HF models and GGUF": [
        "netslim.models.gguf_io",
        "netslim.models.hf",
        "netslim.models.hf_arch",
        "netslim.models.hf_offline",
        "netslim.models.hf_tiny",
        "netslim.models.hf_tokenizers",
    ],
}


@pytest.mark.parametrize("group", sorted(ONE_WAY_GROUPS))
def test_modules_once_in_a_lazy_import_cycle_import_one_way(group):
    members = set(ONE_WAY_GROUPS[group])
    assert members <= MODULES, f"not modules (renamed?): {sorted(members - MODULES)}"
    graph, why = _import_graph(lambda m: m if m in members else None, module_level_only=False)
    assert graph  # they do import each other, one way
    _assert_no_cycle(graph, why, f"({group}, function-level imports included)")


def test_the_one_way_check_sees_a_cycle_through_a_function_level_import(tmp_path):
    pkg = tmp_path / "netslim" / "quantize"
    pkg.mkdir(parents=True)
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("def f():\n    from netslim.quantize.a import y\n")
    edges = {
        (module_name(p, tmp_path / "netslim"), t)
        for p in pkg.glob("*.py")
        for _, t in imported(p, False, root=tmp_path / "netslim")
    }
    assert {("netslim.quantize.a", "netslim.quantize.b"), ("netslim.quantize.b", "netslim.quantize.a")} <= edges
    assert _cycle({a: {b} for a, b in edges}) is not None
