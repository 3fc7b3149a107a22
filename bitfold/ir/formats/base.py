"""The :class:`Format` contract shared by every number format.

A format is data: its code table (the value of every ``bits``-bit code, NaN where a code
means NaN/Inf or is unused), the sorted grid of distinct finite values, and the largest
magnitude. Quantizing means dividing by a scale, rounding to the grid (round half to even,
saturating to ±max) and multiplying back; encoding returns the code instead of the value.
"""

from __future__ import annotations

import abc
from typing import Any, Dict, Optional

import torch

from bitfold.ir.formats._layout import Scale, apply_scaled, check_positive_finite


class FormatError(ValueError):
    """Raised for invalid format parameters or invalid inputs to a format."""


def check_finite(x: torch.Tensor, name: str, fmt: str) -> None:
    """Raise a :class:`FormatError` naming ``name`` when ``x`` holds NaN or Inf."""
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise FormatError(
            f"cannot quantize '{name}' to {fmt}: it contains {bad} NaN/Inf value(s) out of {x.numel()}"
        )


class Format(abc.ABC):
    """A number format: ``bits``-bit codes, each standing for one real value."""

    name: str
    bits: int
    #: True when the format takes an integer zero point (asymmetric integers).
    supports_zero_point: bool = False

    @property
    @abc.abstractmethod
    def codes(self) -> torch.Tensor:
        """float32 tensor of length ``2**bits``: the value of each code (NaN if it has none)."""

    @property
    def grid(self) -> torch.Tensor:
        """The distinct finite values of the format, ascending (``-0`` and ``+0`` count once)."""
        table = self.codes
        return torch.unique(table[torch.isfinite(table)] + 0.0)

    @property
    def max(self) -> float:
        """The largest finite magnitude."""
        return float(self.grid.abs().max())

    def describe(self) -> Dict[str, Any]:
        """A JSON-ready description of the format, for manifests and reports."""
        return {"name": self.name, "kind": type(self).__name__, "bits": self.bits, "max": self.max}

    def __repr__(self) -> str:
        return f"<format {self.name}: {self.bits} bits, max {self.max:g}>"

    # Subclasses implement rounding and encoding on unit-scale float32 values.
    @abc.abstractmethod
    def _round(self, y: torch.Tensor, zero_point: Optional[torch.Tensor]) -> torch.Tensor:
        """Round float32 ``y`` to the nearest grid value (half to even), saturating."""

    @abc.abstractmethod
    def _encode(self, y: torch.Tensor, zero_point: Optional[torch.Tensor]) -> torch.Tensor:
        """Codes (int32) of the grid values nearest to float32 ``y``."""

    def _decode(self, codes: torch.Tensor, zero_point: Optional[torch.Tensor]) -> torch.Tensor:
        """Unit-scale float32 values of ``codes``."""
        if zero_point is not None:
            raise FormatError(f"{self.name} takes no zero point")
        return self.codes.to(codes.device)[codes.long()]

    def _check_zero_point(self, zero_point: Optional[Scale]) -> None:
        if zero_point is not None and not self.supports_zero_point:
            raise FormatError(f"{self.name} takes no zero point; only integer formats do")

    def quantize(
        self,
        x: torch.Tensor,
        scale: Scale = 1.0,
        axis: Optional[int] = None,
        group_size: Optional[int] = None,
        zero_point: Optional[Scale] = None,
        name: str = "input",
        validate: bool = True,
    ) -> torch.Tensor:
        """Fake-quantize: ``round_to_grid(x / scale) * scale``, in ``x``'s dtype.

        ``scale`` is a scalar, per channel along ``axis``, or per group of ``group_size``
        along ``axis`` (see :mod:`bitfold.ir.formats._layout`). ``name`` labels ``x`` in errors.
        ``validate=False`` skips the NaN/Inf checks of ``x`` and ``scale``: for inner loops
        (searches) that checked their inputs once and call this thousands of times.
        """
        x = torch.as_tensor(x)
        if validate:
            check_finite(x, name, self.name)
        self._check_zero_point(zero_point)
        x32 = x.to(torch.float32)

        def fn(v: torch.Tensor, s: torch.Tensor, zp: Optional[torch.Tensor]) -> torch.Tensor:
            if validate:
                check_positive_finite(s)
            return self._round(v / s, zp) * s

        return apply_scaled(fn, x32, scale, axis, group_size, zero_point).to(x.dtype)

    def encode(
        self,
        x: torch.Tensor,
        scale: Scale = 1.0,
        axis: Optional[int] = None,
        group_size: Optional[int] = None,
        zero_point: Optional[Scale] = None,
        name: str = "input",
    ) -> torch.Tensor:
        """Codes (uint8, ``x``'s shape) of ``x / scale`` rounded to the grid."""
        x = torch.as_tensor(x)
        check_finite(x, name, self.name)
        self._check_zero_point(zero_point)

        def fn(v: torch.Tensor, s: torch.Tensor, zp: Optional[torch.Tensor]) -> torch.Tensor:
            check_positive_finite(s)
            return self._encode(v / s, zp)

        out = apply_scaled(fn, x.to(torch.float32), scale, axis, group_size, zero_point)
        return out.to(torch.uint8)

    def decode(
        self,
        codes: torch.Tensor,
        scale: Scale = 1.0,
        axis: Optional[int] = None,
        group_size: Optional[int] = None,
        zero_point: Optional[Scale] = None,
    ) -> torch.Tensor:
        """float32 values of ``codes`` times ``scale`` (the inverse of :meth:`encode`)."""
        codes = torch.as_tensor(codes)
        if codes.is_floating_point():
            raise FormatError(f"{self.name}.decode expects integer codes, got {codes.dtype}")
        self._check_zero_point(zero_point)
        if codes.numel() and int(codes.max()) >= 2**self.bits:
            raise FormatError(f"{self.name}.decode: code {int(codes.max())} does not fit in {self.bits} bits")

        def fn(c: torch.Tensor, s: torch.Tensor, zp: Optional[torch.Tensor]) -> torch.Tensor:
            return self._decode(c, zp) * s

        return apply_scaled(fn, codes.to(torch.int32), scale, axis, group_size, zero_point)
