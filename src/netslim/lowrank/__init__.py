"""Low-rank factorization: truncated SVD of Linear and Conv2d layers, Tucker-2, rank selection."""

from .activation import ActivationRankConfig, activation_rank
from .conv import LowRankConv2d, TuckerConv2d, factorize_conv, tucker2
from .rank import allocate_ranks, energy_rank
from .step import SVDConfig, svd_compress
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
    "svd_compress",
    "svd_factors",
    "tucker2",
    "whitening_factor",
]
