"""A netslim artifact written tensor by tensor, never whole in memory.

``save`` (:mod:`netslim.core.serialize`) needs every tensor at once: safetensors puts the
header (names, shapes, offsets, and netslim's description and checksums) before the data.
:class:`ArtifactWriter` takes tensors as a streamed pass produces them (one decoder block
at a time), appends their bytes to spill files beside the output and hashes them as they
come; :meth:`ArtifactWriter.finish` writes the header, then copies the spilled bytes after
it into a temporary file that replaces the output atomically. The result is the same
artifact ``save`` writes (same description, aliases, SHA-256 record and tensors; only the
order of tensors in the data buffer differs), which ``netslim.load`` / ``netslim eval`` read.

Alignment: tensors are grouped by element size (8, 4, 2, 1 bytes) and each group is one
spill file, so in the final buffer every tensor starts at a multiple of its element size,
as safetensors' own writer arranges it; the header is padded with spaces to 8 bytes.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

import torch
from torch import nn

from .artifact_schema import (
    ALGORITHM,
    DESCRIPTION_KEY,
    DTYPE_NAMES,
    INTEGRITY_KEY,
    _tensor_digest,
    _text_digest,
    tensor_bytes,
)
from .errors import NetslimError

GROUPS = (8, 4, 2, 1)  # element sizes, in the order their spill files are laid out
COPY_CHUNK = 8 << 20  # bytes per read when the spill files are copied into the artifact


class ArtifactWriter:
    """Collects tensors for ``path``; :meth:`finish` writes the artifact, :meth:`abort` removes
    every temporary file (nothing half-written stays beside ``path``)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):  # spill of a run killed while writing
            stale.unlink(missing_ok=True)
        self._spill: dict[int, tuple[str, BinaryIO]] = {}
        self._entries: dict[str, tuple[str, list[int], int, int, int]] = {}  # dtype, shape, group, offset, nbytes
        self._digests: dict[str, bytes] = {}
        self.aliases: dict[str, str] = {}  # keys whose tensor is stored under another key
        self.bytes_written = 0

    def _file(self, size: int) -> BinaryIO:
        if size not in self._spill:
            fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=f".spill{size}.tmp", dir=self.path.parent)
            self._spill[size] = (name, os.fdopen(fd, "wb"))
        return self._spill[size][1]

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self.aliases

    def add(self, name: str, t: torch.Tensor) -> None:
        if name in self:
            raise NetslimError(f"{self.path}: tensor {name!r} written twice.")
        t = t.detach().to("cpu").contiguous()
        if t.dtype not in DTYPE_NAMES:
            raise NetslimError(f"{self.path}: tensor {name!r} has dtype {t.dtype}, which safetensors cannot store.")
        dtype, size = DTYPE_NAMES[t.dtype], t.element_size()
        data = tensor_bytes(t) if t.numel() else memoryview(b"")
        f = self._file(size if size in GROUPS else 1)
        offset = f.tell()
        f.write(data)
        self._entries[name] = (dtype, list(t.shape), size if size in GROUPS else 1, offset, len(data))
        self._digests[name] = _tensor_digest(name, dtype, t.shape, data)
        self.bytes_written += len(data)

    def add_module(self, module: nn.Module, prefix: str, heads: dict[str, str] | None = None) -> None:
        """Every tensor of ``module``'s state dict under ``prefix``; tensors sharing storage are
        stored once, as :func:`netslim.core.serialize.save` does (the others become aliases).

        ``heads`` (``key -> first key`` of the whole model's tied groups, as
        :func:`netslim.core.streaming.alias_groups`): a tensor tied to a key outside ``module``
        (an LM head tied to the embedding) is stored once under its group's first key."""
        seen: dict[tuple, str] = {}
        for k, t in module.state_dict(prefix=prefix).items():
            head = (heads or {}).get(k, k)
            if head != k:
                if head not in self:
                    self.add(head, t)
                self.aliases[k] = head
                continue
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype) if t.numel() else None
            if key is not None and key in seen:
                self.aliases[k] = seen[key]
                continue
            if key is not None:
                seen[key] = k
            self.add(k, t)

    def finish(self, description: dict) -> Path:
        """Write the artifact with ``description`` (its ``aliases`` and ``checksums`` are set here)."""
        desc = {**description, "aliases": dict(self.aliases), "checksums": ALGORITHM}
        text = json.dumps(desc)
        digests = b"".join(self._digests[k] for k in sorted(self._digests))
        record = json.dumps(
            {
                "algorithm": ALGORITHM,
                "description": _text_digest(text),
                "tensors": base64.b64encode(digests).decode("ascii"),
            },
            separators=(",", ":"),
        )
        base = {size: 0 for size in GROUPS}
        pos = 0
        for size in GROUPS:
            base[size] = pos
            pos += self._spill[size][1].tell() if size in self._spill else 0
        header: dict = {"__metadata__": {DESCRIPTION_KEY: text, INTEGRITY_KEY: record}}
        for name, (dtype, shape, size, offset, nbytes) in self._entries.items():
            header[name] = {
                "dtype": dtype,
                "shape": shape,
                "data_offsets": [base[size] + offset, base[size] + offset + nbytes],
            }
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(len(raw).to_bytes(8, "little"))
                out.write(raw)
                for size in GROUPS:
                    if size in self._spill:
                        name, f = self._spill[size]
                        f.close()
                        with open(name, "rb") as src:
                            shutil.copyfileobj(src, out, COPY_CHUNK)
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        finally:
            self.abort()
        return self.path

    def abort(self) -> None:
        """Remove the spill files (after :meth:`finish`, or instead of it)."""
        for name, f in self._spill.values():
            f.close()
            Path(name).unlink(missing_ok=True)
        self._spill.clear()
