"""CPU GEMV (one activation row) with the weight decode fused into the multiply-accumulate.

For a tile of 32 output channels (4 vectors of 8 lanes, lanes = channels)::

    y[n] = Σ_g s'[n, g] · (Σ_{slot ∈ g} x̃[slot] · u[n, slot]  −  z[n, g] · X[g])  (+ bias[n])

where ``x̃[slot] = x[k(slot)] · 2^-shift[k] · prescale(slot)`` (zero in padding slots) is
prepared once per call (O(K)), ``X[g] = Σ_{k ∈ g} x[k] · 2^-shift[k]`` serves the zero-point /
level-offset correction, and ``u · 2^pos`` comes from
:class:`~bitfold.codegen.cpu_decode.WordDecoder` in scaled mode. The inner loop is, per
8 weights, one AND, one int→float convert and one FMA (on AVX2). Accumulators are split
between even and odd codes, so eight FMA chains are in flight. (Variants measured and
dropped: one or two vectors per pass with more accumulator sets — more x broadcasts and
spills, 1.2–2.5× slower for the table decodes.) Tiles run in
parallel over the thread pool (serially for small layers, see :func:`tile_loop`).
"""

from __future__ import annotations

from tvm import tirx as tir
from tvm.script.ir_builder import tirx as T

from bitfold.codegen import vector as V
from bitfold.codegen.cpu_decode import WordDecoder
from bitfold.codegen.kernel_args import KernelArgs
from bitfold.codegen.layout import TILE

VECTORS = TILE // V.LANES
#: Accumulators per channel vector (split by code index) so that 4 × 2 = 8 FMA chains, FMA
#: latency (4) × FMA ports (2), are in flight. More sets spill registers in the table decodes.
ACCUMULATOR_SETS = 2
#: Smallest layer (N·K weights) whose GEMV is spread over threads: below it, 2 threads were
#: slower than 1 on the 2-core machine (MiniLM's 1536x384 and SmolLM2's 576x1536 layers).
GEMV_PARALLEL_MIN_WEIGHTS = 2**21


def tile_loop(a: KernelArgs, min_weights: int):
    """The loop over channel tiles: parallel over the thread pool, or serial for layers of
    fewer than ``min_weights`` weights (N·K), where waking the pool's threads (tens of µs,
    more on a busy machine) costs more than it saves."""
    tiles = a.layout.tiles
    if a.spec.out_features * a.spec.in_features < min_weights:
        return T.serial(tiles)
    return T.parallel(tiles)


def prepare_row(a: KernelArgs, row, prescales, xs: tir.Buffer, xg, lead=()) -> None:
    """Fill ``xs[*lead, slot]`` (activations in slot order, prescaled) and ``xg[*lead, g]`` for one row."""
    L = a.layout
    c = L.codes_per_word
    k_total = a.spec.in_features
    with T.serial(L.groups) as g:
        if xg is not None:
            T.buffer_store(xg, tir.const(0.0, "float32"), [*lead, g])
        with T.serial(L.words_per_group) as j:
            for i in range(c):
                within = j * c + i
                k = g * L.group + within
                valid = tir.all(within < L.group, k < k_total)
                value = T.bind(tir.Select(valid, a.activation(row, tir.min(k, k_total - 1)), tir.const(0.0, "float32")))
                slot = (g * L.words_per_group + j) * c + i
                T.buffer_store(xs, value * tir.const(prescales[i], "float32"), [*lead, slot])
                if xg is not None:
                    T.buffer_store(xg, xg[(*lead, g)] + value, [*lead, g])


def store_tile(a: KernelArgs, row, tile, values: tir.Buffer, offset=0) -> None:
    """``y[row, tile·32 + j] = values[offset + j] (+ bias)`` for the channels that exist."""
    n_total = a.spec.out_features
    full_tiles = n_total // TILE

    def vector_store():
        for r in range(VECTORS):
            n0 = tile * TILE + r * V.LANES
            T.buffer_store(a.y, a.output(V.load(values, offset + r * V.LANES), n0), [row, V.ramp(n0)])

    def scalar_store():
        with T.serial(TILE) as j:
            n = tile * TILE + j
            with T.If(n < n_total):
                with T.Then():
                    T.buffer_store(a.y, a.output(values[offset + j], n), [row, n])

    if full_tiles == a.layout.tiles:
        vector_store()
        return
    with T.If(tile < full_tiles):
        with T.Then():
            vector_store()
        with T.Else():
            scalar_store()


def _accumulate_tile(a: KernelArgs, decoder: WordDecoder, tile, xs, xg, total) -> None:
    """Accumulate the 32 channels of one tile over all of K into ``total``."""
    L = a.layout
    c = L.codes_per_word
    sets = ACCUMULATOR_SETS
    acc = T.alloc_buffer((sets * TILE,), "float32", scope="local")
    with T.serial(L.groups) as g:
        for q in range(sets * VECTORS):
            T.buffer_store(acc, V.const(0.0, "float32"), [V.ramp(q * V.LANES)])
        with T.serial(L.words_per_group) as j:
            w = g * L.words_per_group + j
            for r in range(VECTORS):
                word = T.bind(V.load(a.codes, tile, w, r * V.LANES))
                for i, value, _ in decoder.fields(word, scaled=True):
                    slot = (i % sets) * TILE + r * V.LANES
                    T.buffer_store(acc, V.load(acc, slot) + V.splat(xs[w * c + i]) * value, [V.ramp(slot)])
        for r in range(VECTORS):
            lane0 = r * V.LANES
            dot = V.load(acc, lane0)
            for p in range(1, sets):
                dot = dot + V.load(acc, p * TILE + lane0)
            if xg is not None:
                dot = dot - a.zero_vector(tile, g, lane0) * V.splat(xg[g])
            T.buffer_store(total, V.load(total, lane0) + dot * V.load(a.scales, tile, g, lane0), [V.ramp(lane0)])


def emit_gemv(a: KernelArgs, avx2: bool) -> None:
    """Emit ``y[0, :] = x[0, :] Ŵᵀ + b`` for the current ``T.prim_func`` frame."""
    L = a.layout
    c = L.codes_per_word
    decoder = WordDecoder(a.plan, a.table, avx2)
    prescales = decoder.prescales(scaled=True)
    xs = T.alloc_buffer((L.slots,), "float32")
    xg = T.alloc_buffer((L.groups,), "float32") if a.zero_points is not None else None
    prepare_row(a, 0, prescales, xs, xg)
    with tile_loop(a, GEMV_PARALLEL_MIN_WEIGHTS) as tile:
        decoder.prepare()
        total = T.alloc_buffer((TILE,), "float32", scope="local")
        for r in range(VECTORS):
            T.buffer_store(total, V.const(0.0, "float32"), [V.ramp(r * V.LANES)])
        _accumulate_tile(a, decoder, tile, xs, xg, total)
        store_tile(a, 0, tile, total)
