"""Pair each quantized layer with its float original and rebuild what it computes.

The report evaluates one quantized layer at a time inside the float model, so it needs, per
layer, the function the quantized graph applies to that layer's *float* input. After
:class:`~bitfold.passes.quantize_linears.QuantizeLinears` and
:class:`~bitfold.passes.fold_preshift.FoldPreshift` a quantized linear reads::

    u  = x · c                        c: LLM-FP4's 2^k, SmoothQuant's 1/s, or 1
    xq = fake_quantize(u, fa, sa)     absent for weight-only recipes
    y  = quantized_linear(xq, Ŵ, …, k, b) = (xq · 2^-k) Ŵᵀ + b

where ``Ŵ`` quantizes ``W' = W · 2^k / c`` (``W`` itself for a pre-shift, ``W · s`` for
SmoothQuant). ``c`` is the constant of the ``mul`` in front of the quantizer or, where
FoldPreshift moved it into the producing norm, the ratio of the norm's gammas
``γ_quantized / γ_float`` (its betas where a gamma is zero). :func:`match_layers` checks
the pairing: re-quantizing the reconstructed ``W'`` must give back ``Ŵ``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import fx

from bitfold.ir import formats, ops
from bitfold.ir.graph_utils import attr_value
from bitfold.ir.op_groups import LAYER_NORM, LINEAR, RMS_NORM

aten = torch.ops.aten
QUANTIZED_LINEAR = torch.ops.bitfold.quantized_linear.default
FAKE_QUANTIZE = torch.ops.bitfold.fake_quantize.default
_PACKED_SUFFIX = "_packed_weight"
#: Smallest share of weights that must re-quantize to the stored codes for a pairing to count.
_MIN_AGREEMENT = 0.99


class AnalysisError(ValueError):
    """The quantized graph and the float reference do not fit together; names the layer."""


@dataclass
class Quantizer:
    """``format`` with ``scale`` (and ``zero_point``) laid out per tensor, channel or group."""

    fmt: str
    scale: Optional[torch.Tensor]
    group_size: Optional[int] = None
    zero_point: Optional[torch.Tensor] = None

    @property
    def grid(self) -> Optional[torch.Tensor]:
        """The format's values in units of the scale, or ``None`` for block formats (scales per block)."""
        f = formats.get(self.fmt)
        if isinstance(f, formats.BlockFormat) or self.scale is None:
            return None
        if isinstance(f, formats.IntFormat):
            return torch.arange(f.qmin, f.qmax + 1, dtype=torch.float32)
        return f.grid.to(torch.float32)

    def to_units(self, x: torch.Tensor) -> torch.Tensor:
        """``x / scale (+ zero_point)``: where each value lands on :attr:`grid`.

        A weight ``[N, K]`` takes a scale per row ``[N]`` or per group ``[N, ceil(K/g)]``;
        anything else takes a scalar scale.
        """
        if self.scale is None:
            return x
        s, zp = self.scale.float(), self.zero_point
        if s.numel() == 1:
            u = x / s.reshape(())
            return u if zp is None else u + zp.float().reshape(())
        if s.dim() == 1:
            u = x / s[:, None]
            return u if zp is None else u + zp.float().reshape(-1)[:, None]
        g = self.group_size or -(-x.shape[1] // s.shape[1])
        width = g * s.shape[1]
        padded = torch.nn.functional.pad(x, (0, width - x.shape[1])).unflatten(1, (s.shape[1], g))
        u = padded / s[..., None]
        if zp is not None:
            u = u + zp.float()[..., None]
        return u.flatten(1)[:, : x.shape[1]]


@dataclass
class QuantizedLayer:
    """One quantized linear, with its float original and the quantizers it applies."""

    name: str
    weight_name: str
    float_node: fx.Node
    quantized_node: fx.Node
    #: What the layer's float weight becomes before quantization: ``W' = W · 2^k / c``.
    weight: torch.Tensor
    #: The dequantized weight ``Ŵ`` the quantized graph multiplies with.
    weight_hat: torch.Tensor
    weight_quantizer: Quantizer
    #: ``None`` when activations stay float (weight-only recipes).
    act_quantizer: Optional[Quantizer]
    #: ``c`` (shape ``[K]``), ``None`` when the input is not scaled.
    input_scale: Optional[torch.Tensor]
    #: LLM-FP4's integer exponents ``k`` (shape ``[K]``), ``None`` without a pre-shift.
    shift: Optional[torch.Tensor]
    #: The arguments of the quantized node after its input, resolved to values.
    linear_args: Tuple[Any, ...]
    act_args: Tuple[Any, ...]

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        """``u = x · c``, what the activation quantizer sees."""
        return x if self.input_scale is None else x * self.input_scale

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The quantized layer applied to its float input ``x``."""
        u = self.quantized_input(x)
        if self.act_quantizer is not None:
            u = FAKE_QUANTIZE(u, *self.act_args)
        return QUANTIZED_LINEAR(u, *self.linear_args)


def _value(gm: fx.GraphModule, arg: Any, where: str) -> Any:
    if isinstance(arg, fx.Node):
        value = attr_value(gm, arg)
        if value is None:
            raise AnalysisError(f"{where}: argument {arg.name} is computed at run time, not a constant")
        return value.detach()
    return arg


def layer_name(node: fx.Node) -> str:
    """The float linear a ``quantized_linear`` node replaced (kept in meta, or in its weight's name)."""
    name = node.meta.get("bitfold_layer")
    if isinstance(name, str):
        return name
    packed = node.args[1]
    target = str(getattr(packed, "target", ""))
    if target.endswith(_PACKED_SUFFIX):
        return target[: -len(_PACKED_SUFFIX)]
    raise AnalysisError(f"quantized node {node.name}: cannot tell which float layer it replaced")


def _norm_scale(float_gm: fx.GraphModule, quant_gm: fx.GraphModule, f_norm: fx.Node, q_norm: fx.Node,
                layer: str) -> Optional[torch.Tensor]:
    """``c`` folded into a norm: ``γ_q / γ_f``, from the betas where a gamma is zero."""
    def params(gm: fx.GraphModule, node: fx.Node) -> List[Optional[torch.Tensor]]:
        idx = (2, 3) if node.target in LAYER_NORM else (2,)
        return [attr_value(gm, node.args[i]) if len(node.args) > i else None for i in idx]

    fp, qp = params(float_gm, f_norm), params(quant_gm, q_norm)
    if fp[0] is None or qp[0] is None:
        return None
    gf, gq = fp[0].detach().float().reshape(-1), qp[0].detach().float().reshape(-1)
    c = torch.where(gf != 0, gq / torch.where(gf != 0, gf, torch.ones_like(gf)), torch.ones_like(gf))
    if len(fp) > 1 and fp[1] is not None and qp[1] is not None:
        bf, bq = fp[1].detach().float().reshape(-1), qp[1].detach().float().reshape(-1)
        c = torch.where((gf == 0) & (bf != 0), bq / torch.where(bf != 0, bf, torch.ones_like(bf)), c)
    if not bool(torch.isfinite(c).all()) or bool((c == 0).any()):
        raise AnalysisError(f"layer {layer}: the scaling folded into {q_norm.name} cannot be recovered")
    return None if bool((c == 1).all()) else c


def _input_scale(float_gm: fx.GraphModule, quant_gm: fx.GraphModule, f_node: fx.Node,
                 u: fx.Node, layer: str) -> Optional[torch.Tensor]:
    if u.op == "call_function" and u.target == aten.mul.Tensor and len(u.args) == 2:
        c = attr_value(quant_gm, u.args[1])
        if c is not None:
            return c.detach().float().reshape(-1)
    x = f_node.args[0]
    norms = LAYER_NORM | RMS_NORM
    if u.op == "call_function" and u.target in norms and isinstance(x, fx.Node) and x.target in norms:
        return _norm_scale(float_gm, quant_gm, x, u, layer)
    return None


def _agreement(layer: "QuantizedLayer") -> float:
    """Share of the reconstructed ``W'`` that quantizes to exactly the stored ``Ŵ``."""
    q = layer.weight_quantizer
    requant = ops.pack_weight(layer.weight, q.fmt, q.scale, q.group_size, q.zero_point).unpack()
    return float(torch.isclose(requant, layer.weight_hat, rtol=1e-5, atol=0).float().mean())


def _pair(float_gm: fx.GraphModule, quant_gm: fx.GraphModule, q_node: fx.Node, f_node: fx.Node) -> QuantizedLayer:
    name = f_node.name
    where = f"layer {name} ({q_node.name})"
    args = tuple(_value(quant_gm, a, where) for a in q_node.args[1:])
    args = args + (None,) * (9 - len(args))
    packed, fmt, n_out, k_in, w_scale, group, zp, shift = args[:8]
    weight = attr_value(float_gm, f_node.args[1])
    if weight is None or tuple(weight.shape) != (n_out, k_in):
        raise AnalysisError(
            f"{where}: the float layer's weight is {None if weight is None else tuple(weight.shape)}, "
            f"the quantized one is {(n_out, k_in)}: the float reference is another model"
        )
    x_q = q_node.args[0]
    act_quantizer, act_args, u = None, (), x_q
    if isinstance(x_q, fx.Node) and x_q.target == FAKE_QUANTIZE:
        act_args = tuple(_value(quant_gm, a, where) for a in x_q.args[1:])
        padded = list(act_args) + [None] * (5 - len(act_args))
        act_quantizer = Quantizer(padded[0], padded[1], padded[3], padded[4])
        u = x_q.args[0]
    c = _input_scale(float_gm, quant_gm, f_node, u, name) if isinstance(u, fx.Node) else None
    factor = torch.ones(k_in)
    if shift is not None:
        factor = torch.exp2(shift.float())
    if c is not None:
        factor = factor / c
    layer = QuantizedLayer(
        name=name,
        weight_name=str(f_node.args[1].target),
        float_node=f_node,
        quantized_node=q_node,
        weight=weight.detach().float() * factor,
        weight_hat=ops.unpack_weight(packed, fmt, n_out, k_in, w_scale, group, zp),
        weight_quantizer=Quantizer(fmt, w_scale, group, zp),
        act_quantizer=act_quantizer,
        input_scale=c,
        shift=shift,
        linear_args=args,
        act_args=act_args,
    )
    share = _agreement(layer)
    if share < _MIN_AGREEMENT:
        raise AnalysisError(
            f"{where}: only {share:.1%} of the float weights re-quantize to the stored codes; "
            "the float reference does not match this quantized model"
        )
    return layer


def match_layers(float_gm: fx.GraphModule, quant_gm: fx.GraphModule) -> List[QuantizedLayer]:
    """Every ``quantized_linear`` of ``quant_gm`` with its ``aten.linear`` in ``float_gm``, in graph order."""
    linears = {n.name: n for n in float_gm.graph.nodes if n.op == "call_function" and n.target in LINEAR}
    layers = []
    for node in quant_gm.graph.nodes:
        if node.op != "call_function" or node.target != QUANTIZED_LINEAR:
            continue
        name = layer_name(node)
        if name not in linears:
            raise AnalysisError(f"quantized layer {name}: the float reference has no linear of that name")
        layers.append(_pair(float_gm, quant_gm, node, linears[name]))
    if not layers:
        raise AnalysisError("the quantized model has no quantized linear layers to analyze")
    return layers
