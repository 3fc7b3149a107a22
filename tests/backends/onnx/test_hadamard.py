"""``bitfold::hadamard`` in ONNX: the butterflies as a local function, bit-identical to PyTorch."""

import numpy as np
import onnx
import torch
from torch.export import Dim

import bitfold
from bitfold.backends.onnx import export_onnx, ort_session
from bitfold.ir import from_torch


class Rotations(torch.nn.Module):
    def forward(self, x):
        return torch.ops.bitfold.hadamard(x, 64), torch.ops.bitfold.hadamard(x * 3.0, 8)


def test_rotation_exports_as_butterflies_and_matches_bit_for_bit(tmp_path):
    x = torch.randn(2, 5, 192)
    gm = from_torch(Rotations().eval(), (x,), dynamic_shapes=({0: Dim("batch"), 1: Dim("seq")},))
    path = export_onnx(gm, tmp_path / "rot.onnx", (x,))
    proto = onnx.load(path)
    assert {"Hadamard64", "Hadamard8"} <= {f.name for f in proto.functions}
    assert "MatMul" not in {n.op_type for n in proto.graph.node}
    session = ort_session(path)
    for shape in [(2, 5, 192), (3, 11, 192)]:
        x = torch.randn(*shape) * 10
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        for g, want in zip(got, Rotations()(x)):
            assert np.array_equal(g, want.numpy())


def test_rotated_quantized_layer_matches_the_simulation(tmp_path):
    class Mlp(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.down = torch.nn.Linear(32, 256), torch.nn.Linear(256, 32)

        def forward(self, x):
            return self.down(torch.nn.functional.gelu(self.up(x)))

    torch.manual_seed(0)
    model = Mlp().eval()
    calibration = [torch.randn(16, 32) for _ in range(4)]
    q = bitfold.quantize(model, "w4a4-fp", calibration, progress=False)
    assert any(n.target is torch.ops.bitfold.hadamard.default for n in q.graph_module.graph.nodes)
    path = export_onnx(q, tmp_path / "mlp.onnx", calibration[:1])
    assert "Hadamard256" in {f.name for f in onnx.load(path).functions}
    x = torch.randn(512, 32)
    got = ort_session(path).run(None, {"x": x.numpy()})[0]
    want = q(x).detach().numpy()
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
