"""Formats other tools load without netslim: Hugging Face directories (dense, sparse, or
compressed-tensors quantized), GGUF for llama.cpp. Each module registers its exporter with
:func:`netslim.core.export.register_exporter` when imported (listed in ``netslim.BUILTIN_FAMILIES``)."""
