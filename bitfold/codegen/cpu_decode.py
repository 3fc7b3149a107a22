"""Decode one vector of 32-bit code words (8 channels) into 8-lane float vectors, per code.

:meth:`WordDecoder.fields` returns, for each of the ``c`` codes in a word, a float32x8
expression and a power-of-two ``prescale``. In *scaled* mode (GEMV) the expression is
``u · 2^pos`` — the code is masked in place, ``word & (mask << pos)``, and converted, one
instruction less than shift-and-mask — and the caller multiplies the matching activation by
``prescale = 2^-pos`` once per call, so ``x·2^-pos · u·2^pos = x·u`` exactly. In *exact* mode
(GEMM tiles) the expression is ``u`` itself and the prescale is 1. A field that could reach
bit 31 in place (``u·2^pos ≥ 2^31`` does not fit an int32) is always shifted out.

Per decode kind (see :mod:`bitfold.codegen.decode`):

* ``int``: the mask/shift above;
* ``byte_table`` (AVX2): ``vpshufb`` maps the low and the high nibbles of all 32 bytes to
  levels at once, then each byte field is masked like an ``int`` code with ``b = 8``;
* ``float_table``: ``vpermps`` from one (≤ 3 bits) or two (4 bits, chosen by ``vblendvps``
  on the code's top bit) table registers; wider tables are gathered.

Without AVX2 the tables are gathered (correct everywhere, slower).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from tvm import tirx as tir
from tvm.script.ir_builder import tirx as T

from bitfold.codegen import vector as V
from bitfold.codegen.decode import DecodePlan

NIBBLES = 0x0F0F0F0F


class WordDecoder:
    """Emit the decode of code words for one :class:`DecodePlan`."""

    def __init__(self, plan: DecodePlan, table: Optional[tir.Buffer], avx2: bool) -> None:
        self.plan = plan
        self.table = table
        self.avx2 = avx2
        self.bits = plan.bits
        self.per_word = 32 // plan.bits
        self._registers: List[tir.PrimExpr] = []

    def prepare(self) -> None:
        """Bind loop-invariant table registers (call once, before the loops that decode)."""
        if not self.avx2:
            return
        if self.plan.kind == "byte_table":
            self._registers = [T.bind(V.load(self.table, 0, lanes=32))]
        elif self.plan.kind == "float_table" and self.bits <= 4:
            self._registers = [T.bind(V.load(self.table, 8 * h)) for h in range(1 if self.bits <= 3 else 2)]

    def _field_bits(self) -> Tuple[int, int]:
        """(width, largest value) of the fields that are masked: codes, or table levels."""
        if self.plan.kind == "byte_table":
            return 8, self.plan.max_level
        return self.bits, 2**self.bits - 1

    def _shifted(self, index: int) -> bool:
        """Whether field ``index`` is shifted out: masked in place it would not fit an int32."""
        width, largest = self._field_bits()
        return largest * 2 ** (width * index) >= 2**31

    def prescales(self, scaled: bool) -> List[float]:
        """The ``prescale`` of each code that :meth:`fields` returns (without emitting code)."""
        if not scaled or self.plan.kind == "float_table" or (self.plan.kind == "byte_table" and not self.avx2):
            return [1.0] * self.per_word
        width, _ = self._field_bits()
        fields = [i // 2 if self.plan.kind == "byte_table" else i for i in range(self.per_word)]
        return [1.0 if self._shifted(f) else 2.0 ** -(width * f) for f in fields]

    def _masked(self, word: tir.PrimExpr, index: int, scaled: bool) -> Tuple[tir.PrimExpr, float]:
        """Field ``index`` as float32: ``u·2^pos`` (scaled) or ``u``."""
        width, _ = self._field_bits()
        pos = width * index
        mask = 2**width - 1
        if self._shifted(index) and pos + width >= 32:
            return V.to_float(V.bitcast("int32x8", word >> V.const(pos, "uint32"))), 1.0
        if scaled and not self._shifted(index):
            field = word & V.const(mask << pos, "uint32")
            return V.to_float(V.bitcast("int32x8", field)), 2.0**-pos
        field = word if pos == 0 else word >> V.const(pos, "uint32")
        return V.to_float(V.bitcast("int32x8", field & V.const(mask, "uint32"))), 1.0

    def _index(self, word: tir.PrimExpr, i: int) -> tir.PrimExpr:
        pos = self.bits * i
        field = word if pos == 0 else word >> V.const(pos, "uint32")
        if pos + self.bits < 32:
            field = field & V.const(2**self.bits - 1, "uint32")
        return V.bitcast("int32x8", field)

    def fields(self, word: tir.PrimExpr, scaled: bool) -> List[Tuple[int, tir.PrimExpr, float]]:
        """``(code index, float32x8, prescale)`` for every code of ``word`` (a uint32x8), in the
        order to emit them (table decodes: the low-nibble codes first, so that only one
        ``vpshufb`` result is live at a time)."""
        kind = self.plan.kind
        if kind == "int":
            return [(i, *self._masked(word, i, scaled)) for i in range(self.per_word)]
        if kind == "byte_table" and self.avx2:
            table = self._registers[0]
            nibbles = V.const(NIBBLES, "uint32")
            halves = (V.bitcast("uint32x8", V.pshufb(table, word & nibbles)),
                      V.bitcast("uint32x8", V.pshufb(table, (word >> V.const(4, "uint32")) & nibbles)))
            order = sorted(range(self.per_word), key=lambda i: (i % 2, i))
            return [(i, *self._masked(halves[i % 2], i // 2, scaled)) for i in order]
        if kind == "byte_table":
            return [(i, V.to_float(tir.Cast("int32x8", self.table[self._index(word, i)])), 1.0)
                    for i in range(self.per_word)]
        if self.avx2 and self.bits <= 4:
            return [(i, self._permute(word, i), 1.0) for i in range(self.per_word)]
        return [(i, self.table[self._index(word, i)], 1.0) for i in range(self.per_word)]

    def _permute(self, word: tir.PrimExpr, i: int) -> tir.PrimExpr:
        pos = self.bits * i
        index = word if pos == 0 else word >> V.const(pos, "uint32")
        if self.bits < 3:
            index = index & V.const(2**self.bits - 1, "uint32")
        if self.bits <= 3:
            return V.permps(self._registers[0], index)
        low = V.permps(self._registers[0], index)
        high = V.permps(self._registers[1], index)
        top = pos + 3
        selector = word << V.const(31 - top, "uint32") if top < 31 else word
        return V.blendv(low, high, selector)
