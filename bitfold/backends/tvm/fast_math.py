"""Vectorizable transcendental functions: activations spelled out, then TVM's fast math.

LLVM turns ``exp``/``erf``/``tanh`` into calls to the scalar C library, one per element, which
kept a GELU over a ``128 × 1536`` activation at ~5 ms. This Relax pass rewrites the
activations into the elementary functions they are made of,

    gelu(x)      = x · (0.5 + 0.5 · erf(x / √2))
    gelu_tanh(x) = x · (0.5 + 0.5 · tanh(√(2/π) · (x + 0.044715 · x³)))
    silu(x)      = x · sigmoid(x),    sigmoid(x) = 1 / (1 + exp(-x))

then ``exp``, ``erf`` and ``tanh`` become TOPI's polynomial approximations
(``fast_exp``/``fast_erf``/``fast_tanh``), which vectorize (relative error ≲ 1e-6 in float32,
checked against PyTorch by the tests).

A float32 softmax over the last axis, compiled for an LLVM target, becomes a call of
:func:`bitfold.codegen.cpu_softmax.build_softmax_kernel` on the input viewed as rows: one
kernel with explicit vectors, where TE's version is four (max, exp, sum, divide) whose
vector loops a dynamic row length would leave predicated. Elsewhere softmax is spelled out
as ``e / Σ e`` with ``e = exp(x - max(x))``. TVM's own ``FastMathTransform`` is not used:
its ``fast_softmax`` kernel matches no CPU schedule rule and ran slower than either.
"""

from __future__ import annotations

import math

import tvm
from tvm import relax, topi
from tvm.relax.expr_functor import PyExprMutator, mutator

from bitfold.backends.tvm.kernel_call import flatten_rows, unflatten_rows
from bitfold.codegen.cpu_softmax import build_softmax_kernel


@mutator
class _SpellOutActivations(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, cpu_softmax: bool) -> None:
        super().__init__(mod)
        self.cpu_softmax = cpu_softmax
        self.softmax_kernel = None

    def row_softmax(self, x: relax.Expr) -> relax.Expr:
        """``softmax(x, axis=-1)`` by the CPU row kernel, on ``x`` viewed as ``[rows, n]``."""
        if self.softmax_kernel is None:
            self.softmax_kernel = self.builder_.add_func(build_softmax_kernel(), "bitfold_softmax_rows")
        shape = list(x.ty.shape)
        flat = flatten_rows(self.builder_, x)
        y = self.builder_.emit(relax.call_tir(self.softmax_kernel, [flat], flat.ty))
        return unflatten_rows(self.builder_, y, shape, shape[-1])

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not isinstance(call.op, tvm.ir.Op):
            return call
        name = call.op.name
        op = relax.op
        x = call.args[0] if call.args else None
        if name == "relax.exp":
            return self.builder_.call_te(topi.fast_exp, x)
        if name == "relax.erf":
            return self.builder_.call_te(topi.fast_erf, x)
        if name == "relax.tanh":
            return self.builder_.call_te(topi.fast_tanh, x)
        if name not in ("relax.nn.gelu", "relax.nn.gelu_tanh", "relax.nn.silu", "relax.sigmoid", "relax.nn.softmax"):
            return call
        dtype = str(x.ty.dtype.dtype)

        def c(value: float) -> relax.Expr:
            return relax.const(value, dtype)

        def exp(v: relax.Expr) -> relax.Expr:
            return self.builder_.call_te(topi.fast_exp, self.builder_.emit(v))

        def sigmoid(v: relax.Expr) -> relax.Expr:
            return op.divide(c(1.0), op.add(c(1.0), exp(op.negative(v))))

        def emit(v: relax.Expr) -> relax.Expr:
            return self.builder_.emit(v)

        if name == "relax.nn.gelu":
            erf = self.builder_.call_te(topi.fast_erf, emit(op.multiply(x, c(1 / math.sqrt(2)))))
            return op.multiply(x, op.add(c(0.5), op.multiply(c(0.5), erf)))
        if name == "relax.nn.gelu_tanh":
            cube = op.multiply(x, op.multiply(x, x))
            inner = emit(op.multiply(c(math.sqrt(2 / math.pi)), op.add(x, op.multiply(c(0.044715), cube))))
            return op.multiply(x, op.add(c(0.5), op.multiply(c(0.5), self.builder_.call_te(topi.fast_tanh, inner))))
        if name == "relax.nn.silu":
            return op.multiply(x, sigmoid(x))
        if name == "relax.sigmoid":
            return sigmoid(x)
        axis = int(call.attrs.axis)
        if self.cpu_softmax and dtype == "float32" and axis in (-1, len(x.ty.shape) - 1):
            return self.row_softmax(x)
        e = exp(op.subtract(x, op.max(x, axis=[axis], keepdims=True)))
        return op.divide(e, op.sum(e, axis=[axis], keepdims=True))


@tvm.transform.module_pass(opt_level=0, name="BitfoldFastMath")
def fast_math(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Spell out activations and softmax; use fast approximations of exp, erf and tanh.

    Reads the target from the enclosing ``with target:`` (the CPU softmax kernel is for LLVM).
    """
    target = tvm.target.Target.current(allow_none=True)
    mutator_ = _SpellOutActivations(mod, target is not None and target.kind.name == "llvm")
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator_.builder_.update_func(gv, mutator_.visit_expr(func))
    return mutator_.builder_.get()
