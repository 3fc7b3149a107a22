"""GELU → LLM-FP4 pre-shift → E2M1 quantizer: the path that made MiniLM's ``w4a4-fp`` export disagree.

The ``w4a4-fp`` export of MiniLM differed from bitfold's PyTorch simulation by 0.13 relative
(max, on sentence embeddings), while every other recipe matched. Node by node, every
quantizer and every folded weight of the file is bit-exact given the same input; the first
difference is one activation code of layer 0's FC2 input: a GELU output of ``-0.0080097``
(input ``-2.758``), times the pre-shift ``2^7``, lands at ``-0.2500015`` units in PyTorch and
``-0.2499939`` in ONNX Runtime — on either side of E2M1's rounding boundary ``0.25`` — and
the flipped code grows through five more 4-bit layers. Running the simulation with ONNX
Runtime's GELU brings the whole model to 2.6e-7.

The cause is GELU's negative tail in float32: ``0.5·x·(1 + erf(x/√2))`` cancels there, and
PyTorch's CPU kernel and ONNX Runtime's ``Gelu`` use different ``erf`` approximations, so
they differ by up to ~1e-4 relative for ``x`` in [-3, -2] and ~1e-2 in [-4.5, -3] (both are
that far from the true value, too). Without a shift those values round to 0 on both sides;
a per-channel shift of ``2^k`` (k up to 10 on MiniLM's FC2 inputs, where nothing can fold
it) puts them on the grid. No ONNX graph of standard ops reproduces PyTorch's ``erf``
bit for bit, so the exporter cannot remove this by itself; the first test holds the
exporter's part to exactness, the second states the end-to-end property and is expected
to fail until GELU is computed the same way on both sides.
"""

import numpy as np
import pytest
import torch
from onnx import TensorProto

from bitfold.backends.onnx.quantize_points import QuantizePoint, emit_quantizer
from bitfold.ir import formats

from ._graphs import build_model, run

SHIFT = 7
E2M1 = formats.get("e2m1")
SCALE = np.float32(4.10093879699707)  # MiniLM layer 0 FC2's activation scale


def tail_inputs() -> np.ndarray:
    """GELU inputs where its output is small (the tail) plus the value that flipped in MiniLM."""
    x = np.linspace(-4.5, -1.5, 30001, dtype=np.float32)
    return np.append(x, np.float32(-2.758473)).reshape(1, -1)


def shifted_quantizer(em, library, x):
    factor = em.scalar(2.0**SHIFT, "input_scale")
    return emit_quantizer(em, library, em.op("Mul", x, factor), QuantizePoint(E2M1, SCALE), None, "test")


def torch_shifted_quantizer(x: torch.Tensor) -> np.ndarray:
    return torch.ops.bitfold.fake_quantize(x * 2.0**SHIFT, "e2m1", torch.tensor(SCALE)).numpy()


def test_preshift_and_e2m1_are_exact_on_the_same_gelu_values():
    """Given PyTorch's GELU outputs, ONNX Runtime's Mul(2^k) → E2M1 function gives PyTorch's codes."""
    gelu = torch.nn.functional.gelu(torch.from_numpy(tail_inputs()))
    got = run(build_model(shifted_quantizer, gelu.shape), {"x": gelu.numpy()})
    assert np.array_equal(got, torch_shifted_quantizer(gelu))


@pytest.mark.xfail(strict=True, reason="PyTorch's CPU GELU and ONNX Runtime's Gelu differ by up to ~1e-2 relative "
                                       "in the negative tail; the pre-shift moves those values onto the E2M1 grid")
def test_gelu_then_preshifted_e2m1_agrees_between_pytorch_and_onnx_runtime():
    x = tail_inputs()
    got = run(build_model(lambda em, library, name: shifted_quantizer(em, library, em.op("Gelu", name)), x.shape,
                          TensorProto.FLOAT), {"x": x})
    want = torch_shifted_quantizer(torch.nn.functional.gelu(torch.from_numpy(x)))
    assert np.array_equal(got, want), f"{int((got != want).sum())} of {x.size} codes differ"
