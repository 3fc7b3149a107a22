"""The shared Format API: lookup by name, granularities, dtypes, devices and clear errors."""

import pytest
import torch

from bitfold.ir import formats
from bitfold.ir.formats import FormatError


def test_get_lists_known_formats_on_a_bad_name():
    with pytest.raises(FormatError) as err:
        formats.get("fp5_e9m9")
    message = str(err.value)
    assert "unknown number format 'fp5_e9m9'" in message and "e2m1" in message and "nf4" in message


def test_every_listed_name_resolves():
    for name in formats.names():
        fmt = formats.get(name)
        assert fmt.grid.numel() >= 3 and fmt.bits <= 8
        assert fmt.describe()["bits"] == fmt.bits


def test_aliases_and_case():
    assert formats.get("MXFP8") is formats.get("mxfp8_e4m3")
    assert formats.get("e2m1") is formats.get("E2M1")


def test_per_channel_equals_row_by_row():
    f = formats.get("e2m1")
    x = torch.randn(5, 33)
    s = x.abs().amax(1) / f.max
    q = f.quantize(x, s, axis=0)
    rows = torch.stack([f.quantize(x[i], s[i]) for i in range(5)])
    assert torch.equal(q, rows)
    # axis=1 with one scale per column is the same thing transposed
    assert torch.equal(f.quantize(x.T, s, axis=1), q.T)


@pytest.mark.parametrize("k", [64, 70, 1])
def test_per_group_with_ragged_last_group(k):
    f = formats.get("int4")
    x = torch.randn(3, k)
    g = 32
    n = -(-k // g)
    s = torch.rand(3, n) + 0.1
    q = f.quantize(x, s, axis=1, group_size=g)
    expanded = s.repeat_interleave(g, dim=1)[:, :k]
    assert torch.equal(q, f.quantize(x, expanded))
    codes = f.encode(x, s, axis=1, group_size=g)
    assert codes.shape == x.shape and codes.dtype == torch.uint8
    assert torch.equal(f.decode(codes, s, axis=1, group_size=g), q)


def test_groups_along_a_middle_axis_of_a_4d_tensor():
    f = formats.get("e3m0")
    x = torch.randn(2, 8, 3, 3)
    s = torch.rand(2, 2, 3, 3) + 0.5
    q = f.quantize(x, s, axis=1, group_size=4)
    ref = f.quantize(x, s.repeat_interleave(4, dim=1))
    assert torch.equal(q, ref)


def test_scale_shape_errors_name_the_shapes():
    f = formats.get("int8")
    with pytest.raises(ValueError, match=r"does not match 4 channels along axis 0"):
        f.quantize(torch.randn(4, 6), torch.ones(5), axis=0)
    with pytest.raises(ValueError, match=r"expected shape \(4, 2\)"):
        f.quantize(torch.randn(4, 6), torch.ones(4, 3), axis=1, group_size=4)
    with pytest.raises(ValueError, match="group_size needs an axis"):
        f.quantize(torch.randn(4), 1.0, group_size=2)
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        f.quantize(torch.randn(4), torch.ones(4), axis=2)


def test_bad_scales_are_rejected():
    f = formats.get("e2m1")
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="positive and finite"):
            f.quantize(torch.ones(3), bad)


@pytest.mark.parametrize("name", ["e2m1", "int4", "nf4", "mxfp4"])
def test_nan_or_inf_input_is_an_error_naming_the_tensor(name):
    x = torch.randn(64)
    x[3] = float("nan")
    x[5] = float("inf")
    with pytest.raises(FormatError, match=r"'layers.0.fc1.weight' to .*2 NaN/Inf value"):
        formats.get(name).quantize(x, name="layers.0.fc1.weight")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtype_is_preserved(dtype):
    x = torch.randn(100).to(dtype)
    q = formats.get("e2m1").quantize(x, 0.5)
    assert q.dtype == dtype
    assert torch.equal(q.float(), formats.get("e2m1").quantize(x.float(), 0.5))


def test_decode_rejects_out_of_range_codes():
    with pytest.raises(FormatError, match="does not fit in 4 bits"):
        formats.get("e2m1").decode(torch.tensor([16]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["e2m1", "fp8_e4m3", "int4", "nf4", "mxfp4", "nvfp4"])
def test_cuda_matches_cpu(name):
    f = formats.get(name)
    x = torch.randn(64, 256)
    args = () if isinstance(f, formats.BlockFormat) else (x.abs().amax(1) / f.max, 0)
    cpu = f.quantize(x, *args)
    cuda_args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)
    assert torch.equal(f.quantize(x.cuda(), *cuda_args).cpu(), cpu)
