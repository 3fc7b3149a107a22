"""The lookup-table CPU kernel: exact against a numpy emulation of its int8 tables, within
table rounding of bitfold::quantized_linear, and clear errors for what it cannot take."""

import numpy as np
import pytest

from bitfold.codegen import (KernelError, LinearKernelSpec, build_linear_kernel, decode_plan, host_cpu_target,
                             kernel_arg_names)
from bitfold.codegen.inputs import INT8_BLOCK, layout_for
from bitfold.codegen.vector import has_avx2
from bitfold.ir import formats

from ._helpers import Kernel, kernel_outputs, random_layer, rel_error

avx2_only = pytest.mark.skipif(not has_avx2(host_cpu_target()), reason="the lookup-table kernel needs AVX2")


def emulate(x: np.ndarray, layer, arrays) -> np.ndarray:
    """The kernel's arithmetic in numpy: centred float32 tables per quad of slots, int8 per
    block of 32 slots, looked up with each plane's bits, weighted by 2^p; zero points and
    scales as stored in the kernel's own arrays."""
    spec = layer.spec
    layout = layout_for(spec)
    plan = decode_plan(spec.weight_format)
    n, k = spec.out_features, spec.in_features
    codes = formats.unpack(layer.packed.reshape(-1), plan.bits, n * k).numpy().reshape(n, k)
    slot_k = layout.slot_to_channel()
    valid = slot_k >= 0
    u = np.zeros((n, layout.slots), np.int64)
    u[:, valid] = plan.stored_codes(codes)[:, slot_k[valid]]
    xs = x.astype(np.float32)
    if layer.shift is not None:
        xs = xs * np.ldexp(np.float32(1), -layer.shift.numpy())
    slotted = np.zeros((x.shape[0], layout.slots), np.float32)
    slotted[:, valid] = xs[:, slot_k[valid]]
    quads = slotted.reshape(x.shape[0], -1, 4)
    centred_bits = ((np.arange(16)[:, None] >> np.arange(4)) & 1) - np.float32(0.5)  # [entry, j]
    table = np.zeros((x.shape[0], quads.shape[1], 16), np.float32)
    for j in range(4):
        table = table + quads[:, :, None, j] * centred_bits[:, j].astype(np.float32)
    blocks = table.reshape(x.shape[0], -1, INT8_BLOCK // 4 * 16)
    amax = np.abs(blocks).max(-1, keepdims=True)
    block_scale = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
    levels = np.rint(blocks / block_scale).reshape(table.shape).astype(np.int64)
    quad_u = u.reshape(n, -1, 4)
    sums = np.zeros((x.shape[0], n, quad_u.shape[1]), np.int64)
    for p in range(plan.bits):
        index = (((quad_u >> p) & 1) << np.arange(4)).sum(-1)  # [n, quad]
        looked_up = np.take_along_axis(levels[:, None], index[None, :, :, None], axis=-1)[..., 0]
        sums += looked_up << p
    per_block = sums.reshape(x.shape[0], n, -1, INT8_BLOCK // 4).sum(-1) * block_scale[:, None, :, 0]
    per_group = per_block.reshape(x.shape[0], n, layout.groups, -1).sum(-1)
    scales = kernel_array(spec, arrays, "scales").transpose(0, 2, 1).reshape(-1, layout.groups)[:n]
    offset = np.full((n, layout.groups), -(2**plan.bits - 1) / 2)
    if "zero_points" in kernel_arg_names(spec):
        offset += kernel_array(spec, arrays, "zero_points").transpose(0, 2, 1).reshape(-1, layout.groups)[:n]
    group_sum = slotted.reshape(x.shape[0], layout.groups, -1).astype(np.float64).sum(-1)
    per_group = per_group - offset[None] * group_sum[:, None, :]
    y = (per_group * scales[None]).sum(-1)
    if layer.bias is not None:
        y = y + layer.bias.numpy()
    return y


def kernel_array(spec, arrays, name: str) -> np.ndarray:
    """One of the kernel's weight-side arrays, by argument name."""
    return arrays[kernel_arg_names(spec)[1:-1].index(name)]


@pytest.mark.slow
@avx2_only
@pytest.mark.parametrize("fmt,n,k,group,zp", [("int4", 70, 100, 32, True), ("int2", 33, 77, None, False),
                                              ("uint4", 1030, 1100, 128, True), ("uint2", 64, 256, 64, True)])
def test_lookup_table_kernel(fmt, n, k, group, zp):
    layer = random_layer(fmt, n, k, group, zp, True, True, seed=n, lookup_tables=True)
    for x, got in kernel_outputs(layer):
        assert rel_error(got, emulate(x.numpy(), layer, layer.arrays())) <= 1e-5
        assert rel_error(got, layer.reference(x)) <= 4e-2  # int8 rounding of the tables


@avx2_only
def test_zero_rows_give_the_bias():
    layer = random_layer("uint2", 40, 64, 32, True, False, True, seed=3, lookup_tables=True)
    got = Kernel(layer.spec, host_cpu_target())(np.zeros((2, 64), np.float32), layer.arrays())
    np.testing.assert_array_equal(got, np.broadcast_to(layer.bias.numpy(), got.shape))


@pytest.mark.parametrize("fmt", ["e2m1", "int3", "int8", "nf4"])
def test_formats_without_bit_planes_are_refused(fmt):
    spec = LinearKernelSpec(fmt, 32, 64, None, False, False, False, lookup_tables=True)
    with pytest.raises(KernelError, match="lookup tables need 2- or 4-bit integer codes"):
        build_linear_kernel(spec, host_cpu_target())


def test_variant_errors_name_the_problem():
    with pytest.raises(KernelError, match="not both"):
        LinearKernelSpec("int4", 32, 64, None, False, False, False, int8_activations=True, lookup_tables=True)
    spec = LinearKernelSpec("int4", 32, 64, None, False, False, False, lookup_tables=True)
    with pytest.raises(KernelError, match="lookup-table variant is CPU-only"):
        build_linear_kernel(spec, {"kind": "cuda", "arch": "sm_90"})
    with pytest.raises(KernelError, match="lookup-table variant needs an x86 target with AVX2"):
        build_linear_kernel(spec, {"kind": "llvm", "mtriple": "aarch64-linux-gnu"})
