"""Convolutions in ``bitfold.quantize``: selection, plans per geometry, reports, memory, save/load, chunks."""

import dataclasses

import pytest
import torch

import bitfold
from bitfold.api.quantized_model import QuantizedModel
from bitfold.recipes import load_recipe


class TinyCnn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.dw = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = torch.nn.Conv2d(16, 32, 1)
        self.fc = torch.nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.dw(x))
        return self.fc(torch.relu(self.pw(x)).mean((2, 3)))


def _data():
    torch.manual_seed(0)
    return TinyCnn().eval(), [torch.randn(4, 3, 16, 16) for _ in range(3)]


def _targets(q):
    return [n.target for n in q.graph_module.graph.nodes if n.op == "call_function"]


@pytest.mark.parametrize("name", ["w4a4-fp", "w4a8-fp", "w4a4-int", "w4a16-int-g128", "w4a4-int-smooth"])
def test_every_conv_is_quantized_and_close_to_the_float_model(name):
    model, data = _data()
    q = bitfold.quantize(model, name, data, progress=False)
    targets = _targets(q)
    assert targets.count(torch.ops.bitfold.quantized_conv2d.default) == 3
    assert torch.ops.aten.conv2d.default not in targets and not q.kept_float
    rows = {r.weight_name: r for r in q.layers}
    assert [r.weight_name for r in q.layers] == ["stem.weight", "dw.weight", "pw.weight", "fc.weight"]  # graph order
    assert rows["dw.weight"].shape == (16, 1, 3, 3) and "depthwise" in rows["dw.weight"].notes[0]
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        err = float((q(x) - model(x)).norm() / model(x).norm())
    assert err < 0.35
    memory = q.manifest()["memory"]
    assert memory["quantized_weights"] == 16 * 27 + 16 * 9 + 32 * 16 + 10 * 32
    assert memory["bits_per_weight"] < 10


def test_preshift_applies_to_pointwise_convs_only_and_says_so():
    model, data = _data()
    q = bitfold.quantize(model, "w4a4-fp", data, progress=False)
    rows = {r.weight_name: r for r in q.layers}
    assert rows["pw.weight"].shift_range is not None
    for name in ("stem.weight", "dw.weight"):
        assert rows[name].shift_range is None
        assert any("pointwise" in note for note in rows[name].notes)
    assert any("nearest" in note for note in rows["dw.weight"].notes)         # grouped: no GPTQ
    assert not any("nearest" in note for note in rows["stem.weight"].notes)


def test_recipes_without_conv_keep_them_float_and_say_why():
    model, data = _data()
    recipe = dataclasses.replace(load_recipe("w4a16-int-g128"), layers=["linear"])
    q = bitfold.quantize(model, recipe, data, progress=False)
    assert _targets(q).count(torch.ops.aten.conv2d.default) == 3
    assert all("does not quantize conv layers" in why for why in q.kept_float.values())
    assert len(q.kept_float) == 3
    q = bitfold.quantize(model, dataclasses.replace(load_recipe("w4a4-int"), exclude=["dw*"]), data, progress=False)
    assert _targets(q).count(torch.ops.aten.conv2d.default) == 1 and "dw" in next(iter(q.kept_float.values()))


def test_layer_chunks_and_save_load_give_the_same_model(tmp_path):
    model, data = _data()
    q = bitfold.quantize(model, "w4a8-fp", data, progress=False)
    chunked = bitfold.quantize(model, "w4a8-fp", data, progress=False, layers_per_pass=1)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(q(x), chunked(x))
    q.save(tmp_path / "q")
    assert torch.equal(QuantizedModel.load(tmp_path / "q")(x), q(x))
