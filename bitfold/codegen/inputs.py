"""The weight-side arrays of a kernel, converted once at compile time from the op's tensors.

A kernel built by :func:`bitfold.codegen.build_linear_kernel` takes, in this order::

    x [M, K]                      activations (act_dtype)
    codes [tiles, words, 32]      uint32, the word layout of bitfold.codegen.layout
                                  (lookup-table kernels: [tiles, slots/8, bits/2, 2, 32] uint8 bit planes)
    table                         byte_table: 32 uint8 levels; float_table: 2^b float32 values
    scales [tiles, groups, 32]    float32, s' = scale · 2^-p
    zero_points [tiles, groups, 32]  uint8, z (formats stored with a level offset)
    shift [K]                     float32, 2^-k (LLM-FP4's per-input-channel exponent shift)
    bias [N]                      float32
    y [M, N]                      output (act_dtype), written by the kernel

where ``table``, ``zero_points``, ``shift`` and ``bias`` appear only when the spec needs them
(:func:`kernel_arg_names`). :func:`kernel_inputs` returns the arrays between ``x`` and ``y``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, List, Optional

import numpy as np
import torch
from torch import fx

from bitfold.codegen.decode import DecodePlan, decode_plan
from bitfold.codegen.layout import WordLayout, pack_bit_planes
from bitfold.codegen.spec import KernelError, LinearKernelSpec, quantized_linear_args, spec_from_node
from bitfold.ir import formats
from bitfold.ir.graph_utils import attr_value

#: Input channels per int8 block: one activation scale (as ONNX Runtime's level 4) in the
#: int8-activation kernel, one table scale in the lookup-table kernel.
INT8_BLOCK = 32
#: Largest |k| of the exponent shift for which 2^-k is a normal float32.
_MAX_SHIFT = 126


def int8_supported(plan: DecodePlan) -> bool:
    """Whether the int8-activation kernel takes this decode plan (byte-wise levels ≤ 127)."""
    return plan.kind in ("int", "byte_table") and plan.bits in (2, 4) and plan.max_level <= 127


def lookup_supported(plan: DecodePlan) -> bool:
    """Whether the lookup-table kernel takes this decode plan (2- or 4-bit integer levels,
    whose bits are the planes it looks up)."""
    return plan.kind == "int" and plan.bits in (2, 4)


def layout_for(spec: LinearKernelSpec) -> WordLayout:
    """The word layout a spec's kernels read (its K slots, for the lookup-table kernel)."""
    plan = decode_plan(spec.weight_format)
    group = spec.effective_group_size or spec.in_features
    multiple = 1
    if spec.int8_activations and not int8_supported(plan):
        raise KernelError(
            f"int8 activations need 2- or 4-bit integer levels up to 127; {spec.weight_format} has "
            f"{plan.kind} codes of {plan.bits} bits"
        )
    if spec.lookup_tables and not lookup_supported(plan):
        raise KernelError(
            f"lookup tables need 2- or 4-bit integer codes; {spec.weight_format} has {plan.kind} codes of "
            f"{plan.bits} bits"
        )
    if spec.int8_activations or spec.lookup_tables:
        multiple = INT8_BLOCK // (32 // plan.bits)
    return WordLayout(plan.bits, spec.out_features, spec.in_features, group, multiple)


def kernel_arg_names(spec: LinearKernelSpec) -> List[str]:
    """Names of the kernel's arguments in order (``x`` first, ``y`` last)."""
    plan = decode_plan(spec.weight_format)
    names = ["x", "codes"]
    if plan.kind != "int":
        names.append("table")
    names.append("scales")
    if plan.needs_offset_correction and (plan.offset or spec.has_zero_point):
        names.append("zero_points")
    if spec.has_shift:
        names.append("shift")
    if spec.has_bias:
        names.append("bias")
    return names + ["y"]


def _as_numpy(value: Any, what: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _per_group(value: np.ndarray, spec: LinearKernelSpec, what: str) -> np.ndarray:
    """``value`` broadcast to ``[N, groups]`` (accepts a scalar, ``[N]`` or ``[N, groups]``)."""
    n, g = spec.out_features, spec.groups
    if value.size == 1:
        return np.full((n, g), float(value.reshape(-1)[0]), dtype=np.float64)
    if value.ndim == 1 and value.shape[0] == n:
        return np.repeat(value.astype(np.float64)[:, None], g, axis=1)
    if value.shape == (n, g):
        return value.astype(np.float64)
    raise KernelError(f"{what} of shape {value.shape} does not fit {spec.describe()} (expected [{n}] or [{n}, {g}])")


def kernel_inputs_from_tensors(
    spec: LinearKernelSpec,
    packed_weight: Any,
    weight_scale: Any,
    weight_zero_point: Optional[Any] = None,
    input_shift: Optional[Any] = None,
    bias: Optional[Any] = None,
) -> List[np.ndarray]:
    """The kernel's weight-side arrays from the operands of ``bitfold::quantized_linear``."""
    plan = decode_plan(spec.weight_format)
    layout = layout_for(spec)
    n, k = spec.out_features, spec.in_features
    for present, flag, what in ((weight_zero_point, spec.has_zero_point, "zero point"),
                                (input_shift, spec.has_shift, "input shift"), (bias, spec.has_bias, "bias")):
        if (present is not None) != flag:
            raise KernelError(f"{spec.describe()}: the spec says {'a' if flag else 'no'} {what}, the tensors disagree")
    packed = _as_numpy(packed_weight, "packed weight")
    if packed.dtype != np.uint8:
        raise KernelError(f"packed weight must be uint8 bytes, got {packed.dtype}")
    need = formats.packed_size(n * k, plan.bits)
    if packed.size < need:
        raise KernelError(f"packed weight has {packed.size} bytes, {spec.describe()} needs {need}")
    codes = formats.unpack(torch.from_numpy(packed.reshape(-1).copy()), plan.bits, n * k).numpy().reshape(n, k)
    stored = plan.stored_codes(codes)
    arrays = [pack_bit_planes(layout, stored) if spec.lookup_tables else layout.pack(stored)]
    table = plan.table()
    if table is not None:
        arrays.append(table)

    scale = _per_group(_as_numpy(weight_scale, "weight scale"), spec, "weight scale")
    if not np.all(np.isfinite(scale)):
        raise KernelError(f"{spec.describe()}: the weight scale holds NaN/Inf")
    scale = scale * plan.value_scale
    arrays.append(layout.tile_params(scale))
    if "zero_points" in kernel_arg_names(spec):
        zero = np.full((n, spec.groups), float(plan.offset))
        if weight_zero_point is not None:
            zero = zero + np.round(_per_group(_as_numpy(weight_zero_point, "zero point"), spec, "weight zero point"))
        if zero.min() < 0 or zero.max() > plan.max_level:
            raise KernelError(f"{spec.describe()}: zero points must lie in the format's code range, "
                              f"got {zero.min() - plan.offset:g}..{zero.max() - plan.offset:g}")
        arrays.append(layout.tile_params(zero, "uint8"))
    if input_shift is not None:
        shift = _as_numpy(input_shift, "input shift").reshape(-1)
        if shift.shape != (k,):
            raise KernelError(f"input shift of shape {shift.shape} does not fit {spec.describe()} (expected [{k}])")
        if np.abs(shift).max(initial=0) > _MAX_SHIFT:
            raise KernelError(f"input shift exponents must lie in [-{_MAX_SHIFT}, {_MAX_SHIFT}], "
                              f"got {shift.min()}..{shift.max()}")
        arrays.append(np.ldexp(np.float32(1.0), -shift.astype(np.int32)).astype(np.float32))
    if bias is not None:
        b = _as_numpy(bias, "bias").astype(np.float32).reshape(-1)
        if b.shape != (n,):
            raise KernelError(f"bias of shape {b.shape} does not fit {spec.describe()} (expected [{n}])")
        arrays.append(b)
    return arrays


def kernel_inputs(spec: LinearKernelSpec, node: fx.Node, gm: fx.GraphModule) -> List[np.ndarray]:
    """Weight-side arrays for ``node`` (a ``bitfold::quantized_linear`` call) in kernel order."""
    args = quantized_linear_args(node)
    node_spec = dataclasses.replace(spec_from_node(node), act_dtype=spec.act_dtype,
                                    int8_activations=spec.int8_activations, lookup_tables=spec.lookup_tables)
    if node_spec != spec:
        raise KernelError(f"node {node.name}: its spec {node_spec.describe()} differs from {spec.describe()}")
    tensors = {}
    for name in ("packed_weight", "weight_scale", "weight_zero_point", "input_shift", "bias"):
        value = args[name]
        if value is None:
            tensors[name] = None
            continue
        tensor = attr_value(gm, value) if isinstance(value, fx.Node) else value
        if tensor is None:
            raise KernelError(f"node {node.name}: {name} ({value}) is not a constant of the graph")
        tensors[name] = tensor
    try:
        return kernel_inputs_from_tensors(spec, **tensors)
    except KernelError as err:
        raise KernelError(f"node {node.name}: {err}") from None
