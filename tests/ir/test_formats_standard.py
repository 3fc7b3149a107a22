"""The standard formats agree with ml_dtypes bit for bit (after saturation to ±max)."""

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitfold.ir import formats

STANDARD = {
    "fp4_e2m1": ml_dtypes.float4_e2m1fn,
    "fp6_e2m3": ml_dtypes.float6_e2m3fn,
    "fp6_e3m2": ml_dtypes.float6_e3m2fn,
    "fp8_e4m3": ml_dtypes.float8_e4m3fn,
    "fp8_e5m2": ml_dtypes.float8_e5m2,
}
N_RANDOM = 100_000


def reference_codes(x: np.ndarray, name: str) -> np.ndarray:
    fmt = formats.get(name)
    clipped = np.clip(x, -fmt.max, fmt.max).astype(np.float32)
    return clipped.astype(STANDARD[name]).view(np.uint8)


def edge_values(name: str) -> np.ndarray:
    """Every grid value, every midpoint (a tie), their float32 neighbours, zeros, beyond max."""
    grid = formats.get(name).grid.double().numpy()
    pos = grid[grid >= 0]
    mids = (pos[:-1] + pos[1:]) / 2
    below_min = np.array([pos[1] / 2, pos[1] / 4, pos[1] * 0.49, pos[1] * 0.51, 1e-30])
    beyond = pos[-1] * np.array([1.0001, 1.5, 2.0, 1e3])
    core = np.concatenate([pos, mids, below_min, beyond]).astype(np.float32)
    around = np.concatenate(
        [core, np.nextafter(core, np.float32(np.inf)), np.nextafter(core, np.float32(0))]
    )
    return np.concatenate([around, -around, np.array([0.0, -0.0], np.float32)])


def random_values(seed: int, lo: float, hi: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sign = rng.choice([-1.0, 1.0], N_RANDOM)
    mag = np.exp2(rng.uniform(lo, hi, N_RANDOM))
    return (sign * mag).astype(np.float32)


@pytest.mark.parametrize("name", sorted(STANDARD))
def test_edge_values_bit_exact(name):
    x = edge_values(name)
    ours = formats.get(name).encode(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(ours, reference_codes(x, name))


@pytest.mark.parametrize("name", sorted(STANDARD))
@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), lo=st.floats(-30, 4), width=st.floats(0.5, 30))
def test_random_values_bit_exact(name, seed, lo, width):
    fmt = formats.get(name)
    top = float(np.log2(fmt.max))
    x = random_values(seed, lo - 10, min(lo + width, top + 2))
    codes = fmt.encode(torch.from_numpy(x)).numpy()
    ref = reference_codes(x, name)
    np.testing.assert_array_equal(codes, ref)
    # Fake-quantized values are the decoded reference codes.
    q = fmt.quantize(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(q, ref.view(STANDARD[name]).astype(np.float32))


@pytest.mark.parametrize("name", sorted(STANDARD))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_arbitrary_floats_bit_exact(name, data):
    from hypothesis.extra.numpy import arrays

    x = data.draw(
        arrays(np.float32, 512, elements=st.floats(width=32, allow_nan=False, allow_infinity=False))
    )
    codes = formats.get(name).encode(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(codes, reference_codes(x, name))


@pytest.mark.parametrize("name", sorted(STANDARD))
def test_decode_matches_ml_dtypes_for_every_code(name):
    fmt = formats.get(name)
    all_codes = np.arange(2**fmt.bits, dtype=np.uint8)
    ref = all_codes.view(STANDARD[name]).astype(np.float32)
    ours = fmt.decode(torch.from_numpy(all_codes)).numpy()
    np.testing.assert_array_equal(ours, ref)  # NaN positions must agree too


@pytest.mark.parametrize("name,maximum", [("fp8_e4m3", 448), ("fp8_e5m2", 57344), ("fp4_e2m1", 6),
                                          ("fp6_e2m3", 7.5), ("fp6_e3m2", 28)])
def test_max_matches_ml_dtypes(name, maximum):
    assert formats.get(name).max == maximum == float(ml_dtypes.finfo(STANDARD[name]).max)


def test_saturates_instead_of_nan():
    fmt = formats.get("fp8_e4m3")
    q = fmt.quantize(torch.tensor([1e6, -1e6, 465.0, 449.0]))
    assert q.tolist() == [448.0, -448.0, 448.0, 448.0]
