"""Calibration: run a canonical FX graph over data and record, per layer, its input statistics.

For each chosen layer ``y = aten.linear(x, W, b)`` the input ``x`` of every batch is viewed as
rows ``x.reshape(-1, K)`` (one row per token, ``K = in_features``); for a convolution
``aten.conv2d(x, W, …)`` the rows are its input patches (:mod:`bitfold.ir.conv_patches`: one
row per output position and group, ``K = C/G · kh · kw``). The rows are folded into running
statistics, so memory is bounded by ``max_tokens · K`` per layer whatever the data size:

* ``channel_absmax[j] = max over all rows r of |x[r, j]|`` (the per-input-channel range that
  the pre-shifted exponent bias uses), and ``absmax = max_j channel_absmax[j]``;
* ``tokens``: the number of rows seen;
* ``sample``: a uniform sample without replacement of ``min(tokens, max_tokens)`` rows, which
  the searches of :mod:`bitfold.passes.fp_search` use as ``X``. It is a reservoir by random
  keys: every row gets an independent key ``u ~ U(0, 1)`` and the sample is the rows with the
  ``max_tokens`` largest keys seen so far. Each subset of that size is then equally likely, the
  sample updates batch by batch, and the keys come from a generator seeded with ``seed``, so
  the sample is deterministic. Every layer uses the same key stream, so layers that read the
  same tensor (Q, K and V) sample the same tokens;
* ``sample_group``: for a grouped convolution, the group each sampled row belongs to.

Why a :class:`torch.fx.Interpreter` and not hooks: in canonical form a linear layer is a
``call_function`` node, not a module, so there is no module to hook; the alternative is
rewriting the graph with observer nodes and undoing it afterwards. The interpreter runs the
graph unchanged, sees every node with its materialized arguments (so a statistic is tied to
the exact ``fx.Node`` the later passes rewrite), frees each intermediate after its last use,
and costs one Python dispatch per node, negligible next to the GEMMs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import torch
from torch import fx
from tqdm.auto import tqdm

from bitfold.ir.conv_patches import CONV2D, ConvGeometry, conv_geometry, patch_rows

LINEAR = torch.ops.aten.linear.default


class CalibrationError(ValueError):
    """Calibration data that cannot be used: empty, or an activation holding NaN/Inf."""


@dataclass
class LayerStats:
    """Input statistics of one linear or convolution layer (see the module docstring)."""

    name: str
    #: [K] float32, max |x| per input channel over every token seen.
    channel_absmax: torch.Tensor
    #: Number of tokens (rows of the flattened input) seen.
    tokens: int
    #: [min(tokens, max_tokens), K] float32, a uniform sample of input rows.
    sample: torch.Tensor
    #: [min(tokens, max_tokens)] int32, each sampled row's group (grouped convolutions only).
    sample_group: Optional[torch.Tensor] = None

    @property
    def absmax(self) -> float:
        """The tensor-wide max |x|."""
        return float(self.channel_absmax.max())


class _Observer:
    """Running statistics of one layer's input; memory is O(max_tokens · K)."""

    def __init__(self, node: fx.Node, max_tokens: int, seed: int, geometry: Optional[ConvGeometry] = None) -> None:
        self.node = node
        self.geometry = geometry
        self.max_tokens = max_tokens
        self.generator = torch.Generator().manual_seed(seed)
        self.channel_absmax: Optional[torch.Tensor] = None
        self.tokens = 0
        self.keys = torch.empty(0)
        self.rows: Optional[torch.Tensor] = None
        self.group: Optional[torch.Tensor] = None

    def _rows(self, x: torch.Tensor) -> tuple:
        x = x.detach().to(torch.float32)
        if self.geometry is None:
            return x.reshape(-1, x.shape[-1]), None
        try:
            return patch_rows(x, self.geometry)
        except ValueError as err:
            raise CalibrationError(f"layer '{self.node.name}': {err}") from None

    def update(self, x: torch.Tensor, batch: int) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() == 0:
            raise CalibrationError(f"layer '{self.node.name}': its input is not a tensor with a channel axis")
        rows, group = self._rows(x)
        if not bool(torch.isfinite(rows).all()):
            bad = int((~torch.isfinite(rows)).sum())
            raise CalibrationError(
                f"layer '{self.node.name}': its input holds {bad} NaN/Inf value(s) in calibration batch {batch}"
            )
        absmax = rows.abs().amax(0) if rows.shape[0] else torch.zeros(rows.shape[1])
        if self.channel_absmax is None:
            self.channel_absmax = absmax
            self.rows = rows[:0].clone()
        elif absmax.shape != self.channel_absmax.shape:
            raise CalibrationError(
                f"layer '{self.node.name}': input has {absmax.numel()} channels in batch {batch}, "
                f"{self.channel_absmax.numel()} before"
            )
        else:
            self.channel_absmax = torch.maximum(self.channel_absmax, absmax)
        self.tokens += rows.shape[0]
        keys = torch.rand(rows.shape[0], generator=self.generator)
        keys = torch.cat([self.keys, keys])
        rows = torch.cat([self.rows, rows])
        if group is not None:
            group = group if self.group is None else torch.cat([self.group, group])
        if keys.numel() > self.max_tokens:
            keep = keys.topk(self.max_tokens).indices
            keys, rows, group = keys[keep], rows[keep], None if group is None else group[keep]
        self.keys, self.rows, self.group = keys, rows, group

    def stats(self) -> LayerStats:
        assert self.channel_absmax is not None and self.rows is not None
        return LayerStats(self.node.name, self.channel_absmax, self.tokens, self.rows, self.group)


class _Recorder(fx.Interpreter):
    """Runs the graph, handing each observed layer's input to its observer before the layer runs."""

    def __init__(self, gm: fx.GraphModule, observers: Dict[fx.Node, _Observer]) -> None:
        super().__init__(gm)
        self.observers = observers
        self.batch = 0

    def run_node(self, n: fx.Node) -> Any:
        observer = self.observers.get(n)
        if observer is not None:
            observer.update(self.env[n.args[0]], self.batch)
        return super().run_node(n)


def linear_layers(gm: fx.GraphModule) -> List[fx.Node]:
    """The quantizable linear layers of ``gm``: ``aten.linear`` nodes whose weight is a ``get_attr``."""
    return [n for n in gm.graph.nodes if _is_quantizable_linear(n)]


def _is_quantizable_linear(node: fx.Node, kinds=(LINEAR,)) -> bool:
    return (
        node.op == "call_function"
        and node.target in kinds
        and len(node.args) >= 2
        and isinstance(node.args[0], fx.Node)
        and isinstance(node.args[1], fx.Node)
        and node.args[1].op == "get_attr"
    )


def _resolve(gm: fx.GraphModule, layers: Optional[Sequence[Union[fx.Node, str]]]) -> List[fx.Node]:
    if layers is None:
        return linear_layers(gm)
    by_name = {n.name: n for n in gm.graph.nodes}
    resolved = []
    for layer in layers:
        node = by_name.get(layer) if isinstance(layer, str) else layer
        if node is None or node.graph is not gm.graph:
            raise ValueError(f"calibration: layer {getattr(layer, 'name', layer)!r} is not a node of this graph")
        if not _is_quantizable_linear(node, (LINEAR, CONV2D)):
            raise ValueError(
                f"calibration: node '{node.name}' ({node.op} {node.target}) is not an aten.linear or aten.conv2d "
                "with a get_attr weight"
            )
        resolved.append(node)
    return resolved


def calibrate(
    gm: fx.GraphModule,
    data: Iterable[Any],
    layers: Optional[Sequence[Union[fx.Node, str]]] = None,
    max_tokens: int = 2048,
    seed: int = 0,
    progress: bool = True,
) -> Dict[str, LayerStats]:
    """Run ``gm`` on every item of ``data`` and return the input statistics of ``layers``.

    ``data`` yields tuples of positional inputs (a lone tensor counts as a 1-tuple).
    ``layers`` are linear or conv2d nodes or their names (default: every quantizable linear). The result maps
    node name to :class:`LayerStats`. Raises :class:`CalibrationError` (a ``ValueError``) for
    empty data or a NaN/Inf activation, naming the layer.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    nodes = _resolve(gm, layers)
    observers = {node: _Observer(node, max_tokens, seed, conv_geometry(gm, node)) for node in nodes}
    recorder = _Recorder(gm, observers)
    total = len(data) if hasattr(data, "__len__") else None  # type: ignore[arg-type]
    with torch.no_grad():
        for item in tqdm(data, total=total, desc="calibrating", unit="batch", disable=not progress):
            recorder.run(*((item,) if isinstance(item, torch.Tensor) else tuple(item)))
            recorder.batch += 1
    if recorder.batch == 0:
        raise CalibrationError("calibration data is empty")
    return {node.name: observer.stats() for node, observer in observers.items()}
