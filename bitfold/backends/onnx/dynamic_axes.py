"""Dynamic axes of the exported model: which input dimensions vary, and their names.

By default every dimension of every tensor input is offered to ``torch.export`` as
``Dim.AUTO``: the ones the graph keeps symbolic stay dynamic, the ones it specializes
(channels, a batch of 1 — give an example batch of at least 2) become static. The
symbols are then named for what they usually are: axis 0 ``batch``; axis 1 of a 2-D
integer input (token ids, masks) ``sequence``; axes 2 and 3 of a 4-D input ``height`` and
``width``; anything else ``<input>_dim<axis>``. Inputs sharing a symbol share the name.
An explicit ``dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}}`` replaces all of this.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import onnx
import torch
from torch.export import Dim

DynamicAxes = Mapping[str, Mapping[int, str]]


def dynamic_shapes(inputs: Sequence[Any], names: Sequence[str], axes: Optional[DynamicAxes]) -> Tuple[Any, ...]:
    """The ``dynamic_shapes`` argument of ``torch.onnx.export`` for ``inputs``."""
    dims: Dict[str, Any] = {}
    spec: List[Any] = []
    for x, name in zip(inputs, names):
        if not isinstance(x, torch.Tensor):
            spec.append(None)
        elif axes is None:
            spec.append({d: Dim.AUTO for d in range(x.dim())} or None)
        else:
            spec.append({d: dims.setdefault(label, Dim(label)) for d, label in axes.get(name, {}).items()} or None)
    return tuple(spec)


def _default_name(inp: onnx.ValueInfoProto, axis: int, rank: int) -> str:
    integer = inp.type.tensor_type.elem_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
    if axis == 0:
        return "batch"
    if axis == 1 and rank == 2 and integer:
        return "sequence"
    if rank == 4 and axis in (2, 3):
        return ("height", "width")[axis - 2]
    return f"{inp.name}_dim{axis}"


def name_dynamic_axes(model: onnx.ModelProto, axes: Optional[DynamicAxes]) -> Dict[str, Dict[int, str]]:
    """Rename the model's symbolic dimensions (see the module docstring); returns inputs' axes."""
    rename: Dict[str, str] = {}
    result: Dict[str, Dict[int, str]] = {}
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        for axis, dim in enumerate(dims):
            if not dim.HasField("dim_param"):
                continue
            wanted = (axes or {}).get(inp.name, {}).get(axis) or _default_name(inp, axis, len(dims))
            symbol = dim.dim_param
            if symbol not in rename:
                taken = set(rename.values())
                label, i = wanted, 1
                while label in taken:
                    i += 1
                    label = f"{wanted}_{i}"
                rename[symbol] = label
            result.setdefault(inp.name, {})[axis] = rename[symbol]
    if rename:
        # Intermediate sizes are expressions of the symbols ("s27*s77"): rename inside them too.
        pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(rename, key=len, reverse=True))) + r")\b")
        for info in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
            for dim in info.type.tensor_type.shape.dim:
                if dim.HasField("dim_param"):
                    dim.dim_param = pattern.sub(lambda m: rename[m.group(1)], dim.dim_param)
    return result
