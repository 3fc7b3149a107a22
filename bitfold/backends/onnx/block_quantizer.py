"""Block-scaled fake-quantizers (OCP MX, NVFP4) as standard ONNX ops.

:class:`~bitfold.ir.formats.BlockFormat` computes one scale per block of ``B`` values
along the last axis from the data itself. The function ``FakeQuantize_<fmt>_rank<r>(x)``
pads the last axis to whole blocks, views it as ``[..., nb, B]`` and computes, with
``amax`` the block's largest magnitude:

* MX (E8M0 scales): ``X = 2^clamp(floor(log2 amax) - emax_elem, -127, 127)``, with
  ``floor(log2 ·)`` found exactly as in :mod:`~bitfold.backends.onnx.float_quantizer`
  (``-127`` for an all-zero block);
* NVFP4: ``s_t = max|x| / (6 · 448)`` (1 for an all-zero tensor) and
  ``X = max(e4m3(amax / 6 / s_t), 2^-9) · s_t``, the E4M3 rounding done by an exact
  ``float8e4m3fn`` QuantizeLinear/DequantizeLinear pair.

Then every element is rounded to the element format at scale ``X`` (the ``ExMy``
subgraph) and the padding is cut off again. Padding values are zeros, as in PyTorch, so
a ragged last block gets the same scale.
"""

from __future__ import annotations

import math
from typing import List

import ml_dtypes
import numpy as np
from onnx import TensorProto, numpy_helper

from bitfold.backends.onnx.emitter import Emitter
from bitfold.backends.onnx.float_quantizer import round_to_grid
from bitfold.ir.formats import BlockFormat

_E4M3_MAX = 448.0
_E4M3_MIN_POSITIVE = 2.0**-9


def _floor_log2_clamped(em: Emitter, a: str, lo: int, hi: int) -> str:
    """``clamp(floor(log2 a), lo, hi)`` as float, exact (``lo`` for ``a = 0``)."""
    p = np.arange(lo, hi + 1)
    upper = np.ldexp(np.float32(1), np.minimum(p + 1, hi).astype(np.int32)).astype(np.float32)
    upper[-1] = np.inf  # the top binade has no upper bound (and 2^128 is not a float32)
    lower = np.ldexp(np.float32(1), p.astype(np.int32)).astype(np.float32)
    lower[0] = 0.0
    log2 = em.op("Mul", em.op("Log", a), em.scalar(1.0 / math.log(2.0), "inv_ln2"), hint="log2_estimate")
    est = em.op("Clip", em.op("Floor", log2), em.scalar(lo, "lo"), em.scalar(hi, "hi"), hint="exponent_estimate")
    j0 = em.op("Cast", em.op("Sub", est, em.scalar(lo, "lo_offset")), to=TensorProto.INT64)
    up = em.op("Cast", em.op("GreaterOrEqual", a, em.op("Gather", em.const(upper, "upper"), j0)), to=TensorProto.INT64)
    down = em.op("Cast", em.op("Less", a, em.op("Gather", em.const(lower, "lower"), j0)), to=TensorProto.INT64)
    j = em.op("Sub", em.op("Add", j0, up), down, hint="exponent_index")
    return em.op("Add", em.op("Cast", j, to=TensorProto.FLOAT), em.scalar(lo, "lo_back"), hint="exponent")


def _block_scales(em: Emitter, x: str, amax: str, fmt: BlockFormat) -> str:
    if fmt.scale_kind == "e8m0":
        lo = -127 + fmt.emax_element
        exponent = em.op("Sub", _floor_log2_clamped(em, amax, lo, 127), em.scalar(fmt.emax_element, "emax"))
        exps = np.arange(-127, 128 - fmt.emax_element)
        table = em.const(np.ldexp(np.float32(1), exps.astype(np.int32)).astype(np.float32), "e8m0_values")
        index = em.op("Cast", em.op("Sub", exponent, em.scalar(-127, "min_exponent")), to=TensorProto.INT64)
        return em.op("Gather", table, index, hint="block_scale")
    tensor_amax = em.op("ReduceMax", em.op("Abs", x), keepdims=0, hint="tensor_amax")
    s_t = em.op("Div", tensor_amax, em.scalar(fmt.element.max * _E4M3_MAX, "nvfp4_range"))
    s_t = em.op("Where", em.op("Greater", s_t, em.scalar(0.0, "zero")), s_t, em.scalar(1.0, "one"), hint="tensor_scale")
    ratio = em.op("Div", em.op("Div", amax, em.scalar(fmt.element.max, "element_max")), s_t)
    one = em.scalar(1.0, "unit_scale")
    zero = em.const(numpy_helper.from_array(np.zeros((), ml_dtypes.float8_e4m3fn)), "e4m3_zero")
    e4m3 = em.op("DequantizeLinear", em.op("QuantizeLinear", ratio, one, zero), one, zero, hint="e4m3_block_scale")
    e4m3 = em.op("Max", e4m3, em.scalar(_E4M3_MIN_POSITIVE, "e4m3_min"))
    return em.op("Mul", e4m3, s_t, hint="block_scale")


def block_quantizer_body(fmt: BlockFormat, rank: int):
    """Body of ``FakeQuantize_<fmt>_rank<rank>(x)``, blocks along the last axis."""
    B = fmt.block_size

    def body(em: Emitter, args: List[str]) -> str:
        (x,) = args
        size = em.op("Gather", em.op("Shape", x), em.const(np.array(rank - 1, np.int64), "last"), hint="length")
        block = em.const(np.array(B, np.int64), "block")
        pad = em.op("Mod", em.op("Sub", block, em.op("Mod", size, block)), block, hint="padding")
        pads = em.op("Concat", em.const(np.zeros(2 * rank - 1, np.int64), "no_pad"),
                     em.op("Unsqueeze", pad, em.ints([0], "axis0")), axis=0)
        padded = em.op("Pad", x, pads, hint="padded")
        blocks = em.op("Reshape", padded, em.ints([0] * (rank - 1) + [-1, B], "block_view"), hint="blocks")
        amax = em.op("ReduceMax", em.op("Abs", blocks), em.ints([-1], "last_axis"), keepdims=1, hint="block_amax")
        scale = _block_scales(em, x, amax, fmt)
        y = em.op("Div", blocks, scale, hint="unit")
        q = em.op("Mul", round_to_grid(em, y, fmt.element), scale, hint="dequantized_blocks")
        flat = em.op("Reshape", q, em.ints([0] * (rank - 1) + [-1], "flat_view"))
        return em.op("Slice", flat, em.ints([0], "start"), em.op("Unsqueeze", size, em.ints([0], "axis0")),
                     em.ints([-1], "last_axis"), hint="unpadded")

    return body
