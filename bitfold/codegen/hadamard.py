"""The block-Hadamard rotation as one TIR kernel: butterflies in place, block by block.

``f(x[groups, b], y[groups, b])`` writes ``y[g] = H_b x[g]`` for every group ``g`` (a
``b``-channel block of one row), with the steps of :func:`bitfold.ir.hadamard.spell_hadamard`
in the same order: ``y[g] = x[g]``; for ``h = 1, 2, …, b/2`` and each pair of runs
``a = y[g, j·2h : j·2h + h]``, ``c = y[g, j·2h + h : (j+1)·2h]``: ``(a, c) ← (a + c, a − c)``;
finally ``y[g] *= 1/√b``. Every value so goes through the same float32 additions as in
PyTorch and ONNX Runtime, and the result is bit-identical to theirs.

One kernel rather than the steps as Relax ops: fused, those inline each stage into the
next, so an output's expression doubles with every stage (``b`` terms after ``log2 b``
stages), and compiling a 64-block already took a minute. Groups run in parallel on a CPU
and one per GPU thread (the kernel is small next to the layer it feeds).
"""

from __future__ import annotations

import math

import numpy as np
import tvm
from tvm import tirx as tir
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from bitfold.ir.hadamard import check_block

#: GPU threads per thread block.
THREADS = 64


def _rotate_group(x: tir.Buffer, y: tir.Buffer, g, block: int) -> None:
    with T.serial(block) as i:
        T.buffer_store(y, x[g, i], [g, i])
    h = 1
    while h < block:
        with T.serial(block // (2 * h)) as j:
            with T.serial(h) as i:
                lo, hi = j * 2 * h + i, j * 2 * h + h + i
                a = T.bind(y[g, lo])
                c = T.bind(y[g, hi])
                T.buffer_store(y, a + c, [g, lo])
                T.buffer_store(y, a - c, [g, hi])
        h *= 2
    norm = tir.const(float(np.float32(1.0 / math.sqrt(block))), "float32")
    with T.serial(block) as i:
        T.buffer_store(y, y[g, i] * norm, [g, i])


def build_hadamard_kernel(block: int, target: tvm.target.Target) -> tir.PrimFunc:
    """The PrimFunc ``f(x[groups, block], y[groups, block])`` (float32, ``groups`` symbolic)."""
    check_block(block, block)
    with IRBuilder() as builder:
        with T.prim_func():
            T.func_name(f"bitfold_hadamard{block}")
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            groups = tir.Var("groups", "int64")
            x = T.arg("x", T.buffer((groups, block), "float32"))
            y = T.arg("y", T.buffer((groups, block), "float32"))
            with T.sblock("root"):
                T.reads(x[0:groups, 0:block])
                T.writes(y[0:groups, 0:block])
                if target.kind.name == "cuda":
                    with T.launch_thread("blockIdx.x", tir.ceildiv(groups, THREADS)) as bx:
                        with T.launch_thread("threadIdx.x", THREADS) as tx:
                            g = bx * THREADS + tx
                            with T.If(g < groups):
                                with T.Then():
                                    _rotate_group(x, y, g, block)
                else:
                    with T.parallel(0, groups) as g:
                        _rotate_group(x, y, g, block)
    return builder.get()
