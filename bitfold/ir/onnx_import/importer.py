"""``from_onnx``: an ONNX model as a canonical FX ``GraphModule``.

The walk: load and check the model, infer static types, keep only the nodes the outputs
depend on (in a topological order), then convert node by node through the registry. Each
ONNX value name maps to a run-time node, a constant or symbolic ints (see
:mod:`bitfold.ir.onnx_import.values`). Graph inputs that also have an initializer are
treated as constants, as ONNX Runtime does by default.
"""

from __future__ import annotations

import heapq
import warnings
from typing import Dict, List, Sequence, Set

from torch import fx

import bitfold.ir.onnx_import.converters  # noqa: F401  (registers the converters)
from bitfold.ir.onnx_import.builder import GraphBuilder, finish
from bitfold.ir.onnx_import.dtypes import to_torch
from bitfold.ir.onnx_import.errors import OnnxImportError, node_label
from bitfold.ir.onnx_import.fake_values import annotate, read_sizes_from_inputs
from bitfold.ir.onnx_import.loading import LoadedModel, ModelSource, load_model
from bitfold.ir.onnx_import.registry import DEFAULT_DOMAINS, NodeContext, lookup
from bitfold.ir.onnx_import.value_info import TensorType, infer_value_types
from bitfold.ir.onnx_import.values import Const, Value


def from_onnx(path_or_model: ModelSource) -> fx.GraphModule:
    """Import an ONNX model (a path or an ``onnx.ModelProto``) as a canonical ``GraphModule``.

    The result takes the non-initializer graph inputs, in ONNX order, as positional
    arguments, and always returns a tuple of tensors in ONNX output order (a 1-tuple for a
    single output). ``gm.meta`` records ``onnx_inputs``, ``onnx_outputs``, ``onnx_opset``,
    ``onnx_initializers`` (attribute name → ONNX initializer name) and ``bitfold_source``;
    every node carries ``meta["onnx_node"]``, the ONNX node it came from, and ``meta["val"]``,
    a fake tensor with symbolic dynamic sizes (see :mod:`bitfold.ir.onnx_import.fake_values`).
    Raises :class:`OnnxImportError` naming the file or node when the model cannot be imported.
    """
    loaded = load_model(path_or_model)
    return _Importer(loaded).run()


class _Importer:
    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.graph = loaded.model.graph
        self.opset = next(o.version for o in loaded.model.opset_import if o.domain in DEFAULT_DOMAINS)
        self.types: Dict[str, TensorType] = {}
        self.b = GraphBuilder()
        self.env: Dict[str, Value] = {}
        self.initializers = {t.name: t for t in self.graph.initializer}

    def run(self) -> fx.GraphModule:
        output_names = [o.name for o in self.graph.output]
        order = self._schedule(output_names)
        self.types = infer_value_types(self.loaded.model, order)
        inputs = [i.name for i in self.graph.input if i.name not in self.initializers]
        for name in inputs:
            t = self.types.get(name)
            self.env[name] = self.b.placeholder(name, t.symbols if t is not None else ())
        needed = {name for i in order for name in self.graph.node[i].input} | set(output_names)
        for index in order:
            self._convert(index, needed)
        outputs = [self._value(name, "graph output") for name in output_names]
        gm = finish(self.b, outputs, class_name=_class_name(self.graph.name))
        if annotate(gm, {name: self.types.get(name) for name in inputs}):
            read_sizes_from_inputs(gm)
        else:
            warnings.warn(f"ONNX model {self.loaded.label}: shapes could not be propagated symbolically "
                          "(they depend on tensor values); nodes carry no meta['val']", stacklevel=3)
        gm.meta.update(
            bitfold_source="onnx",
            onnx_inputs=inputs,
            onnx_outputs=output_names,
            onnx_opset=self.opset,
            onnx_initializers={n.target: self.b.attr_sources[n.target] for n in gm.graph.nodes if n.op == "get_attr"},
        )
        return gm

    # -- values -------------------------------------------------------------------------
    def _value(self, name: str, user: str) -> Value:
        if name in self.env:
            return self.env[name]
        tensor = self.initializers.get(name)
        if tensor is None:
            raise OnnxImportError(f"{user}: value {name!r} is not produced by any node, initializer or graph input "
                                  "(the model is malformed or truncated)")
        const = Const(to_torch(tensor, self.loaded.base_dir), name, initializer=True)
        self.env[name] = const
        return const

    # -- order --------------------------------------------------------------------------
    def _schedule(self, outputs: Sequence[str]) -> List[int]:
        """Indices of the nodes ``outputs`` depend on, in a topological order (file order if valid)."""
        producer = {name: i for i, n in enumerate(self.graph.node) for name in n.output if name}
        needed: Set[int] = set()
        stack = [producer[o] for o in outputs if o in producer]
        while stack:
            i = stack.pop()
            if i in needed:
                continue
            needed.add(i)
            stack.extend(producer[x] for x in self.graph.node[i].input if x in producer)
        order = sorted(needed)
        position = {i: k for k, i in enumerate(order)}
        if all(position[producer[x]] < position[i] for i in order for x in self.graph.node[i].input if x in producer):
            return order
        return self._topological(order, producer)

    def _topological(self, nodes: List[int], producer: Dict[str, int]) -> List[int]:
        """Kahn's algorithm, taking the earliest node in file order among the ready ones."""
        deps = {i: {producer[x] for x in self.graph.node[i].input if x in producer} for i in nodes}
        users: Dict[int, List[int]] = {i: [] for i in nodes}
        for i, ds in deps.items():
            for d in ds:
                users[d].append(i)
        waiting = {i: len(ds) for i, ds in deps.items()}
        ready = [i for i in nodes if not waiting[i]]
        heapq.heapify(ready)
        order = []
        while ready:
            i = heapq.heappop(ready)
            order.append(i)
            for u in users[i]:
                waiting[u] -= 1
                if not waiting[u]:
                    heapq.heappush(ready, u)
        if len(order) < len(nodes):
            i = min(set(nodes) - set(order))
            raise OnnxImportError(f"{node_label(self.graph.node[i], i)}: the graph has a cycle through this node")
        return order

    # -- nodes --------------------------------------------------------------------------
    def _convert(self, index: int, needed: Set[str]) -> None:
        node = self.graph.node[index]
        label = node_label(node, index)
        fn, version = lookup(node, index, self.opset)
        inputs = [self._value(name, label) if name else None for name in node.input]
        used = [bool(name) and name in needed for name in node.output]
        ctx = NodeContext(node, index, self.opset, version, self.b, inputs, self.types, used)
        self.b.onnx_node = node.name or f"#{index}"
        self.b.result_name = node.output[0] if node.output else "const"
        try:
            result = fn(ctx)
        except OnnxImportError:
            raise
        except Exception as err:  # a converter or an eagerly folded op failed: say where
            raise OnnxImportError(f"{label}: conversion failed: {type(err).__name__}: {err}") from err
        results = list(result) if isinstance(result, (list, tuple)) else [result]
        for k, name in enumerate(node.output):
            value = results[k] if k < len(results) else None
            if value is None:
                if used[k]:
                    raise OnnxImportError(f"{label}: output #{k} ({name!r}) is used but not supported")
                continue
            self.env[name] = value


def _class_name(graph_name: str) -> str:
    words = "".join(c if c.isalnum() else " " for c in graph_name).split()
    name = "".join(w[:1].upper() + w[1:] for w in words)
    return name if name[:1].isalpha() else "OnnxGraph"
