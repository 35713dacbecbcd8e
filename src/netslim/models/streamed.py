"""Open a model for streaming: a Hugging Face directory or a netslim artifact, built on the
meta device with its tensors left on disk (:class:`netslim.core.streaming.StreamedModel`).

The structure is the one :func:`netslim.models.sources.open_hf_dir` builds (same class,
config and fp32 parameters), so a streamed run and an in-memory run of the same recipe
compute the same numbers; the weights are checked against the model before any work
(:func:`netslim.core.streaming.check_source`: missing or extra tensors, shapes, the index).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from netslim.core.errors import NetslimError, shown
from netslim.core.streaming import (
    INDEX,
    SINGLE,
    StreamedModel,
    TensorSource,
    alias_groups,
    check_source,
    hf_buffer_init,
    open_artifact,
)
from netslim.models.sources import OpenedModel

FLOAT_DTYPES = {"F32", "F16", "BF16", "F64"}


def open_streamed(ref: Any, *, verify: bool = True) -> tuple[OpenedModel, StreamedModel]:
    """``(opened, streamed)`` for a Hugging Face directory, a netslim ``.safetensors`` artifact or a
    zoo language model (:func:`zoo_dir`); ``opened.model`` is the meta-device skeleton. Anything
    else: a NetslimError saying so."""
    zoo = _zoo_llm(ref)
    if zoo is not None:
        sm = open_hf_dir_streamed(zoo_dir(zoo.name))
        sm.model.netslim_source = zoo.name  # tokenizer and reports: the zoo model's own
        return OpenedModel(sm.model, zoo.name, zoo.dataset, zoo.name), sm
    path = Path(str(ref)) if isinstance(ref, (str, Path)) else None
    if path is not None and path.is_dir():
        sm = open_hf_dir_streamed(path)
        return OpenedModel(sm.model, path.resolve().name, None, str(path.resolve())), sm
    if path is not None and path.is_file() and path.suffix == ".safetensors":
        sm = open_artifact(path, verify=verify)
        info = sm.info
        source = info.get("source") or getattr(sm.model, "netslim_source", None)
        return OpenedModel(sm.model, info.get("model", path.stem), info.get("dataset"), source, None, info), sm
    what = type(ref).__name__ if path is None else shown(str(ref))
    raise NetslimError(
        f"stream: true needs the model's weights on disk as safetensors (a Hugging Face model "
        f"directory, a netslim .safetensors artifact or a zoo language model); got {what}. Save it "
        "with model.save_pretrained(dir), or set stream: false to load it in memory."
    )


def open_hf_dir_streamed(path: Path) -> StreamedModel:
    """A ``save_pretrained`` directory as a skeleton of its class (fp32, as :func:`open_hf_dir`)."""
    from netslim.models.hf_arch import finish_hf, safe_attn_config
    from netslim.models.sources import _dir_class, hf_dir_config

    path = path.resolve()
    cfg = hf_dir_config(path)
    if cfg.get("quantization_config") is not None:
        raise NetslimError(
            f"{path} holds quantized weights (config.json 'quantization_config'): streaming reads "
            "float checkpoints; set stream: false to load it in memory."
        )
    cls = _dir_class(path, cfg["architectures"][0])
    source = TensorSource.open(path)  # the index and every shard checked
    try:
        config = cls.config_class.from_dict(safe_attn_config(cfg))
    except (ValueError, TypeError, KeyError) as e:
        raise NetslimError(
            f"{path / 'config.json'}: transformers cannot read it as {cls.config_class.__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else type(e).__name__}."
        ) from None
    config._name_or_path = str(path)
    with torch.device("meta"):
        model = cls(config)
    model.name_or_path = str(path)
    model = finish_hf(model, str(path))
    groups = alias_groups(model)
    check_source(model, source, groups)
    return StreamedModel(model, source, groups, path, init_buffers=hf_buffer_init(model))


def _zoo_llm(ref: Any):
    """The zoo entry of ``ref`` when it names a pretrained causal LM (smollm2), else None."""
    if not isinstance(ref, str) or "/" in ref or Path(ref).exists():
        return None
    from netslim.models import model_entry

    try:
        entry = model_entry(ref)
    except NetslimError:
        return None
    return entry if entry.pretrained and entry.task == "causal_lm" else None


def zoo_dir(name: str) -> Path:
    """A zoo language model as a ``save_pretrained`` directory in the cache
    (``$NETSLIM_CACHE/stream/<name>``), so that a streamed run reads it block by block. Written
    once, by a child process (building the model in memory costs this process nothing), into a
    temporary folder renamed when complete."""
    import os
    import subprocess
    import sys

    from netslim.core.cache import cache_dir

    target = cache_dir() / "stream" / name
    if (target / "config.json").is_file() and any((target / f).is_file() for f in (SINGLE, INDEX)):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{name}.{os.getpid()}.tmp")
    code = "import sys; from netslim.models import build_model; build_model(sys.argv[1]).save_pretrained(sys.argv[2])"
    try:
        done = subprocess.run([sys.executable, "-c", code, name, str(tmp)], capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
            raise NetslimError(f"Writing zoo model {name!r} as safetensors for streaming failed: {last}")
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return target


def fp32_bytes_on_disk(ref: Any) -> int | None:
    """fp32 bytes of the floating tensors a Hugging Face directory or artifact holds (from the
    headers, nothing loaded): what loading it in memory costs; None for anything else."""
    path = Path(str(ref)) if isinstance(ref, (str, Path)) else None
    if path is None or not (path.is_dir() or (path.is_file() and path.suffix == ".safetensors")):
        return None
    try:
        if path.is_dir() and "quantization_config" in json.loads((path / "config.json").read_text("utf-8")):
            return None  # a quantized directory: loaded in memory by its own reader
        source = TensorSource.open(path)
    except (NetslimError, OSError, ValueError):
        return None
    return sum(4 * source.entry(n).numel for n in source.names if source.entry(n).dtype in FLOAT_DTYPES)
