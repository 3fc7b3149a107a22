"""GELU that PyTorch, ONNX Runtime and TVM compute alike: the ``bitfold::gelu`` operator.

``GELU(x) = x·Φ(x)`` with Φ the standard normal CDF. Its usual float32 spelling
``0.5·x·(1 + erf(x/√2))`` cancels for negative ``x``: ``1 + erf`` is the difference of two
numbers near 1, so its relative error grows as Φ(x) shrinks. PyTorch's CPU kernel is 10%
off at x = −5 and ONNX Runtime's ``Gelu`` (another ``erf``) is off by a different amount.
Float models never notice. Quantized ones do when a GELU output lands on a grid that is
fine near zero: FP8, or LLM-FP4's pre-shift by ``2^k`` (k up to 10 on MiniLM's FC2 input).
Then the two runtimes round tail values to different codes, and each flipped code grows
through the 4-bit layers after it (0.13 relative on MiniLM's ``w4a4-fp`` embeddings).

``bitfold::gelu`` computes Φ through the complementary error function, which does not cancel::

    t = 1 / (1 + |x| / (2√2))                      (t = 1/(1 + z/2), z = |x|/√2)
    h = ½ · t · exp(P(t) − x²/2)                   (h = ½·erfc(z) = Φ(−|x|))
    gelu(x) = x · (h if x < 0 else 1 − h)

with ``P`` the degree-7 polynomial :data:`ERFC_POLYNOMIAL`, a least-squares fit of
``log(erfc(z)·e^{z²}/t)`` over z ∈ [0, 10.5] (the tests refit it). Relative error against
the exact GELU is below 3e-6 wherever ``|gelu(x)| > 1e-10``. The tanh approximation has
the same cancellation and the same cure: ``½(1 + tanh u) = 1/(1 + e^{−2u})``::

    gelu_tanh(x) = x / (1 + exp(−2√(2/π)·(x + 0.044715·x³)))

Every step is a correctly rounded float32 ``+ − × ÷`` except one ``exp``, so runtimes
that evaluate the same steps in the same order agree to a few ulps. :func:`spell_gelu`
writes the steps once against a small :class:`Arithmetic` interface; the PyTorch op, the
ONNX lowering and the TVM lowering each implement that interface, so the order cannot drift.
"""

from __future__ import annotations

import math
from typing import Generic, Protocol, Tuple, TypeVar

import numpy as np
import torch

#: ``P(t) = Σ c_i t^i`` (lowest degree first), float32: ``log(erfc(z)·e^{z²}/t)`` for t = 1/(1 + z/2).
ERFC_POLYNOMIAL: Tuple[float, ...] = tuple(float(np.float32(c)) for c in (
    -1.2654659748077393, 0.998391330242157, 0.3953263759613037, -0.04462026432156563,
    0.35982421040534973, -1.0123200416564941, 0.7582865357398987, -0.18942297995090485,
))
#: ``t = 1 / (1 + |x| · T_SLOPE)``: ``z/2`` with ``z = |x|/√2``.
T_SLOPE = float(np.float32(0.5 / math.sqrt(2.0)))
#: ``2·√(2/π)``, the tanh form's slope after ``½(1 + tanh u) = 1/(1 + e^{−2u})``.
TANH_SLOPE = float(np.float32(2.0 * math.sqrt(2.0 / math.pi)))
TANH_CUBIC = float(np.float32(0.044715))
APPROXIMATIONS = ("none", "tanh")

V = TypeVar("V")


class Arithmetic(Protocol, Generic[V]):
    """Elementwise float32 operations on a backend's values (tensors, ONNX names, Relax exprs)."""

    def const(self, value: float) -> V: ...

    def abs(self, x: V) -> V: ...

    def add(self, a: V, b: V) -> V: ...

    def sub(self, a: V, b: V) -> V: ...

    def mul(self, a: V, b: V) -> V: ...

    def div(self, a: V, b: V) -> V: ...

    def exp(self, x: V) -> V: ...

    def where_negative(self, x: V, if_negative: V, otherwise: V) -> V: ...


def spell_gelu(x: V, ar: Arithmetic[V], approximate: str = "none") -> V:
    """``gelu(x)`` as the sequence of steps in the module docstring, built with ``ar``."""
    if approximate == "tanh":
        cubic = ar.mul(ar.const(TANH_CUBIC), ar.mul(x, ar.mul(x, x)))
        exponent = ar.mul(ar.const(-TANH_SLOPE), ar.add(x, cubic))
        return ar.div(x, ar.add(ar.const(1.0), ar.exp(exponent)))
    if approximate != "none":
        raise ValueError(f"bitfold::gelu: approximate must be one of {APPROXIMATIONS}, not {approximate!r}")
    t = ar.div(ar.const(1.0), ar.add(ar.const(1.0), ar.mul(ar.abs(x), ar.const(T_SLOPE))))
    p = ar.const(ERFC_POLYNOMIAL[-1])
    for c in reversed(ERFC_POLYNOMIAL[:-1]):
        p = ar.add(ar.mul(p, t), ar.const(c))
    half_x2 = ar.mul(ar.const(0.5), ar.mul(x, x))
    h = ar.mul(ar.const(0.5), ar.mul(t, ar.exp(ar.sub(p, half_x2))))
    return ar.mul(x, ar.where_negative(x, h, ar.sub(ar.const(1.0), h)))


class TorchArithmetic:
    """:class:`Arithmetic` on float32 tensors (scalars stay Python floats: float32 math)."""

    def const(self, value: float) -> float:
        return value

    def abs(self, x):
        return torch.abs(x)

    def add(self, a, b):
        return a + b if isinstance(a, torch.Tensor) else b + a

    def sub(self, a, b):
        return a - b if isinstance(a, torch.Tensor) else torch.rsub(b, a)

    def mul(self, a, b):
        return a * b if isinstance(a, torch.Tensor) else b * a

    def div(self, a, b):
        if isinstance(a, torch.Tensor):
            return a / b
        return torch.reciprocal(b) if a == 1.0 else torch.full_like(b, a) / b

    def exp(self, x):
        return torch.exp(x)

    def where_negative(self, x, if_negative, otherwise):
        return torch.where(x < 0, if_negative, otherwise)


@torch.library.custom_op("bitfold::gelu", mutates_args=())
def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """``torch.nn.functional.gelu(x, approximate)`` without its float32 cancellation for ``x < 0``."""
    if x.dtype != torch.float32:
        return spell_gelu(x.float(), TorchArithmetic(), approximate).to(x.dtype)
    return spell_gelu(x, TorchArithmetic(), approximate)


@gelu.register_fake
def _(x, approximate="none"):
    return torch.empty_like(x)
