"""bitfold.quantize end to end on a small transformer-like model, save/load, errors."""

import importlib

import pytest
import torch
from torch import nn

import bitfold
from bitfold.api import QuantizedModel
from bitfold.ir import formats


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(50, 32)
        self.norm = nn.LayerNorm(32)
        self.qkv = nn.ModuleList(nn.Linear(32, 32) for _ in range(3))
        self.fc1, self.fc2 = nn.Linear(32, 64), nn.Linear(64, 32)
        self.head = nn.Linear(32, 50)

    def forward(self, ids):
        x = self.emb(ids)
        h = self.norm(x)
        q, k, v = (lin(h) for lin in self.qkv)
        a = torch.softmax(q @ k.transpose(-1, -2) / 32**0.5, -1) @ v
        x = x + a
        x = x + self.fc2(torch.nn.functional.gelu(self.fc1(x)))
        return self.head(x)


def _data(n=6, seq=12):
    g = torch.Generator().manual_seed(1)
    return [(torch.randint(0, 50, (2, seq + i), generator=g),) for i in range(n)]


@pytest.mark.parametrize("recipe", ["w4a4-fp", "w4a4-int", "w4a16-int-g128", "w8a8-fp", "w4a4-int-smooth"])
def test_quantize_runs_and_reports(recipe):
    model = Block().eval()
    data = _data()
    q = bitfold.quantize(model, recipe, data, progress=False)
    ids = torch.randint(0, 50, (3, 9))  # another batch and length than calibration
    out, ref = q(ids), model(ids)
    assert out.shape == ref.shape
    rel = float((out - ref).norm() / ref.norm())
    assert rel < (0.02 if recipe == "w8a8-fp" else 0.6)
    ops = [n.target for n in q.graph_module.graph.nodes if n.op == "call_function"]
    assert ops.count(torch.ops.bitfold.quantized_linear.default) == 6
    assert not any(t == torch.ops.aten.linear.default for t in ops)
    tables = recipe == "w4a16-int-g128"  # v2 quantizes embedding tables too
    assert ops.count(torch.ops.bitfold.quantized_embedding.default) == int(tables)
    assert len(q.layers) == 6 + int(tables) and recipe in q.report()


def test_preshift_is_folded_into_the_norm_and_beats_no_preshift():
    model = Block().eval()
    with torch.no_grad():  # a few outlier channels, as in real transformers
        model.norm.weight[:4] = 20.0
    data = _data()
    with_shift = bitfold.quantize(model, "w4a4-fp", data, progress=False)
    without = bitfold.quantize(model, "w4a4-fp-fpq", data, progress=False)
    qkv = [r for r in with_shift.layers if r.group.startswith("layer_norm")]
    assert len(qkv) == 3 and qkv[0].shift_range[1] > 0
    # QKV's shift went into the LayerNorm: no multiply between norm and quantizer remains
    gm = with_shift.graph_module
    fq = [n for n in gm.graph.nodes if n.target == torch.ops.bitfold.fake_quantize.default]
    assert any(n.args[0].target == torch.ops.aten.layer_norm.default for n in fq)
    err = {r.layer: r.output_rel_error for r in with_shift.layers}
    err_fpq = {r.layer: r.output_rel_error for r in without.layers}
    assert sum(err[n.layer] for n in qkv) < sum(err_fpq[n.layer] for n in qkv)


def test_save_and_load_round_trip(tmp_path):
    model = Block().eval()
    q = bitfold.quantize(model, "w4a4-fp", _data(), progress=False)
    q.save(tmp_path / "q")
    loaded = QuantizedModel.load(tmp_path / "q")
    ids = torch.randint(0, 50, (2, 10))
    assert torch.equal(loaded(ids), q(ids))
    assert loaded.report() == q.report()


def test_errors():
    with pytest.raises(ValueError, match="calibration data is empty"):
        bitfold.quantize(Block(), "w4a4-fp", [], progress=False)
    with pytest.raises(ValueError, match="unknown recipe"):
        bitfold.quantize(Block(), "w4a4-fq", _data(), progress=False)


def _w4a4_fp(weights=None, activations=None):
    import dataclasses

    from bitfold.recipes import load_recipe

    r = load_recipe("w4a4-fp")
    return dataclasses.replace(
        r, weights=dataclasses.replace(r.weights, **(weights or {})),
        activations=dataclasses.replace(r.activations, **(activations or {})))


def _quantized_linears(q):
    return [n for n in q.graph_module.graph.nodes if n.target == torch.ops.bitfold.quantized_linear.default]


def _unpacked_weights(q):
    """Layer name → the float weight its quantized_linear holds."""
    from bitfold.ir import ops

    gm = q.graph_module
    out = {}
    for node in _quantized_linears(q):
        packed, fmt, n_out, n_in, scale = node.args[1:6]
        out[node.meta["bitfold_layer"]] = ops.unpack_weight(getattr(gm, packed.target), fmt, n_out, n_in,
                                                            getattr(gm, scale.target))
    return out


def test_gptq_rounding_packs_the_planned_values():
    """The graph holds GPTQ's rounding (not nearest rounding) on the grid the search chose."""
    model, data = Block().eval(), _data()
    gptq = bitfold.quantize(model, _w4a4_fp(), data, progress=False)
    nearest = bitfold.quantize(model, _w4a4_fp(weights={"rounding": "nearest"}), data, progress=False)
    moved, rounded = _unpacked_weights(gptq), _unpacked_weights(nearest)
    assert moved.keys() == rounded.keys()
    assert any(not torch.equal(moved[name], rounded[name]) for name in moved)
    for a, b in zip(gptq.layers, nearest.layers):
        assert (a.layer, a.weight_format, a.act_format, a.act_scale) == (b.layer, b.weight_format, b.act_format, b.act_scale)


def test_paper_preshift_clips_shifts_to_the_format():
    q = bitfold.quantize(Block().eval(), _w4a4_fp(activations={"preshift": "paper"}), _data(), progress=False)
    for r in q.layers:
        assert r.shift_range is not None
        assert 0 <= r.shift_range[0] <= r.shift_range[1] <= 2 ** formats.get(r.act_format).exponent_bits - 1


def test_float_shift_mode_moves_the_shift_into_the_weights():
    recipe = _w4a4_fp(weights={"rounding": "nearest"}, activations={"shift_weights": "float"})
    model, data = Block().eval(), _data()
    q = bitfold.quantize(model, recipe, data, progress=False)
    assert all(n.args[8] is None for n in _quantized_linears(q))  # no exponent shift on the quantized weight
    ids = torch.randint(0, 50, (2, 9))
    assert float((q(ids) - model(ids)).norm() / model(ids).norm()) < 0.6


@pytest.mark.parametrize("recipe", ["w4a4-fp", "w4a4-int-smooth"])
def test_layer_at_a_time_calibration_gives_the_same_model(recipe):
    model = Block().eval()
    data = _data()
    whole = bitfold.quantize(model, recipe, data, progress=False)
    chunked = bitfold.quantize(model, recipe, data, progress=False, layers_per_pass=2)
    ids = torch.randint(0, 50, (2, 10))
    assert torch.equal(whole(ids), chunked(ids))
    assert [r.layer for r in whole.layers] == [r.layer for r in chunked.layers]
    assert [r.act_scale for r in whole.layers] == [r.act_scale for r in chunked.layers]
    with pytest.raises(ValueError, match="layers_per_pass must be a positive"):
        bitfold.quantize(model, recipe, data, progress=False, layers_per_pass=0)


def test_layer_at_a_time_keeps_groups_whole(monkeypatch):
    quantize_module = importlib.import_module("bitfold.api.quantize")
    seen = []
    real = quantize_module.calibrate

    def spy(gm, data, layers, **kwargs):
        seen.append([n.name for n in layers])
        return real(gm, data, layers=layers, **kwargs)

    monkeypatch.setattr(quantize_module, "calibrate", spy)
    bitfold.quantize(Block().eval(), "w4a4-int", _data(), progress=False, layers_per_pass=2)
    assert [len(chunk) for chunk in seen] == [3, 2, 1]  # Q/K/V share an input: a chunk of 3 although 2 were asked
