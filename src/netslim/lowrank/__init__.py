"""Low-rank factorization: truncated SVD of Linear and Conv2d layers, Tucker-2, rank selection.

The methods: :func:`svd_compress` [svd] and :func:`activation_rank` [activation_rank], each
``fn(model, data=None, **options) -> model`` (made by :func:`netslim.api.method_function`; the
step's notes on ``netslim.report_of(model)``). Every other name is a building block, among them
:func:`svd_layers` and :func:`prune_ranks` (the methods on given inputs, returning the notes).
"""

from .activation import ActivationRankConfig, activation_rank, prune_ranks
from .conv import LowRankConv2d, TuckerConv2d, factorize_conv, tucker2
from .rank import allocate_ranks, energy_rank
from .step import SVDConfig, svd_compress, svd_layers
from .svd import LowRankLinear, factorize_linear, svd_factors, whitening_factor

__all__ = [
    "ActivationRankConfig",
    "LowRankConv2d",
    "LowRankLinear",
    "SVDConfig",
    "TuckerConv2d",
    "activation_rank",
    "allocate_ranks",
    "energy_rank",
    "factorize_conv",
    "factorize_linear",
    "prune_ranks",
    "svd_compress",
    "svd_layers",
    "svd_factors",
    "tucker2",
    "whitening_factor",
]
