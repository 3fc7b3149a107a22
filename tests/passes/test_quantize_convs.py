"""QuantizeConvs: structure, shared quantizers per input and geometry, and the pre-shift identity (bit-exact)."""

import pytest
import torch
from torch import nn

from bitfold.ir import formats
from bitfold.ir.graph_utils import attr_value
from bitfold.passes.base import PassError
from bitfold.passes.quantize_convs import QuantizeConvs
from bitfold.passes.quantize_linears import ActivationPlan, WeightPlan, input_key

from ._helpers import capture, count

aten = torch.ops.aten
bitfold = torch.ops.bitfold
E2M1 = formats.get("e2m1")


class Branches(nn.Module):
    """Two pointwise convs and a depthwise conv reading one input."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(8, 6, 1), nn.Conv2d(8, 6, 1, bias=False)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)

    def forward(self, x):
        x = torch.relu(x)
        return self.a(x) * self.b(x) + self.dw(x)[:, :6]


def _plans(gm, shift):
    convs = [n for n in gm.graph.nodes if n.target == aten.conv2d.default]
    weights = {}
    for n in convs:
        w = attr_value(gm, n.args[1])
        weights[n.name] = WeightPlan("e2m1", w.reshape(w.shape[0], -1).abs().amax(1) / E2M1.max)
    scale = float(E2M1.scale_for_bias(torch.tensor(1.3)))
    acts = {}
    for n in convs:
        pointwise = attr_value(gm, n.args[1]).shape[2:] == (1, 1)
        acts[input_key(gm, n)] = ActivationPlan("e2m1", scale, shift=shift if pointwise else None)
    return convs, weights, acts


def test_convs_become_quantized_ops_sharing_one_quantizer_per_geometry():
    torch.manual_seed(0)
    model, x = Branches().eval(), torch.randn(2, 8, 7, 7)
    gm = capture(model, x)
    shift = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    convs, weights, acts = _plans(gm, shift)
    keys = {input_key(gm, n) for n in convs}
    assert len(keys) == 2  # the two 1x1 convs share a key, the depthwise one has its own
    QuantizeConvs(weights, acts).run(gm)
    assert count(gm, aten.conv2d.default) == 0 and count(gm, bitfold.quantized_conv2d.default) == 3
    assert count(gm, bitfold.fake_quantize.default) == 2
    muls = [n for n in gm.graph.nodes if n.target == aten.mul.Tensor and n.args[1].op == "get_attr"]
    assert len(muls) == 1 and tuple(getattr(gm, muls[0].args[1].target).shape) == (8, 1, 1)
    layers = {n.meta["bitfold_layer"] for n in gm.graph.nodes if n.target == bitfold.quantized_conv2d.default}
    assert layers == {n.name for n in convs}


def test_pointwise_preshift_is_the_per_channel_bias_simulation_bit_for_bit():
    """x·2^k quantized per tensor with ρ, then 2^-k inside the op == Q(x; ρ + k_j) per input channel."""
    torch.manual_seed(1)
    model, x = Branches().eval(), torch.randn(2, 8, 7, 7)
    gm = capture(model, x)
    shift = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    _, weights, acts = _plans(gm, shift)
    scale = next(iter(acts.values())).scale
    QuantizeConvs(weights, acts).run(gm)
    h = torch.relu(x)
    hq = E2M1.quantize(h, scale * torch.exp2(-shift.float()), axis=1)   # a real bias per input channel
    hq_dw = E2M1.quantize(h, scale)

    def conv(layer, inp):
        w = layer.weight.detach()
        wq = E2M1.quantize(w, w.reshape(w.shape[0], -1).abs().amax(1) / E2M1.max, axis=0)
        return nn.functional.conv2d(inp, wq, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)

    want = conv(model.a, hq) * conv(model.b, hq) + conv(model.dw, hq_dw)[:, :6]
    assert torch.equal(gm(x), want)


def test_a_missing_conv_is_named():
    gm = capture(Branches().eval(), torch.randn(1, 8, 5, 5))
    with pytest.raises(PassError, match="no conv2d node named nope"):
        QuantizeConvs({"nope": WeightPlan("int4", torch.ones(6))}, {}).run(gm)
