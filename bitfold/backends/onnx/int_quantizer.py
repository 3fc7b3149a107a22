"""The integer fake-quantizer as standard ONNX ops, for widths ONNX has no type for.

``int8``/``uint8``/``int4``/``uint4`` go through ``QuantizeLinear``/``DequantizeLinear``
(:mod:`~bitfold.backends.onnx.native_qdq`); ``int2``/``int3``/``int5``… (and any integer
quantizer whose zero point is not a constant) use this subgraph, which is
:class:`~bitfold.ir.formats.IntFormat`'s arithmetic step for step::

    q = clip(round_half_even(x / s) + round(z), qmin, qmax)
    Q(x) = (q - round(z)) · s
"""

from __future__ import annotations

from typing import List

from bitfold.backends.onnx.emitter import Emitter
from bitfold.ir.formats import IntFormat


def int_quantizer_body(fmt: IntFormat, with_zero_point: bool):
    """Body of ``FakeQuantize_<fmt>(x, scale[, zero_point])``."""

    def body(em: Emitter, args: List[str]) -> str:
        x, scale = args[:2]
        q = em.op("Round", em.op("Div", x, scale, hint="unit"), hint="level")
        zero = em.op("Round", args[2], hint="zero_level") if with_zero_point else None
        if zero is not None:
            q = em.op("Add", q, zero, hint="shifted_level")
        q = em.op("Clip", q, em.scalar(fmt.qmin, "qmin"), em.scalar(fmt.qmax, "qmax"), hint="saturated")
        if zero is not None:
            q = em.op("Sub", q, zero, hint="centered")
        return em.op("Mul", q, scale, hint="dequantized")

    return body
