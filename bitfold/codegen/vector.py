"""Explicit SIMD expressions for TIR: vector loads, splats, and the x86 AVX2 intrinsics.

The CPU kernels are written with explicit 8 × 32-bit vectors rather than left to the
auto-vectorizer, so that the instruction sequence of the inner loop is the one chosen here
(mask → convert → FMA, ``vpshufb`` table lookups, ``vpmaddubsw``). The intrinsics are
reached through ``tvm.tirx.call_llvm_pure_intrin``; :func:`has_avx2` says whether a target
may use them.
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import tirx as tir

LANES = 8


def has_avx2(target: tvm.target.Target) -> bool:
    """True for an x86 LLVM target with AVX2 and FMA (the kernels' fast paths)."""
    if target.kind.name != "llvm":
        return False
    from tvm.target import codegen

    return bool(codegen.target_has_features("avx2", target)) and bool(codegen.target_has_features("fma", target))


def load(buf: tir.Buffer, *index: Any, lanes: int = LANES) -> tir.PrimExpr:
    """``buf[..., start : start + lanes]`` as one vector (the last index is the start)."""
    *lead, start = index
    return buf[(*lead, tir.Ramp(start, 1, lanes))]


def ramp(start: Any, lanes: int = LANES) -> tir.PrimExpr:
    return tir.Ramp(start, 1, lanes)


def splat(value: Any, lanes: int = LANES) -> tir.PrimExpr:
    return tir.Broadcast(value, lanes)


def const(value: Any, dtype: str, lanes: int = LANES) -> tir.PrimExpr:
    return tir.Broadcast(tir.const(value, dtype), lanes)


def bitcast(dtype: str, value: tir.PrimExpr) -> tir.PrimExpr:
    return tir.reinterpret(dtype, value)


def lanes_of(value: tir.PrimExpr) -> int:
    """Number of lanes of a TIR expression (1 for a scalar)."""
    text = str(value.ty)
    return int(text.split("x")[-1]) if "x" in text else 1


def to_float(value: tir.PrimExpr) -> tir.PrimExpr:
    """Signed int32 lanes → float32 lanes (``vcvtdq2ps``)."""
    return tir.Cast(f"float32x{lanes_of(value)}", value)


def pshufb(table: tir.PrimExpr, index: tir.PrimExpr) -> tir.PrimExpr:
    """``vpshufb``: 32 byte lookups in a 16-byte table (per 128-bit half); index bytes < 16."""
    return tir.call_llvm_pure_intrin(
        "int8x32", "llvm.x86.avx2.pshuf.b", bitcast("int8x32", table), bitcast("int8x32", index)
    )


def maddubs(unsigned_bytes: tir.PrimExpr, signed_bytes: tir.PrimExpr) -> tir.PrimExpr:
    """``vpmaddubsw``: int16 lane = u[2i]·s[2i] + u[2i+1]·s[2i+1] (saturating)."""
    return tir.call_llvm_pure_intrin(
        "int16x16", "llvm.x86.avx2.pmadd.ub.sw", bitcast("int8x32", unsigned_bytes), bitcast("int8x32", signed_bytes)
    )


def madd_words(a: tir.PrimExpr, b: tir.PrimExpr) -> tir.PrimExpr:
    """``vpmaddwd``: int32 lane = a[2i]·b[2i] + a[2i+1]·b[2i+1]."""
    return tir.call_llvm_pure_intrin("int32x8", "llvm.x86.avx2.pmadd.wd", a, b)


def permps(table: tir.PrimExpr, index: tir.PrimExpr) -> tir.PrimExpr:
    """``vpermps``: lane i = table[index[i] & 7] for an 8-entry float32 table in a register."""
    return tir.call_llvm_pure_intrin("float32x8", "llvm.x86.avx2.permps", table, bitcast("int32x8", index))


def blendv(when_clear: tir.PrimExpr, when_set: tir.PrimExpr, mask: tir.PrimExpr) -> tir.PrimExpr:
    """``vblendvps``: lane from ``when_set`` where bit 31 of ``mask`` is set."""
    return tir.call_llvm_pure_intrin(
        "float32x8", "llvm.x86.avx.blendv.ps.256", when_clear, when_set, bitcast("float32x8", mask)
    )
