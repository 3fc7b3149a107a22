"""Recipes: a named, versioned description of how to quantize a model, loaded from YAML.

A recipe says which layers to quantize, in which number formats (scaled per tensor, channel,
group, or per block of a block format such as NVFP4), how scales are chosen (``minmax``, or
a ``search``), whether activations are quantized and with LLM-FP4's pre-shifted exponent
bias or SmoothQuant-style migration, whether layer inputs are Hadamard-rotated first, and
how much calibration data to use. The named recipes live next to this file as
``<name>.yaml``; any other YAML file with the same schema works too. Unknown keys are
errors, so a typo never silently does nothing.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import yaml

from bitfold.ir import formats
from bitfold.ir.hadamard import is_block_size

RECIPE_DIR = Path(__file__).parent
SCHEMA_VERSION = 1


class RecipeError(ValueError):
    """A recipe file or name that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class TensorSpec:
    """How one tensor kind (weights or activations) is quantized."""

    bits: int
    kind: str = "fp"                      # "fp" (LLM-FP ExMy family), "int", or "format"
    formats: Optional[List[str]] = None   # candidate formats; default: per kind and bits
    # weights: channel | group | block; activations: tensor | block. "block" means a block
    # format (mxfp4, nvfp4...), whose scales are per block of the format's size; an
    # activation's are computed from the data at run time, a weight's from its blocks' maxima
    # (minmax) or by the block-scale search (search: bitfold/passes/block_scales.py)
    granularity: str = "channel"
    group_size: Optional[int] = None
    method: str = "minmax"                # minmax | search
    symmetric: bool = True                # int only: False = min/max with a zero point
    # activations only, LLM-FP4's pre-shifted exponent bias: false | "search" (per-channel
    # shifts chosen by error, the format searched after shifting; ``true`` means this) |
    # "paper" (shifts from channel maxima, clipped to [0, 2^E - 1], the format of the FPQ search)
    preshift: Union[bool, str] = False
    # where the compensating 2^-k goes: "quantized" (the quantized weight's columns, exactly,
    # as the paper does) or "float" (W's columns before quantizing W)
    shift_weights: str = "quantized"
    # weights only: "nearest", or "gptq" (error-compensated rounding on the chosen grid,
    # against the quantized activation the layer sees; bitfold/passes/gptq.py)
    rounding: str = "nearest"

    def preshift_mode(self) -> Optional[str]:
        """``None``, ``"search"`` or ``"paper"`` (``preshift: true`` is ``"search"``)."""
        if self.preshift is False or self.preshift == "none":
            return None
        return "search" if self.preshift is True else str(self.preshift)


@dataclass(frozen=True)
class SearchSpec:
    grid: str = "clip"                    # clip | bias (the paper's grid)
    points: int = 100
    rounds: int = 3
    stride: int = 1                       # >1: coarse-to-fine grid


@dataclass(frozen=True)
class SplitSpec:
    """SplitQuant layer splitting before quantization (:mod:`bitfold.passes.split_layers`)."""

    k: int = 3                            # clusters per layer, 2 to 4
    per_channel: bool = True              # cluster each output channel's values, or the whole layer's
    layers: List[str] = field(default_factory=lambda: ["linear"])   # kinds to split, among those quantized
    exclude: List[str] = field(default_factory=list)                # name patterns never split


@dataclass(frozen=True)
class RotateSpec:
    """Block-Hadamard rotation of layer inputs before quantization (:mod:`bitfold.passes.rotate_inputs`)."""

    # "activation": linears that read an elementwise activation's output (GELU, SiLU·up), where
    # the pre-shift has no exact fold; "all": every quantized linear
    inputs: str = "activation"
    max_block: int = 512                  # the largest Hadamard block, a power of two
    exclude: List[str] = field(default_factory=list)                # name patterns never rotated


@dataclass(frozen=True)
class Recipe:
    name: str
    version: int
    description: str
    weights: TensorSpec
    activations: Optional[TensorSpec] = None
    search: SearchSpec = SearchSpec()
    smoothquant_alpha: Optional[float] = None
    split: Optional[SplitSpec] = None
    rotate: Optional[RotateSpec] = None
    layers: List[str] = field(default_factory=lambda: ["linear"])
    exclude: List[str] = field(default_factory=list)
    calibration_samples: int = 128
    calibration_tokens: int = 2048
    source: str = ""

    def weight_formats(self) -> List[str]:
        return candidate_formats(self.weights)

    def activation_formats(self) -> List[str]:
        return [] if self.activations is None else candidate_formats(self.activations)

    def describe(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


_DEFAULT_FP = {4: ["e2m1", "e3m0", "e1m2"], 8: ["e4m3", "e5m2", "e3m4", "e2m5", "e1m6"]}


def candidate_formats(spec: TensorSpec) -> List[str]:
    """The formats a tensor spec may use, first one the MinMax default."""
    if spec.formats:
        return list(spec.formats)
    if spec.kind == "int":
        return [f"{'int' if spec.symmetric else 'uint'}{spec.bits}"]
    if spec.kind == "fp":
        if spec.bits in _DEFAULT_FP:
            return list(_DEFAULT_FP[spec.bits])
        return [f"e{e}m{spec.bits - 1 - e}" for e in range(1, spec.bits)]
    raise RecipeError(f"kind {spec.kind!r} needs an explicit 'formats' list")


def _build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    try:
        return cls(**data)
    except TypeError as err:
        raise RecipeError(f"{where}: {err}") from None


def _validate(recipe: Recipe, where: str) -> None:
    for role, spec in (("weights", recipe.weights), ("activations", recipe.activations)):
        if spec is None:
            continue
        if spec.kind not in ("fp", "int", "format"):
            raise RecipeError(f"{where}: {role}.kind must be fp, int or format, not {spec.kind!r}")
        if spec.method not in ("minmax", "search"):
            raise RecipeError(f"{where}: {role}.method must be minmax or search, not {spec.method!r}")
        if spec.granularity == "group" and not spec.group_size:
            raise RecipeError(f"{where}: {role}.granularity 'group' needs group_size")
        for name in candidate_formats(spec):
            try:
                formats.get(name)
            except formats.FormatError as err:
                raise RecipeError(f"{where}: {role}: {err}") from None
    _validate_granularity(recipe.weights, "weights", ("channel", "group", "block"), where)
    if recipe.activations is not None:
        _validate_granularity(recipe.activations, "activations", ("tensor", "block"), where)
    if recipe.weights.preshift:
        raise RecipeError(f"{where}: preshift applies to activations, not weights")
    acts = recipe.activations
    if acts is not None and acts.preshift_mode() not in (None, "search", "paper"):
        raise RecipeError(f"{where}: activations.preshift must be false, true, search or paper, not {acts.preshift!r}")
    if acts is not None and acts.shift_weights not in ("quantized", "float"):
        raise RecipeError(f"{where}: activations.shift_weights must be quantized or float, not {acts.shift_weights!r}")
    if acts is not None and acts.preshift_mode() is not None and (acts.kind != "fp" or recipe.smoothquant_alpha):
        raise RecipeError(f"{where}: preshift needs fp activations and no smoothquant_alpha")
    if recipe.weights.rounding not in ("nearest", "gptq"):
        raise RecipeError(f"{where}: weights.rounding must be nearest or gptq, not {recipe.weights.rounding!r}")
    if acts is not None and acts.rounding != "nearest":
        raise RecipeError(f"{where}: rounding applies to weights; activations round to nearest")
    if recipe.weights.rounding == "gptq" and acts is not None and acts.shift_weights == "float":
        raise RecipeError(f"{where}: weights.rounding gptq does not combine with activations.shift_weights float")
    if recipe.search.grid not in ("clip", "bias"):
        raise RecipeError(f"{where}: search.grid must be clip or bias, not {recipe.search.grid!r}")
    bad = sorted(set(recipe.layers) - {"linear", "act_matmul", "embedding", "conv"})
    if bad:
        raise RecipeError(f"{where}: unknown layer kind(s) {', '.join(bad)}")
    if recipe.activations is not None and recipe.activations.granularity == "block" and "conv" in recipe.layers:
        raise RecipeError(f"{where}: block-scaled activations are built for linear layers (blocks along the "
                          "input features); drop conv from layers")
    if recipe.split is not None:
        _validate_split(recipe.split, recipe.layers, where)
    if recipe.rotate is not None:
        _validate_rotate(recipe.rotate, recipe.layers, where)


def _validate_granularity(spec: TensorSpec, role: str, allowed: tuple, where: str) -> None:
    """``block`` goes with block formats and nothing else; activation block scales are not searched or shifted."""
    if spec.granularity not in allowed:
        raise RecipeError(f"{where}: {role}.granularity must be {' or '.join(allowed)}, not {spec.granularity!r}")
    found = {name: formats.get(name) for name in candidate_formats(spec)}
    blocked = {name: f for name, f in found.items() if isinstance(f, formats.BlockFormat)}
    if spec.granularity != "block":
        if blocked:
            name, f = next(iter(blocked.items()))
            raise RecipeError(f"{where}: {role}: {name} scales every block of {f.block_size} values itself; "
                              "set granularity: block")
        return
    if len(blocked) != len(found):
        plain = sorted(set(found) - set(blocked))
        raise RecipeError(f"{where}: {role}.granularity block needs block formats (mxfp4, nvfp4, ...), "
                          f"not {', '.join(plain)}")
    if len(found) > 1:
        raise RecipeError(f"{where}: {role}: give one block format, not {', '.join(found)}")
    (name, f), = found.items()
    if spec.group_size is not None:
        raise RecipeError(f"{where}: {role}: {name}'s blocks are {f.block_size} values; drop group_size")
    if role == "activations" and (spec.method != "minmax" or spec.preshift_mode() is not None):
        raise RecipeError(f"{where}: {role}: block-format activations take their scales from each block's "
                          "max at run time (method: minmax, no preshift)")


def _validate_rotate(rotate: RotateSpec, quantized: List[str], where: str) -> None:
    if rotate.inputs not in ("activation", "all"):
        raise RecipeError(f"{where}: rotate.inputs must be activation or all, not {rotate.inputs!r}")
    if not is_block_size(rotate.max_block):
        raise RecipeError(f"{where}: rotate.max_block must be a power of two >= 2, not {rotate.max_block!r}")
    if "linear" not in quantized:
        raise RecipeError(f"{where}: rotate applies to linear layers, which the recipe does not quantize "
                          f"(layers: {', '.join(quantized)})")


def _validate_split(split: SplitSpec, quantized: List[str], where: str) -> None:
    if not isinstance(split.k, int) or not 2 <= split.k <= 4:
        raise RecipeError(f"{where}: split.k must be an integer from 2 to 4, not {split.k!r}")
    bad = sorted(set(split.layers) - {"linear", "conv", "embedding"})
    if bad:
        raise RecipeError(f"{where}: split.layers: unknown layer kind(s) {', '.join(bad)}; "
                          "known: linear, conv, embedding")
    unquantized = sorted(set(split.layers) - set(quantized))
    if unquantized:
        raise RecipeError(f"{where}: split.layers names {', '.join(unquantized)}, which the recipe does not quantize "
                          f"(layers: {', '.join(quantized)}); a split layer that stays float only costs time")


def parse_recipe(data: Dict[str, Any], source: str = "<dict>") -> Recipe:
    """Build a :class:`Recipe` from the mapping a YAML file holds."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe is a mapping of keys, got {type(data).__name__}")
    data = dict(data)
    schema = data.pop("schema", SCHEMA_VERSION)
    if schema != SCHEMA_VERSION:
        raise RecipeError(f"{source}: recipe schema {schema} is not supported (this bitfold reads {SCHEMA_VERSION})")
    for key in ("name", "version", "description", "weights"):
        if key not in data:
            raise RecipeError(f"{source}: missing required key {key!r}")
    data["weights"] = _build(TensorSpec, data["weights"], f"{source}: weights")
    if data.get("activations") is not None:
        data["activations"] = _build(TensorSpec, data["activations"], f"{source}: activations")
    if "search" in data:
        data["search"] = _build(SearchSpec, data["search"], f"{source}: search")
    if data.get("split") is not None:
        data["split"] = _build(SplitSpec, data["split"], f"{source}: split")
    if data.get("rotate") is not None:
        data["rotate"] = _build(RotateSpec, data["rotate"], f"{source}: rotate")
    recipe = _build(Recipe, {**data, "source": source}, source)
    _validate(recipe, source)
    return recipe


def list_recipes() -> Dict[str, str]:
    """Named recipes and their one-line descriptions."""
    out = {}
    for path in sorted(RECIPE_DIR.glob("*.yaml")):
        out[path.stem] = load_recipe(path).description
    return out


def load_recipe(name_or_path: Union[str, os.PathLike, Recipe]) -> Recipe:
    """A named recipe (``"w4a4-fp"``) or a YAML file path."""
    if isinstance(name_or_path, Recipe):
        return name_or_path
    text = str(name_or_path)
    path = Path(text)
    if not (text.endswith((".yaml", ".yml")) or path.is_file()):
        path = RECIPE_DIR / f"{text}.yaml"
        if not path.is_file():
            names = ", ".join(p.stem for p in sorted(RECIPE_DIR.glob("*.yaml")))
            raise RecipeError(f"unknown recipe {text!r}; named recipes: {names} (or give a .yaml path)")
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from None
    return parse_recipe(data, str(path))
