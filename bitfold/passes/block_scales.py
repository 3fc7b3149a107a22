"""Block-scale search for weights in a block format (MXFP4, NVFP4, ...).

A block format's MinMax scale maps each block's largest magnitude onto the element format's
largest value (6 for E2M1). That is rarely the scale with the least error: E2M1 has no value
between 4 and 6, so everything in the top third of the block's range rounds coarsely, and a
slightly larger scale, or a smaller one that clips the maximum, often does better (the
observation behind "Four Over Six", Cook et al. 2025, and ScaleSweep's block-scale sweeps).
A weight's block scales are stored, so choosing them costs nothing at inference; this search
picks, per block of every row, the representable scale with the least squared error weighted
by each input channel's calibration energy ``E[x_j²]``, the diagonal of the layer's
Hessian, so columns that meet large inputs count more::

    s_b = argmin_{s ∈ candidates} Σ_{j ∈ b} E[x_j²] · (Q(w_j; s) − w_j)²

Candidates are scales the format can store: for NVFP4, E4M3 scale codes (times the tensor
scale) from 0.8× to 1.6× the MinMax scale; for MX, the power-of-two MinMax scale and its
neighbours ×½ and ×2. The MinMax scale is always a candidate, so the weighted error never
grows.
"""

from __future__ import annotations

from typing import Optional

import torch

from bitfold.ir.formats import BlockFormat
from bitfold.ir.formats.block import FP8_E4M3

_NVFP4_RANGE = (0.8, 1.6)
_NVFP4_POINTS = 17


def _candidates(fmt: BlockFormat, W: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """``[C, N, G]`` candidate scales for blocks whose MinMax scale is ``base`` (``[N, G]``),
    ``base`` first."""
    if fmt.scale_kind == "e8m0":
        return torch.stack([base, base * 2.0, base * 0.5])
    tensor_scale = fmt.tensor_scale(W)
    factors = torch.linspace(*_NVFP4_RANGE, _NVFP4_POINTS).tolist()
    codes = [FP8_E4M3.quantize(base * f / tensor_scale).clamp(min=2.0**-9) for f in factors]
    return torch.stack([base] + [c * tensor_scale for c in codes])


def search_block_scales(W: torch.Tensor, fmt: BlockFormat, column_energy: Optional[torch.Tensor] = None,
                        ) -> torch.Tensor:
    """Per-block scales ``[N, ceil(K / B)]`` for the ``[N, K]`` weight ``W`` (see the module docstring).

    ``column_energy`` (``[K]``, ``E[x_j²]`` over calibration inputs) weights each column's
    error; ``None`` weighs them alike."""
    K, B = W.shape[1], fmt.block_size
    pad = -K % B
    padded = torch.nn.functional.pad(W.float(), (0, pad))
    energy = torch.ones(K) if column_energy is None else column_energy.float().clamp_min(0)
    energy = torch.nn.functional.pad(energy, (0, pad))
    base = fmt.block_scales(W, axis=1)
    best, best_error = base, torch.full(base.shape, float("inf"))
    for scale in _candidates(fmt, W, base):
        q = fmt.element.quantize(padded, scale, axis=1, group_size=B, validate=False)
        error = ((q - padded).pow(2) * energy).unflatten(1, (-1, B)).sum(-1)
        better = error < best_error
        best, best_error = torch.where(better, scale, best), torch.where(better, error, best_error)
    return best
