"""Low-bit number formats as data, with exact vectorized quantize/encode/decode/pack.

>>> from bitfold.ir import formats
>>> formats.get("e2m1").grid.tolist()[7:]
[0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]

Families: ``int2``…``int8`` / ``uint2``…``uint8`` (optionally with a zero point), the LLM-FP
``e{E}m{M}`` family (any bias, no Inf/NaN), the ml_dtypes/OCP formats ``fp4_e2m1``,
``fp6_e2m3``, ``fp6_e3m2``, ``fp8_e4m3``, ``fp8_e5m2``, codebooks ``nf4`` and ``post3``…``post8``,
and block-scaled ``mxfp4``, ``mxfp6_*``, ``mxfp8_*`` and ``nvfp4``.
"""

from bitfold.ir.formats.base import Format, FormatError
from bitfold.ir.formats.block import BlockFormat
from bitfold.ir.formats.codebook import CodebookFormat
from bitfold.ir.formats.integer import IntFormat
from bitfold.ir.formats.minifloat import FloatFormat
from bitfold.ir.formats.packing import pack, packed_size, unpack
from bitfold.ir.formats.registry import ALIASES, get, names

__all__ = [
    "ALIASES",
    "BlockFormat",
    "CodebookFormat",
    "FloatFormat",
    "Format",
    "FormatError",
    "IntFormat",
    "get",
    "names",
    "pack",
    "packed_size",
    "unpack",
]
