"""Arithmetic on symbolic sizes: ints folded now, FX nodes combined with ``operator`` calls.

An element is an ``int`` or an FX node yielding an int at run time. Results follow ONNX
integer semantics (division truncates toward zero, ``Mod`` takes the divisor's sign). On
nodes, division and modulo are emitted as ``operator.floordiv``/``operator.mod`` only when
both sides are known non-negative (sizes), where the two semantics agree; otherwise the
functions return ``None`` and the caller computes on tensors instead. Comparisons answer
``None`` when the result depends on run-time values.
"""

from __future__ import annotations

import operator
from typing import Callable, List, Optional, Sequence

from bitfold.ir.onnx_import.builder import GraphBuilder
from bitfold.ir.onnx_import.values import SymElem


def _nonneg(b: GraphBuilder, x: SymElem) -> bool:
    return x >= 0 if isinstance(x, int) else x in b.nonneg


def _trunc_div(x: int, y: int) -> int:
    q = abs(x) // abs(y)
    return q if (x >= 0) == (y >= 0) else -q


_INT_OPS = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": _trunc_div, "mod": operator.mod}
_NODE_OPS = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.floordiv,
             "mod": operator.mod}


def arith(b: GraphBuilder, op: str, x: SymElem, y: SymElem) -> Optional[SymElem]:
    """``x op y`` for ``op`` in add, sub, mul, div, mod; ``None`` if not expressible as sizes."""
    if isinstance(x, int) and isinstance(y, int):
        if op in ("div", "mod") and y == 0:
            return None
        return _INT_OPS[op](x, y)
    if op == "add" and y == 0 or op == "sub" and y == 0 or op in ("mul", "div") and y == 1:
        return x
    if op in ("add", "mul") and (x == 0 if op == "add" else x == 1):
        return y
    if op in ("div", "mod") and not (_nonneg(b, x) and _nonneg(b, y) and y != 0):
        return None
    node = b.emit(_NODE_OPS[op], x, y)
    if op != "sub" and _nonneg(b, x) and _nonneg(b, y):
        b.nonneg.add(node)
    return node


def compare(b: GraphBuilder, op: str, x: SymElem, y: SymElem) -> Optional[bool]:
    """``x op y`` for ``op`` in eq, lt, gt, le, ge when decidable at import time."""
    fn: Callable[[int, int], bool] = {"eq": operator.eq, "lt": operator.lt, "gt": operator.gt,
                                      "le": operator.le, "ge": operator.ge}[op]
    if isinstance(x, int) and isinstance(y, int):
        return fn(x, y)
    if x is y:
        return op in ("eq", "le", "ge")
    # A size is never negative: it differs from, and is greater than, any negative constant.
    if isinstance(y, int) and y < 0 and _nonneg(b, x):
        return {"eq": False, "lt": False, "le": False, "gt": True, "ge": True}[op]
    if isinstance(x, int) and x < 0 and _nonneg(b, y):
        return {"eq": False, "lt": True, "le": True, "gt": False, "ge": False}[op]
    return None


def broadcast(xs: Sequence, ys: Sequence) -> Optional[List[tuple]]:
    """Pairs of elements of two 0-d/1-d element lists under ONNX broadcasting."""
    if len(xs) == len(ys):
        return list(zip(xs, ys))
    if len(xs) == 1:
        return [(xs[0], y) for y in ys]
    if len(ys) == 1:
        return [(x, ys[0]) for x in xs]
    return None


def product(b: GraphBuilder, elems: Sequence[SymElem]) -> SymElem:
    result: SymElem = 1
    for e in elems:
        result = arith(b, "mul", result, e)
    return result
