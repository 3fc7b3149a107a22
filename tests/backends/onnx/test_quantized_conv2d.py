"""``bitfold::quantized_conv2d`` in ONNX: ``Conv`` in both modes, matching the PyTorch op."""

import dataclasses

import numpy as np
import onnx
import pytest
import torch

import bitfold
from bitfold.backends.onnx import export_onnx, ort_session, read_metadata
from bitfold.recipes import load_recipe


class Cnn(torch.nn.Module):
    """A strided 3x3, a depthwise 5x5, a pointwise 1x1 (pre-shifted under w4a*-fp) and a grouped conv."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 12, 3, stride=2, padding=1)
        self.dw = torch.nn.Conv2d(12, 12, 5, padding=2, groups=12, bias=False)
        self.pw = torch.nn.Conv2d(12, 16, 1)
        self.grouped = torch.nn.Conv2d(16, 8, 3, padding=1, dilation=1, groups=4)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.nn.functional.relu6(self.dw(x))
        return self.grouped(torch.relu(self.pw(x)))


@pytest.mark.parametrize("recipe", ["w4a16-int-g128", "w4a4-int", "w4a8-fp", "w4a4-fp"])
def test_both_modes_match_the_simulation(tmp_path, recipe):
    torch.manual_seed(0)
    model = Cnn().eval()
    data = [torch.randn(2, 3, 20, 20) for _ in range(2)]
    q = bitfold.quantize(model, recipe, data, progress=False)
    x = torch.randn(3, 3, 24, 20)                      # another batch and image size: dynamic axes
    want = q(x).detach().numpy()
    for mode in ("simulate", "compressed"):
        path = export_onnx(q, tmp_path / f"{mode}.onnx", (data[0],), mode=mode, accuracy_level=0)
        got = ort_session(path).run(None, {"x": x.numpy()})[0]
        exact = np.abs(got - want) <= 1e-5 * np.abs(want).max()
        if q.recipe["activations"] is None:
            assert exact.all(), mode
        else:  # a float rounding difference may flip one activation code and move what it feeds
            assert exact.mean() > 0.98 and np.abs(got - want).max() < 0.1 * np.abs(want).max(), mode
        layers = read_metadata(path)["layers"]
        convs = [f for f in layers.values() if f.get("op") == "quantized_conv2d"]
        assert len(convs) == 4 and {tuple(f["shape"]) for f in convs} >= {(12, 1, 5, 5), (8, 4, 3, 3)}
        if mode == "compressed":
            float_bytes = 4 * sum(int(np.prod(f["shape"])) for f in convs)
            assert sum(f["stored_bytes"] for f in convs) < 0.5 * float_bytes   # small layers: scales weigh in
    shifted = [f for f in read_metadata(tmp_path / "compressed.onnx")["layers"].values() if f.get("input_shift")]
    assert len(shifted) == (1 if recipe in ("w4a8-fp", "w4a4-fp") else 0)   # only the pointwise conv


def test_compressed_file_keeps_packed_codes_and_one_conv_per_layer(tmp_path):
    torch.manual_seed(0)
    model = Cnn().eval()
    data = [torch.randn(2, 3, 20, 20)]
    q = bitfold.quantize(model, dataclasses.replace(load_recipe("w4a16-int-g128"), layers=["conv"]), data,
                         progress=False)
    proto = onnx.load(export_onnx(q, tmp_path / "c.onnx", (data[0],), mode="compressed"))
    assert sum(n.op_type == "Conv" for n in proto.graph.node) == 4
    codes = [t for t in proto.graph.initializer if t.name.endswith("weight_codes")]
    assert len(codes) == 4 and all(t.data_type == onnx.TensorProto.UINT4 for t in codes)
