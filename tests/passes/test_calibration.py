"""Calibration: running statistics of linear-layer inputs, the reservoir sample, and its errors."""

import pytest
import torch
from torch import nn

from bitfold.passes.calibration import CalibrationError, calibrate, linear_layers

from ._helpers import capture


class TwoBranch(nn.Module):
    """Two linears on the same input (like Q and K), then a GELU-fed linear (like FC2)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 4)

    def hidden(self, x):
        return torch.nn.functional.gelu(self.a(x) + self.b(x))

    def forward(self, x):
        return self.c(self.hidden(x))


def batches(n, seed=0, shape=(2, 3, 8)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) * (1 + i) for i in range(n)]


@pytest.fixture(scope="module")
def model_and_graph():
    model = TwoBranch().eval()
    return model, capture(model, torch.randn(2, 3, 8))


def test_finds_the_linear_layers(model_and_graph):
    _, gm = model_and_graph
    layers = linear_layers(gm)
    assert len(layers) == 3 and all(n.target == torch.ops.aten.linear.default for n in layers)


def test_statistics_equal_the_true_values_over_all_batches(model_and_graph):
    model, gm = model_and_graph
    data = batches(5)
    stats = calibrate(gm, [(x,) for x in data], max_tokens=10, progress=False)
    first, _, last = (stats[n.name] for n in linear_layers(gm))
    inputs = torch.cat([x.reshape(-1, 8) for x in data])
    with torch.no_grad():
        hidden = torch.cat([model.hidden(x).reshape(-1, 16) for x in data])
    assert torch.equal(first.channel_absmax, inputs.abs().amax(0))
    torch.testing.assert_close(last.channel_absmax, hidden.abs().amax(0), rtol=1e-6, atol=0)
    assert first.absmax == float(inputs.abs().max())
    assert first.tokens == last.tokens == 30
    assert first.sample.shape == (10, 8) and last.sample.shape == (10, 16)
    # Every sampled row is a real input row, and no row is taken twice.
    match = (first.sample[:, None, :] == inputs[None, :, :]).all(-1)
    assert bool(match.any(1).all())
    assert len(set(match.float().argmax(1).tolist())) == 10


def test_sample_is_deterministic_and_shared_by_layers_reading_one_tensor(model_and_graph):
    _, gm = model_and_graph
    a, b, _ = linear_layers(gm)
    data = batches(6)
    one = calibrate(gm, data, layers=[a, b.name], max_tokens=7, seed=3, progress=False)
    two = calibrate(gm, data, layers=[a], max_tokens=7, seed=3, progress=False)
    other = calibrate(gm, data, layers=[a], max_tokens=7, seed=4, progress=False)
    assert set(one) == {a.name, b.name}
    assert torch.equal(one[a.name].sample, two[a.name].sample)
    assert torch.equal(one[a.name].sample, one[b.name].sample)
    assert not torch.equal(one[a.name].sample, other[a.name].sample)


def test_small_data_is_kept_whole(model_and_graph):
    _, gm = model_and_graph
    data = batches(2)
    stats = calibrate(gm, data, max_tokens=1000, progress=False)
    rows = stats[linear_layers(gm)[0].name].sample
    assert rows.shape == (12, 8)
    assert torch.equal(rows.sort(0).values, torch.cat([x.reshape(-1, 8) for x in data]).sort(0).values)


def test_reservoir_is_uniform_over_batches():
    """Each of 40 rows (8 batches of 5) lands in a 10-row sample with probability 1/4, early or late."""
    model = nn.Linear(1, 1)
    gm = capture(model, torch.zeros(5, 1))
    data = [torch.arange(5.0 * i, 5.0 * i + 5).reshape(5, 1) for i in range(8)]
    hits = torch.zeros(40)
    trials = 150
    for seed in range(trials):
        sample = calibrate(gm, data, max_tokens=10, seed=seed, progress=False)["linear"].sample
        hits[sample[:, 0].long()] += 1
    freq = hits / trials
    assert float(freq.sum()) == pytest.approx(10 * 40 / 40)
    assert float(freq[:5].mean()) == pytest.approx(0.25, abs=0.08)
    assert float(freq[-5:].mean()) == pytest.approx(0.25, abs=0.08)
    assert float((freq - 0.25).abs().max()) < 0.2


def test_progress_bar(model_and_graph, capsys):
    _, gm = model_and_graph
    calibrate(gm, batches(2), progress=True)
    assert "calibrating" in capsys.readouterr().err
    calibrate(gm, batches(2), progress=False)
    assert capsys.readouterr().err == ""


def test_empty_data(model_and_graph):
    _, gm = model_and_graph
    with pytest.raises(ValueError, match="calibration data is empty"):
        calibrate(gm, [], progress=False)
    with pytest.raises(ValueError, match="calibration data is empty"):
        calibrate(gm, iter(()), progress=False)


def test_nan_or_inf_names_the_layer(model_and_graph):
    _, gm = model_and_graph
    data = batches(3)
    data[1][0, 0, 0] = float("nan")
    with pytest.raises(CalibrationError, match=r"layer 'linear'.*NaN/Inf.*batch 1"):
        calibrate(gm, data, progress=False)
    data[1][0, 0, 0] = float("inf")  # only the GELU-fed layer is observed: it names that one
    with pytest.raises(CalibrationError, match="layer 'linear_2'"):
        calibrate(gm, data, layers=["linear_2"], progress=False)


def test_bad_layers(model_and_graph):
    _, gm = model_and_graph
    gelu = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.gelu.default)
    with pytest.raises(ValueError, match="'gelu'.*not an aten.linear"):
        calibrate(gm, batches(1), layers=[gelu], progress=False)
    with pytest.raises(ValueError, match="not a node of this graph"):
        calibrate(gm, batches(1), layers=["nope"], progress=False)
    with pytest.raises(ValueError, match="max_tokens"):
        calibrate(gm, batches(1), max_tokens=0, progress=False)


class SmallCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)

    def forward(self, x):
        return self.dw(torch.relu(self.stem(x)))


def test_convolutions_record_their_patch_rows_and_groups():
    torch.manual_seed(0)
    model = SmallCnn().eval()
    data = [torch.randn(2, 3, 8, 8) for _ in range(3)]
    gm = capture(model, data[0])
    stem, dw = [n for n in gm.graph.nodes if n.target == torch.ops.aten.conv2d.default]
    stats = calibrate(gm, data, layers=[stem, dw], max_tokens=10_000, progress=False)
    patches = torch.cat([nn.functional.unfold(x, 3, padding=1, stride=2).transpose(1, 2).reshape(-1, 27)
                         for x in data])
    assert stats[stem.name].tokens == 3 * 2 * 16 and stats[stem.name].sample_group is None
    torch.testing.assert_close(stats[stem.name].channel_absmax, patches.abs().amax(0))
    assert sorted(map(tuple, stats[stem.name].sample.tolist())) == sorted(map(tuple, patches.tolist()))
    st = stats[dw.name]
    assert st.sample.shape == (3 * 2 * 16 * 4, 9) and st.tokens == 3 * 2 * 16 * 4   # 4x4 outputs, 4 groups
    assert st.sample_group.shape == (st.sample.shape[0],) and set(st.sample_group.tolist()) == {0, 1, 2, 3}
    h = torch.relu(model.stem(data[0]))
    one = nn.functional.unfold(h[:, 2:3], 3, padding=1).transpose(1, 2).reshape(-1, 9)
    rows = st.sample[st.sample_group == 2]
    assert all(bool((rows == r).all(1).any()) for r in one)   # group 2's rows are channel 2's patches


def test_a_conv_input_of_the_wrong_rank_is_named():
    model = SmallCnn().eval()
    gm = capture(model, torch.randn(1, 3, 8, 8))
    stem = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.conv2d.default)
    with pytest.raises(ValueError, match="not an aten.linear or aten.conv2d"):
        calibrate(gm, [torch.randn(1, 3, 8, 8)], layers=[stem.args[0]], progress=False)
