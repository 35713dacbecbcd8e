"""Deep Compression's codec: weight sharing, sparse index coding, Huffman coding, ``.nsz``.

Importing this family registers the ``share`` method, the ``nsz`` export format, the
``.nsz`` loader (by magic bytes) and the shared-weight module types.

The method: :func:`share_weights` [share] (``fn(model, data=None, **options) -> model``, made
by :func:`netslim.api.method_function`: clustering, centroid fine-tuning on ``data``, the
per-stage table; its notes on ``netslim.report_of(model)``). Every other name is a building
block: :func:`cluster_weights` (the clustering alone), :func:`finetune_centroids`,
:func:`round_codebooks`, the container's encode / decode / export functions, the module types.
"""

from netslim.core.export import register_exporter
from netslim.core.serialize import register_loader

from .container import MAGIC, decode, encode_model, export_nsz, load_nsz, model_from_bytes, nsz_breakdown, read_nsz_info
from .kmeans import cluster_1d
from .modules import SharedConv2d, SharedLinear, SharedWeight
from .pipeline import bit_exact, dense_param_bytes, share_weights
from .sharing import ShareConfig, cluster_weights, finetune_centroids, on_centroids, round_codebooks

register_exporter("nsz", export_nsz, ".nsz")
register_loader(MAGIC, load_nsz, info=read_nsz_info)

__all__ = [
    "MAGIC",
    "ShareConfig",
    "SharedConv2d",
    "SharedLinear",
    "SharedWeight",
    "bit_exact",
    "cluster_weights",
    "cluster_1d",
    "decode",
    "dense_param_bytes",
    "encode_model",
    "export_nsz",
    "finetune_centroids",
    "load_nsz",
    "model_from_bytes",
    "nsz_breakdown",
    "on_centroids",
    "read_nsz_info",
    "round_codebooks",
    "share_weights",
]
