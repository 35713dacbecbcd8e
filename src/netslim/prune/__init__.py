"""Unstructured and N:M pruning: criteria, masks, schedules, lottery tickets, sparse storage.

Public API (recipe method names in brackets):

* :func:`prunable_layers`, :func:`masks_from_scores`, :func:`apply_masks`, :func:`sparsity_report`
* importance criteria: :class:`Criterion`, :func:`register_criterion` (a user's own, by name in
  any step's ``criterion``), :func:`get_criterion`, :func:`registered_criteria`
* :class:`MagnitudePruneConfig` / :func:`magnitude_prune` [magnitude]
* :class:`NMConfig` / :func:`nm_prune` [nm]
* :class:`IMPConfig` / :func:`imp_prune` [imp]; :class:`GradualConfig` / :func:`gradual_prune` [gradual]
* :class:`LotteryConfig` / :func:`lottery_ticket` [lottery]
* :class:`SparseLinear`, :class:`SparseConv2d`, :func:`save_sparse` [export format: sparse];
  :class:`SparsifyConfig` / :func:`sparsify` [sparsify]

The methods among these names - :func:`magnitude_prune`, :func:`nm_prune`, :func:`imp_prune`,
:func:`gradual_prune`, :func:`lottery_ticket`, :func:`sparsify`, and in their own modules
``oneshot.wanda`` / ``sparsegpt`` / ``magnitude_oneshot``, ``sparse_training.rigl_train`` /
``set_train``, ``l0.l0_prune``, ``movement.movement_prune``, ``obd.obd_prune``,
``cofi.cofi_prune`` - are each
``fn(model, data=None, **options) -> model`` (made by :func:`netslim.api.method_function`; data
is a task or what ``netslim.apply(data=)`` takes; the step's notes on ``netslim.report_of(model)``).
The rest are building blocks.
"""

from netslim.prune.criteria import (
    Criterion,
    apply_masks,
    get_criterion,
    magnitude_scores,
    masks_from_counts,
    masks_from_scores,
    prunable_layers,
    random_scores,
    register_criterion,
    registered_criteria,
    sparsity_report,
)
from netslim.prune.lottery import LotteryConfig, lottery_ticket, rewind, snapshot_weights
from netslim.prune.nm import NMConfig, nm_mask, nm_prune
from netslim.prune.schedules import (
    CubicPruning,
    GradualConfig,
    IMPConfig,
    cubic_sparsity,
    gradual_prune,
    imp_prune,
    imp_sparsities,
)
from netslim.prune.sparse import SparseConv2d, SparseLinear, save_sparse
from netslim.prune.sparsify import SparsifyConfig, sparsify
from netslim.prune.unstructured import MagnitudePruneConfig, magnitude_prune, target_masks

__all__ = [
    "Criterion",
    "CubicPruning",
    "GradualConfig",
    "IMPConfig",
    "LotteryConfig",
    "MagnitudePruneConfig",
    "NMConfig",
    "SparseConv2d",
    "SparseLinear",
    "SparsifyConfig",
    "apply_masks",
    "cubic_sparsity",
    "get_criterion",
    "gradual_prune",
    "imp_prune",
    "imp_sparsities",
    "lottery_ticket",
    "magnitude_prune",
    "magnitude_scores",
    "masks_from_counts",
    "masks_from_scores",
    "nm_mask",
    "nm_prune",
    "prunable_layers",
    "random_scores",
    "register_criterion",
    "registered_criteria",
    "rewind",
    "save_sparse",
    "snapshot_weights",
    "sparsify",
    "sparsity_report",
    "target_masks",
]
