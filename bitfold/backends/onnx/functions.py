"""ONNX local functions: one per quantizer kind (and bitfold's GELU), built once and called from every site.

A function's body is written with an :class:`~bitfold.backends.onnx.emitter.Emitter` in
function mode (constants become ``Constant`` nodes). Calls go to the ``bitfold.quant``
domain, so Netron shows ``FakeQuantize_e2m1(x, scale)`` boxes that expand into the
arithmetic, and ONNX Runtime inlines them when it loads the model.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence

import onnx
from onnx import helper

from bitfold.backends.onnx.emitter import Emitter, NameScope

#: The domain of bitfold's local functions.
FUNCTION_DOMAIN = "bitfold.quant"


def build_function(
    name: str, inputs: Sequence[str], body: Callable[[Emitter, List[str]], str], opset: int, doc: str
) -> onnx.FunctionProto:
    """A one-output function ``name(*inputs)`` whose nodes ``body(em, inputs)`` writes."""
    scope = NameScope(inputs)
    em = Emitter(scope, "", in_function=True)
    result = body(em, list(inputs))
    em.nodes.append(helper.make_node("Identity", [result], ["y"], name=scope.fresh("output")))
    return helper.make_function(
        FUNCTION_DOMAIN, name, list(inputs), ["y"], em.nodes,
        opset_imports=[helper.make_opsetid("", opset)], doc_string=doc,
    )


class FunctionLibrary:
    """The functions a model uses, keyed by name; each is built on first use."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self._functions: Dict[str, onnx.FunctionProto] = {}

    def call(
        self, em: Emitter, name: str, inputs: Sequence[str], arg_names: Sequence[str],
        body: Callable[[Emitter, List[str]], str], doc: str, hint: str,
    ) -> str:
        """Emit a call of function ``name`` on ``inputs``, defining it if needed."""
        if name not in self._functions:
            self._functions[name] = build_function(name, arg_names, body, self.opset, doc)
        return em.op(name, *inputs, domain=FUNCTION_DOMAIN, hint=hint)

    @property
    def functions(self) -> List[onnx.FunctionProto]:
        return [self._functions[k] for k in sorted(self._functions)]


def scaled_quantizer_body(rounding: Callable[[Emitter, str], str]):
    """Body of ``FakeQuantize_<fmt>(x, scale)``: ``rounding(x / scale) · scale``, where ``rounding``
    emits the nodes that round unit-scale values to the format's grid."""

    def body(em: Emitter, args: List[str]) -> str:
        x, scale = args
        y = em.op("Div", x, scale, hint="unit")
        return em.op("Mul", rounding(em, y), scale, hint="dequantized")

    return body
