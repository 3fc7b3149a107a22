"""Exact 1-D k-means: the global optimum (against brute force), deterministic, no seed."""

import itertools

import pytest
import torch

from bitfold.passes.cluster1d import kmeans_1d


def _sse(x: torch.Tensor, ids: torch.Tensor, k: int) -> float:
    x = x.double()
    return sum(float(((x[ids == c] - x[ids == c].mean()) ** 2).sum()) for c in range(k) if (ids == c).any())


def _brute_force(x: torch.Tensor, k: int) -> float:
    """The best cost over every way to cut the sorted values into min(k, n) runs."""
    xs = x.double().sort().values
    n = len(xs)
    best = float("inf")
    for cuts in itertools.combinations(range(1, n), min(k, n) - 1):
        bounds = [0, *cuts, n]
        best = min(best, sum(float(((xs[a:b] - xs[a:b].mean()) ** 2).sum()) for a, b in zip(bounds, bounds[1:])))
    return best


def _lloyd(x: torch.Tensor, k: int, seed: int) -> float:
    """Seeded Lloyd iterations from k random points: what SplitQuant's k-means does, with a seed."""
    gen = torch.Generator().manual_seed(seed)
    centres = x[torch.randperm(len(x), generator=gen)[:k]].sort().values
    for _ in range(100):
        ids = (x[:, None] - centres[None]).abs().argmin(1)
        new = torch.stack([x[ids == c].mean() if (ids == c).any() else centres[c] for c in range(k)])
        if torch.equal(new, centres):
            break
        centres = new
    return _sse(x, (x[:, None] - centres[None]).abs().argmin(1), k)


def test_matches_brute_force_including_ties_and_tiny_inputs():
    gen = torch.Generator().manual_seed(0)
    for trial in range(60):
        n = int(torch.randint(1, 10, (1,), generator=gen))
        k = int(torch.randint(1, 5, (1,), generator=gen))
        x = torch.randn(n, generator=gen)
        if trial % 3 == 0:
            x = torch.round(x * 2) / 2  # repeated values
        result = kmeans_1d(x, k)
        best = _brute_force(x, k)
        assert float(result.cost) == pytest.approx(best, rel=1e-9, abs=1e-12)
        # The value-threshold assignment achieves the optimum too (equal values stay together).
        assert _sse(x, result.assign(x), k) == pytest.approx(best, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_rows_are_clustered_independently(k):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(12, 8, generator=gen) * torch.linspace(0.1, 10, 12)[:, None]
    result = kmeans_1d(x, k)
    assert result.thresholds.shape == (12, k - 1) and result.cost.shape == (12,)
    ids = result.assign(x)
    for r in range(12):
        assert float(result.cost[r]) == pytest.approx(_brute_force(x[r], k), rel=1e-9, abs=1e-12)
        assert torch.equal(ids[r], kmeans_1d(x[r], k).assign(x[r]))


def test_clusters_are_value_intervals_and_ids_ascend_with_value():
    x = torch.randn(5000, generator=torch.Generator().manual_seed(2))
    ids = kmeans_1d(x, 3).assign(x)
    for c in range(2):
        assert x[ids == c].max() < x[ids == c + 1].min()


def test_deterministic_and_independent_of_order():
    x = torch.randn(3000, generator=torch.Generator().manual_seed(3))
    a = kmeans_1d(x, 4)
    b = kmeans_1d(x[torch.randperm(len(x), generator=torch.Generator().manual_seed(4))], 4)
    assert torch.equal(a.thresholds, b.thresholds) and torch.equal(a.cost, b.cost)


def test_global_optimum_where_seeded_lloyd_gets_stuck():
    """Lloyd's answer depends on the seed and can be a local optimum; the DP's cannot."""
    x = torch.tensor([0.0, 1, 9, 11, 12, 14, 19, 29], dtype=torch.float64)
    optimum = float(kmeans_1d(x, 3).cost)
    assert optimum == pytest.approx(_brute_force(x, 3)) == pytest.approx(58.5)
    lloyd = {round(_lloyd(x, 3, seed), 6) for seed in range(10)}
    assert min(lloyd) == pytest.approx(optimum) and max(lloyd) > optimum + 1


def test_fewer_values_than_clusters_leaves_empty_clusters():
    result = kmeans_1d(torch.tensor([0.0, 0.0, 0.0]), 3)
    assert torch.equal(result.assign(torch.tensor([0.0, 0.0, 0.0])), torch.zeros(3, dtype=torch.int64))
    two = kmeans_1d(torch.tensor([1.0, 5.0]), 4)
    assert two.assign(torch.tensor([1.0, 5.0])).tolist() == [0, 1] and float(two.cost) == 0.0


def test_errors():
    with pytest.raises(ValueError, match="k must be at least 1"):
        kmeans_1d(torch.randn(4), 0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        kmeans_1d(torch.tensor([1.0, float("nan")]), 2)
    with pytest.raises(ValueError, match="empty row"):
        kmeans_1d(torch.empty(0), 2)
    with pytest.raises(ValueError, match="2-D batch of rows"):
        kmeans_1d(torch.randn(2, 2, 2), 2)
