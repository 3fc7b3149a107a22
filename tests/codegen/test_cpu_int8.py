"""The int8-activation CPU kernel: exact against an emulation of its activation quantizer,
and within int8 rounding of bitfold::quantized_linear."""

import dataclasses

import numpy as np
import pytest
import torch

from bitfold.codegen import host_cpu_target
from bitfold.codegen.inputs import INT8_BLOCK, layout_for
from bitfold.codegen.vector import has_avx2

from ._helpers import kernel_outputs, random_layer, rel_error

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not has_avx2(host_cpu_target()), reason="the int8-activation kernel needs AVX2"),
]


def quantize_like_the_kernel(x: np.ndarray, layer) -> np.ndarray:
    """x · 2^-shift quantized per 32-slot block (symmetric int8, round half to even), dequantized.

    The result goes through the op without its shift (already applied)."""
    spec = layer.spec
    layout = layout_for(spec)
    slot_k = layout.slot_to_channel()
    valid = slot_k >= 0
    xs = x.astype(np.float32)
    if layer.shift is not None:
        xs = xs * np.ldexp(np.float32(1), -layer.shift.numpy())
    slotted = np.zeros((x.shape[0], layout.slots), np.float32)
    slotted[:, valid] = xs[:, slot_k[valid]]
    blocks = slotted.reshape(x.shape[0], -1, INT8_BLOCK)
    amax = np.abs(blocks).max(-1, keepdims=True)
    scale = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
    deq = (np.clip(np.rint(blocks / scale), -127, 127) * scale).reshape(x.shape[0], -1)
    out = np.zeros_like(xs)
    out[:, slot_k[valid]] = deq[:, valid]
    return out


@pytest.mark.parametrize("fmt,n,k,group,zp", [("int4", 70, 100, 32, True), ("int2", 33, 77, None, False),
                                              ("e2m1", 50, 90, 40, False), ("uint4", 1030, 1100, 128, True)])
def test_int8_activation_kernel(fmt, n, k, group, zp):
    layer = random_layer(fmt, n, k, group, zp, True, True, seed=n, int8_activations=True)
    for x, got in kernel_outputs(layer):
        xq = torch.from_numpy(quantize_like_the_kernel(x.numpy(), layer))
        unshifted = dataclasses.replace(layer, shift=None, spec=dataclasses.replace(layer.spec, has_shift=False))
        assert rel_error(got, unshifted.reference(xq)) <= 1e-5
        assert rel_error(got, layer.reference(x)) <= 3e-2  # int8 rounding of the activations
