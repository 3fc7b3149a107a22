"""Keep ONNX Runtime's graph optimizer from re-quantizing weights that bitfold already quantized.

ONNX Runtime (1.32 here) runs ``WeightBiasQuantization`` at its *basic* optimization level,
which every session enables by default. It matches a ``Conv``, ``ConvTranspose`` or
``Gemm`` whose input comes from a ``DequantizeLinear`` with a per-tensor scale and whose
output is quantized again (through a ``Relu`` or not), and then

* quantizes a float32 weight initializer to INT8, per tensor, symmetric, and
* quantizes a bias initializer to INT32 with scale ``s_input · s_weight``,

so that its QDQ fusions can run the layer in integers. For a file whose weights already sit
on their (often finer, per-channel) grid that is a second, lossy quantization: a W4A4-INT
convolution exported in simulate mode then drifts by several percent from the simulation.

The guard rewrites every such ``DequantizeLinear`` to its per-axis form on axis 1 (the
channel axis of an NCHW input), its scale and zero point repeated once per channel: the
same numbers, ``(q − z)·s`` element for element, which the transform's per-tensor test no
longer matches. Files that do not hit the pattern are left unchanged.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import onnx
from onnx import numpy_helper

_REQUANTIZED = {"Conv", "ConvTranspose", "Gemm"}


def _channels(node: onnx.NodeProto, initializers: Dict[str, onnx.TensorProto]) -> Optional[int]:
    """The input channel count of a Conv/ConvTranspose (from its weight initializer); ``None`` if unknown."""
    weight = initializers.get(node.input[1]) if len(node.input) > 1 else None
    if weight is None or node.op_type == "Gemm" or len(weight.dims) < 2:
        return None
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    return int(weight.dims[1]) * group if node.op_type == "Conv" else int(weight.dims[0])


def guard_requantization(model: onnx.ModelProto) -> List[str]:
    """Make the per-tensor ``DequantizeLinear`` feeding each Conv per-axis (see the module
    docstring); returns the names of the rewritten nodes."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    rewritten: List[str] = []
    for node in graph.node:
        if node.op_type not in _REQUANTIZED or not node.input:
            continue
        dq = producers.get(node.input[0])
        channels = _channels(node, initializers)
        if dq is None or dq.op_type != "DequantizeLinear" or channels is None or dq.name in rewritten:
            continue
        scale = initializers.get(dq.input[1])
        zero = initializers.get(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
        if scale is None or len(scale.dims) != 0 or (len(dq.input) > 2 and dq.input[2] and zero is None):
            continue
        names = [_repeated(graph, initializers, scale, channels, f"{dq.name}/per_channel_scale")]
        if zero is not None:
            names.append(_repeated(graph, initializers, zero, channels, f"{dq.name}/per_channel_zero_point"))
        dq.input[1:] = names
        dq.attribute.extend([onnx.helper.make_attribute("axis", 1)])
        rewritten.append(dq.name)
    return rewritten


def _repeated(graph: onnx.GraphProto, initializers: Dict[str, onnx.TensorProto], tensor: onnx.TensorProto,
              count: int, name: str) -> str:
    if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        value = onnx.helper.make_tensor(name, tensor.data_type, [count], [int(numpy_helper.to_array(tensor))] * count)
    else:
        value = numpy_helper.from_array(np.repeat(numpy_helper.to_array(tensor).reshape(1), count), name)
    graph.initializer.append(value)
    initializers[name] = value
    return name
