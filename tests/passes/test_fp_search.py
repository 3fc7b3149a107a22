"""The LLM-FP4 format/bias search: known optima, agreement with slow per-channel loops, errors."""

import pytest
import torch

from bitfold.ir import formats
from bitfold.passes.fp_search import (
    FORMATS,
    GAMMA1,
    GAMMA2,
    ActObjective,
    WeightObjective,
    bias_candidates,
    default_formats,
    float_format,
    grid_search,
    max_for_bias,
    output_mse,
    quantize_rows,
    quantize_tensor,
    search_layer,
    search_weight_bias,
)

E2M1 = float_format("e2m1")
# The positive e2m1 grid without 6, so a row's max (4) is not the format's max (6).
ON_GRID = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0])


def outlier_layer(N, K, T, seed=0):
    """A Gaussian weight and activations with a few outlier channels, like a transformer's."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(N, K, generator=g) / K**0.5
    X = torch.randn(T, K, generator=g) * torch.exp(0.5 * torch.randn(K, generator=g))
    X[:, :2] *= 30
    return W, X


def on_grid_rows(N, K, g):
    """Rows of e2m1 grid values, each holding 4 and 0.5 (so only one scale is exact), random signs."""
    vals = ON_GRID[torch.randint(0, len(ON_GRID), (N, K), generator=g)]
    vals[:, 0], vals[:, 1] = 4.0, 0.5
    return vals * torch.where(torch.rand(N, K, generator=g) < 0.5, -1.0, 1.0)


@pytest.mark.parametrize("bits,names", [(4, ("e2m1", "e3m0", "e1m2")), (8, ("e4m3", "e5m2", "e3m4", "e2m5", "e1m6"))])
def test_default_formats_are_the_papers_and_exist(bits, names):
    assert default_formats(bits) == names == FORMATS[bits]
    for name in names:
        fmt = formats.get(name)
        assert isinstance(fmt, formats.FloatFormat) and fmt.bits == bits


def test_default_formats_for_other_widths():
    assert default_formats(6)[0] == "e3m2" and set(default_formats(6)) == {f"e{e}m{5 - e}" for e in range(1, 6)}
    with pytest.raises(ValueError):
        default_formats(9)


def test_bias_grid_and_clip_grid():
    m = torch.tensor([0.5, 3.0, 100.0], dtype=torch.float64)
    b0 = E2M1.bias_for_max(m)
    bias = bias_candidates(E2M1, m, "bias", 100)
    assert bias.shape == (100, 3)
    torch.testing.assert_close(bias[0], GAMMA1 * b0)
    torch.testing.assert_close(bias[-1], GAMMA2 * b0)
    clip = bias_candidates(E2M1, m, "clip", 10)
    ratios = max_for_bias(E2M1, clip) / m
    torch.testing.assert_close(ratios[:, 0], 0.3 + 0.07 * torch.arange(1, 11, dtype=torch.float64))
    torch.testing.assert_close(max_for_bias(E2M1, b0), m)  # inverse of bias_for_max
    with pytest.raises(ValueError, match="grid"):
        bias_candidates(E2M1, m, "log", 10)


def test_grid_search_coarse_to_fine_finds_the_minimum_of_unimodal_columns():
    g = torch.Generator().manual_seed(0)
    grid = torch.linspace(0, 1, 100, dtype=torch.float64)[:, None].repeat(1, 50)
    target = torch.rand(50, generator=g, dtype=torch.float64)
    calls = []

    def evaluate(b):
        calls.append(b.shape[0])
        return (b - target).abs()

    best, err = grid_search(grid, grid[:1] * 0 + 5.0, evaluate, stride=9)
    want = grid.gather(0, (grid - target).abs().argmin(0, keepdim=True))[0]
    torch.testing.assert_close(best, want)
    torch.testing.assert_close(err, (want - target).abs())
    assert sum(calls) <= 25  # 1 extra + 12 coarse + 4 + 4, not 100


def test_grid_search_extras_win_ties_and_count():
    grid = torch.zeros(7, 3, dtype=torch.float64)
    extras = torch.full((1, 3), 1.0, dtype=torch.float64)
    best, err = grid_search(grid, extras, lambda b: torch.zeros_like(b), stride=1)
    assert torch.equal(best, extras[0]) and torch.equal(err, torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("T", [12, 3])  # Gram path (T > K) and direct path (T < K)
@pytest.mark.parametrize("grid", ["bias", "clip"])
def test_weight_objective_equals_a_slow_per_channel_loop(T, grid):
    N, K = 6, 5
    W, X = outlier_layer(N, K, T, seed=T)
    fmt = float_format("e3m0")
    Xq = quantize_tensor(fmt, X, fmt.bias_for_max(X.abs().max()) + 0.3)
    candidates = bias_candidates(E2M1, W.abs().amax(1), grid, 20)
    fast = WeightObjective(W, X, Xq, chunk_elements=K * 4)(E2M1, candidates)
    slow = torch.empty(20, N, dtype=torch.float64)
    for n in range(N):
        for c in range(20):
            wq = E2M1.quantize(W[n], E2M1.scale_for_bias(candidates[c, n]))
            slow[c, n] = (Xq.double() @ wq.double() - X.double() @ W[n].double()).square().sum()
    torch.testing.assert_close(fast.double(), slow, rtol=1e-4, atol=1e-6)
    assert torch.equal(fast.argmin(0), slow.argmin(0))


@pytest.mark.parametrize("N,K", [(9, 4), (3, 8)])  # Gram path (N > K) and direct path (N <= K)
def test_act_objective_equals_a_slow_loop(N, K):
    W, X = outlier_layer(N, K, 40, seed=N)
    Wq = quantize_rows(E2M1, W, E2M1.bias_for_max(W.abs().amax(1).double()))
    biases = torch.linspace(-4, 2, 15, dtype=torch.float64)
    objective = ActObjective(W, Wq, X, chunk_elements=K * 7)
    fast = objective(E2M1, biases)
    slow = torch.stack([
        (quantize_tensor(E2M1, X, b).double() @ Wq.double().T - X.double() @ W.double().T).square().sum()
        for b in biases
    ])
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    rows = torch.tensor([0, 5, 7])
    sub = objective.rows(rows)(E2M1, biases)
    slow_sub = torch.stack([
        (quantize_tensor(E2M1, X[rows], b).double() @ Wq.double().T - X[rows].double() @ W.double().T).square().sum()
        for b in biases
    ])
    torch.testing.assert_close(sub, slow_sub, rtol=1e-5, atol=1e-6)


def test_weight_search_equals_a_slow_reference_search():
    """One exhaustive weight-bias step (weight-only) against a loop over channels and candidates."""
    N, K, T = 7, 6, 20
    W, X = outlier_layer(N, K, T, seed=3)
    res = search_layer(W, X, 4, None, rounds=1, k=30, weight_formats=["e2m1"], stride=1)
    w_max = W.abs().amax(1).double()
    candidates = torch.cat([E2M1.bias_for_max(w_max)[None], bias_candidates(E2M1, w_max, "bias", 30)])
    for n in range(N):
        errs = [
            float((X.double() @ (E2M1.quantize(W[n], E2M1.scale_for_bias(b)).double() - W[n].double())).square().sum())
            for b in candidates[:, n]
        ]
        chosen = float((X.double() @ (res.quantize_weight(W)[n].double() - W[n].double())).square().sum())
        assert chosen == pytest.approx(min(errs), rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("bits_a", [None, 4])
def test_search_finds_known_per_channel_optimum(bits_a):
    """Rows on the e2m1 grid at known scales: only the true bias gives zero error, and MinMax misses it.

    Row n holds grid values up to 4 times s_n = 2^(1 − b*_n), so its MinMax bias is
    b̃₀ = b*_n + log2(1.5); b*_n is chosen as a bias-grid point γ_i·b̃₀. The activation sits on the
    e2m1 grid with max 6, where MinMax is exact.
    """
    g = torch.Generator().manual_seed(1)
    N, K, T = 12, 16, 40
    gammas = torch.linspace(GAMMA1, GAMMA2, 100, dtype=torch.float64)
    index = torch.randint(20, 80, (N,), generator=g)
    c = gammas[index]
    b_star = c * torch.log2(torch.tensor(1.5, dtype=torch.float64)) / (1 - c)
    W = on_grid_rows(N, K, g) * E2M1.scale_for_bias(b_star)[:, None]
    X = on_grid_rows(T, K, g)
    X[0, 2] = 6.0
    minmax = output_mse(X, quantize_rows(E2M1, W, E2M1.bias_for_max(W.abs().amax(1).double())), X, W)
    res = search_layer(W, X, 4, bits_a, stride=1)
    assert minmax > 1e-3 * W.square().mean()
    assert res.weight_format == "e2m1" and res.act_format == (None if bits_a is None else "e2m1")
    # b̃₀ comes from the float32 max, so the grid point is b*_n to ~1e-7, not exactly.
    torch.testing.assert_close(res.weight_bias, b_star, rtol=0, atol=1e-6)
    assert output_mse(res.quantize_act(X), res.quantize_weight(W), X, W) <= 1e-12 * float(W.square().mean())
    assert res.mse <= 1e-12 * float(W.square().mean())


def test_weight_bias_step_keeps_a_current_bias_better_than_every_candidate():
    g = torch.Generator().manual_seed(2)
    b_star = 0.3 + torch.rand(6, generator=g, dtype=torch.float64)
    W = on_grid_rows(6, 10, g) * E2M1.scale_for_bias(b_star)[:, None]
    X = torch.randn(30, 10, generator=g)
    objective = WeightObjective(W, X, X)
    minmax = E2M1.bias_for_max(W.abs().amax(1).double())
    best, errors = search_weight_bias(objective, E2M1, minmax, k=5, stride=1)
    assert bool((errors > 0).all())
    best, errors = search_weight_bias(objective, E2M1, b_star, k=5, stride=1)
    assert torch.equal(best, b_star) and float(errors.abs().max()) < 1e-9


def powers_of_two(shape, g):
    sign = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0)
    return sign * torch.exp2(torch.randint(-2, 5, shape, generator=g).float())


def test_format_search_picks_e3m0_for_powers_of_two_and_e1m2_for_uniform_data():
    g = torch.Generator().manual_seed(0)
    N, K, T = 16, 24, 64
    W = powers_of_two((N, K), g) * torch.exp2(torch.randint(-3, 3, (N, 1), generator=g).float())
    X = powers_of_two((T, K), g)
    res = search_layer(W, X, 4, 4)
    assert (res.weight_format, res.act_format) == ("e3m0", "e3m0")
    assert res.history[0][1] > 1.0 and res.mse < 1e-9  # e3m0 holds 2^-2..2^4 exactly
    W, X = torch.rand(N, K, generator=g) * 2 - 1, torch.rand(T, K, generator=g) * 2 - 1
    res = search_layer(W, X, 4, 4)
    assert (res.weight_format, res.act_format) == ("e1m2", "e1m2")  # a uniform grid for uniform data


@pytest.mark.parametrize("grid", ["bias", "clip"])
def test_search_history_is_monotone_and_matches_a_direct_evaluation(grid):
    W, X = outlier_layer(48, 32, 700)
    res = search_layer(W, X, 4, 4, grid=grid, screen_tokens=256)
    values = [m for _, m in res.history]
    assert len(values) == 1 + 3 * 4
    assert all(b <= a * (1 + 1e-5) for a, b in zip(values, values[1:]))
    assert values[-1] < 0.8 * values[0]
    direct = output_mse(res.quantize_act(X), res.quantize_weight(W), X, W)
    assert res.mse == pytest.approx(direct, rel=1e-4)
    assert res.weight_bias.shape == (48,) and res.act_format in FORMATS[4]


def test_screened_search_reports_and_keeps_the_error_on_all_rows():
    """Row screening and proxy ranking still report exact errors over all rows and never rise."""
    W, X = outlier_layer(40, 96, 300, seed=4)
    res = search_layer(W, X, 4, 4, screen_tokens=64)
    values = [m for _, m in res.history]
    assert all(b <= a * (1 + 1e-5) for a, b in zip(values, values[1:]))
    assert res.mse == pytest.approx(output_mse(res.quantize_act(X), res.quantize_weight(W), X, W), rel=1e-4)
    assert res.mse <= 1.1 * search_layer(W, X, 4, 4, screen_tokens=None, exact_top=None).mse
    objective = WeightObjective(W, X, X)
    current = E2M1.bias_for_max(W.abs().amax(1).double()) + 0.4
    best, errors = search_weight_bias(objective, E2M1, current, exact_top=2)
    assert bool((errors <= objective(E2M1, current[None])[0]).all())
    torch.testing.assert_close(errors, objective(E2M1, best[None])[0])


def test_proxies_keep_the_diagonal_of_the_quadratic_term():
    """``proxy`` = exact error with off-diagonal products of quantization errors dropped."""
    W, X = outlier_layer(12, 20, 50, seed=5)
    Xq = quantize_tensor(E2M1, X, E2M1.bias_for_max(X.abs().max()))
    biases = E2M1.bias_for_max(W.abs().amax(1).double())[None] + torch.tensor([[0.0], [0.7]], dtype=torch.float64)
    D = torch.stack([quantize_rows(E2M1, W, b) - W for b in biases])             # [2, N, K]
    h = Xq.square().sum(0)
    expected = (D.square() * h).sum(-1) + 2 * (D * (W @ ((Xq - X).T @ Xq))).sum(-1) + (X @ W.T - Xq @ W.T).square().sum(0)
    torch.testing.assert_close(WeightObjective(W, X, Xq).proxy(E2M1, biases), expected.float(), rtol=1e-4, atol=1e-4)
    Wq = quantize_rows(E2M1, W, biases[0])
    act = ActObjective(W, Wq, X)
    b = torch.tensor([3.0, 4.0], dtype=torch.float64)
    deltas = [quantize_tensor(E2M1, X, v) - X for v in b]
    a = Wq.square().sum(0)
    E = X @ (Wq - W).T
    expected = torch.stack([(dl.square() * a).sum() + 2 * (dl * (E @ Wq)).sum() + E.square().sum() for dl in deltas])
    torch.testing.assert_close(act.proxy(E2M1, b), expected.double(), rtol=1e-4, atol=1e-4)


def test_proxy_ranked_search_is_close_to_the_exact_search():
    W, X = outlier_layer(48, 64, 400, seed=6)
    fast = search_layer(W, X, 4, 4, grid="clip", stride=4)
    exact = search_layer(W, X, 4, 4, grid="clip", stride=4, exact_top=None)
    assert fast.mse <= 1.05 * exact.mse


def test_coarse_to_fine_is_close_to_exhaustive():
    W, X = outlier_layer(64, 32, 400, seed=5)
    fast = search_layer(W, X, 4, 4, stride=9)
    full = search_layer(W, X, 4, 4, stride=1)
    assert fast.mse <= 1.05 * full.mse


def test_eight_bit_and_weight_only():
    W, X = outlier_layer(32, 16, 200, seed=2)
    w4a4 = search_layer(W, X, 4, 4)
    w8a8 = search_layer(W, X, 8, 8, rounds=1)
    w4 = search_layer(W, X, 4, None)
    assert w8a8.weight_format in FORMATS[8] and w8a8.act_format in FORMATS[8]
    assert w8a8.mse < 0.05 * w4a4.mse
    assert w4.act_format is None and w4.act_bias is None and torch.equal(w4.quantize_act(X), X)
    assert w4.mse < w4a4.mse
    assert [s for s, _ in w4.history][1:3] == ["round 1: weight bias", "round 1: weight format"]


def test_all_zero_channels_are_fine():
    W, X = outlier_layer(8, 6, 30)
    W[3] = 0
    X[:, 4] = 0
    res = search_layer(W, X, 4, 4, rounds=1)
    assert bool(torch.isfinite(res.weight_bias).all()) and torch.equal(res.quantize_weight(W)[3], W[3])


def test_errors():
    W, X = outlier_layer(4, 3, 5)
    with pytest.raises(ValueError, match="expected W"):
        search_layer(W, X[:, :2], 4, 4)
    with pytest.raises(ValueError, match="NaN"):
        search_layer(W, torch.where(X > 1, float("nan"), X), 4, 4)
    with pytest.raises(ValueError, match="has 8 bits, expected 4"):
        search_layer(W, X, 4, 4, weight_formats=["e4m3"])
    with pytest.raises(ValueError, match="ExMy float format"):
        search_layer(W, X, 4, 4, act_formats=["int4"])
    with pytest.raises(ValueError, match="grid"):
        search_layer(W, X, 4, 4, grid="log")
    with pytest.raises(ValueError, match="at least one token"):
        search_layer(W, X[:0], 4, 4)


def test_refine_weights_never_worsens_and_adapts_to_the_activation():
    """Weights searched against float inputs, refined against the quantized input they will meet."""
    from bitfold.passes.fp_search import refine_weights

    g = torch.Generator().manual_seed(5)
    W = torch.randn(32, 40, generator=g) / 40**0.5
    X = torch.randn(300, 40, generator=g) * torch.exp(torch.randn(40, generator=g))
    e2m1 = float_format("e2m1")
    Xq = quantize_tensor(e2m1, X, e2m1.bias_for_max(X.abs().max() * 0.5))
    first = search_layer(W, X, 4, None, grid="clip", stride=1)
    before = output_mse(Xq, first.quantize_weight(W), X, W)
    name, bias, mse = refine_weights(W, X, Xq, FORMATS[4], first.weight_format, first.weight_bias, stride=1)
    assert name in FORMATS[4] and bias.shape == (32,)
    assert mse <= before * (1 + 1e-6)
    assert mse == pytest.approx(output_mse(Xq, quantize_rows(float_format(name), W, bias), X, W), rel=1e-4)
    with pytest.raises(ValueError, match="not among"):
        refine_weights(W, X, Xq, ["e2m1"], "e3m0", first.weight_bias)
