"""Small helpers for reading and editing canonical FX graphs: constants, shapes, parameters."""

from __future__ import annotations

import operator
import re
from typing import Any, Optional, Tuple

import torch
from torch import fx

aten = torch.ops.aten


def attr_value(gm: fx.GraphModule, node: Any) -> Optional[torch.Tensor]:
    """The tensor behind a ``get_attr`` node, or ``None`` when ``node`` is not one."""
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    obj: Any = gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, torch.Tensor) else None


def is_constant(gm: fx.GraphModule, node: Any) -> bool:
    return attr_value(gm, node) is not None


def add_constant(gm: fx.GraphModule, base: str, value: torch.Tensor, parameter: bool = True) -> str:
    """Register ``value`` on ``gm`` under a fresh attribute name derived from ``base``."""
    stem = re.sub(r"[^0-9a-zA-Z_]", "_", base) or "constant"
    name, i = stem, 0
    while hasattr(gm, name):
        i += 1
        name = f"{stem}_{i}"
    value = value.detach()
    if parameter and value.is_floating_point():
        gm.register_parameter(name, torch.nn.Parameter(value, requires_grad=False))
    else:
        gm.register_buffer(name, value)
    return name


def constant_node(gm: fx.GraphModule, base: str, value: torch.Tensor, parameter: bool = True) -> fx.Node:
    """A ``get_attr`` node for a new constant (insert it with ``graph.inserting_before``)."""
    node = gm.graph.get_attr(add_constant(gm, base, value, parameter))
    node.meta["val"] = value
    return node


def raw_shape(node: Any) -> Optional[Tuple[Any, ...]]:
    """The shape recorded on ``node`` by export or shape propagation; sizes may be symbolic."""
    if not isinstance(node, fx.Node):
        return None
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return tuple(val.shape)
    shape = getattr(node.meta.get("tensor_meta"), "shape", None)
    return None if shape is None else tuple(shape)


def node_shape(node: Any) -> Optional[Tuple[int, ...]]:
    """The static shape of ``node``'s value, or ``None`` if unknown or partly symbolic."""
    shape = raw_shape(node)
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return tuple(shape)


def node_rank(node: Any) -> Optional[int]:
    """The number of dimensions of ``node``'s value, even when some sizes are symbolic."""
    shape = raw_shape(node)
    return None if shape is None else len(shape)


def propagate_shapes(gm: fx.GraphModule, *example_inputs: Any) -> None:
    """Record ``meta["val"]`` (fake tensors) on every node by running ``gm`` on fake inputs."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    fakes = [mode.from_tensor(x) if isinstance(x, torch.Tensor) else x for x in example_inputs]
    FakeTensorProp(gm, mode).propagate_dont_convert_inputs(*fakes)


def remove_unused_constants(gm: fx.GraphModule) -> int:
    """Delete ``get_attr`` nodes without users and the attributes no node refers to any more."""
    removed = 0
    for node in list(gm.graph.nodes):
        if node.op == "get_attr" and not node.users:
            gm.graph.erase_node(node)
    used = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    named = list(gm.named_parameters(remove_duplicate=False)) + list(gm.named_buffers(remove_duplicate=False))
    for name, _ in named:
        if name not in used:
            *path, leaf = name.split(".")
            owner = gm.get_submodule(".".join(path)) if path else gm
            delattr(owner, leaf)
            removed += 1
    return removed


def is_getitem(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target is operator.getitem
