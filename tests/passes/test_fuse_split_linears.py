"""FuseSplitLinears: k quantized parts of a split linear → one codebook GEMM, same outputs."""

import pytest
import torch
from torch import nn

from bitfold.ir import formats
from bitfold.ir.graph_utils import attr_value
from bitfold.passes import PassManager, explain
from bitfold.passes.fuse_split_linears import FuseSplitLinears
from bitfold.passes.quantize_linears import ActivationPlan, QuantizeLinears, WeightPlan
from bitfold.passes.split_layers import SPLIT_KEY, SUM_KEY, SplitLayers

from ._helpers import capture, count

CODEBOOK = torch.ops.bitfold.codebook_linear.default
QUANTIZED = torch.ops.bitfold.quantized_linear.default


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(32, 48), nn.Linear(48, 16)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def _minmax(w: torch.Tensor, fmt: str) -> WeightPlan:
    """Asymmetric per-row min/max of a zero-filled part (its range includes 0)."""
    f = formats.get(fmt)
    lo, hi = w.amin(1), w.amax(1)
    scale = ((hi - lo) / (f.qmax - f.qmin)).clamp_min(1e-12)
    return WeightPlan(f.name, scale, None, torch.round(f.qmin - lo / scale).clamp(f.qmin, f.qmax))


def _split_and_quantize(k=3, fmt_of_part=lambda c: "uint2", activations=None, group_size=None, overlap=False):
    model, x = MLP().eval(), torch.randn(4, 32)
    gm = capture(model, x)
    PassManager([SplitLayers(k)], sample_inputs=(x,)).run(gm)
    plans = {}
    for n in gm.graph.nodes:
        if SPLIT_KEY in n.meta:
            if overlap and n.meta[SPLIT_KEY]["part"] == 1:  # no longer a split: part 1 holds the whole weight
                part = attr_value(gm, n.args[1])
                part.copy_(model.fc1.weight if part.shape == model.fc1.weight.shape else model.fc2.weight)
            plan = _minmax(attr_value(gm, n.args[1]).float(), fmt_of_part(n.meta[SPLIT_KEY]["part"]))
            if group_size:
                w = attr_value(gm, n.args[1]).float()
                f = formats.get(plan.fmt)
                rows = w.unflatten(1, (-1, group_size))
                lo, hi = rows.amin(-1).clamp(max=0), rows.amax(-1).clamp(min=0)
                scale = ((hi - lo) / (f.qmax - f.qmin)).clamp_min(1e-12)
                plan = WeightPlan(f.name, scale, group_size, torch.round(f.qmin - lo / scale).clamp(f.qmin, f.qmax))
            plans[n.name] = plan
    QuantizeLinears(plans, activations(gm) if activations else {}).run(gm)
    return gm, x


@pytest.mark.parametrize("k,group_size", [(2, None), (3, None), (4, None), (3, 16)])
def test_parts_fuse_into_one_gemm_with_the_same_outputs(k, group_size):
    gm, x = _split_and_quantize(k, group_size=group_size)
    assert count(gm, QUANTIZED) == 2 * k
    with torch.no_grad():
        before = gm(x)
    manager = PassManager([FuseSplitLinears()], sample_inputs=(x,))
    manager.run(gm)
    assert count(gm, CODEBOOK) == 2 and count(gm, QUANTIZED) == 0
    assert count(gm, torch.ops.aten.add.Tensor) == 0
    assert manager.history[0].max_relative_error <= FuseSplitLinears.tolerance
    with torch.no_grad():
        torch.testing.assert_close(gm(x), before, rtol=1e-5, atol=1e-5)
    node = next(n for n in gm.graph.nodes if n.target is CODEBOOK)
    assert node.args[6] == k and node.args[8] == group_size
    assert attr_value(gm, node.args[1]).numel() * 8 == 48 * 32 * 2  # 2-bit codes, once


def test_shared_activation_quantizer_and_shift_are_kept():
    def activations(gm):
        first = next(n for n in gm.graph.nodes if SPLIT_KEY in n.meta)
        return {first.args[0].name: ActivationPlan("e2m1", 0.5, shift=torch.randint(0, 3, (32,), dtype=torch.int32))}

    gm, x = _split_and_quantize(3, activations=activations)
    with torch.no_grad():
        before = gm(x)
    FuseSplitLinears()(gm)
    fused = [n for n in gm.graph.nodes if n.target is CODEBOOK]
    assert count(gm, torch.ops.bitfold.fake_quantize.default) == 1 and fused[0].args[10] is not None
    with torch.no_grad():
        torch.testing.assert_close(gm(x), before, rtol=1e-5, atol=1e-5)


def test_refused_when_parts_disagree_or_overlap():
    gm, _ = _split_and_quantize(3, fmt_of_part=lambda c: "uint2" if c else "uint3")
    assert not FuseSplitLinears()(gm).modified
    sums = [n.name for n in gm.graph.nodes if SUM_KEY in n.meta]
    assert any("differ in format" in why for why in explain(gm, sums[0]))

    gm, _ = _split_and_quantize(3, overlap=True)
    assert not FuseSplitLinears()(gm).modified
    sums = [n.name for n in gm.graph.nodes if SUM_KEY in n.meta]
    assert any("nonzero in more than one part" in why for why in explain(gm, sums[0]))


def test_float_parts_are_left_alone_with_a_reason():
    model, x = MLP().eval(), torch.randn(4, 32)
    gm = capture(model, x)
    SplitLayers(3)(gm)
    assert not FuseSplitLinears()(gm).modified
    sums = [n.name for n in gm.graph.nodes if SUM_KEY in n.meta]
    assert any("not bitfold.quantized_linear" in why for why in explain(gm, sums[0]))
