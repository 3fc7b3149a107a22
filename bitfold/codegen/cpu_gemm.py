"""CPU GEMM (M rows, M symbolic) with the weight decode amortized over the rows.

Per tile of 32 output channels and chunk of ~128 K slots, the chunk's weights are decoded
once into a float32 stack buffer ``B[slot, 32]`` (16 KB, L1-resident)::

    B[slot, n] = (u[n, slot] − z[n, g]) · s'[n, g]        (= Ŵ[n, k(slot)])

and then a register-blocked micro-kernel adds ``x̃[m, slot] · B[slot, :]`` for blocks of
4 rows × 16 channels (8 accumulator vectors, 2 B loads and 4 broadcasts per 8 FMAs; the
rows left over after the 4-row blocks go one at a time). Partial sums live in a
``C[M, N]`` workspace between chunks; ``x̃ = x · 2^-shift`` in slot order, zero in padding
slots, is prepared once per call. Tiles run in parallel (see :func:`~bitfold.codegen.cpu_gemv.tile_loop`).
"""

from __future__ import annotations

from tvm import tirx as tir
from tvm.script.ir_builder import tirx as T

from bitfold.codegen import vector as V
from bitfold.codegen.cpu_decode import WordDecoder
from bitfold.codegen.cpu_gemv import VECTORS, prepare_row, store_tile, tile_loop
from bitfold.codegen.kernel_args import KernelArgs
from bitfold.codegen.layout import TILE

ROWS = 4
HALF = 16
CHUNK_SLOTS = 128
#: Smallest layer whose GEMM is spread over threads (it does M ≥ 2 rows of work per weight).
PARALLEL_MIN_WEIGHTS = 2**16


def _decode_chunk(a: KernelArgs, decoder: WordDecoder, tile, first_word, words: int, b: tir.Buffer) -> None:
    L = a.layout
    c = L.codes_per_word
    with T.serial(words) as jw:
        w = first_word + jw
        g = tir.floordiv(w, L.words_per_group)
        for r in range(VECTORS):
            lane0 = r * V.LANES
            word = T.bind(V.load(a.codes, tile, w, lane0))
            scale = T.bind(V.load(a.scales, tile, g, lane0))
            zero = T.bind(a.zero_vector(tile, g, lane0)) if a.zero_points is not None else None
            for i, value, _ in decoder.fields(word, scaled=False):
                weight = value * scale if zero is None else (value - zero) * scale
                T.buffer_store(b, weight, [jw * c + i, V.ramp(lane0)])


def _micro_kernel(a, b, xs, acc_c, tile, first_slot, slots: int, row0, rows: int) -> None:
    n_padded = a.layout.padded_out_features
    for h in range(TILE // HALF):
        acc = T.alloc_buffer((rows * HALF,), "float32", scope="local")
        for r in range(rows):
            for v in range(HALF // V.LANES):
                src = (row0 + r) * n_padded + tile * TILE + h * HALF + v * V.LANES
                T.buffer_store(acc, V.load(acc_c, src), [V.ramp(r * HALF + v * V.LANES)])
        with T.serial(slots) as s:
            cols = [T.bind(V.load(b, s, h * HALF + v * V.LANES)) for v in range(HALF // V.LANES)]
            for r in range(rows):
                xv = T.bind(V.splat(xs[row0 + r, first_slot + s]))
                for v, col in enumerate(cols):
                    dst = r * HALF + v * V.LANES
                    T.buffer_store(acc, V.load(acc, dst) + xv * col, [V.ramp(dst)])
        for r in range(rows):
            for v in range(HALF // V.LANES):
                dst = (row0 + r) * n_padded + tile * TILE + h * HALF + v * V.LANES
                T.buffer_store(acc_c, V.load(acc, r * HALF + v * V.LANES), [V.ramp(dst)])


def _chunk(a, decoder, b, xs, acc_c, tile, first_word, words: int) -> None:
    c = a.layout.codes_per_word
    _decode_chunk(a, decoder, tile, first_word, words, b)
    m = a.m
    with T.serial(m // ROWS) as block:
        _micro_kernel(a, b, xs, acc_c, tile, first_word * c, words * c, block * ROWS, ROWS)
    with T.serial(m - m // ROWS * ROWS) as rest:
        _micro_kernel(a, b, xs, acc_c, tile, first_word * c, words * c, m // ROWS * ROWS + rest, 1)


def emit_gemm(a: KernelArgs, avx2: bool) -> None:
    """Emit ``y = x Ŵᵀ + b`` for all ``M`` rows in the current ``T.prim_func`` frame."""
    L = a.layout
    c = L.codes_per_word
    m = a.m
    n_padded = L.padded_out_features
    decoder = WordDecoder(a.plan, a.table, avx2)
    xs = T.alloc_buffer((m, L.slots), "float32")
    acc_c = T.alloc_buffer((m * n_padded,), "float32")
    with T.serial(m) as row:
        prepare_row(a, row, [1.0] * c, xs, None, lead=(row,))
    chunk_words = max(1, CHUNK_SLOTS // c)
    full, tail = divmod(L.words, chunk_words)
    with tile_loop(a, PARALLEL_MIN_WEIGHTS) as tile:
        decoder.prepare()
        b = T.alloc_buffer((chunk_words * c, TILE), "float32", scope="local")
        with T.serial(m) as row:
            for r in range(VECTORS):
                T.buffer_store(acc_c, V.const(0.0, "float32"), [V.ramp(row * n_padded + tile * TILE + r * V.LANES)])
        with T.serial(full) as chunk:
            _chunk(a, decoder, b, xs, acc_c, tile, chunk * chunk_words, chunk_words)
        if tail:
            _chunk(a, decoder, b, xs, acc_c, tile, full * chunk_words, tail)
        with T.serial(m) as row:
            store_tile(a, row, tile, acc_c, offset=row * n_padded + tile * TILE)
