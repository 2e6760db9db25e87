"""SmartDeal (DESIGN §1.3): W̃ ≈ C·B with a sparse power-of-two C, the C' layout the compiler
packs, and training C and B as a ``torch.nn.utils.parametrize`` function.

W is the layer's weight as torch stores it, ``weight.reshape(C_out, -1)``: for a 3×3 Conv2d a
row of W̃ is one kernel row of one input channel (DESIGN §1.3), not a run of the GEMM view's
channels. The compiler lowers SmartDeal for Linear layers only.
"""

import math

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from ..errors import PatternError
from ..format import pow2_round
from .info import PatternInfo, _set_buffer, _set_info, pattern_info
from .masks import _check_gs_shape, gs_mask, one_by_n_mask, unstructured_mask
from .view import _dense_weight, gemm_view, prunable_layers

__all__ = ["pow2_quantize", "smartdeal_decompose", "smartdeal_factors", "smartdeal_cprime",
           "smartdeal_trainable", "smartdeal_freeze", "SMARTDEAL_EXP_MIN", "SMARTDEAL_EXP_MAX"]

#: Exponent range of SmartDeal's C: nonzero entries are ±2**k, SMARTDEAL_EXP_MIN <= k <=
#: SMARTDEAL_EXP_MAX. ``C * 2**-SMARTDEAL_EXP_MIN`` is then an integer power-of-two matrix with
#: exponents 0..15, the core's 4-bit pow2 code (``hw.config.POW2_EXP_MAX``).
SMARTDEAL_EXP_MIN = -10
SMARTDEAL_EXP_MAX = 5

def pow2_quantize(values, *, exp_min=SMARTDEAL_EXP_MIN, exp_max=SMARTDEAL_EXP_MAX,
                  zero_below=None):
    """Round to signed powers of two in the exponent domain: the one rule,
    :func:`gsaccel.sw.format.pow2_round` (docs/numerics.md), over SmartDeal's exponent range.

    |v| in [2**k, 2**(k+1)) rounds up to 2**(k+1) from the midpoint 1.5 · 2**k on; exponents
    are clipped to [exp_min, exp_max]. Entries with |v| < ``zero_below`` become 0 (default:
    none; exact zeros become +2**exp_min, so a kept entry is never lost). A torch tensor is
    rounded in torch (the straight-through rounding of :func:`smartdeal_trainable`), anything
    else as a float64 numpy array.
    """
    xp = torch if isinstance(values, torch.Tensor) else np
    return pow2_round(values, exp_min=exp_min, exp_max=exp_max, zero_below=zero_below, xp=xp)


def smartdeal_decompose(weights, sparsity, lanes, per_row=1, *, c_pattern="1xN",
                        iterations=12, basis=None):
    """Fit W̃ ≈ C·B (DESIGN §1.3) with a sparse power-of-two C.

    W (rows × cols) is zero-padded to cols3 = 3·ceil(cols/3) columns and reshaped row-major
    into W̃ (rows·G × 3), G = cols3/3: row ``r·G + g`` of W̃ is W[r, 3g:3g+3]. Alternating
    least squares: C = pow2(W̃·B⁻¹) on a support mask, then B = lstsq(C, W̃).

    The support is chosen on C' = C.reshape(rows, cols3) (the matrix the engine runs, see
    :func:`smartdeal_cprime`), by |C'[r, 3g+k]| · ‖B[k]‖, with ``c_pattern``: ``1xN``
    (default; rows r of a V-row group share zero positions, every group keeps the same count),
    ``gs-gather``, ``gs-scatter`` or ``unstructured``, at ``sparsity``.

    Returns
    -------
    c : ndarray (rows·G, 3) float64, entries 0 or ±2**k, k in [SMARTDEAL_EXP_MIN, SMARTDEAL_EXP_MAX]
    b : ndarray (3, 3) float64
    row_order : ndarray (rows,) — row groups of C' for gs-scatter (``arange`` otherwise)
    error : float — ‖W − C·B‖_F / ‖W‖_F on the unpadded columns
    """
    weights = np.asarray(weights, dtype=np.float64)
    rows, cols = weights.shape
    cols3 = 3 * -(-cols // 3)
    if c_pattern in ("gs-gather", "gs-scatter"):
        _check_gs_shape(None, cols3, lanes)
    padded = np.zeros((rows, cols3))
    padded[:, :cols] = weights
    target = padded.reshape(-1, 3)
    if basis is None:
        # Start from the principal axes, scaled so that C = U·sqrt(M) has entries of order 1.
        _, singular, vt = np.linalg.svd(target, full_matrices=False)
        scale = np.maximum(singular, singular.max() * 1e-3 + 1e-12) / math.sqrt(target.shape[0])
        basis = scale[:, None] * vt
    basis = np.asarray(basis, dtype=np.float64)
    order = np.arange(rows)
    best = None
    for _ in range(iterations):
        c_float = target @ np.linalg.pinv(basis)
        importance = (np.abs(c_float) * np.linalg.norm(basis, axis=1)[None, :])
        importance = importance.reshape(rows, cols3)
        if c_pattern == "1xN":
            support = one_by_n_mask(importance, sparsity, lanes, 1, alpha=0.0)
        elif c_pattern == "unstructured":
            support = unstructured_mask(importance, sparsity)
        else:
            support, order = gs_mask(importance, sparsity, lanes, per_row,
                                     scatter=c_pattern == "gs-scatter")
        c = pow2_quantize(c_float) * support.reshape(-1, 3)
        basis_new, *_ = np.linalg.lstsq(c, target, rcond=None)
        error = np.linalg.norm((c @ basis_new).reshape(rows, cols3)[:, :cols] - weights)
        if best is None or error < best[0]:
            best = (error, c, basis_new, order)
        basis = basis_new
    error, c, basis, order = best
    norm = np.linalg.norm(weights)
    return c, basis, order, float(error / norm) if norm > 0 else 0.0


def _smartdeal_layer(module, sparsity, lanes, per_row, c_pattern, iterations):
    weight = _dense_weight(module)
    current = gemm_view(module)
    previous = getattr(module, "smartdeal_B", None)
    c, basis, order, error = smartdeal_decompose(
        current, sparsity, lanes, per_row, c_pattern=c_pattern, iterations=iterations)
    if previous is not None:
        # Warm start from the last basis as well, and keep whichever fits better.
        c2, basis2, order2, error2 = smartdeal_decompose(
            current, sparsity, lanes, per_row, c_pattern=c_pattern, iterations=iterations,
            basis=previous.detach().cpu().numpy())
        if error2 < error:
            c, basis, order, error = c2, basis2, order2, error2
    rows, cols = current.shape
    approx = (c @ basis).reshape(rows, -1)[:, :cols]
    if hasattr(module, "weight_mask"):
        torch_prune.remove(module, "weight")
    with torch.no_grad():
        module.weight.copy_(torch.as_tensor(approx, dtype=weight.dtype).reshape(weight.shape))
    device = module.weight.device
    _set_buffer(module, "smartdeal_C", torch.as_tensor(c, dtype=torch.float64, device=device))
    _set_buffer(module, "smartdeal_B", torch.as_tensor(basis, dtype=torch.float64,
                                                       device=device))
    _set_info(module, PatternInfo("smartdeal", lanes, per_row, c_pattern),
              order if c_pattern == "gs-scatter" else None)
    module.smartdeal_error = error
    return error


def smartdeal_factors(module):
    """``(C, B)`` of a SmartDeal-pruned layer as float64 numpy arrays: C (rows·G × 3),
    entries 0 or ±2**k; B (3 × 3). The layer's weight (GEMM view) equals
    ``(C @ B).reshape(rows, 3 * G)[:, :cols]`` up to float32 rounding."""
    if getattr(module, "smartdeal_C", None) is None:
        raise PatternError("Layer must be pruned with pattern 'smartdeal' to have factors, "
                           f"not {pattern_info(module)!r}")
    return module.smartdeal_C.cpu().numpy(), module.smartdeal_B.cpu().numpy()


def smartdeal_cprime(module):
    """C' (rows × 3G), the matrix the engine runs after the BASIS layer:
    ``C'[r, 3g + k] = C[r·G + g, k]``, i.e. ``C.reshape(rows, 3 * G)``."""
    c, _ = smartdeal_factors(module)
    rows = _dense_weight(module).shape[0]
    return c.reshape(rows, -1)


class _SmartDealWeight(nn.Module):
    """Parametrisation weight = (pow2(C_latent) ⊙ support) · B, trained with a straight-through
    estimator for the rounding; the support (zero positions of C) stays fixed."""

    def __init__(self, c, basis, shape):
        super().__init__()
        self.c_latent = nn.Parameter(torch.as_tensor(c, dtype=torch.float32).clone())
        self.basis = nn.Parameter(torch.as_tensor(basis, dtype=torch.float32).clone())
        self.register_buffer("support", torch.as_tensor(c != 0))
        self.shape = tuple(shape)

    def quantised_c(self):
        latent = self.c_latent
        rounded = pow2_quantize(latent.detach())
        return (latent + (rounded - latent).detach()) * self.support

    def forward(self, original):
        rows = self.shape[0]
        cols = int(np.prod(self.shape[1:]))
        weight = (self.quantised_c() @ self.basis).reshape(rows, -1)[:, :cols]
        return weight.reshape(self.shape).to(original.dtype)


def smartdeal_trainable(model):
    """Make every SmartDeal layer of ``model`` train as C·B: the weight becomes a
    ``torch.nn.utils.parametrize`` function of a latent C (rounded to powers of two in the
    forward pass, straight-through in the backward pass, zeros fixed) and B. Call
    :func:`smartdeal_freeze` after training. Returns the number of layers made trainable."""
    from torch.nn.utils import parametrize
    count = 0
    for _, module in prunable_layers(model):
        info = pattern_info(module)
        if info is None or info.pattern != "smartdeal" or parametrize.is_parametrized(module):
            continue
        c, basis = smartdeal_factors(module)
        parametrize.register_parametrization(
            module, "weight", _SmartDealWeight(c, basis, module.weight.shape))
        count += 1
    return count


def smartdeal_freeze(model):
    """Undo :func:`smartdeal_trainable`: store the trained C (exact powers of two on the same
    support) and B in ``smartdeal_C``/``smartdeal_B`` and set the plain weight to C·B."""
    from torch.nn.utils import parametrize
    for _, module in prunable_layers(model):
        if not parametrize.is_parametrized(module, "weight"):
            continue
        param = module.parametrizations.weight[0]
        if not isinstance(param, _SmartDealWeight):
            continue
        support = param.support.cpu().numpy()
        c = pow2_quantize(param.c_latent.detach().cpu().numpy()) * support
        basis = param.basis.detach().cpu().double().numpy()
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        rows = module.weight.shape[0]
        cols = module.weight[0].numel()
        with torch.no_grad():
            module.weight.copy_(torch.as_tensor((c @ basis).reshape(rows, -1)[:, :cols],
                                                dtype=module.weight.dtype)
                                .reshape(module.weight.shape))
        device = module.weight.device
        _set_buffer(module, "smartdeal_C", torch.as_tensor(c, dtype=torch.float64,
                                                           device=device))
        _set_buffer(module, "smartdeal_B", torch.as_tensor(basis, dtype=torch.float64,
                                                           device=device))
    return model

