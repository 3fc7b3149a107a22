"""Translate bitfold's canonical FX graph (ATen ops + bitfold ops) into a Relax ``IRModule``.

Why not ``tvm.relax.frontend.torch.from_exported_program(ep, custom_convert_map=...)``?
bitfold's graph is the *unlifted* ``ExportedProgram.module()`` form that every pass rewrites:
parameters and packed weights are ``get_attr`` nodes on a ``GraphModule``, not the lifted
inputs of an ``ExportedProgram``. Feeding TVM's entry point would mean re-exporting the
rewritten graph — seconds per model, a second shape-specialisation step whose dynamic
dimensions would have to be re-declared, and ``run_decompositions`` splitting the
``linear``/``layer_norm`` nodes bitfold lowers itself. So bitfold owns the *driver* (inputs
with symbolic sizes, constants, dispatch, outputs) and reuses TVM's ~300 per-op ATen
converters (:class:`ExportedProgramImporter`'s ``convert_map``) for everything it does not
lower itself:

* ``bitfold::fake_quantize`` → an exact TIR computation (:mod:`.lower_fake_quantize`);
* ``bitfold::quantized_linear`` → a low-bit kernel from :mod:`bitfold.codegen` via ``call_tir``;
* ``aten.linear`` / ``bitfold::fused_linear`` / ``bitfold::fused_conv2d`` → dense / conv with
  the weight laid out at import time and the bias and activation in the same fused kernel;
* ``bitfold::codebook_linear`` → the codebook kernel of :mod:`bitfold.codegen`;
* the ATen overloads TVM's map lacks or gets wrong (:mod:`.lower_aten`); and where a TVM
  converter returns another dtype than PyTorch recorded for the node, a cast restores it.

Constants: ``get_attr`` tensors are materialised on first use. Small ones become Relax
constants (embedded in the library); large ones (weights) become parameters of ``main``
after the user inputs, returned as numpy arrays so the library stays small and the params
are saved next to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Sequence

import numpy as np
import torch
import tvm
from torch import fx
from tvm import relax, tirx
from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

from bitfold.backends.tvm.signature import InputSpec
from bitfold.ir.graph_utils import attr_value

#: Constants with at most this many elements are embedded in the library; larger ones are params.
EMBED_LIMIT = 4096

Converter = Callable[[fx.Node], relax.Expr]


class LoweringError(ValueError):
    """A node of the graph cannot be lowered to TVM; the message names it."""


@dataclass
class ImportedGraph:
    """The Relax module plus the parameters ``main`` takes after the user inputs."""

    mod: tvm.IRModule
    inputs: List[InputSpec]
    param_names: List[str]
    params: List[np.ndarray]
    output_count: int


class _LazyEnv(dict):
    """``node → relax value``; a ``get_attr`` node is materialised the first time it is read."""

    def __init__(self, importer: "GraphImporter") -> None:
        super().__init__()
        self._importer = importer

    def __missing__(self, node: fx.Node) -> Any:
        if isinstance(node, fx.Node) and node.op == "get_attr":
            value = self._importer.constant(node)
            self[node] = value
            return value
        raise LoweringError(f"node {getattr(node, 'name', node)!r} is used before it is defined")


def panel_width(target: tvm.target.Target) -> int:
    """The CPU matmul micro-kernel's tile width (two vectors); 0 for GPU targets."""
    if target.kind.name != "llvm":
        return 0
    from bitfold.backends.tvm.schedule_cpu import vector_lanes

    return 2 * vector_lanes(target)


def node_label(node: fx.Node) -> str:
    return f"node {node.name!r} ({node.target})"


class GraphImporter(ExportedProgramImporter):
    """One use: ``GraphImporter(gm, specs, target).run()`` → :class:`ImportedGraph`."""

    def __init__(
        self, gm: fx.GraphModule, inputs: Sequence[InputSpec], target: tvm.target.Target,
        int8_activations: bool = False, lookup_tables: bool = False,
    ) -> None:
        super().__init__()
        self.gm = gm
        self.inputs = list(inputs)
        self.target = target
        self.env = _LazyEnv(self)
        self.block_builder = relax.BlockBuilder()
        self.symbols: Dict[str, tirx.Var] = {}
        #: Use bitfold.codegen's int8-activation (W4A8) kernels for quantized linears.
        self.int8_activations = int8_activations
        #: Use bitfold.codegen's lookup-table (T-MAC) kernels for 2-bit integer linears.
        self.lookup_tables = lookup_tables
        #: Column-panel width dense weights are packed to (0: not packed), see :mod:`.lower_dense`.
        self.panel_width = panel_width(target)
        self._param_vars: List[relax.Var] = []
        self._param_names: List[str] = []
        self._param_arrays: List[np.ndarray] = []
        self._by_op: Dict[Any, Converter] = {}
        from bitfold.backends.tvm import lower_aten, lower_bitfold_ops

        self.convert_map.update(lower_aten.converters(self))
        self._by_op.update(lower_bitfold_ops.converters(self))

    # ------------------------------------------------------------------ values

    def symbol(self, name: str) -> tirx.Var:
        """The int64 TIR variable of a dynamic size, shared by every input that uses it."""
        return self.symbols.setdefault(name, tirx.Var(name, "int64"))

    def add_param(self, name: str, array: np.ndarray) -> relax.Var:
        """A new parameter of ``main`` holding ``array`` (saved with the compiled module)."""
        array = np.ascontiguousarray(array)
        var = relax.Var(f"p_{len(self._param_vars)}_{name}", relax.TensorType(list(array.shape), str(array.dtype)))
        self._param_vars.append(var)
        self._param_names.append(name)
        self._param_arrays.append(array)
        return var

    def tensor_value(self, array: np.ndarray, name: str) -> relax.Expr:
        """``array`` as a Relax value: a constant when small, else a parameter."""
        if array.size <= EMBED_LIMIT:
            return relax.const(np.ascontiguousarray(array), str(array.dtype))
        return self.add_param(name, array)

    def constant(self, node: fx.Node) -> relax.Expr:
        """The Relax value of a ``get_attr`` node."""
        tensor = attr_value(self.gm, node)
        if tensor is None:
            raise LoweringError(f"{node_label(node)} is not a tensor constant")
        return self.tensor_value(to_numpy(tensor), str(node.target))

    def emit(self, expr: relax.Expr, name: str = "") -> relax.Var:
        return self.block_builder.emit(expr, name)

    # ------------------------------------------------------------------ driver

    def _input_var(self, spec: InputSpec) -> relax.Var:
        shape = [self.symbol(d) if isinstance(d, str) else d for d in spec.shape]
        return relax.Var(spec.name, relax.TensorType(shape, spec.dtype))

    def _convert(self, node: fx.Node) -> Any:
        converter = self._by_op.get(node.target)
        if converter is None:
            name = getattr(node.target, "__name__", str(node.target))
            converter = self.convert_map.get(name)
        if converter is None:
            raise LoweringError(f"{node_label(node)} has no TVM lowering in bitfold or TVM's ATen converters")
        try:
            return self._match_recorded_dtype(node, converter(node))
        except LoweringError:
            raise
        except Exception as err:  # TVM's converters raise assorted error types
            raise LoweringError(f"lowering {node_label(node)} failed: {type(err).__name__}: {err}") from err

    def _match_recorded_dtype(self, node: fx.Node, value: Any) -> Any:
        """Cast ``value`` to the dtype PyTorch recorded for ``node`` when a converter got it wrong.

        Some of TVM's converters drop a ``dtype=`` keyword (``new_ones(x, [], dtype=torch.bool)``
        comes out with ``x``'s dtype); the recorded dtype is the ground truth.
        """
        recorded = node.meta.get("val")
        if not isinstance(recorded, torch.Tensor) or not isinstance(value, relax.Expr):
            return value
        if not isinstance(value.ty, relax.TensorType):
            return value
        want = self._convert_data_type(recorded.dtype)
        if dtype_of(value) == want:
            return value
        return self.emit(relax.op.astype(value, want))

    def run(self) -> ImportedGraph:
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != len(self.inputs):
            raise LoweringError(f"the graph has {len(placeholders)} inputs but {len(self.inputs)} input specs")
        input_vars = [self._input_var(spec) for spec in self.inputs]
        outputs: List[relax.Expr] = []
        bb = self.block_builder
        with bb.function("main"):
            with bb.dataflow():
                for node, var in zip(placeholders, input_vars):
                    self.env[node] = var
                for node in self.gm.graph.nodes:
                    if node.op in ("placeholder", "get_attr"):
                        continue
                    if node.op == "output":
                        outputs = self._flatten_output_args(self.retrieve_args(node)[0])
                        break
                    if node.op != "call_function":
                        raise LoweringError(f"{node_label(node)}: {node.op} nodes are not supported (inline modules first)")
                    self.env[node] = self._convert(node)
                result = outputs[0] if len(outputs) == 1 else relax.Tuple(list(outputs))
                out = bb.emit_output(result)
            bb.emit_func_output(out, params=input_vars + self._param_vars)
        mod = bb.finalize()
        mod["main"] = mod["main"].with_attr("num_input", len(input_vars))
        return ImportedGraph(mod, self.inputs, self._param_names, self._param_arrays, len(outputs))


def op_arguments(node: fx.Node) -> Dict[str, Any]:
    """``node``'s arguments by schema name, defaults filled in."""
    schema = node.target._schema
    values: Dict[str, Any] = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args):
            values[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            values[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            values[arg.name] = arg.default_value
        else:
            raise LoweringError(f"{node_label(node)}: missing argument {arg.name!r}")
    return values


def dtype_of(expr: relax.Expr) -> str:
    """The element type of a Relax tensor expression, as a string (``"float32"``)."""
    return str(expr.ty.dtype.dtype)


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A numpy copy of a CPU tensor (bfloat16 is widened to float32, which numpy lacks)."""
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.contiguous().numpy()
