"""How a scale (and zero point) lines up with the tensor it quantizes.

Three granularities, chosen by ``axis`` and ``group_size``:

* per tensor (``axis=None``): the scale is a scalar, or any tensor that broadcasts to ``x``;
* per channel (``axis=a``): the scale has ``x.shape[a]`` entries, entry ``i`` serves slice ``i``;
* per group (``axis=a, group_size=g``): runs of ``g`` consecutive elements along ``a`` share a
  scale, which has ``x``'s shape with dimension ``a`` replaced by ``ceil(x.shape[a] / g)``.
  A ragged last group is allowed.

:func:`apply_scaled` runs an element-wise function on ``x`` and its aligned scale, reshaping
``x`` into ``(..., groups, g, ...)`` for groups so that no full-size scale tensor is built.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch

Scale = Union[float, int, torch.Tensor]


def _as_tensor(value: Scale, like: torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(device=like.device, dtype=torch.float32)
    return torch.tensor(float(value), device=like.device, dtype=torch.float32)


def _normalize_axis(axis: int, ndim: int, what: str) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"{what}: axis {axis} is out of range for a tensor with {ndim} dimensions")
    return axis % ndim


def _align_channel(t: torch.Tensor, shape: torch.Size, axis: int, what: str) -> torch.Tensor:
    channels = shape[axis]
    if t.dim() == 1 and t.numel() == channels:
        view = [1] * len(shape)
        view[axis] = channels
        return t.reshape(view)
    if t.numel() == 1:
        return t.reshape([1] * len(shape))
    try:
        torch.broadcast_shapes(t.shape, shape)
    except RuntimeError:
        raise ValueError(
            f"{what} of shape {tuple(t.shape)} does not match {channels} channels along axis {axis} "
            f"of a tensor of shape {tuple(shape)}"
        ) from None
    return t


def _align_group(t: torch.Tensor, shape: torch.Size, axis: int, groups: int, what: str) -> torch.Tensor:
    """Return ``t`` shaped to broadcast against ``x`` viewed as ``(..., groups, g, ...)``."""
    expected = list(shape)
    expected[axis] = groups
    if t.numel() == 1:
        return t.reshape([1] * (len(shape) + 1))
    if len(shape) > 1 and t.dim() == 1 and t.numel() == groups:
        view = [1] * len(shape)
        view[axis] = groups
        t = t.reshape(view)
    if t.dim() != len(shape):
        raise ValueError(
            f"{what} of shape {tuple(t.shape)} does not fit groups along axis {axis}: expected shape "
            f"{tuple(expected)} for a tensor of shape {tuple(shape)}"
        )
    try:
        torch.broadcast_shapes(t.shape, tuple(expected))
    except RuntimeError:
        raise ValueError(
            f"{what} of shape {tuple(t.shape)} does not fit groups along axis {axis}: expected shape "
            f"{tuple(expected)} for a tensor of shape {tuple(shape)}"
        ) from None
    if t.shape[axis] != groups and t.shape[axis] != 1:
        raise ValueError(f"{what} has {t.shape[axis]} groups along axis {axis}, expected {groups}")
    return t.unsqueeze(axis + 1)


def check_positive_finite(scale: torch.Tensor, what: str = "scale") -> None:
    if not bool(torch.isfinite(scale).all()) or not bool((scale > 0).all()):
        bad = scale[~(torch.isfinite(scale) & (scale > 0))]
        raise ValueError(f"{what} must be positive and finite; found {bad.flatten()[:4].tolist()}")


def apply_scaled(
    fn: Callable[..., torch.Tensor],
    x: torch.Tensor,
    scale: Scale,
    axis: Optional[int],
    group_size: Optional[int],
    zero_point: Optional[Scale] = None,
    what: str = "scale",
) -> torch.Tensor:
    """Call ``fn(x, scale, zero_point)`` with the scale (and zero point) broadcast to ``x``.

    The result has ``x``'s shape. ``zero_point`` is passed as ``None`` when absent.
    """
    s = _as_tensor(scale, x)
    zp = None if zero_point is None else _as_tensor(zero_point, x)
    if axis is None:
        if group_size is not None:
            raise ValueError("group_size needs an axis to group along")
        return fn(x, s, zp)

    axis = _normalize_axis(axis, x.dim(), what)
    if group_size is None:
        s = _align_channel(s, x.shape, axis, what)
        zp = None if zp is None else _align_channel(zp, x.shape, axis, "zero_point")
        return fn(x, s, zp)

    if group_size <= 0:
        raise ValueError(f"group_size must be positive, got {group_size}")
    size = x.shape[axis]
    groups = -(-size // group_size)
    padded = groups * group_size
    xg = x
    if padded != size:
        pad = [0, 0] * (x.dim() - 1 - axis) + [0, padded - size]
        xg = torch.nn.functional.pad(x, pad)
    xg = xg.unflatten(axis, (groups, group_size))
    s = _align_group(s, x.shape, axis, groups, what)
    zp = None if zp is None else _align_group(zp, x.shape, axis, groups, "zero_point")
    out = fn(xg, s, zp).flatten(axis, axis + 1)
    if padded != size:
        out = out.narrow(axis, 0, size)
    return out
