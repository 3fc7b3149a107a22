"""A CPU softmax over the last axis of ``[rows, n]``, ``n`` dynamic, in one pass per stage.

    y[r, j] = e[r, j] / Σ_j e[r, j],    e[r, j] = exp(x[r, j] − max_j x[r, j])

Rows run in parallel; within a row the max, the exponentials with their sum, and the
division each stream the row in explicit 8-lane vectors (``n // 8`` of them), then a scalar
tail of ``n % 8`` elements. Scheduling the same computation from TE cannot do that for a
dynamic ``n``: its vector loops carry a bounds predicate, which LLVM scalarizes, and its
reductions keep one scalar accumulator, bound by the add latency. On MiniLM's attention
probabilities (12 heads × 128 × 128) the four TE kernels (max, exp, sum, divide) took
~0.3 ms per layer on one thread.

``exp`` is evaluated here as ``2^m · p(r)`` with ``m = round(x·log2 e)``,
``r = x − m·ln 2`` (split in a high part exact in float32 and a low correction, so ``r`` is
accurate for every ``m``) and ``p`` the degree-7 Taylor polynomial of ``e^r`` on
``|r| ≤ ln2/2`` (truncation error 5e-9), ``2^m`` built in the exponent bits. Inputs below
``EXP_FLUSH`` give 0 (``e^x`` is subnormal there); softmax's inputs are ``≤ 0`` after the
max is subtracted, so only that end matters, and the top is clamped to keep ``2^m`` finite.
"""

from __future__ import annotations

import math

from tvm import tirx as tir
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from bitfold.codegen import vector as V

#: ``e^x`` for ``x`` below this is under float32's smallest normal (2^-126): returned as 0.
EXP_FLUSH = -87.0
#: Inputs are clamped to at most this, so that ``2^m`` stays a finite float32.
EXP_CLAMP = 88.0
#: ``ln 2`` split: ``LN2_HIGH`` has 9 significant bits, so ``m · LN2_HIGH`` is exact for |m| < 2^15.
LN2_HIGH = 0.693359375
LN2_LOW = math.log(2.0) - LN2_HIGH
EXP_TERMS = 8


def _const(value: float, dtype: str, lanes: int) -> tir.PrimExpr:
    """``value`` as a scalar (``lanes == 1``) or a vector of ``lanes``."""
    return V.const(value, dtype, lanes) if lanes > 1 else tir.const(value, dtype)


def _f32(value: float, lanes: int) -> tir.PrimExpr:
    return _const(value, "float32", lanes)


def exp_approx(x: tir.PrimExpr) -> tir.PrimExpr:
    """``e^x`` in float32 (scalar or vector ``x``), within a few ulp for ``x ≥ EXP_FLUSH``."""
    lanes = V.lanes_of(x)
    int_type = "int32" if lanes == 1 else f"int32x{lanes}"
    float_type = "float32" if lanes == 1 else f"float32x{lanes}"
    clamped = tir.min(x, _f32(EXP_CLAMP, lanes))
    m = tir.floor(clamped * _f32(1.0 / math.log(2.0), lanes) + _f32(0.5, lanes))
    r = clamped - m * _f32(LN2_HIGH, lanes) - m * _f32(LN2_LOW, lanes)
    poly = _f32(1.0 / math.factorial(EXP_TERMS - 1), lanes)
    for k in range(EXP_TERMS - 2, -1, -1):
        poly = poly * r + _f32(1.0 / math.factorial(k), lanes)
    biased = tir.Cast(int_type, m) + _const(127, "int32", lanes)
    two_m = tir.reinterpret(float_type, biased << _const(23, "int32", lanes))
    return tir.Select(x < _f32(EXP_FLUSH, lanes), _f32(0.0, lanes), poly * two_m)


#: Rows per parallel task: TVM allocates a task's scratch buffers from its workspace pool
#: (~100 ns), which one 128-element row does not amortize.
ROWS_PER_TASK = 16


def _reduce_row(acc: tir.Buffer, result: tir.Buffer, n, combine, identity: float, vector_term,
                scalar_term) -> tir.PrimExpr:
    """``combine`` over ``j < n`` of the row's terms: one vector accumulator over the whole
    vectors, then the scalar tail. (Four accumulators, to break the add chain, measured
    slower: 0.23 against 0.18 ms on MiniLM's attention probabilities.)

    ``vector_term(j0)`` / ``scalar_term(j)`` emit whatever the pass stores and return the
    term at ``j0 … j0+7`` / ``j``; ``acc`` (one vector) and ``result`` (1) are scratch.
    """
    lanes = V.LANES
    T.buffer_store(acc, V.const(identity, "float32"), [V.ramp(0)])
    with T.serial(n // lanes) as c:
        T.buffer_store(acc, combine(V.load(acc, 0), vector_term(c * lanes)), [V.ramp(0)])
    T.buffer_store(result, tir.const(identity, "float32"), [0])
    for lane in range(lanes):
        T.buffer_store(result, combine(result[0], acc[lane]), [0])
    with T.serial(n // lanes * lanes, n) as j:
        T.buffer_store(result, combine(result[0], scalar_term(j)), [0])
    return T.bind(result[0])


def build_softmax_kernel(name: str = "bitfold_softmax_rows") -> tir.PrimFunc:
    """The PrimFunc ``f(x[rows, n], y[rows, n])``, both sizes symbolic (float32)."""
    with IRBuilder() as builder:
        with T.prim_func():
            T.func_name(name)
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            rows, n = tir.Var("rows", "int64"), tir.Var("n", "int64")
            x = T.arg("x", T.buffer((rows, n), "float32"))
            y = T.arg("y", T.buffer((rows, n), "float32"))
            lanes = V.LANES
            # A root block: Relax's analyses read any one-input, same-size kernel as a
            # possible reshape and expect its body to be a block.
            with T.sblock("root"):
                T.reads(x[0:rows, 0:n])
                T.writes(y[0:rows, 0:n])
                with T.parallel(0, tir.ceildiv(rows, ROWS_PER_TASK)) as task:
                    acc = T.alloc_buffer((lanes,), "float32", scope="local")
                    result = T.alloc_buffer((1,), "float32", scope="local")
                    with T.serial(ROWS_PER_TASK) as i:
                        r = task * ROWS_PER_TASK + i
                        with T.If(r < rows):
                            with T.Then():
                                _softmax_row(x, y, r, n, acc, result)
    return builder.get()


def _softmax_row(x: tir.Buffer, y: tir.Buffer, r, n, acc: tir.Buffer, result: tir.Buffer) -> None:
    """Emit the three passes over row ``r``: max, exponentials (stored) and their sum, division."""
    lanes = V.LANES
    top = _reduce_row(acc, result, n, tir.max, -math.inf, lambda j0: V.load(x, r, j0), lambda j: x[r, j])

    def exp_store(value, index):
        e = T.bind(exp_approx(value))
        T.buffer_store(y, e, [r, index])
        return e

    total = _reduce_row(acc, result, n, lambda a, b: a + b, 0.0,
                        lambda j0: exp_store(V.load(x, r, j0) - V.splat(top), V.ramp(j0)),
                        lambda j: exp_store(x[r, j] - top, j))
    with T.serial(n // lanes) as c:
        T.buffer_store(y, V.load(y, r, c * lanes) / V.splat(total), [r, V.ramp(c * lanes)])
    with T.serial(n // lanes * lanes, n) as j:
        T.buffer_store(y, y[r, j] / total, [r, j])
