"""How a kernel turns a stored weight code back into a number, per format.

Every weight value is ``Ŵ = (u - z) · s'`` or ``Ŵ = t[c] · s'``, where ``s' = scale · 2^-p``
and ``z`` is an integer per channel or group. Three decode kinds cover all formats:

``int`` (``int2``…``int8``, ``uint2``…``uint8``)
    The kernel layout stores ``u = q + 2^(b-1)`` for signed formats (``u = q`` for unsigned),
    so every stored code is an unsigned level and ``z = zero_point + 2^(b-1)``. A kernel
    decodes with a mask (and, for the top field of a word, a shift) and an int→float convert.
``byte_table`` (4-bit float formats whose values are small integers times ``2^-p``: ``e2m1``
    (``p = 1``: ``2·v ∈ [-12, 12]``), ``e3m0`` (``p = 2``), ``e1m2`` (``p = 1``), …)
    A 16-entry byte table maps the code to the level ``u = 2^p·v + z`` (``z = -min 2^p·v``),
    which x86 kernels look up 32 at a time with ``vpshufb``; after that it is the ``int`` path.
``float_table`` (NF4, FP8, POST, any other format)
    ``t`` is the format's float32 code table (``2^b`` entries). x86 kernels look 4-bit and
    smaller tables up in registers with ``vpermps``; wider tables with a gather.

Exponent biases (LLM-FP's per-channel bias) are already folded into ``scale`` by
:meth:`bitfold.ir.formats.FloatFormat.scale_for_bias`, so they cost nothing here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from bitfold.codegen.spec import KernelError
from bitfold.ir import formats

#: Largest power-of-two multiplier tried when looking for integer levels of a float format.
_MAX_LEVEL_SHIFT = 6


@dataclass(frozen=True)
class DecodePlan:
    """How codes of one format are stored for kernels and decoded in them."""

    format_name: str
    kind: str  # "int" | "byte_table" | "float_table"
    bits: int
    #: Constant part of ``z`` (added to a layer's own zero point, which only ``int`` has).
    offset: int
    #: ``2^-p``: multiplies the scale so that ``(u - z)`` are integers.
    value_scale: float
    #: ``byte_table``: code → level ``u`` (16 entries).
    levels: Optional[np.ndarray] = None
    #: ``float_table``: code → value (``2^bits`` entries).
    values: Optional[np.ndarray] = None

    @property
    def needs_offset_correction(self) -> bool:
        """True when kernels subtract ``z · s' · Σx`` (levels are stored with an offset)."""
        return self.kind != "float_table"

    @property
    def max_level(self) -> int:
        """Largest stored level ``u`` (bounds integer accumulators)."""
        if self.kind == "int":
            return 2**self.bits - 1
        if self.kind == "byte_table":
            return int(self.levels.max())
        raise KernelError(f"{self.format_name}: float-table codes have no integer levels")

    def table(self) -> Optional[np.ndarray]:
        """The table kernels take as an input: 16 uint8 levels twice (one per 128-bit half of a
        ``vpshufb``), or the float32 values (zero padded to at least the 8 entries of a
        ``vpermps`` register); ``None`` for ``int``."""
        if self.kind == "byte_table":
            return np.concatenate([self.levels, self.levels]).astype(np.uint8)
        if self.kind == "float_table":
            padded = np.zeros(max(8, self.values.size), dtype=np.float32)
            padded[: self.values.size] = self.values
            return padded
        return None

    def stored_codes(self, codes: np.ndarray) -> np.ndarray:
        """The codes a kernel layout stores for the format's own ``codes`` (uint8 array)."""
        if self.kind == "int" and self.offset:
            return codes ^ np.uint8(self.offset)
        return codes


def _integer_levels(values: np.ndarray) -> Optional[tuple]:
    """``(p, levels)`` with ``levels = values · 2^p`` all integers in a byte's range, if any p works."""
    for p in range(_MAX_LEVEL_SHIFT + 1):
        scaled = values.astype(np.float64) * 2.0**p
        if np.all(scaled == np.round(scaled)) and scaled.max() - scaled.min() <= 255:
            return p, scaled.astype(np.int64)
    return None


def decode_plan(format_name: str) -> DecodePlan:
    """The :class:`DecodePlan` of a weight format (block formats decode like their elements)."""
    try:
        fmt = formats.get(format_name)
    except formats.FormatError as err:
        raise KernelError(str(err)) from None
    element = fmt.element if isinstance(fmt, formats.BlockFormat) else fmt
    if isinstance(element, formats.IntFormat):
        offset = 2 ** (element.bits - 1) if element.signed else 0
        return DecodePlan(fmt.name, "int", element.bits, offset, 1.0)
    values = element.codes.numpy().astype(np.float32)
    if element.bits == 4 and np.all(np.isfinite(values)):
        found = _integer_levels(values)
        if found is not None:
            p, scaled = found
            offset = int(-scaled.min())
            return DecodePlan(fmt.name, "byte_table", 4, offset, 2.0**-p, levels=(scaled + offset).astype(np.uint8))
    return DecodePlan(fmt.name, "float_table", element.bits, 0, 1.0, values=values)
