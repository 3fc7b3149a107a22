"""Sign-magnitude floating-point formats ``ExMy``, with subnormals and a chosen bias.

A code is ``sign | exponent field e (E bits) | mantissa m (M bits)`` and stands for

    e = 0:  (-1)^sign · (m / 2^M) · 2^(1 - bias)          (subnormal)
    e > 0:  (-1)^sign · (1 + m / 2^M) · 2^(e - bias)

Two families share this code:

* the LLM-FP family ``e{E}m{M}`` (every code finite, no Inf/NaN; default bias
  ``2^(E-1) - 1``; max ``(2 - 2^-M) · 2^(2^E - 1 - bias)``), so ``e2m1`` is
  ±{0, .5, 1, 1.5, 2, 3, 4, 6};
* the standard formats of ml_dtypes/OCP: ``fp4_e2m1``, ``fp6_e2m3``, ``fp6_e3m2`` (no
  Inf/NaN, equal to the LLM-FP family), ``fp8_e4m3`` (E4M3FN: ``S.1111.111`` is NaN, max 448)
  and ``fp8_e5m2`` (IEEE-like: top exponent is Inf/NaN, max 57344).

Rounding to the nearest value is done with exact float32 arithmetic: for ``a = |y|``
clipped to max, ``p = max(floor(log2 a), 1 - bias)`` (the clamp gives the subnormal binade),
``step = 2^(p - M)``, ``q = round_half_even(a / step) · step``. Scaling by a power of two
is exact, so this equals correctly rounded conversion, as ml_dtypes does after saturation.
An LLM-FP real-valued exponent bias ``b̃`` is the scale ``2^(bias - b̃)`` on this grid
(:meth:`FloatFormat.scale_for_bias`). This matches LLM-FP4's released quantizer, whose
exponent is ``floor(log2|x| + b̃)`` (the floor of the sum, so binades follow ``x · 2^b̃``).
"""

from __future__ import annotations

import re
from typing import Any, Dict, Optional

import torch

from bitfold.ir.formats.base import Format, FormatError


class FloatFormat(Format):
    """An ``ExMy`` sign-magnitude float format.

    ``special`` chooses which top codes are not finite: ``"none"`` (LLM-FP, all codes
    finite), ``"fn"`` (only all-ones exponent and mantissa is NaN, as E4M3FN) or ``"ieee"``
    (the all-ones exponent is Inf/NaN, as E5M2).
    """

    def __init__(
        self,
        exponent_bits: int,
        mantissa_bits: int,
        bias: Optional[int] = None,
        special: str = "none",
        name: Optional[str] = None,
    ) -> None:
        E, M = exponent_bits, mantissa_bits
        if E < 1 or M < 0 or not 3 <= 1 + E + M <= 8:
            raise FormatError(
                f"float formats need E >= 1, M >= 0 and 3 <= 1+E+M <= 8 bits; got E={E}, M={M}"
            )
        if special not in ("none", "fn", "ieee"):
            raise FormatError(f"special must be 'none', 'fn' or 'ieee', got {special!r}")
        self.exponent_bits, self.mantissa_bits = E, M
        self.default_bias = 2 ** (E - 1) - 1
        self.bias = self.default_bias if bias is None else int(bias)
        if 2**E - 1 - self.bias > 127 or 1 - self.bias - M < -126:
            raise FormatError(
                f"exponent bias {self.bias} puts e{E}m{M} outside float32's exponent range"
            )
        self.special = special
        self.bits = 1 + E + M
        self.name = name or (f"e{E}m{M}" if self.bias == self.default_bias else f"e{E}m{M}b{self.bias}")
        top_exp = 2**E - 1
        if special == "ieee":
            top_exp -= 1
            top_mant = 2**M - 1
        elif special == "fn":
            top_mant = 2**M - 2
        else:
            top_mant = 2**M - 1
        if top_mant < 0:
            raise FormatError(f"{self.name}: no finite code left under special={special!r}")
        self.max_exponent_field = top_exp
        self.max_mantissa_at_top = top_mant
        self._max = (1 + top_mant / 2**M) * 2.0 ** (top_exp - self.bias)
        self.min_exponent = 1 - self.bias
        self._codes = self._build_codes()

    def _build_codes(self) -> torch.Tensor:
        E, M = self.exponent_bits, self.mantissa_bits
        codes = torch.arange(2**self.bits, dtype=torch.int64)
        sign = torch.where((codes >> (E + M)) & 1 == 1, -1.0, 1.0).double()
        e = (codes >> M) & (2**E - 1)
        m = (codes & (2**M - 1)).double()
        sub = m / 2**M * 2.0 ** (1 - self.bias)
        normal = (1 + m / 2**M) * torch.pow(2.0, (e - self.bias).double())
        val = sign * torch.where(e == 0, sub, normal)
        if self.special == "ieee":
            top = e == 2**E - 1
            val = torch.where(top & (m == 0), sign * float("inf"), val)
            val = torch.where(top & (m != 0), torch.tensor(float("nan"), dtype=torch.float64), val)
        elif self.special == "fn":
            nan = (e == 2**E - 1) & (m == 2**M - 1)
            val = torch.where(nan, torch.tensor(float("nan"), dtype=torch.float64), val)
        return val.to(torch.float32)

    @property
    def codes(self) -> torch.Tensor:
        return self._codes

    @property
    def max(self) -> float:
        return self._max

    def describe(self) -> Dict[str, Any]:
        return {
            **super().describe(),
            "exponent_bits": self.exponent_bits,
            "mantissa_bits": self.mantissa_bits,
            "bias": self.bias,
            "special": self.special,
        }

    def with_bias(self, bias: int) -> "FloatFormat":
        """The same ``ExMy`` layout with another (integer) exponent bias."""
        return FloatFormat(self.exponent_bits, self.mantissa_bits, bias, self.special)

    def scale_for_bias(self, bias: torch.Tensor | float) -> torch.Tensor:
        """The scale that makes this format act as if its exponent bias were ``bias``.

        ``Q(x; b̃) = 2^-b̃ · Q₀(2^b̃ · x)`` where ``Q₀`` is the bias-0 grid, so a real-valued
        (or per-channel) bias is the scale ``2^(self.bias - b̃)`` on this grid.
        """
        bias = torch.as_tensor(bias, dtype=torch.float64)
        return torch.exp2(self.bias - bias).to(torch.float32)

    def bias_for_max(self, max_value: torch.Tensor | float) -> torch.Tensor:
        """The real-valued bias whose max equals ``max_value`` (LLM-FP's initial bias).

        ``b̃ = 2^E - log2(max_value) + log2(2 - 2^-M) - 1``.
        """
        max_value = torch.as_tensor(max_value, dtype=torch.float64)
        E, M = self.exponent_bits, self.mantissa_bits
        return 2**E - torch.log2(max_value) + torch.log2(torch.tensor(2 - 2.0**-M, dtype=torch.float64)) - 1

    def _round_magnitude(self, a: torch.Tensor) -> torch.Tensor:
        # In binade p the grid step is 2^(p-M); adding c = 2^(p-M+23), whose float32 ulp is
        # that step, rounds a to it half-to-even, and subtracting c again is exact.
        a = a.clamp(max=self._max)
        p = ((a.view(torch.int32) >> 23) - 127).clamp(min=self.min_exponent)
        c = ((p + (127 + 23 - self.mantissa_bits)) << 23).view(torch.float32)
        return (a + c) - c

    def _round(self, y: torch.Tensor, zero_point: Optional[torch.Tensor]) -> torch.Tensor:
        return torch.copysign(self._round_magnitude(y.abs()), y)

    def _encode(self, y: torch.Tensor, zero_point: Optional[torch.Tensor]) -> torch.Tensor:
        # A normal grid value's float32 bits hold its code: the top M mantissa bits and the
        # exponent, re-biased. Subnormal codes are integer multiples of the smallest step.
        M = self.mantissa_bits
        a = self._round_magnitude(y.abs())
        bits = a.view(torch.int32)
        normal = bits >= ((self.min_exponent + 127) << 23)
        normal_code = (bits >> (23 - M)) - ((127 - self.bias) << M)
        subnormal_code = (a * 2.0 ** (M - self.min_exponent)).to(torch.int32)
        code = torch.where(normal, normal_code, subnormal_code)
        return code | (torch.signbit(y).to(torch.int32) << (self.exponent_bits + M))


def parse_exmy(name: str) -> Optional[FloatFormat]:
    """``FloatFormat`` for a name like ``e2m1`` or ``e4m3``; ``None`` if it is not of that form."""
    match = re.fullmatch(r"e(\d+)m(\d+)", name)
    if not match:
        return None
    return FloatFormat(int(match.group(1)), int(match.group(2)))
