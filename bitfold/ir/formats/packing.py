"""Bit packing of ``bits``-bit codes into bytes.

Layout: a little-endian bit stream. Code ``i`` occupies bits ``[i·bits, (i+1)·bits)`` of the
stream, and stream bit ``j`` is bit ``j mod 8`` of byte ``j // 8``. So for 4-bit codes the
first code is the low nibble of byte 0 (as ONNX ``INT4`` and ONNX Runtime's ``MatMulNBits``
store them), for 2-bit codes byte 0 holds codes 0…3 from its low bits up, and 3- and 6-bit
codes may straddle bytes (8 three-bit codes fill 3 bytes, 4 six-bit codes fill 3 bytes).
The stream is padded with zero bits to a whole byte: ``ceil(numel · bits / 8)`` bytes.
"""

from __future__ import annotations

import torch

from bitfold.ir.formats.base import FormatError

SUPPORTED_BITS = (1, 2, 3, 4, 5, 6, 7, 8)


def _check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise FormatError(f"can pack 1 to 8 bits per code, got {bits}")


def packed_size(numel: int, bits: int) -> int:
    """Bytes that :func:`pack` produces for ``numel`` codes."""
    return -(-numel * bits // 8)


def _pack_byte_aligned(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """1-, 2- and 4-bit codes: whole codes per byte, combined in uint8 without widening."""
    per = 8 // bits
    n = codes.numel()
    padded = torch.nn.functional.pad(codes, (0, -n % per)).view(-1, per)
    out = padded[:, 0].clone()
    for j in range(1, per):
        out |= padded[:, j] << (bits * j)
    return out


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer ``codes`` (any shape, flattened in row-major order) into a uint8 tensor."""
    _check_bits(bits)
    codes = torch.as_tensor(codes)
    if codes.is_floating_point():
        raise FormatError(f"pack expects integer codes, got {codes.dtype}")
    flat = codes.reshape(-1)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 2**bits):
        raise FormatError(
            f"pack: codes must lie in [0, {2**bits - 1}] for {bits} bits; "
            f"found [{int(flat.min())}, {int(flat.max())}]"
        )
    n = flat.numel()
    if bits == 8:
        return flat.to(torch.uint8).clone()
    if 8 % bits == 0:
        return _pack_byte_aligned(flat.to(torch.uint8), bits)
    # Eight codes fill exactly `bits` bytes, so pack in groups of eight through an int64 word.
    groups = -(-n // 8)
    padded = torch.zeros(groups * 8, dtype=torch.int64, device=flat.device)
    padded[:n] = flat.to(torch.int64)
    shifts = torch.arange(8, device=flat.device, dtype=torch.int64) * bits
    words = (padded.view(groups, 8) << shifts).sum(dim=1)
    byte_shifts = torch.arange(bits, device=flat.device, dtype=torch.int64) * 8
    out = ((words.unsqueeze(1) >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1)
    return out[: packed_size(n, bits)].contiguous()


def unpack(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Recover ``numel`` codes (uint8, 1-D) from the bytes written by :func:`pack`."""
    _check_bits(bits)
    packed = torch.as_tensor(packed)
    if packed.dtype != torch.uint8:
        raise FormatError(f"unpack expects uint8 bytes, got {packed.dtype}")
    flat = packed.reshape(-1)
    need = packed_size(numel, bits)
    if flat.numel() < need:
        raise FormatError(f"unpack: {numel} codes of {bits} bits need {need} bytes, got {flat.numel()}")
    if bits == 8:
        return flat[:numel].clone()
    if 8 % bits == 0:
        per = 8 // bits
        shifts = torch.arange(per, device=flat.device, dtype=torch.uint8) * bits
        codes = (flat[:need].unsqueeze(1) >> shifts) & (2**bits - 1)
        return codes.reshape(-1)[:numel].contiguous()
    groups = -(-numel // 8)
    padded = torch.zeros(groups * bits, dtype=torch.int64, device=flat.device)
    padded[:need] = flat[:need].to(torch.int64)
    byte_shifts = torch.arange(bits, device=flat.device, dtype=torch.int64) * 8
    words = (padded.view(groups, bits) << byte_shifts).sum(dim=1)
    shifts = torch.arange(8, device=flat.device, dtype=torch.int64) * bits
    codes = ((words.unsqueeze(1) >> shifts) & (2**bits - 1)).to(torch.uint8).reshape(-1)
    return codes[:numel].contiguous()
