"""``bitfold.quantize``: capture, clean up, calibrate, choose, rewrite — one call."""

from __future__ import annotations

import itertools
import os
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import onnx
import torch
from tqdm.auto import tqdm

from bitfold.api.plan import Plan, exclusion, plan_quantization, select_layers
from bitfold.api.plan_embeddings import plan_embeddings, select_embeddings
from bitfold.api.quantized_model import QuantizedModel
from bitfold.ir import CaptureError, from_onnx, from_torch
from bitfold.passes import EliminateDeadCode, PassManager, run_standard_passes
from bitfold.passes.calibration import calibrate
from bitfold.passes.fold_preshift import FoldPreshift
from bitfold.passes.fuse_split_linears import FuseSplitLinears
from bitfold.passes.quantize_convs import QuantizeConvs
from bitfold.passes.quantize_embeddings import QuantizeEmbeddings
from bitfold.passes.quantize_linears import QuantizeLinears, input_key
from bitfold.passes.rotate_inputs import RotateInputs, activation_fed, rotation_of
from bitfold.passes.split_layers import SPLIT_KEY, SplitLayers
from bitfold.passes.stabilize_gelu import StabilizeGelu
from bitfold.recipes import Recipe, RotateSpec, SplitSpec, load_recipe

ModelLike = Union[torch.nn.Module, str, os.PathLike, onnx.ModelProto]


def _as_inputs(item: Any) -> Tuple[Any, ...]:
    return tuple(item) if isinstance(item, (tuple, list)) else (item,)


def _dynamic_shapes(example: Tuple[Any, ...], data: Sequence[Tuple[Any, ...]], batch: bool, tokens: bool):
    """Dims whose size differs across calibration items are dynamic; so are the batch dim
    (``batch``) and every later dim of an integer or boolean input (``tokens``: token ids and
    masks are sequences, whose length calibration data rarely varies)."""
    shapes = []
    for i, x in enumerate(example):
        if not isinstance(x, torch.Tensor):
            shapes.append(None)
            continue
        varying = {d for d in range(x.dim()) if len({item[i].shape[d] for item in data}) > 1}
        if batch and x.dim() > 0:
            varying.add(0)
        if tokens and not (x.is_floating_point() or x.is_complex()):
            varying.update(range(1, x.dim()))
        shapes.append({d: torch.export.Dim.DYNAMIC for d in sorted(varying)} or None)
    return tuple(shapes)


def _capture_dynamic(model: torch.nn.Module, example: Tuple[Any, ...], data: Sequence[Tuple[Any, ...]]):
    """Capture with a dynamic batch and token-sequence length if the model allows them, else
    with less, down to only what the calibration data makes vary."""
    attempts = [(True, True), (False, True), (True, False)]
    for batch, tokens in attempts:
        try:
            return from_torch(model, example, dynamic_shapes=_dynamic_shapes(example, data, batch, tokens))
        except CaptureError:
            pass
    return from_torch(model, example, dynamic_shapes=_dynamic_shapes(example, data, batch=False, tokens=False))


def _split(
    gm: torch.fx.GraphModule, spec: SplitSpec, layers: Sequence[torch.fx.Node], example: Tuple[Any, ...]
) -> None:
    """SplitQuant: split the chosen layers of the kinds ``spec`` names (verified on ``example``)."""
    names = [n.name for n in layers if n.target == torch.ops.aten.linear.default and "linear" in spec.layers
             and exclusion(n, spec.exclude) is None]
    PassManager([SplitLayers(spec.k, spec.per_channel, kinds=["linear"], layers=names)], sample_inputs=example).run(gm)


def _rotate(
    gm: torch.fx.GraphModule, spec: RotateSpec, layers: Sequence[torch.fx.Node], example: Tuple[Any, ...]
) -> None:
    """Hadamard-rotate the inputs of the chosen linears that ``spec`` selects (verified on ``example``)."""
    names = [n.name for n in layers if n.target == torch.ops.aten.linear.default
             and (spec.inputs == "all" or activation_fed(n)) and exclusion(n, spec.exclude) is None]
    PassManager([RotateInputs(names, spec.max_block)], sample_inputs=example).run(gm)


def _calibrate_and_plan(gm: torch.fx.GraphModule, recipe: Recipe, data: Sequence[Tuple[Any, ...]],
                        layers: Sequence[torch.fx.Node], layers_per_pass: Optional[int], progress: bool) -> Plan:
    """Calibrate and plan ``layers``: all at once, or ``layers_per_pass`` at a time (whole groups
    of layers sharing an input), one pass over the data each, so that only that many layers'
    activation samples are ever held. The statistics, and so the plan, are the same either way."""
    if layers_per_pass is None:
        stats = calibrate(gm, data, layers=layers, max_tokens=recipe.calibration_tokens, progress=progress)
        return plan_quantization(gm, recipe, stats, layers, progress=progress)
    if layers_per_pass < 1:
        raise ValueError(f"layers_per_pass must be a positive number of layers, got {layers_per_pass}")
    groups: Dict[str, List[torch.fx.Node]] = {}
    for node in layers:
        groups.setdefault(input_key(gm, node), []).append(node)
    chunks: List[List[torch.fx.Node]] = [[]]
    for members in groups.values():
        if chunks[-1] and len(chunks[-1]) + len(members) > layers_per_pass:
            chunks.append([])
        chunks[-1].extend(members)
    plan = Plan({}, {}, [], {})
    for chunk in tqdm(chunks, desc="calibrating layer chunks", unit="chunk", disable=not progress):
        stats = calibrate(gm, data, layers=chunk, max_tokens=recipe.calibration_tokens, progress=False)
        part = plan_quantization(gm, recipe, stats, chunk)
        plan.weights.update(part.weights)
        plan.activations.update(part.activations)
        plan.reports.extend(part.reports)
        del stats
    return plan


def quantize(
    model: ModelLike,
    recipe: Union[str, os.PathLike, Recipe],
    calibration_data: Iterable[Any],
    example_inputs: Optional[Sequence[Any]] = None,
    progress: bool = True,
    layers_per_pass: Optional[int] = None,
) -> QuantizedModel:
    """Quantize ``model`` (a module, an ONNX path or ``ModelProto``) with ``recipe``.

    ``recipe`` is a name (``"w4a4-fp"``) or a YAML path; ``calibration_data`` an iterable of
    model inputs (a tensor or a tuple of tensors per item), of which the recipe's
    ``calibration_samples`` are used. ``example_inputs`` (default: the first calibration
    item) are used to trace the model and to verify the equivalence-preserving passes.
    ``layers_per_pass`` turns on layer-at-a-time calibration: that many linears (whole groups
    sharing an input) are calibrated and planned per pass over the data, so memory holds
    only their samples (``calibration_tokens × in_features`` floats each) — for models whose
    calibration samples for every layer at once do not fit. Same result, more passes.
    """
    recipe = load_recipe(recipe)
    data = [_as_inputs(item) for item in itertools.islice(iter(calibration_data), recipe.calibration_samples)]
    if not data:
        raise ValueError("calibration data is empty: give at least one model input")
    example = tuple(example_inputs) if example_inputs is not None else data[0]
    start = time.perf_counter()
    if isinstance(model, torch.nn.Module):
        gm = _capture_dynamic(model, example, data)
    else:
        gm = from_onnx(model)
    run_standard_passes(gm, sample_inputs=example)
    layers, kept_float = select_layers(gm, recipe)
    if recipe.rotate is not None:
        _rotate(gm, recipe.rotate, layers, example)
        layers, kept_float = select_layers(gm, recipe)
    if recipe.split is not None:
        _split(gm, recipe.split, layers, example)
        layers, kept_float = select_layers(gm, recipe)
    if recipe.activations is not None:
        PassManager([StabilizeGelu(n.name for n in layers)], sample_inputs=example).run(gm)
    plan = _calibrate_and_plan(gm, recipe, data, layers, layers_per_pass, progress)
    for report in plan.reports:
        layer = next(n for n in layers if n.name == report.layer)
        block = rotation_of(layer)
        if block is not None:
            report.notes.append(f"input rotated by a {block}-block Hadamard (weight counter-rotated)")
        part = layer.meta.get(SPLIT_KEY)
        if part is not None:
            report.notes.append(f"SplitQuant part {part['part'] + 1}/{part['clusters']} of {part['layer']}")
    convs = {n.name for n in layers if n.target == torch.ops.aten.conv2d.default}
    QuantizeLinears({k: p for k, p in plan.weights.items() if k not in convs}, plan.activations).run(gm)
    QuantizeConvs({k: p for k, p in plan.weights.items() if k in convs}, plan.activations).run(gm)
    embeddings, _ = select_embeddings(gm, recipe)
    table_plans, table_reports = plan_embeddings(gm, recipe, embeddings)
    QuantizeEmbeddings(table_plans).run(gm)
    fuse = [FuseSplitLinears()] if recipe.split is not None else []
    PassManager([*fuse, FoldPreshift(), EliminateDeadCode()], sample_inputs=example).run(gm)
    info = {"source": gm.meta.get("bitfold_source"), "calibration_items": len(data),
            "seconds": round(time.perf_counter() - start, 2)}
    return QuantizedModel(gm, recipe.describe(), table_reports + plan.reports, kept_float, info)
