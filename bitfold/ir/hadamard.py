"""Block-Hadamard rotation that PyTorch, ONNX Runtime and TVM compute alike: ``bitfold::hadamard``.

A linear layer is unchanged when its input is rotated and its weight counter-rotated::

    y = W x = (W Hᵀ)(H x)        for any orthogonal H

With ``H = blockdiag(H_b, …, H_b)``, ``H_b`` the normalized Sylvester–Hadamard matrix of
order ``b`` (a power of two; symmetric, so ``Hᵀ = H`` and ``H H = I``), the rotated input
``H x`` mixes each run of ``b`` channels evenly. That is what a 4-bit per-tensor activation
grid needs where a few channels dominate and no exact per-channel fold exists (MiniLM's
GELU-fed FC2 input, LLaMA's SiLU·up-fed ``down_proj``): the rotated channels have similar
ranges, so one scale serves them all (QuaRot, Ashkboos et al. 2024, rotates whole
activations the same way).

The rotation is computed as ``log2 b`` butterfly stages on the flattened tensor, then one
multiply by ``1/√b``::

    stage h = 1, 2, …, b/2:   view x as [-1, 2, h] = [a; c]   →   [a + c; a − c]

Every step is a correctly rounded float32 ``+``, ``−`` or ``×``, ``b·log2 b`` additions per
block instead of the ``b²`` of a matrix product, and runtimes that take the same steps in
the same order get bit-identical results, so the quantizer after the rotation rounds the
same values to the same codes in every backend. :func:`spell_hadamard` writes the steps once
against :class:`Butterflies`; the PyTorch op, the ONNX lowering and the TVM lowering each
implement it.
"""

from __future__ import annotations

import math
from typing import Generic, Protocol, Tuple, TypeVar

import torch

V = TypeVar("V")


class HadamardError(ValueError):
    """A block size or tensor width the rotation cannot use."""


def is_block_size(block: object) -> bool:
    """Whether ``block`` is a power of two ≥ 2, the sizes a Hadamard block can have."""
    return isinstance(block, int) and block >= 2 and not block & (block - 1)


def check_block(block: int, width: int) -> None:
    """Raise unless ``block`` is a power of two ≥ 2 that divides ``width``."""
    if not is_block_size(block):
        raise HadamardError(f"the Hadamard block size must be a power of two >= 2, not {block!r}")
    if width % block:
        raise HadamardError(f"a width of {width} channels is not a whole number of {block}-channel blocks")


def largest_block(width: int, limit: int) -> int:
    """The largest power of two that divides ``width`` and is at most ``limit``."""
    return min(width & -width, 1 << (max(limit, 1).bit_length() - 1))


def hadamard_matrix(block: int) -> torch.Tensor:
    """``H_b``: the normalized Sylvester–Hadamard matrix of order ``block`` (float64)."""
    check_block(block, block)
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < block:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(block)


class Butterflies(Protocol, Generic[V]):
    """The steps of the rotation on a backend's values (tensors, ONNX names, Relax exprs)."""

    def halves(self, x: V, h: int) -> Tuple[V, V]:
        """``x`` viewed as ``[-1, 2, h]``: its ``[:, 0]`` and ``[:, 1]`` parts (each ``[-1, 1, h]``)."""
        ...

    def join(self, a: V, c: V) -> V:
        """``a`` and ``c`` concatenated on axis 1 (``[-1, 2, h]``)."""
        ...

    def add(self, a: V, c: V) -> V: ...

    def sub(self, a: V, c: V) -> V: ...

    def scale(self, x: V, factor: float) -> V: ...

    def restore(self, y: V, like: V) -> V:
        """``y`` reshaped to the shape of ``like``."""
        ...


def spell_hadamard(x: V, block: int, ops: Butterflies[V]) -> V:
    """``blockdiag(H_block) x`` along the last axis, as the steps in the module docstring."""
    y, h = x, 1
    while h < block:
        a, c = ops.halves(y, h)
        y = ops.join(ops.add(a, c), ops.sub(a, c))
        h *= 2
    return ops.restore(ops.scale(y, float(torch.tensor(1.0 / math.sqrt(block), dtype=torch.float32))), x)


class TorchButterflies:
    """:class:`Butterflies` on tensors."""

    def halves(self, x: torch.Tensor, h: int) -> Tuple[torch.Tensor, torch.Tensor]:
        pairs = x.reshape(-1, 2, h)
        return pairs[:, :1], pairs[:, 1:]

    def join(self, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, c], dim=1)

    def add(self, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return a + c

    def sub(self, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return a - c

    def scale(self, x: torch.Tensor, factor: float) -> torch.Tensor:
        return x * factor

    def restore(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return y.reshape(like.shape)


@torch.library.custom_op("bitfold::hadamard", mutates_args=())
def hadamard(x: torch.Tensor, block: int) -> torch.Tensor:
    """``x`` rotated by ``blockdiag(H_block)`` along its last axis (see the module docstring)."""
    check_block(block, x.shape[-1])
    if x.dtype != torch.float32:
        return spell_hadamard(x.float(), block, TorchButterflies()).to(x.dtype)
    return spell_hadamard(x.contiguous(), block, TorchButterflies())


@hadamard.register_fake
def _(x, block):
    return torch.empty_like(x)


def rotate_rows(weight: torch.Tensor, block: int) -> torch.Tensor:
    """``W Hᵀ`` for ``W`` of shape ``[out, in]``: the weight that undoes the input's rotation."""
    check_block(block, weight.shape[-1])
    h = hadamard_matrix(block)
    rows = weight.detach().double().reshape(weight.shape[0], -1, block)
    return (rows @ h.T).reshape(weight.shape).to(weight.dtype)
