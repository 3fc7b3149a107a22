"""Check a backend's output against the PyTorch simulation of the same quantized graph."""

from __future__ import annotations

from typing import Any, Callable, Tuple


def _tensors(out: Any) -> list:
    import numpy as np
    import torch

    leaves, _ = torch.utils._pytree.tree_flatten(out)
    return [torch.as_tensor(np.asarray(t)) if not isinstance(t, torch.Tensor) else t for t in leaves]


def max_relative_error(backend: Callable[..., Any], reference: Callable[..., Any], inputs: Tuple[Any, ...]) -> float:
    """``max |backend − reference| / max |reference|`` over all outputs, on ``inputs``."""
    got, want = _tensors(backend(*inputs)), _tensors(reference(*inputs))
    if len(got) != len(want):
        raise ValueError(f"the backend returned {len(got)} output(s), the simulation {len(want)}")
    worst = 0.0
    for g, w in zip(got, want):
        g, w = g.double().reshape(-1), w.double().reshape(-1)
        if g.shape != w.shape:
            raise ValueError(f"the backend returned shape {tuple(g.shape)}, the simulation {tuple(w.shape)}")
        denom = float(w.abs().max()) or 1.0
        worst = max(worst, float((g - w).abs().max()) / denom)
    return worst
