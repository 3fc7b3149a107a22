"""The report's measurements: sensitivity equals the model error when one layer is quantized,
the reconstructed quantizers match the graph (pre-shift folded into a norm, SmoothQuant), and
a float reference of another model is refused."""

import pytest
import torch
from torch import nn

import bitfold
from bitfold.api import QuantizedModel
from bitfold.api.report import Analysis, AnalysisError, analyze, float_reference, match_layers, render_html
from bitfold.api.report.analysis import histogram


class NormLinear(nn.Module):
    """One quantizable layer behind a LayerNorm with outlier channels (so pre-shifts are non-zero)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.norm = nn.LayerNorm(32)
        self.fc = nn.Linear(32, 16)
        with torch.no_grad():
            self.norm.weight[:4] = 16.0

    def forward(self, x):
        return self.fc(self.norm(x))


def _data(n=4):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 32, generator=g),) for _ in range(n)]


_QUANTIZED = {}


def _quantized(recipe):
    """NormLinear quantized with ``recipe`` on :func:`_data`, once per test module."""
    if recipe not in _QUANTIZED:
        _QUANTIZED[recipe] = bitfold.quantize(NormLinear().eval(), recipe, _data(), progress=False)
    return _QUANTIZED[recipe]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["w4a8-fp", "w4a4-int-smooth", "w4a16-int-g128", "w3a16-int-split", "w4a4-nvfp4", "w4a4-fp-rotated"])
def test_single_layer_sensitivity_is_the_model_error(recipe):
    model = NormLinear().eval()
    data = _data()
    q = _quantized(recipe)
    reference = float_reference(model, data, q.recipe["calibration_samples"])
    evaluation = [(torch.randn(5, 32),)]
    a = analyze(reference, q, evaluation)
    (layer,) = a.layers
    # With one quantized layer, "only this layer quantized" is the quantized model itself.
    assert layer.sensitivity_sqnr_db == pytest.approx(a.output["sqnr_db"], abs=1e-6)
    assert layer.output_sqnr_db == pytest.approx(a.output["sqnr_db"], abs=1e-6)
    with torch.no_grad():
        ref, out = model(*evaluation[0]), q(*evaluation[0])
    assert a.output["mse"] == pytest.approx(float((out - ref).pow(2).mean()), rel=1e-5)
    assert 0 < a.output["sqnr_db"] < 60


@pytest.mark.slow
def test_preshift_folded_into_the_norm_is_recovered():
    model = NormLinear().eval()
    data = _data()
    q = _quantized("w4a8-fp")
    norms = [n for n in q.graph_module.graph.nodes if n.target == torch.ops.aten.layer_norm.default]
    assert not any(n.target == torch.ops.aten.mul.Tensor for n in q.graph_module.graph.nodes)  # folded
    (layer,) = match_layers(float_reference(model, data, 128), q.graph_module)
    assert layer.shift is not None and int(layer.shift.max()) > 0
    assert torch.equal(layer.input_scale, torch.exp2(layer.shift.float()))  # c = 2^k, read from γ_q / γ_f
    x = torch.randn(3, 32)
    with torch.no_grad():
        assert torch.allclose(layer(model.norm(x)), q(x), rtol=1e-5, atol=1e-6)
    assert len(norms) == 1
    a = analyze(float_reference(model, data, 128), q, [(x,)])
    (group,) = a.shifts
    assert group.layers == [layer.name] and group.shift == layer.shift.tolist()
    assert len(group.channel_absmax) == 32
    page = render_html(a)
    assert "LLM-FP4 pre-shifted exponent bias" in page and page.count("data:image/png;base64,") == 4


@pytest.mark.parametrize("model_name", ["Attention", "GatedMlp"])
def test_preshift_folded_into_a_producers_rows_is_recovered(model_name):
    """v_proj carries o_proj's 2^k in its rows, up_proj carries down_proj's: the report pairs both
    layers with their float weights, and the producer's float output drops the 2^k again."""
    from tests.passes.test_fold_preshift import W4A4_FOLDED, Attention, GatedMlp

    model = {"Attention": Attention, "GatedMlp": GatedMlp}[model_name]().eval()
    g = torch.Generator().manual_seed(1)
    shape = (2, 7, 32) if model_name == "Attention" else (8, 32)
    data = [torch.randn(*shape, generator=g) * 2 for _ in range(4)]
    q = bitfold.quantize(model, W4A4_FOLDED, data, progress=False)
    reference = float_reference(model, data, 128)
    layers = match_layers(reference, q.graph_module)
    (producer,) = [layer for layer in layers if layer.output_scale is not None]
    assert int(producer.output_scale.max()) > 1
    consumer = layers[-1]
    assert torch.equal(consumer.input_scale, torch.exp2(consumer.shift.float()))
    a = analyze(reference, q, [(torch.randn(*shape, generator=g) * 2,)])
    assert all(layer.output_sqnr_db > 5 for layer in a.layers), [(x.layer, x.output_sqnr_db) for x in a.layers]


def test_reference_of_another_model_is_refused():
    q = _quantized("w8a8-int")
    other = float_reference(NormLinear(7).eval(), _data(), 128)
    with pytest.raises(AnalysisError, match="re-quantize to the stored codes"):
        match_layers(other, q.graph_module)


def test_analysis_round_trips_through_json(tmp_path):
    model = NormLinear().eval()
    data = _data()
    q = _quantized("w8a8-int")
    a = analyze(float_reference(model, data, 128), q, data[:1], sensitivity=False, held_out=False)
    a.save(tmp_path)
    assert Analysis.load(tmp_path) == a
    assert a.layers[0].sensitivity_sqnr_db is None and not a.inputs["held_out"]


def test_histogram_counts_saturation_beyond_half_a_step():
    grid = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])
    values = torch.tensor([0.0, 1.0, 2.4, 2.6, -3.0, 0.5, -2.49, 1.9])
    h = histogram(values, grid, "units", bins=10)
    assert h.beyond_grid == pytest.approx(2 / 8)  # 2.6 and -3.0; 2.4 and -2.49 round to the ends anyway
    assert sum(h.counts) + round(h.outside * h.values) == 8
    assert h.edges[0] <= -2.0 and h.edges[-1] >= 2.0


@pytest.mark.parametrize("recipe", ["w8a8-int", "w3a16-int-split"])
def test_loaded_model_gives_the_same_analysis(recipe, tmp_path):
    """After save/load the layer names come from the graph's constant and node names, not meta."""
    model, data = NormLinear().eval(), _data()
    q = _quantized(recipe)
    q.save(tmp_path / "q")
    reference = float_reference(model, data, 128)
    fresh = analyze(reference, q, data[:1], sensitivity=False)
    loaded = analyze(reference, QuantizedModel.load(tmp_path / "q"), data[:1], sensitivity=False)
    assert loaded == fresh
    if recipe.endswith("split"):
        assert fresh.layers[0].granularity == "channel ×3 clusters"
        assert fresh.layers[0].weight_hist.grid == [float(v) for v in range(8)]  # uint3 in each cluster's units


def test_gptq_rounded_weights_are_matched():
    """w4a4-fp rounds weights by GPTQ: fewer codes are nearest-rounded, the pairing still holds."""
    model, data = NormLinear().eval(), _data()
    q = bitfold.quantize(model, "w4a4-fp", data, progress=False)
    assert q.recipe["weights"]["rounding"] == "gptq"
    (layer,) = match_layers(float_reference(model, data, 128), q.graph_module)
    requant = layer.weight_quantizer.quantize(layer.weight)
    assert not torch.equal(requant, layer.weight_hat)  # GPTQ moved some codes


class ShiftedCnn(nn.Module):
    """A 3x3 conv, then a pointwise one whose input has outlier channels (a non-zero pre-shift)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.pw = nn.Conv2d(8, 6, 1)
        with torch.no_grad():
            self.stem.weight[:2] *= 30

    def forward(self, x):
        return self.pw(torch.relu(self.stem(x)))


@pytest.mark.parametrize("recipe", ["w4a8-fp", "w4a16-int-g128"])
def test_convolutions_are_analyzed_like_linears(recipe):
    model = ShiftedCnn().eval()
    data = [(torch.randn(2, 3, 8, 8),) for _ in range(2)]
    q = bitfold.quantize(model, recipe, data, progress=False)
    a = analyze(float_reference(model, data, 128), q, [(torch.randn(2, 3, 8, 8),)])
    assert [layer.shape for layer in a.layers] == [(8, 27), (6, 8)]
    stem, pw = a.layers
    assert stem.shift_range is None and stem.sensitivity_sqnr_db > 10
    if recipe == "w4a8-fp":
        assert pw.shift_range is not None and pw.shift_range[1] > 0
        (group,) = a.shifts
        assert len(group.channel_absmax) == 8 and group.layers == [pw.layer]
    assert a.output["sqnr_db"] > 5
