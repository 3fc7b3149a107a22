"""Lowering of ``bitfold::hadamard``: the butterfly steps of :func:`bitfold.ir.hadamard.spell_hadamard` as ONNX ops.

Not a ``MatMul`` by the Hadamard matrix: a matrix product sums in an order of the
runtime's choosing, so the rotated values, and the codes the quantizer after them picks,
would differ from the PyTorch simulation. The body is one local function per block size
(``Hadamard<b>`` in the ``bitfold.quant`` domain) of ``Reshape``, ``Split``, ``Add``, ``Sub``,
``Concat`` and ``Mul`` nodes in the order PyTorch takes them, so ONNX Runtime's output is
bit-identical to the simulation's.
"""

from __future__ import annotations

from typing import List, Tuple

import torch

from bitfold.backends.onnx.emitter import Emitter
from bitfold.backends.onnx.lowering import BitfoldNode, LoweringContext
from bitfold.backends.onnx.registry import register_lowering
from bitfold.ir.hadamard import HadamardError, check_block, spell_hadamard


class OnnxButterflies:
    """:class:`~bitfold.ir.hadamard.Butterflies` writing ONNX nodes with an :class:`Emitter`."""

    def __init__(self, em: Emitter) -> None:
        self.em = em

    def halves(self, x: str, h: int) -> Tuple[str, str]:
        pairs = self.em.op("Reshape", x, self.em.ints([-1, 2, h], "pairs_shape"), hint="pairs")
        first, second = self.em.op("Split", pairs, outputs=2, axis=1, num_outputs=2, hint="half")
        return first, second

    def join(self, a: str, c: str) -> str:
        return self.em.op("Concat", a, c, axis=1)

    def add(self, a: str, c: str) -> str:
        return self.em.op("Add", a, c)

    def sub(self, a: str, c: str) -> str:
        return self.em.op("Sub", a, c)

    def scale(self, x: str, factor: float) -> str:
        return self.em.op("Mul", x, self.em.scalar(factor, "norm"))

    def restore(self, y: str, like: str) -> str:
        return self.em.op("Reshape", y, self.em.op("Shape", like), hint="rotated")


@register_lowering(torch.ops.bitfold.hadamard.default, output=lambda x, *args, **kwargs: (x.shape, x.dtype))
def lower_hadamard(node: BitfoldNode, ctx: LoweringContext) -> None:
    block = node.attrs.get("block")
    shape = ctx.shape(node.input(0))
    try:
        check_block(block, shape[-1] if shape and shape[-1] else block)
    except HadamardError as err:
        raise ctx.fail(node, str(err)) from None

    def body(fn: Emitter, args: List[str]) -> str:
        return spell_hadamard(args[0], block, OnnxButterflies(fn))

    em = ctx.emitter(node)
    doc = (f"bitfold::hadamard(block={block}): x rotated by blockdiag(H_{block}) along its last axis, "
           "butterfly for butterfly as bitfold's PyTorch op computes it")
    y = ctx.library.call(em, f"Hadamard{block}", [node.input(0)], ["x"], body, doc, hint="hadamard")
    ctx.record(node, op="hadamard", block=block, lowering="local function")
    ctx.finish(node, em, y)
