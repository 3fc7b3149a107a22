"""The converter registry, and the view of one ONNX node that a converter works with.

A converter handles one operator over a range of its schema versions, as TVM's frontend
converter classes do with their versioned implementations::

    @converter("Squeeze", versions=(1, 11))    # axes as an attribute
    @converter("Squeeze", versions=(13, 25))   # axes as an input

The model's opset selects the schema version in effect (``onnx.defs.get_schema``), and that
version picks the converter, so "Squeeze is not supported" is never vague: the error says
which version was asked for and which versions are handled. ``last`` is the newest schema
version whose semantics were checked; a newer one is refused rather than guessed at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
import torch
from onnx import AttributeProto
from torch import fx

from bitfold.ir.onnx_import.builder import GraphBuilder
from bitfold.ir.onnx_import.dtypes import to_torch
from bitfold.ir.onnx_import.errors import OnnxImportError, node_label
from bitfold.ir.onnx_import.value_info import TensorType
from bitfold.ir.onnx_import.values import Const, SymElem, SymInts, Value, int_elements

Result = Union[Value, Sequence[Optional[Value]]]
Converter = Callable[["NodeContext"], Result]

DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class _Entry:
    first: int
    last: int
    fn: Converter


_REGISTRY: Dict[str, List[_Entry]] = {}


def converter(*op_types: str, versions: Tuple[int, int]) -> Callable[[Converter], Converter]:
    """Register ``fn`` for ``op_types`` (default domain) at schema versions ``versions`` (inclusive)."""

    def register(fn: Converter) -> Converter:
        for op_type in op_types:
            _REGISTRY.setdefault(op_type, []).append(_Entry(versions[0], versions[1], fn))
        return fn

    return register


def supported_ops() -> Dict[str, List[Tuple[int, int]]]:
    """Each registered operator with the schema-version ranges it is converted at."""
    return {op: sorted((e.first, e.last) for e in entries) for op, entries in sorted(_REGISTRY.items())}


def lookup(node: onnx.NodeProto, index: int, opset: int) -> Tuple[Converter, int]:
    """The converter for ``node`` at the model's default-domain ``opset``, and its schema version."""
    label = node_label(node, index)
    domain = node.domain or ""
    entries = _REGISTRY.get(node.op_type) if domain in DEFAULT_DOMAINS else None
    if not entries:
        raise OnnxImportError(
            f"{label}: operator {node.op_type!r} of domain {domain or 'ai.onnx'!r} (model opset {opset}) "
            "is not supported by bitfold's ONNX importer"
        )
    try:
        version = onnx.defs.get_schema(node.op_type, opset, "").since_version
    except onnx.defs.SchemaError as err:
        raise OnnxImportError(f"{label}: operator {node.op_type!r} does not exist at opset {opset}") from err
    for entry in entries:
        if entry.first <= version <= entry.last:
            return entry.fn, version
    handled = ", ".join(f"{e.first}-{e.last}" for e in sorted(entries, key=lambda e: e.first))
    raise OnnxImportError(
        f"{label}: {node.op_type} version {version} (in effect at model opset {opset}) is not supported; "
        f"supported versions: {handled}"
    )


def _f32(value: float) -> float:
    """A float32 attribute as the shortest decimal that rounds to it (``1e-05``, not ``1e-05 ± ulp``)."""
    return float(str(np.float32(value)))


class NodeContext:
    """One node being converted: its inputs as values, its attributes, and static type facts."""

    def __init__(self, node: onnx.NodeProto, index: int, opset: int, version: int, builder: GraphBuilder,
                 inputs: List[Optional[Value]], types: Dict[str, TensorType], used: List[bool]) -> None:
        self.node = node
        self.label = node_label(node, index)
        self.opset = opset
        self.version = version
        self.b = builder
        self.inputs = inputs
        self._types = types
        self._used = used
        self._attrs = {a.name: a for a in node.attribute}

    # -- errors -------------------------------------------------------------------------
    def fail(self, message: str) -> OnnxImportError:
        return OnnxImportError(f"{self.label}: {message}")

    def bad_attr(self, name: str, value: Any, why: str = "") -> OnnxImportError:
        return self.fail(f"attribute {name}={value!r} is not supported" + (f": {why}" if why else ""))

    # -- attributes ---------------------------------------------------------------------
    def has_attr(self, name: str) -> bool:
        return name in self._attrs

    def attr(self, name: str, default: Any = None) -> Any:
        proto = self._attrs.get(name)
        if proto is None:
            return default
        kind = proto.type
        if kind == AttributeProto.FLOAT:
            return _f32(proto.f)
        if kind == AttributeProto.FLOATS:
            return [_f32(v) for v in proto.floats]
        if kind == AttributeProto.INT:
            return int(proto.i)
        if kind == AttributeProto.INTS:
            return [int(v) for v in proto.ints]
        if kind == AttributeProto.STRING:
            return proto.s.decode("utf-8")
        if kind == AttributeProto.STRINGS:
            return [s.decode("utf-8") for s in proto.strings]
        if kind == AttributeProto.TENSOR:
            return to_torch(proto.t)
        raise self.bad_attr(name, AttributeProto.AttributeType.Name(kind), "attribute kind not handled")

    # -- inputs -------------------------------------------------------------------------
    def input(self, i: int) -> Optional[Value]:
        return self.inputs[i] if i < len(self.inputs) else None

    def has(self, i: int) -> bool:
        return self.input(i) is not None

    def input_name(self, i: int) -> str:
        return self.node.input[i]

    def type_of(self, i: int) -> Optional[TensorType]:
        value = self.input(i)
        if isinstance(value, Const):
            return TensorType(value.tensor.dtype, tuple(value.tensor.shape))
        if isinstance(value, SymInts):
            return TensorType(value.dtype, () if value.scalar else (len(value.elems),))
        return self._types.get(self.input_name(i))

    def maybe_rank(self, i: int) -> Optional[int]:
        t = self.type_of(i)
        return None if t is None or t.dims is None else len(t.dims)

    def rank(self, i: int) -> int:
        rank = self.maybe_rank(i)
        if rank is None:
            raise self.fail(f"the rank of input {self.input_name(i)!r} is unknown "
                            "(ONNX shape inference could not infer it)")
        return rank

    def static_dims(self, i: int) -> List[Optional[int]]:
        self.rank(i)
        return list(self.type_of(i).dims)

    def dims(self, i: int) -> List[SymElem]:
        """Sizes of input ``i``: static ones as ints, the rest as ``aten.sym_size.int`` nodes."""
        value = self.input(i)
        sizes = self.static_dims(i)
        if not isinstance(value, fx.Node):
            return [int(s) for s in sizes]
        symbols = self.type_of(i).symbols or (None,) * len(sizes)
        return [s if s is not None else self.b.symbolic_size(value, d, name)
                for d, (s, name) in enumerate(zip(sizes, symbols))]

    def dtype(self, i: int) -> torch.dtype:
        t = self.type_of(i)
        if t is None or t.dtype is None:
            raise self.fail(f"the element type of input {self.input_name(i)!r} is unknown")
        return t.dtype

    def maybe_dtype(self, i: int) -> Optional[torch.dtype]:
        t = self.type_of(i)
        return None if t is None else t.dtype

    def elements(self, i: int) -> List[SymElem]:
        """The values of a 0-d/1-d integer input (shape, axes, starts…), known or symbolic."""
        value = self.input(i)
        elems = int_elements(value)
        if elems is not None:
            return elems
        if isinstance(value, fx.Node):
            dims = self.static_dims(i)
            if len(dims) > 1 or (dims and dims[0] is None):
                raise self.fail(f"input {self.input_name(i)!r} must be a 0-d or 1-d tensor of static length")
            return self.b.scalars(value, dims[0] if dims else None)
        raise self.fail(f"input {self.input_name(i)!r} must hold integers")

    def const_ints(self, i: int, what: str) -> List[int]:
        """The values of a 0-d/1-d integer input that must be known at import time."""
        elems = int_elements(self.input(i))
        if elems is None or not all(isinstance(e, int) for e in elems):
            raise self.fail(f"{what} (input {self.input_name(i)!r}) must be a constant")
        return elems

    def scalar(self, i: int) -> Union[int, float, bool]:
        """A one-element constant input as a Python number."""
        value = self.input(i)
        if not isinstance(value, Const) or value.tensor.numel() != 1:
            raise self.fail(f"input {self.input_name(i)!r} must be a one-element constant")
        return value.item()

    # -- outputs ------------------------------------------------------------------------
    @property
    def num_outputs(self) -> int:
        return len(self.node.output)

    def output_used(self, k: int) -> bool:
        return k < len(self._used) and self._used[k]
