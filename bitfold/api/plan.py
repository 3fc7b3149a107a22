"""Turn a recipe and calibration statistics into per-layer quantization plans.

Linears that read the same input node form a group (Q/K/V, gate/up): the group shares one
activation quantizer (and one pre-shift vector ``k``, as LLM-FP4 requires), and its weights
are searched as one stacked matrix, so the activation choice minimizes the error of all of
the group's outputs together. A convolution is planned as the linear layer over its input
patches (:mod:`bitfold.ir.conv_patches`); convolutions of one geometry reading one input
form a group. Per-input-channel factors (pre-shift, SmoothQuant) need a pointwise (1×1,
ungrouped) convolution, where a patch column is a channel; other convolutions get a plain
per-tensor activation quantizer, and grouped ones round their weights to nearest (their
calibration sample holds a few rows per group, too few for GPTQ's per-group Hessians).
Per method:

* ``minmax``: symmetric scales ``amax / max`` (weights per output channel or group,
  activations per tensor); asymmetric INT weights use ``(max - min) / (2^b - 1)`` and a
  zero point. FP formats: a scale is an exponent bias (``FloatFormat.scale_for_bias``).
* ``search``: LLM-FP4's format and exponent-bias search (:mod:`bitfold.passes.fp_search`);
  for a block format's weights, the per-block scale search (:mod:`bitfold.passes.block_scales`);
  with ``preshift`` the activation then gets integer per-channel exponents ``k`` from its
  channel maxima and a per-tensor bias ``ρ`` searched with the weight held quantized
  (:mod:`bitfold.passes.preshift`).
* ``rounding: gptq`` (weights): after the grid (format, scales) is chosen, the weights are
  re-rounded on it by GPTQ against the quantized input the layer sees
  (:mod:`bitfold.passes.gptq`); the plan carries the rounded values.
* SmoothQuant (``smoothquant_alpha``): ``s_j = max|X_j|^α / max|W_j|^(1-α)``, the input
  divided by ``s``, the weight columns multiplied, then MinMax.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import fx
from tqdm.auto import tqdm

from bitfold.ir import formats, ops
from bitfold.ir.conv_patches import CONV2D, conv_geometry, grouped_product
from bitfold.ir.graph_utils import attr_value
from bitfold.passes.block_scales import search_block_scales
from bitfold.passes.calibration import LayerStats
from bitfold.passes.fp_search import float_format, quantize_rows, refine_weights, search_layer
from bitfold.passes.gptq import gptq_round
from bitfold.passes.preshift import apply_preshift, preshift_exponents, search_preshift, search_preshift_rho
from bitfold.passes.quantize_linears import ActivationPlan, WeightPlan, input_key
from bitfold.recipes import Recipe, TensorSpec

aten = torch.ops.aten


@dataclass
class LayerReport:
    """What was chosen for one linear layer, for the manifest and the summary table."""

    layer: str
    weight_name: str
    shape: Tuple[int, ...]
    weight_format: str
    granularity: str
    act_format: Optional[str] = None
    act_scale: Optional[float] = None
    shift_range: Optional[Tuple[int, int]] = None
    group: str = ""
    output_rel_error: Optional[float] = None
    seconds: float = 0.0
    notes: List[str] = field(default_factory=list)


@dataclass
class Plan:
    weights: Dict[str, WeightPlan]
    activations: Dict[str, ActivationPlan]
    reports: List[LayerReport]
    skipped: Dict[str, str]


def _weight(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    """The layer's weight as the ``[N, K]`` matrix its quantizer sees (a conv's flattened per output channel)."""
    weight = attr_value(gm, node.args[1]).detach().float()
    return weight.reshape(weight.shape[0], -1)


def exclusion(node: fx.Node, patterns: Sequence[str], weight_arg: int = 1) -> Optional[str]:
    """The first of ``patterns`` that matches ``node``'s name or its weight's, or ``None``."""
    names = (node.name, str(node.args[weight_arg].target))
    return next((p for p in patterns if any(fnmatch.fnmatch(n, p) for n in names)), None)


def select_nodes(gm: fx.GraphModule, recipe: Recipe, target, kind: str, weight_arg: int,
                 ) -> Tuple[List[fx.Node], Dict[str, str]]:
    """The ``target`` nodes (layer kind ``kind``, constant weight at ``node.args[weight_arg]``)
    the recipe quantizes, and the reason each other one stays float."""
    chosen, skipped = [], {}
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target != target:
            continue
        pattern = exclusion(node, recipe.exclude, weight_arg)
        if kind not in recipe.layers:
            skipped[node.name] = f"the recipe does not quantize {kind} layers (add '{kind}' to its layers)"
        elif attr_value(gm, node.args[weight_arg]) is None:
            skipped[node.name] = "its weight is computed at run time"
        elif pattern is not None:
            skipped[node.name] = f"excluded by the recipe pattern {pattern!r}"
        else:
            chosen.append(node)
    return chosen, skipped


def select_layers(gm: fx.GraphModule, recipe: Recipe) -> Tuple[List[fx.Node], Dict[str, str]]:
    """The linears and 2-D convolutions the recipe quantizes, and the reason each other one stays float."""
    linears, skipped = select_nodes(gm, recipe, aten.linear.default, "linear", 1)
    convs, skipped_convs = select_nodes(gm, recipe, CONV2D, "conv", 1)
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    return sorted(linears + convs, key=order.__getitem__), {**skipped, **skipped_convs}


def _channel_factors_dropped(recipe: Recipe) -> Tuple[Recipe, List[str]]:
    """``recipe`` without per-input-channel factors, for a convolution whose patch columns are
    not channels; and a note saying what was dropped."""
    aspec = recipe.activations
    dropped = []
    if aspec is not None and aspec.preshift_mode() is not None:
        dropped.append("pre-shift")
        aspec = replace(aspec, preshift=False, shift_weights="quantized")
    if recipe.smoothquant_alpha is not None:
        dropped.append("SmoothQuant factors")
    if not dropped:
        return recipe, []
    return replace(recipe, activations=aspec, smoothquant_alpha=None), [
        f"no {' or '.join(dropped)}: per-input-channel factors need a pointwise (1x1, ungrouped) convolution"]


def granularity(plan: WeightPlan) -> str:
    """``channel``, ``group<g>`` or ``block<B>``, for the report."""
    return ops.weight_granularity(formats.get(plan.fmt), plan.group_size)


def _minmax_weight(W: torch.Tensor, spec: TensorSpec, fmt: formats.Format) -> WeightPlan:
    if isinstance(fmt, formats.BlockFormat):
        return WeightPlan(fmt.name, fmt.block_scales(W, axis=1))
    group = spec.group_size if spec.granularity == "group" else None
    rows = W if group is None else torch.nn.functional.pad(W, (0, -W.shape[1] % group)).unflatten(1, (-1, group))
    reduce = dict(dim=-1)
    if isinstance(fmt, formats.IntFormat) and not spec.symmetric:
        lo, hi = rows.amin(**reduce).clamp(max=0), rows.amax(**reduce).clamp(min=0)
        scale = ((hi - lo) / (fmt.qmax - fmt.qmin)).clamp_min(1e-12)
        zero = torch.round(fmt.qmin - lo / scale).clamp(fmt.qmin, fmt.qmax)
        return WeightPlan(fmt.name, scale, group, zero)
    scale = (rows.abs().amax(**reduce) / fmt.max).clamp_min(1e-12)
    return WeightPlan(fmt.name, scale, group)


def _rel_error(X: torch.Tensor, W: torch.Tensor, Xq: torch.Tensor, Wq: torch.Tensor,
               group: Optional[torch.Tensor] = None, groups: int = 1) -> float:
    """Relative output error over the sample; a grouped convolution's rows meet only their group's weights."""
    ref = grouped_product(X, W, group, groups)
    got = grouped_product(Xq, Wq, group, groups)
    return float(((got - ref).pow(2).sum() / ref.pow(2).sum().clamp_min(1e-30)).sqrt())


def _dequant(W: torch.Tensor, plan: WeightPlan) -> torch.Tensor:
    f = formats.get(plan.fmt)
    return f.quantize(W, plan.scale, zero_point=plan.zero_point, **ops.weight_layout(f, plan.group_size))


def _gptq_plans(W: torch.Tensor, Xq: torch.Tensor, plans: List[WeightPlan]) -> Tuple[List[WeightPlan], torch.Tensor]:
    """``plans`` (one per layer sharing the input, rows of ``W`` in order) with GPTQ-rounded
    ``values`` on their grids, against the input ``Xq`` the layers see; and those rows joined."""
    fmt = formats.get(plans[0].fmt)
    group = ops.weight_layout(fmt, plans[0].group_size)["group_size"]
    grid = fmt.element if isinstance(fmt, formats.BlockFormat) else fmt
    scale = torch.cat([torch.as_tensor(p.scale, dtype=torch.float32).reshape(p.scale.shape[0], -1) for p in plans])
    zero = None if plans[0].zero_point is None else torch.cat(
        [p.zero_point.float().reshape(p.zero_point.shape[0], -1) for p in plans])

    def quantize_column(column: torch.Tensor, j: int) -> torch.Tensor:
        g = 0 if group is None else j // group
        return grid.quantize(column, scale[:, g], axis=0, zero_point=None if zero is None else zero[:, g],
                             validate=False)

    Q = gptq_round(W, Xq.T.double() @ Xq.double(), quantize_column)
    rows = Q.split([p.scale.shape[0] for p in plans])
    return [replace(p, values=r) for p, r in zip(plans, rows)], Q


def _minmax_activation(X: torch.Tensor, name: str, smooth: Optional[torch.Tensor]) -> ActivationPlan:
    """A per-tensor scale from the sample's max, or none for a block format (scales per block at run time)."""
    fmt = formats.get(name)
    scale = None if isinstance(fmt, formats.BlockFormat) else max(float(X.abs().max()), 1e-12) / fmt.max
    return ActivationPlan(fmt.name, scale, smooth=smooth)


def _quantize_input(X: torch.Tensor, plan: ActivationPlan) -> torch.Tensor:
    """What the quantized layer sees of ``X`` (already divided by any SmoothQuant factors)."""
    c = torch.ones(X.shape[1]) if plan.shift is None else torch.exp2(plan.shift.float())
    return formats.get(plan.fmt).quantize(X * c, plan.scale) / c


def _search_fp(
    recipe: Recipe, W: torch.Tensor, X: torch.Tensor, sizes: List[int], channel_max: torch.Tensor,
    smooth: Optional[torch.Tensor],
) -> Tuple[List[WeightPlan], Optional[ActivationPlan], torch.Tensor, torch.Tensor]:
    """LLM-FP4's search for one group: weight plans, the activation plan, and what the layer
    computes with in place of ``W`` and ``X`` (the quantized weight and input).

    With ``preshift: paper`` the weights and a per-tensor activation are searched together
    (the FPQ baseline), then the shifts come from the channel maxima and ``ρ̃`` is searched.
    With ``preshift: search`` the weights are searched alone, the activation format and
    shifts by :func:`~bitfold.passes.preshift.search_preshift` (on a quarter of the grid: it
    only screens, and on MiniLM a second iteration and the full grid changed no layer's error
    by more than 3e-4), the weights once more against that activation, and ``ρ̃`` last, on
    the full grid. ``shift_weights: float`` then moves ``2^−k`` into ``W`` before
    quantizing it and searches the weight biases again.
    """
    wspec, aspec, search = recipe.weights, recipe.activations, recipe.search
    options = dict(grid=search.grid, k=search.points, stride=search.stride)
    mode = aspec.preshift_mode() if aspec is not None else None
    joint = aspec is not None and aspec.method == "search" and mode != "search"
    w_names = recipe.weight_formats()
    result = search_layer(
        W, X, wspec.bits, aspec.bits if joint else None, rounds=search.rounds, weight_formats=w_names,
        act_formats=recipe.activation_formats() if joint else None, act_max=float(channel_max.max()), **options,
    )
    w_name, w_bias = result.weight_format, result.weight_bias
    Wq, Xq = result.quantize_weight(W), X
    act_plan: Optional[ActivationPlan] = None
    if aspec is not None and mode is None:
        if joint:
            afmt = float_format(result.act_format)
            act_plan = ActivationPlan(afmt.name, float(afmt.scale_for_bias(result.act_bias)), smooth=smooth)
        else:
            act_plan = _minmax_activation(X, recipe.activation_formats()[0], smooth)
        Xq = _quantize_input(X, act_plan)
    elif aspec is not None:
        shared = dict(channel_max=channel_max, grid=search.grid, points=search.points, stride=search.stride)
        if mode == "paper":
            afmt = float_format(result.act_format)
            _, k = preshift_exponents(channel_max, afmt)
            found = search_preshift_rho(W, X, k, afmt, Wq, **shared)
        else:
            screen = dict(shared, points=max(search.points // 4, 8), iterations=1)
            afmt, found = search_preshift(W, X, Wq, [float_format(n) for n in recipe.activation_formats()], **screen)
            Xq = apply_preshift(found.quantize_act(afmt, X), -found.k)
            w_name, w_bias, _ = refine_weights(W, X, Xq, w_names, w_name, w_bias, **options)
            Wq = quantize_rows(float_format(w_name), W, w_bias)
            found = search_preshift_rho(W, X, found.k, afmt, Wq, **shared)
        act_plan = ActivationPlan(afmt.name, float(afmt.scale_for_bias(found.rho)), shift=found.k)
        Xq = _quantize_input(X, act_plan)
        if aspec.shift_weights == "float":
            shift = torch.exp2(found.k.float())
            Ws, Xs = W / shift, X * shift
            w_name, w_bias, _ = refine_weights(
                Ws, Xs, Xq * shift, w_names, w_name, float_format(w_name).bias_for_max(Ws.abs().amax(1).double()),
                **options)
            Wq = quantize_rows(float_format(w_name), Ws, w_bias) * shift
            act_plan = ActivationPlan(afmt.name, act_plan.scale, smooth=1.0 / shift)
    wfmt = float_format(w_name)
    w_plans = [WeightPlan(wfmt.name, s) for s in wfmt.scale_for_bias(w_bias).split(sizes)]
    return w_plans, act_plan, Wq, Xq


def plan_quantization(
    gm: fx.GraphModule, recipe: Recipe, stats: Dict[str, LayerStats], layers: List[fx.Node],
    progress: bool = False,
) -> Plan:
    """Choose formats, scales, shifts for every layer in ``layers`` (see the module docstring).

    ``progress`` shows a bar over the groups of layers sharing an input (a search takes
    seconds per group)."""
    groups: Dict[str, List[fx.Node]] = {}
    for node in layers:
        groups.setdefault(input_key(gm, node), []).append(node)
    weights: Dict[str, WeightPlan] = {}
    activations: Dict[str, ActivationPlan] = {}
    reports: List[LayerReport] = []
    bar = tqdm(groups.items(), total=len(groups), desc=f"planning ({recipe.name})", unit="group", disable=not progress)
    for key, members in bar:
        start = time.perf_counter()
        geometry = conv_geometry(gm, members[0])
        notes: List[str] = []
        group_recipe = recipe
        if geometry is not None:
            notes.append(f"conv {geometry.describe()}: quantized as a {geometry.in_features}-feature linear "
                         "over its input patches")
            if not geometry.pointwise:
                group_recipe, dropped = _channel_factors_dropped(recipe)
                notes += dropped
            if geometry.groups > 1 and recipe.weights.rounding == "gptq":
                group_recipe = replace(group_recipe, weights=replace(group_recipe.weights, rounding="nearest"))
                notes.append("weights rounded to nearest: a grouped convolution's sample has too few rows per "
                             "group for GPTQ")
        act_plan, w_plans, error = _plan_group(gm, group_recipe, stats[members[0].name], members,
                                               1 if geometry is None else geometry.groups)
        if act_plan is not None:
            activations[key] = act_plan
        seconds = time.perf_counter() - start
        for node, p in zip(members, w_plans):
            weights[node.name] = p
            reports.append(LayerReport(
                layer=node.name, weight_name=str(node.args[1].target),
                shape=tuple(attr_value(gm, node.args[1]).shape), weight_format=p.fmt,
                granularity=granularity(p),
                act_format=None if act_plan is None else act_plan.fmt,
                act_scale=None if act_plan is None else act_plan.scale,
                shift_range=None if act_plan is None or act_plan.shift is None else
                (int(act_plan.shift.min()), int(act_plan.shift.max())),
                group=key, output_rel_error=error, seconds=seconds / len(members), notes=list(notes),
            ))
    return Plan(weights, activations, reports, {})


def _plan_group(gm: fx.GraphModule, recipe: Recipe, st: LayerStats, members: List[fx.Node], groups: int,
                ) -> Tuple[Optional[ActivationPlan], List[WeightPlan], float]:
    """The activation plan, weight plans and relative output error of one group of layers sharing an input."""
    wspec, aspec = recipe.weights, recipe.activations
    X = st.sample.float()
    Ws = [_weight(gm, n) for n in members]
    W = torch.cat(Ws)
    sizes = [w.shape[0] for w in Ws]
    act_plan: Optional[ActivationPlan] = None
    Xq = X
    if recipe.smoothquant_alpha is not None:
        alpha = recipe.smoothquant_alpha
        smooth = (st.channel_absmax.clamp_min(1e-5) ** alpha / W.abs().amax(0).clamp_min(1e-5) ** (1 - alpha))
        X, W = X / smooth, W * smooth
        Ws = list(W.split(sizes))
    else:
        smooth = None
    preshift = aspec.preshift_mode() if aspec is not None else None
    if wspec.method == "search" and wspec.kind == "fp" and wspec.granularity == "channel":
        w_plans, act_plan, Wq, Xq = _search_fp(recipe, W, X, sizes, st.channel_absmax, smooth)
    else:
        wfmt = formats.get(recipe.weight_formats()[0])
        if isinstance(wfmt, formats.BlockFormat) and wspec.method == "search":
            energy = X.pow(2).mean(0)
            w_plans = [WeightPlan(wfmt.name, search_block_scales(w, wfmt, energy)) for w in Ws]
        else:
            w_plans = [_minmax_weight(w, wspec, wfmt) for w in Ws]
        if aspec is not None:
            act_plan = _minmax_activation(X, recipe.activation_formats()[0], smooth)
        Wq = torch.cat([_dequant(w, p) for w, p in zip(Ws, w_plans)])
        if act_plan is not None and preshift is not None:
            afmt = float_format(act_plan.fmt)
            _, k = preshift_exponents(st.channel_absmax, afmt)
            found = search_preshift_rho(W, X, k, afmt, Wq, channel_max=st.channel_absmax,
                                        grid=recipe.search.grid, points=recipe.search.points,
                                        stride=recipe.search.stride)
            act_plan = ActivationPlan(afmt.name, float(afmt.scale_for_bias(found.rho)), shift=k)
        if act_plan is not None:
            Xq = _quantize_input(X, act_plan)
    if wspec.rounding == "gptq":
        w_plans, Wq = _gptq_plans(W, Xq, w_plans)
    return act_plan, w_plans, _rel_error(X, W, Xq, Wq, st.sample_group, groups)
