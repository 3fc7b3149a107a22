"""The codebook fake-quantizer (NF4, power-of-√2 POST) as standard ONNX ops.

:class:`~bitfold.ir.formats.CodebookFormat` rounds ``y = x / s`` to the nearest level of
its ascending grid ``G`` (``n`` levels), an exact tie going to the even index::

    hi = #{i : G[i] < y}  clipped to [1, n-1],  lo = hi - 1        (torch.searchsorted)
    take hi  ⇔  G[hi] - y < y - G[lo]  or  (equal and hi even)
    Q(x) = G[hi or lo] · s

The count is ``ReduceSum(Cast(Less(G, y[..., None])))`` — ``n`` comparisons per value,
fine for 4-bit grids (16 levels) — and the distances are the same float32 subtractions
PyTorch does, so ties resolve identically. Levels come from one ``Gather``.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from bitfold.backends.onnx.emitter import Emitter
from bitfold.ir.formats import CodebookFormat


def nearest_level(em: Emitter, y: str, fmt: CodebookFormat) -> str:
    """Nodes computing the grid value nearest to unit-scale ``y`` (ties to the even index)."""
    grid = fmt.grid.numpy().astype(np.float32)
    n = grid.size
    table = em.const(grid, "levels")
    below = em.op("Less", table, em.op("Unsqueeze", y, em.ints([-1], "last_axis")), hint="level_below")
    count = em.op("ReduceSum", em.op("Cast", below, to=TensorProto.INT64), em.ints([-1], "last_axis"), keepdims=0,
                  hint="levels_below")
    hi = em.op("Clip", count, em.const(np.array(1, np.int64), "one"), em.const(np.array(n - 1, np.int64), "top"),
               hint="upper_index")
    lo = em.op("Sub", hi, em.const(np.array(1, np.int64), "one"), hint="lower_index")
    d_lo = em.op("Sub", y, em.op("Gather", table, lo), hint="distance_below")
    d_hi = em.op("Sub", em.op("Gather", table, hi), y, hint="distance_above")
    even = em.op("Gather", em.const(np.arange(n) % 2 == 0, "even_index"), hi, hint="upper_is_even")
    take_hi = em.op("Or", em.op("Less", d_hi, d_lo), em.op("And", em.op("Equal", d_hi, d_lo), even), hint="take_upper")
    return em.op("Gather", table, em.op("Where", take_hi, hi, lo), hint="level")

