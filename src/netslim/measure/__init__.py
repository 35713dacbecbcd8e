"""Measurement: params, non-zeros, MACs, bytes on disk, latency, memory."""

from .counts import (
    LayerStats,
    artifact_layer_table,
    count_nonzero,
    count_params,
    layer_table,
    macs_per_layer,
    register_macs,
    stored_bytes,
)
from .latency import (
    Latency,
    Timing,
    interleaved_latency,
    interleaved_timings,
    latency_fields,
    measure_latency,
    peak_memory_mb,
    peak_rss_mb,
)
from .storage import register_storage
from .summary import model_summary, size_on_disk

__all__ = [
    "Latency",
    "LayerStats",
    "Timing",
    "artifact_layer_table",
    "count_nonzero",
    "count_params",
    "interleaved_latency",
    "interleaved_timings",
    "latency_fields",
    "layer_table",
    "macs_per_layer",
    "measure_latency",
    "model_summary",
    "peak_memory_mb",
    "peak_rss_mb",
    "register_macs",
    "register_storage",
    "size_on_disk",
    "stored_bytes",
]
