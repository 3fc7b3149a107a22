"""bitfold.quantize with block-scaled formats (MXFP4, NVFP4): weights and activations scaled per block."""

import dataclasses

import numpy as np
import pytest
import torch

import bitfold
from bitfold.api import QuantizedModel
from bitfold.backends.onnx import export_onnx, ort_session
from bitfold.ir import formats, ops
from bitfold.ir.graph_utils import attr_value
from bitfold.recipes import RecipeError, load_recipe, parse_recipe

FAKE_QUANTIZE = torch.ops.bitfold.fake_quantize.default
QUANTIZED_LINEAR = torch.ops.bitfold.quantized_linear.default


class Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = torch.nn.Linear(64, 128), torch.nn.Linear(128, 32)

    def forward(self, x):
        return self.fc2(torch.nn.functional.silu(self.fc1(x)))


def block_recipe(fmt: str, rounding: str = "nearest", rotate: bool = False, method: str = "minmax"):
    return parse_recipe({
        "name": f"test-{fmt}", "version": 1, "description": "block formats", "layers": ["linear"],
        "weights": {"bits": 4, "kind": "format", "formats": [fmt], "granularity": "block", "rounding": rounding,
                    "method": method},
        "activations": {"bits": 4, "kind": "format", "formats": [fmt], "granularity": "block"},
        **({"rotate": {"inputs": "all"}} if rotate else {}),
    })


def calibration():
    torch.manual_seed(1)
    return [torch.randn(4, 16, 64) for _ in range(4)]


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_each_layer_is_its_block_quantized_input_times_its_block_quantized_weight(fmt):
    model = Mlp().eval()
    q = bitfold.quantize(model, block_recipe(fmt), calibration(), progress=False)
    nodes = list(q.graph_module.graph.nodes)
    quantizers = [n for n in nodes if n.target is FAKE_QUANTIZE]
    assert [n.args[1:] for n in quantizers] == [(fmt,), (fmt,)]   # no scale: blocks scale themselves
    assert [n.args[2] for n in nodes if n.target is QUANTIZED_LINEAR] == [fmt, fmt]
    f = formats.get(fmt)

    def layer(x, linear):
        return f.quantize(x) @ f.quantize(linear.weight.detach(), axis=1).T + linear.bias.detach()

    x = torch.randn(3, 7, 64)
    want = layer(torch.nn.functional.silu(layer(x, model.fc1)), model.fc2)
    torch.testing.assert_close(q(x), want, rtol=1e-5, atol=1e-5)
    assert {r.act_format for r in q.layers} == {fmt} and {r.act_scale for r in q.layers} == {None}
    assert {r.granularity for r in q.layers} == {f"block{f.block_size}"}


def test_embedding_tables_take_block_formats_too():
    class Lookup(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.table, self.fc = torch.nn.Embedding(50, 64), torch.nn.Linear(64, 8)

        def forward(self, ids):
            return self.fc(self.table(ids))

    model = Lookup().eval()
    recipe = dataclasses.replace(block_recipe("nvfp4"), layers=["linear", "embedding"])
    ids = [torch.randint(0, 50, (2, 9)) for _ in range(2)]
    q = bitfold.quantize(model, recipe, ids, progress=False)
    (lookup,) = [n for n in q.graph_module.graph.nodes if n.target is torch.ops.bitfold.quantized_embedding.default]
    f = formats.get("nvfp4")
    table = f.quantize(model.table.weight.detach(), axis=1)
    x = torch.tensor([[3, 1, 49]])
    want = f.quantize(table[x]) @ f.quantize(model.fc.weight.detach(), axis=1).T + model.fc.bias.detach()
    torch.testing.assert_close(q(x), want, rtol=1e-5, atol=1e-5)
    assert {r.granularity for r in q.layers} == {"block16"} and lookup.args[2] == "nvfp4"


def test_mxfp4_tokens_do_not_depend_on_the_rest_of_the_batch():
    q = bitfold.quantize(Mlp().eval(), block_recipe("mxfp4"), calibration(), progress=False)
    x = torch.randn(8, 64)
    loud = torch.cat([x[:4], 1000 * x[4:]])
    assert torch.equal(q(x)[:4], q(loud)[:4])


def _weights(q: QuantizedModel) -> list:
    gm = q.graph_module
    return [ops.unpack_weight(*(attr_value(gm, a) if isinstance(a, torch.fx.Node) else a for a in n.args[1:8]))
            for n in gm.graph.nodes if n.target is QUANTIZED_LINEAR]


def test_gptq_moves_codes_on_the_block_grid_and_beats_nearest_rounding():
    model = Mlp().eval()
    torch.manual_seed(2)
    mix = torch.randn(64, 64) / 8
    data = [torch.randn(4, 32, 64) @ mix for _ in range(4)]   # correlated inputs: where GPTQ helps
    nearest = bitfold.quantize(model, block_recipe("mxfp4"), data, progress=False)
    gptq = bitfold.quantize(model, block_recipe("mxfp4", rounding="gptq"), data, progress=False)
    moved = [float((a != b).float().mean()) for a, b in zip(_weights(nearest), _weights(gptq))]
    assert all(0.01 < m < 0.9 for m in moved), moved
    x = torch.randn(8, 32, 64) @ mix
    with torch.no_grad():
        ref = model(x)
        errors = [float((m(x) - ref).norm() / ref.norm()) for m in (nearest, gptq)]
    assert errors[1] < errors[0], errors


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_searched_weight_block_scales_lower_the_layer_errors(fmt):
    model = Mlp().eval()
    minmax = bitfold.quantize(model, block_recipe(fmt), calibration(), progress=False)
    searched = bitfold.quantize(model, block_recipe(fmt, method="search"), calibration(), progress=False)
    before = {r.layer: r.output_rel_error for r in minmax.layers}
    after = {r.layer: r.output_rel_error for r in searched.layers}
    assert sum(after.values()) < 0.95 * sum(before.values()) and all(after[k] <= before[k] for k in before), (
        before, after)


def test_rotation_combines_with_block_formats_and_saves(tmp_path):
    model = Mlp().eval()
    q = bitfold.quantize(model, block_recipe("mxfp4", rotate=True), calibration(), progress=False)
    assert sum(n.target is torch.ops.bitfold.hadamard.default for n in q.graph_module.graph.nodes) == 2
    q.save(tmp_path / "q")
    x = torch.randn(2, 5, 64)
    assert torch.equal(QuantizedModel.load(tmp_path / "q")(x), q(x))


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_onnx_runtime_matches_the_simulation(fmt, tmp_path):
    model = Mlp().eval()
    data = calibration()
    q = bitfold.quantize(model, block_recipe(fmt, rotate=True, method="search"), data, progress=False)
    path = export_onnx(q, tmp_path / "mlp.onnx", (data[0],))
    x = torch.randn(4, 16, 64)
    got = ort_session(path).run(None, {"x": x.numpy()})[0]
    want = q(x).detach().numpy()
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_tvm_build_matches_the_simulation(fmt):
    pytest.importorskip("tvm")
    model = Mlp().eval()
    data = calibration()
    q = bitfold.quantize(model, block_recipe(fmt, rotate=True, method="search"), data, progress=False)
    compiled = bitfold.compile(q, "llvm", example_inputs=(data[0],))
    x = torch.randn(4, 16, 64)
    got = compiled(x)
    got = got[0] if isinstance(got, (tuple, list)) else got
    torch.testing.assert_close(got, q(x).detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("change, message", [
    ({"activations": {"bits": 4, "kind": "format", "formats": ["mxfp4"], "granularity": "tensor"}},
         "set granularity: block"),
    ({"activations": {"bits": 4, "kind": "fp", "granularity": "block"}}, "needs block formats"),
    ({"activations": {"bits": 4, "kind": "format", "formats": ["mxfp4"], "granularity": "block",
                      "method": "search"}}, "scales from each block's max at run time"),
    ({"weights": {"bits": 4, "kind": "format", "formats": ["nvfp4"], "granularity": "block", "group_size": 32}},
     "drop group_size"),
    ({"weights": {"bits": 4, "kind": "format", "formats": ["mxfp4", "nvfp4"], "granularity": "block"}},
     "one block format"),
    ({"layers": ["linear", "conv"]}, "drop conv"),
    ({"activations": {"bits": 4, "kind": "fp", "granularity": "token"}}, "tensor or block"),
])
def test_recipe_errors_name_the_problem(change, message):
    data = {**dataclasses.asdict(block_recipe("mxfp4")), **change}
    data.pop("source")
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(RecipeError, match=message):
        parse_recipe(data, "bad.yaml")


def test_named_block_recipes_load():
    mx, nv = load_recipe("w4a4-mxfp4"), load_recipe("w4a4-nvfp4")
    for recipe in (mx, nv):
        assert recipe.activations.granularity == recipe.weights.granularity == "block"
        assert recipe.weights.method == "search" and recipe.weights.rounding == "gptq"
    assert mx.rotate is not None and nv.rotate is None   # what measured best on SmolLM2 (README)
