"""The LLM-FP ExMy family: grids, maxima, the real-valued exponent bias and its identities."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitfold.ir import formats
from bitfold.ir.formats import FloatFormat, FormatError


def test_e2m1_grid():
    assert formats.get("e2m1").grid.tolist() == [-6, -4, -3, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 3, 4, 6]


def test_e3m0_grid():
    pos = [0, 0.25, 0.5, 1, 2, 4, 8, 16]
    assert formats.get("e3m0").grid.tolist() == sorted({-v for v in pos} | set(pos))


def test_e1m2_grid():
    assert formats.get("e1m2").grid[7:].tolist() == [0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5]


def test_e4m3_max_is_480():
    assert formats.get("e4m3").max == 480


@pytest.mark.parametrize("E", range(1, 8))
@pytest.mark.parametrize("M", range(0, 7))
def test_every_exmy_has_the_documented_max_and_no_special_codes(E, M):
    if not 3 <= 1 + E + M <= 8:
        with pytest.raises(FormatError):
            FloatFormat(E, M)
        return
    fmt = formats.get(f"e{E}m{M}")
    bias = 2 ** (E - 1) - 1
    assert fmt.bias == bias and fmt.bits == 1 + E + M
    assert fmt.max == (2 - 2.0**-M) * 2.0 ** (2**E - 1 - bias)
    assert bool(torch.isfinite(fmt.codes).all())
    # sign-magnitude: 2^bits codes, -0 and +0 coincide
    assert fmt.grid.numel() == 2**fmt.bits - 1


def paper_quantize(x: np.ndarray, E: int, M: int, b: float) -> np.ndarray:
    """LLM-FP4's quantizer as its released code computes it, in float64.

    The exponent is ``floor(log2|x| + b)``: the floor is taken of the sum, which is what
    makes a real bias exactly the scale ``2^-b`` on the bias-0 grid.
    """
    maxval = (2 - 2.0**-M) * 2.0 ** (2**E - 1 - b)
    x = np.clip(x.astype(np.float64), -maxval, maxval)
    with np.errstate(divide="ignore"):
        p = np.floor(np.log2(np.abs(x)) + b)
    p = np.maximum(np.nan_to_num(p, neginf=1.0), 1.0)
    step = np.exp2(p - M - b)
    return np.round(x / step) * step


@pytest.mark.parametrize("E,M", [(2, 1), (3, 0), (1, 2), (4, 3), (2, 3), (5, 2)])
@pytest.mark.parametrize("b", [-3, 0, 1, 3, 7, 10])
def test_integer_bias_matches_paper_bit_exact(E, M, b):
    x = np.random.default_rng(E * 100 + M * 10 + b).standard_normal(100_000).astype(np.float32)
    x *= np.float32(2.0 ** (2**E - 1 - b) / 3)
    fmt = FloatFormat(E, M)
    ours = fmt.quantize(torch.from_numpy(x), fmt.scale_for_bias(b)).numpy()
    np.testing.assert_array_equal(ours, paper_quantize(x, E, M, b).astype(np.float32))
    # A format built with that bias is the same quantizer.
    np.testing.assert_array_equal(FloatFormat(E, M, bias=b).quantize(torch.from_numpy(x)).numpy(), ours)


@pytest.mark.parametrize("E,M", [(2, 1), (3, 0), (1, 2), (4, 3)])
@settings(max_examples=20, deadline=None)
@given(b=st.floats(-4.0, 12.0), seed=st.integers(0, 2**31))
def test_real_bias_matches_paper(E, M, b, seed):
    x = np.random.default_rng(seed).standard_normal(20_000).astype(np.float32)
    x *= np.float32(2.0 ** (2**E - 1 - b) / 2)
    fmt = formats.get(f"e{E}m{M}")
    ours = fmt.quantize(torch.from_numpy(x), fmt.scale_for_bias(b)).numpy().astype(np.float64)
    ref = paper_quantize(x, E, M, b)
    # The scale 2^-b is rounded to float32 (relative error <= 2^-24), and x / scale rounds
    # once more, so only values within an ulp of a rounding boundary may change level.
    mismatch = ~np.isclose(ours, ref, rtol=1e-6, atol=0)
    assert mismatch.mean() < 1e-3
    step = np.exp2(np.maximum(np.floor(np.log2(np.abs(ref) + 1e-300) + b), 1) - M - b)
    assert np.all(np.abs(ours - ref)[mismatch] <= step[mismatch] * 1.0001)


@settings(max_examples=40, deadline=None)
@given(
    fmt_name=st.sampled_from(["e2m1", "e3m0", "e1m2", "e4m3", "e5m2", "e2m3"]),
    rho=st.floats(-3.0, 6.0),
    k=st.integers(0, 7),
    seed=st.integers(0, 2**31),
)
def test_preshift_identity(fmt_name, rho, k, seed):
    """Q(x; ρ + k) = 2^-k · Q(2^k · x; ρ) for integer k."""
    fmt = formats.get(fmt_name)
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal(10_000).astype(np.float32)) * 4
    s = fmt.scale_for_bias(rho)
    lhs = fmt.quantize(x, s * 2.0**-k)
    rhs = 2.0**-k * fmt.quantize(x * 2.0**k, s)
    assert torch.equal(lhs, rhs)


@settings(max_examples=40, deadline=None)
@given(fmt_name=st.sampled_from(["e2m1", "e3m0", "e1m2", "e4m3"]), b=st.floats(-3.0, 6.0), seed=st.integers(0, 2**31))
def test_bias_identity(fmt_name, b, seed):
    """Q(x; b) = 2^-b · Q(2^b · x; 0): a real bias is a scale on the bias-0 grid."""
    fmt = formats.get(fmt_name)
    zero_bias = fmt.with_bias(0)
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal(10_000).astype(np.float64))
    lhs = fmt.quantize(x.float(), fmt.scale_for_bias(b)).double()
    rhs = 2.0**-b * zero_bias.quantize((2.0**b * x).float()).double()
    torch.testing.assert_close(lhs, rhs, rtol=2e-6, atol=0)


def test_bias_for_max_gives_that_max():
    fmt = formats.get("e2m1")
    b = fmt.bias_for_max(10.0)
    assert abs(float(fmt.max * fmt.scale_for_bias(b)) - 10.0) < 1e-5


def test_custom_bias_name_and_grid():
    f = FloatFormat(2, 1, bias=0)
    assert f.name == "e2m1b0" and f.max == 12
    assert formats.get("e2m1").with_bias(0).grid.tolist() == (f.grid).tolist()


def test_bias_out_of_float32_range_is_rejected():
    with pytest.raises(FormatError, match="exponent range"):
        FloatFormat(7, 0, bias=-100)
