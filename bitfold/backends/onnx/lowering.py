"""Replace the ``bitfold``-domain placeholder nodes of an exported model with ONNX nodes.

``torch.onnx.export`` leaves one placeholder per lowered bitfold op (see
:mod:`~bitfold.backends.onnx.registry`). :func:`lower_placeholders` walks the graph in
order and hands each placeholder, as a :class:`BitfoldNode`, to its registered lowering
together with a :class:`LoweringContext`: constant values by name, static shapes, an
:class:`~bitfold.backends.onnx.emitter.Emitter` for the replacement nodes, the shared
library of quantizer functions, and a per-layer record that ends up in the model's
metadata. Initializers that nothing reads afterwards (the packed weights a lowering has
re-encoded) are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Set

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bitfold.backends.onnx.emitter import Emitter, NameScope
from bitfold.backends.onnx.errors import OnnxExportError
from bitfold.backends.onnx.functions import FUNCTION_DOMAIN, FunctionLibrary
from bitfold.backends.onnx.registry import translation

#: The domain of the placeholders that ``torch.onnx.export`` writes for bitfold ops.
PLACEHOLDER_DOMAIN = "bitfold"


@dataclass
class BitfoldNode:
    """One placeholder: the op, a readable label, its inputs ("" when absent) and attributes."""

    op: str
    name: str
    inputs: List[str]
    attrs: Dict[str, Any]
    outputs: List[str]

    @classmethod
    def from_proto(cls, node: onnx.NodeProto) -> "BitfoldNode":
        attrs = {}
        for attr in node.attribute:
            value = helper.get_attribute_value(attr)
            if isinstance(value, bytes):
                value = value.decode("utf-8")
            elif isinstance(value, list) and value and isinstance(value[0], bytes):
                value = [v.decode("utf-8") for v in value]
            attrs[attr.name] = value
        label = attrs.pop("layer", None) or node.name
        return cls(f"{PLACEHOLDER_DOMAIN}::{node.op_type}", label, list(node.input), attrs, list(node.output))

    def input(self, i: int) -> Optional[str]:
        """Input ``i``'s name, ``None`` when absent."""
        return self.inputs[i] if i < len(self.inputs) and self.inputs[i] else None


@dataclass
class ExportOptions:
    """What the lowerings need to know about the export being made."""

    mode: str = "simulate"
    opset: int = 21
    accuracy_level: int = 4
    matmul_nbits: bool = True


class LoweringContext:
    """Everything a lowering may read or write (see the module docstring)."""

    def __init__(self, model: onnx.ModelProto, options: ExportOptions) -> None:
        self.options = options
        self.library = FunctionLibrary(options.opset)
        graph = model.graph
        self._constants: Dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                value = next((a.t for a in node.attribute if a.name == "value"), None)
                if value is not None:
                    self._constants[node.output[0]] = value
        self._shapes: Dict[str, List[Optional[int]]] = {}
        for info in list(graph.input) + list(graph.output) + list(graph.value_info):
            if info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape"):
                self._shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None
                                           for d in info.type.tensor_type.shape.dim]
        names = {t.name for t in graph.initializer} | {i.name for i in graph.input}
        names |= {o for n in graph.node for o in n.output} | {n.name for n in graph.node}
        self.scope = NameScope(names)
        self.layers: Dict[str, Dict[str, Any]] = {}
        self.domains: Dict[str, int] = {}
        self._done: Dict[str, Emitter] = {}

    @property
    def mode(self) -> str:
        return self.options.mode

    def value(self, name: Optional[str]) -> Optional[np.ndarray]:
        """The value of constant ``name`` (an initializer or a ``Constant``), else ``None``."""
        tensor = self._constants.get(name) if name else None
        return None if tensor is None else numpy_helper.to_array(tensor).copy()

    def shape(self, name: str) -> Optional[List[Optional[int]]]:
        """The static sizes of ``name`` (``None`` for a dynamic dimension), if recorded."""
        return self._shapes.get(name)

    def require(self, node: BitfoldNode, i: int, what: str) -> np.ndarray:
        """The constant value of input ``i``; a clear error when it is missing or computed at run time."""
        value = self.value(node.input(i))
        if value is None:
            raise self.fail(node, f"its {what} (input {i}, {node.input(i)!r}) must be a constant to export")
        return value

    def emitter(self, node: BitfoldNode) -> Emitter:
        return Emitter(self.scope, node.name)

    def use_domain(self, domain: str, version: int = 1) -> None:
        """Declare an operator-set import the emitted nodes need (e.g. ``com.microsoft``)."""
        self.domains[domain] = version

    def record(self, node: BitfoldNode, **info: Any) -> None:
        """Per-layer facts for the model's metadata (format, how it was lowered…)."""
        self.layers.setdefault(node.name, {}).update(info)

    def finish(self, node: BitfoldNode, em: Emitter, result: str) -> None:
        """Make ``result`` (an output of ``em``'s nodes) the placeholder's output."""
        target = node.outputs[0]
        produced = {o for n in em.nodes for o in n.output}
        if result in produced:
            for n in em.nodes:
                for field_ in (n.input, n.output):
                    for k, name in enumerate(field_):
                        if name == result:
                            field_[k] = target
        else:
            em.nodes.append(helper.make_node("Identity", [result], [target], name=em.name("output")))
        self._done[node.outputs[0]] = em

    def fail(self, node: BitfoldNode, message: str) -> OnnxExportError:
        return OnnxExportError(f"{node.op} node {node.name!r}: {message}")

    def take(self, node: BitfoldNode) -> Emitter:
        em = self._done.pop(node.outputs[0], None)
        if em is None:
            raise self.fail(node, "its lowering did not produce the node's output (it must call ctx.finish)")
        return em


def lower_placeholders(model: onnx.ModelProto, options: ExportOptions) -> LoweringContext:
    """Lower every ``bitfold``-domain node of ``model`` in place; returns the context used."""
    ctx = LoweringContext(model, options)
    graph = model.graph
    nodes: List[onnx.NodeProto] = []
    initializers: List[onnx.TensorProto] = []
    for proto in graph.node:
        if proto.domain != PLACEHOLDER_DOMAIN:
            nodes.append(proto)
            continue
        node = BitfoldNode.from_proto(proto)
        found = translation(node.op)
        if found is None or found.lower is None:
            raise OnnxExportError(f"{node.op} node {node.name!r} has no ONNX lowering; register one with "
                                  "bitfold.backends.onnx.register_lowering")
        found.lower(node, ctx)
        em = ctx.take(node)
        nodes.extend(em.nodes)
        initializers.extend(em.initializers)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(initializers)
    _drop_unused_initializers(graph)
    imports = [o for o in model.opset_import if o.domain != PLACEHOLDER_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(imports)
    for domain, version in ctx.domains.items():
        model.opset_import.append(helper.make_opsetid(domain, version))
    if ctx.library.functions:
        model.opset_import.append(helper.make_opsetid(FUNCTION_DOMAIN, 1))
        model.functions.extend(ctx.library.functions)
    return ctx


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used: Set[str] = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                used |= {i for n in attr.g.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
