"""netslim: compress trained PyTorch networks and prove the result.

Methods register themselves where they live (``@netslim.register(MyConfig)`` on a handler
``(model, cfg, ctx) -> model``); core finds them through sources it loads on the first
lookup (:mod:`netslim.core.registry`): the families below, then the plugins of installed
distributions (entry-point group ``netslim.plugins``). ``import netslim`` loads none of them.
"""

from __future__ import annotations

from functools import partial
from importlib import import_module

from .core import registry as _registry

# The method families shipped with netslim, imported (never discovered by scanning) on the
# first lookup; each registers its configs, module types, formats and loaders at import.
BUILTIN_FAMILIES: tuple[str, ...] = (
    "netslim.models",  # architecture kinds 'zoo' and 'hf'
    "netslim.recipe.steps",
    "netslim.lowrank",
    "netslim.distill",
    "netslim.prune",
    "netslim.quantize",
    "netslim.prune.sparse_training",
    "netslim.prune.l0",
    "netslim.prune.movement",
    "netslim.prune.obd",
    "netslim.codec",
    "netslim.prune.structured",
    "netslim.prune.cofi",
    "netslim.prune.oneshot",
    "netslim.quantize.gptq",
    "netslim.quantize.sparse_gptq",
    "netslim.quantize.stream",
    "netslim.search",
    "netslim.export.gguf",
    "netslim.export.hf",
)
for _name in BUILTIN_FAMILIES:
    _registry.add_source(_name, partial(import_module, _name))
del _name
_registry.add_entry_points(_registry.PLUGIN_GROUP)

from .api import CompressResult, apply, compress  # noqa: E402
from .core.config import MethodConfig, register  # noqa: E402
from .core.errors import NetslimError  # noqa: E402
from .core.history import StepReport, report_of  # noqa: E402
from .core.serialize import load, save  # noqa: E402
from .models import build_model  # noqa: E402

# The families as attributes, imported on first use (``import netslim`` stays light):
# ``netslim.prune.magnitude_prune(model, sparsity=0.5)`` works after a plain ``import netslim``.
_SUBPACKAGES = frozenset(
    {
        "codec",
        "data",
        "distill",
        "export",
        "lowrank",
        "measure",
        "models",
        "prune",
        "quantize",
        "recipe",
        "report",
        "search",
        "train",
    }
)


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__version__ = "0.1.0"
__all__ = [
    "CompressResult",
    "MethodConfig",
    "NetslimError",
    "StepReport",
    "apply",
    "build_model",
    "compress",
    "load",
    "register",
    "report_of",
    "save",
    "__version__",
]
