"""Lowering of ``bitfold::gelu``: the steps of :func:`bitfold.ir.stable_gelu.spell_gelu` as ONNX ops.

Not ONNX's ``Gelu`` (or ``Erf``): those cancel in the negative tail differently from
PyTorch, which is what the op exists to avoid. The body is one local function per variant
(``Gelu``, ``GeluTanh`` in the ``bitfold.quant`` domain), built from ``Abs``, ``Add``,
``Sub``, ``Mul``, ``Div``, ``Exp``, ``Less`` and ``Where`` in exactly the
order PyTorch evaluates them, so ONNX Runtime's outputs differ from the simulation only by
its ``Exp`` (a few ulps).
"""

from __future__ import annotations

from typing import List

import torch

from bitfold.backends.onnx.emitter import Emitter
from bitfold.backends.onnx.functions import FunctionLibrary
from bitfold.backends.onnx.lowering import BitfoldNode, LoweringContext
from bitfold.backends.onnx.registry import register_lowering
from bitfold.ir.stable_gelu import APPROXIMATIONS, spell_gelu

_FUNCTIONS = {"none": "Gelu", "tanh": "GeluTanh"}


class OnnxArithmetic:
    """:class:`~bitfold.ir.stable_gelu.Arithmetic` writing ONNX nodes with an :class:`Emitter`."""

    def __init__(self, em: Emitter) -> None:
        self.em = em

    def const(self, value: float) -> str:
        return self.em.scalar(value, "c")

    def abs(self, x: str) -> str:
        return self.em.op("Abs", x)

    def add(self, a: str, b: str) -> str:
        return self.em.op("Add", a, b)

    def sub(self, a: str, b: str) -> str:
        return self.em.op("Sub", a, b)

    def mul(self, a: str, b: str) -> str:
        return self.em.op("Mul", a, b)

    def div(self, a: str, b: str) -> str:
        return self.em.op("Div", a, b)

    def exp(self, x: str) -> str:
        return self.em.op("Exp", x)

    def where_negative(self, x: str, if_negative: str, otherwise: str) -> str:
        return self.em.op("Where", self.em.op("Less", x, self.const(0.0)), if_negative, otherwise)


def emit_gelu(em: Emitter, library: FunctionLibrary, x: str, approximate: str) -> str:
    """A call of the ``Gelu`` / ``GeluTanh`` local function on ``x`` (defined on first use)."""

    def body(fn: Emitter, args: List[str]) -> str:
        return spell_gelu(args[0], OnnxArithmetic(fn), approximate)

    doc = (f"bitfold::gelu(approximate={approximate!r}): GELU through erfc, without float32 cancellation "
           "for x < 0, step for step as bitfold's PyTorch op computes it")
    return library.call(em, _FUNCTIONS[approximate], [x], ["x"], body, doc, hint="gelu")


@register_lowering(torch.ops.bitfold.gelu.default, output=lambda x, *args, **kwargs: (x.shape, x.dtype))
def lower_gelu(node: BitfoldNode, ctx: LoweringContext) -> None:
    approximate = node.attrs.get("approximate", "none")
    if approximate not in APPROXIMATIONS:
        raise ctx.fail(node, f"approximate={approximate!r} is not one of {APPROXIMATIONS}")
    em = ctx.emitter(node)
    y = emit_gelu(em, ctx.library, node.input(0), approximate)
    ctx.record(node, op="gelu", approximate=approximate, lowering="local function")
    ctx.finish(node, em, y)
