"""Rotate linear layers' inputs by a block Hadamard and counter-rotate their weights (exact in float).

For a linear ``y = W x + b`` and ``H = blockdiag(H_b, …)`` (:mod:`bitfold.ir.hadamard`,
orthogonal and symmetric)::

    y = linear(x, W, b)   →   r = bitfold.hadamard(x, b)
                              y = linear(r, W Hᵀ, b)

which is the same function, since ``(W Hᵀ)(H x) = W x``. What changes is what a quantizer
sees: the rotated input ``r`` spreads each channel's outliers over ``b`` channels, so a
per-tensor 4-bit grid fits it far better than ``x``, and ``W Hᵀ`` is no harder to quantize
than ``W``. The rotation is computed at run time (``b·log2 b`` additions per block), so it
suits inputs that LLM-FP4's pre-shift cannot fold anywhere exactly: the output of a GELU
(BERT's FC2) or of SiLU(gate)·up (LLaMA's ``down_proj``). :func:`activation_fed` finds
those; any linear may be named.

The block is the largest power of two that divides the layer's input width, up to
``max_block``. The layer keeps its node (and name); its weight becomes a new constant
``<weight>_rotated`` beside the old one. Linears that read the same input with the same
block share one rotation node, so they stay one activation-quantization group. Rotated layers carry
``meta["bitfold_rotation"]`` = the block size, for the report.
"""

from __future__ import annotations

from typing import Collection, Dict, Optional, Tuple, Union

import torch
from torch import fx

from bitfold.ir import hadamard as _hadamard  # noqa: F401  (registers bitfold::hadamard)
from bitfold.ir.graph_utils import attr_value, node_shape
from bitfold.ir.hadamard import is_block_size, largest_block, rotate_rows
from bitfold.ir.op_groups import ACTIVATIONS, IDENTITIES, LINEAR, VIEWS
from bitfold.passes.rewrite import Failure, Match, RewritePass, RewriteRule

aten = torch.ops.aten
ROTATION_KEY = "bitfold_rotation"
_GELUS = frozenset({torch.ops.bitfold.gelu.default})


def _producer(value: fx.Node) -> fx.Node:
    while value.op == "call_function" and value.target in VIEWS | IDENTITIES:
        value = value.args[0]
    return value


def _is_activation(node: fx.Node) -> bool:
    return node.op == "call_function" and (node.target in ACTIVATIONS or node.target in _GELUS)


def activation_fed(node: fx.Node) -> bool:
    """Whether linear ``node`` reads an elementwise activation's output (through views), or a
    product of two values one of which is one (SwiGLU's ``silu(gate) * up``)."""
    source = _producer(node.args[0])
    if _is_activation(source):
        return True
    factors = source.args[:2] if source.op == "call_function" and source.target is aten.mul.Tensor else ()
    return len(factors) == 2 and all(isinstance(a, fx.Node) for a in factors) and any(
        _is_activation(_producer(a)) for a in factors)


def _constant_beside(gm: fx.GraphModule, w_node: fx.Node, value: torch.Tensor) -> fx.Node:
    """A ``get_attr`` of ``value`` stored next to ``w_node``'s constant (``a.b.weight`` →
    ``a.b.weight_rotated``), so reports still name the layer's own weight."""
    owner_path, _, leaf = str(w_node.target).rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    leaf, stem, i = f"{leaf}_rotated", f"{leaf}_rotated", 0
    while hasattr(owner, leaf):
        i += 1
        leaf = f"{stem}_{i}"
    owner.register_parameter(leaf, torch.nn.Parameter(value.detach(), requires_grad=False))
    node = gm.graph.get_attr(f"{owner_path}.{leaf}" if owner_path else leaf)
    node.meta["val"] = value
    return node


class RotateLinearInput(RewriteRule):
    """One linear named in ``layers``: rotate its input, counter-rotate its weight."""

    anchors = tuple(LINEAR)

    def __init__(self, layers: Collection[str], max_block: int) -> None:
        self.layers = set(layers)
        self.max_block = max_block
        self._shared: Dict[Tuple[fx.Node, int], fx.Node] = {}

    def match_anchor(self, node: fx.Node, gm: fx.GraphModule) -> Union[Match, Failure, None]:
        if node.name not in self.layers or ROTATION_KEY in node.meta:
            return None
        weight = attr_value(gm, node.args[1])
        if weight is None:
            return self.fail("its weight is computed at run time, so it cannot be counter-rotated")
        width = weight.shape[-1]
        if largest_block(width, self.max_block) < 2:
            return self.fail(f"its {width} input channels are odd: no power-of-two block divides them")
        shape = node_shape(node.args[0])
        if shape is not None and shape[-1] != width:
            return self.fail(f"its input has {shape[-1]} channels on the last axis, its weight {width}")
        return Match(node, {"layer": node})

    def rewrite(self, match: Match, gm: fx.GraphModule) -> fx.Node:
        node = match.anchor
        x, w_node = node.args[0], node.args[1]
        weight = attr_value(gm, w_node)
        block = largest_block(weight.shape[-1], self.max_block)
        rotated = self._shared.get((x, block))
        if rotated is None:
            with gm.graph.inserting_after(x):
                rotated = gm.graph.call_function(torch.ops.bitfold.hadamard.default, (x, block))
            if "val" in x.meta:
                rotated.meta["val"] = x.meta["val"]
            self._shared[(x, block)] = rotated
        node.args = (rotated, _constant_beside(gm, w_node, rotate_rows(weight, block)), *node.args[2:])
        node.meta[ROTATION_KEY] = block
        return node


class RotateInputs(RewritePass):
    """Rotate the inputs of the linears named in ``layers`` (see the module docstring).

    ``max_block``: the largest Hadamard block (a power of two); each layer gets the largest
    power of two dividing its input width, up to it.
    """

    #: The counter-rotated weight is rounded to float32 once, and each output sums its
    #: products in another order: float rounding, well below this.
    tolerance = 1e-4

    def __init__(self, layers: Collection[str], max_block: int = 512) -> None:
        if not is_block_size(max_block):
            raise ValueError(f"rotate_inputs: max_block must be a power of two >= 2, got {max_block}")
        super().__init__([RotateLinearInput(layers, max_block)])


def rotation_of(node: fx.Node) -> Optional[int]:
    """The Hadamard block a layer's input was rotated by, or ``None``."""
    return node.meta.get(ROTATION_KEY)
