"""GELU → LLM-FP4 pre-shift → E2M1 quantizer: the path that made MiniLM's ``w4a4-fp`` export disagree.

The ``w4a4-fp`` export of MiniLM differed from bitfold's PyTorch simulation by 0.13 relative
(max, on sentence embeddings) while every other recipe matched. Node by node, every
quantizer and every folded weight of the file was bit-exact given the same input; the first
difference was one activation code of layer 0's FC2 input: a GELU output of ``-0.0080097``
(input ``-2.758``), times the pre-shift ``2^7``, landed at ``-0.2500015`` units in PyTorch and
``-0.2499939`` in ONNX Runtime — either side of E2M1's rounding boundary ``0.25`` — and the
flipped code grew through five more 4-bit layers.

The cause is GELU's negative tail in float32: ``0.5·x·(1 + erf(x/√2))`` cancels there, and
PyTorch's CPU kernel and ONNX Runtime's ``Gelu`` use different ``erf`` approximations. The
cure is ``bitfold::gelu`` (:mod:`bitfold.ir.stable_gelu`), which quantized graphs use for
every quantized GELU and which the exporter writes as the same float32 steps.
"""

import dataclasses

import numpy as np
import onnx
import torch
from onnx import TensorProto

import bitfold
from bitfold.backends.onnx import export_onnx, ort_session
from bitfold.backends.onnx.lower_gelu import emit_gelu
from bitfold.backends.onnx.quantize_points import QuantizePoint, emit_quantizer
from bitfold.ir import formats
from bitfold.recipes import load_recipe

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


def test_aten_and_onnx_gelus_flip_tail_codes_that_bitfold_gelu_keeps():
    x = tail_inputs()
    onnx_gelu = run(build_model(lambda em, library, name: shifted_quantizer(em, library, em.op("Gelu", name)),
                                x.shape, TensorProto.FLOAT), {"x": x})
    aten_gelu = torch_shifted_quantizer(torch.nn.functional.gelu(torch.from_numpy(x)))
    assert int((onnx_gelu != aten_gelu).sum()) > 0  # why bitfold::gelu exists

    stable = run(build_model(lambda em, library, name: shifted_quantizer(em, library, emit_gelu(em, library, name,
                                                                                                "none")),
                             x.shape, TensorProto.FLOAT), {"x": x})
    assert np.array_equal(stable, torch_shifted_quantizer(torch.ops.bitfold.gelu(torch.from_numpy(x))))


def test_lowered_gelu_differs_from_the_torch_op_only_by_exp_ulps():
    x = np.concatenate([np.linspace(-12, 12, 240001, dtype=np.float32),
                        np.random.default_rng(0).normal(0, 3, 100000).astype(np.float32)]).reshape(1, -1)
    for approximate in ("none", "tanh"):
        got = run(build_model(lambda em, library, name: emit_gelu(em, library, name, approximate), x.shape), {"x": x})
        want = torch.ops.bitfold.gelu(torch.from_numpy(x), approximate).numpy()
        tiny = np.abs(want) < 1e-30
        rel = np.abs(got - want)[~tiny] / np.abs(want)[~tiny]
        assert rel.max() < 1e-6, approximate
        assert np.abs(got[tiny] - want[tiny]).max() < 1e-35


def test_quantized_mlp_exports_bitfold_gelu_and_matches_the_simulation_in_the_tail(tmp_path):
    class Mlp(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm, self.up, self.down = torch.nn.LayerNorm(32), torch.nn.Linear(32, 128), torch.nn.Linear(128, 32)

        def forward(self, x):
            return self.down(torch.nn.functional.gelu(self.up(self.norm(x))))

    torch.manual_seed(0)
    model = Mlp().eval()
    with torch.no_grad():
        model.up.bias -= 3.0  # most GELU inputs in the tail, where shifts reach their largest
    calibration = [torch.randn(16, 32) for _ in range(4)]
    unrotated = dataclasses.replace(load_recipe("w4a4-fp"), rotate=None)  # the GELU output itself shifted
    q = bitfold.quantize(model, unrotated, calibration, progress=False)
    assert any(n.target is torch.ops.bitfold.gelu.default for n in q.graph_module.graph.nodes)
    path = export_onnx(q, tmp_path / "mlp.onnx", calibration[:1])
    proto = onnx.load(path)
    assert "Gelu" in {f.name for f in proto.functions}
    assert not {"Gelu", "Erf"} & {n.op_type for n in proto.graph.node if n.domain in ("", "ai.onnx")}
    x = torch.randn(512, 32)
    got = ort_session(path).run(None, {"x": x.numpy()})[0]
    want = q(x).detach().numpy()
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
