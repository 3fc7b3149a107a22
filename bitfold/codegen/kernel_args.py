"""The arguments of a generated kernel as TIR buffers, declared in :mod:`bitfold.codegen.inputs` order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from tvm import tirx as tir
from tvm.script.ir_builder import tirx as T

from bitfold.codegen import vector as V
from bitfold.codegen.decode import DecodePlan, decode_plan
from bitfold.codegen.inputs import kernel_arg_names, layout_for
from bitfold.codegen.layout import TILE, WordLayout
from bitfold.codegen.spec import LinearKernelSpec


@dataclass
class KernelArgs:
    """Everything a kernel emitter needs: the spec, its layout and decode plan, the buffers."""

    spec: LinearKernelSpec
    plan: DecodePlan
    layout: WordLayout
    m: Any  # the number of rows: an int, or a TIR variable when symbolic
    x: tir.Buffer
    codes: tir.Buffer
    scales: tir.Buffer
    y: tir.Buffer
    table: Optional[tir.Buffer] = None
    zero_points: Optional[tir.Buffer] = None
    shift: Optional[tir.Buffer] = None
    bias: Optional[tir.Buffer] = None

    def activation(self, row: Any, k: Any) -> tir.PrimExpr:
        """``x[row, k] · 2^-shift[k]`` as float32."""
        value = self.x[row, k]
        if self.spec.act_dtype != "float32":
            value = tir.Cast("float32", value)
        if self.shift is not None:
            value = value * self.shift[k]
        return value

    def zero_vector(self, tile: Any, group: Any, lane0: Any) -> tir.PrimExpr:
        """The zero points ``z`` of 8 channels as float32x8."""
        return V.to_float(tir.Cast("int32x8", V.load(self.zero_points, tile, group, lane0)))

    def output(self, value: tir.PrimExpr, n: Any) -> tir.PrimExpr:
        """``value + bias[n]`` in the activation dtype (scalar or vector ``value``)."""
        lanes = V.lanes_of(value)
        if self.bias is not None:
            value = value + (self.bias[n] if lanes == 1 else self.bias[tir.Ramp(n, 1, lanes)])
        if self.spec.act_dtype != "float32":
            value = tir.Cast(self.spec.act_dtype if lanes == 1 else f"{self.spec.act_dtype}x{lanes}", value)
        return value


def declare_args(spec: LinearKernelSpec, m: Any) -> KernelArgs:
    """Declare the PrimFunc's arguments (inside a ``T.prim_func()`` frame)."""
    plan = decode_plan(spec.weight_format)
    layout = layout_for(spec)
    n, k = spec.out_features, spec.in_features
    shapes = {
        "x": ((m, k), spec.act_dtype),
        "codes": ((layout.tiles, layout.slots // 8, layout.bits // 2, 2, TILE), "uint8") if spec.lookup_tables
        else ((layout.tiles, layout.words, TILE), "uint32"),
        "table": ((plan.table().size,), "uint8" if plan.kind == "byte_table" else "float32")
        if plan.kind != "int" else None,
        "scales": ((layout.tiles, layout.groups, TILE), "float32"),
        "zero_points": ((layout.tiles, layout.groups, TILE), "uint8"),
        "shift": ((k,), "float32"),
        "bias": ((n,), "float32"),
        "y": ((m, n), spec.act_dtype),
    }
    buffers = {}
    for name in kernel_arg_names(spec):
        shape, dtype = shapes[name]
        buffers[name] = T.arg(name, T.buffer(shape, dtype))
    return KernelArgs(spec, plan, layout, m, **buffers)
