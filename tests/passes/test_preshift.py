"""The pre-shifted exponent bias: exponents, the exact shift, the fold identity, the ρ̃ search."""

import pytest
import torch

from bitfold.passes.fp_search import (
    FORMATS,
    GAMMA1,
    GAMMA2,
    float_format,
    output_mse,
    quantize_rows,
    quantize_tensor,
    search_layer,
)
from bitfold.passes.preshift import (
    apply_preshift,
    preshift_exponents,
    search_preshift,
    search_preshift_rho,
    shifts_by_error,
)

E2M1 = float_format("e2m1")


def outlier_layer(N, K, T, seed=0, outliers=3):
    """Gaussian weight; activations with lognormal channel scales and a few ×20–60 outlier channels."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(N, K, generator=g) / K**0.5
    X = torch.randn(T, K, generator=g) * torch.exp(0.5 * torch.randn(K, generator=g)) + 0.2 * torch.randn(K, generator=g)
    X[:, :outliers] *= torch.empty(outliers).uniform_(20, 60, generator=g)
    return W, X


def test_preshift_exponents_known_values():
    # e2m1: bias_for_max(6) = 1, and halving the max adds 1 to the bias.
    channel_max = torch.tensor([6.0, 3.0, 1.5, 0.75, 6 / 256, 6 / 2**0.4, 6 / 2**0.6, 0.0])
    rho, k = preshift_exponents(channel_max, E2M1)
    assert rho == pytest.approx(1.0)
    assert k.dtype == torch.int32
    assert k.tolist() == [0, 1, 2, 3, 3, 0, 1, 3]  # clipped to 2^E - 1 = 3; a zero channel gets 3
    rho, k = preshift_exponents(channel_max[:5], float_format("e4m3"))
    assert k.tolist() == [0, 1, 2, 3, 8]  # E = 4 allows up to 15


def test_preshift_exponents_errors():
    for bad in (torch.zeros(3), torch.tensor([1.0, -1.0]), torch.tensor([1.0, float("nan")]), torch.ones(2, 2)):
        with pytest.raises(ValueError):
            preshift_exponents(bad, E2M1)


def test_apply_preshift_is_exact():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 9, generator=g)
    k = torch.randint(-20, 20, (9,), generator=g, dtype=torch.int32)
    y = apply_preshift(x, k)
    assert torch.equal(y, torch.ldexp(x, k.to(torch.float32)))
    assert torch.equal(apply_preshift(y, -k), x)
    assert torch.equal(apply_preshift(x.double(), k), x.double() * torch.exp2(k.double()))
    with pytest.raises(ValueError, match="integers"):
        apply_preshift(x, k.float())
    with pytest.raises(ValueError, match="126"):
        apply_preshift(x, torch.full((9,), 200))


@pytest.mark.parametrize("name", ["e2m1", "e3m0", "e1m2", "e4m3", "e2m5"])
@pytest.mark.parametrize("rho_offset", [0.0, -0.37, 0.81])
def test_fold_identity_is_bit_exact(name, rho_offset):
    """Per-tensor Q(x·2^k; ρ̃) with weight columns ·2^−k == per-channel Q(x; ρ̃ + k_j), bit for bit."""
    fmt = float_format(name)
    W, X = outlier_layer(24, 40, 64, seed=len(name))
    X[:, 5] *= 1e-3
    Wq = quantize_rows(fmt, W, fmt.bias_for_max(W.abs().amax(1).double()))
    rho, k = preshift_exponents(X.abs().amax(0), fmt)
    rho += rho_offset
    assert int(k.max()) > 0
    shifted = quantize_tensor(fmt, apply_preshift(X, k), rho)
    per_channel = fmt.quantize(X, fmt.scale_for_bias(rho + k.double()), axis=-1)
    assert torch.equal(apply_preshift(shifted, -k), per_channel)
    assert torch.equal(shifted @ apply_preshift(Wq, -k).T, per_channel @ Wq.T)


def test_search_preshift_rho_finds_a_known_optimum():
    """X·2^k on the e2m1 grid at one scale, each channel's max 4 (not 6): ρ̃₀ is off by log2(1.5).

    The true ρ* is placed on the bias grid (ρ* = γ_i·ρ̃₀), the weight is left unquantized, so
    only ρ* gives zero output error.
    """
    g = torch.Generator().manual_seed(0)
    T, K, N = 64, 12, 5
    c = torch.linspace(GAMMA1, GAMMA2, 100, dtype=torch.float64)[60]
    rho_star = float(c * torch.log2(torch.tensor(1.5, dtype=torch.float64)) / (1 - c))
    grid_vals = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0])
    Z = grid_vals[torch.randint(0, 7, (T, K), generator=g)] * torch.where(torch.rand(T, K, generator=g) < 0.5, -1, 1)
    Z[0], Z[1] = 4.0, 0.5
    k = torch.randint(0, 4, (K,), generator=g, dtype=torch.int32)
    k[0] = 0
    X = apply_preshift(Z * E2M1.scale_for_bias(rho_star), -k)
    W = torch.randn(N, K, generator=g)
    rho0, k0 = preshift_exponents(X.abs().amax(0), E2M1)
    assert torch.equal(k0, k)
    res = search_preshift_rho(W, X, k, E2M1, W, stride=1)
    assert res.rho_init == pytest.approx(rho0)
    assert res.mse_init > 1e-3 * float((X @ W.T).square().mean())
    assert res.rho == pytest.approx(rho_star, abs=1e-6)
    assert res.mse <= 1e-12 * float((X @ W.T).square().mean())
    assert output_mse(res.quantize_act(E2M1, X), res.shift_weight(W), X, W) == pytest.approx(res.mse, abs=1e-12)


@pytest.mark.parametrize("grid", ["bias", "clip"])
def test_preshift_beats_per_tensor_search_on_outlier_activations(grid):
    """The tiny W4A4 experiment: MinMax FP > search > search + pre-shift, in output MSE."""
    W, X = outlier_layer(96, 64, 512)
    w_bias = E2M1.bias_for_max(W.abs().amax(1).double())
    minmax = output_mse(quantize_tensor(E2M1, X, E2M1.bias_for_max(X.abs().max())), quantize_rows(E2M1, W, w_bias), X, W)
    searched = search_layer(W, X, 4, 4, grid=grid)
    Wq = searched.quantize_weight(W)
    results = []
    for name in FORMATS[4]:
        fmt = float_format(name)
        _, k = preshift_exponents(X.abs().amax(0), fmt)
        res = search_preshift_rho(W, X, k, fmt, Wq, grid=grid)
        assert res.mse <= res.mse_init * (1 + 1e-6)
        assert res.mse == pytest.approx(output_mse(res.quantize_act(fmt, X), res.shift_weight(Wq), X, W), rel=1e-4)
        results.append(res.mse)
    assert searched.mse < 0.9 * minmax
    assert min(results) < 0.7 * searched.mse


def test_search_preshift_rho_errors():
    W, X = outlier_layer(4, 6, 10)
    k = torch.zeros(6, dtype=torch.int32)
    with pytest.raises(ValueError, match="expected W"):
        search_preshift_rho(W, X, k[:5], E2M1, W)
    with pytest.raises(ValueError, match="grid"):
        search_preshift_rho(W, X, k, E2M1, W, grid="log")


def test_shifts_by_error_picks_the_exact_binade_of_each_channel():
    """Channel j holds e2m1 grid values at scale 2^-j·s: only k = j reproduces it exactly."""
    g = torch.Generator().manual_seed(0)
    grid_vals = torch.tensor([0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    Z = grid_vals[torch.randint(0, 7, (200, 6), generator=g)]
    Z[0] = 6.0  # every channel reaches the top of the grid
    k_true = torch.tensor([0, 1, 2, 3, 5, 7], dtype=torch.int32)
    X = apply_preshift(Z, -k_true)
    k = shifts_by_error(X, E2M1, 1.0, max_shift=8)  # bias 1: the grid at scale 1 (max 6)
    assert torch.equal(k, k_true)
    assert shifts_by_error(X, E2M1, 1.0, max_shift=3).max() == 3  # bounded by max_shift
    with pytest.raises(ValueError, match="max_shift"):
        shifts_by_error(X, E2M1, 1.0, max_shift=-1)


def test_search_preshift_beats_the_paper_shifts():
    """Shifts by error, format searched after shifting: no worse than the paper's max-based k."""
    W, X = outlier_layer(64, 48, 512, seed=3)
    Wq = quantize_rows(E2M1, W, E2M1.bias_for_max(W.abs().amax(1).double()))
    fmts = [float_format(n) for n in FORMATS[4]]
    fmt, found = search_preshift(W, X, Wq, fmts)
    assert fmt in fmts
    assert int(found.k.min()) >= 0 and int(found.k.max()) <= 12
    paper = []
    for f in fmts:
        _, k = preshift_exponents(X.abs().amax(0), f)
        paper.append(search_preshift_rho(W, X, k, f, Wq).mse)
    assert found.mse <= min(paper) * 1.001
    assert found.mse == pytest.approx(output_mse(found.quantize_act(fmt, X), found.shift_weight(Wq), X, W), rel=1e-4)
    with pytest.raises(ValueError, match="at least one"):
        search_preshift(W, X, Wq, [])
    with pytest.raises(ValueError, match="iterations"):
        search_preshift(W, X, Wq, fmts, iterations=0)
