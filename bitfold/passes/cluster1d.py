"""Exact, deterministic 1-D k-means: the globally optimal clustering of real values.

Given values ``x_1 ≤ … ≤ x_n`` (sorted) and ``k``, find the partition into ``k`` clusters that
minimizes the within-cluster sum of squares ``Σ_c Σ_{x∈c} (x − mean_c)²``. In one dimension
an optimal partition consists of *contiguous* runs of the sorted values, so it is fixed by
``k − 1`` cut positions and dynamic programming finds it exactly (Wang & Song 2011,
"Ckmeans.1d.dp"). With prefix sums ``P1[j] = Σ_{t<j} x_t`` and ``P2[j] = Σ_{t<j} x_t²`` the
cost of the run ``x_i … x_{j−1}`` is O(1)::

    cost(i, j) = P2[j] − P2[i] − (P1[j] − P1[i])² / (j − i)
    D_1(j)     = cost(0, j)
    D_l(j)     = min_{l−1 ≤ i < j} D_{l−1}(i) + cost(i, j)        (l = 2 … k)

and ``D_k(n)`` is the optimum. ``cost`` satisfies the quadrangle inequality, so the leftmost
minimizing ``i`` never decreases as ``j`` grows; each layer ``D_l`` is then computed by
divide and conquer (evaluate the middle ``j`` of a range over its allowed ``i`` range,
recurse left and right with the ranges narrowed at the found ``i``): O(n log n) per layer,
O(k · n log n) in all, vectorized here level by level over all ranges and over a batch of
rows at once. The last layer needs ``D_k`` at ``j = n`` only, a single vectorized minimum.

Why this and not seeded Lloyd iterations (the SplitQuant code runs scikit-learn's unseeded
k-means): Lloyd converges to a local optimum that depends on the initialization, the seed,
the iteration cap and library versions, so the same model can split differently on two
machines; the DP's answer depends on the values alone (ties broken towards the leftmost cut),
is the global optimum, and costs about as much as a sort. Values equal to each other are never
separated: clusters are returned as thresholds ``t_0 ≤ … ≤ t_{k−2}`` and a value ``v`` belongs
to the first cluster ``c`` with ``v ≤ t_c`` (the last cluster if none). If the DP's optimum
cuts a run of equal values, those values are equidistant from both cluster means, so moving
them all to the lower cluster keeps the cost optimal.

Sums run in float64 on values centred per row, so the cancellation in ``cost`` stays small.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch

#: Candidate (i, j) pairs evaluated per vectorized step; bounds the temporaries (~100 MB).
_CHUNK = 1 << 21


@dataclass(frozen=True)
class Clustering:
    """An optimal k-clustering of each row: inclusive upper thresholds and the achieved cost."""

    #: ``[..., k−1]`` float64: cluster ``c`` holds the values ``v`` with ``t_{c−1} < v ≤ t_c``.
    thresholds: torch.Tensor
    #: ``[...]`` float64: the within-cluster sum of squares of the optimum.
    cost: torch.Tensor

    @property
    def k(self) -> int:
        return self.thresholds.shape[-1] + 1

    def assign(self, values: torch.Tensor) -> torch.Tensor:
        """Cluster ids (int64, ``values``' shape) of ``values``; rows as the clustering's."""
        v = values.to(torch.float64)
        if self.thresholds.dim() == 1:
            return torch.bucketize(v, self.thresholds, right=False)
        return torch.searchsorted(self.thresholds, v.reshape(self.thresholds.shape[0], -1), right=False).reshape(
            values.shape
        )


def _prefix_sums(xs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    zero = xs.new_zeros(xs.shape[0], 1)
    return torch.cat([zero, xs.cumsum(1)], 1), torch.cat([zero, (xs * xs).cumsum(1)], 1)


def _cost(p1: torch.Tensor, p2: torch.Tensor, rows: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """``cost(i, j)`` of row ``rows`` (flat index arithmetic on the ``[B, n+1]`` prefix sums)."""
    stride = p1.shape[1]
    fi, fj = rows * stride + i, rows * stride + j
    p1f, p2f = p1.reshape(-1), p2.reshape(-1)
    s1 = p1f[fj] - p1f[fi]
    return (p2f[fj] - p2f[fi] - s1 * s1 / (j - i).to(torch.float64)).clamp_min(0.0)


def _layer(prev: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, l: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``D_l(j)`` for every row and ``j ∈ [l, n]``, and the leftmost minimizing ``i`` (see module doc).

    Every level of the recursion is one batch: each open range contributes its middle ``j`` and
    its allowed values of ``i``, laid out contiguously, so one gather fetches ``(D_{l−1}(i), P1[i],
    P2[i])`` and two segment reductions give each range's minimum and its leftmost argmin.
    Indices are flat over the ``[rows, n+1]`` tables.
    """
    rows, width = prev.shape
    n = width - 1
    table = torch.stack([prev.reshape(-1), p1.reshape(-1), p2.reshape(-1)], 1)
    best = torch.full((rows * width,), float("inf"), dtype=torch.float64)
    argbest = torch.zeros(rows * width, dtype=torch.int64)
    # Open ranges as flat indices: j in [jlo, jhi], i in [ilo, ihi] (same row).
    base = torch.arange(rows) * width
    jlo, jhi, ilo, ihi = base + l, base + n, base + l - 1, base + n - 1
    while jlo.numel():
        mid = (jlo + jhi) // 2
        counts = torch.minimum(ihi, mid - 1) - ilo + 1
        at_mid = table[mid, 1:]
        found_v = torch.empty(mid.numel(), dtype=torch.float64)
        found_i = torch.empty(mid.numel(), dtype=torch.int64)
        ends = counts.cumsum(0)
        start = 0
        while start < mid.numel():
            # Take ranges until about _CHUNK candidates (at least one range).
            before = int(ends[start - 1]) if start else 0
            stop = max(int(torch.searchsorted(ends, before + _CHUNK, right=True)), start + 1)
            cnt = counts[start:stop]
            local = torch.repeat_interleave(torch.arange(stop - start), cnt)
            i = torch.arange(before, int(ends[stop - 1])) + torch.repeat_interleave(
                ilo[start:stop] - (ends[start:stop] - cnt), cnt)
            at_i = table.index_select(0, i)
            seg = torch.cat([at_mid[start:stop], mid[start:stop, None].to(torch.float64)], 1).index_select(0, local)
            s1 = seg[:, 0] - at_i[:, 1]
            value = at_i[:, 0] + (seg[:, 1] - at_i[:, 2]) - s1 * s1 / (seg[:, 2] - i)
            vmin = torch.full((stop - start,), float("inf"), dtype=torch.float64).scatter_reduce(
                0, local, value, "amin")
            first = torch.where(value == vmin.index_select(0, local), i, rows * width)
            found_v[start:stop] = vmin
            found_i[start:stop] = torch.full((stop - start,), rows * width).scatter_reduce(0, local, first, "amin")
            start = stop
        best[mid] = found_v
        argbest[mid] = found_i
        left, right = mid > jlo, mid < jhi
        jlo, jhi, ilo, ihi = (torch.cat([a[left], b[right]]) for a, b in (
            (jlo, mid + 1), (mid - 1, jhi), (ilo, found_i), (found_i, ihi)))
    return best.reshape(rows, width), (argbest.reshape(rows, width) - torch.arange(rows)[:, None] * width)


def kmeans_1d(values: torch.Tensor, k: int) -> Clustering:
    """The optimal ``k``-clustering of a 1-D tensor, or of every row of a 2-D tensor independently.

    Deterministic: the result depends only on the values. A row with fewer than ``k`` values
    gets ``k − n`` empty clusters (thresholds ``+inf``). Raises ``ValueError`` for ``k < 1``,
    an empty row, a tensor of more than two dimensions, or NaN/Inf values.
    """
    if k < 1:
        raise ValueError(f"kmeans_1d: k must be at least 1, got {k}")
    if values.dim() not in (1, 2):
        raise ValueError(f"kmeans_1d: expected a 1-D tensor or a 2-D batch of rows, got shape {tuple(values.shape)}")
    if values.shape[-1] == 0:
        raise ValueError("kmeans_1d: cannot cluster an empty row")
    batched = values.dim() == 2
    xs = values.detach().to(torch.float64).reshape(values.shape[0] if batched else 1, -1)
    if not bool(torch.isfinite(xs).all()):
        raise ValueError("kmeans_1d: the values contain NaN or Inf")
    xs, _ = xs.sort(dim=1)
    rows, n = xs.shape
    used = min(k, n)
    p1, p2 = _prefix_sums(xs - xs.mean(1, keepdim=True))
    all_rows = torch.arange(rows)
    j_all = torch.arange(n + 1)
    d = torch.full((rows, n + 1), float("inf"), dtype=torch.float64)
    d[:, 1:] = _cost(p1, p2, all_rows[:, None], torch.zeros(1, dtype=torch.int64), j_all[None, 1:])
    back = []
    for l in range(2, used):
        d, arg = _layer(d, p1, p2, l)
        back.append(arg)
    cuts = [torch.full((rows,), n)]
    if used > 1:
        i = torch.arange(used - 1, n)
        total = d[:, used - 1:n] + _cost(p1, p2, all_rows[:, None], i[None, :], torch.full((1,), n))
        cost, pos = total.min(1)
        cuts.insert(0, pos + used - 1)
        for arg in reversed(back):
            cuts.insert(0, arg[all_rows, cuts[0]])
    else:
        cost = d[:, n]
    ends = torch.stack(cuts[:-1], 1) if used > 1 else torch.empty(rows, 0, dtype=torch.int64)
    thresholds = xs.gather(1, ends - 1) if used > 1 else xs.new_empty(rows, 0)
    if used < k:
        thresholds = torch.cat([thresholds, xs.new_full((rows, k - used), float("inf"))], 1)
    if not batched:
        return Clustering(thresholds[0], cost[0])
    return Clustering(thresholds, cost)
