"""``bitfold::fake_quantize`` as a TE computation, bit-exact with :meth:`Format.quantize`.

For every element, with ``s`` (and zero point ``z``) aligned to it per tensor, per channel or
per group exactly as :mod:`bitfold.ir.formats._layout` does::

    y = x / s                               (IEEE division, as PyTorch does; never x · (1/s))
    x̂ = round_to_grid(y) · s

and ``round_to_grid`` by format family, each the same float32 operation sequence as the
PyTorch reference:

* integers: ``clamp(rint(y) + rint(z), qmin, qmax) - rint(z)`` (``rint`` = round half to even);
* ``ExMy`` floats: ``a = min(|y|, max)``, ``p = max(exponent_bits(a) - 127, 1 - bias)``,
  ``q = rint(a · 2^(M-p)) · 2^(p-M)`` with powers of two built from their bit patterns,
  then the sign of ``y`` (so ``-0`` stays ``-0``);
* codebooks (NF4, POST): ``hi = clamp(#{grid < y}, 1, n-1)``; take ``grid[hi]`` when
  ``grid[hi] - y < y - grid[hi-1]`` or the distances tie and ``hi`` is even, else ``grid[hi-1]``;
* block formats (MX, NVFP4) without given scales compute them from ``x`` first: the block
  ``amax`` along the blocked axis (a ragged last block allowed), then E8M0
  ``2^clamp(floor(log2 amax) - emax, -127, 127)`` or NVFP4's
  ``max(e4m3(amax / 6 / s_t), 2^-9) · s_t`` with ``s_t = amax(x) / 2688``.

The element loop computes in float32 and casts back to ``x``'s dtype.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple

from tvm import te, tirx

from bitfold.ir import formats
from bitfold.ir.formats import BlockFormat, CodebookFormat, FloatFormat, IntFormat
from bitfold.ir.formats.block import FP8_E4M3

F32 = "float32"
PrimExpr = Any


def _f32(value: float) -> PrimExpr:
    return tirx.const(value, F32)


def _i32(value: int) -> PrimExpr:
    return tirx.const(value, "int32")


def pow2_bits(exponent: PrimExpr) -> PrimExpr:
    """``2^exponent`` as float32 from its bit pattern ``(exponent + 127) << 23``.

    Exact for normal exponents (the reference quantizer builds its rounding constant so too).
    """
    return tirx.reinterpret(F32, (exponent + _i32(127)) << _i32(23))


def pow2_exact(exponent: PrimExpr) -> PrimExpr:
    """Exact float32 ``2^exponent`` for ``-149 <= exponent <= 127`` (subnormals included)."""
    normal = tirx.reinterpret(F32, (exponent + _i32(127)) << _i32(23))
    subnormal = tirx.reinterpret(F32, _i32(1) << (exponent + _i32(149)))
    return tirx.Select(exponent >= _i32(-126), normal, subnormal)


def _exponent_field(a: PrimExpr) -> PrimExpr:
    """``(bits(a) >> 23) - 127`` for a non-negative float32 ``a``."""
    return (tirx.reinterpret("int32", a) >> _i32(23)) - _i32(127)


def round_float(fmt: FloatFormat, y: PrimExpr) -> PrimExpr:
    """``y`` rounded to ``fmt``'s grid (half to even, saturating), keeping ``y``'s sign."""
    m = fmt.mantissa_bits
    a = tirx.min(tirx.abs(y), _f32(fmt.max))
    p = tirx.max(_exponent_field(a), _i32(fmt.min_exponent))
    q = tirx.nearbyint(a * pow2_bits(_i32(m) - p)) * pow2_bits(p - _i32(m))
    return tirx.copysign(q, y)


def clamp(v: PrimExpr, low: float, high: float) -> PrimExpr:
    """PyTorch's ``clamp``: a bound replaces ``v`` only when ``v`` is strictly outside it, so
    ``-0.0`` stays ``-0.0`` at a bound of ``0`` (``max``/``min`` instructions may return ``+0``)."""
    lo, hi = _f32(low), _f32(high)
    return tirx.Select(v > hi, hi, tirx.Select(v < lo, lo, v))


def round_int(fmt: IntFormat, y: PrimExpr, zero_point: Optional[PrimExpr]) -> PrimExpr:
    """``clamp(rint(y) + rint(z), qmin, qmax) - rint(z)`` (no ``z``: ``clamp(rint(y))``)."""
    q = tirx.nearbyint(y)
    if zero_point is None:
        return clamp(q, fmt.qmin, fmt.qmax)
    z = tirx.nearbyint(zero_point)
    return clamp(q + z, fmt.qmin, fmt.qmax) - z


def round_codebook(grid: te.Tensor, n: int, below: PrimExpr, y: PrimExpr) -> PrimExpr:
    """Nearest level of the ascending ``grid``; a tie goes to the even index.

    ``below`` is ``#{grid < y}`` (``torch.searchsorted(grid, y)``, side left), computed by
    :func:`count_below` as a reduction over the levels.
    """
    hi = tirx.min(tirx.max(below, _i32(1)), _i32(n - 1))
    lo = hi - _i32(1)
    d_lo = y - grid[lo]
    d_hi = grid[hi] - y
    take_hi = tirx.Or(d_hi < d_lo, tirx.And(d_hi == d_lo, tirx.floormod(hi, 2) == _i32(0)))
    return tirx.Select(take_hi, grid[hi], grid[lo])


def count_below(grid: te.Tensor, n: int, shape: Sequence[Any], unit: Callable[..., PrimExpr]) -> te.Tensor:
    """``#{grid < y}`` for every element, ``y = unit(*idx)``: a loop over the ``n`` levels.

    A loop rather than ``n`` unrolled comparisons: with ``y`` inlined into each of them the
    255 levels of ``post8`` made TVM's simplifier take over a minute per kernel.
    """
    r = te.reduce_axis((0, n), name="level")
    return te.compute(shape, lambda *idx: te.sum(tirx.Select(grid[r] < unit(*idx), _i32(1), _i32(0)), axis=r),
                      name="levels_below")


def _is_one(dim: Any) -> bool:
    return _static(dim) == 1


def _static(dim: Any) -> Optional[int]:
    if isinstance(dim, int):
        return dim
    return int(dim.value) if hasattr(dim, "value") else None


def _numel(shape: Sequence[Any]) -> Optional[int]:
    total = 1
    for d in shape:
        s = _static(d)
        if s is None:
            return None
        total *= s
    return total


def _broadcast_index(t: te.Tensor, idx: Sequence[PrimExpr]) -> PrimExpr:
    """``t`` read at ``idx`` with NumPy (right-aligned) broadcasting."""
    offset = len(idx) - len(t.shape)
    return t[tuple(_i64(0) if _is_one(d) else idx[offset + j] for j, d in enumerate(t.shape))]


def _i64(value: int) -> PrimExpr:
    return tirx.const(value, "int64")


def aligned_reader(
    t: te.Tensor, x_shape: Sequence[Any], axis: Optional[int], group_size: Optional[int]
) -> Callable[[Sequence[PrimExpr]], PrimExpr]:
    """How the scale (or zero point) ``t`` lines up with element ``idx`` of ``x``.

    The same three layouts as :func:`bitfold.ir.formats._layout.apply_scaled`: per tensor
    (broadcast), per channel along ``axis``, per group of ``group_size`` along ``axis``.
    """
    rank = len(x_shape)
    numel = _numel(t.shape)
    if numel == 1:
        zeros = tuple(_i64(0) for _ in t.shape)
        return lambda idx: t[zeros]
    if axis is None:
        return lambda idx: _broadcast_index(t, idx)
    axis %= rank
    if group_size is None:
        channels = _static(x_shape[axis])
        if len(t.shape) == 1 and channels is not None and _static(t.shape[0]) == channels:
            return lambda idx: t[idx[axis]]
        return lambda idx: _broadcast_index(t, idx)
    if rank > 1 and len(t.shape) == 1:
        return lambda idx: t[tirx.floordiv(idx[axis], group_size)]

    def grouped(idx: Sequence[PrimExpr]) -> PrimExpr:
        coords: List[PrimExpr] = []
        for j, d in enumerate(t.shape):
            if _is_one(d):
                coords.append(_i64(0))
            elif j == axis:
                coords.append(tirx.floordiv(idx[j], group_size))
            else:
                coords.append(idx[j])
        return t[tuple(coords)]

    return grouped


def _ceil_div(size: Any, block: int) -> Any:
    s = _static(size)
    return -(-s // block) if s is not None else tirx.floordiv(size + block - 1, block)


def block_scales(x: te.Tensor, fmt: BlockFormat, axis: int) -> te.Tensor:
    """The effective scale of every block of ``x`` along ``axis`` (see the module docstring)."""
    shape = list(x.shape)
    size, bs = shape[axis], fmt.block_size
    blocks_shape = shape[:axis] + [_ceil_div(size, bs)] + shape[axis + 1:]
    k = te.reduce_axis((0, bs), name="k")

    def block_amax(*bidx: PrimExpr) -> PrimExpr:
        # A ragged last block reads zeros past the end, as the reference pads it. (A reduction
        # ``where=`` condition would be simpler, but ``te.create_prim_func`` drops it.)
        pos = bidx[axis] * bs + k
        src = list(bidx[:axis]) + [tirx.min(pos, size - 1)] + list(bidx[axis + 1:])
        value = tirx.abs(x[tuple(src)].astype(F32))
        return te.max(tirx.Select(pos < size, value, _f32(0.0)), axis=k)

    amax = te.compute(blocks_shape, block_amax, name="block_amax")
    if fmt.scale_kind == "e8m0":
        def e8m0(*bidx: PrimExpr) -> PrimExpr:
            a = amax[bidx]
            exp = tirx.Select(a > _f32(0.0), _exponent_field(a) - _i32(fmt.emax_element), _i32(-127))
            return pow2_exact(tirx.min(tirx.max(exp, _i32(-127)), _i32(127)))

        return te.compute(blocks_shape, e8m0, name="block_scale_e8m0")
    axes = [te.reduce_axis((0, d), name=f"r{i}") for i, d in enumerate(shape)]
    tensor_amax = te.compute((), lambda: te.max(tirx.abs(x[tuple(axes)].astype(F32)), axis=axes), name="tensor_amax")

    def nvfp4(*bidx: PrimExpr) -> PrimExpr:
        ts = tensor_amax[()] / _f32(fmt.element.max * FP8_E4M3.max)
        ts = tirx.Select(ts > _f32(0.0), ts, _f32(1.0))
        block = round_float(FP8_E4M3, amax[bidx] / _f32(fmt.element.max) / ts)
        return tirx.max(block, _f32(2.0**-9)) * ts

    return te.compute(blocks_shape, nvfp4, name="block_scale_e4m3")


def fake_quantize_te(
    x: te.Tensor,
    scale: Optional[te.Tensor],
    zero_point: Optional[te.Tensor],
    grid: Optional[te.Tensor],
    fmt_name: str,
    axis: Optional[int],
    group_size: Optional[int],
) -> te.Tensor:
    """``fmt.quantize(x, scale, axis, group_size, zero_point)`` as a TE tensor.

    ``grid`` is the format's ascending level table (codebook formats only).
    """
    fmt = formats.get(fmt_name)
    rank = len(x.shape)
    element = fmt
    if isinstance(fmt, BlockFormat):
        axis = (-1 if axis is None else axis) % rank
        group_size = fmt.block_size
        element = fmt.element
        if scale is None:
            scale = block_scales(x, fmt, axis)
    if scale is None:
        raise ValueError(f"format {fmt.name} needs a scale")
    read_scale = aligned_reader(scale, x.shape, axis, group_size)
    read_zp = None if zero_point is None else aligned_reader(zero_point, x.shape, axis, group_size)
    grid_values = [float(v) for v in element.grid.tolist()] if isinstance(element, CodebookFormat) else None

    def unit(*idx: PrimExpr) -> PrimExpr:
        return x[idx].astype(F32) / read_scale(idx).astype(F32)

    below = count_below(grid, len(grid_values), x.shape, unit) if grid_values is not None else None

    def body(*idx: PrimExpr) -> PrimExpr:
        s = read_scale(idx).astype(F32)
        y = unit(*idx)
        if isinstance(element, IntFormat):
            q = round_int(element, y, None if read_zp is None else read_zp(idx).astype(F32))
        elif isinstance(element, FloatFormat):
            q = round_float(element, y)
        elif isinstance(element, CodebookFormat):
            q = round_codebook(grid, len(grid_values), below[idx], y)
        else:
            raise ValueError(f"format {fmt.name} ({type(element).__name__}) has no TVM lowering")
        return (q * s).astype(x.dtype)

    return te.compute(x.shape, body, name="fake_quantize")


def codebook_grid(fmt_name: str) -> Optional[Tuple[float, ...]]:
    """The ascending level table a codebook format's lowering reads, else ``None``."""
    fmt = formats.get(fmt_name)
    element = fmt.element if isinstance(fmt, BlockFormat) else fmt
    if isinstance(element, CodebookFormat):
        return tuple(float(v) for v in element.grid.tolist())
    return None

