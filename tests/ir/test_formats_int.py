"""Integer formats: ranges, round half to even, zero points, two's-complement codes."""

import ml_dtypes
import numpy as np
import pytest
import torch

from bitfold.ir import formats


@pytest.mark.parametrize("bits", range(2, 9))
def test_ranges(bits):
    s, u = formats.get(f"int{bits}"), formats.get(f"uint{bits}")
    assert s.grid[0] == -(2 ** (bits - 1)) and s.grid[-1] == 2 ** (bits - 1) - 1
    assert u.grid[0] == 0 and u.grid[-1] == 2**bits - 1
    assert s.max == 2 ** (bits - 1) - 1


def test_round_half_to_even_and_saturation():
    f = formats.get("int4")
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 7.5, 100.0, -100.0, -8.5])
    assert f.quantize(x).tolist() == [0, 2, 2, -0.0, -2, -2, 7, 7, -8, -8]


@pytest.mark.parametrize("name,np_type", [("int4", ml_dtypes.int4), ("int2", ml_dtypes.int2),
                                          ("uint4", ml_dtypes.uint4), ("int8", np.int8), ("uint8", np.uint8)])
def test_codes_are_twos_complement_like_ml_dtypes(name, np_type):
    f = formats.get(name)
    values = f.grid.numpy().astype(np.int64)
    codes = f.encode(torch.from_numpy(values.astype(np.float32))).numpy()
    ref = values.astype(np_type).view(np.uint8) & (2**f.bits - 1)
    np.testing.assert_array_equal(codes, ref)
    np.testing.assert_array_equal(f.decode(torch.from_numpy(codes)).numpy(), values)


def test_zero_point_per_channel():
    f = formats.get("uint4")
    x = torch.tensor([[-1.0, 0.0, 2.0, 3.75], [0.0, 1.0, 2.0, 3.0]])
    lo, hi = x.amin(1), x.amax(1)
    scale = (hi - lo) / 15
    zp = torch.round(-lo / scale)
    q = f.quantize(x, scale, axis=0, zero_point=zp)
    codes = f.encode(x, scale, axis=0, zero_point=zp)
    assert int(codes.min()) >= 0 and int(codes.max()) <= 15
    torch.testing.assert_close(f.decode(codes, scale, axis=0, zero_point=zp), q)
    assert (q - x).abs().max() <= scale.max() / 2 + 1e-6
    # zeros stay exact when the zero point is an integer
    assert q[1, 0] == 0


def test_zero_point_rejected_for_float_formats():
    with pytest.raises(formats.FormatError, match="zero point"):
        formats.get("e2m1").quantize(torch.ones(3), 1.0, zero_point=1)
