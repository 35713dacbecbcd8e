"""Sequential, block-by-block calibration of decoder-stack language models.

One-shot methods (SparseGPT, Wanda, GPTQ) need the inputs of every Linear for a
calibration set. Capturing them for the whole model at once costs
``blocks x tokens x hidden`` floats (the out-of-memory failure users report), so
:func:`run_sequential` works one decoder block at a time:

1. run the embeddings once, stopping at block 0, to capture its inputs (and the extra
   arguments the model passes to every block: masks, rotary embeddings, positions);
2. for block i: ``compress(i, name, block, feed)`` -- ``feed()`` runs the calibration set
   through the block (forward hooks collect statistics), then the method rewrites it;
3. run the calibration set through the *compressed* block: its outputs are the inputs of
   block i+1 (errors of earlier blocks are seen and corrected by later ones).

Live memory is one block's calibration inputs and outputs (optionally on disk, see
:class:`ActivationStore`) plus the block itself; the model's other blocks stay untouched
where they are (a model on the CPU can have its block moved to ``device`` for the work).
With ``offload_blocks`` the other blocks' tensors wait in files too (:class:`BlockStore`):
during the pass memory holds the embeddings, one block and its work, and at the end
the compressed blocks come back.

Supported decoder stacks (:func:`decoder_blocks`): ``model.layers`` (Llama, Mistral,
Qwen2/3, Gemma, Phi), ``transformer.h`` (GPT-2), ``model.decoder.layers`` (OPT).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from .errors import NetslimError, bad_param
from .hooks import eval_mode, hooked

log = logging.getLogger(__name__)

DECODER_PATHS: dict[str, str] = {
    "model.layers": "Llama / Mistral / Qwen2 / Qwen3 / Gemma / Phi",
    "transformer.h": "GPT-2",
    "model.decoder.layers": "OPT",
}
MIN_CALIBRATION_TOKENS = 256  # below this a per-layer Hessian is mostly damping, not data


# ------------------------------------------------------------------------- structure
def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(qualified name, ModuleList)`` of the model's decoder blocks; a clear error otherwise."""
    for path in DECODER_PATHS:
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj):
            return path, obj
    families = "; ".join(f"{p} ({f})" for p, f in DECODER_PATHS.items())
    raise NetslimError(
        f"{type(model).__name__} is not a supported decoder stack: one-shot LLM compression needs "
        f"a causal LM with its blocks at one of: {families}."
    )


def is_conv1d(module: nn.Module) -> bool:
    """transformers' Conv1D (GPT-2): a Linear with its weight stored (in, out); masked ones too."""
    from torch.nn.utils import parametrize

    return parametrize.type_before_parametrizations(module).__name__ == "Conv1D"


def is_linear(module: nn.Module) -> bool:
    """nn.Linear or transformers' Conv1D."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def weight_2d(module: nn.Module) -> torch.Tensor:
    """The weight as (out, in), detached (a view; Conv1D's is transposed)."""
    w = cast(torch.Tensor, module.weight).detach()  # nn.Module.__getattr__ is typed Tensor | Module
    return w.T if is_conv1d(module) else w


def set_weight_2d(module: nn.Module, w: torch.Tensor) -> None:
    """Write an (out, in) weight back into ``module`` (in place, keeping dtype and device)."""
    with torch.no_grad():
        from torch.nn.utils import parametrize

        # A masked layer: write the stored original (the mask multiplies it on access).
        target: torch.Tensor
        if parametrize.is_parametrized(module, "weight"):
            plist: Any = module.parametrizations  # a ModuleDict of ParametrizationList (typed Tensor | Module)
            target = plist.weight.original
        else:
            target = cast(torch.Tensor, module.weight)
        target.copy_((w.T if is_conv1d(module) else w).to(target.dtype))


def context_length(model: nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions"):
        if cfg is not None and isinstance(getattr(cfg, key, None), int):
            return getattr(cfg, key)
    return None


def check_calibration(model: nn.Module, ids: torch.Tensor) -> None:
    """Bad-input checks: a (N, L) int tensor, enough tokens, L within the model's context."""
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype not in (torch.long, torch.int32):
        raise NetslimError(
            f"Calibration inputs must be token ids of shape (num_samples, seq_len); got "
            f"{type(ids).__name__} {tuple(getattr(ids, 'shape', ()))}."
        )
    ctx = context_length(model)
    if ctx is not None and ids.shape[1] > ctx:
        raise bad_param("calibration", "seq_len", f"<= the model's context length {ctx}", ids.shape[1])
    if ids.numel() < MIN_CALIBRATION_TOKENS:
        raise bad_param("calibration", "num_samples * seq_len", f">= {MIN_CALIBRATION_TOKENS} tokens", ids.numel())


def calibration_from_task(task: Any, num_samples: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """``num_samples`` blocks of ``seq_len`` tokens from the calibration split of a text task (its
    ``calibration_tokens``: the task's own text — the user's files, or the pydocs corpus)."""
    draw = getattr(task, "calibration_tokens", None)
    if draw is None:
        raise NetslimError(
            "One-shot LLM compression needs a causal-LM text task (text files via --data, or "
            f"dataset 'pydocs'); got {type(task).__name__}."
        )
    return draw(num_samples, seq_len, seed)


def calibration_for(ctx: Any, method: str, num_samples: int, seq_len: int) -> Any:
    """A step's calibration inputs: token blocks for a text task, ``task.calibration_inputs`` otherwise.

    Token blocks come from the whole calibration split (not limited by the task's
    ``limit``, which only shortens evaluation).
    """
    task = getattr(ctx, "task", None)
    if task is None:
        raise NetslimError(f"Method {method!r} needs calibration data: give the step a task (dataset).")
    seed = getattr(ctx, "seed", 0)
    if getattr(task, "calibration_tokens", None) is not None:
        return calibration_from_task(task, num_samples, seq_len, seed)
    return task.calibration_inputs(num_samples, seed)  # e.g. images for the zoo models


# ---------------------------------------------------------------------- activations
class ActivationStore:
    """Per-batch block activations, in memory or (``directory``) as files on disk.

    With a directory only the batch being processed is in memory: the calibration set's
    activations can be far larger than RAM allows.
    """

    def __init__(self, directory: Path | None = None):
        self.dir = directory
        self._items: list[torch.Tensor | Path] = []

    def append(self, x: torch.Tensor) -> None:
        if self.dir is None:
            self._items.append(x)
            return
        from safetensors.torch import save_file

        path = self.dir / f"act_{id(self)}_{len(self._items)}.safetensors"
        save_file({"x": x.detach().contiguous().cpu()}, str(path))
        self._items.append(path)

    def __len__(self) -> int:
        return len(self._items)

    def get(self, i: int) -> torch.Tensor:
        item = self._items[i]
        if isinstance(item, torch.Tensor):
            return item
        from safetensors.torch import load_file

        return load_file(str(item))["x"]

    def release(self) -> None:
        for item in self._items:
            if isinstance(item, Path):
                item.unlink(missing_ok=True)
        self._items.clear()


@lru_cache(maxsize=1)
def _malloc_trim():
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise; a no-op elsewhere)."""
    import gc

    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class BlockStore:
    """A module's tensors (parameters and buffers, masks included) parked in a file.

    ``park`` writes them and leaves empty tensors in their place (the module cannot run
    until ``restore``); ``restore`` loads them back into fresh, file-independent memory
    with their dtype, device and ``Parameter`` identity kept (optimizers, tied references
    and parametrizations stay valid).
    """

    def __init__(self, directory: Path):
        self.dir = directory
        self.parked: dict[int, Path] = {}

    @staticmethod
    def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        seen: set[int] = set()
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            if id(t) not in seen:
                seen.add(id(t))
                out[name] = t
        return out

    def park(self, key: int, module: nn.Module) -> None:
        from safetensors.torch import save_file

        tensors = self._tensors(module)
        path = self.dir / f"block_{key}.safetensors"
        tmp = path.with_suffix(".tmp")
        save_file({n: t.detach().cpu().contiguous() for n, t in tensors.items()}, str(tmp))
        tmp.replace(path)
        for t in tensors.values():
            t.data = torch.empty(0, dtype=t.dtype, device=t.device)
        self.parked[key] = path

    def restore(self, key: int, module: nn.Module) -> None:
        from safetensors.torch import safe_open

        path = self.parked.pop(key)
        tensors = self._tensors(module)
        with safe_open(str(path), framework="pt") as f:
            for name, t in tensors.items():
                src = f.get_tensor(name)  # backed by the file's mapping: copy into plain memory
                t.data = torch.empty(src.shape, dtype=src.dtype, device=t.device).copy_(src)
                del src
        path.unlink(missing_ok=True)


class _Stop(Exception):
    """Raised by the capture hook: nothing after block 0 needs to run."""


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module,
    first: nn.Module,
    ids: torch.Tensor,
    batch_size: int,
    store: ActivationStore,
    device: torch.device | None = None,
) -> list[tuple[tuple, dict]]:
    """Fill ``store`` with block 0's hidden-state inputs; return the other (args, kwargs) per batch.
    ``device``: where the ids go (default: the model's first parameter's)."""
    extras: list[tuple[tuple, dict]] = []

    def hook(_mod, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        store.append(hidden.detach())
        extras.append((tuple(args[1:]), dict(kwargs)))
        raise _Stop

    dev = device if device is not None else next(model.parameters()).device
    with hooked([(first, hook, "pre_kwargs")]):
        for i in range(0, len(ids), batch_size):
            try:
                model(input_ids=ids[i : i + batch_size].to(dev), use_cache=False)
            except _Stop:
                pass
    return extras


def _call_block(block: nn.Module, x: torch.Tensor, extra: tuple[tuple, dict], device: torch.device) -> torch.Tensor:
    args, kwargs = extra
    out = block(x.to(device), *_to(args, device), **_to(kwargs, device))
    return out[0] if isinstance(out, (tuple, list)) else out  # older transformers return tuples


# ----------------------------------------------------------------------- the engine
CompressFn = Callable[[int, str, nn.Module, Callable[[], None]], None]


@torch.no_grad()
def run_sequential(
    model: nn.Module,
    ids: torch.Tensor,
    compress: CompressFn,
    *,
    batch_size: int = 4,
    device: str | torch.device | None = None,
    offload_dir: str | Path | None = None,
    propagate: bool = True,
    desc: str = "one-shot",
    offload_blocks: bool = False,
    return_outputs: bool = True,
    stream: Any = None,
    calibrating: bool = True,
) -> ActivationStore | None:
    """Compress ``model``'s decoder blocks one at a time on calibration token ids (N, L).

    ``compress(i, name, block, feed)``: ``feed()`` runs every calibration batch through the
    block (the callback's forward hooks see each Linear's inputs); the callback then changes
    the block in place (or through ``replace_module`` on the block). With ``propagate`` the
    next block sees the compressed block's outputs (sequential error propagation), else
    the original block's. ``offload_dir`` keeps activations on disk; with ``offload_blocks``
    also every block but the one being compressed (they are all back in place when this
    returns, also after an error). Returns the last block's outputs (N/batch_size tensors
    (B, L, hidden)), or None without ``return_outputs``.

    ``stream`` (a :class:`netslim.core.stream_io.BlockStream`): the model is a skeleton on the
    meta device; each block's tensors are read just before its turn and written out and
    released after it, the embedding only while block 0's inputs are captured, and the
    stream's memory budget decides whether activations stay in memory or go to disk.
    Under ``torch.distributed`` each rank calibrates on its share of ``ids``
    (:mod:`netslim.core.distributed`) and every compressed block is rank 0's.
    ``calibrating=False``: a plain forward of ``ids`` (evaluation), no minimum token count.
    """
    from . import distributed

    if calibrating:
        check_calibration(model, ids)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise bad_param("run_sequential", "batch_size", "an int >= 1", batch_size)
    if offload_blocks and offload_dir is None and stream is None:
        raise bad_param(
            "run_sequential",
            "offload_blocks",
            "False unless offload_dir is given (blocks are parked in files there)",
            offload_blocks,
        )
    name, blocks = decoder_blocks(model)
    if calibrating:
        ids = distributed.shard_rows(ids)
    home = stream.device if stream is not None else next(model.parameters()).device
    work = torch.device(device) if device is not None else home
    if stream is not None:
        offload_dir = stream.activations_dir(model, blocks, ids, batch_size, offload_dir)
        offload_blocks = False  # blocks are on disk already: read one at a time
    from .progress import progress  # lazy: tqdm is imported only by the runs that show a bar

    tmp = tempfile.TemporaryDirectory(dir=offload_dir, prefix="netslim-act-") if offload_dir is not None else None
    where = Path(tmp.name) if tmp is not None else None
    parked = BlockStore(where) if offload_blocks and where is not None else None  # offload_blocks needs a folder
    inputs = None
    try:
        if parked is not None:  # only block 0 stays: capture stops before block 1
            for j in range(1, len(blocks)):
                parked.park(j, blocks[j])
            release_memory()
        inputs = ActivationStore(where)
        with stream.outer(blocks) if stream is not None else contextlib.nullcontext():
            extras = capture_block_inputs(model, blocks[0], ids, batch_size, inputs, device=home)
        for i in progress(range(len(blocks)), desc=f"{desc}: blocks", total=len(blocks)):
            if parked is not None and i in parked.parked:
                parked.restore(i, blocks[i])
            if stream is not None:
                stream.load(i, f"{name}.{i}", blocks[i])
            block = blocks[i].to(work)

            def feed(block=block, inputs=inputs) -> None:
                for b in range(len(inputs)):
                    _call_block(block, inputs.get(b), extras[b], work)

            if not propagate:  # the next block sees the original (uncompressed) outputs
                outputs = _forward_all(block, inputs, extras, work, where)
            compress(i, f"{name}.{i}", block, feed)
            if calibrating:
                distributed.broadcast_module(blocks[i])  # every rank continues with rank 0's block
            if propagate:
                outputs = _forward_all(blocks[i], inputs, extras, work, where)
            blocks[i].to(home)
            inputs.release()
            inputs = outputs
            if stream is not None:
                stream.done(i, f"{name}.{i}", blocks[i])
            if parked is not None and i + 1 < len(blocks):  # the last one would be restored at once
                parked.park(i, blocks[i])
                release_memory()
        if not return_outputs:
            inputs.release()
            return None
        if where is not None:  # the folder goes away below: hand back the last outputs in memory
            final = ActivationStore()
            for b in range(len(inputs)):
                final.append(inputs.get(b))
            inputs = final
        return inputs
    finally:
        if parked is not None:  # every block back in place, also after an error
            if inputs is not None and inputs.dir is not None:  # activation files first: less on disk at once
                inputs.release()
            for j in sorted(parked.parked):
                parked.restore(j, blocks[j])
        if stream is not None:  # after an error: no block keeps its tensors
            stream.release_all(blocks)
        if tmp is not None:
            tmp.cleanup()


def _forward_all(
    block: nn.Module, inputs: ActivationStore, extras: list, work: torch.device, where: Path | None
) -> ActivationStore:
    out = ActivationStore(where)
    for b in range(len(inputs)):
        x = inputs.get(b)
        out.append(_call_block(block, x, extras[b], work).to(x.device))
    return out


def block_linears(
    block: nn.Module, prefix: str, include: Any = None, exclude: Any = None
) -> list[tuple[str, nn.Module]]:
    """``[(qualified name, module)]`` of the block's Linear / Conv1D layers the selectors keep."""
    from .selectors import _as_list, matches

    inc, exc = _as_list(include), _as_list(exclude)
    out = []
    for n, m in block.named_modules():
        full = f"{prefix}.{n}" if prefix else n
        if not n or not is_linear(m):
            continue
        if inc and not any(matches(s, full, m) for s in inc):
            continue
        if any(matches(s, full, m) for s in exc):
            continue
        out.append((full, m))
    return out


def collect_hessians(
    layers: list[tuple[str, nn.Module]], feed: Callable[[], None], diag_only: bool = False
) -> dict[str, torch.Tensor]:
    """Run ``feed`` with hooks on ``layers``; ``{name: H (in, in)}`` or ``{name: diag H (in,)}``."""
    from .brain_surgeon import HessianAccumulator, SharedInput

    shared = SharedInput()
    accs: dict[str, HessianAccumulator] = {}
    hooks = []
    for name, mod in layers:
        w = weight_2d(mod)
        acc = accs[name] = HessianAccumulator(w.shape[1], w.device, diag_only)

        def hook(_m, args, _out, acc=acc):
            prod, n = shared.product(args[0], diag_only)
            acc.add_product(prod, n)

        hooks.append((mod, hook))
    try:
        with hooked(hooks):
            feed()
    finally:
        shared.clear()
    from .distributed import all_reduce_mean

    for acc in accs.values():  # under torch.distributed: the statistics of every rank's samples
        acc.h, acc.n = all_reduce_mean(acc.h, acc.n)
    return {n: a.value() for n, a in accs.items()}


# ------------------------------------------------------------------- method driver
BlockFn = Callable[[nn.Module, str, list[tuple[str, nn.Module]], Callable[[], None]], None]


def _is_transformers(model: nn.Module) -> bool:
    return type(model).__module__.startswith("transformers.")


def planned_linears(
    model: nn.Module, include: Any = None, exclude: Any = None, *, token_inputs: bool = False
) -> list[tuple[str, nn.Module]]:
    """The ``(qualified name, module)`` of the layers :func:`compress_blocks` will visit, found
    without running anything (recipe preflight): the Linear / Conv1D layers of each decoder block
    of an LLM (a Hugging Face model, or any model calibrated on token ids, that is no supported
    decoder stack raises the supported-families error), else of the whole model."""
    if _is_transformers(model) or token_inputs:
        prefix, blocks = decoder_blocks(model)
        return [
            pair for i, block in enumerate(blocks) for pair in block_linears(block, f"{prefix}.{i}", include, exclude)
        ]
    return block_linears(model, "", include, exclude)


@torch.no_grad()
def compress_blocks(
    model: nn.Module,
    calib: Any,
    fn: BlockFn,
    *,
    include: Any = None,
    exclude: Any = None,
    batch_size: int = 4,
    device: str | torch.device | None = None,
    offload_dir: str | Path | None = None,
    propagate: bool = True,
    desc: str = "one-shot",
    offload_blocks: bool = False,
    stream: Any = None,
) -> None:
    """Call ``fn(root, prefix, layers, feed)`` per unit of work: each decoder block of an LLM.

    ``layers`` are ``(name relative to root, module)`` of the selected Linear/Conv1D layers.
    A Hugging Face model must be a supported decoder stack (:func:`decoder_blocks`); any
    other model (small zoo networks) is one unit: all its Linear layers calibrated at once
    from ``calib`` (a tensor of model inputs), which is fine when the activations are small.
    ``stream``: the model's tensors are on disk (see :func:`run_sequential`).
    """
    if _is_transformers(model) or isinstance(calib, torch.Tensor) and calib.dtype == torch.long:
        decoder_blocks(model)  # the supported-families error, before any work

        def per_block(i: int, name: str, block: nn.Module, feed: Callable[[], None]) -> None:
            layers = [(full[len(name) + 1 :], m) for full, m in block_linears(block, name, include, exclude)]
            if layers:
                fn(block, name, layers, feed)

        run_sequential(
            model,
            calib,
            per_block,
            batch_size=batch_size,
            device=device,
            offload_dir=offload_dir,
            propagate=propagate,
            desc=desc,
            offload_blocks=offload_blocks,
            return_outputs=False,
            stream=stream,
        )
        return
    if stream is not None:
        raise NetslimError(
            f"Streaming works on decoder-stack LLMs calibrated on token ids; {type(model).__name__} "
            "is not one: set stream: false."
        )
    layers = block_linears(model, "", include, exclude)
    if not layers:
        raise NetslimError(
            f"No Linear layer of {type(model).__name__} is selected (include={include!r}, "
            f"exclude={exclude!r}); nothing to compress."
        )
    dev = next(model.parameters()).device

    def feed() -> None:
        for i in range(0, len(calib), batch_size):
            model(calib[i : i + batch_size].to(dev))

    fn(model, "", [(n.lstrip("."), m) for n, m in layers], feed)


def compress_blocks_for(
    model: nn.Module, calib: Any, fn: BlockFn, *, cfg: Any, desc: str | None = None, stream: Any = None
) -> None:
    """:func:`compress_blocks` with ``model`` in eval mode (restored after) and the calibration
    options of a method config: ``include``, ``exclude``, ``batch_size``, ``device``,
    ``offload_dir``, ``sequential`` (propagate), ``offload_blocks``; ``desc`` defaults to ``cfg.method``."""
    with eval_mode(model):
        compress_blocks(
            model,
            calib,
            fn,
            include=cfg.include,
            exclude=cfg.exclude,
            batch_size=cfg.batch_size,
            device=cfg.device,
            offload_dir=cfg.offload_dir,
            propagate=cfg.sequential,
            desc=cfg.method if desc is None else desc,
            offload_blocks=cfg.offload_blocks,
            stream=stream,
        )
