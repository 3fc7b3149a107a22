"""bitfold.quantize with ``rotate``: Hadamard-rotated inputs where the pre-shift cannot fold."""

import dataclasses

import pytest
import torch

import bitfold
from bitfold.api import QuantizedModel
from bitfold.recipes import RotateSpec, load_recipe

HADAMARD = torch.ops.bitfold.hadamard.default
FAKE_QUANTIZE = torch.ops.bitfold.fake_quantize.default


class Mlp(torch.nn.Module):
    """FC1 → GELU → FC2 (FC1 stays float in these recipes, so FC2 alone makes the error)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = torch.nn.Linear(32, 256), torch.nn.Linear(256, 32)

    def forward(self, x):
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))


def spiky(*shape: int) -> torch.Tensor:
    """Inputs whose tokens are mostly small with rare large ones, in every channel: FC2's input
    then has outliers that no per-channel shift removes, since they come and go by token."""
    return torch.randn(*shape) * torch.exp(1.5 * torch.randn(*shape[:-1], 1))


def _error(q, model, x):
    with torch.no_grad():
        return float((q(x) - model(x)).norm() / model(x).norm())


@pytest.fixture(scope="module")
def quantized():
    model = Mlp().eval()
    data = [spiky(2, 16, 32) for _ in range(8)]
    w4a4 = load_recipe("w4a4-fp")
    plain = dataclasses.replace(w4a4, rotate=None, exclude=["fc1*"], search=dataclasses.replace(w4a4.search, points=40))
    rotated = dataclasses.replace(plain, rotate=RotateSpec())
    return model, {name: bitfold.quantize(model, recipe, data, progress=False)
                   for name, recipe in (("plain", plain), ("rotated", rotated))}


def test_only_the_activation_fed_layer_is_rotated_and_the_report_says_so(quantized):
    _, models = quantized
    gm = models["rotated"].graph_module
    rotations = [n for n in gm.graph.nodes if n.target is HADAMARD]
    assert len(rotations) == 1 and rotations[0].args[1] == 256
    assert rotations[0].args[0].target is torch.ops.bitfold.gelu.default  # the GELU feeding it is the stable one
    assert any(u.target is FAKE_QUANTIZE for u in rotations[0].users) or any(
        v.target is FAKE_QUANTIZE for u in rotations[0].users for v in u.users)
    notes = {r.weight_name: r.notes for r in models["rotated"].layers}
    assert notes == {"fc2.weight_rotated": ["input rotated by a 256-block Hadamard (weight counter-rotated)"]}
    assert not any(n.target is HADAMARD for n in models["plain"].graph_module.graph.nodes)


def test_rotation_lowers_the_error_on_outlier_channels(quantized):
    model, models = quantized
    x = spiky(4, 16, 32)
    plain, rotated = _error(models["plain"], model, x), _error(models["rotated"], model, x)
    assert rotated < 0.8 * plain, (plain, rotated)


def test_rotated_model_saves_and_loads(quantized, tmp_path):
    _, models = quantized
    models["rotated"].save(tmp_path / "q")
    loaded = QuantizedModel.load(tmp_path / "q")
    x = torch.randn(1, 5, 32)
    assert torch.equal(loaded(x), models["rotated"](x))


def test_excluded_layers_are_not_rotated():
    model = Mlp().eval()
    recipe = dataclasses.replace(load_recipe("w4a8-fp"), rotate=RotateSpec(exclude=["fc2*"]))
    q = bitfold.quantize(model, recipe, [torch.randn(2, 8, 32)], progress=False)
    assert not any(n.target is HADAMARD for n in q.graph_module.graph.nodes)
    all_inputs = dataclasses.replace(recipe, rotate=RotateSpec(inputs="all", max_block=16))
    q = bitfold.quantize(model, all_inputs, [torch.randn(2, 8, 32)], progress=False)
    assert sorted(n.args[1] for n in q.graph_module.graph.nodes if n.target is HADAMARD) == [16, 16]
    assert all(r.notes for r in q.layers)
