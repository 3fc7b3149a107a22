"""How each bitfold operator reaches ONNX: a registry keyed by the operator's name.

A bitfold op (``torch.ops.bitfold.*``) gets to ONNX in one of two ways:

* **decomposition** — a PyTorch function with the op's signature, built from ATen ops;
  the exporter calls it in place of the op, and ``torch.onnx.export`` translates the ATen
  ops (``bitfold::fused_linear`` is ``linear`` + activation). Use it when standard ATen
  ops express the op exactly.
* **lowering** — the op is exported as a placeholder node in the ``bitfold`` domain that
  carries every argument (tensors as inputs, the rest as attributes), and a lowering
  function then replaces that node with ONNX nodes, with the values of its constant inputs
  at hand (packed weights, scales, code tables). ``output`` gives the placeholder's shape
  and dtype from the op's arguments during tracing.

Another module adds its op like this (e.g. next to the op's own PyTorch lowering)::

    from bitfold.backends.onnx import register_lowering

    @register_lowering(torch.ops.bitfold.codebook_linear.default,
                       output=lambda x, *args, **kw: ((*x.shape[:-1], args[3]), x.dtype))
    def lower_codebook_linear(node: BitfoldNode, ctx: LoweringContext) -> None:
        codes = ctx.value(node.inputs[1])              # numpy array of the packed codes
        em = ctx.emitter(node)                         # writes nodes in place of the placeholder
        ...
        ctx.finish(node, em, result)                   # result becomes the node's output

An op with neither raises an :class:`OnnxExportError` naming the node and this registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch

if TYPE_CHECKING:
    from bitfold.backends.onnx.lowering import BitfoldNode, LoweringContext

#: ``output(*args, **kwargs) -> (shape, dtype)`` of the op's result, called while tracing.
OutputSpec = Callable[..., Tuple[Sequence[Any], torch.dtype]]
Lowering = Callable[["BitfoldNode", "LoweringContext"], None]
OpKey = Union[str, torch._ops.OpOverload]


@dataclass(frozen=True)
class Translation:
    """A decomposition, or a lowering together with its output spec."""

    decompose: Optional[Callable[..., Any]] = None
    lower: Optional[Lowering] = None
    output: Optional[OutputSpec] = None


_TRANSLATIONS: Dict[str, Translation] = {}


def op_name(op: OpKey) -> str:
    """``"bitfold::quantized_linear"`` for the op overload (or that string itself)."""
    if isinstance(op, str):
        return op
    return op._schema.name


def register_decomposition(op: OpKey) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn`` (same signature as ``op``) to replace ``op`` before ``torch.onnx.export``."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        _TRANSLATIONS[op_name(op)] = Translation(decompose=fn)
        return fn

    return register


def register_lowering(op: OpKey, output: OutputSpec) -> Callable[[Lowering], Lowering]:
    """Register an ONNX-level lowering of ``op`` (see the module docstring)."""

    def register(fn: Lowering) -> Lowering:
        _TRANSLATIONS[op_name(op)] = Translation(lower=fn, output=output)
        return fn

    return register


def translation(op: OpKey) -> Optional[Translation]:
    """The registered translation of ``op``, or ``None``."""
    return _TRANSLATIONS.get(op_name(op))


def registered_ops() -> Dict[str, str]:
    """Every op with a translation, and its kind (``decomposition`` or ``lowering``)."""
    return {name: "decomposition" if t.decompose else "lowering" for name, t in sorted(_TRANSLATIONS.items())}
