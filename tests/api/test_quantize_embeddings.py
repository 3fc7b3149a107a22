"""Embedding tables in ``bitfold.quantize``: selection, plans, the quantized op, memory, save/load."""

import dataclasses

import pytest
import torch

import bitfold
from bitfold.api.quantized_model import QuantizedModel
from bitfold.ir import formats
from bitfold.recipes import load_recipe


class TinyLm(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.tokens = torch.nn.Embedding(100, 24)
        self.positions = torch.nn.Embedding(16, 24)
        self.mix = torch.nn.Linear(24, 24)
        self.head = torch.nn.Linear(24, 100)

    def forward(self, ids):
        h = self.tokens(ids) + self.positions(torch.arange(ids.shape[1]))
        return self.head(torch.relu(self.mix(h)))


def _data():
    torch.manual_seed(0)
    return TinyLm().eval(), [torch.randint(0, 100, (2, 12)) for _ in range(4)]


def _recipe(name: str, **changes):
    recipe = load_recipe(name)
    return dataclasses.replace(recipe, layers=["linear", "embedding"], **changes)


@pytest.mark.parametrize("name", ["w4a16-int-g128", "w4a16-int", "w4a8-fp", "w8a8-int"])
def test_tables_are_quantized_on_the_recipes_grid(name):
    model, data = _data()
    recipe = _recipe(name)
    q = bitfold.quantize(model, recipe, data, progress=False)
    nodes = [n for n in q.graph_module.graph.nodes if n.target is torch.ops.bitfold.quantized_embedding.default]
    assert len(nodes) == 2
    assert not any(n.target is torch.ops.aten.embedding.default for n in q.graph_module.graph.nodes)
    rows = {r.weight_name: r for r in q.layers if r.group == "embedding"}
    assert set(rows) == {"tokens.weight", "positions.weight"}
    assert rows["tokens.weight"].weight_format in recipe.weight_formats() and rows["tokens.weight"].shape == (100, 24)
    ids = torch.randint(0, 100, (3, 12))
    table = model.tokens.weight.detach()
    plan_fmt = formats.get(rows["tokens.weight"].weight_format)
    node = next(n for n in nodes if n.meta["bitfold_layer"] == rows["tokens.weight"].layer)
    decoded = torch.ops.bitfold.quantized_embedding(torch.arange(100), *[
        getattr(q.graph_module, a.target) if isinstance(a, torch.fx.Node) else a for a in node.args[1:]])
    err = float((decoded - table).norm() / table.norm())
    assert err == pytest.approx(rows["tokens.weight"].output_rel_error, rel=1e-4)
    assert err < (0.2 if plan_fmt.bits == 4 else 0.02)
    assert torch.equal(decoded[ids], torch.ops.bitfold.quantized_embedding(ids, *[
        getattr(q.graph_module, a.target) if isinstance(a, torch.fx.Node) else a for a in node.args[1:]]))
    memory = q.manifest()["memory"]["layers"]
    assert memory[node.name]["weights"] == 2400
    assert plan_fmt.bits <= memory[node.name]["bits_per_weight"] <= plan_fmt.bits + 64 / 24 + 1e-3  # scale + zero per row


def test_recipe_without_embedding_keeps_tables_and_exclusions_name_them():
    model, data = _data()
    q = bitfold.quantize(model, "w4a16-int", data, progress=False)
    assert sum(n.target is torch.ops.aten.embedding.default for n in q.graph_module.graph.nodes) == 2
    q = bitfold.quantize(model, _recipe("w4a16-int", exclude=["positions*"]), data, progress=False)
    kinds = [n.target for n in q.graph_module.graph.nodes if n.op == "call_function"]
    assert kinds.count(torch.ops.bitfold.quantized_embedding.default) == 1
    assert kinds.count(torch.ops.aten.embedding.default) == 1


def test_save_load_keeps_the_quantized_tables(tmp_path):
    model, data = _data()
    q = bitfold.quantize(model, _recipe("w4a16-int-g128"), data, progress=False)
    q.save(tmp_path / "q")
    loaded = QuantizedModel.load(tmp_path / "q")
    ids = torch.randint(0, 100, (2, 7))
    assert torch.equal(loaded(ids), q(ids))
    assert loaded.manifest()["memory"] == q.manifest()["memory"]
