"""Integer formats ``int2``…``int8`` and ``uint2``…``uint8``.

Signed formats use two's complement over the full range ``[-2^(b-1), 2^(b-1) - 1]`` (the
range of ONNX ``INT4`` and ml_dtypes ``int4``); unsigned ones ``[0, 2^b - 1]``. With a zero
point ``z`` (an integer in the code range, per tensor, channel or group like the scale):

    q = clamp(round_half_even(x / s) + z, qmin, qmax),   x̂ = (q - z) · s

The code of ``q`` is its low ``b`` bits (two's complement), as ONNX packs ``INT4``.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from bitfold.ir.formats.base import Format, FormatError


class IntFormat(Format):
    """A ``bits``-bit integer format, signed or unsigned, optionally with a zero point."""

    supports_zero_point = True

    def __init__(self, bits: int, signed: bool = True) -> None:
        if not 2 <= bits <= 8:
            raise FormatError(f"integer formats have 2 to 8 bits, got {bits}")
        self.bits = bits
        self.signed = signed
        self.name = f"{'int' if signed else 'uint'}{bits}"
        self.qmin = -(2 ** (bits - 1)) if signed else 0
        self.qmax = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
        raw = torch.arange(2**bits, dtype=torch.float32)
        if signed:
            raw = torch.where(raw >= 2 ** (bits - 1), raw - 2**bits, raw)
        self._codes = raw

    @property
    def codes(self) -> torch.Tensor:
        return self._codes

    @property
    def max(self) -> float:
        """The largest positive level: what a symmetric scale divides ``amax`` by."""
        return float(self.qmax)

    def describe(self) -> Dict[str, Any]:
        return {**super().describe(), "signed": self.signed, "qmin": self.qmin, "qmax": self.qmax}

    def _levels(self, y: torch.Tensor, zero_point: Optional[torch.Tensor]) -> torch.Tensor:
        q = torch.round(y)
        if zero_point is not None:
            q = q + torch.round(zero_point)
        return q.clamp(self.qmin, self.qmax)

    def _round(self, y: torch.Tensor, zero_point: Optional[torch.Tensor]) -> torch.Tensor:
        q = self._levels(y, zero_point)
        return q if zero_point is None else q - torch.round(zero_point)

    def _encode(self, y: torch.Tensor, zero_point: Optional[torch.Tensor]) -> torch.Tensor:
        return self._levels(y, zero_point).to(torch.int32) & (2**self.bits - 1)

    def _decode(self, codes: torch.Tensor, zero_point: Optional[torch.Tensor]) -> torch.Tensor:
        q = self._codes.to(codes.device)[codes.long()]
        return q if zero_point is None else q - torch.round(zero_point)
