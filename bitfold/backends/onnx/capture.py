"""Turn a quantized GraphModule into an ONNX model with ``torch.onnx.export``.

Every bitfold op in (a shallow copy of) the graph is replaced before export, by its
registered translation (:mod:`~bitfold.backends.onnx.registry`):

* a decomposition runs in its place and is traced to ATen ops;
* a lowered op becomes ``torch.onnx.ops.symbolic("bitfold::<op>", tensors, attributes)``,
  which ``torch.onnx.export`` writes as a placeholder node in the ``bitfold`` domain:
  tensor arguments are its inputs in schema order (absent optional ones as ``""``), the
  other arguments its attributes, plus ``layer``, a readable name for errors, metadata and
  the names of the nodes that replace it.

An op with no translation, or an ATen op ``torch.onnx.export`` cannot translate, is
reported by node name.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import onnx
import torch
from torch import fx

from bitfold.backends.onnx.errors import OnnxExportError
from bitfold.backends.onnx.registry import OutputSpec, op_name, translation

_ATTRIBUTE_TYPES = (str, int, float, bool)


def _is_tensor_type(t: Any) -> bool:
    if isinstance(t, torch.OptionalType):
        t = t.getElementType()
    return isinstance(t, torch.TensorType)


def _placeholder(op: torch._ops.OpOverload, output: OutputSpec, layer: str):
    """A function with ``op``'s signature that records a ``bitfold``-domain placeholder."""
    schema = op._schema
    name = schema.name.split("::", 1)[1]

    def placeholder(*args: Any, **kwargs: Any) -> torch.Tensor:
        values: List[Any] = list(args) + [kwargs.get(a.name, a.default_value if a.has_default_value() else None)
                                          for a in schema.arguments[len(args):]]
        inputs: List[Optional[torch.Tensor]] = []
        attrs: Dict[str, Any] = {"layer": layer}
        for arg, value in zip(schema.arguments, values):
            if _is_tensor_type(arg.type):
                inputs.append(value)
            elif value is not None:
                if not isinstance(value, _ATTRIBUTE_TYPES) and not (
                        isinstance(value, (list, tuple)) and all(isinstance(v, _ATTRIBUTE_TYPES) for v in value)):
                    raise OnnxExportError(f"node {layer!r}: argument {arg.name}={value!r} of {schema.name} "
                                          "cannot be an ONNX attribute")
                attrs[arg.name] = list(value) if isinstance(value, tuple) else value
        shape, dtype = output(*args, **kwargs)
        return torch.onnx.ops.symbolic(f"bitfold::{name}", inputs, attrs, dtype=dtype, shape=shape, version=1)

    placeholder.__name__ = f"bitfold_{name}_placeholder"
    return placeholder


def _label(node: fx.Node) -> str:
    """A readable name: the layer a quantized op replaced, or what a quantizer feeds."""
    if "bitfold_layer" in node.meta:
        return str(node.meta["bitfold_layer"])
    layers = [str(u.meta["bitfold_layer"]) for u in node.users if "bitfold_layer" in u.meta]
    return f"{layers[0]}.input_quantizer" if layers else node.name


def _bitfold_overload(node: fx.Node) -> Optional[torch._ops.OpOverload]:
    """The bitfold op overload ``node`` calls (``torch.fx.symbolic_trace`` records the packet), else None."""
    op = node.target
    if node.op != "call_function":
        return None
    if isinstance(op, torch._ops.OpOverloadPacket) and op._qualified_op_name.startswith("bitfold::"):
        return op.default
    return op if isinstance(op, torch._ops.OpOverload) and op.namespace == "bitfold" else None


def substitute_bitfold_ops(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``gm`` (sharing its tensors) with every bitfold op replaced for export."""
    graph = fx.Graph()
    out = graph.graph_copy(gm.graph, {})
    graph.output(out)
    labels = {n.name: _label(n) for n in gm.graph.nodes}
    for node in graph.nodes:
        op = _bitfold_overload(node)
        if op is None:
            continue
        found = translation(op)
        if found is None:
            raise OnnxExportError(
                f"node {node.name!r} calls {op_name(op)}, which has no ONNX translation; register one with "
                "bitfold.backends.onnx.register_lowering or register_decomposition")
        node.target = found.decompose or _placeholder(op, found.output, labels.get(node.name, node.name))
    copy = fx.GraphModule(gm, graph, class_name=type(gm).__name__)
    copy.meta.update(gm.meta)
    return copy


_FAILED_NODE = re.compile(r"Error when translating node (%\S+)")


def _conversion_error(err: Exception) -> OnnxExportError:
    text = str(err)
    cause: BaseException = err
    while cause.__cause__ is not None:
        cause = cause.__cause__
    match = _FAILED_NODE.search(text) or _FAILED_NODE.search(repr(err.__cause__))
    where = f"node {match.group(1)[1:]!r}: " if match else ""
    message = str(cause).splitlines()[0] if str(cause) else ""
    hint = ""
    if "VR[" in message or "onstraint" in message:
        hint = (" — the example inputs must have sizes the captured graph accepts (a size that was the same in "
                "every calibration item was captured as static)")
    return OnnxExportError(f"{where}torch.onnx.export could not translate the graph to ONNX: "
                           f"{type(cause).__name__}: {message}{hint}")


def export_graph(
    gm: fx.GraphModule,
    example_inputs: Tuple[Any, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_shapes: Optional[Tuple[Any, ...]],
    opset: int,
) -> onnx.ModelProto:
    """``torch.onnx.export`` of ``gm`` with its bitfold ops substituted; returns the ModelProto."""
    module = substitute_bitfold_ops(gm)
    log = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(log):
            warnings.simplefilter("ignore")
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            program = torch.onnx.export(
                module, tuple(example_inputs), dynamo=True, input_names=list(input_names),
                output_names=list(output_names), dynamic_shapes=dynamic_shapes, opset_version=opset,
                optimize=True, verbose=False, report=False, external_data=False,
            )
    except OnnxExportError:
        raise
    except Exception as err:  # torch.onnx raises its own error types; report the node it names
        raise _conversion_error(err) from err
    return program.model_proto
