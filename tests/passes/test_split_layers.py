"""SplitLayers: k exact parts per Linear / Conv / Embedding, verified, deterministic."""

import json

import pytest
import torch
from torch import nn

from bitfold.ir.graph_utils import attr_value
from bitfold.ir.serialize import save_graph
from bitfold.passes import PassError, PassManager, explain
from bitfold.passes.split_layers import SPLIT_KEY, SUM_KEY, SplitLayers

from ._helpers import assert_same_outputs, capture, count

aten = torch.ops.aten


class Mixed(nn.Module):
    """Every layer kind the pass handles: embedding, conv (plain, depthwise, grouped, 1-D), linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(30, 16)
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.grouped = nn.Conv2d(16, 16, 1, groups=4)
        self.conv1d = nn.Conv1d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 10)
        with torch.no_grad():
            self.head.bias.zero_()  # SplitQuant's code silently skipped layers with an all-zero bias
            self.conv.weight[0, 0, 0, 0] = 3.0  # an outlier

    def forward(self, image, ids):
        h = self.grouped(torch.relu(self.depthwise(self.conv(image))))
        t = self.conv1d(self.emb(ids).transpose(1, 2)).mean(-1)
        return self.head(h.mean((2, 3)) + t)


def _inputs():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 8, 8, generator=gen), torch.randint(0, 30, (2, 5), generator=gen)


LAYER_TARGETS = (aten.linear.default, aten.conv2d.default, aten.conv1d.default, aten.embedding.default)


def _layers(gm):
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target in LAYER_TARGETS]


def _weight_position(node):
    return 0 if node.target is aten.embedding.default else 1


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("per_channel", [True, False])
def test_split_is_exact_and_verified(k, per_channel):
    model, inputs = Mixed().eval(), _inputs()
    gm = capture(model, *inputs)
    originals = {n.name: (attr_value(gm, n.args[_weight_position(n)]).clone(),
                          None if len(n.args) < 3 or n.target is aten.embedding.default
                          else attr_value(gm, n.args[2]).clone()) for n in _layers(gm)}
    manager = PassManager([SplitLayers(k, per_channel)], sample_inputs=inputs)
    manager.run(gm)
    # Verified by the manager on the sample inputs; a second iteration found nothing left to split.
    assert [r.modified for r in manager.history] == [True, False]
    assert manager.history[0].max_relative_error <= SplitLayers.tolerance
    parts = [n for n in _layers(gm) if SPLIT_KEY in n.meta]
    assert len(parts) == len(_layers(gm)) == k * 6
    assert count(gm, aten.add.Tensor) == 1 + 6 * (k - 1)
    for layer, (weight, bias) in originals.items():
        mine = sorted((n for n in parts if n.meta[SPLIT_KEY]["layer"] == layer), key=lambda n: n.meta[SPLIT_KEY]["part"])
        assert len(mine) == k
        ws = [attr_value(gm, n.args[_weight_position(n)]) for n in mine]
        assert torch.equal(sum(ws[1:], ws[0]), weight)  # exact, bit for bit
        if bias is not None:
            bs = [attr_value(gm, n.args[2]) for n in mine]
            assert torch.equal(sum(bs[1:], bs[0]), bias)
        # Each element lives in exactly one part, and parts are ordered value intervals.
        nonzero = torch.stack([w != 0 for w in ws])
        assert int(nonzero.sum(0).max()) <= 1
        rows = [w.reshape(w.shape[0], -1) if per_channel else w.reshape(1, -1) for w in ws]
        for c in range(k - 1):
            lower = torch.where(rows[c] != 0, rows[c], torch.full_like(rows[c], -torch.inf)).amax(1)
            upper = torch.where(rows[c + 1] != 0, rows[c + 1], torch.full_like(rows[c + 1], torch.inf)).amin(1)
            assert bool((lower < upper).all())
    assert_same_outputs(gm, model, *inputs, rtol=1e-5)
    sums = [n for n in gm.graph.nodes if SUM_KEY in n.meta]
    assert sorted(n.meta[SUM_KEY] for n in sums) == sorted(originals)


def test_per_channel_clusters_each_row_and_per_layer_the_whole_weight():
    model = nn.Sequential(nn.Linear(64, 4)).eval()
    with torch.no_grad():
        model[0].weight.mul_(torch.tensor([1.0, 10.0, 100.0, 1000.0])[:, None])  # rows of very different scale
    x = torch.randn(3, 64)
    for per_channel in (True, False):
        gm = capture(model, x)
        PassManager([SplitLayers(3, per_channel)], sample_inputs=(x,)).run(gm)
        ws = [attr_value(gm, n.args[1]) for n in gm.graph.nodes if SPLIT_KEY in n.meta]
        nonempty = torch.stack([(w != 0).any(1) for w in ws])  # [part, row]
        if per_channel:
            assert bool(nonempty.all())  # every row has its own lower, middle and upper cluster
        else:
            assert not bool(nonempty[:, 0].all())  # the small row falls entirely into the middle cluster


def test_same_artifact_twice(tmp_path):
    model, inputs = Mixed().eval(), _inputs()
    for i in range(2):
        gm = capture(model, *inputs)
        SplitLayers(3)(gm)
        save_graph(gm, tmp_path / str(i))
    assert (tmp_path / "0" / "graph.json").read_bytes() == (tmp_path / "1" / "graph.json").read_bytes()
    # safetensors writes its metadata map in no fixed order, so compare the header as JSON
    # and the tensor data byte for byte.
    first, second = ((tmp_path / str(i) / "tensors.safetensors").read_bytes() for i in range(2))
    size = int.from_bytes(first[:8], "little")
    assert json.loads(first[8:8 + size]) == json.loads(second[8:8 + size])
    assert first[8 + size:] == second[8 + size:]


def test_only_named_layers_and_kinds_are_split():
    model, inputs = Mixed().eval(), _inputs()
    gm = capture(model, *inputs)
    linear = next(n.name for n in _layers(gm) if n.target is aten.linear.default)
    SplitLayers(2, kinds=["conv"])(gm)
    assert {n.meta[SPLIT_KEY]["layer"] for n in gm.graph.nodes if SPLIT_KEY in n.meta} == {
        n.name for n in _layers(capture(model, *inputs)) if n.target in (aten.conv2d.default, aten.conv1d.default)}
    gm = capture(model, *inputs)
    SplitLayers(2, layers=[linear])(gm)
    assert count(gm, aten.linear.default) == 2 and count(gm, aten.conv2d.default) == 3


def test_refusals_and_errors_say_why():
    model = nn.Sequential(nn.ConvTranspose2d(4, 6, 3)).eval()
    x = torch.randn(1, 4, 5, 5)
    gm = capture(model, x)
    conv = next(n for n in gm.graph.nodes if n.op == "call_function")
    result = SplitLayers(3, per_channel=True)(gm)
    assert not result.modified
    assert any("transposed" in why for why in explain(gm, conv.name))
    PassManager([SplitLayers(3, per_channel=False)], sample_inputs=(x,)).run(gm)  # per layer works
    assert sum(SPLIT_KEY in n.meta for n in gm.graph.nodes) == 3

    bad = nn.Sequential(nn.Linear(4, 4)).eval()
    with torch.no_grad():
        bad[0].weight[1, 2] = float("nan")
    with pytest.raises(PassError, match="NaN/Inf"):
        SplitLayers(3)(capture(bad, torch.randn(2, 4)))
    with pytest.raises(ValueError, match="between 2 and 4"):
        SplitLayers(5)
    with pytest.raises(ValueError, match="unknown layer kind"):
        SplitLayers(3, kinds=["attention"])
