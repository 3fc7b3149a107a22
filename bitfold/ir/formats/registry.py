"""Every format by name: ``get("e2m1")``, ``get("nf4")``, ``get("mxfp4")``…"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Dict, List, Union

from bitfold.ir.formats.base import Format, FormatError
from bitfold.ir.formats.block import FP8_E4M3, mx, nvfp4
from bitfold.ir.formats.codebook import nf4, post
from bitfold.ir.formats.integer import IntFormat
from bitfold.ir.formats.minifloat import FloatFormat, parse_exmy


def _standard() -> Dict[str, Callable[[], Format]]:
    table: Dict[str, Callable[[], Format]] = {}
    for bits in range(2, 9):
        table[f"int{bits}"] = lambda b=bits: IntFormat(b, signed=True)
        table[f"uint{bits}"] = lambda b=bits: IntFormat(b, signed=False)
    for e in range(1, 8):
        for m in range(0, 8 - e):
            if 3 <= 1 + e + m <= 8:
                table[f"e{e}m{m}"] = lambda e=e, m=m: FloatFormat(e, m)
    table["fp4_e2m1"] = lambda: FloatFormat(2, 1, name="fp4_e2m1")
    table["fp6_e2m3"] = lambda: FloatFormat(2, 3, name="fp6_e2m3")
    table["fp6_e3m2"] = lambda: FloatFormat(3, 2, name="fp6_e3m2")
    table["fp8_e4m3"] = lambda: FP8_E4M3
    table["fp8_e5m2"] = lambda: FloatFormat(5, 2, special="ieee", name="fp8_e5m2")
    table["nf4"] = nf4
    for bits in range(3, 9):
        table[f"post{bits}"] = lambda b=bits: post(b)
    table["mxfp4"] = lambda: mx(FloatFormat(2, 1, name="fp4_e2m1"), "mxfp4")
    table["mxfp6_e2m3"] = lambda: mx(FloatFormat(2, 3, name="fp6_e2m3"), "mxfp6_e2m3")
    table["mxfp6_e3m2"] = lambda: mx(FloatFormat(3, 2, name="fp6_e3m2"), "mxfp6_e3m2")
    table["mxfp8_e4m3"] = lambda: mx(FP8_E4M3, "mxfp8_e4m3")
    table["mxfp8_e5m2"] = lambda: mx(FloatFormat(5, 2, special="ieee", name="fp8_e5m2"), "mxfp8_e5m2")
    table["nvfp4"] = nvfp4
    return table


_FACTORIES = _standard()
#: Short names for the most used variant of a family.
ALIASES = {"mxfp6": "mxfp6_e2m3", "mxfp8": "mxfp8_e4m3", "fp4": "fp4_e2m1", "fp8": "fp8_e4m3"}


def names() -> List[str]:
    """All format names that :func:`get` accepts (aliases included)."""
    return sorted(_FACTORIES) + sorted(ALIASES)


@lru_cache(maxsize=None)
def _build(name: str) -> Format:
    return _FACTORIES[name]()


def get(name: Union[str, Format]) -> Format:
    """The format called ``name`` (case-insensitive); a :class:`Format` is returned as is."""
    if isinstance(name, Format):
        return name
    if not isinstance(name, str):
        raise FormatError(f"a format name must be a string, got {type(name).__name__}")
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key in _FACTORIES:
        return _build(key)
    custom = parse_exmy(key)
    if custom is not None:
        return custom
    raise FormatError(f"unknown number format {name!r}; known formats: {', '.join(names())}")
