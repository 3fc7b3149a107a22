"""The inputs of a compiled graph: names, dtypes and shapes, some sizes symbolic.

A compiled module accepts exactly the shapes its Relax function was built for, so the
static/dynamic split of every input dimension has to be decided before lowering. Sizes come
from the placeholders' ``meta["val"]`` (or from example inputs). Which sizes are *dynamic*
comes, in this order, from

1. the caller (``dynamic_dims={"input_ids": {1: "seq"}}``);
2. symbolic sizes still recorded on the placeholders (a graph fresh from ``torch.export``);
3. the graph itself: a dimension read by ``aten.sym_size.int`` was dynamic when the model was
   captured, because only then does ``torch.export`` keep the size as a graph value. Bitfold's
   passes re-record shapes with concrete sample inputs, so for a quantized graph this is the
   only trace left. Other inputs whose size on the same axis is equal share the symbol
   (``input_ids`` and ``attention_mask`` share ``seq``; so do ``x[b, s, d]`` and ``mask[b, s]``).

A dimension that is dynamic in the graph but static here makes the compiled module accept
only the example size; the reverse (a symbolic size where the graph baked a number in)
cannot happen, because rule 3 only names dimensions the graph reads symbolically.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import fx

Dim = Union[int, str]

_TORCH_DTYPES = {
    torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float64: "float64",
    torch.int64: "int64", torch.int32: "int32", torch.int16: "int16", torch.int8: "int8", torch.uint8: "uint8",
    torch.bool: "bool",
}


class SignatureError(ValueError):
    """The graph's inputs cannot be described (unknown shape, conflicting dynamic sizes)."""


@dataclass(frozen=True)
class InputSpec:
    """One graph input: ``shape`` holds ints (static) and names (symbolic sizes)."""

    name: str
    shape: Tuple[Dim, ...]
    dtype: str

    def describe(self) -> Dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    def accepts(self, shape: Sequence[int], sizes: Dict[str, int]) -> Optional[str]:
        """``None`` if an array of ``shape`` fits (binding symbols in ``sizes``), else why not."""
        if len(shape) != len(self.shape):
            return f"input {self.name!r} needs {len(self.shape)} dimensions, got shape {tuple(shape)}"
        for axis, (want, got) in enumerate(zip(self.shape, shape)):
            if isinstance(want, str):
                if sizes.setdefault(want, int(got)) != int(got):
                    return (f"input {self.name!r} axis {axis} is the dynamic size {want!r} = {sizes[want]} "
                            f"elsewhere, got {got}")
            elif want != got:
                return f"input {self.name!r} axis {axis} must be {want}, got {got} (compiled static)"
        return None


def torch_dtype_name(dtype: torch.dtype) -> str:
    if dtype not in _TORCH_DTYPES:
        raise SignatureError(f"dtype {dtype} is not supported by the TVM backend")
    return _TORCH_DTYPES[dtype]


def _example_shape_dtype(value: Any, name: str) -> Tuple[Tuple[Any, ...], str]:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape), torch_dtype_name(value.dtype)
    if isinstance(value, np.ndarray):
        return tuple(value.shape), str(value.dtype)
    raise SignatureError(f"input {name!r}: expected a tensor or numpy array, got {type(value).__name__}")


def _sym_size_reads(gm: fx.GraphModule, ranks: Mapping[str, int]) -> Dict[str, set]:
    """For each placeholder, the axes some ``aten.sym_size.int`` node reads."""
    reads: Dict[str, set] = {}
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is torch.ops.aten.sym_size.int:
            src = node.args[0]
            if isinstance(src, fx.Node) and src.op == "placeholder":
                axis = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
                reads.setdefault(src.name, set()).add(int(axis) % ranks[src.name])
    return reads


def infer_input_specs(
    gm: fx.GraphModule,
    example_inputs: Optional[Sequence[Any]] = None,
    dynamic_dims: Optional[Mapping[str, Mapping[int, str]]] = None,
) -> List[InputSpec]:
    """The :class:`InputSpec` of every placeholder of ``gm``, in order (see the module docstring)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if example_inputs is not None and len(example_inputs) != len(placeholders):
        raise SignatureError(f"the graph has {len(placeholders)} inputs, {len(example_inputs)} example inputs given")
    shapes: Dict[str, List[Any]] = {}
    dtypes: Dict[str, str] = {}
    for i, node in enumerate(placeholders):
        value = example_inputs[i] if example_inputs is not None else node.meta.get("val")
        if value is None:
            raise SignatureError(
                f"input {node.name!r} has no recorded shape; pass example_inputs to bitfold.compile")
        shape, dtype = _example_shape_dtype(value, node.name)
        shapes[node.name], dtypes[node.name] = list(shape), dtype

    symbols: Dict[Tuple[str, int], str] = {}
    if dynamic_dims is not None:
        unknown = sorted(set(dynamic_dims) - set(shapes))
        if unknown:
            raise SignatureError(f"dynamic_dims names unknown inputs {unknown}; inputs are {sorted(shapes)}")
        for name, axes in dynamic_dims.items():
            for axis, sym in axes.items():
                symbols[(name, int(axis) % len(shapes[name]))] = str(sym)
    else:
        readable: Dict[str, str] = {}  # export's s0, s1… → "<first input>_dim<axis>"
        for name, shape in shapes.items():
            for axis, size in enumerate(shape):
                if isinstance(size, torch.SymInt):
                    symbols[(name, axis)] = readable.setdefault(str(size), f"{name}_dim{axis}")
        for name, axes in _sym_size_reads(gm, {n: len(s) for n, s in shapes.items()}).items():
            for axis in sorted(axes):
                if (name, axis) in symbols:
                    continue
                sym = f"{name}_dim{axis}"
                size = shapes[name][axis]
                for other, shape in shapes.items():
                    if len(shape) > axis and shape[axis] == size and (other, axis) not in symbols:
                        symbols[(other, axis)] = sym
    specs = []
    for name, shape in shapes.items():
        dims: List[Dim] = []
        for axis, size in enumerate(shape):
            if (name, axis) in symbols:
                dims.append(symbols[(name, axis)])
            elif isinstance(size, torch.SymInt):
                raise SignatureError(f"input {name!r} axis {axis} is symbolic ({size}) but dynamic_dims leaves it out")
            else:
                dims.append(int(size))
        specs.append(InputSpec(name, tuple(dims), dtypes[name]))
    return specs
