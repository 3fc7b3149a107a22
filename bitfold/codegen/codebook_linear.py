"""CPU kernels for ``bitfold::codebook_linear``: SplitQuant in one pass over one low-bit matrix.

A SplitQuant weight element holds a ``b``-bit code ``q`` and a cluster id ``c``; its value is
``(t[q] − z[c, n]) · s[c, n]``. Joined into one combined code ``u = c · 2^b + q`` of at most
4 bits (SplitQuant INT2 with up to 4 clusters; INT3 with 2), the value is a lookup in a
16-entry table per output channel, ``T[n, u]`` (:meth:`CodebookWeight.value_tables`, computed
with PyTorch's arithmetic, so the decoded weight is exactly the op's). The kernel then needs
no per-cluster arithmetic at all::

    y[m, n] = Σ_j x̃[m, j] · T[n, u[n, j]]        (x̃ = x · 2^-shift, + bias[n])

Layout: the codes of channel ``n`` are packed eight to a 32-bit word, ``codes[n, w]`` holding
``u[n, 8w + i]`` in bits ``[4i, 4i + 4)`` (zero past ``K``, padded to blocks of 64). Lanes run
along ``K``: eight consecutive words (a block of 64 codes) are one vector, and nibble ``i`` of
its lanes is the codes of input channels ``64b + 8·lane + i``. ``vpermps`` reads only the low
three bits of an index, so ``words >> 4i`` indexes the channel's table registers (entries
0–7 and 8–15) directly, and ``words << (28 − 4i)`` moves the nibble's top bit to the sign bit
that ``vblendvps`` picks the half by: eight weights for two shifts, two ``vpermps`` and a
blend. The activations are prepared once per call in the same order (``x̃`` of block ``b``
stored nibble-major: slot ``64b + 8i + lane`` holds channel ``64b + 8·lane + i``):

* GEMV (``M = 1``): per channel, four accumulation chains of ``acc += x̃[slots] · Ŵ[slots]``,
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
from typing import List, Optional, Tuple

import numpy as np
import torch
import tvm
from torch import fx
from tvm import tirx as tir
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from bitfold.codegen import vector as V
from bitfold.codegen.kernel import TargetLike, as_target
from bitfold.codegen.spec import KernelError
from bitfold.ir.graph_utils import attr_value
from bitfold.ir.ops import CodebookWeight

#: Combined code width the kernels take (a 16-entry table in two registers).
CODE_BITS = 4
CODES_PER_WORD = 32 // CODE_BITS
#: Input channels per block: one vector of eight code words.
BLOCK_SLOTS = CODES_PER_WORD * 8
#: Independent accumulation chains of the GEMV.
CHAINS = 4
#: Output channels whose weights the GEMM decodes together (one activation load, 8 FMAs).
BLOCK = 8
#: Output channels per parallel task of the GEMV.
ROWS_PER_TASK = 32


@dataclass(frozen=True)
class CodebookKernelSpec:
    """What a codebook kernel computes: ``N × K``, and which optional operands exist."""

    out_features: int
    in_features: int
    has_shift: bool = False
    has_bias: bool = False

    @property
    def blocks(self) -> int:
        """Blocks of 64 input channels (the last one zero padded)."""
        return -(-self.in_features // BLOCK_SLOTS)

    @property
    def words(self) -> int:
        return self.blocks * 8

    @property
    def slots(self) -> int:
        return self.blocks * BLOCK_SLOTS

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


#: Argument names of ``bitfold::codebook_linear``, in schema order.
CODEBOOK_LINEAR_ARGS = ("x", "packed_codes", "packed_ids", "fmt", "out_features", "in_features", "clusters",
                        "weight_scale", "group_size", "weight_zero_point", "input_shift", "bias")


def codebook_kernel_from_node(node: fx.Node, gm: fx.GraphModule) -> Tuple[CodebookKernelSpec, List[np.ndarray]]:
    """The kernel spec and weight-side arrays of a ``bitfold::codebook_linear`` node (constants only)."""
    if node.op != "call_function" or node.target is not torch.ops.bitfold.codebook_linear.default:
        raise KernelError(f"node {node.name}: expected a call to bitfold::codebook_linear, got {node.op} {node.target}")
    values = dict.fromkeys(CODEBOOK_LINEAR_ARGS[8:])
    values.update(zip(CODEBOOK_LINEAR_ARGS, node.args))
    values.update(node.kwargs)
    tensors = {}
    for name in ("packed_codes", "packed_ids", "weight_scale", "weight_zero_point", "input_shift", "bias"):
        if values[name] is not None:
            tensors[name] = attr_value(gm, values[name])
            if tensors[name] is None:
                raise KernelError(f"node {node.name}: {name} must be a constant (a get_attr) to compile")
        else:
            tensors[name] = None
    weight = CodebookWeight(tensors["packed_codes"], tensors["packed_ids"], values["fmt"], int(values["out_features"]),
                            int(values["in_features"]), int(values["clusters"]), tensors["weight_scale"],
                            values["group_size"], tensors["weight_zero_point"])
    spec = codebook_spec(weight, tensors["input_shift"] is not None, tensors["bias"] is not None)
    return spec, codebook_kernel_inputs(spec, weight, tensors["input_shift"], tensors["bias"])


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
    """``xs[m, 64b + 8i + l] = x[m, 64b + 8l + i] · 2^-shift``, zero past ``K`` (nibble-major blocks)."""
    k = a.spec.in_features
    with T.serial(a.m) as row:
        with T.serial(a.spec.slots) as slot:
            block, within = tir.floordiv(slot, BLOCK_SLOTS), tir.floormod(slot, BLOCK_SLOTS)
            j = block * BLOCK_SLOTS + tir.floormod(within, 8) * 8 + tir.floordiv(within, 8)
            value = a.x[row, tir.min(j, k - 1)]
            if a.shift is not None:
                value = value * a.shift[tir.min(j, k - 1)]
            T.buffer_store(xs, tir.Select(j < k, value, tir.const(0.0, "float32")), [row, slot])


def _decode(words: tir.PrimExpr, i: int, low, high) -> tir.PrimExpr:
    """Weights of nibble ``i`` of eight code words (slots ``8i … 8i+7`` of their block)."""
    index = words if i == 0 else words >> V.const(CODE_BITS * i, "uint32")
    top = 32 - CODE_BITS * (i + 1)
    sign = words if top == 0 else words << V.const(top, "uint32")
    return V.blendv(V.permps(low, index), V.permps(high, index), sign)


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
    n_total = a.spec.out_features
    # Tasks of ROWS_PER_TASK channels: a task's scratch is allocated once, not per channel.
    with T.parallel(-(-n_total // ROWS_PER_TASK)) as task:
        acc = T.alloc_buffer((CHAINS * V.LANES,), "float32", scope="local")
        with T.serial(tir.min(ROWS_PER_TASK, n_total - task * ROWS_PER_TASK)) as r:
            _gemv_row(a, xs, acc, task * ROWS_PER_TASK + r)


def _gemv_row(a: _Args, xs: tir.Buffer, acc: tir.Buffer, n) -> None:
    low = T.bind(V.load(a.tables, n, 0))
    high = T.bind(V.load(a.tables, n, V.LANES))
    for c in range(CHAINS):
        T.buffer_store(acc, V.const(0.0, "float32"), [V.ramp(c * V.LANES)])
    with T.serial(a.spec.blocks) as b:
        words = T.bind(V.load(a.codes, n, b * 8))
        for i in range(CODES_PER_WORD):
            c = (i % CHAINS) * V.LANES
            update = V.load(acc, c) + V.load(xs, 0, b * BLOCK_SLOTS + i * V.LANES) * _decode(words, i, low, high)
            T.buffer_store(acc, update, [V.ramp(c)])
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
            with T.serial(spec.blocks) as b:
                words = T.bind(V.load(a.codes, n, b * 8))
                for nibble in range(CODES_PER_WORD):
                    T.buffer_store(decoded, _decode(words, nibble, low, high),
                                   [i, V.ramp(b * BLOCK_SLOTS + nibble * V.LANES)])
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
