"""A logistic-regression probe on sentence embeddings (scikit-learn is not a bitfold dependency).

Binary L2-regularized logistic regression on standardized features, the objective
scikit-learn's ``LogisticRegression(C=C)`` minimizes, scaled by ``1 / (C·n)``:

    min_{w,b}  mean_i log(1 + exp(−y_i (w·x_i + b)))  +  ||w||² / (2·C·n),   y_i ∈ {−1, +1}

It is smooth and strictly convex, so L-BFGS (with a strong-Wolfe line search) finds the one
minimum. ``C`` is chosen by k-fold cross-validation on the training set only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)


@dataclass
class Probe:
    """A fitted probe: standardization (``mean``, ``std``) and the linear classifier."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    C: float

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Labels 0/1 for the rows of ``x``."""
        z = (x.double() - self.mean) / self.std
        return (z @ self.weight + self.bias > 0).long()

    def accuracy(self, x: torch.Tensor, labels: torch.Tensor) -> float:
        return float((self.predict(x) == labels).double().mean())


def _fit(x: torch.Tensor, labels: torch.Tensor, C: float) -> Probe:
    x = x.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-12)
    z = (x - mean) / std
    y = labels.double() * 2 - 1
    w = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")
    ridge = 1.0 / (2.0 * C * len(z))

    def loss() -> torch.Tensor:
        opt.zero_grad()
        value = torch.nn.functional.softplus(-y * (z @ w + b)).mean() + ridge * w.pow(2).sum()
        value.backward()
        return value

    opt.step(loss)
    return Probe(mean, std, w.detach(), b.detach(), C)


def fit_probe(x: torch.Tensor, labels: torch.Tensor, folds: int = 5, grid: Sequence[float] = C_GRID,
              seed: int = 0) -> Probe:
    """Fit on all of ``(x, labels)`` with the ``C`` of ``grid`` that has the best mean
    accuracy over ``folds`` seeded cross-validation folds (ties: the smaller ``C``)."""
    if x.shape[0] != labels.shape[0] or x.shape[0] < folds:
        raise ValueError(f"fit_probe: {x.shape[0]} embeddings, {labels.shape[0]} labels, {folds} folds")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    parts = order.chunk(folds)
    best_c, best_acc = grid[0], -1.0
    for C in grid:
        accs = []
        for i, held in enumerate(parts):
            keep = torch.cat([p for j, p in enumerate(parts) if j != i])
            accs.append(_fit(x[keep], labels[keep], C).accuracy(x[held], labels[held]))
        acc = sum(accs) / len(accs)
        if acc > best_acc:
            best_c, best_acc = C, acc
    return _fit(x, labels, best_c)
