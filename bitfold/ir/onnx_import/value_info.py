"""What is known statically about each ONNX value: element type, rank, and static sizes.

ONNX shape inference (with data propagation, so Shape→Gather→Concat→Reshape chains resolve)
fills in what the file leaves out. A size with a ``dim_param`` name, or none at all, is
dynamic and recorded as ``None``: converters read it at run time with ``aten.sym_size``,
from the first graph input that has a size of the same ``dim_param`` name when there is one
(as ``torch.export`` reads every size from the inputs), else from the value itself.
Inference is best effort — a model it rejects still imports as long as the converters that
need a rank or a dtype find one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import onnx
import torch

from bitfold.ir.onnx_import.dtypes import maybe_torch_dtype


@dataclass(frozen=True)
class TensorType:
    dtype: Optional[torch.dtype]
    dims: Optional[Tuple[Optional[int], ...]]  # None: rank unknown; a None entry: a dynamic size
    symbols: Tuple[Optional[str], ...] = ()  # the dim_param name of each dynamic size, if any


def tensor_type(value: onnx.ValueInfoProto) -> Optional[TensorType]:
    """The static type of a ValueInfoProto, or ``None`` if it is not a tensor."""
    if not value.type.HasField("tensor_type"):
        return None
    tt = value.type.tensor_type
    if not tt.HasField("shape"):
        return TensorType(maybe_torch_dtype(tt.elem_type), None)
    dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
    symbols = tuple(d.dim_param or None if d.HasField("dim_param") else None for d in tt.shape.dim)
    return TensorType(maybe_torch_dtype(tt.elem_type), dims, symbols)


def infer_value_types(model: onnx.ModelProto, order: Sequence[int]) -> Dict[str, TensorType]:
    """Static types of the graph's inputs, outputs and intermediate values, by name.

    ``order`` lists the graph's nodes to infer through, in a topological order.
    """
    try:
        graph = onnx.shape_inference.infer_shapes(_skeleton(model, order), check_type=False, strict_mode=False,
                                                  data_prop=True).graph
    except Exception:  # inference is an optimisation: converters report what they miss
        graph = model.graph
    types: Dict[str, TensorType] = {}
    for value in (*graph.input, *graph.value_info, *graph.output):
        t = tensor_type(value)
        if t is not None:
            types[value.name] = t
    return types


_STUB_ELEMENTS = 1024


def _skeleton(model: onnx.ModelProto, order: Sequence[int]) -> onnx.ModelProto:
    """``model`` with nodes in ``order`` and large initializers reduced to name, type and shape.

    Inference reads initializer values only for shape inputs, which are small; copying the
    weights into inference (it serializes the model) costs seconds per hundred megabytes.
    """
    skeleton = onnx.ModelProto(ir_version=model.ir_version)
    skeleton.opset_import.extend(model.opset_import)
    graph, source = skeleton.graph, model.graph
    graph.node.extend(source.node[i] for i in order)
    graph.input.extend(source.input)
    graph.output.extend(source.output)
    graph.value_info.extend(source.value_info)
    for tensor in source.initializer:
        if math.prod(tensor.dims) <= _STUB_ELEMENTS:
            graph.initializer.append(tensor)
        else:
            graph.initializer.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
    return skeleton
