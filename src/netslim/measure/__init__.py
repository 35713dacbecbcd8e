"""Measurement: params, non-zeros, MACs, bytes on disk, latency, memory."""
from .counts import LayerStats, count_nonzero, count_params, layer_table, macs_per_layer, register_macs
from .latency import Timing, interleaved_latency, measure_latency, peak_memory_mb, peak_rss_mb
from .summary import model_summary, size_on_disk

__all__ = ["LayerStats", "Timing", "count_nonzero", "count_params", "interleaved_latency", "layer_table",
           "macs_per_layer", "measure_latency", "model_summary", "peak_memory_mb", "peak_rss_mb",
           "register_macs", "size_on_disk"]
