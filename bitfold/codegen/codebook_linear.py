"""CPU kernels for ``bitfold::codebook_linear``: SplitQuant in one pass over one low-bit matrix.

A SplitQuant weight element holds a ``b``-bit code ``q`` and a cluster id ``c``; its value is
``(t[q] − z[c, n]) · s[c, n]``. Joined into one combined code ``u = c · 2^b + q`` of at most
4 bits (SplitQuant INT2 with up to 4 clusters; INT3 with 2), the value is a lookup in a
16-entry table per output channel, ``T[n, u]`` (:meth:`CodebookWeight.value_tables`, computed
with PyTorch's arithmetic, so the decoded weight is exactly the op's). The kernel then needs
no per-cluster arithmetic at all::

    y[m, n] = Σ_j x̃[m, j] · T[n, u[n, j]]        (x̃ = x · 2^-shift, + bias[n])

Layout: the codes of channel ``n`` are packed eight to a 32-bit word, ``codes[n, w]`` holding
``u[n, 8w + i]`` in bits ``[4i, 4i + 4)`` (zero past ``K``; the padded activations are zero
too). Lanes run along ``K``: one word is broadcast, shifted per lane (``vpsrlvd``) and masked
to eight indices, and two ``vpermps`` on the channel's table (entries 0–7 and 8–15, picked
by ``vblendvps`` on the index's top bit) give eight weights:

* GEMV (``M = 1``): per channel, four accumulation chains of ``acc += x̃[8w:8w+8] · Ŵ``,
  channels in parallel;
* GEMM: per block of 8 channels, the block's weights are decoded once into a stack buffer,
  then each row of ``x̃`` is multiplied with all 8 (one activation load feeds 8 FMAs).

This replaces the ``k`` dense GEMMs of SplitQuant's split layers (``k`` decodes and ``k``
multiply-accumulates per weight, over ``k`` code matrices) by one table decode and one
multiply-accumulate per weight over a ``b + 2``-bit matrix. AVX2 x86 targets only; anything
else raises :class:`~bitfold.codegen.spec.KernelError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch
import tvm
from tvm import tirx as tir
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from bitfold.codegen import vector as V
from bitfold.codegen.kernel import TargetLike, as_target
from bitfold.codegen.spec import KernelError
from bitfold.ir.ops import CodebookWeight

#: Combined code width the kernels take (a 16-entry table in two registers).
CODE_BITS = 4
CODES_PER_WORD = 32 // CODE_BITS
#: Words per step of the GEMV loop: one per accumulation chain.
CHAINS = 4
#: Output channels whose weights the GEMM decodes together (one activation load, 8 FMAs).
BLOCK = 8


@dataclass(frozen=True)
class CodebookKernelSpec:
    """What a codebook kernel computes: ``N × K``, and which optional operands exist."""

    out_features: int
    in_features: int
    has_shift: bool = False
    has_bias: bool = False

    @property
    def words(self) -> int:
        """Code words per channel, padded to whole steps of the GEMV loop."""
        per_step = CODES_PER_WORD * CHAINS
        return -(-self.in_features // per_step) * CHAINS

    @property
    def slots(self) -> int:
        return self.words * CODES_PER_WORD

    def name(self, m: Optional[int]) -> str:
        parts = ["bitfold_codebook_linear", *(f for f, on in (("shift", self.has_shift), ("bias", self.has_bias)) if on),
                 f"{self.out_features}x{self.in_features}"] + ([f"m{m}"] if m is not None else [])
        return re.sub(r"[^0-9a-zA-Z_]", "_", "_".join(parts))


def codebook_spec(weight: CodebookWeight, has_shift: bool, has_bias: bool) -> CodebookKernelSpec:
    """The kernel spec of a codebook weight; a :class:`KernelError` when no kernel takes it."""
    what = f"codebook_linear {weight.fmt} x {weight.clusters} clusters, {weight.out_features}x{weight.in_features}"
    if weight.combined_bits > CODE_BITS:
        raise KernelError(f"{what}: code and cluster id take {weight.combined_bits} bits; the kernels take at most "
                          f"{CODE_BITS} (e.g. 2-bit codes with up to 4 clusters)")
    if weight.group_size is not None:
        raise KernelError(f"{what}: per-group scales (group {weight.group_size}) have no kernel; per-channel only")
    return CodebookKernelSpec(weight.out_features, weight.in_features, has_shift, has_bias)


def codebook_kernel_inputs(spec: CodebookKernelSpec, weight: CodebookWeight, shift: Optional[torch.Tensor] = None,
                           bias: Optional[torch.Tensor] = None) -> List[np.ndarray]:
    """The arrays between ``x`` and ``y``: ``codes [N, words]`` uint32, ``tables [N, 16]``
    float32, then ``shift [K]`` (``2^-k``) and ``bias [N]`` where the spec has them."""
    n, k = spec.out_features, spec.in_features
    combined = np.zeros((n, spec.slots), dtype=np.uint32)
    combined[:, :k] = weight.combined_codes().numpy()
    shifts = np.arange(CODES_PER_WORD, dtype=np.uint32) * CODE_BITS
    words = np.bitwise_or.reduce(combined.reshape(n, spec.words, CODES_PER_WORD) << shifts, axis=2)
    tables = np.zeros((n, 2**CODE_BITS), dtype=np.float32)
    values = weight.value_tables()[0].T.numpy()  # [N, 2^combined_bits]
    tables[:, : values.shape[1]] = values
    arrays = [np.ascontiguousarray(words.astype(np.uint32)), tables]
    if spec.has_shift:
        if shift is None:
            raise KernelError("the kernel spec has an input shift but none was given")
        arrays.append(np.ldexp(np.float32(1), -shift.numpy().astype(np.int32)).astype(np.float32))
    if spec.has_bias:
        if bias is None:
            raise KernelError("the kernel spec has a bias but none was given")
        arrays.append(bias.detach().float().numpy())
    return arrays


class _Args:
    def __init__(self, spec: CodebookKernelSpec, m) -> None:
        n, k = spec.out_features, spec.in_features
        self.spec, self.m = spec, m
        self.x = T.arg("x", T.buffer((m, k), "float32"))
        self.codes = T.arg("codes", T.buffer((n, spec.words), "uint32"))
        self.tables = T.arg("tables", T.buffer((n, 2**CODE_BITS), "float32"))
        self.shift = T.arg("shift", T.buffer((k,), "float32")) if spec.has_shift else None
        self.bias = T.arg("bias", T.buffer((n,), "float32")) if spec.has_bias else None
        self.y = T.arg("y", T.buffer((m, n), "float32"))


def _prepare(a: _Args, xs: tir.Buffer) -> None:
    """``xs[m, j] = x[m, j] · 2^-shift[j]``, zero in the padding slots."""
    k = a.spec.in_features
    with T.serial(a.m) as row:
        with T.serial(a.spec.slots) as j:
            value = a.x[row, tir.min(j, k - 1)]
            if a.shift is not None:
                value = value * a.shift[tir.min(j, k - 1)]
            T.buffer_store(xs, tir.Select(j < k, value, tir.const(0.0, "float32")), [row, j])


def _decode(a: _Args, n, w, low, high) -> tir.PrimExpr:
    """Eight weights ``Ŵ[n, 8w : 8w+8]`` from one code word and the channel's table registers."""
    word = V.splat(a.codes[n, w])
    index = (word >> tir.Cast("uint32x8", tir.Ramp(0, CODE_BITS, V.LANES))) & V.const(2**CODE_BITS - 1, "uint32")
    index = T.bind(index)
    return V.blendv(V.permps(low, index), V.permps(high, index), index << V.const(32 - CODE_BITS, "uint32"))


def _hsum(acc: tir.Buffer, base: int) -> tir.PrimExpr:
    total = acc[base]
    for i in range(1, V.LANES):
        total = total + acc[base + i]
    return total


def _store(a: _Args, row, n, value: tir.PrimExpr) -> None:
    if a.bias is not None:
        value = value + a.bias[n]
    T.buffer_store(a.y, value, [row, n])


def _emit_gemv(a: _Args, xs: tir.Buffer) -> None:
    with T.parallel(a.spec.out_features) as n:
        low = T.bind(V.load(a.tables, n, 0))
        high = T.bind(V.load(a.tables, n, V.LANES))
        acc = T.alloc_buffer((CHAINS * V.LANES,), "float32", scope="local")
        for c in range(CHAINS):
            T.buffer_store(acc, V.const(0.0, "float32"), [V.ramp(c * V.LANES)])
        with T.serial(a.spec.words // CHAINS) as step:
            for c in range(CHAINS):
                w = step * CHAINS + c
                weight = _decode(a, n, w, low, high)
                update = V.load(acc, c * V.LANES) + V.load(xs, 0, w * CODES_PER_WORD) * weight
                T.buffer_store(acc, update, [V.ramp(c * V.LANES)])
        for c in range(1, CHAINS):
            T.buffer_store(acc, V.load(acc, 0) + V.load(acc, c * V.LANES), [V.ramp(0)])
        _store(a, 0, n, _hsum(acc, 0))


def _emit_gemm(a: _Args, xs: tir.Buffer) -> None:
    spec = a.spec
    blocks = -(-spec.out_features // BLOCK)
    with T.parallel(blocks) as block:
        decoded = T.alloc_buffer((BLOCK, spec.slots), "float32")
        for i in range(BLOCK):
            n = tir.min(block * BLOCK + i, spec.out_features - 1)  # the last block repeats a channel
            low = T.bind(V.load(a.tables, n, 0))
            high = T.bind(V.load(a.tables, n, V.LANES))
            with T.serial(spec.words) as w:
                T.buffer_store(decoded, _decode(a, n, w, low, high), [i, V.ramp(w * CODES_PER_WORD)])
        acc = T.alloc_buffer((BLOCK * V.LANES,), "float32", scope="local")
        with T.serial(a.m) as row:
            for i in range(BLOCK):
                T.buffer_store(acc, V.const(0.0, "float32"), [V.ramp(i * V.LANES)])
            with T.serial(spec.words) as w:
                xv = T.bind(V.load(xs, row, w * CODES_PER_WORD))
                for i in range(BLOCK):
                    update = V.load(acc, i * V.LANES) + xv * V.load(decoded, i, w * CODES_PER_WORD)
                    T.buffer_store(acc, update, [V.ramp(i * V.LANES)])
            for i in range(BLOCK):
                n = block * BLOCK + i
                with T.If(n < spec.out_features):
                    with T.Then():
                        _store(a, row, n, _hsum(acc, i * V.LANES))


def build_codebook_kernel(spec: CodebookKernelSpec, target: TargetLike, m: Optional[int] = None) -> tir.PrimFunc:
    """The PrimFunc ``f(x, codes, tables, [shift], [bias], y)`` computing ``y = (x·2^-k) Ŵᵀ + b``.

    ``m`` fixes the number of rows; ``None`` leaves it symbolic, and the kernel runs its GEMV
    code for ``M == 1`` and its GEMM code otherwise.
    """
    target = as_target(target)
    if not V.has_avx2(target):
        raise KernelError(f"codebook_linear {spec.out_features}x{spec.in_features}: the codebook kernels need an "
                          f"x86 LLVM target with AVX2 and FMA, not {target}")
    if m is not None and m < 1:
        raise KernelError(f"codebook_linear: the number of rows must be positive, got {m}")
    with IRBuilder() as builder:
        with T.prim_func():
            T.func_name(spec.name(m))
            T.func_attr({"tirx.noalias": True})
            rows = tir.Var("m", "int64") if m is None else m
            a = _Args(spec, rows)
            xs = T.alloc_buffer((rows, spec.slots), "float32")
            _prepare(a, xs)
            if m is None:
                with T.If(a.m == 1):
                    with T.Then():
                        _emit_gemv(a, xs)
                    with T.Else():
                        _emit_gemm(a, xs)
            elif m == 1:
                _emit_gemv(a, xs)
            else:
                _emit_gemm(a, xs)
    return builder.get()


def compile_codebook_kernel(spec: CodebookKernelSpec, target: TargetLike, m: Optional[int] = None):
    """``build_codebook_kernel`` compiled with ``tvm.compile``: a module whose function is ``spec.name(m)``."""
    target = as_target(target)
    return tvm.compile(build_codebook_kernel(spec, target, m), target=target)
