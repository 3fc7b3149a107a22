"""The weight layout kernels read: 32-bit words of codes, interleaved over tiles of channels.

A ``b``-bit code layout packs ``c = floor(32 / b)`` consecutive codes of one output channel
into a 32-bit word, code ``i`` in bits ``[b·i, b·(i+1))``. Words never straddle a scale group:
each group of ``g`` input channels (all ``K`` for per-channel scales) takes ``w = ceil(g / c)``
words (rounded up to ``word_multiple``), the unused code slots hold zeros. Channels are
grouped in tiles of ``TILE = 32``, and within a tile the words are stored channel-fastest::

    words[tile, word, lane]      (uint32)  word = group · w + j,  channel = tile · 32 + lane

so one 32-byte load gives the same word of 8 channels, and a warp of 32 CUDA threads reads
128 contiguous bytes. K slot ``s = word · c + i`` holds input channel ``k(s) = group · g + j·c + i``.
Per-channel or per-group parameters (scales) are stored ``[tile, group, lane]`` the same way.
Padding channels (``N`` not a multiple of 32) have zero codes and zero scales.

The lookup-table kernel (:mod:`bitfold.codegen.cpu_lut`) reads the same K slots as bit planes
instead of words (:func:`pack_bit_planes`): for plane ``p`` of the codes, channel ``n`` and
slot quad ``q`` (slots ``4q … 4q+3``), the 4-bit index ``Σ_j bit_p(u[n, 4q+j]) · 2^j``. Two
quads share a byte (low nibble: the even quad), and a 32-byte vector holds 16 channels times
two planes, channel-major, so that ``vpmaddubsw`` weighs a channel's two planes into one
int16 lane::

    planes[tile, quad_pair, plane_pair, half, 2·c + e]   (uint8)
        channel = tile·32 + half·16 + c,   plane = 2·plane_pair + e
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Output channels per tile: 4 AVX2 vectors, one CUDA warp.
TILE = 32


@dataclass(frozen=True)
class WordLayout:
    """Geometry of the word layout of one ``[N, K]`` weight (see the module docstring)."""

    bits: int
    out_features: int
    in_features: int
    group: int
    word_multiple: int = 1

    @property
    def codes_per_word(self) -> int:
        return 32 // self.bits

    @property
    def groups(self) -> int:
        return -(-self.in_features // self.group)

    @property
    def words_per_group(self) -> int:
        words = -(-self.group // self.codes_per_word)
        return -(-words // self.word_multiple) * self.word_multiple

    @property
    def words(self) -> int:
        return self.groups * self.words_per_group

    @property
    def slots_per_group(self) -> int:
        return self.words_per_group * self.codes_per_word

    @property
    def slots(self) -> int:
        return self.words * self.codes_per_word

    @property
    def tiles(self) -> int:
        return -(-self.out_features // TILE)

    @property
    def padded_out_features(self) -> int:
        return self.tiles * TILE

    def group_length(self, group: int) -> int:
        """Input channels in ``group`` (the last one may be ragged)."""
        return min(self.group, self.in_features - group * self.group)

    def slot_to_channel(self) -> np.ndarray:
        """For every K slot, its input channel, or -1 for a padding slot."""
        s = np.arange(self.slots)
        group, within = np.divmod(s, self.slots_per_group)
        k = group * self.group + within
        valid = (within < self.group) & (k < self.in_features)
        return np.where(valid, k, -1)

    def pack(self, codes: np.ndarray) -> np.ndarray:
        """``[N, K]`` codes (uint8, already in stored form) → ``[tiles, words, TILE]`` uint32."""
        n, k = codes.shape
        if (n, k) != (self.out_features, self.in_features):
            raise ValueError(
                f"codes of shape {codes.shape} do not match the layout {self.out_features}x{self.in_features}")
        slot_k = self.slot_to_channel()
        slotted = np.zeros((self.padded_out_features, self.slots), dtype=np.uint32)
        valid = slot_k >= 0
        slotted[:n, valid] = codes[:, slot_k[valid]]
        per_word = slotted.reshape(self.padded_out_features, self.words, self.codes_per_word)
        shifts = (np.arange(self.codes_per_word, dtype=np.uint32) * self.bits).astype(np.uint32)
        words = np.bitwise_or.reduce(per_word << shifts, axis=2).astype(np.uint32)
        return np.ascontiguousarray(words.reshape(self.tiles, TILE, self.words).transpose(0, 2, 1))

    def tile_params(self, values: np.ndarray, dtype: str = "float32") -> np.ndarray:
        """``[N]`` or ``[N, groups]`` values → ``[tiles, groups, TILE]`` of ``dtype`` (zero padded)."""
        values = np.asarray(values, dtype=dtype)
        if values.ndim == 1:
            values = np.repeat(values[:, None], self.groups, axis=1)
        if values.shape != (self.out_features, self.groups):
            raise ValueError(f"parameters of shape {values.shape} do not match {self.out_features} channels "
                             f"x {self.groups} groups")
        padded = np.zeros((self.padded_out_features, self.groups), dtype=dtype)
        padded[: self.out_features] = values
        return np.ascontiguousarray(padded.reshape(self.tiles, TILE, self.groups).transpose(0, 2, 1))

    def unpack(self, words: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`pack` (for tests): ``[N, K]`` uint8 stored codes."""
        flat = words.transpose(0, 2, 1).reshape(self.padded_out_features, self.words)
        shifts = (np.arange(self.codes_per_word, dtype=np.uint32) * self.bits).astype(np.uint32)
        fields = (flat[:, :, None] >> shifts) & np.uint32(2**self.bits - 1)
        slotted = fields.reshape(self.padded_out_features, self.slots)
        slot_k = self.slot_to_channel()
        out = np.zeros((self.out_features, self.in_features), dtype=np.uint8)
        valid = slot_k >= 0
        out[:, slot_k[valid]] = slotted[: self.out_features, valid]
        return out


def pack_bit_planes(layout: WordLayout, codes: np.ndarray) -> np.ndarray:
    """``[N, K]`` stored codes → ``[tiles, slots/8, bits/2, 2, 32]`` uint8 bit-plane indices.

    ``layout`` fixes the slots (its groups must hold whole slot octets) and the bits (2 or 4).
    """
    if layout.bits not in (2, 4) or layout.slots_per_group % 8:
        raise ValueError(f"bit planes need 2- or 4-bit codes in groups of whole slot octets, got "
                         f"{layout.bits} bits and {layout.slots_per_group} slots per group")
    n, k = codes.shape
    if (n, k) != (layout.out_features, layout.in_features):
        raise ValueError(f"codes of shape {codes.shape} do not match the layout {layout.out_features}x{layout.in_features}")
    slot_k = layout.slot_to_channel()
    valid = slot_k >= 0
    slotted = np.zeros((layout.padded_out_features, layout.slots), dtype=np.uint8)
    slotted[:n, valid] = codes[:, slot_k[valid]]
    planes = (slotted[:, None, :] >> np.arange(layout.bits, dtype=np.uint8)[None, :, None]) & np.uint8(1)
    quads = planes.reshape(layout.padded_out_features, layout.bits, -1, 4)
    index = (quads << np.arange(4, dtype=np.uint8)).sum(axis=-1, dtype=np.uint8)
    pairs = index.reshape(layout.padded_out_features, layout.bits, -1, 2)
    packed = pairs[..., 0] | (pairs[..., 1] << np.uint8(4))
    quad_pairs = packed.shape[-1]
    by_half = packed.reshape(layout.tiles, 2, TILE // 2, layout.bits // 2, 2, quad_pairs)
    return np.ascontiguousarray(by_half.transpose(0, 5, 3, 1, 2, 4).reshape(
        layout.tiles, quad_pairs, layout.bits // 2, 2, TILE))
