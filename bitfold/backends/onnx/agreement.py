"""How closely two runs of a model agree (ONNX Runtime against the PyTorch simulation).

For outputs ``a`` (tested) and ``b`` (reference) of the same shape:

* ``max_abs = max |a - b|``, ``mean_abs = mean |a - b|``;
* ``max_rel = max |a - b| / max |b|`` and ``mean_rel = mean |a - b| / mean |b|`` — errors
  relative to the output's scale, not per element (a per-element ratio is meaningless
  where ``b`` crosses zero);
* ``argmax_match``: the fraction of rows (last axis) whose argmax agrees.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterable

import numpy as np
import torch


@dataclass
class Agreement:
    max_abs: float
    mean_abs: float
    max_rel: float
    mean_rel: float
    argmax_match: float
    rows: int

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _array(x: Any) -> np.ndarray:
    return (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)).astype(np.float64)


def agreement(tested: Any, reference: Any) -> Agreement:
    """Error statistics of ``tested`` against ``reference`` (see the module docstring)."""
    a, b = _array(tested), _array(reference)
    if a.shape != b.shape:
        raise ValueError(f"outputs differ in shape: {a.shape} vs {b.shape}")
    diff = np.abs(a - b)
    scale_max, scale_mean = float(np.abs(b).max()), float(np.abs(b).mean())
    rows = a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)
    ref_rows = b.reshape(-1, b.shape[-1]) if b.ndim else b.reshape(1, 1)
    return Agreement(
        max_abs=float(diff.max()), mean_abs=float(diff.mean()),
        max_rel=float(diff.max()) / scale_max if scale_max else float(diff.max()),
        mean_rel=float(diff.mean()) / scale_mean if scale_mean else float(diff.mean()),
        argmax_match=float((rows.argmax(-1) == ref_rows.argmax(-1)).mean()), rows=int(rows.shape[0]),
    )


def combine(results: Iterable[Agreement]) -> Agreement:
    """Worst maxima, average means and pooled argmax agreement over several batches."""
    results = list(results)
    rows = sum(r.rows for r in results)
    return Agreement(
        max_abs=max(r.max_abs for r in results), mean_abs=float(np.mean([r.mean_abs for r in results])),
        max_rel=max(r.max_rel for r in results), mean_rel=float(np.mean([r.mean_rel for r in results])),
        argmax_match=sum(r.argmax_match * r.rows for r in results) / rows, rows=rows,
    )
