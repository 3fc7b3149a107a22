"""CPU kernel with int8 activations (W4A8 / W2A8): ``vpmaddubsw`` on packed weight bytes.

Each row of ``x̃ = x · 2^-shift`` (slot order, zero in padding slots) is quantized on entry
per block of 32 slots, symmetric, round half to even::

    s_b = max|x̃_b| / 127,   q = clamp(round(x̃ / s_b), -127, 127)

and the layer computes, with weight levels ``u`` (unsigned, ≤ 127) and per-group ``z``::

    y[n] = Σ_g s'[n,g] · (Σ_{b∈g} s_b · Σ_{k∈b} q_k u[n,k]  −  z[n,g] · Σ_{b∈g} s_b Σ_{k∈b} q_k)

Lanes are output channels, as in the fp32 GEMV. A word holds 8 (4-bit) or 16 (2-bit)
consecutive codes of a channel; masking its nibbles (or 2-bit planes) gives, per 32-bit
lane, 4 codes of 4 different input channels as bytes, and the matching 4 activation bytes
are one 32-bit broadcast. ``vpmaddubsw`` multiplies and adds byte pairs into int16, which
are summed while they cannot overflow, widened with ``vpmaddwd`` into int32 per block,
converted and scaled by ``s_b`` once per block (an emulation of VNNI's ``vpdpbusd``).
This is the arithmetic ONNX Runtime's MatMulNBits uses at ``accuracy_level=4``.
The same code serves every ``M``: tiles run in parallel, rows inside a tile.
"""

from __future__ import annotations

from typing import Callable, List

from tvm import tirx as tir
from tvm.script.ir_builder import tirx as T

from bitfold.codegen import vector as V
from bitfold.codegen.cpu_gemv import VECTORS, store_tile, tile_loop
from bitfold.codegen.inputs import INT8_BLOCK
from bitfold.codegen.kernel_args import KernelArgs
from bitfold.codegen.layout import TILE

INT16_MAX = 32767
#: Smallest layer spread over threads (the same code serves M = 1, where the int8 dot
#: products are cheap, and larger M).
PARALLEL_MIN_WEIGHTS = 2**20
QMAX = 127


def byte_planes(bits: int) -> int:
    """Byte-wise planes a word splits into: 2 (nibbles) for 4-bit codes, 4 for 2-bit codes."""
    return 8 // bits


def plane_order(bits: int) -> List[List[int]]:
    """For each plane, the code index (within a word) held by each of a lane's 4 bytes."""
    planes = byte_planes(bits)
    return [[planes * j + p for j in range(4)] for p in range(planes)]


def _quantize_rows(a: KernelArgs, packed_q, block_scale, group_sum) -> None:
    """Quantize every row of x̃ per 32-slot block into ``packed_q`` (4 bytes per int32)."""
    L = a.layout
    c = L.codes_per_word
    k_total = a.spec.in_features
    words_per_block = INT8_BLOCK // c
    blocks_per_group = L.words_per_group // words_per_block
    order = plane_order(L.bits)

    def value(row, g, within):
        k = g * L.group + within
        valid = tir.all(within < L.group, k < k_total)
        return tir.Select(valid, a.activation(row, tir.min(k, k_total - 1)), tir.const(0.0, "float32"))

    with T.serial(a.m) as row:
        with T.serial(L.groups) as g:
            T.buffer_store(group_sum, tir.const(0.0, "float32"), [row, g])
            with T.serial(blocks_per_group) as jb:
                block = g * blocks_per_group + jb
                amax = T.alloc_buffer((1,), "float32", scope="local")
                total = T.alloc_buffer((1,), "int32", scope="local")
                T.buffer_store(amax, tir.const(0.0, "float32"), [0])
                T.buffer_store(total, tir.const(0, "int32"), [0])
                with T.serial(INT8_BLOCK) as s:
                    T.buffer_store(amax, tir.max(amax[0], tir.abs(value(row, g, jb * INT8_BLOCK + s))), [0])
                scale = T.bind(tir.Select(amax[0] > 0, amax[0] / tir.const(QMAX, "float32"), tir.const(1.0, "float32")))
                T.buffer_store(block_scale, scale, [row, block])
                with T.serial(words_per_block) as j:
                    for p, codes in enumerate(order):
                        packed = tir.const(0, "int32")
                        for byte, i in enumerate(codes):
                            v = value(row, g, (jb * words_per_block + j) * c + i)
                            q = T.bind(tir.Cast("int32", tir.max(tir.min(tir.nearbyint(v / scale), QMAX), -QMAX)))
                            T.buffer_store(total, total[0] + q, [0])
                            packed = packed | ((q & 0xFF) << (8 * byte))
                        word = block * words_per_block + j
                        T.buffer_store(packed_q, packed, [row, word * len(order) + p])
                T.buffer_store(group_sum, group_sum[row, g] + tir.Cast("float32", total[0]) * scale, [row, g])


def _terms_before_widening(a: KernelArgs) -> int:
    """How many ``vpmaddubsw`` results can be summed in int16 without overflow."""
    worst = 2 * a.plan.max_level * QMAX
    return max(1, INT16_MAX // worst)


def emit_block_tiles(a: KernelArgs, blocks_per_group: int, block_dots: Callable, group_sum: tir.Buffer,
                     centre: float = 0.0) -> None:
    """The loops both int8 kernels share: parallel channel tiles, rows inside a tile, and::

        y[row, n] = Σ_g s'[n,g] · (Σ_{b∈g} block_dots(row, tile, b)[n]  −  (z[n,g] − centre) · X[row, g])

    ``block_dots(row, tile, block)`` emits a block's integer dot products and returns them as
    ``VECTORS`` float32x8 values, already scaled; ``group_sum`` holds ``X``.
    """
    L = a.layout
    with tile_loop(a, PARALLEL_MIN_WEIGHTS) as tile:
        total = T.alloc_buffer((TILE,), "float32", scope="local")
        part = T.alloc_buffer((TILE,), "float32", scope="local")
        with T.serial(a.m) as row:
            for r in range(VECTORS):
                T.buffer_store(total, V.const(0.0, "float32"), [V.ramp(r * V.LANES)])
            with T.serial(L.groups) as g:
                for r in range(VECTORS):
                    T.buffer_store(part, V.const(0.0, "float32"), [V.ramp(r * V.LANES)])
                with T.serial(blocks_per_group) as jb:
                    dots = block_dots(row, tile, g * blocks_per_group + jb)
                    for r in range(VECTORS):
                        lane0 = r * V.LANES
                        T.buffer_store(part, V.load(part, lane0) + dots[r], [V.ramp(lane0)])
                for r in range(VECTORS):
                    lane0 = r * V.LANES
                    value = V.load(part, lane0)
                    offset = None if a.zero_points is None else a.zero_vector(tile, g, lane0)
                    if centre:
                        offset = V.const(-centre, "float32") if offset is None else offset - V.const(centre, "float32")
                    if offset is not None:
                        value = value - offset * V.splat(group_sum[row, g])
                    value = value * V.load(a.scales, tile, g, lane0)
                    T.buffer_store(total, V.load(total, lane0) + value, [V.ramp(lane0)])
            store_tile(a, row, tile, total)


def emit_int8(a: KernelArgs) -> None:
    """Emit ``y = x̃ Ŵᵀ + b`` with int8-quantized activations (all rows)."""
    L = a.layout
    c = L.codes_per_word
    planes = byte_planes(L.bits)
    words_per_block = INT8_BLOCK // c
    blocks_per_group = L.words_per_group // words_per_block
    blocks = L.groups * blocks_per_group
    packed_q = T.alloc_buffer((a.m, L.words * planes), "int32")
    block_scale = T.alloc_buffer((a.m, blocks), "float32")
    group_sum = T.alloc_buffer((a.m, L.groups), "float32")
    _quantize_rows(a, packed_q, block_scale, group_sum)
    byte_mask = (2**L.bits - 1) * 0x01010101
    terms = _terms_before_widening(a)
    table = V.load(a.table, 0, lanes=32) if a.plan.kind == "byte_table" else None
    ones = V.const(1, "int16", lanes=16)

    def block_dots(row, tile, block):
        dots = [None] * VECTORS
        sums = [None] * VECTORS
        pending = [0] * VECTORS
        for j in range(words_per_block):
            word_index = block * words_per_block + j
            acts = [T.bind(tir.reinterpret("int8x32", V.splat(packed_q[row, word_index * planes + p])))
                    for p in range(planes)]
            for r in range(VECTORS):
                word = T.bind(V.load(a.codes, tile, word_index, r * V.LANES))
                for p in range(planes):
                    plane = word if p == 0 else word >> V.const(L.bits * p, "uint32")
                    plane = plane & V.const(byte_mask, "uint32")
                    if table is not None:
                        plane = V.pshufb(table, plane)
                    term = V.maddubs(plane, acts[p])
                    sums[r] = term if sums[r] is None else sums[r] + term
                    pending[r] += 1
                    if pending[r] == terms:
                        widened = V.madd_words(sums[r], ones)
                        dots[r] = widened if dots[r] is None else dots[r] + widened
                        sums[r], pending[r] = None, 0
        scale = T.bind(V.splat(block_scale[row, block]))
        for r in range(VECTORS):
            if sums[r] is not None:
                widened = V.madd_words(sums[r], ones)
                dots[r] = widened if dots[r] is None else dots[r] + widened
        return [V.to_float(dot) * scale for dot in dots]

    emit_block_tiles(a, blocks_per_group, block_dots, group_sum)
