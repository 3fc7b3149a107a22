"""CUDA kernels for the quantized linear, reading the same word layout as the CPU kernels.

A thread owns one output channel of a 32-channel tile (``threadIdx.x``), so a warp reads a
word row of 32 channels as 128 contiguous bytes. Codes are decoded exactly in registers
(shift and mask, or a lookup in the format's table) and multiplied in fp32; fp16
activations are widened on load and the result rounded back to fp16 on store.

GEMV (``M = 1``): one block per tile, ``threadIdx.y`` splits the K words 8 ways; each
thread accumulates ``Σ_words s'·(Σ x̃·u − z·Σ x̃)`` and the 8 partial sums of a channel are
added through shared memory.

GEMM: one block per (tile, 32 rows); thread ``(x, y)`` computes channel ``x`` for 4 rows,
decoding each word once and reusing it for the 4 rows (a register tile of 4 × 1).
"""

from __future__ import annotations

from typing import List

from tvm import tirx as tir
from tvm.script.ir_builder import tirx as T

from bitfold.codegen.kernel_args import KernelArgs
from bitfold.codegen.layout import TILE

K_SPLIT = 8
ROWS_PER_THREAD = 4
ROW_THREADS = 8


def _decode_word(a: KernelArgs, word: tir.PrimExpr) -> List[tir.PrimExpr]:
    """The float32 value ``u`` (or table value) of every code in a scalar uint32 ``word``."""
    bits = a.layout.bits
    mask = 2**bits - 1
    out = []
    for i in range(a.layout.codes_per_word):
        field = word if i == 0 else word >> tir.const(bits * i, "uint32")
        code = tir.Cast("int32", field & tir.const(mask, "uint32"))
        if a.plan.kind == "int":
            out.append(tir.Cast("float32", code))
        elif a.plan.kind == "byte_table":
            out.append(tir.Cast("float32", a.table[code]))
        else:
            out.append(a.table[code])
    return out


def _activations(a: KernelArgs, row, w) -> List[tir.PrimExpr]:
    """``x̃`` for the code slots of word ``w`` (zero for padding slots)."""
    L = a.layout
    c = L.codes_per_word
    k_total = a.spec.in_features
    g = tir.floordiv(w, L.words_per_group)
    j = tir.floormod(w, L.words_per_group)
    out = []
    for i in range(c):
        within = j * c + i
        k = g * L.group + within
        valid = tir.all(within < L.group, k < k_total)
        out.append(tir.Select(valid, a.activation(row, tir.min(k, k_total - 1)), tir.const(0.0, "float32")))
    return out


def _word_contribution(a: KernelArgs, values, acts, tile, g, lane) -> tir.PrimExpr:
    dot = values[0] * acts[0]
    for v, x in zip(values[1:], acts[1:]):
        dot = dot + v * x
    if a.zero_points is not None:
        total = acts[0]
        for x in acts[1:]:
            total = total + x
        dot = dot - tir.Cast("float32", a.zero_points[tile, g, lane]) * total
    return dot * a.scales[tile, g, lane]


def emit_cuda_gemv(a: KernelArgs) -> None:
    """One row: blocks over tiles, ``K_SPLIT``-way split of the words, shared-memory sum."""
    L = a.layout
    n_total = a.spec.out_features
    with T.launch_thread("blockIdx.x", L.tiles) as tile:
        with T.launch_thread("threadIdx.y", K_SPLIT) as part:
            with T.launch_thread("threadIdx.x", TILE) as lane:
                partial = T.alloc_buffer((K_SPLIT, TILE), "float32", scope="shared")
                acc = T.alloc_buffer((1,), "float32", scope="local")
                T.buffer_store(acc, tir.const(0.0, "float32"), [0])
                with T.serial((L.words + K_SPLIT - 1) // K_SPLIT) as step:
                    w = step * K_SPLIT + part
                    with T.If(w < L.words):
                        with T.Then():
                            word = T.bind(a.codes[tile, w, lane])
                            values = _decode_word(a, word)
                            acts = [T.bind(x) for x in _activations(a, 0, w)]
                            g = tir.floordiv(w, L.words_per_group)
                            T.buffer_store(acc, acc[0] + _word_contribution(a, values, acts, tile, g, lane), [0])
                T.buffer_store(partial, acc[0], [part, lane])
                T.evaluate(T.tvm_storage_sync("shared"))
                n = tile * TILE + lane
                with T.If(tir.all(part == 0, n < n_total)):
                    with T.Then():
                        total = partial[0, lane]
                        for p in range(1, K_SPLIT):
                            total = total + partial[p, lane]
                        T.buffer_store(a.y, a.output(total, n), [0, n])


def emit_cuda_gemm(a: KernelArgs) -> None:
    """All rows: blocks over (tile, 32 rows); each thread a 4-row × 1-channel register tile."""
    L = a.layout
    n_total = a.spec.out_features
    rows_per_block = ROWS_PER_THREAD * ROW_THREADS
    m = a.m
    with T.launch_thread("blockIdx.x", L.tiles) as tile:
        with T.launch_thread("blockIdx.y", (m + rows_per_block - 1) // rows_per_block) as row_block:
            with T.launch_thread("threadIdx.y", ROW_THREADS) as row_thread:
                with T.launch_thread("threadIdx.x", TILE) as lane:
                    acc = T.alloc_buffer((ROWS_PER_THREAD,), "float32", scope="local")
                    first = row_block * rows_per_block + row_thread * ROWS_PER_THREAD
                    for r in range(ROWS_PER_THREAD):
                        T.buffer_store(acc, tir.const(0.0, "float32"), [r])
                    with T.serial(L.words) as w:
                        word = T.bind(a.codes[tile, w, lane])
                        values = [T.bind(v) for v in _decode_word(a, word)]
                        g = tir.floordiv(w, L.words_per_group)
                        for r in range(ROWS_PER_THREAD):
                            row = tir.min(first + r, m - 1)
                            acts = _activations(a, row, w)
                            T.buffer_store(acc, acc[r] + _word_contribution(a, values, acts, tile, g, lane), [r])
                    n = tile * TILE + lane
                    for r in range(ROWS_PER_THREAD):
                        with T.If(tir.all(first + r < m, n < n_total)):
                            with T.Then():
                                T.buffer_store(a.y, a.output(acc[r], n), [first + r, n])
