"""Pair each quantized layer with its float original and rebuild what it computes.

The report evaluates one quantized layer at a time inside the float model, so it needs, per
layer, the function the quantized graph applies to that layer's *float* input. After
:class:`~bitfold.passes.quantize_linears.QuantizeLinears` and
:class:`~bitfold.passes.fold_preshift.FoldPreshift` a quantized linear reads::

    u  = H x · c                      c: LLM-FP4's 2^k, SmoothQuant's 1/s, or 1; H: a rotation or 1
    xq = fake_quantize(u, fa, sa)     absent for weight-only recipes
    y  = quantized_linear(xq, Ŵ, …, k, b) = (xq · 2^-k) Ŵᵀ + b

where ``Ŵ`` quantizes ``W' = W Hᵀ · 2^k / c`` (``W`` itself for a pre-shift, ``W · s`` for
SmoothQuant; ``W Hᵀ`` where :mod:`~bitfold.passes.rotate_inputs` rotated the input by a
``bitfold::hadamard``). A SplitQuant layer is one ``codebook_linear`` whose every weight
carries a cluster id, and so its own cluster's scale and zero point. ``c`` is the constant
of the ``mul`` in front of the quantizer or, where FoldPreshift moved it into the
producing norm, the ratio of the norm's gammas
``γ_quantized / γ_float`` (its betas where a gamma is zero), or, where it moved into a
producer's rows (``v_proj`` for the attention output, ``up_proj`` for ``down_proj``),
``2^k`` itself; the producer's rows then carry powers of two, read off the row norms of
``Ŵ`` and ``W'``, and its float output is the quantized one divided by them.
:func:`match_layers` checks the pairing: re-quantizing the reconstructed ``W'`` must give
back ``Ŵ``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import fx

from bitfold.ir import formats, ops
from bitfold.ir.conv_patches import CONV2D
from bitfold.ir.graph_utils import attr_value
from bitfold.ir.hadamard import rotate_rows
from bitfold.ir.op_groups import LAYER_NORM, LINEAR, RMS_NORM

aten = torch.ops.aten
QUANTIZED_LINEAR = torch.ops.bitfold.quantized_linear.default
FAKE_QUANTIZE = torch.ops.bitfold.fake_quantize.default
HADAMARD = torch.ops.bitfold.hadamard.default
#: A pairing counts when this share of the weights re-quantizes to the stored codes (nearest
#: rounding), or when the stored weight is at most ``_MAX_DISTANCE_RATIO`` times as far from
#: the float one as nearest rounding would be: error-compensated rounding (GPTQ) moves about a
#: quarter of the codes and 1.3-1.5x as far on MiniLM; another model's weights are ~10x as far.
_MIN_AGREEMENT = 0.99
_MAX_DISTANCE_RATIO = 3.0


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
        if s.shape == x.shape:
            return x / s if zp is None else x / s + zp.float()
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

    def quantize(self, weight: torch.Tensor) -> torch.Tensor:
        """Fake-quantize a ``[N, K]`` weight the way this quantizer's layout says."""
        if self.scale is not None and self.scale.shape == weight.shape:
            return formats.get(self.fmt).quantize(weight, self.scale, zero_point=self.zero_point)
        return ops.pack_weight(weight, self.fmt, self.scale, self.group_size, self.zero_point).unpack()


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
    #: The weight's format and granularity as :attr:`WeightView.layout` says it.
    layout: str
    #: ``None`` when activations stay float (weight-only recipes).
    act_quantizer: Optional[Quantizer]
    #: ``c`` (shape ``[K]``), ``None`` when the input is not scaled.
    input_scale: Optional[torch.Tensor]
    #: LLM-FP4's integer exponents ``k`` (shape ``[K]``), ``None`` without a pre-shift.
    shift: Optional[torch.Tensor]
    #: The quantized op and its arguments after the input, resolved to values.
    op: Any
    linear_args: Tuple[Any, ...]
    act_args: Tuple[Any, ...]
    #: The input's channel axis: -1 for a linear, 1 for a convolution (NCHW).
    channel_axis: int = -1
    #: The Hadamard block the input is rotated by first (``None``: not rotated); ``weight``
    #: is then the counter-rotated ``W Hᵀ``, scaled as above.
    rotation: Optional[int] = None
    #: Powers of two per output channel that a later layer's pre-shift folded into this
    #: layer's rows (``None``: none); ``weight`` carries them, the float output does not.
    output_scale: Optional[torch.Tensor] = None

    def channel_rows(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's input as ``[-1, channels]`` rows."""
        return x.movedim(self.channel_axis, -1).reshape(-1, x.shape[self.channel_axis])

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        """``u = H x · c``, what the activation quantizer sees."""
        if self.rotation is not None:
            x = HADAMARD(x, self.rotation)
        if self.input_scale is None:
            return x
        trailing = x.dim() - 1 - self.channel_axis % x.dim()
        return x * self.input_scale.reshape([-1] + [1] * trailing)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The quantized layer applied to its float input ``x``."""
        u = self.quantized_input(x)
        if self.act_quantizer is not None:
            u = FAKE_QUANTIZE(u, *self.act_args)
        return self.as_float_output(self.op(u, *self.linear_args))

    def as_float_output(self, y: torch.Tensor) -> torch.Tensor:
        """The quantized node's output ``y`` on the float layer's scale (folded row powers of two taken out)."""
        return y if self.output_scale is None else y / self.output_scale


def _value(gm: fx.GraphModule, arg: Any, where: str) -> Any:
    if isinstance(arg, fx.Node):
        value = attr_value(gm, arg)
        if value is None:
            raise AnalysisError(f"{where}: argument {arg.name} is computed at run time, not a constant")
        return value.detach()
    return arg


@dataclass(frozen=True)
class WeightView:
    """What a quantized linear op's (resolved) arguments say about its weight."""

    out_features: int
    in_features: int
    weight_hat: torch.Tensor
    quantizer: Quantizer
    shift: Optional[torch.Tensor]
    #: SplitQuant's number of value clusters; ``None`` for a plain quantized linear.
    clusters: Optional[int] = None

    @property
    def layout(self) -> str:
        """``int4/channel``, ``uint4/group128``, ``nvfp4/block16``, ``int2/channel ×3 clusters``."""
        q = self.quantizer
        text = f"{q.fmt}/{ops.weight_granularity(formats.get(q.fmt), q.group_size)}"
        return text if self.clusters is None else f"{text} ×{self.clusters} clusters"


def _quantized_linear_view(args: Tuple[Any, ...]) -> WeightView:
    packed, fmt, n, k, scale, group, zp, shift = (args + (None,) * 9)[:8]
    return WeightView(n, k, ops.unpack_weight(packed, fmt, n, k, scale, group, zp),
                       Quantizer(fmt, scale, group, zp), shift)


def _codebook_linear_view(args: Tuple[Any, ...]) -> WeightView:
    """Per element: the scale and zero point of its cluster, so the layer reads as one quantizer."""
    codes, ids, fmt, n, k, clusters, scale, group, zp, shift = (args + (None,) * 11)[:10]
    cluster = formats.unpack(ids, ops.cluster_id_bits(clusters), n * k).reshape(n, k).long()
    rows = torch.arange(n)[:, None]
    index = (cluster, rows) if group is None else (cluster, rows, (torch.arange(k) // group)[None, :])
    return WeightView(n, k, ops.unpack_codebook_weight(codes, ids, fmt, n, k, clusters, scale, group, zp),
                       Quantizer(fmt, scale.float()[index], None, None if zp is None else zp.float()[index]),
                       shift, clusters)


def _linear_ops() -> Dict[Any, Tuple[Callable[[Tuple[Any, ...]], WeightView], Tuple[str, ...]]]:
    """Quantized linear ops: how to read their weight, and the name suffixes that give their layer."""
    found = {QUANTIZED_LINEAR: (_quantized_linear_view, ("_packed_weight",)),
             torch.ops.bitfold.quantized_conv2d.default: (_quantized_linear_view, ("_packed_weight",))}
    codebook = getattr(torch.ops.bitfold, "codebook_linear", None)
    if codebook is not None:
        found[codebook.default] = (_codebook_linear_view, ("_codebook", "_codes"))
    return found


def is_quantized_linear(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in _linear_ops()


def weight_view(gm: fx.GraphModule, node: fx.Node) -> WeightView:
    """The weight of the quantized linear ``node`` of ``gm``: shape, dequantized values, quantizer."""
    read_weight, _ = _linear_ops()[node.target]
    return read_weight(tuple(_value(gm, a, f"quantized node {node.name}") for a in node.args[1:]))


def layer_name(node: fx.Node) -> str:
    """The float linear a quantized node replaced: kept in meta in memory; after loading, read
    from the name of the node or of its first constant (``<layer>_packed_weight``, ``<layer>_codebook``)."""
    name = node.meta.get("bitfold_layer")
    if isinstance(name, str):
        return name
    _, suffixes = _linear_ops()[node.target]
    for text in (node.name, str(getattr(node.args[1], "target", ""))):
        for suffix in suffixes:
            if text.endswith(suffix):
                return text[: -len(suffix)]
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


def _rotation(u: fx.Node) -> Optional[int]:
    """The block of the Hadamard rotation feeding the layer's input ``u`` (through its ``· c``)."""
    if u.op == "call_function" and u.target == aten.mul.Tensor and isinstance(u.args[0], fx.Node):
        u = u.args[0]
    return u.args[1] if u.op == "call_function" and u.target is HADAMARD else None


def _folded_rows(layer: "QuantizedLayer") -> Optional[torch.Tensor]:
    """Per output row, the power of two a later layer's pre-shift folded into this layer's rows
    (weight scales and bias: :class:`~bitfold.passes.fold_preshift.FoldScaleIntoValueProjection`
    and the up_proj fold), read off the norms of ``Ŵ`` and ``W'``; ``None`` if all are 1."""
    stored, wanted = layer.weight_hat.norm(dim=1), layer.weight.norm(dim=1)
    live = (stored > 0) & (wanted > 0)
    ratio = torch.where(live, stored / torch.where(live, wanted, torch.ones_like(wanted)), torch.ones_like(stored))
    rows = torch.exp2(torch.round(torch.log2(ratio)))
    return None if bool((rows == 1).all()) else rows


def _agreement(layer: "QuantizedLayer") -> Tuple[float, float]:
    """Share of the reconstructed ``W'`` that quantizes to exactly the stored ``Ŵ``, and
    ``‖Ŵ − W'‖ / ‖Q(W') − W'‖`` (how much farther ``Ŵ`` is than nearest rounding)."""
    requant = layer.weight_quantizer.quantize(layer.weight)
    share = float(torch.isclose(requant, layer.weight_hat, rtol=1e-5, atol=0).float().mean())
    nearest = float((requant - layer.weight).norm())
    ratio = float((layer.weight_hat - layer.weight).norm()) / max(nearest, 1e-30)
    return share, ratio


def _pair(float_gm: fx.GraphModule, quant_gm: fx.GraphModule, q_node: fx.Node, f_node: fx.Node) -> QuantizedLayer:
    name = f_node.name
    where = f"layer {name} ({q_node.name})"
    args = tuple(_value(quant_gm, a, where) for a in q_node.args[1:])
    view = weight_view(quant_gm, q_node)
    n_out, k_in, shift = view.out_features, view.in_features, view.shift
    weight = attr_value(float_gm, f_node.args[1])
    if weight is not None and f_node.target == CONV2D:
        weight = weight.reshape(weight.shape[0], -1)
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
    if c is None and shift is not None:
        # The pre-shift's 2^k went into a producer's rows (v_proj, up_proj), out of sight here.
        c = torch.exp2(shift.float())
    rotation = _rotation(u) if isinstance(u, fx.Node) else None
    if rotation is not None:
        weight = rotate_rows(weight.detach().float(), rotation)
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
        weight_hat=view.weight_hat,
        weight_quantizer=view.quantizer,
        layout=view.layout,
        act_quantizer=act_quantizer,
        input_scale=c,
        shift=shift,
        op=q_node.target,
        linear_args=args,
        act_args=act_args,
        channel_axis=1 if f_node.target == CONV2D else -1,
        rotation=rotation,
    )
    share, ratio = _agreement(layer)
    rows = None if share >= _MIN_AGREEMENT or layer.channel_axis != -1 else _folded_rows(layer)
    if rows is not None:
        layer = replace(layer, weight=layer.weight * rows[:, None], output_scale=rows)
        share, ratio = _agreement(layer)
    if share < _MIN_AGREEMENT and ratio > _MAX_DISTANCE_RATIO:
        raise AnalysisError(
            f"{where}: only {share:.1%} of the float weights re-quantize to the stored codes, and the "
            f"stored weights are {ratio:.1f}x as far from them as nearest rounding; "
            "the float reference does not match this quantized model"
        )
    return layer


def match_layers(float_gm: fx.GraphModule, quant_gm: fx.GraphModule) -> List[QuantizedLayer]:
    """Every quantized linear (or convolution) of ``quant_gm`` with its ``aten.linear`` (``aten.conv2d``)
    in ``float_gm``, in graph order."""
    linears = {n.name: n for n in float_gm.graph.nodes
               if n.op == "call_function" and (n.target in LINEAR or n.target == CONV2D)}
    layers = []
    for node in quant_gm.graph.nodes:
        if not is_quantized_linear(node):
            continue
        name = layer_name(node)
        if name not in linears:
            raise AnalysisError(f"quantized layer {name}: the float reference has no linear of that name")
        layers.append(_pair(float_gm, quant_gm, node, linears[name]))
    if not layers:
        raise AnalysisError("the quantized model has no quantized linear layers to analyze")
    return layers
