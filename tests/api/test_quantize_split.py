"""bitfold.quantize with SplitQuant recipes: codebook GEMMs, memory counted, same artifact twice."""

import dataclasses
import json

import pytest
import torch

import bitfold
from bitfold.api import QuantizedModel
from bitfold.recipes import RecipeError, SplitSpec, load_recipe, parse_recipe

from .test_quantize import Block, _data

CODEBOOK = torch.ops.bitfold.codebook_linear.default
QUANTIZED = torch.ops.bitfold.quantized_linear.default


def _targets(q):
    return [n.target for n in q.graph_module.graph.nodes if n.op == "call_function"]


def _error(q, model):
    ids = torch.randint(0, 50, (3, 9), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out, ref = q(ids), model(ids)
    return float((out - ref).norm() / ref.norm())


@pytest.fixture(scope="module")
def model_and_data():
    model = Block().eval()
    with torch.no_grad():  # heavy-tailed weights, where a single INT2 range per row is coarse
        for lin in (*model.qkv, model.fc1, model.fc2, model.head):
            lin.weight.mul_(torch.exp(torch.randn_like(lin.weight)))
    return model, _data()


@pytest.mark.slow
def test_split_recipe_runs_one_codebook_gemm_per_layer_and_beats_plain_int2(model_and_data, tmp_path):
    model, data = model_and_data
    plain = bitfold.quantize(model, "w2a16-int", data, progress=False)
    split = bitfold.quantize(model, "w2a16-int-split", data, progress=False)
    assert _targets(split).count(CODEBOOK) == 6
    assert QUANTIZED not in _targets(split) and torch.ops.aten.linear.default not in _targets(split)
    assert _error(split, model) < 0.7 * _error(plain, model)
    # Memory as stored: 2-bit codes + 2-bit cluster ids + 3 clusters' fp32 scale and zero point per row.
    memory = split.manifest()["memory"]
    fc1 = memory["layers"]["linear_3_codebook"]  # fc1: 64 x 32
    assert fc1["bits"] == {"codes": 64 * 32 * 2, "cluster_ids": 64 * 32 * 2, "scales": 3 * 64 * 2 * 32}
    assert fc1["bits_per_weight"] == pytest.approx(2 + 2 + 3 * 64 / 32)
    assert plain.manifest()["memory"]["bits_per_weight"] < memory["bits_per_weight"]
    assert "bits/weight" in split.report()
    notes = [note for r in split.layers for note in r.notes]
    assert len(notes) == 18 and "SplitQuant part 1/3 of linear" in notes

    # Same artifact twice (timings aside), and it loads back to the same outputs.
    again = bitfold.quantize(model, "w2a16-int-split", data, progress=False)
    for i, q in enumerate((split, again)):
        q.save(tmp_path / str(i))
    graphs = [json.loads((tmp_path / str(i) / "graph.json").read_text()) for i in range(2)]
    assert [g["nodes"] for g in graphs] == [graphs[0]["nodes"]] * 2
    tensors = [(tmp_path / str(i) / "tensors.safetensors").read_bytes() for i in range(2)]
    size = int.from_bytes(tensors[0][:8], "little")
    assert tensors[0][8 + size:] == tensors[1][8 + size:]
    loaded = QuantizedModel.load(tmp_path / "0")
    ids = torch.randint(0, 50, (2, 7))
    assert torch.equal(loaded(ids), split(ids))
    assert loaded.manifest()["memory"] == split.manifest()["memory"]


@pytest.mark.slow
def test_split_composes_with_activation_quantization(model_and_data):
    model, data = model_and_data
    recipe = dataclasses.replace(load_recipe("w4a4-fp-minmax"), split=SplitSpec(k=2, exclude=["head*"]))
    q = bitfold.quantize(model, recipe, data, progress=False)
    targets = _targets(q)
    assert targets.count(CODEBOOK) == 5 and targets.count(QUANTIZED) == 1  # the head was not split
    assert targets.count(torch.ops.bitfold.fake_quantize.default) == 4  # parts share their input's quantizer
    assert _error(q, model) < 0.6


def test_named_recipes_and_split_option_errors():
    for name, bits, k in (("w2a16-int", 2, None), ("w3a16-int", 3, None), ("w2a16-int-split", 2, 3),
                          ("w3a16-int-split", 3, 3)):
        recipe = load_recipe(name)
        assert recipe.weights.bits == bits and not recipe.weights.symmetric and recipe.activations is None
        assert (recipe.split.k if recipe.split else None) == k
    base = {"name": "x", "version": 1, "description": "", "weights": {"bits": 2, "kind": "int"}}
    for split, message in (({"k": 5}, "split.k must be an integer from 2 to 4"),
                           ({"layers": ["conv"]}, "which the recipe does not quantize"),
                           ({"layers": ["attention"]}, "unknown layer kind"),
                           ({"kk": 3}, "unknown key.*kk")):
        with pytest.raises(RecipeError, match=message):
            parse_recipe({**base, "split": split}, "test.yaml")
