"""GPTQ rounding: on the grid, never worse than nearest, identical to it when inputs are uncorrelated."""

import pytest
import torch

from bitfold.ir import formats
from bitfold.passes.gptq import gptq_round

E2M1 = formats.get("e2m1")
INT4 = formats.get("int4")


def correlated_layer(N=48, K=64, T=400, seed=0):
    """Inputs mixed from a few latent factors, so input channels are strongly correlated."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(T, 8, generator=g) @ torch.randn(8, K, generator=g) + 0.1 * torch.randn(T, K, generator=g)
    W = torch.randn(N, K, generator=g) / K**0.5
    return W, X


def row_quantizer(fmt, scale, zero=None):
    return lambda column, j: fmt.quantize(column, scale, axis=0, zero_point=zero)


@pytest.mark.parametrize("fmt", [E2M1, INT4], ids=["e2m1", "int4"])
def test_gptq_is_on_the_grid_and_beats_nearest(fmt):
    W, X = correlated_layer()
    scale = W.abs().amax(1) / fmt.max
    nearest = fmt.quantize(W, scale, axis=0)
    Q = gptq_round(W, X.T @ X, row_quantizer(fmt, scale))
    assert torch.equal(fmt.quantize(Q, scale, axis=0), Q)  # every value is a grid point
    assert not torch.equal(Q, nearest)
    err = lambda V: float((X @ (V - W).T).square().sum())  # noqa: E731
    assert err(Q) < 0.5 * err(nearest)


def test_gptq_with_groups_and_zero_points_stays_on_the_grid():
    W, X = correlated_layer(K=64)
    uint4, group = formats.get("uint4"), 16
    rows = W.unflatten(1, (-1, group))
    lo, hi = rows.amin(-1).clamp(max=0), rows.amax(-1).clamp(min=0)
    scale = (hi - lo) / 15
    zero = torch.round(-lo / scale)
    quantize = lambda column, j: uint4.quantize(column, scale[:, j // group], axis=0,  # noqa: E731
                                                zero_point=zero[:, j // group])
    Q = gptq_round(W, X.T @ X, quantize)
    assert torch.equal(uint4.quantize(Q, scale, axis=1, group_size=group, zero_point=zero), Q)
    nearest = uint4.quantize(W, scale, axis=1, group_size=group, zero_point=zero)
    assert float((X @ (Q - W).T).square().sum()) < float((X @ (nearest - W).T).square().sum())


def test_gptq_equals_nearest_for_uncorrelated_inputs():
    """H diagonal: the correction of later columns is zero, so only nearest rounding is left."""
    W, _ = correlated_layer()
    scale = W.abs().amax(1) / E2M1.max
    H = torch.diag(torch.linspace(0.5, 3.0, W.shape[1]))
    assert torch.equal(gptq_round(W, H, row_quantizer(E2M1, scale)), E2M1.quantize(W, scale, axis=0))


@pytest.mark.parametrize("act_order", [True, False])
def test_gptq_rounds_dead_inputs_to_nearest(act_order):
    W, X = correlated_layer()
    X[:, 5] = 0
    scale = W.abs().amax(1) / E2M1.max
    H = X.T @ X
    Q = gptq_round(W, H, row_quantizer(E2M1, scale), act_order=act_order)
    nearest = E2M1.quantize(W, scale, axis=0)
    assert torch.isfinite(Q).all()
    assert torch.equal(Q[:, 5], nearest[:, 5])  # no other column's error moves a dead one
    first = int(torch.diagonal(H).argmax()) if act_order else 0
    assert torch.equal(Q[:, first], nearest[:, first])  # the first column rounded is never corrected


def test_act_order_rounds_the_strongest_inputs_first():
    """Scale one input up: act order rounds it first (to nearest) and lets the others absorb it."""
    W, X = correlated_layer()
    X[:, 40] *= 10
    scale = W.abs().amax(1) / E2M1.max
    quantize = row_quantizer(E2M1, scale)
    ordered, in_place = gptq_round(W, X.T @ X, quantize), gptq_round(W, X.T @ X, quantize, act_order=False)
    assert torch.equal(ordered[:, 40], E2M1.quantize(W, scale, axis=0)[:, 40])
    assert not torch.equal(in_place[:, 40], ordered[:, 40])
    err = lambda V: float((X @ (V - W).T).square().sum())  # noqa: E731
    assert err(ordered) < err(in_place)


def test_act_order_passes_original_column_indices():
    W, X = correlated_layer(K=32)
    seen = []
    gptq_round(W, X.T @ X, lambda column, j: seen.append(j) or E2M1.quantize(column, torch.ones(()), axis=0))
    assert sorted(seen) == list(range(32)) and seen != list(range(32))


def test_gptq_errors():
    W, X = correlated_layer()
    with pytest.raises(ValueError, match="H must be"):
        gptq_round(W, torch.eye(3), row_quantizer(E2M1, torch.ones(W.shape[0])))
    with pytest.raises(ValueError, match="damp"):
        gptq_round(W, X.T @ X, row_quantizer(E2M1, torch.ones(W.shape[0])), damp=0)
