"""LLM-FP4's pre-shifted exponent bias: per-channel activation biases at per-tensor cost.

Activations of transformers have a few input channels far larger than the rest, so one
per-tensor bias either clips those channels or wastes the grid on all the others. Give
channel ``j`` its own real bias ``b̃_j = fmt.bias_for_max(max_j)`` and split it as

    b̃_j ≈ ρ̃ + k_j,   ρ̃ = min_j b̃_j,   k_j = clip(round(b̃_j − ρ̃), 0, 2^E − 1) ∈ ℤ,

with ``E`` the activation format's exponent bits (``ρ̃`` is the bias of the largest channel;
a larger bias means a smaller range). Because a power-of-two scaling is exact,

    Q(x_j; ρ̃ + k_j) = 2^−k_j · Q(2^k_j · x_j; ρ̃)

bit for bit, so the per-channel-bias activation can be computed as one per-tensor quantizer
with bias ``ρ̃`` applied after multiplying channel ``j`` by ``2^k_j`` (folded upstream, e.g.
into the producing norm), and the layer output is kept by multiplying column ``j`` of the
already quantized weight by ``2^−k_j``:

    Σ_j Q(x_j; ρ̃ + k_j) · Wq[n, j] = Σ_j Q(2^k_j x_j; ρ̃) · (2^−k_j Wq[n, j]).

With ``k`` fixed, :func:`search_preshift_rho` searches ``ρ̃`` to minimize the layer-output
error as :mod:`bitfold.passes.fp_search` does for a per-tensor bias.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from bitfold.ir.formats import FloatFormat
from bitfold.passes.fp_search import GRIDS, ActObjective, bias_candidates, quantize_tensor, search_act_bias


def apply_preshift(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``x · 2^k`` along the last axis, exactly (``k`` integer, one entry per channel).

    The factor ``2^k`` is built from its float32 bits, so it is exact, and multiplying by
    it is exact unless a value overflows or becomes subnormal.
    """
    if k.is_floating_point() or k.is_complex():
        raise ValueError(f"preshift exponents must be integers, got {k.dtype}")
    if k.numel() and int(k.abs().max()) > 126:
        raise ValueError(f"preshift exponents must be within ±126, got {int(k.abs().max())}")
    factor = ((k.to(torch.int32) + 127) << 23).view(torch.float32)
    return x * factor.to(x.dtype)


def preshift_exponents(channel_max: torch.Tensor, fmt: FloatFormat) -> Tuple[float, torch.Tensor]:
    """``(ρ̃, k)`` for per-channel maxima ``channel_max`` [K]: ``k`` int32, in [0, 2^E − 1].

    A channel whose max is 0 holds only zeros; it gets the largest shift (any shift is exact).
    """
    channel_max = torch.as_tensor(channel_max, dtype=torch.float64)
    if channel_max.dim() != 1 or channel_max.numel() == 0:
        raise ValueError(f"channel_max must be a non-empty vector, got shape {tuple(channel_max.shape)}")
    if not bool(torch.isfinite(channel_max).all()) or bool((channel_max < 0).any()):
        raise ValueError("channel_max must hold finite, non-negative maxima")
    if not bool((channel_max > 0).any()):
        raise ValueError("every channel maximum is 0: there is no range to take a bias from")
    bias = fmt.bias_for_max(channel_max)  # +inf where the max is 0
    rho = float(bias.min())
    k = torch.round(bias - rho).clamp(0, 2**fmt.exponent_bits - 1)
    return rho, k.to(torch.int32)


@dataclass
class PreshiftResult:
    """The searched ``ρ̃`` for fixed shifts ``k``, with the output MSE before and after."""

    rho: float
    #: [K] int32 per-input-channel shifts.
    k: torch.Tensor
    mse: float
    rho_init: float
    mse_init: float

    def quantize_act(self, fmt: FloatFormat, x: torch.Tensor) -> torch.Tensor:
        """``Q(x · 2^k; ρ̃)``: the shifted activation, quantized per tensor."""
        return quantize_tensor(fmt, apply_preshift(x, self.k), self.rho)

    def shift_weight(self, w_quantized: torch.Tensor) -> torch.Tensor:
        """The quantized weight with column ``j`` multiplied by ``2^−k_j``."""
        return apply_preshift(w_quantized, -self.k)


def search_preshift_rho(
    W: torch.Tensor,
    X: torch.Tensor,
    k: torch.Tensor,
    fmt_a: FloatFormat,
    w_quantized: torch.Tensor,
    channel_max: Optional[torch.Tensor] = None,
    grid: str = "bias",
    points: int = 100,
    screen_tokens: Optional[int] = 512,
    stride: int = 9,
    chunk_elements: int = 1 << 18,
) -> PreshiftResult:
    """Search ``ρ̃`` for the layer ``X Wᵀ`` (``X`` [T, K], ``W`` [N, K] in full precision).

    The error is ``‖Q(X·2^k; ρ̃) (Wq·2^−k)ᵀ − X Wᵀ‖² / (T·N)`` with ``Wq = w_quantized``.
    ``channel_max`` (default ``max |X|`` per channel; pass the calibration maxima) gives
    ``ρ̃₀ = min_j bias_for_max(max_j)`` and the shifted range ``m = max_j max_j·2^k_j``.
    Candidates: ``γ·ρ̃₀`` (``grid="bias"``, ``points`` values of ``γ`` in [0.01, 1.2]) or
    ``bias_for_max(r·m)`` (``grid="clip"``, ``r`` in (0.3, 1]), plus ``ρ̃₀`` and
    ``bias_for_max(m)``. ``screen_tokens``, ``stride`` and ``chunk_elements`` are as in
    :func:`~bitfold.passes.fp_search.search_layer`.
    """
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}")
    W, X, Wq = (t.detach().to(torch.float32) for t in (W, X, w_quantized))
    if W.shape != Wq.shape or X.dim() != 2 or X.shape[1] != W.shape[1] or k.shape != (W.shape[1],):
        raise ValueError(
            f"expected W and w_quantized [N, K], X [T, K] and k [K]; got W {tuple(W.shape)}, "
            f"w_quantized {tuple(Wq.shape)}, X {tuple(X.shape)}, k {tuple(k.shape)}"
        )
    channel_max = X.abs().amax(0) if channel_max is None else torch.as_tensor(channel_max)
    channel_max = channel_max.to(torch.float64)
    rho_init = fmt_a.bias_for_max(channel_max.max()).reshape(1)
    shifted_max = apply_preshift(channel_max, k).max()
    candidates = bias_candidates(fmt_a, channel_max.max() if grid == "bias" else shifted_max, grid, points)
    extras = torch.cat([rho_init, fmt_a.bias_for_max(shifted_max).reshape(1)])
    objective = ActObjective(W, Wq, X, apply_preshift(X, k), apply_preshift(Wq, -k), chunk_elements)
    error_init = float(objective(fmt_a, rho_init))
    rho, error = search_act_bias(objective, fmt_a, candidates, extras, error_init, screen_tokens, stride)
    norm = float(X.shape[0] * W.shape[0])
    return PreshiftResult(
        rho=float(rho), k=k, mse=error / norm, rho_init=float(rho_init), mse_init=error_init / norm
    )
