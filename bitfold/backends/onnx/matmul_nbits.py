"""INT4 linears as ONNX Runtime's ``com.microsoft.MatMulNBits``, its fast 4-bit GEMM.

``MatMulNBits(A, B, scales, zero_points, , bias)`` with ``bits=4`` computes
``A @ Wᵀ (+ bias)`` for ``W[n, k] = (u[n, k] - zp[n, b]) · scale[n, b]``, ``b = k // block``,
where the unsigned 4-bit codes ``u`` are stored ``[N, ceil(K / block), block / 2]`` bytes,
low nibble first, and the zero points packed the same way, one row of blocks at a time.
bitfold's 4-bit weights map onto it exactly:

* ``uint4`` with a zero point: ``u`` = the code, ``zp`` = the rounded zero point;
* ``uint4`` without one: ``zp = 0``;  ``int4`` (symmetric): ``u = q + 8``, ``zp = 8``;
* per group of ``g`` (a power of two ≥ 16): ``block = g``; per output channel: the scale
  is repeated over blocks of 128 (fewer when K is smaller);
* a ragged last block is padded with codes equal to its zero point, which decode to 0.

``accuracy_level`` picks the compute type of ONNX Runtime's kernel: 0 (unset) and 1 keep
``A`` in float32; 4 quantizes ``A`` to int8 per block and runs an int8 GEMM — faster on
CPU, and it adds that rounding. The exporter always sets it and records it.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from onnx import numpy_helper

from bitfold.backends.onnx.emitter import Emitter
from bitfold.backends.onnx.weight_storage import StoredWeight, group_size, weight_codes
from bitfold.ir import formats
from bitfold.ir.formats import IntFormat
from bitfold.ir.ops import PackedWeight

MICROSOFT_DOMAIN = "com.microsoft"
_CHANNEL_BLOCK = 128


def unsupported_reason(weight: PackedWeight) -> Optional[str]:
    """Why ``weight`` cannot go to MatMulNBits, or ``None`` when it can."""
    f = formats.get(weight.fmt)
    if not isinstance(f, IntFormat) or f.bits != 4:
        return f"MatMulNBits takes 4-bit integers, not {f.name}"
    g = group_size(weight)
    if g is not None and (g < 16 or g & (g - 1)):
        return f"MatMulNBits needs a power-of-two block of at least 16, not groups of {g}"
    return None


def _block(weight: PackedWeight) -> int:
    g = group_size(weight)
    if g is not None:
        return g
    return int(min(_CHANNEL_BLOCK, max(16, 1 << (weight.in_features - 1).bit_length())))


def _pack_rows(u: np.ndarray) -> np.ndarray:
    """Rows of 4-bit values ``[R, C]`` (C even) as bytes ``[R, C/2]``, low nibble first."""
    return (u[:, 0::2] | (u[:, 1::2] << 4)).astype(np.uint8)


def emit_matmul_nbits(em: Emitter, x: str, weight: PackedWeight, bias: Optional[str], accuracy_level: int,
                      hint: str) -> tuple:
    """A MatMulNBits node for ``x @ Ŵᵀ (+ bias)``; returns (output name, :class:`StoredWeight`)."""
    f = formats.get(weight.fmt)
    N, K = weight.out_features, weight.in_features
    block = _block(weight)
    blocks = -(-K // block)
    q = f.codes.numpy()[weight_codes(weight)].astype(np.int32)  # [N, K] integer levels
    scale = weight.scale.detach().to(torch.float32).numpy().reshape(N, -1)
    if weight.zero_point is not None:
        zero = np.round(weight.zero_point.detach().to(torch.float32).numpy()).astype(np.int32).reshape(N, -1)
    else:
        zero = np.zeros(scale.shape, np.int32)
    offset = 8 if f.signed else 0  # signed levels q become unsigned codes q + 8
    if group_size(weight) is None:
        scale = np.repeat(scale, blocks, axis=1)
        zero = np.repeat(zero, blocks, axis=1)
    u_zero = zero + offset  # the unsigned code standing for 0
    u = q + offset
    u = np.concatenate([u, np.repeat(u_zero[:, -1:], blocks * block - K, axis=1)], axis=1)
    packed = _pack_rows(u.astype(np.uint8)).reshape(N, blocks, block // 2)
    zp = u_zero.astype(np.uint8)
    if blocks % 2:
        zp = np.concatenate([zp, np.zeros((N, 1), np.uint8)], axis=1)
    zp_packed = _pack_rows(zp).reshape(-1)
    b = em.const(numpy_helper.from_array(packed), f"{hint}_codes")
    s = em.const(scale.astype(np.float32).reshape(-1), f"{hint}_scales")
    z = em.const(zp_packed, f"{hint}_zero_points")
    out = em.op("MatMulNBits", x, b, s, z, None, bias, domain=MICROSOFT_DOMAIN, hint=f"{hint}_matmul_nbits",
                K=K, N=N, bits=4, block_size=block, accuracy_level=accuracy_level)
    size = packed.nbytes + scale.size * 4 + zp_packed.nbytes
    return out, StoredWeight("uint4 (MatMulNBits)", f"MatMulNBits(block {block}, accuracy_level {accuracy_level})",
                             int(size))
