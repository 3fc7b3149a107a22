"""Formats defined by an explicit table of levels: NF4 and power-of-√2 (POST).

Rounding goes to the nearest level; an exact tie between two levels goes to the one with the
even index in the ascending grid, which is round-half-to-even when the grid is uniform.

* ``nf4`` (QLoRA's NormalFloat4): 16 levels in [-1, 1] placed at quantiles of N(0, 1),
  with an exact zero; 7 negative and 8 positive levels. The levels are the float32 table
  that QLoRA published (so codes written by other NF4 tools decode identically);
  :func:`nf4_quantile_levels` rebuilds them from the inverse normal CDF with the paper's
  construction (offset 0.9677), which agrees to one float32 ulp. Codes are the level
  indices, ascending.
* ``post{b}`` (power of √2, the ASQ paper's POST): sign-magnitude, ``b - 1`` magnitude bits;
  magnitude code 0 is zero and code ``c ≥ 1`` is ``2^((c - cmax) / 2)`` with
  ``cmax = 2^(b-1) - 1``, so the levels are 1, 1/√2, 1/2, … down by √2. Finer than
  powers of two near the top, still multiplier-free to within one √2 constant.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from bitfold.ir.formats.base import Format, FormatError

_NF4_OFFSET = 0.9677083
NF4_LEVELS = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)


def nf4_quantile_levels() -> torch.Tensor:
    """The 16 NF4 levels rebuilt from normal quantiles, ascending, as float32."""
    ndtri = torch.special.ndtri
    positive = ndtri(torch.linspace(_NF4_OFFSET, 0.5, 9, dtype=torch.float64)[:-1])
    negative = -ndtri(torch.linspace(_NF4_OFFSET, 0.5, 8, dtype=torch.float64)[:-1])
    levels = torch.cat([positive, torch.zeros(1, dtype=torch.float64), negative])
    levels = levels / levels.abs().max()
    return torch.sort(levels).values.to(torch.float32)


class CodebookFormat(Format):
    """A format whose code ``i`` stands for ``table[i]``; rounding is nearest-level."""

    def __init__(self, name: str, table: torch.Tensor, extra: Optional[Dict[str, Any]] = None) -> None:
        table = torch.as_tensor(table, dtype=torch.float32)
        bits = max(1, (table.numel() - 1).bit_length())
        if table.numel() != 2**bits or not bool(torch.isfinite(table).all()):
            raise FormatError(f"{name}: a codebook needs 2^bits finite entries, got {table.numel()}")
        self.name, self.bits = name, bits
        self._codes = table
        self._grid = torch.unique(table + 0.0)
        # For each grid index, the code that encodes it (the first code with that value).
        self._grid_to_code = torch.tensor(
            [int(torch.nonzero(table + 0.0 == v)[0]) for v in self._grid.tolist()], dtype=torch.int32
        )
        self._extra = extra or {}

    @property
    def codes(self) -> torch.Tensor:
        return self._codes

    @property
    def grid(self) -> torch.Tensor:
        return self._grid

    def describe(self) -> Dict[str, Any]:
        return {**super().describe(), "levels": self._grid.tolist(), **self._extra}

    def _nearest_index(self, y: torch.Tensor) -> torch.Tensor:
        grid = self._grid.to(y.device)
        hi = torch.searchsorted(grid, y.contiguous()).clamp(1, grid.numel() - 1)
        lo = hi - 1
        d_lo = y - grid[lo]
        d_hi = grid[hi] - y
        take_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0))
        return torch.where(take_hi, hi, lo)

    def _round(self, y: torch.Tensor, zero_point: Optional[torch.Tensor]) -> torch.Tensor:
        return self._grid.to(y.device)[self._nearest_index(y)]

    def _encode(self, y: torch.Tensor, zero_point: Optional[torch.Tensor]) -> torch.Tensor:
        return self._grid_to_code.to(y.device)[self._nearest_index(y)]


def nf4() -> CodebookFormat:
    return CodebookFormat("nf4", torch.tensor(NF4_LEVELS), {"construction": "QLoRA normal quantiles"})


def post(bits: int) -> CodebookFormat:
    """The ``bits``-bit power-of-√2 format (``3 <= bits <= 8``)."""
    if not 3 <= bits <= 8:
        raise FormatError(f"post formats have 3 to 8 bits, got {bits}")
    cmax = 2 ** (bits - 1) - 1
    c = torch.arange(cmax + 1, dtype=torch.float64)
    magnitude = torch.where(c == 0, torch.zeros_like(c), torch.exp2((c - cmax) / 2))
    table = torch.cat([magnitude, -magnitude]).to(torch.float32)
    return CodebookFormat(f"post{bits}", table, {"construction": "powers of sqrt(2), sign-magnitude"})
