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

:func:`search_preshift` improves on the paper in two ways. The shifts come from each
channel's own quantization error at the current ``ρ̃`` (the ``k`` of least
``‖Q(x_j·2^k; ρ̃)·2^−k − x_j‖²``, a per-channel clip search restricted to powers of two)
rather than from its maximum, and they are not clipped to ``2^E − 1``: the quantized linear op
applies ``2^−k`` exactly for any integer ``k``, so the format's exponent field does not bound
it. ``ρ̃`` and ``k`` are then refined in turn, and the activation format is chosen *after*
shifting: a per-tensor search prefers ``e3m0`` for its range, which the shifts make
unnecessary, and ``e2m1``'s finer steps then win (MiniLM: 0.094 vs 0.124 relative output
error on the Q/K/V input).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch

from bitfold.ir.formats import FloatFormat
from bitfold.passes.fp_search import (
    GRIDS,
    ActObjective,
    sample_rows,
    bias_candidates,
    quantize_tensor,
    search_act_bias,
)


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
    exact_top: Optional[int] = 3,
) -> PreshiftResult:
    """Search ``ρ̃`` for the layer ``X Wᵀ`` (``X`` [T, K], ``W`` [N, K] in full precision).

    The error is ``‖Q(X·2^k; ρ̃) (Wq·2^−k)ᵀ − X Wᵀ‖² / (T·N)`` with ``Wq = w_quantized``.
    ``channel_max`` (default ``max |X|`` per channel; pass the calibration maxima) gives
    ``ρ̃₀ = min_j bias_for_max(max_j)`` and the shifted range ``m = max_j max_j·2^k_j``.
    Candidates: ``γ·ρ̃₀`` (``grid="bias"``, ``points`` values of ``γ`` in [0.01, 1.2]) or
    ``bias_for_max(r·m)`` (``grid="clip"``, ``r`` in (0.3, 1]), plus ``ρ̃₀`` and
    ``bias_for_max(m)``. ``screen_tokens``, ``stride``, ``chunk_elements`` and ``exact_top``
    are as in :func:`~bitfold.passes.fp_search.search_layer`.
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
    rho, error = search_act_bias(objective, fmt_a, candidates, extras, error_init, screen_tokens, stride, exact_top)
    norm = float(X.shape[0] * W.shape[0])
    return PreshiftResult(
        rho=float(rho), k=k, mse=error / norm, rho_init=float(rho_init), mse_init=error_init / norm
    )


def shifts_by_error(X: torch.Tensor, fmt: FloatFormat, rho: float, max_shift: int) -> torch.Tensor:
    """Per channel ``j`` of ``X`` [T, K], the ``k`` in ``[0, max_shift]`` of least quantization error.

    The error is ``Σ_t (Q(x_tj·2^k; ρ̃)·2^−k − x_tj)²``; ``Q(x·2^k; ρ̃)·2^−k = Q(x; ρ̃ + k)``
    exactly, so each ``k`` costs one per-tensor quantization. Ties go to the smaller ``k``.
    Returns [K] int32.
    """
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    errors = torch.stack([
        (quantize_tensor(fmt, X, rho + k) - X).square().sum(0) for k in range(max_shift + 1)
    ])
    return errors.argmin(0).to(torch.int32)


def search_preshift(
    W: torch.Tensor,
    X: torch.Tensor,
    w_quantized: torch.Tensor,
    fmts: Sequence[FloatFormat],
    channel_max: Optional[torch.Tensor] = None,
    grid: str = "clip",
    points: int = 100,
    screen_tokens: Optional[int] = 512,
    stride: int = 9,
    max_shift: int = 12,
    iterations: int = 2,
    exact_top: Optional[int] = 3,
) -> Tuple[FloatFormat, PreshiftResult]:
    """The activation format, shifts ``k`` and ``ρ̃`` of least layer-output error (module doc).

    Per format in ``fmts``: start from ``ρ̃₀ = bias_for_max(max_j channel_max_j)``, then
    ``iterations`` times choose ``k`` by :func:`shifts_by_error` (on ``screen_tokens`` rows)
    and search ``ρ̃`` with :func:`search_preshift_rho`. The format of least error wins.
    ``max_shift`` bounds ``k``; the other arguments are as in :func:`search_preshift_rho`.
    """
    if not fmts:
        raise ValueError("search_preshift needs at least one activation format")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    X = X.detach().to(torch.float32)
    channel_max = (X.abs().amax(0) if channel_max is None else torch.as_tensor(channel_max)).to(torch.float64)
    rows = sample_rows(X.shape[0], screen_tokens)
    X_screen = X if rows is None else X[rows]
    best: Optional[Tuple[FloatFormat, PreshiftResult]] = None
    for fmt in fmts:
        rho = float(fmt.bias_for_max(channel_max.max().clamp_min(1e-30)))
        for _ in range(iterations):
            k = shifts_by_error(X_screen, fmt, rho, max_shift)
            found = search_preshift_rho(
                W, X, k, fmt, w_quantized, channel_max=channel_max, grid=grid, points=points,
                screen_tokens=screen_tokens, stride=stride, exact_top=exact_top,
            )
            rho = found.rho
        if best is None or found.mse < best[1].mse:
            best = (fmt, found)
    assert best is not None
    return best
