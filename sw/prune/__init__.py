"""Pruning torch models into the patterns the core runs at full rate: GS (gather and
scatter), SubP 1×N blocks, SmartDeal ``W ≈ C·B`` and unstructured magnitude pruning, in the
conventions of ``torch.nn.utils.prune``.

Layer: beside :mod:`gsaccel.sw.compile`; imports :mod:`gsaccel.sw.format` and below.
"""

from .pruning import (PRUNE_PATTERNS, PatternInfo, prune, PruningScheduler, cubic_schedule,
                      pattern_info, prunable_layers, gemm_view, restore, gs_mask,
                      one_by_n_mask, unstructured_mask, block_redundancy_scores, pow2_quantize,
                      smartdeal_decompose, smartdeal_factors, smartdeal_cprime,
                      smartdeal_trainable, smartdeal_freeze, SMARTDEAL_EXP_MIN,
                      SMARTDEAL_EXP_MAX, _SmartDealWeight)

__all__ = [
    "PRUNE_PATTERNS", "PatternInfo", "prune", "PruningScheduler", "cubic_schedule",
    "pattern_info", "prunable_layers", "gemm_view", "restore", "gs_mask", "one_by_n_mask",
    "unstructured_mask", "block_redundancy_scores", "pow2_quantize", "smartdeal_decompose",
    "smartdeal_factors", "smartdeal_cprime", "smartdeal_trainable", "smartdeal_freeze",
    "SMARTDEAL_EXP_MIN", "SMARTDEAL_EXP_MAX",
]
