"""Block-scaled formats (OCP MX, NVFP4) against a reference built from ml_dtypes."""

import math

import ml_dtypes
import numpy as np
import pytest
import torch

from bitfold.ir import formats

MX = {
    "mxfp4": (ml_dtypes.float4_e2m1fn, 2),
    "mxfp6_e2m3": (ml_dtypes.float6_e2m3fn, 2),
    "mxfp6_e3m2": (ml_dtypes.float6_e3m2fn, 4),
    "mxfp8_e4m3": (ml_dtypes.float8_e4m3fn, 8),
    "mxfp8_e5m2": (ml_dtypes.float8_e5m2, 15),
}


def mx_reference(x: np.ndarray, name: str):
    np_type, emax = MX[name]
    fmt = formats.get(name)
    blocks = x.reshape(-1, 32)
    amax = np.abs(blocks).max(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        exp = np.where(amax > 0, np.floor(np.log2(amax)) - emax, -127).clip(-127, 127)
    scale = np.exp2(exp).astype(np.float32)
    elems = np.clip(blocks / scale, -fmt.element.max, fmt.element.max).astype(np_type)
    return elems.view(np.uint8).reshape(x.shape), scale.reshape(x.shape[0], -1)


@pytest.mark.parametrize("name", sorted(MX))
def test_mx_matches_reference_bit_exact(name):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 256)) * np.exp2(rng.integers(-20, 20, (64, 1)))).astype(np.float32)
    x[3, :32] = 0.0  # an all-zero block
    fmt = formats.get(name)
    scales = fmt.block_scales(torch.from_numpy(x))
    ref_codes, ref_scales = mx_reference(x, name)
    np.testing.assert_array_equal(scales.numpy(), ref_scales)
    np.testing.assert_array_equal(fmt.encode(torch.from_numpy(x), scales).numpy(), ref_codes)
    # E8M0 scale codes agree with ml_dtypes' float8_e8m0fnu
    np.testing.assert_array_equal(fmt.scale_codes(scales).numpy(),
                                  ref_scales.astype(ml_dtypes.float8_e8m0fnu).view(np.uint8))
    q = fmt.quantize(torch.from_numpy(x))
    torch.testing.assert_close(q, fmt.decode(fmt.encode(torch.from_numpy(x), scales), scales), rtol=0, atol=0)


def test_nvfp4_matches_reference():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((16, 128)) * 3).astype(np.float32)
    fmt = formats.get("nvfp4")
    t = float(np.abs(x).max() / (6 * 448))
    blocks = x.reshape(-1, 16)
    raw = (np.abs(blocks).max(1, keepdims=True) / 6 / np.float32(t)).astype(np.float32)
    block = np.maximum(raw.astype(ml_dtypes.float8_e4m3fn).astype(np.float32), 2.0**-9)
    eff = (block * np.float32(t)).astype(np.float32)
    elems = np.clip(blocks / eff, -6, 6).astype(ml_dtypes.float4_e2m1fn)
    scales = fmt.block_scales(torch.from_numpy(x))
    np.testing.assert_allclose(scales.numpy().reshape(-1, 1), eff, rtol=1e-7)
    np.testing.assert_array_equal(fmt.encode(torch.from_numpy(x), scales).numpy().reshape(-1, 16),
                                  elems.view(np.uint8))
    ts = fmt.tensor_scale(torch.from_numpy(x))
    codes = fmt.scale_codes(scales, ts)
    torch.testing.assert_close(fmt.scales_from_codes(codes, ts), scales)


def test_ragged_last_block_and_other_axis():
    fmt = formats.get("mxfp4")
    x = torch.randn(70, 5)
    q0 = fmt.quantize(x, axis=0)
    q_ref = fmt.quantize(x.T.contiguous(), axis=-1).T
    assert torch.equal(q0, q_ref)
    assert fmt.block_scales(x, axis=0).shape == (3, 5)


def test_block_formats_describe_their_storage():
    d = formats.get("mxfp4").describe()
    assert d["block_size"] == 32 and d["bits_per_value"] == 4.25
    assert formats.get("nvfp4").bytes_for((128, 64)) == 128 * 64 // 2 + 128 * 4 + 4


def test_encode_requires_scales():
    with pytest.raises(formats.FormatError, match="block scales"):
        formats.get("mxfp4").encode(torch.randn(32))


def test_mx_grid_is_the_element_grid():
    assert torch.equal(formats.get("mxfp4").grid, formats.get("e2m1").grid)
    assert math.isclose(formats.get("mxfp8").max, 448)
