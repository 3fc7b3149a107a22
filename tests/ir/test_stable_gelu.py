"""``bitfold::gelu`` against the exact GELU in float64, and the provenance of its polynomial."""

import math

import numpy as np
import pytest
import torch

from bitfold.ir import ops  # noqa: F401  (registers the bitfold ops)
from bitfold.ir.stable_gelu import ERFC_POLYNOMIAL, T_SLOPE, spell_gelu

X = torch.linspace(-14.0, 14.0, 280_001)


def exact_gelu(x: torch.Tensor) -> torch.Tensor:
    xd = x.double()
    return xd * 0.5 * torch.special.erfc(-xd / math.sqrt(2.0))


def exact_gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """``½x(1 + tanh u)`` in float64, as ``x·σ(2u)`` (the same number; float64's ``1 + tanh`` would cancel)."""
    xd = x.double()
    return xd * torch.sigmoid(2.0 * math.sqrt(2.0 / math.pi) * (xd + 0.044715 * xd**3))


def relative_error(got: torch.Tensor, want: torch.Tensor, floor: float) -> float:
    keep = want.abs() > floor
    return float(((got.double() - want).abs() / want.abs())[keep].max())


def test_gelu_matches_the_exact_function_where_aten_cancels():
    got = torch.ops.bitfold.gelu(X)
    want = exact_gelu(X)
    assert relative_error(got, want, 1e-10) < 3e-6
    assert relative_error(got, want, 1e-30) < 2e-5
    assert relative_error(torch.nn.functional.gelu(X), want, 1e-10) > 0.5  # the cancellation the op removes


def test_tanh_variant_matches_its_exact_function():
    got = torch.ops.bitfold.gelu(X, "tanh")
    want = exact_gelu_tanh(X)
    assert relative_error(got, want, 1e-10) < 5e-6
    assert relative_error(got, want, 1e-30) < 3e-5


def test_positive_side_and_special_values():
    x = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 50.0, -50.0, float("inf"), float("-inf")])
    y = torch.ops.bitfold.gelu(x)
    assert torch.allclose(y[:6], torch.tensor([0.0, 0.0, 5e-31, -5e-31, 50.0, 0.0]), rtol=1e-6, atol=0)
    assert y[6] == float("inf") and torch.isnan(y[7])  # -inf · 0, as ATen's GELU gives


def test_other_dtypes_compute_in_float32():
    x = torch.randn(1000) * 4
    for dtype in (torch.float16, torch.bfloat16):
        y = torch.ops.bitfold.gelu(x.to(dtype))
        assert y.dtype == dtype
        assert torch.equal(y, torch.ops.bitfold.gelu(x.to(dtype).float()).to(dtype))


def test_rejects_unknown_approximation():
    with pytest.raises(ValueError, match="approximate must be one of"):
        torch.ops.bitfold.gelu(X[:3], "sigmoid")


def test_polynomial_is_the_least_squares_fit_the_docstring_describes():
    """Refit log(erfc(z)·e^{z²}/t), t = 1/(1 + z/2), over z ∈ [0, 10.5] on Chebyshev nodes."""
    t_min = 1.0 / (1.0 + 0.5 * 10.5)
    t = t_min + (1.0 - t_min) * (np.cos(np.linspace(0.0, np.pi, 4000)) + 1.0) / 2.0
    z = (1.0 / t - 1.0) / 0.5
    y = np.array([math.log(math.erfc(v)) for v in z]) + z * z - np.log(t)
    refit = np.polynomial.polynomial.polyfit(t, y, len(ERFC_POLYNOMIAL) - 1)
    assert np.allclose(np.float32(refit), ERFC_POLYNOMIAL, rtol=1e-5, atol=1e-6)
    assert T_SLOPE == float(np.float32(0.5 / math.sqrt(2.0)))


def test_the_steps_are_backend_neutral():
    """spell_gelu only calls the Arithmetic interface: a recording backend sees every step."""

    class Recorder:
        def __init__(self):
            self.calls = []

        def __getattr__(self, name):
            def step(*args):
                self.calls.append(name)
                return name

            return step

    ar = Recorder()
    spell_gelu("x", ar)
    assert ar.calls.count("exp") == 1 and "where_negative" in ar.calls
    assert set(ar.calls) <= {"const", "abs", "add", "sub", "mul", "div", "exp", "where_negative"}
