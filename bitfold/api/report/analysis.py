"""Measure a quantized model against its float original, layer by layer, for the report.

On evaluation inputs (held out from calibration where the data allow), for every quantized
layer ``L`` with float output ``y`` and quantized output ``ŷ``:

* **output error**: ``MSE = mean (ŷ − y)²`` and ``SQNR = 10·log10(Σ y² / Σ (ŷ − y)²)`` of
  ``L``'s output inside the fully quantized model, so the errors of the layers before it
  are included (up to ``max_rows`` token rows per evaluation batch);
* **sensitivity**: the same two numbers for the *model's* output when only ``L`` is
  quantized: the float graph runs with ``L`` replaced by its quantized version
  (:mod:`bitfold.api.report.layers`). The lowest SQNR marks the layer that costs most;
* **weight SQNR** between ``W'`` (the weight as quantized) and ``Ŵ``;
* **histograms** of the weight and of the activation in units of their quantizer's
  scale (``x / s + z``), where the format's grid is a fixed set of points;
* LLM-FP4's per-channel **exponent shifts** ``k`` next to ``log2`` of each input channel's
  maximum, which the shifts should follow.

The model's own outputs are compared the same way (SQNR, MSE, cosine of the flattened
outputs). An :class:`Analysis` is plain data and round-trips through JSON.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import fx
from tqdm.auto import tqdm

from bitfold.api.quantized_model import QuantizedModel
from bitfold.api.report.layers import QuantizedLayer, match_layers
from bitfold.ir.quantizable import classify

ANALYSIS_FILE = "analysis.json"
ANALYSIS_VERSION = 1


@dataclass
class Histogram:
    """Counts over ``edges`` (``len(edges) = len(counts) + 1``) of values in ``units``."""

    edges: List[float]
    counts: List[int]
    units: str
    #: The quantizer's grid in the same units; ``None`` when the values are not quantized.
    grid: Optional[List[float]] = None
    #: Share of the values the quantizer saturates: beyond an end of the grid by more than half a step.
    beyond_grid: float = 0.0
    #: Share of the values outside ``edges`` (the plot's range).
    outside: float = 0.0
    values: int = 0


@dataclass
class LayerAnalysis:
    layer: str
    weight_name: str
    shape: Tuple[int, int]
    weight_format: str
    act_format: Optional[str]
    weight_sqnr_db: float
    output_mse: float
    output_sqnr_db: float
    sensitivity_mse: Optional[float]
    sensitivity_sqnr_db: Optional[float]
    weight_hist: Histogram
    act_hist: Histogram
    group: str = ""
    granularity: str = ""
    #: The error :func:`bitfold.quantize` measured for the layer alone on calibration rows.
    local_rel_error: Optional[float] = None
    shift_range: Optional[Tuple[int, int]] = None


@dataclass
class ShiftGroup:
    """Layers that share one input and one pre-shift ``k`` (Q/K/V, gate/up)."""

    group: str
    layers: List[str]
    shift: List[int]
    #: ``max |x_j|`` of each input channel on the evaluation inputs.
    channel_absmax: List[float]


@dataclass
class Analysis:
    recipe: Dict[str, Any]
    source: str
    inputs: Dict[str, Any]
    output: Dict[str, float]
    layers: List[LayerAnalysis]
    shifts: List[ShiftGroup] = field(default_factory=list)
    kept_float: Dict[str, str] = field(default_factory=dict)
    #: ``[reason, count, [examples]]`` for the float graph's ops that stay float.
    float_ops: List[Tuple[str, int, List[str]]] = field(default_factory=list)
    version: int = ANALYSIS_VERSION

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Dict[str, Any], where: str = "analysis") -> "Analysis":
        if not isinstance(data, dict) or data.get("version") != ANALYSIS_VERSION:
            raise ValueError(f"{where}: not a bitfold analysis of version {ANALYSIS_VERSION}")
        try:
            layers = [LayerAnalysis(**{**row, "shape": tuple(row["shape"]),
                                       "shift_range": None if row.get("shift_range") is None
                                       else tuple(row["shift_range"]),
                                       "weight_hist": Histogram(**row["weight_hist"]),
                                       "act_hist": Histogram(**row["act_hist"])})
                      for row in data["layers"]]
            shifts = [ShiftGroup(**row) for row in data.get("shifts", [])]
            float_ops = [(reason, count, list(names)) for reason, count, names in data.get("float_ops", [])]
            rest = {k: v for k, v in data.items() if k not in ("layers", "shifts", "float_ops")}
            return cls(layers=layers, shifts=shifts, float_ops=float_ops, **rest)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: malformed analysis ({err})") from None

    def save(self, directory: "os.PathLike[str] | str") -> str:
        """Write ``analysis.json`` into ``directory`` atomically; returns its path."""
        path = os.path.join(os.fspath(directory), ANALYSIS_FILE)
        write_atomically(path, json.dumps(self.to_json(), allow_nan=False) + "\n")
        return path

    @classmethod
    def load(cls, directory: "os.PathLike[str] | str") -> "Analysis":
        path = os.path.join(os.fspath(directory), ANALYSIS_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no analysis there")
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        return cls.from_json(data, path)


def default_file_mode() -> int:
    """``0o666`` less the process umask: the mode ``open()`` would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomically(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, then rename."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, default_file_mode())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------- measuring


def sqnr_db(signal: float, noise: float) -> float:
    """``10·log10(signal / noise)``; capped at 200 dB for an exact match (JSON has no inf)."""
    if noise <= 0:
        return 200.0
    if signal <= 0:
        return -200.0
    return min(200.0, 10 * math.log10(signal / noise))


class _ErrorSum:
    """Running ``Σ y²``, ``Σ (ŷ − y)²``, ``Σ ŷ·y``, ``Σ ŷ²`` and the element count."""

    def __init__(self) -> None:
        self.signal = self.noise = self.dot = self.power = 0.0
        self.count = 0

    def add(self, out: torch.Tensor, ref: torch.Tensor) -> None:
        out, ref = out.detach().double(), ref.detach().double()
        self.signal += float(ref.pow(2).sum())
        self.noise += float((out - ref).pow(2).sum())
        self.dot += float((out * ref).sum())
        self.power += float(out.pow(2).sum())
        self.count += ref.numel()

    @property
    def mse(self) -> float:
        return self.noise / max(self.count, 1)

    @property
    def sqnr(self) -> float:
        return sqnr_db(self.signal, self.noise)

    @property
    def cosine(self) -> float:
        denom = math.sqrt(self.signal * self.power)
        return self.dot / denom if denom > 0 else 1.0


def _tensors(out: Any) -> List[torch.Tensor]:
    leaves, _ = torch.utils._pytree.tree_flatten(out)
    return [t for t in leaves if isinstance(t, torch.Tensor) and t.is_floating_point()]


class _Probe(fx.Interpreter):
    """Runs a graph, showing chosen nodes' inputs and outputs to watchers; may swap one node's op."""

    def __init__(self, gm: fx.GraphModule, inputs_of: Optional[Dict[fx.Node, Callable]] = None,
                 outputs_of: Optional[Dict[fx.Node, Callable]] = None,
                 replace: Optional[Dict[fx.Node, Callable]] = None) -> None:
        super().__init__(gm)
        self.inputs_of = inputs_of or {}
        self.outputs_of = outputs_of or {}
        self.replace = replace or {}

    def run_node(self, n: fx.Node) -> Any:
        if n in self.replace:
            return self.replace[n](self.env[n.args[0]])
        if n in self.inputs_of:
            self.inputs_of[n](self.env[n.args[0]])
        out = super().run_node(n)
        if n in self.outputs_of:
            self.outputs_of[n](out)
        return out


def _rows(t: torch.Tensor, batch: int, max_rows: int) -> torch.Tensor:
    """The same ``max_rows`` token rows of ``t`` for a given batch index in every run."""
    rows = t.detach().reshape(-1, t.shape[-1]).float()
    if rows.shape[0] <= max_rows:
        return rows
    pick = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(batch))[:max_rows]
    return rows[pick.sort().values]


def histogram(values: torch.Tensor, grid: Optional[torch.Tensor], units: str, bins: int = 60) -> Histogram:
    """Histogram over the grid's range joined with the 0.1–99.9 % quantiles of ``values``."""
    v = values.detach().reshape(-1).float()
    v = v[torch.isfinite(v)]
    if v.numel() == 0:
        return Histogram([0.0, 1.0], [0], units, None if grid is None else grid.tolist())
    sample = v if v.numel() <= 1 << 20 else v[torch.randperm(v.numel(), generator=torch.Generator().manual_seed(0))
                                              [: 1 << 20]]
    lo, hi = (float(q) for q in torch.quantile(sample, torch.tensor([0.001, 0.999])))
    beyond = 0.0
    if grid is not None:
        g = grid.sort().values
        g_lo, g_hi = float(g[0]), float(g[-1])
        lo, hi = min(lo, g_lo), max(hi, g_hi)
        # Saturated: farther beyond an end than half the last step (nearer ones round there anyway).
        half = (float(g[1] - g[0]) / 2, float(g[-1] - g[-2]) / 2) if g.numel() > 1 else (0.0, 0.0)
        beyond = float(((v < g_lo - half[0]) | (v > g_hi + half[1])).float().mean())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.02 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    counts = torch.histc(v, bins=bins, min=lo, max=hi)
    edges = torch.linspace(lo, hi, bins + 1)
    return Histogram(
        edges=[float(e) for e in edges], counts=[int(c) for c in counts], units=units,
        grid=None if grid is None else [float(g) for g in grid], beyond_grid=beyond,
        outside=float(((v < lo) | (v > hi)).float().mean()), values=int(v.numel()),
    )


class _ActivationSample:
    """Up to ``limit`` input values of one layer in its quantizer's units, and channel maxima."""

    def __init__(self, layer: QuantizedLayer, limit: int) -> None:
        self.layer, self.limit = layer, limit
        self.parts: List[torch.Tensor] = []
        self.kept = 0
        self.channel_absmax: Optional[torch.Tensor] = None
        self.batch = 0

    def __call__(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        absmax = self.layer.channel_rows(x).abs().amax(0)
        self.channel_absmax = absmax if self.channel_absmax is None else torch.maximum(self.channel_absmax, absmax)
        room = self.limit - self.kept
        if room > 0:
            u = self.layer.quantized_input(x)
            q = self.layer.act_quantizer
            u = (q.to_units(u) if q is not None else u).reshape(-1)
            if u.numel() > room:
                u = u[torch.randperm(u.numel(), generator=torch.Generator().manual_seed(self.batch))[:room]]
            self.parts.append(u)
            self.kept += u.numel()
        self.batch += 1

    def histogram(self, bins: int) -> Histogram:
        q = self.layer.act_quantizer
        values = torch.cat(self.parts) if self.parts else torch.zeros(0)
        if q is None:
            return histogram(values, None, "activation (stays float)", bins)
        grid = q.grid
        units = f"activation / scale ({q.fmt})" if grid is not None else f"activation ({q.fmt}, scales per block)"
        return histogram(values, grid, units, bins)


def _weight_histogram(layer: QuantizedLayer, bins: int) -> Histogram:
    q = layer.weight_quantizer
    grid = q.grid
    if grid is None:
        return histogram(layer.weight, None, f"weight ({q.fmt}, scales per block)", bins)
    zp = " + zero point" if q.zero_point is not None else ""
    return histogram(q.to_units(layer.weight), grid, f"weight / scale{zp} ({q.fmt})", bins)


def _float_ops(gm: fx.GraphModule, examples: int = 4) -> List[Tuple[str, int, List[str]]]:
    by_reason: Dict[str, List[str]] = defaultdict(list)
    for node in gm.graph.nodes:
        decision = classify(gm, node)
        if decision is not None and not decision.quantizable:
            by_reason[decision.reason].append(node.name)
    ranked = sorted(by_reason.items(), key=lambda kv: -len(kv[1]))
    return [(reason, len(names), names[:examples]) for reason, names in ranked]


def fingerprint(items: Sequence[Tuple[Any, ...]]) -> str:
    """A short hash of the evaluation inputs, so reports of several recipes compare like with like."""
    h = hashlib.sha256()
    for item in items:
        for x in item:
            if isinstance(x, torch.Tensor):
                h.update(str((x.dtype, tuple(x.shape))).encode())
                h.update(x.detach().contiguous().cpu().numpy().tobytes())
            else:
                h.update(repr(x).encode())
    return h.hexdigest()[:16]


def analyze(
    float_gm: fx.GraphModule,
    quantized: QuantizedModel,
    inputs: Sequence[Tuple[Any, ...]],
    sensitivity: bool = True,
    progress: bool = False,
    max_rows: int = 128,
    bins: int = 60,
    inputs_description: str = "",
    held_out: bool = True,
    source: str = "",
) -> Analysis:
    """Compare ``quantized`` with ``float_gm`` (the float model in canonical form, with the
    node names :func:`bitfold.quantize` saw) on ``inputs`` (tuples of positional inputs);
    see the module docstring for what is measured."""
    inputs = [tuple(item) if isinstance(item, (tuple, list)) else (item,) for item in inputs]
    if not inputs:
        raise ValueError("analysis needs at least one evaluation input")
    qgm = quantized.graph_module
    layers = match_layers(float_gm, qgm)
    samples = {layer.float_node: _ActivationSample(layer, 1 << 18) for layer in layers}
    float_rows: Dict[str, List[torch.Tensor]] = defaultdict(list)
    errors = {layer.name: _ErrorSum() for layer in layers}
    model_error = _ErrorSum()
    float_outputs: List[List[torch.Tensor]] = []

    def keep_rows(name: str, batch: int) -> Callable:
        return lambda out: float_rows[name].append(_rows(out, batch, max_rows))

    def compare_rows(layer: QuantizedLayer, batch: int) -> Callable:
        return lambda out: errors[layer.name].add(_rows(layer.as_float_output(out), batch, max_rows),
                                                  float_rows[layer.name][batch])

    with torch.no_grad():
        for b, item in enumerate(inputs):
            probe = _Probe(float_gm, inputs_of=samples,
                           outputs_of={layer.float_node: keep_rows(layer.name, b) for layer in layers})
            float_outputs.append(_tensors(probe.run(*item)))
            probe = _Probe(qgm, outputs_of={layer.quantized_node: compare_rows(layer, b) for layer in layers})
            for out, ref in zip(_tensors(probe.run(*item)), float_outputs[b]):
                model_error.add(out, ref)
        del float_rows
        sensitivities: Dict[str, _ErrorSum] = {}
        if sensitivity:
            for layer in tqdm(layers, desc="sensitivity", unit="layer", disable=not progress):
                err = _ErrorSum()
                probe = _Probe(float_gm, replace={layer.float_node: layer})
                for b, item in enumerate(inputs):
                    for out, ref in zip(_tensors(probe.run(*item)), float_outputs[b]):
                        err.add(out, ref)
                sensitivities[layer.name] = err

    reports = {r.layer: r for r in quantized.layers}
    results, groups = [], {}
    for layer in layers:
        report = reports.get(layer.name)
        sens = sensitivities.get(layer.name)
        wq = layer.weight_quantizer
        results.append(LayerAnalysis(
            layer=layer.name, weight_name=layer.weight_name, shape=tuple(layer.weight.shape),
            weight_format=wq.fmt, act_format=None if layer.act_quantizer is None else layer.act_quantizer.fmt,
            weight_sqnr_db=sqnr_db(float(layer.weight.double().pow(2).sum()),
                                   float((layer.weight_hat.double() - layer.weight.double()).pow(2).sum())),
            output_mse=errors[layer.name].mse, output_sqnr_db=errors[layer.name].sqnr,
            sensitivity_mse=None if sens is None else sens.mse,
            sensitivity_sqnr_db=None if sens is None else sens.sqnr,
            weight_hist=_weight_histogram(layer, bins), act_hist=samples[layer.float_node].histogram(bins),
            group=report.group if report is not None else "",
            granularity=layer.layout.split("/", 1)[1],
            local_rel_error=None if report is None else report.output_rel_error,
            shift_range=None if layer.shift is None else (int(layer.shift.min()), int(layer.shift.max())),
        ))
        if layer.shift is not None:
            key = results[-1].group or layer.name
            if key in groups:
                groups[key].layers.append(layer.name)
            else:
                absmax = samples[layer.float_node].channel_absmax
                groups[key] = ShiftGroup(key, [layer.name], [int(k) for k in layer.shift.reshape(-1)],
                                         [float(a) for a in absmax])
    recipe = quantized.recipe
    return Analysis(
        recipe={k: recipe.get(k) for k in ("name", "version", "description")},
        source=source or str(quantized.info.get("source") or ""),
        inputs={"items": len(inputs), "held_out": held_out, "description": inputs_description,
                "fingerprint": fingerprint(inputs), "max_rows": max_rows},
        output={"mse": model_error.mse, "sqnr_db": model_error.sqnr, "cosine": model_error.cosine},
        layers=results,
        shifts=list(groups.values()),
        kept_float=dict(quantized.kept_float),
        float_ops=_float_ops(float_gm),
    )

