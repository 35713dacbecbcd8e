"""Policy search: sensitivity analysis, budgeted per-layer allocation, NetAdapt, an AMC-style
CEM agent and architecture search, with trials run serially or on Ray.

* :mod:`.sensitivity`: metric vs one layer's channels / sparsity / bits, cached on disk;
* :mod:`.allocate`: exact multiple-choice knapsack (DP) and a greedy allocation on exact costs;
* :mod:`.channels`: the per-group channel-ratio space with exact and separable costs;
* :mod:`.latency`: per-layer-shape latency lookup table;
* :mod:`.netadapt`, :mod:`.cem`: iterative and learned policies;
* :mod:`.nas`: evolutionary search over the zoo's CNN families, Pareto set;
* :mod:`.trials`: serial / Ray trial runner with a resumable JSONL log;
* recipe steps ``search_channels``, ``netadapt`` (:mod:`.steps`) and ``nas`` (:mod:`.nas`), called from Python
  as :func:`search_channels`, :func:`netadapt` and :func:`architecture_search` (``fn(model, data, **options)``).
"""

from __future__ import annotations

from .allocate import UnreachableBudget, brute_force, greedy_allocate, knapsack, repair
from .channels import ChannelSpace
from .nas import NASConfig, NASSpace, architecture_search
from .sensitivity import SensitivityTable, bits_sensitivity, channel_sensitivity, sparsity_sensitivity
from .steps import NetAdaptConfig, SearchChannelsConfig, netadapt, search_channels
from .trials import TrialLog, TrialRunner, trial_seed

__all__ = [
    "ChannelSpace",
    "NASConfig",
    "NASSpace",
    "NetAdaptConfig",
    "SearchChannelsConfig",
    "SensitivityTable",
    "TrialLog",
    "TrialRunner",
    "UnreachableBudget",
    "bits_sensitivity",
    "brute_force",
    "channel_sensitivity",
    "greedy_allocate",
    "knapsack",
    "architecture_search",
    "netadapt",
    "repair",
    "search_channels",
    "sparsity_sensitivity",
    "trial_seed",
]
