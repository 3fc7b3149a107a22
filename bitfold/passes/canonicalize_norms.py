"""Collapse decomposed LayerNorm and RMSNorm subgraphs into one norm node.

Quantization passes must find norms reliably (LLM-FP4 folds per-channel shifts into their
γ and β), but ONNX exporters and HF code spell them out op by op. With ``μ`` and ``E`` means
over the trailing dimensions (keepdim), the rewrites are::

    d = x - μ(x);  (d / sqrt(μ(d²) + ε)) · γ + β        →  aten.layer_norm(x, shape, γ, β, ε)
    x · rsqrt(μ(x²) + ε) · γ   (or x / sqrt(…) · γ)      →  aten.rms_norm(x, shape, γ, ε)

Variants (``d²`` as ``pow(d, 2)`` or ``d · d``; ``rsqrt`` + mul or ``sqrt`` + div or
``reciprocal(sqrt)`` + mul; ``γ``/``β`` on either side; no ``β``) differ only in their
pattern. Checks: both means reduce the same trailing dimensions, the exponent is 2, ``ε`` is
a non-negative literal, and ``γ``/``β`` are constants of the normalized shape (a leading-ones
shape is squeezed). Run :class:`~bitfold.passes.inline_scalar_constants.InlineScalarConstants`
first so ONNX initializers for ``ε`` and ``2`` read as literals. Exact up to the rounding of
one fused kernel vs the op-by-op computation.
"""

from __future__ import annotations

import itertools
from typing import Callable, List, Optional, Sequence

import torch
from torch import fx

from bitfold.ir.graph_utils import attr_value, constant_node, node_rank, raw_shape
from bitfold.passes.rewrite import Failure, Match, RewritePass, RewriteRule

aten = torch.ops.aten


def _square(kind: str, d, two):
    return aten.pow.Tensor_Scalar(d, two) if kind == "pow" else aten.mul.Tensor(d, d)


def _normalize(kind: str, d, var_eps):
    if kind == "rsqrt":
        return aten.mul.Tensor(d, aten.rsqrt.default(var_eps))
    if kind == "recip":
        return aten.mul.Tensor(d, aten.reciprocal.default(aten.sqrt.default(var_eps)))
    return aten.div.Tensor(d, aten.sqrt.default(var_eps))


def _scale(order: str, y, w):
    return aten.mul.Tensor(y, w) if order == "right" else aten.mul.Tensor(w, y)


def _shift(order: str, y, b):
    return aten.add.Tensor(y, b) if order == "right" else aten.add.Tensor(b, y)


def _layer_norm_pattern(sq: str, norm: str, wo: str, bo: str) -> Callable:
    if sq == "pow":
        def pattern(x, w, b, dims, keepdim, two, eps):
            d = aten.sub.Tensor(x, aten.mean.dim(x, dims, keepdim))
            var_eps = aten.add.Tensor(aten.mean.dim(_square(sq, d, two), dims, keepdim), eps)
            return _shift(bo, _scale(wo, _normalize(norm, d, var_eps), w), b)
    else:
        def pattern(x, w, b, dims, keepdim, eps):
            d = aten.sub.Tensor(x, aten.mean.dim(x, dims, keepdim))
            var_eps = aten.add.Tensor(aten.mean.dim(_square(sq, d, None), dims, keepdim), eps)
            return _shift(bo, _scale(wo, _normalize(norm, d, var_eps), w), b)

    return pattern


def _rms_norm_pattern(sq: str, norm: str, wo: str) -> Callable:
    if sq == "pow":
        def pattern(x, w, dims, keepdim, two, eps):
            var_eps = aten.add.Tensor(aten.mean.dim(_square(sq, x, two), dims, keepdim), eps)
            return _scale(wo, _normalize(norm, x, var_eps), w)
    else:
        def pattern(x, w, dims, keepdim, eps):
            var_eps = aten.add.Tensor(aten.mean.dim(_square(sq, x, None), dims, keepdim), eps)
            return _scale(wo, _normalize(norm, x, var_eps), w)

    return pattern


_SQUARES, _NORMALIZE, _SIDES = ("pow", "mul"), ("div", "rsqrt", "recip"), ("right", "left")


def _reduced_dims(dims, keepdim, rank: int) -> Optional[List[int]]:
    if not keepdim or not isinstance(dims, (list, tuple)) or not dims:
        return None
    return sorted(d % rank for d in dims)


class _NormRule(RewriteRule):
    """Shared checks: trailing-dimension means, exponent 2, literal ε, constant affine params."""

    def _common_check(self, match: Match, gm: fx.GraphModule) -> Optional[Failure]:
        rank = node_rank(match["x"])
        if rank is None:
            return self.fail("the input's rank is unknown; propagate shapes first")
        dims = _reduced_dims(match["dims"], match["keepdim"], rank)
        if dims is None:
            return self.fail(f"the mean over {match['dims']!r} does not keep its dimensions")
        if dims != list(range(rank - len(dims), rank)):
            return self.fail(f"the mean reduces dimensions {dims}, not the trailing ones")
        if "two" in match and match["two"] != 2:
            return self.fail(f"the variance uses exponent {match['two']!r}, not 2")
        eps = match["eps"]
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0:
            return self.fail(f"epsilon {eps!r} is not a non-negative literal (run InlineScalarConstants)")
        return None

    def _affine(self, gm: fx.GraphModule, node: fx.Node, shape: List[int], what: str):
        value = attr_value(gm, node)
        if value is None:
            return self.fail(f"{what} is computed at run time, not a constant")
        if value.numel() != int(torch.tensor(shape).prod()):
            return self.fail(f"{what} has shape {tuple(value.shape)}, not the normalized shape {tuple(shape)}")
        return value.reshape(shape)

    def _normalized_shape(self, match: Match) -> List[int]:
        shape = raw_shape(match["x"])
        dims = _reduced_dims(match["dims"], match["keepdim"], len(shape))
        return [int(shape[d]) for d in dims]


class LayerNormRule(_NormRule):
    def patterns(self) -> Sequence[Callable]:
        return [_layer_norm_pattern(*v) for v in itertools.product(_SQUARES, _NORMALIZE, _SIDES, _SIDES)]

    def check(self, match: Match, gm: fx.GraphModule) -> Optional[Failure]:
        failure = self._common_check(match, gm)
        if failure is not None:
            return failure
        shape = self._normalized_shape(match)
        for name in ("w", "b"):
            value = self._affine(gm, match[name], shape, "gamma" if name == "w" else "beta")
            if isinstance(value, Failure):
                return value
        return None

    def rewrite(self, match: Match, gm: fx.GraphModule) -> fx.Node:
        shape = self._normalized_shape(match)
        w = constant_node(gm, f"{match['w'].target}_ln", self._affine(gm, match["w"], shape, "gamma"))
        b = constant_node(gm, f"{match['b'].target}_ln", self._affine(gm, match["b"], shape, "beta"))
        return gm.graph.call_function(aten.layer_norm.default, (match["x"], shape, w, b, float(match["eps"]), False))


class RmsNormRule(_NormRule):
    def patterns(self) -> Sequence[Callable]:
        return [_rms_norm_pattern(*v) for v in itertools.product(_SQUARES, _NORMALIZE, _SIDES)]

    def check(self, match: Match, gm: fx.GraphModule) -> Optional[Failure]:
        failure = self._common_check(match, gm)
        if failure is not None:
            return failure
        value = self._affine(gm, match["w"], self._normalized_shape(match), "gamma")
        return value if isinstance(value, Failure) else None

    def rewrite(self, match: Match, gm: fx.GraphModule) -> fx.Node:
        shape = self._normalized_shape(match)
        w = constant_node(gm, f"{match['w'].target}_rms", self._affine(gm, match["w"], shape, "gamma"))
        return gm.graph.call_function(aten.rms_norm.default, (match["x"], shape, w, float(match["eps"])))


class CanonicalizeNorms(RewritePass):
    """Decomposed LayerNorm / RMSNorm → ``aten.layer_norm`` / ``aten.rms_norm``."""

    tolerance = 1e-5

    def __init__(self) -> None:
        super().__init__([LayerNormRule(), RmsNormRule()])
