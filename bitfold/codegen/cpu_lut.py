"""CPU kernel by table lookup (T-MAC): ``vpshufb`` on bit planes instead of multiplies.

A ``b``-bit level is ``u = Σ_p 2^p · bit_p(u)``, so a dot product over four inputs splits
into ``b`` one-bit dot products, and a one-bit dot product of four inputs takes one of 16
values. Per row and per quad ``q`` of K slots (``x̃ = x · 2^-shift`` in slot order, zero in
padding slots) the kernel tabulates them once, centred (bits as ``±½``, so that a table is
odd-symmetric and spans half the range it would with bits as ``0/1``)::

    T_q[i] = Σ_{j<4} x̃[4q + j] · (bit_j(i) − ½),        i = 0 … 15

quantizes the tables per block of 32 slots (8 quads) to int8, symmetric, round half to
even (``s_b = max |T| / 127``), and computes, with the 4-bit index ``i_p(n, q)`` of plane
``p`` (see :func:`bitfold.codegen.layout.pack_bit_planes`)::

    y[n] = Σ_g s'[n,g] · (Σ_{b∈g} s_b · Σ_{q∈b} Σ_p 2^p · T̂_q[i_p(n, q)]  −  (z[n,g] − c) · X[g])

where ``X[g] = Σ_{k∈g} x̃_k`` (exact) and ``c = (2^bits − 1) / 2`` put back what the centring
took away, together with the zero point / level offset ``z``. One ``vpshufb``
looks up 16 channels × 2 planes of one quad; ``vpmaddubsw`` with the byte weights
``(2^p, 2^{p+1})`` adds each channel's two planes into an int16 lane, which sums a block
without overflow (``8 · 15 · 127 < 2^15``) before it is converted and scaled once. On 128
weights of a 2-bit layer this spends one load, two masks, two ``vpshufb`` and two
``vpmaddubsw``, where the int8-activation kernel spends four ``vpmaddubsw``, each after a
shift and a mask; a 4-bit layer needs twice the lookups, and then loses to that kernel
(``benchmarks/kernels.py``). The same code serves every ``M``: tables are built per row
before the parallel loop over channel tiles, rows run inside a tile.
"""

from __future__ import annotations

from tvm import tirx as tir
from tvm.script.ir_builder import tirx as T

from bitfold.codegen import vector as V
from bitfold.codegen.cpu_gemv import prepare_row
from bitfold.codegen.cpu_int8 import QMAX, emit_block_tiles
from bitfold.codegen.inputs import INT8_BLOCK
from bitfold.codegen.kernel_args import KernelArgs

QUAD = 4
TABLE = 16
QUADS_PER_BLOCK = INT8_BLOCK // QUAD


def _bit_mask(j: int) -> tir.PrimExpr:
    """float32x8 of ``bit_j(i) − ½`` for the table entries ``i = 0 … 7`` (a constant)."""
    index = tir.Ramp(tir.const(0, "int32"), tir.const(1, "int32"), V.LANES)
    return V.to_float((index >> V.const(j, "int32")) & V.const(1, "int32")) - V.const(0.5, "float32")


def _build_tables(a: KernelArgs, xs: tir.Buffer, tables: tir.Buffer, block_scale: tir.Buffer) -> None:
    """Tabulate and quantize ``T_q`` for every row and quad (see the module docstring)."""
    masks = [_bit_mask(j) for j in range(3)]
    blocks = a.layout.slots // INT8_BLOCK
    with T.serial(a.m) as row:
        with T.serial(blocks) as b:
            halves = []
            for q in range(QUADS_PER_BLOCK):
                slot = (b * QUADS_PER_BLOCK + q) * QUAD
                x = [V.splat(xs[row, slot + j]) for j in range(QUAD)]
                first_three = T.bind(x[0] * masks[0] + x[1] * masks[1] + x[2] * masks[2])
                half_last = x[3] * V.const(0.5, "float32")
                halves += [T.bind(first_three - half_last), T.bind(first_three + half_last)]
            peak = tir.max(tir.abs(halves[0]), tir.abs(halves[1]))
            for half in halves[2:]:
                peak = tir.max(peak, tir.abs(half))
            lanes = T.alloc_buffer((V.LANES,), "float32", scope="local")
            T.buffer_store(lanes, peak, [V.ramp(0)])
            amax = lanes[0]
            for i in range(1, V.LANES):
                amax = tir.max(amax, lanes[i])
            amax = T.bind(amax)
            scale = T.bind(tir.Select(amax > 0, amax / tir.const(QMAX, "float32"), tir.const(1.0, "float32")))
            T.buffer_store(block_scale, scale, [row, b])
            for i, half in enumerate(halves):
                quad = b * QUADS_PER_BLOCK + i // 2
                level = tir.Cast("int8x8", tir.Cast("int32x8", tir.nearbyint(half / V.splat(scale))))
                for copy in range(2):
                    T.buffer_store(tables, level, [row, quad, V.ramp(copy * TABLE + (i % 2) * V.LANES)])


def _plane_weights(pair: int) -> tir.PrimExpr:
    """Bytes ``(2^p, 2^{p+1})`` for the planes ``p = 2·pair, 2·pair + 1`` (``vpmaddubsw``'s unsigned side)."""
    return V.const(2 ** (2 * pair) | 2 ** (2 * pair + 1) << 8, "uint16", lanes=16)


def _lookup_block(a: KernelArgs, tables: tir.Buffer, row, tile, block) -> list:
    """The int16 sums ``Σ_{q∈block} Σ_p 2^p T̂_q[i_p]`` of one tile's two 16-channel halves."""
    low_nibbles = V.const(0x0F, "uint8", lanes=32)
    pairs = a.layout.bits // 2
    sums = [None, None]
    for j in range(QUADS_PER_BLOCK // 2):
        quad_pair = block * (QUADS_PER_BLOCK // 2) + j
        even = T.bind(V.load(tables, row, 2 * quad_pair, 0, lanes=32))
        odd = T.bind(V.load(tables, row, 2 * quad_pair + 1, 0, lanes=32))
        for pair in range(pairs):
            weights = _plane_weights(pair)
            for half in range(2):
                packed = T.bind(V.load(a.codes, tile, quad_pair, pair, half, 0, lanes=32))
                high = V.bitcast("uint8x32", V.bitcast("uint16x16", packed) >> V.const(4, "uint16", lanes=16))
                term = (V.maddubs(weights, V.pshufb(even, packed & low_nibbles))
                        + V.maddubs(weights, V.pshufb(odd, high & low_nibbles)))
                sums[half] = term if sums[half] is None else sums[half] + term
    return sums


def emit_lut(a: KernelArgs) -> None:
    """Emit ``y = x̃ Ŵᵀ + b`` by table lookup (all rows)."""
    L = a.layout
    xs = T.alloc_buffer((a.m, L.slots), "float32")
    group_sum = T.alloc_buffer((a.m, L.groups), "float32")
    tables = T.alloc_buffer((a.m, L.slots // QUAD, 2 * TABLE), "int8")
    block_scale = T.alloc_buffer((a.m, L.slots // INT8_BLOCK), "float32")
    with T.serial(a.m) as row:
        prepare_row(a, row, [1.0] * L.codes_per_word, xs, group_sum, lead=(row,))
    _build_tables(a, xs, tables, block_scale)

    def block_dots(row, tile, block):
        scale = T.bind(V.splat(block_scale[row, block]))
        dots = []
        for sums in _lookup_block(a, tables, row, tile, block):
            sums = T.bind(sums)
            for first in (0, V.LANES):
                lanes = tir.Shuffle([sums], [tir.const(first + i, "int32") for i in range(V.LANES)])
                dots.append(V.to_float(tir.Cast("int32x8", lanes)) * scale)
        return dots

    emit_block_tiles(a, L.slots_per_group // INT8_BLOCK, block_dots, group_sum, centre=(2**L.bits - 1) / 2)
