"""The ``sparse`` export of a streamed model (its tensors on disk), one decoder block at a time.

The same plan as :func:`netslim.prune.sparse.save_sparse` (CSR where it is smaller than the
dense weight, masks baked in elsewhere), applied per unit: each block is read, its layers
swapped for their stored form, written, released; the skeleton gets its own layers back at
the end, so the run continues with the model it had.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from netslim.core.layerwise import decoder_blocks
from netslim.core.stream_io import BlockStream
from netslim.core.stream_writer import ArtifactWriter
from netslim.core.streaming import StreamedModel, release
from netslim.core.surgery import replace_module

from .sparse import _CSRWeight, sparse_storage_plan


def export_sparse_streamed(sm: StreamedModel, path: Path, info: dict | None, budget: int | None = None) -> Path:
    model = sm.model
    prefix, blocks = decoder_blocks(model)
    inside = {id(m) for m in blocks.modules()}
    names = [
        n
        for n, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d)) and (id(m) not in inside or n.startswith(prefix + "."))
    ]
    writer = ArtifactWriter(path)
    io = BlockStream(sm, writer, budget=budget)
    originals: dict[str, nn.Module] = {}
    stored: list[str] = []

    def swap(unit: str, root: nn.Module, members: list[str]) -> None:
        # root: a decoder block, or one Linear outside the blocks (its plan key is "")
        for rel, new in sparse_storage_plan(root).items():
            full = f"{unit}.{rel}" if rel else unit
            originals[full] = old = replace_module(model, full, new)
            release(old, model)  # the skeleton's own layer, back to meta until it is put back
            if isinstance(new, _CSRWeight):
                stored.append(full)

    try:
        io.each_unit(names, swap)
        return io.finish({**(info or {}), "sparse_layers": sorted(stored)})
    except BaseException:
        writer.abort()
        raise
    finally:
        for full, old in originals.items():
            replace_module(model, full, old)
