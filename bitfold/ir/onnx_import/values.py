"""The three kinds of value an ONNX tensor becomes during import.

* an ``fx.Node``: a tensor computed at run time;
* :class:`Const`: a tensor known at import time (an initializer, a ``Constant``, or a
  folded computation on those);
* :class:`SymInts`: a 0-d or 1-d integer tensor known element by element, where some
  elements are FX nodes that yield Python ints at run time (``aten.sym_size.int`` and
  ``operator.mul``/``add``/``floordiv`` on them, as in ``torch.export`` graphs).

Exporters compute shapes with tensor ops (Shape → Gather → Unsqueeze → Concat → Reshape);
keeping those as :class:`SymInts` lets them become plain ``int`` lists (``aten.reshape(x,
[s0, 12, 64])``) instead of tensor arithmetic, and fold to constants when sizes are static.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import fx

SymElem = Union[int, fx.Node]


@dataclass(frozen=True, eq=False)
class Const:
    """A tensor known at import time; ``name`` is the ONNX value it holds.

    ``initializer`` marks graph initializers. Float ones become parameters; those with at
    least one dimension are model :attr:`weight` s, never folded into other constants, so a
    pass finds ``linear(x, W)`` with ``W`` under its ONNX name rather than a folded copy.
    """

    tensor: torch.Tensor
    name: str
    initializer: bool = False

    @property
    def weight(self) -> bool:
        return self.initializer and self.tensor.is_floating_point() and self.tensor.dim() >= 1

    @property
    def is_scalar_like(self) -> bool:
        """One element and not a weight: may be written as a Python number."""
        return self.tensor.numel() == 1 and not self.weight

    def item(self) -> Union[int, float, bool]:
        return self.tensor.item()


@dataclass(frozen=True, eq=False)
class SymInts:
    """A 0-d (``scalar``) or 1-d integer tensor whose elements are ints or int-valued nodes."""

    elems: Tuple[SymElem, ...]
    scalar: bool
    dtype: torch.dtype = torch.int64


Value = Union[fx.Node, Const, SymInts]


def shape_value(elems: Sequence[SymElem], scalar: bool, dtype: torch.dtype, name: str) -> Union[Const, SymInts]:
    """``elems`` as a :class:`Const` when all are known ints, else as :class:`SymInts`."""
    if all(isinstance(e, int) for e in elems):
        data = torch.tensor(list(elems), dtype=dtype)
        return Const(data.reshape(()) if scalar else data, name)
    return SymInts(tuple(elems), scalar, dtype)


def int_elements(value: object) -> Optional[List[SymElem]]:
    """The elements of a 0-d/1-d integer :class:`Const` or a :class:`SymInts`; else ``None``."""
    if isinstance(value, SymInts):
        return list(value.elems)
    if isinstance(value, Const) and value.tensor.dim() <= 1 and not value.tensor.is_floating_point():
        if value.tensor.dtype == torch.bool or value.tensor.is_complex():
            return None
        return [int(v) for v in value.tensor.reshape(-1).tolist()]
    return None


def is_shape_like(value: object) -> bool:
    """Holds 0-d/1-d integers evaluated at import time (a :class:`SymInts` or small int Const)."""
    return int_elements(value) is not None


def is_scalar_shape(value: object) -> bool:
    if isinstance(value, SymInts):
        return value.scalar
    return isinstance(value, Const) and value.tensor.dim() == 0
