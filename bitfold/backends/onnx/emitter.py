"""Append ONNX nodes to a graph or a function body with unique, readable names.

Lowerings and quantizer builders all write nodes the same way: ``em.op("Mul", a, b)``
returns the name of the new output. Constants become initializers in a graph and
``Constant`` nodes in a function body (functions cannot hold initializers). Every name
is made unique against one :class:`NameScope` shared by the whole model, so lowerings
can pick names after what they hold (``encoder.layer.0.query.weight_codes``) without
checking for clashes themselves.
"""

from __future__ import annotations

import re
from typing import Iterable, List, Optional, Sequence, Set, Union

import numpy as np
import onnx
from onnx import helper, numpy_helper


class NameScope:
    """Every value and node name used in a model; hands out fresh ones on request."""

    def __init__(self, taken: Iterable[str] = ()) -> None:
        self._taken: Set[str] = set(taken)

    def fresh(self, hint: str) -> str:
        base = re.sub(r"[^0-9A-Za-z_.:/]", "_", hint) or "v"
        name, i = base, 0
        while name in self._taken:
            i += 1
            name = f"{base}_{i}"
        self._taken.add(name)
        return name

    def reserve(self, name: str) -> None:
        self._taken.add(name)


class Emitter:
    """Builds nodes into ``nodes``; constants into ``initializers`` or, in a function, ``Constant`` nodes."""

    def __init__(self, scope: NameScope, prefix: str, in_function: bool = False) -> None:
        self.scope = scope
        self.prefix = prefix
        self.in_function = in_function
        self.nodes: List[onnx.NodeProto] = []
        self.initializers: List[onnx.TensorProto] = []

    def name(self, hint: str) -> str:
        return self.scope.fresh(f"{self.prefix}/{hint}" if self.prefix else hint)

    def op(
        self,
        op_type: str,
        *inputs: Optional[str],
        outputs: Union[int, Sequence[str]] = 1,
        domain: str = "",
        hint: Optional[str] = None,
        **attrs,
    ) -> Union[str, List[str]]:
        """Add ``op_type(*inputs)``; returns its output name (or names, for several outputs).

        ``None`` inputs become ONNX's empty name for a missing optional input; ``None``
        attributes are left out.
        """
        label = hint or op_type
        out_names = [self.name(label) for _ in range(outputs)] if isinstance(outputs, int) else list(outputs)
        names = ["" if i is None else i for i in inputs]
        while names and names[-1] == "":
            names.pop()
        node = helper.make_node(op_type, names, out_names, name=self.name(f"{label}_node"), domain=domain or None,
                                **{k: v for k, v in attrs.items() if v is not None})
        self.nodes.append(node)
        return out_names[0] if isinstance(outputs, int) and outputs == 1 else out_names

    def const(self, value: Union[np.ndarray, onnx.TensorProto], hint: str) -> str:
        """A constant tensor: an initializer, or a ``Constant`` node inside a function."""
        name = self.name(hint)
        tensor = value if isinstance(value, onnx.TensorProto) else numpy_helper.from_array(np.asarray(value), name)
        tensor.name = name
        if self.in_function:
            self.nodes.append(helper.make_node("Constant", [], [name], name=self.name(f"{hint}_node"), value=tensor))
        else:
            self.initializers.append(tensor)
        return name

    def scalar(self, value: float, hint: str, dtype=np.float32) -> str:
        return self.const(np.array(value, dtype=dtype), hint)

    def ints(self, values: Sequence[int], hint: str) -> str:
        return self.const(np.asarray(values, dtype=np.int64), hint)
