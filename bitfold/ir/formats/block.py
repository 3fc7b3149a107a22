"""Block-scaled formats: OCP Microscaling (MX) and NVIDIA's NVFP4.

A block format is an element format plus one shared scale per ``block_size`` consecutive
values along an axis (the last axis by default); the scale is part of the format and is
computed from the data by :meth:`BlockFormat.block_scales`.

* **MX** (``mxfp4``, ``mxfp6_e2m3``, ``mxfp6_e3m2``, ``mxfp8_e4m3``, ``mxfp8_e5m2``; 32 values
  per block): the scale is a power of two stored as E8M0,
  ``X = 2^(floor(log2 amax) - emax_elem)`` with ``emax_elem`` the exponent of the element
  format's largest normal, clamped to ``2^-127 … 2^127``; elements are ``x / X`` rounded to
  the element format, saturating.
* **NVFP4** (16 values per block): a per-tensor fp32 scale ``s_t = amax(x) / (6 · 448)``
  and per block an E4M3 scale ``s_b = e4m3(amax_block / 6 / s_t)`` (at least the smallest
  positive E4M3 value), so the block's effective scale is ``s_b · s_t``; elements are E2M1.

Everywhere below, "scale" means the effective float scale of each block, shaped like ``x``
with the blocked axis replaced by the number of blocks; :meth:`BlockFormat.scale_codes`
turns it into the stored 8-bit scale codes.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch

from bitfold.ir.formats._layout import Scale
from bitfold.ir.formats.base import Format, FormatError, check_finite
from bitfold.ir.formats.minifloat import FloatFormat

FP8_E4M3 = FloatFormat(4, 3, special="fn", name="fp8_e4m3")
_E4M3_MIN_POSITIVE = 2.0**-9


class BlockFormat(Format):
    """An element format with one shared scale per block of ``block_size`` values."""

    def __init__(self, name: str, element: FloatFormat, block_size: int, scale_kind: str) -> None:
        if scale_kind not in ("e8m0", "e4m3"):
            raise FormatError(f"block scale kind must be 'e8m0' or 'e4m3', got {scale_kind!r}")
        self.name, self.element, self.block_size, self.scale_kind = name, element, block_size, scale_kind
        self.bits = element.bits
        self.emax_element = math.floor(math.log2(element.max))

    @property
    def codes(self) -> torch.Tensor:
        return self.element.codes

    def describe(self) -> Dict[str, Any]:
        return {
            **super().describe(),
            "element": self.element.describe(),
            "block_size": self.block_size,
            "scale": self.scale_kind,
            "bits_per_value": self.bits + 8 / self.block_size,
        }

    def _round(self, y: torch.Tensor, zero_point: Optional[torch.Tensor]) -> torch.Tensor:
        return self.element._round(y, zero_point)

    def _encode(self, y: torch.Tensor, zero_point: Optional[torch.Tensor]) -> torch.Tensor:
        return self.element._encode(y, zero_point)

    def tensor_scale(self, x: torch.Tensor) -> torch.Tensor:
        """NVFP4's per-tensor fp32 scale ``amax / (6 · 448)`` (1 for an all-zero tensor)."""
        amax = x.detach().abs().max().to(torch.float32)
        s = amax / (self.element.max * FP8_E4M3.max)
        return torch.where(s > 0, s, torch.ones_like(s))

    def block_amax(self, x: torch.Tensor, axis: int = -1) -> torch.Tensor:
        """``max |x|`` of every block along ``axis`` (a ragged last block is allowed)."""
        if x.dim() == 0:
            raise FormatError(f"{self.name} needs at least one dimension to block along")
        axis = axis % x.dim()
        v = x.detach().to(torch.float32).abs().movedim(axis, -1)
        blocks = -(-v.shape[-1] // self.block_size)
        v = torch.nn.functional.pad(v, (0, blocks * self.block_size - v.shape[-1]))
        return v.unflatten(-1, (blocks, self.block_size)).amax(-1).movedim(-1, axis)

    def block_scales(
        self, x: torch.Tensor, axis: int = -1, tensor_scale: Optional[torch.Tensor] = None, name: str = "input"
    ) -> torch.Tensor:
        """The effective scale of every block of ``x`` along ``axis``."""
        x = torch.as_tensor(x)
        check_finite(x, name, self.name)
        amax = self.block_amax(x, axis)
        if self.scale_kind == "e8m0":
            exp = (amax.view(torch.int32) >> 23) - 127 - self.emax_element
            exp = torch.where(amax > 0, exp, torch.full_like(exp, -127)).clamp(-127, 127)
            return torch.exp2(exp.to(torch.float32))
        if tensor_scale is None:
            tensor_scale = self.tensor_scale(x)
        block = FP8_E4M3.quantize(amax / self.element.max / tensor_scale)
        return block.clamp(min=_E4M3_MIN_POSITIVE) * tensor_scale

    def _check_blocking(self, group_size: Optional[int]) -> None:
        if group_size not in (None, self.block_size):
            raise FormatError(f"{self.name} has blocks of {self.block_size}; group_size={group_size} conflicts")

    def quantize(
        self,
        x: torch.Tensor,
        scale: Optional[Scale] = None,
        axis: Optional[int] = -1,
        group_size: Optional[int] = None,
        zero_point: Optional[Scale] = None,
        name: str = "input",
    ) -> torch.Tensor:
        """Fake-quantize ``x`` in blocks along ``axis``; block scales come from the data unless given."""
        self._check_blocking(group_size)
        axis = -1 if axis is None else axis
        if scale is None:
            scale = self.block_scales(x, axis, name=name)
        return self.element.quantize(x, scale, axis, self.block_size, zero_point, name)

    def encode(
        self,
        x: torch.Tensor,
        scale: Optional[Scale] = None,
        axis: Optional[int] = -1,
        group_size: Optional[int] = None,
        zero_point: Optional[Scale] = None,
        name: str = "input",
    ) -> torch.Tensor:
        """Element codes of ``x``; ``scale`` is required (from :meth:`block_scales`)."""
        self._check_blocking(group_size)
        if scale is None:
            raise FormatError(f"{self.name}.encode needs the block scales: pass scale=fmt.block_scales(x)")
        axis = -1 if axis is None else axis
        return self.element.encode(x, scale, axis, self.block_size, zero_point, name)

    def decode(
        self,
        codes: torch.Tensor,
        scale: Optional[Scale] = None,
        axis: Optional[int] = -1,
        group_size: Optional[int] = None,
        zero_point: Optional[Scale] = None,
    ) -> torch.Tensor:
        """Values of element ``codes`` times their block scales."""
        self._check_blocking(group_size)
        if scale is None:
            raise FormatError(f"{self.name}.decode needs the block scales")
        axis = -1 if axis is None else axis
        return self.element.decode(codes, scale, axis, self.block_size, zero_point)

    def scale_codes(self, scales: torch.Tensor, tensor_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The stored 8-bit codes of block ``scales``: E8M0 (exponent + 127) or E4M3.

        NVFP4 needs the ``tensor_scale`` the block scales were made with.
        """
        scales = torch.as_tensor(scales, dtype=torch.float32)
        if self.scale_kind == "e8m0":
            exp = (scales.view(torch.int32) >> 23) - 127
            if not bool((torch.exp2(exp.to(torch.float32)) == scales).all()):
                raise FormatError(f"{self.name} block scales must be powers of two")
            return (exp + 127).to(torch.uint8)
        if tensor_scale is None:
            raise FormatError(f"{self.name}.scale_codes needs the tensor_scale")
        return FP8_E4M3.encode(scales / tensor_scale)

    def scales_from_codes(
        self, codes: torch.Tensor, tensor_scale: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """The inverse of :meth:`scale_codes`."""
        codes = torch.as_tensor(codes)
        if self.scale_kind == "e8m0":
            return torch.exp2(codes.to(torch.float32) - 127)
        if tensor_scale is None:
            raise FormatError(f"{self.name}.scales_from_codes needs the tensor_scale")
        return FP8_E4M3.decode(codes) * tensor_scale

    def bytes_for(self, shape: Tuple[int, ...], axis: int = -1) -> int:
        """Storage of a tensor of ``shape``: packed elements plus one byte per block scale."""
        numel = math.prod(shape)
        blocks = numel // shape[axis] * -(-shape[axis] // self.block_size)
        return -(-numel * self.bits // 8) + blocks + (4 if self.scale_kind == "e4m3" else 0)


def mx(element: FloatFormat, name: str) -> BlockFormat:
    return BlockFormat(name, element, 32, "e8m0")


def nvfp4() -> BlockFormat:
    return BlockFormat("nvfp4", FloatFormat(2, 1, name="fp4_e2m1"), 16, "e4m3")
