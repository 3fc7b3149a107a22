"""The ``ExMy`` fake-quantizer as standard ONNX ops, bit-exact with bitfold's PyTorch one.

:class:`~bitfold.ir.formats.FloatFormat` rounds ``y = x / s`` as (see its module)::

    a = min(|y|, max)
    p = max(floor(log2 a), 1 - bias)            (the clamp is the subnormal binade)
    q = round_half_even(a · 2^(M-p)) · 2^(p-M)
    Q(x) = copysign(q, y) · s

ONNX has no exponent extraction below opset 26 (``BitCast``), so ``p`` is estimated as
``floor(log(a) / ln 2)`` — which a runtime whose ``Log`` is not correctly rounded can get
wrong by one next to a power of two (ONNX Runtime's CPU ``Log`` was exact in the tests) —
and then made exact by comparing ``a`` with the two powers of two around the estimate::

    j  = clip(floor(log(a) · 1/ln2), pmin, pmax) - pmin      (binade index, 0 ≤ j < L)
    j += [a ≥ UPPER[j]] - [a < LOWER[j]]                       (UPPER[j] = 2^(pmin+j+1), LOWER[j] = 2^(pmin+j))

with ``UPPER[L-1] = +inf`` and ``LOWER[0] = 0`` so the clamps hold. The factors
``2^(M-p)`` and ``2^(p-M)`` come from ``Gather`` over exact float32 tables, so every
multiply is the same correctly rounded float32 operation PyTorch performs, and
``Round`` is half-to-even in both. Formats with one binade (``e1m2``, ``e1m6``: uniform
grids) skip the search. This serves every LLM-FP format (``e2m1``, ``e3m0``, ``e1m2``,
``e4m3`` with max 480, ``e5m2`` without Inf…), any integer exponent bias, and real-valued
or per-channel biases, which bitfold carries as the scale ``s``.
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np
from onnx import TensorProto

from bitfold.backends.onnx.emitter import Emitter
from bitfold.ir.formats import FloatFormat


def binade_range(fmt: FloatFormat) -> Tuple[int, int]:
    """``(pmin, pmax)``: the exponents of the subnormal binade and of ``fmt.max``."""
    pmin = fmt.min_exponent
    pmax = int(math.floor(math.log2(fmt.max))) if fmt.max > 0 else pmin
    return pmin, max(pmin, pmax)


def _pow2(exponents: np.ndarray) -> np.ndarray:
    return np.ldexp(np.float32(1.0), exponents.astype(np.int32)).astype(np.float32)


def round_to_grid(em: Emitter, y: str, fmt: FloatFormat) -> str:
    """Nodes computing ``copysign(q, y)`` for unit-scale ``y`` (the middle of the quantizer)."""
    M = fmt.mantissa_bits
    pmin, pmax = binade_range(fmt)
    a = em.op("Min", em.op("Abs", y), em.scalar(fmt.max, "max"), hint="magnitude")
    if pmax == pmin:
        q = em.op("Mul", em.op("Round", em.op("Mul", a, em.scalar(2.0 ** (M - pmin), "inv_step"))),
                  em.scalar(2.0 ** (pmin - M), "step"), hint="rounded")
        return em.op("Mul", q, em.op("Sign", y), hint="signed")
    p = np.arange(pmin, pmax + 1)
    upper = _pow2(p + 1)
    upper[-1] = np.inf
    lower = _pow2(p)
    lower[0] = 0.0
    log2 = em.op("Mul", em.op("Log", a), em.scalar(1.0 / math.log(2.0), "inv_ln2"), hint="log2_estimate")
    est = em.op("Clip", em.op("Floor", log2), em.scalar(pmin, "pmin"), em.scalar(pmax, "pmax"), hint="binade_estimate")
    j0 = em.op("Cast", em.op("Sub", est, em.scalar(pmin, "pmin_offset")), to=TensorProto.INT64, hint="binade_index")
    too_low = em.op("Cast", em.op("GreaterOrEqual", a, em.op("Gather", em.const(upper, "binade_upper"), j0)),
                    to=TensorProto.INT64)
    too_high = em.op("Cast", em.op("Less", a, em.op("Gather", em.const(lower, "binade_lower"), j0)),
                     to=TensorProto.INT64)
    j = em.op("Sub", em.op("Add", j0, too_low), too_high, hint="binade")
    up = em.op("Gather", em.const(_pow2(M - p), "inv_step_table"), j, hint="inv_step")
    down = em.op("Gather", em.const(_pow2(p - M), "step_table"), j, hint="step")
    q = em.op("Mul", em.op("Round", em.op("Mul", a, up)), down, hint="rounded")
    return em.op("Mul", q, em.op("Sign", y), hint="signed")

