"""Builds the FX graph: placeholders, parameters, ATen calls, and folding of constant calls.

:meth:`GraphBuilder.call` is the one way converters add an op. When every tensor argument is
a foldable :class:`Const` it runs the op eagerly and returns a :class:`Const` (shape
arithmetic on static sizes, masks built from constants); otherwise it turns constants into
``get_attr`` nodes and records the call. Trailing arguments equal to the schema default are
dropped, as ``torch.export`` does, so ``aten.conv2d(x, w, b, [1, 1], [1, 1])`` looks the same
whichever route produced it.

Attribute naming: constants are registered flat on the root module under their ONNX value
name with every character outside ``[0-9A-Za-z_]`` replaced by ``_`` (``encoder.layer.0.weight``
→ ``encoder_layer_0_weight``, ``onnx::MatMul_12`` → ``onnx__MatMul_12``), with ``_1``, ``_2``…
appended on a clash. Float initializers become ``nn.Parameter(requires_grad=False)``; other
constants (integer initializers, ``Constant`` values, folded results) become buffers.
"""

from __future__ import annotations

import keyword
import operator
import re
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import torch
from torch import fx

from bitfold.ir.onnx_import.values import Const, SymElem, SymInts, Value

aten = torch.ops.aten


def sanitize(name: str) -> str:
    """``name`` as a Python identifier: other characters become ``_``, a digit start gets ``_``."""
    ident = re.sub(r"[^0-9a-zA-Z_]", "_", name) or "_"
    if ident[0].isdigit():
        ident = "_" + ident
    if keyword.iskeyword(ident) or ident == "self":
        ident += "_"
    return ident


def _same(value: Any, default: Any) -> bool:
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        return len(value) == len(default) and all(_same(v, d) for v, d in zip(value, default))
    if isinstance(value, (fx.Node, torch.Tensor)) or isinstance(value, bool) != isinstance(default, bool):
        return False
    return type(value) in (int, float, bool, str, type(None)) and value == default


def _strip_defaults(target: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Tuple[Tuple[Any, ...], Dict]:
    """Drop trailing positional and keyword arguments equal to their schema defaults."""
    schema = getattr(target, "_schema", None)
    if schema is None:
        return args, kwargs
    params = {a.name: a for a in schema.arguments}
    kwargs = {k: v for k, v in kwargs.items()
              if not (params[k].has_default_value() and _same(v, params[k].default_value))}
    args = list(args)
    while args:
        param = schema.arguments[len(args) - 1]
        if not (param.has_default_value() and _same(args[-1], param.default_value)):
            break
        args.pop()
    return tuple(args), kwargs


def _runtime(obj: Any) -> bool:
    """Whether ``obj`` (an argument, possibly nested in lists) is only known at run time."""
    if isinstance(obj, (fx.Node, SymInts)):
        return True
    if isinstance(obj, Const):
        return obj.weight
    if isinstance(obj, (list, tuple)):
        return any(_runtime(o) for o in obj)
    return False


class GraphBuilder:
    """Owns the FX graph and the module that holds its parameters while a model is imported."""

    def __init__(self) -> None:
        self.graph = fx.Graph()
        self.root = torch.nn.Module()
        self.onnx_node: Optional[str] = None  # stamped into meta["onnx_node"] of new nodes
        self.result_name = "const"  # names constants folded by the current converter
        self.attr_sources: Dict[str, str] = {}  # attribute name -> ONNX value name
        self._names: Set[str] = set()
        # Keyed by id(); each entry keeps its value alive so the id cannot be reused.
        self._attrs: Dict[int, Tuple[Const, fx.Node]] = {}
        self._materialized: Dict[int, Tuple[SymInts, fx.Node]] = {}
        self._sym_sizes: Dict[Tuple[fx.Node, int], fx.Node] = {}
        self._first_placeholder: Optional[fx.Node] = None
        self.nonneg: Set[fx.Node] = set()  # int-valued nodes known to be >= 0 (sizes)
        self.size_sources: Dict[str, Tuple[fx.Node, int]] = {}  # dim_param -> (graph input, axis)

    # -- names --------------------------------------------------------------------------
    def _unique(self, name: str) -> str:
        base = sanitize(name)
        ident, i = base, 0
        while ident in self._names or hasattr(fx.GraphModule, ident):
            i += 1
            ident = f"{base}_{i}"
        self._names.add(ident)
        return ident

    # -- leaves -------------------------------------------------------------------------
    def placeholder(self, onnx_name: str, symbols: Sequence[Optional[str]] = ()) -> fx.Node:
        """A graph input; its named dynamic sizes (``symbols``) become size sources."""
        node = self.graph.placeholder(self._unique(onnx_name))
        node.meta["onnx_name"] = onnx_name
        for axis, symbol in enumerate(symbols):
            if symbol is not None:
                self.size_sources.setdefault(symbol, (node, axis))
        if self._first_placeholder is None:
            self._first_placeholder = node
        return node

    def tensor(self, value: Value) -> fx.Node:
        """``value`` as a node: constants become ``get_attr`` nodes, symbolic ints a tensor."""
        if isinstance(value, fx.Node):
            return value
        if isinstance(value, Const):
            return self._get_attr(value)
        if isinstance(value, SymInts):
            return self._sym_tensor(value)
        raise TypeError(f"not a tensor value: {value!r}")

    def _get_attr(self, const: Const) -> fx.Node:
        if id(const) in self._attrs:
            return self._attrs[id(const)][1]
        name = self._unique(const.name)
        data = const.tensor.contiguous()
        if const.initializer and data.is_floating_point():
            self.root.register_parameter(name, torch.nn.Parameter(data, requires_grad=False))
        else:
            self.root.register_buffer(name, data)
        self.attr_sources[name] = const.name
        if self._first_placeholder is not None:
            with self.graph.inserting_before(self._first_placeholder):
                node = self.graph.get_attr(name)
        else:
            node = self.graph.get_attr(name)
        node.meta["onnx_name"] = const.name
        self._attrs[id(const)] = (const, node)
        return node

    def _sym_tensor(self, value: SymInts) -> fx.Node:
        if id(value) not in self._materialized:
            parts = [self.emit(aten.scalar_tensor.default, e, dtype=value.dtype) for e in value.elems]
            node = parts[0] if value.scalar else self.emit(aten.stack.default, parts)
            self._materialized[id(value)] = (value, node)
        return self._materialized[id(value)][1]

    # -- calls --------------------------------------------------------------------------
    def emit(self, target: Any, *args: Any, **kwargs: Any) -> fx.Node:
        """Record ``target(*args, **kwargs)``; constant tensor arguments become ``get_attr``."""
        args, kwargs = _strip_defaults(target, args, kwargs)
        args = tuple(self._as_arg(a) for a in args)
        kwargs = {k: self._as_arg(v) for k, v in kwargs.items()}
        node = self.graph.create_node("call_function", target, args, kwargs, name=_node_name(target))
        if self.onnx_node is not None:
            node.meta["onnx_node"] = self.onnx_node
        return node

    def _as_arg(self, obj: Any) -> Any:
        if isinstance(obj, (Const, SymInts)):
            return self.tensor(obj)
        if isinstance(obj, (list, tuple)):
            return type(obj)(self._as_arg(o) for o in obj)
        return obj

    def call(self, target: Any, *args: Any, **kwargs: Any) -> Value:
        """Like :meth:`emit`, but evaluated now when no argument is a run-time value."""
        if _runtime(args) or _runtime(list(kwargs.values())):
            return self.emit(target, *args, **kwargs)
        result = target(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()})
        return Const(result, self.result_name)

    def call_multi(self, target: Any, count: int, *args: Any, **kwargs: Any) -> List[Value]:
        """A call returning ``count`` tensors, split with ``operator.getitem`` like export does."""
        if _runtime(args) or _runtime(list(kwargs.values())):
            node = self.emit(target, *args, **kwargs)
            return [self.emit(operator.getitem, node, i) for i in range(count)]
        results = target(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()})
        return [Const(r, self.result_name) for r in results]

    # -- run-time sizes -----------------------------------------------------------------
    def sym_size(self, node: fx.Node, dim: int) -> fx.Node:
        key = (node, dim)
        if key not in self._sym_sizes:
            size = self.emit(aten.sym_size.int, node, dim)
            self.nonneg.add(size)
            self._sym_sizes[key] = size
        return self._sym_sizes[key]

    def symbolic_size(self, node: fx.Node, dim: int, symbol: Optional[str]) -> fx.Node:
        """Size ``dim`` of ``node``, read from the graph input that shares its ``dim_param``."""
        source = self.size_sources.get(symbol) if symbol is not None else None
        return self.sym_size(*source) if source is not None else self.sym_size(node, dim)

    def scalars(self, node: fx.Node, length: Optional[int]) -> List[SymElem]:
        """The elements of a run-time 0-d (``length=None``) or 1-d int tensor, as int nodes."""
        if length is None:
            return [self.emit(aten.item.default, node)]
        return [self.emit(aten.item.default, self.emit(aten.select.int, node, 0, i)) for i in range(length)]


def _node_name(target: Any) -> str:
    """The name ``torch.export`` gives a call: the op without its overload (``mul``, ``getitem``)."""
    if isinstance(target, torch._ops.OpOverload) and target is not aten.sym_size.int:
        return target.overloadpacket.__name__
    return getattr(target, "__name__", "call").replace(".", "_")


def _unwrap(obj: Any) -> Any:
    if isinstance(obj, Const):
        return obj.tensor
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unwrap(o) for o in obj)
    return obj


def finish(builder: GraphBuilder, outputs: Sequence[Value], class_name: str) -> fx.GraphModule:
    """Close the graph with ``outputs`` (a tuple, even for one) and build the GraphModule."""
    builder.onnx_node = None
    nodes = tuple(builder.tensor(v) for v in outputs)
    builder.graph.output(nodes)
    builder.graph.eliminate_dead_code()
    return fx.GraphModule(builder.root, builder.graph, class_name=class_name)
