"""The block engine's side of streaming: read a block, write it, release it; the memory budget.

:class:`BlockStream` is what :func:`netslim.core.layerwise.run_sequential` calls when the
model is a :class:`~netslim.core.streaming.StreamedModel`: ``outer`` materializes the
modules outside the decoder blocks that actually run (the embedding, rotary tables) while
block 0's inputs are captured; ``load`` reads block i; ``done`` writes the compressed block
into the output artifact and releases it. :meth:`BlockStream.finish` copies the tensors no
step touched (embedding, final norm, LM head) from the source, tensor by tensor, and writes
the description.

Memory budget (``memory_budget``, :func:`parse_bytes`): before any work
:meth:`BlockStream.activations_dir` estimates what one block needs (:func:`block_need`: its
weights, the solver's statistics, one batch's forward) and puts the calibration activations
in memory when they fit beside it, on disk (one file per batch) when they do not; below one
block's need it stops with the amount needed. The budget covers netslim's working memory,
not the interpreter and libraries (~0.3 GB for torch + transformers).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from .errors import NetslimError, bad_param
from .history import StepHistory
from .hooks import hooked
from .registry import load_sources
from .streaming import StreamedModel, alias_groups, materialize, module_bytes, release

if TYPE_CHECKING:
    from .config import MethodConfig

Solver = Literal["hessian", "diag", "none"]
GC_BYTES = 16 << 20  # blocks larger than this: a full garbage collection after each (~0.3 s with transformers loaded)
STREAM_FRACTION = 0.5  # stream: auto streams when the model's fp32 bytes exceed this share of available memory
_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(value: Any, owner: str = "recipe", field: str = "memory_budget") -> int | None:
    """``"2GiB"``, ``"512MB"``, ``1.5e9`` or an int of bytes -> bytes (None stays None)."""
    rule = "a size such as 2GiB, 512MB or a number of bytes (>= 1 MiB)"
    if value is None:
        return None
    if isinstance(value, bool):
        raise bad_param(owner, field, rule, value)
    if isinstance(value, (int, float)):
        n = value
    elif isinstance(value, str) and (m := _SIZE.match(value)) and m.group(2).lower() in _UNITS:
        n = float(m.group(1)) * _UNITS[m.group(2).lower()]
    else:
        raise bad_param(owner, field, rule, value)
    if not math.isfinite(n) or n < 2**20 or n > 2**60:
        raise bad_param(owner, field, rule, value)
    return int(n)


def fmt_bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def available_memory() -> int:
    """Bytes this process may still use: the least of free memory, the cgroup's limit less its
    usage, and the address-space limit (``prlimit --as``) less the address space in use."""
    import resource

    import psutil

    limits = [psutil.virtual_memory().available]
    cg = _cgroup_room()
    if cg is not None:
        limits.append(cg)
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(max(0, soft - psutil.Process().memory_info().vms))
    return int(min(limits))


def _cgroup_room() -> int | None:
    """The memory cgroup's limit less its usage (cgroup v2, else v1), read only; None without a limit."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        if controllers == "":  # v2
            files = (Path("/sys/fs/cgroup") / rel.lstrip("/"), "memory.max", "memory.current")
        elif "memory" in controllers.split(","):  # v1
            files = (Path("/sys/fs/cgroup/memory") / rel.lstrip("/"), "memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        base, limit_file, usage_file = files
        try:
            limit = (base / limit_file).read_text().strip()
            if limit == "max" or int(limit) >= 2**60:
                continue
            return max(0, int(limit) - int((base / usage_file).read_text().strip()))
        except (OSError, ValueError):
            continue
    return None


# ----------------------------------------------------------------------- the need
def block_need(
    block: nn.Module, config: Any, tokens: tuple[int, int], batch_size: int, solver: Solver
) -> dict[str, int]:
    """Estimated bytes of working memory for one block (a skeleton: shapes only): its
    ``weights`` (and the compressed copy being written), the solver's ``statistics`` (a
    Hessian per Linear for SparseGPT / GPTQ, a diagonal for Wanda) and ``solve`` (the largest
    layer's factorisation), ``batch`` (one batch's forward), and ``activations`` per sample
    set: ``in_memory`` (inputs and outputs of the whole calibration set) or ``on_disk`` (one batch).
    ``weights`` carries a quarter more for what the step adds (1-byte masks, new layers)."""
    from .layerwise import block_linears, weight_2d

    n, length = tokens
    shapes = [tuple(weight_2d(m).shape) for _, m in block_linears(block, "")]
    hidden = int(getattr(config, "hidden_size", 0) or max((c for _, c in shapes), default=1))
    inter = int(getattr(config, "intermediate_size", 0) or max((r for r, _ in shapes), default=hidden))
    heads = int(getattr(config, "num_attention_heads", 0) or 1)
    stats = solve = 0
    if solver == "hessian":  # the largest layer: three float64 (C, C) in the factorisation, U and a permuted H
        stats = sum(4 * c * c for _, c in shapes)
        solve = max((3 * 8 * c * c + 2 * 4 * c * c + 3 * 4 * r * c for r, c in shapes), default=0)
    elif solver == "diag":
        stats = sum(4 * c for _, c in shapes)
        solve = max((2 * 4 * r * c for r, c in shapes), default=0)
    else:
        solve = max((2 * 4 * r * c for r, c in shapes), default=0)
    b = min(batch_size, n)
    batch = 4 * b * length * (6 * hidden + 3 * inter) + 4 * b * heads * length * length
    sample = 4 * length * hidden
    weights = module_bytes(block)
    return {
        "weights": weights + weights // 4,
        "statistics": stats,
        "solve": solve,
        "batch": batch,
        "in_memory": 2 * n * sample,
        "on_disk": 2 * b * sample,
    }


# ----------------------------------------------------------------------- the stream
class BlockStream:
    """Hooks of the block engine for a streamed model (see the module docstring).

    ``writer`` None: a read-only pass (statistics, evaluation). ``scratch``: where activation
    files go when the budget sends them to disk (default: beside the output)."""

    def __init__(
        self,
        sm: StreamedModel,
        writer: Any = None,
        *,
        budget: int | None = None,
        solver: Solver = "none",
        scratch: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
    ):
        self.sm, self.writer, self.budget, self.solver = sm, writer, budget, solver
        self.device = torch.device(device)
        self.scratch = Path(scratch) if scratch is not None else (writer.path.parent if writer is not None else None)
        self.block_seconds: list[float] = []
        self.activations = "memory"
        self._t0 = 0.0

    # ------------------------------------------------------------------- budget
    def activations_dir(
        self,
        model: nn.Module,
        blocks: nn.ModuleList,
        ids: torch.Tensor,
        batch_size: int,
        offload_dir: str | Path | None,
    ) -> str | Path | None:
        """Where the engine keeps activations: None (memory) or a folder; an error when even
        one batch does not fit beside one block within the budget."""
        if self.budget is None:
            self.activations = "disk" if offload_dir is not None else "memory"
            return offload_dir
        need = max(
            (
                block_need(b, getattr(model, "config", None), (ids.shape[0], ids.shape[1]), batch_size, self.solver)
                for b in blocks
            ),
            key=lambda d: sum(d.values()) - d["in_memory"],
        )
        fixed = need["weights"] + need["statistics"] + need["solve"] + need["batch"]
        outer = self._outer_bytes(blocks)
        if offload_dir is None and max(fixed, outer) + need["in_memory"] <= self.budget:
            self.activations = "memory"
            return None
        least = max(fixed, outer) + need["on_disk"]
        if least > self.budget:
            parts = (
                f"block weights {fmt_bytes(need['weights'])}, statistics {fmt_bytes(need['statistics'])}, "
                f"solver {fmt_bytes(need['solve'])}, one batch of {batch_size} {fmt_bytes(need['batch'])}, "
                f"embedding / head {fmt_bytes(outer)}"
            )
            raise NetslimError(
                f"memory_budget {fmt_bytes(self.budget)} is below what one decoder block needs: about "
                f"{fmt_bytes(least)} ({parts}); raise memory_budget to at least "
                f"{math.ceil(least / 2**20)}MiB or lower batch_size."
            )
        self.activations = "disk"
        where = Path(offload_dir if offload_dir is not None else self.scratch or tempfile.gettempdir())
        where.mkdir(parents=True, exist_ok=True)
        return where

    def _outer_bytes(self, blocks: nn.ModuleList) -> int:
        inside = {id(t) for t in [*blocks.parameters(), *blocks.buffers()]}
        seen, total = set(), 0
        for t in [*self.sm.model.parameters(), *self.sm.model.buffers()]:
            if id(t) not in inside and id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
        return total

    # -------------------------------------------------------------------- hooks
    @contextlib.contextmanager
    def outer(self, blocks: nn.ModuleList):
        """Modules outside ``blocks`` get their tensors when first called; all released after."""
        inside = {id(m) for m in blocks.modules()}
        model = self.sm.model
        made: list[nn.Module] = []
        hooks = {}
        for name, mod in model.named_modules():
            if id(mod) in inside or not (mod._parameters or mod._buffers):
                continue

            def pre(m, args, name=name):
                if any(t is not None and t.is_meta for t in [*m._parameters.values(), *m._buffers.values()]):
                    materialize(self.sm, m, name, recurse=False)
                    made.append(m)

            hooks[mod] = pre
        try:
            with hooked(hooks, kind="pre"):
                yield
        finally:
            for m in made:
                release(m, model)

    def load(self, i: int, name: str, block: nn.Module) -> None:
        import time

        self._t0 = time.perf_counter()
        materialize(self.sm, block, name)

    def done(self, i: int, name: str, block: nn.Module) -> None:
        import time

        from .layerwise import _malloc_trim, release_memory

        if self.writer is not None:
            self.writer.add_module(block, f"{name}.", alias_groups(self.sm.model))
        big = module_bytes(block) > GC_BYTES
        release(block, self.sm.model)
        if big:
            release_memory()  # collect cycles and hand the heap back to the OS
        elif (trim := _malloc_trim()) is not None:
            trim(0)
        self.block_seconds.append(time.perf_counter() - self._t0)

    def release_all(self, blocks: nn.ModuleList) -> None:
        for b in blocks:
            release(b, self.sm.model)

    # ------------------------------------------------------------------ finish
    def finish(self, info: dict | None = None) -> Path:
        """Copy every tensor not written yet from the source, then write the description."""
        from .serialize import describe

        if self.writer is None:
            raise NetslimError("BlockStream.finish: a read-only stream has no output.")
        model = self.sm.model
        first: dict[int, str] = {}
        for key, t in model.state_dict(keep_vars=True).items():
            head = first.setdefault(id(t), key)
            if key in self.writer:
                continue
            if head != key:  # tied: stored once, under the first key (as save() does)
                self.writer.aliases[key] = head
                continue
            self.writer.add(key, self.sm.source.get(self.sm.stored_key(key), t.dtype))
        return self.writer.finish(describe(model, info))

    # ------------------------------------------------------------- other passes
    def reader(self) -> BlockStream:
        """A read-only stream over the same model and budget (a statistics pass before the real one)."""
        return BlockStream(
            self.sm, None, budget=self.budget, solver=self.solver, scratch=self.scratch, device=self.device
        )

    def each_unit(self, names: list[str], fn: Callable[[str, nn.Module, list[str]], None]) -> None:
        """Per-module conversions (no calibration): ``fn(unit name, unit, member names)`` for each
        decoder block holding some of ``names`` and for each of ``names`` outside the blocks,
        the unit's tensors read before and written and released after (``fn`` may replace
        members through ``replace_module`` on ``self.sm.model``)."""
        from .layerwise import decoder_blocks
        from .surgery import get_module

        model = self.sm.model
        prefix, blocks = decoder_blocks(model)
        by_block: dict[int, list[str]] = {}
        outside: list[str] = []
        for n in names:
            head = n[len(prefix) + 1 :].split(".", 1)[0] if n.startswith(prefix + ".") else ""
            if head.isdigit() and int(head) < len(blocks) and n != f"{prefix}.{head}":
                by_block.setdefault(int(head), []).append(n)
            else:
                outside.append(n)
        for i in sorted(by_block):
            name = f"{prefix}.{i}"
            self.load(i, name, blocks[i])
            try:
                fn(name, blocks[i], by_block[i])
                self.done(i, name, blocks[i])
            finally:
                release(blocks[i], model)
        for n in outside:
            old = get_module(model, n)
            materialize(self.sm, old, n)
            try:
                fn(n, old, [n])
                new = get_module(model, n)
                if self.writer is not None:
                    self.writer.add_module(new, f"{n}.", alias_groups(model))
            finally:
                release(old, model)
                release(get_module(model, n), model)


# ------------------------------------------------------------------ the registry
StreamFn = Callable[[StreamedModel, Any, Any, BlockStream], None]
_STREAMERS: dict[str, tuple[StreamFn, Solver]] = {}  # filled where the methods live (netslim.core.registry)
IN_MEMORY_HINT = "set stream: false to run the recipe with the whole model in memory"


def register_streaming(config_cls: type[MethodConfig], solver: Solver = "none") -> Callable[[StreamFn], StreamFn]:
    """Decorator: ``fn(streamed_model, cfg, ctx, stream)`` applies ``config_cls`` block by block;
    ``solver`` sizes the per-block statistics for the memory budget."""

    def deco(fn: StreamFn) -> StreamFn:
        _STREAMERS[config_cls.method] = (fn, solver)
        return fn

    return deco


def streamer(method: str) -> tuple[StreamFn, Solver] | None:
    load_sources()
    return _STREAMERS.get(method)


def streaming_methods() -> list[str]:
    load_sources()
    return sorted(_STREAMERS)


def stream_step(
    sm: StreamedModel,
    cfg: Any,
    ctx: Any,
    out_path: str | os.PathLike,
    *,
    budget: int | None = None,
    verify: bool = False,
) -> StreamedModel:
    """Apply ``cfg`` to the streamed model block by block, writing the result to ``out_path``
    (a netslim artifact; only on the rank that writes files); returns the result, streamed
    from that file. Nothing is left at ``out_path`` after an error."""
    from .distributed import barrier, is_main
    from .stream_writer import ArtifactWriter
    from .streaming import open_artifact

    history = StepHistory.of(sm.model)
    history.check(cfg)  # the rule apply() enforces in memory
    found = streamer(cfg.method)
    if found is None:
        raise NetslimError(
            f"Method {cfg.method!r} cannot stream (it needs the whole model in memory; streamed "
            f"methods: {', '.join(streaming_methods())}); {IN_MEMORY_HINT}."
        )
    fn, solver = found
    writer = ArtifactWriter(out_path) if is_main() else None
    # Tensors are read into CPU memory; a step's ``device`` (CUDA) is where each block is worked on.
    io = BlockStream(sm, writer, budget=budget, solver=solver, scratch=Path(out_path).parent)
    try:
        fn(sm, cfg, ctx, io)
        history.after(cfg).store(sm.model)  # written into the description by io.finish
        if writer is not None:
            io.finish(getattr(ctx, "info", None))
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    notes = getattr(ctx, "notes", None)
    if isinstance(notes, dict):
        secs = io.block_seconds
        notes["stream"] = {
            "blocks": len(secs),
            "seconds_per_block": [round(s, 3) for s in secs],
            "activations": io.activations,
            "memory_budget": budget,
        }
    barrier()  # the other ranks read the file rank 0 wrote
    out = open_artifact(out_path, verify=verify)
    return out
