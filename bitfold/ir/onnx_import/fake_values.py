"""Record ``meta["val"]`` on every node of an imported graph, as ``torch.export`` does.

Passes read shapes and dtypes from ``node.meta["val"]`` (see
:func:`bitfold.ir.graph_utils.raw_shape`). The graph is run on fake tensors whose dynamic
sizes are symbolic (``torch.SymInt``): one symbol per ONNX ``dim_param`` name, so two inputs
sharing ``"batch"`` share a symbol, and a fresh one for each unnamed dynamic size. Symbols
get distinct example values (hints) of at least 2, so no size is specialized to 0 or 1.

This is best effort: a graph whose shapes depend on tensor values (``aten.item``) may not
propagate symbolically; then no node keeps a partial annotation and ``annotate`` says so.
With the values known, :func:`read_sizes_from_inputs` tidies where sizes are read from.
"""

from __future__ import annotations

import operator
from typing import Dict, List, Mapping, Optional

import torch
from torch import fx
from torch._dynamo.source import ConstantSource
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from bitfold.ir.onnx_import.value_info import TensorType

aten = torch.ops.aten
_HINTS = (7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47)


def annotate(gm: fx.GraphModule, input_types: Mapping[str, Optional[TensorType]]) -> bool:
    """Set ``meta["val"]`` on all nodes of ``gm``; ``False`` (and no annotation) on failure."""
    shape_env = ShapeEnv()
    mode = FakeTensorMode(shape_env=shape_env, allow_non_fake_inputs=True)
    symbols: Dict[str, torch.SymInt] = {}

    def size(name: str, axis: int, symbol: Optional[str]) -> torch.SymInt:
        key = symbol or f"{name}.{axis}"
        if key not in symbols:
            hint = _HINTS[len(symbols) % len(_HINTS)] + len(symbols) // len(_HINTS) * 50
            sym = shape_env.create_symbol(hint, ConstantSource(f"onnx_{len(symbols)}_{key}"))
            symbols[key] = shape_env.create_symintnode(sym, hint=hint)
        return symbols[key]

    fakes: List[torch.Tensor] = []
    for node in gm.graph.find_nodes(op="placeholder"):
        t = input_types.get(node.meta["onnx_name"])
        if t is None or t.dtype is None or t.dims is None:
            return False
        named = zip(t.dims, t.symbols or (None,) * len(t.dims))
        sizes = [d if d is not None else size(node.meta["onnx_name"], k, s) for k, (d, s) in enumerate(named)]
        with mode:
            fakes.append(torch.empty(sizes, dtype=t.dtype))
    try:
        FakeTensorProp(gm, mode).propagate_dont_convert_inputs(*fakes)
    except Exception:  # data-dependent shapes and the like: leave the graph unannotated
        for node in gm.graph.nodes:
            node.meta.pop("val", None)
        return False
    return True


def read_sizes_from_inputs(gm: fx.GraphModule) -> int:
    """Make every ``aten.sym_size`` read an input's size, or become an int when it is static.

    ONNX shape inference loses track of which intermediate sizes equal which input sizes (or
    are constant), so conversion reads some from intermediate tensors; the fake values know
    better. As in ``torch.export`` graphs, sizes then come from the placeholders, and a
    reshape no longer depends on an unrelated upstream op. Returns how many sizes changed.
    """
    graph = gm.graph
    placeholders = graph.find_nodes(op="placeholder")
    existing = {(n.args[0], n.args[1]): n for n in graph.find_nodes(op="call_function", target=aten.sym_size.int)}
    sources: Dict[str, tuple] = {}
    for ph in placeholders:
        for axis, size in enumerate(getattr(ph.meta.get("val"), "shape", ())):
            if isinstance(size, torch.SymInt):
                sources.setdefault(str(size.node.expr), (ph, axis, size))
    changed = 0
    for node in graph.find_nodes(op="call_function", target=aten.sym_size.int):
        value = node.meta.get("val")
        if node.args[0].op == "placeholder" and isinstance(value, torch.SymInt):
            continue
        if isinstance(value, int):
            _replace_with_int(node, value)
        elif isinstance(value, torch.SymInt) and str(value.node.expr) in sources:
            ph, axis, size = sources[str(value.node.expr)]
            if (ph, axis) not in existing:
                with graph.inserting_after(placeholders[-1]):
                    existing[(ph, axis)] = graph.call_function(aten.sym_size.int, (ph, axis), name="sym_size_int")
                existing[(ph, axis)].meta.update(val=size, onnx_node=node.meta.get("onnx_node"))
            node.replace_all_uses_with(existing[(ph, axis)])
        else:
            continue
        changed += 1
    if changed:
        graph.eliminate_dead_code()
        gm.recompile()
    return changed


def _replace_with_int(node: fx.Node, value: int) -> None:
    """Substitute ``value`` for ``node`` in its users, folding ``operator`` calls that become constant."""
    pending = [(node, value)]
    while pending:
        old, new = pending.pop()
        for user in list(old.users):
            user.args = fx.node.map_arg(user.args, lambda n: new if n is old else n)
            user.kwargs = fx.node.map_arg(user.kwargs, lambda n: new if n is old else n)
            arithmetic = getattr(operator, getattr(user.target, "__name__", ""), None) is user.target
            if user.op == "call_function" and arithmetic and all(isinstance(a, int) for a in user.args):
                pending.append((user, user.target(*user.args)))
