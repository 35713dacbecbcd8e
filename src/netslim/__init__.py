"""netslim: compress trained PyTorch networks and prove the result."""
from __future__ import annotations

from .api import CompressResult, apply, compress
from .core.config import MethodConfig, register
from .core.errors import NetslimError
from .core.serialize import load, save
from .models import build_model

__version__ = "0.1.0"
__all__ = ["CompressResult", "MethodConfig", "NetslimError", "apply", "build_model", "compress", "load", "register",
           "save", "__version__"]
