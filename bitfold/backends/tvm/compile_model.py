"""``bitfold.compile``: a quantized model (or any canonical graph) → a TVM-compiled module."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch
from torch import fx

from bitfold.backends.tvm.build import build
from bitfold.backends.tvm.compiled_model import CompiledModel
from bitfold.backends.tvm.importer import GraphImporter
from bitfold.backends.tvm.signature import infer_input_specs
from bitfold.backends.tvm.target import TargetLike, resolve_target
from bitfold.ir.graph_utils import propagate_shapes

def _graph_of(model: Any, example_inputs: Optional[Sequence[Any]]) -> fx.GraphModule:
    from bitfold.api.quantized_model import QuantizedModel

    if isinstance(model, QuantizedModel):
        return model.graph_module
    if isinstance(model, fx.GraphModule):
        return model
    if isinstance(model, torch.nn.Module):
        if example_inputs is None:
            raise ValueError("compiling a torch.nn.Module needs example_inputs to capture it")
        from bitfold.ir import from_torch
        from bitfold.passes import run_standard_passes

        gm = from_torch(model, tuple(example_inputs))
        run_standard_passes(gm, sample_inputs=tuple(example_inputs))
        return gm
    raise TypeError(f"bitfold.compile takes a QuantizedModel, a canonical fx.GraphModule or an nn.Module, "
                    f"got {type(model).__name__}")

def _lacks_recorded_values(gm: fx.GraphModule) -> bool:
    return any(n.op == "call_function" and "val" not in n.meta for n in gm.graph.nodes)


def compile(  # noqa: A001 - the public name users expect (like torch.compile)
    model: Any,
    target: TargetLike = "llvm",
    example_inputs: Optional[Sequence[Any]] = None,
    dynamic_dims: Optional[Mapping[str, Mapping[int, str]]] = None,
    int8_activations: bool = False,
    lookup_tables: bool = False,
) -> CompiledModel:
    """Lower ``model``'s graph to Relax, schedule it for ``target`` and build it.

    ``model``: a :class:`~bitfold.QuantizedModel`, a canonical ``fx.GraphModule`` (from
    :func:`bitfold.ir.from_torch` / :func:`~bitfold.ir.from_onnx` and passes), or an
    ``nn.Module`` (captured with ``example_inputs`` first). ``target``: ``"llvm"``,
    ``"llvm -mcpu=native"``, ``"cuda"``, ``"cuda -arch=sm_90"``, a TVM dict or a ``Target``.
    ``example_inputs`` fix input shapes and dtypes when the graph does not record them;
    ``dynamic_dims`` (``{"input_ids": {1: "seq"}}``) names the dimensions that may vary
    (default: those the graph reads symbolically, see :mod:`.signature`).
    ``int8_activations=True`` runs quantized linears with :mod:`bitfold.codegen`'s W4A8 CPU
    kernels, which quantize activations to int8 per block of 32 inside the kernel (ONNX
    Runtime's ``accuracy_level=4`` arithmetic): faster, but no longer the simulation's
    arithmetic (about 1e-2 relative), so off by default. ``lookup_tables=True`` runs 2-bit
    integer linears with the lookup-table (T-MAC) CPU kernel instead, which tabulates partial
    sums of activations in int8 and looks them up with the weights' bit planes: about as
    fast as the W2A8 kernel for one row, up to ~1.15× faster for 16 or 64 rows
    (``benchmarks/kernels.py``), at a similar error. Other layers are unaffected (the 4-bit
    lookup kernel measured slower than W4A8, so it is not chosen).
    """
    resolved = resolve_target(target)
    gm = _graph_of(model, example_inputs)
    specs = infer_input_specs(gm, example_inputs, dynamic_dims)
    if example_inputs is not None and _lacks_recorded_values(gm):
        # A graph loaded from disk records no dtypes; the importer checks TVM's converters
        # against them, so record them by running the graph on fake example inputs.
        propagate_shapes(gm, *example_inputs)
    imported = GraphImporter(gm, specs, resolved, int8_activations, lookup_tables).run()
    executable = build(imported.mod, resolved)
    return CompiledModel(executable, resolved, imported.inputs, imported.params, imported.output_count,
                         imported.param_names)
