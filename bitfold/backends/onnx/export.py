"""``export_onnx``: a bitfold quantized model as an ONNX file that stock ONNX Runtime runs.

Route: ``torch.onnx.export`` (the dynamo exporter) for the graph, with bitfold's ops
substituted (:mod:`~bitfold.backends.onnx.capture`), then ONNX-level lowerings of those
ops (:mod:`~bitfold.backends.onnx.lowering`), then naming, metadata, ``onnx.checker`` and
an atomic write. Why this route and not an ONNX builder of our own from the FX graph:

* the quantized graph is ordinary ATen plus a few bitfold ops; ``torch.onnx.export``
  already translates every ATen op the three model families use (attention, norms,
  rotary embeddings, convolutions) with symbolic shapes, and is maintained with PyTorch —
  re-implementing ~60 ATen translations and shape arithmetic here would be a second,
  weaker exporter;
* what is bitfold's own — the number formats — needs the constant values (codes, scales,
  shifts) to pick Q/DQ vs a subgraph, repack codes for ONNX types and MatMulNBits, and
  build decode tables. ``torch.onnx`` translation functions only see symbolic tensors, so
  the bitfold ops travel through the export as placeholder nodes carrying all their
  arguments, and are lowered afterwards on the ONNX graph where the values are at hand.
* new bitfold ops plug in through one registry
  (:func:`~bitfold.backends.onnx.registry.register_lowering` /
  :func:`~bitfold.backends.onnx.registry.register_decomposition`).

The files use opset 21 (``int4``/``uint4`` Q/DQ with blocks), local functions in the
``bitfold.quant`` domain, and, in compressed mode, ``com.microsoft.MatMulNBits``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import torch
from torch import fx
from torch.fx.experimental.symbolic_shapes import optimization_hint

import bitfold
from bitfold.backends.onnx import (  # noqa: F401  (importing registers the lowerings)
    decompositions, lower_codebook_linear, lower_fake_quantize, lower_gelu, lower_hadamard, lower_quantized_conv2d,
    lower_quantized_embedding, lower_quantized_linear,
)
from bitfold.backends.onnx.capture import export_graph
from bitfold.backends.onnx.dynamic_axes import DynamicAxes, dynamic_shapes, name_dynamic_axes
from bitfold.backends.onnx.errors import OnnxExportError
from bitfold.backends.onnx.lowering import ExportOptions, lower_placeholders
from bitfold.backends.onnx.ort_guards import guard_requantization
from bitfold.backends.onnx.metadata import write_metadata
from bitfold.backends.onnx.model_file import check, save_atomically

OPSET = 21
MODES = ("simulate", "compressed")
ACCURACY_LEVELS = (0, 1, 2, 3, 4)


def _graph_module(model: Any) -> fx.GraphModule:
    gm = getattr(model, "graph_module", model)
    if not isinstance(gm, fx.GraphModule):
        raise OnnxExportError(f"export_onnx expects a bitfold QuantizedModel or a torch.fx.GraphModule, "
                              f"got {type(model).__name__}")
    return gm


def _example_inputs(gm: fx.GraphModule, given: Optional[Sequence[Any]]) -> tuple:
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if given is not None:
        given = tuple(given) if isinstance(given, (tuple, list)) else (given,)
        if len(given) != len(placeholders):
            raise OnnxExportError(f"the graph takes {len(placeholders)} inputs "
                                  f"({', '.join(p.name for p in placeholders)}), got {len(given)} example inputs")
        return given
    examples = []
    for node in placeholders:
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise OnnxExportError(f"input {node.name!r} has no recorded shape: pass example_inputs to export_onnx")
        shape = [int(optimization_hint(d)) if isinstance(d, torch.SymInt) else int(d) for d in val.shape]
        examples.append(torch.zeros(shape, dtype=val.dtype))
    return tuple(examples)


def _output_names(gm: fx.GraphModule, given: Optional[Sequence[str]]) -> list:
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    count = len(out) if isinstance(out, (tuple, list)) else 1
    if given is not None:
        if len(given) != count:
            raise OnnxExportError(f"the graph has {count} outputs, got {len(given)} output names")
        return list(given)
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def export_onnx(
    quantized_model: Any,
    path: Union[str, "os.PathLike[str]"],
    example_inputs: Optional[Sequence[Any]] = None,
    mode: str = "simulate",
    *,
    accuracy_level: int = 4,
    matmul_nbits: bool = True,
    input_names: Optional[Sequence[str]] = None,
    output_names: Optional[Sequence[str]] = None,
    dynamic_axes: Optional[DynamicAxes] = None,
) -> Path:
    """Export ``quantized_model`` (a ``QuantizedModel`` or GraphModule) to the ONNX file ``path``.

    ``mode="simulate"`` keeps every quantize point in standard ONNX ops (Q/DQ where
    ONNX Runtime has the type, an exact local function where not) with weights stored
    already on their grids; ``mode="compressed"`` stores weights as low-bit codes and uses
    ``com.microsoft.MatMulNBits`` for INT4 linears (``matmul_nbits=False`` to use
    DequantizeLinear + MatMul instead) at ``accuracy_level`` (0-4; 4 = int8 compute).
    ``example_inputs`` trace the graph (default: zeros shaped like the captured inputs);
    use a batch of at least 2 for a dynamic batch axis. Graph inputs keep the graph's
    argument names unless ``input_names`` is given; see
    :mod:`~bitfold.backends.onnx.dynamic_axes` for ``dynamic_axes``. Returns ``path``.
    """
    if mode not in MODES:
        raise OnnxExportError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if accuracy_level not in ACCURACY_LEVELS:
        raise OnnxExportError(f"accuracy_level must be one of {ACCURACY_LEVELS}, got {accuracy_level!r}")
    path = Path(path)
    start = time.perf_counter()
    gm = _graph_module(quantized_model)
    inputs = _example_inputs(gm, example_inputs)
    names = list(input_names) if input_names is not None else [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    if len(names) != len(inputs):
        raise OnnxExportError(f"the graph takes {len(inputs)} inputs, got {len(names)} input names")
    model = export_graph(gm, inputs, names, _output_names(gm, output_names),
                         dynamic_shapes(inputs, names, dynamic_axes), OPSET)
    options = ExportOptions(mode=mode, opset=OPSET, accuracy_level=accuracy_level, matmul_nbits=matmul_nbits)
    ctx = lower_placeholders(model, options)
    guard_requantization(model)
    axes = name_dynamic_axes(model, dynamic_axes)
    model.producer_name, model.producer_version = "bitfold", bitfold.__version__
    model.graph.name = type(gm).__name__ if type(gm).__name__ != "GraphModule" else "bitfold_model"
    uses_nbits = any("accuracy_level" in facts for facts in ctx.layers.values())
    entries: Dict[str, Any] = {
        "version": bitfold.__version__, "mode": mode, "opset": OPSET,
        "recipe": getattr(quantized_model, "recipe", None), "layers": ctx.layers, "dynamic_axes": axes,
        "accuracy_level": accuracy_level if uses_nbits else None,
        "export_seconds": round(time.perf_counter() - start, 2),
    }
    write_metadata(model, entries)
    check(model, str(path))
    save_atomically(model, path)
    return path

