"""Default CPU (LLVM) schedules for every kind of kernel bitfold's graphs produce.

``tvm.compile`` leaves CPU kernels unscheduled: single-threaded, scalar loop nests. After
Relax fusion each PrimFunc is one of four shapes, and each gets one rule (first match wins):

``Matmul`` — one reduction block ``C[..., i, j] = Σ_k A[..., i, k] · B[..., k, j]`` (dense
    layers with the weight pre-transposed, attention's batched matmuls) plus elementwise
    epilogues (bias, activation, residual, scaling). A register-blocked micro-kernel: an
    ``MR × NR`` tile of ``C`` (``NR`` = 2 vectors) is accumulated in a local buffer over the
    whole ``k`` loop — ``MR`` broadcasts of ``A`` and 2 vector loads of ``B`` feed ``2·MR``
    FMAs per ``k`` step — then written back, with the epilogue applied to the still-hot tile.
    Tiles run in parallel, column panels outermost, so that a thread keeps its panel of ``B``
    in cache while it walks down the rows. Dynamic (or ragged) ``i``/``j`` extents are padded
    to whole tiles with ``pad_einsum``: a predicate inside the vector loop makes LLVM
    scalarize it (measured: ~1 GFLOP/s instead of ~20). The row padding of ``A`` is inlined
    (its guard does not depend on the vector lane); a column-padded ``B`` is copied once.
``RowReduction`` — row reductions with elementwise work around them (LayerNorm, RMSNorm,
    softmax, pooling): parallel over rows, every block computed at the row loop, elementwise
    loops vectorized. A reduction over a static length is split across vector lanes first
    (``rfactor``): ``acc[lane] ⊕= x[r, c·L + lane]`` in registers, then ``⊕`` over the
    lanes. A serial reduction is bound by the latency of its one accumulator (~4 cycles per
    element); MiniLM's LayerNorm went from 0.113 to 0.023 ms. Reductions over a dynamic
    length stay serial: their lanes would need a predicate, which LLVM scalarizes.
``Injective`` — elementwise / broadcast / layout kernels (reshape, transpose, casts,
    fake-quantize, gathers): intermediate blocks inlined, the innermost loop vectorized when
    its extent is a static multiple of a vector, all outer loops fused and parallel.
``Fallback`` — anything else (e.g. convolutions, multi-axis reductions): every top-level
    block parallel over its leading spatial loops, so no kernel runs single-threaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.target import Target

BlockRV = s_tir.schedule.SBlockRV
LoopRV = s_tir.schedule.LoopRV

#: Rows of the matmul micro-kernel tile: 2·MR accumulators + 2 B vectors + 1 broadcast ≤ 16 registers.
MR = 6
#: Bytes of ``B`` panels a row tile of ``A`` is reused over (half of a 512 KiB L2).
GROUP_BYTES = 256 * 1024
#: Parallel iterations per core a kernel's parallel loop should offer (static partitioning).
UNITS_PER_CORE = 4


def vector_bits(target: Target) -> int:
    """The SIMD register width the target's CPU features give (512 / 256 / 128 bits).

    Read from the features LLVM enables for ``mcpu``/``mattr``; TVM 0.27's
    ``llvm_get_vector_width`` answers 512 for every x86 CPU, AVX2-only ones included, which
    would make the matmul tile spill registers.
    """
    features = tvm.target.codegen.llvm_get_cpu_features(target)
    if "avx512f" in features:
        return 512
    if "avx" in features:
        return 256
    return 128


def vector_lanes(target: Target, dtype_bits: int = 32) -> int:
    """SIMD lanes for ``dtype_bits``-wide elements on ``target`` (4 for baseline 128-bit SSE)."""
    return max(vector_bits(target) // dtype_bits, 2)


def static_extent(sch: s_tir.Schedule, loop: LoopRV) -> Optional[int]:
    extent = sch.get(loop).extent
    return int(extent.value) if isinstance(extent, tirx.IntImm) else None


def _attempt(fn, *args) -> bool:
    """Apply a schedule primitive that may legitimately not apply; report whether it did."""
    try:
        fn(*args)
        return True
    except (s_tir.ScheduleError, tvm.error.InternalError, ValueError):
        return False


def top_level_blocks(sch: s_tir.Schedule) -> List[BlockRV]:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def inline_intermediates(sch: s_tir.Schedule, blocks: Sequence[BlockRV]) -> None:
    """``compute_inline`` each of ``blocks`` that can be (outputs and reductions cannot)."""
    for block in blocks:
        _attempt(sch.compute_inline, block)


def vectorize_inner(sch: s_tir.Schedule, block: BlockRV, lanes: int) -> bool:
    """Vectorize ``block``'s innermost loop by the largest power of two ≤ ``lanes`` that divides
    its static extent (splitting it when longer). Returns whether it vectorized."""
    loops = sch.get_loops(block)
    extent = static_extent(sch, loops[-1]) if loops else None
    if extent is None:
        return False
    width = lanes
    while width > 1 and extent % width:
        width //= 2
    if width < 2:
        return False
    inner = loops[-1] if extent == width else sch.split(loops[-1], [None, width])[1]
    sch.vectorize(inner)
    return True


def parallelize(sch: s_tir.Schedule, loops: Sequence[LoopRV]) -> None:
    """Fuse ``loops`` (outermost first, perfectly nested) into one parallel loop."""
    if loops:
        sch.parallel(sch.fuse(*loops) if len(loops) > 1 else loops[0])


def parallel_units(target: Target) -> int:
    """Parallel iterations a kernel needs to keep ``target``'s cores busy and balanced."""
    cores = target.attrs.get("num-cores")
    return UNITS_PER_CORE * int(cores if cores else os.cpu_count() or 1)


def parallel_prefix(sch: s_tir.Schedule, loops: Sequence[LoopRV], units: int) -> List[LoopRV]:
    """The shortest prefix of ``loops`` whose static extents multiply to at least ``units``
    (a symbolic extent counts as 1: it may be); all of ``loops`` when none is long enough.

    Fusing loops into one parallel loop costs a division and a modulo per iteration to
    recover each index, by symbolic divisors when extents are dynamic. Over MiniLM's
    attention-score matmul (12 heads, a dynamic sequence, 32-deep tiles) fusing the row
    tiles in as well made the kernel 1.5× slower than parallelizing over the heads alone.
    """
    product = 1
    for count, loop in enumerate(loops, start=1):
        product *= static_extent(sch, loop) or 1
        if product >= units:
            return list(loops[:count])
    return list(loops)


def schedule_injective(sch: s_tir.Schedule, block: BlockRV, lanes: int) -> None:
    """Innermost loop vectorized when possible, the loops above it fused and parallel.

    A dynamic innermost loop stays a plain serial loop under the parallel one: fusing it
    would put a division and a modulo by a symbolic size on every element, and a serial
    loop of contiguous accesses is one LLVM's loop vectorizer handles itself.
    """
    loops = sch.get_loops(block)
    if not loops:
        return
    if vectorize_inner(sch, block, lanes) or static_extent(sch, loops[-1]) is None:
        loops = sch.get_loops(block)[:-1]
    parallelize(sch, loops)


class CPURule(dl.ScheduleRule):
    """A rule for LLVM targets: :meth:`schedule` gets the PrimFunc's blocks in normal form
    (``None`` when TVM cannot normalize them) and returns a schedule or ``None`` (no match)."""

    def apply(self, func: tirx.PrimFunc, target: Target, _: bool) -> Optional[s_tir.Schedule]:
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        return self.schedule(sch, normalize_prim_func(sch), target)

    def schedule(self, sch: s_tir.Schedule, infos: Optional[list], target: Target) -> Optional[s_tir.Schedule]:
        raise NotImplementedError


class Injective(CPURule):
    """Elementwise / broadcast / layout kernels (see the module docstring)."""

    def schedule(self, sch: s_tir.Schedule, infos: Optional[list], target: Target) -> Optional[s_tir.Schedule]:
        if infos is None or not all(info.is_injective() for info in infos):
            return None
        inline_intermediates(sch, [info.block_rv for info in infos[:-1]])
        lanes = vector_lanes(target)
        for block in top_level_blocks(sch):
            schedule_injective(sch, block, lanes)
        return sch


class RowReduction(CPURule):
    """Row reductions and their elementwise neighbours (see the module docstring)."""

    def schedule(self, sch: s_tir.Schedule, infos: Optional[list], target: Target) -> Optional[s_tir.Schedule]:
        if infos is None or len(infos) < 2 or not infos[-1].is_injective():
            return None
        if all(info.is_injective() for info in infos):
            return None
        kinds = [info.dom_kind() for info in infos]
        rows = min(len(kind) - len(kind.lstrip("S")) for kind in kinds)
        if rows == 0:
            return None
        lanes = vector_lanes(target)
        partials = set()
        if _same_rows(sch, [info.block_rv for info in infos], rows):
            partials = {_name(sch, block) for block in
                        (_split_across_lanes(sch, info.block_rv, 2 * lanes) for info in infos if not info.is_injective())
                        if block is not None}
        blocks = top_level_blocks(sch)
        row_loops = sch.get_loops(blocks[-1])[:rows]
        row = sch.fuse(*row_loops) if rows > 1 else row_loops[0]
        sch.parallel(row)
        if len(sch.get_loops(blocks[-1])) > 1:
            vectorize_inner(sch, blocks[-1], lanes)
        for block in reversed(blocks[:-1]):
            sch.compute_at(block, row, preserve_unit_loops=True)
        for block in blocks[:-1]:
            if _name(sch, block) in partials:
                _vectorize_lanes(sch, block)
            elif (all(iv.iter_type == tirx.IterVar.DataPar for iv in sch.get(block).iter_vars)
                  and len(sch.get_loops(block)) > 1):
                vectorize_inner(sch, block, lanes)
        return sch


def _same_rows(sch: s_tir.Schedule, blocks: Sequence[BlockRV], rows: int) -> bool:
    """Whether every block's first ``rows`` axes span the same extents: then each row's
    reductions are computed once at the row loop. (An MX fake-quantize reduces per block of
    32 and writes per element: its reductions would be recomputed per element.)"""
    def extents(block: BlockRV) -> list:
        return [str(iv.dom.extent) for iv in sch.get(block).iter_vars[:rows]]

    return all(extents(block) == extents(blocks[-1]) for block in blocks)


def _split_across_lanes(sch: s_tir.Schedule, block: BlockRV, lanes: int) -> Optional[BlockRV]:
    """``rfactor`` a reduction whose innermost loop is a reduction of a static length that
    ``lanes`` divides (at least two vectors' worth) into a block of per-lane partial results
    (``acc[..., lane]``); the original block then reduces over the lanes. ``None`` when the
    block does not qualify."""
    loops = sch.get_loops(block)
    stmt = sch.get(block)
    extent = static_extent(sch, loops[-1]) if loops else None
    if extent is None or extent % lanes or extent < 2 * lanes or stmt.iter_vars[-1].iter_type != tirx.IterVar.CommReduce:
        return None
    inner = sch.split(loops[-1], [None, lanes])[1]
    try:
        return sch.rfactor(inner, factor_axis=len(stmt.writes[0].region))
    except (s_tir.ScheduleError, tvm.error.InternalError, ValueError):
        return None


def _vectorize_lanes(sch: s_tir.Schedule, partial: BlockRV) -> None:
    """The per-lane accumulator of a ``rfactor`` block in registers: the reduction loop
    outside, the lane loop inside and vectorized, the initialisation split off."""
    sch.set_scope(partial, 0, "local")
    loops = sch.get_loops(partial)
    stmt = sch.get(partial)
    lane_var = stmt.writes[0].region[-1].min
    bound = dict(zip((iv.var for iv in stmt.iter_vars), sch.get(loops[-1]).body.iter_values))
    lane = next(loop for loop in loops if bound[lane_var].same_as(sch.get(loop).loop_var))
    reduce_var = next(iv.var for iv in stmt.iter_vars if iv.iter_type == tirx.IterVar.CommReduce)
    outer = next(loop for loop in loops if bound[reduce_var].same_as(sch.get(loop).loop_var))
    sch.reorder(outer, lane)
    sch.vectorize(lane)
    sch.decompose_reduction(partial, outer)


class Fallback(CPURule):
    """Every top-level block parallel over its leading spatial loops (see the module docstring)."""

    def schedule(self, sch: s_tir.Schedule, infos: Optional[list], target: Target) -> Optional[s_tir.Schedule]:
        if infos is not None:
            inline_intermediates(sch, [info.block_rv for info in infos if info.is_injective()][:-1])
        for block in top_level_blocks(sch):
            loops = sch.get_loops(block)
            kinds = [iv.iter_type for iv in sch.get(block).iter_vars]
            leading = 0
            while leading < min(len(loops), len(kinds)) and kinds[leading] == tirx.IterVar.DataPar:
                leading += 1
            _attempt(parallelize, sch, loops[:leading])
        return sch


class Matmul(CPURule):
    """Register-blocked GEMM/GEMV with fused epilogue (see the module docstring)."""

    def schedule(self, sch: s_tir.Schedule, infos: Optional[list], target: Target) -> Optional[s_tir.Schedule]:
        if infos is None:
            return None
        reductions = [info for info in infos if not info.is_injective()]
        if len(reductions) != 1 or not all(info.is_injective() for info in infos if info not in reductions):
            return None
        main = reductions[0]
        kind = main.dom_kind()
        if len(kind) < 3 or kind[-1] != "R" or kind[:-1] != "S" * (len(kind) - 1):
            return None
        form = _matmul_form(sch, main.block_rv)
        if form is None:
            return None
        return _schedule_matmul(sch, main.block_rv, vector_lanes(target), form, parallel_units(target))


@dataclass(frozen=True)
class MatmulForm:
    """How a matmul block reads its operands."""

    #: ``nr`` when ``B`` is panel-packed (``B[j // nr, k, j % nr]``), 0 when ``B[..., k, j]``.
    panel_width: int
    #: ``A[..., min(i, M-1), k]``: whole row tiles may run past ``M`` without a guard.
    clamped_rows: bool


def _is_row(index: Any, i: tirx.Var) -> bool:
    return index.same_as(i) or (isinstance(index, tirx.Min) and index.a.same_as(i))


def _matmul_form(sch: s_tir.Schedule, block: BlockRV) -> Optional[MatmulForm]:
    """The :class:`MatmulForm` of ``C[..., i, j] = Σ_k A[..., i, k] · B[..., k, j]`` (``B``
    possibly panel-packed), or ``None`` when the block is not a matmul this rule handles."""
    stmt = sch.get(block)
    iters = [iv.var for iv in stmt.iter_vars]
    i, j, k = iters[-3], iters[-2], iters[-1]
    if len(stmt.writes) != 1:
        return None
    out = stmt.writes[0]
    if len(out.region) < 2 or not (out.region[-2].min.same_as(i) and out.region[-1].min.same_as(j)):
        return None
    reads = [[r.min for r in region.region] for region in stmt.reads
             if not region.source.same_as(out.source) and len(region.region) >= 2]
    a_rows = [idx[-2] for idx in reads if _is_row(idx[-2], i) and idx[-1].same_as(k)]
    if not a_rows:
        return None
    clamped = isinstance(a_rows[0], tirx.Min)
    for idx in reads:
        last = idx[-1]
        if idx[-2].same_as(k) and last.same_as(j):
            return MatmulForm(0, clamped)
        if (len(idx) >= 3 and idx[-2].same_as(k) and isinstance(last, tirx.FloorMod) and last.a.same_as(j)
                and isinstance(last.b, tirx.IntImm)):
            return MatmulForm(int(last.b.value), clamped)
    return None


def _tile(extent: Optional[int], preferred: Sequence[int]) -> tuple:
    """``(tile, pad)``: the first preferred tile that divides a static extent (no padding), the
    extent itself when smaller than every tile, else the first tile with padding."""
    if extent is not None:
        for tile in preferred:
            if extent % tile == 0:
                return tile, 1
        if extent < preferred[-1]:
            return extent, 1
    return preferred[0], preferred[0]


def _name(sch: s_tir.Schedule, block: BlockRV) -> str:
    return sch.get(block).name_hint


def _upstream(sch: s_tir.Schedule, block: BlockRV) -> set:
    """Names of all blocks ``block`` transitively reads from."""
    seen: set = set()
    stack = list(sch.get_producers(block))
    while stack:
        b = stack.pop()
        if _name(sch, b) not in seen:
            seen.add(_name(sch, b))
            stack.extend(sch.get_producers(b))
    return seen


def _pad_operands(sch: s_tir.Schedule, main: BlockRV, pad_i: int, pad_j: int, lanes: int) -> None:
    """Pad the tile loops to whole tiles; the padded operands are copied once, in parallel.

    Inlining the padding instead puts a guard on every ``A`` read inside the ``k`` loop,
    which LLVM does not hoist: measured 2-5× slower than the copy on MiniLM's layers.
    """
    before = {_name(sch, b) for b in sch.get_producers(main)}
    n_batch = len(sch.get_loops(main)) - 3
    sch.pad_einsum(main, [1] * n_batch + [pad_i, pad_j, 1])
    for pad in sch.get_producers(main):
        if _name(sch, pad) not in before:
            schedule_injective(sch, pad, lanes)


def _panels_per_group(panels: Optional[int], depth: Optional[int], nr: int) -> int:
    """How many column panels one row tile visits before the next row tile.

    A row tile of ``A`` (``MR × K``) is read once per group, the group's panels of ``B`` stay
    in L2 (``GROUP_BYTES``): with one panel per group, a 128 × 1536 input was re-read from L3
    for every panel and the 1536 → 384 layer did not speed up on a second thread at all.
    """
    if panels is None or depth is None:
        return 1
    budget = max(GROUP_BYTES // (depth * nr * 4), 1)
    return max(g for g in range(1, min(budget, panels) + 1) if panels % g == 0)


def _schedule_matmul(sch: s_tir.Schedule, main: BlockRV, lanes: int, form: MatmulForm,
                     units: int) -> s_tir.Schedule:
    loops = sch.get_loops(main)
    rows, cols = static_extent(sch, loops[-3]), static_extent(sch, loops[-2])
    if form.clamped_rows:  # tiles may overrun M: the clamped reads stay in bounds
        mr, pad_i = (MR, 1) if rows is None or rows >= MR else (rows, 1)
    else:
        mr, pad_i = _tile(rows, [MR, 4, 8, 2, 1] if rows != 1 else [1])
    nr, pad_j = (form.panel_width, 1) if form.panel_width else _tile(cols, [2 * lanes, lanes, 4, 2, 1])
    if pad_i > 1 or pad_j > 1:
        _pad_operands(sch, main, pad_i, pad_j, lanes)
    # The accumulator is created before the row split: with disable_predication the main
    # block's domain grows to whole tiles, and the write-back must keep the true extent.
    acc = sch.cache_write(main, 0, "local")
    loops = sch.get_loops(main)
    batch, i, j, k = loops[:-3], loops[-3], loops[-2], loops[-1]
    io, ii = sch.split(i, [None, mr], disable_predication=form.clamped_rows)
    jo, ji = sch.split(j, [None, nr])
    group = _panels_per_group(static_extent(sch, jo), static_extent(sch, k), nr)
    jg, jp = sch.split(jo, [None, group])
    sch.reorder(*batch, jg, io, jp, k, ii, ji)
    sch.reverse_compute_at(acc, jp)
    # Epilogue: inline the elementwise chain into its last block(s), apply it on the hot tile.
    upstream = _upstream(sch, main)
    epilogue = [b for b in top_level_blocks(sch)
                if _name(sch, b) not in upstream | {_name(sch, main), _name(sch, acc)}]
    inline_intermediates(sch, epilogue[:-1])
    for block in top_level_blocks(sch):
        name = _name(sch, block)
        if name in upstream or name in (_name(sch, main), _name(sch, acc)):
            continue
        if _attempt(sch.reverse_compute_inline, block):
            continue
        if _attempt(sch.reverse_compute_at, block, jp):
            vectorize_inner(sch, block, lanes)
    sch.vectorize(ji)
    if mr > 1:
        sch.unroll(ii)
    vectorize_inner(sch, acc, lanes)
    parallelize(sch, parallel_prefix(sch, [*batch, jg, io], units))
    for block in top_level_blocks(sch):  # what is left at the top level: producers, unfused epilogues
        if _name(sch, block) != _name(sch, main) and not _has_parallel_loop(sch, block):
            schedule_injective(sch, block, lanes)
    sch.decompose_reduction(main, k)
    return sch


def _has_parallel_loop(sch: s_tir.Schedule, block: BlockRV) -> bool:
    return any(sch.get(loop).kind == tirx.ForKind.PARALLEL for loop in sch.get_loops(block))


def cpu_schedule_pass() -> tvm.transform.Pass:
    """Schedule every unscheduled PrimFunc of a module for an LLVM target (rules in order)."""
    return dl.ApplyDefaultSchedule(Matmul(), RowReduction(), Injective(), Fallback())
