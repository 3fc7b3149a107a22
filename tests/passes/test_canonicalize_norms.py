"""CanonicalizeNorms: decomposed LayerNorm / RMSNorm variants become one norm node."""

import pytest
import torch
from torch import nn

from bitfold.passes import CanonicalizeNorms, InlineScalarConstants, PassManager, explain

from ._helpers import assert_same_outputs, capture, count

aten = torch.ops.aten


class DecomposedLayerNorm(nn.Module):
    def __init__(self, variant):
        super().__init__()
        self.variant = variant
        self.weight = nn.Parameter(torch.rand(16) + 0.5)
        self.bias = nn.Parameter(torch.randn(16))

    def forward(self, x):
        d = x - x.mean(-1, keepdim=True)
        if self.variant == "pow-div":
            y = d / torch.sqrt(d.pow(2).mean(-1, keepdim=True) + 1e-5)
            return y * self.weight + self.bias
        if self.variant == "mul-rsqrt":
            y = d * torch.rsqrt((d * d).mean(-1, keepdim=True) + 1e-12)
            return self.bias + self.weight * y
        y = d * torch.reciprocal(torch.sqrt(d.pow(2).mean(-1, keepdim=True) + 1e-6))
        return self.weight * y + self.bias


class HFStyleRMSNorm(nn.Module):
    """The LLaMA RMSNorm as HF writes it (casts included)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(16) + 0.5)

    def forward(self, x):
        h = x.to(torch.float32)
        variance = h.pow(2).mean(-1, keepdim=True)
        h = h * torch.rsqrt(variance + 1e-6)
        return self.weight * h.to(x.dtype)


def _canonicalize(model, x):
    gm = capture(model.eval(), x)
    from bitfold.passes import RemoveNoOps

    PassManager([InlineScalarConstants(), RemoveNoOps(), CanonicalizeNorms()], sample_inputs=(x,)).run(gm)
    return gm


@pytest.mark.parametrize("variant", ["pow-div", "mul-rsqrt", "recip"])
def test_layer_norm_variants(variant):
    x = torch.randn(2, 5, 16)
    model = DecomposedLayerNorm(variant)
    gm = _canonicalize(model, x)
    assert count(gm, aten.layer_norm.default) == 1
    assert [n.target for n in gm.graph.nodes if n.op == "call_function"] == [aten.layer_norm.default]
    ln = next(n for n in gm.graph.nodes if n.target == aten.layer_norm.default)
    assert ln.args[1] == [16]
    assert_same_outputs(gm, model, x)


def test_hf_rms_norm():
    x = torch.randn(2, 5, 16)
    model = HFStyleRMSNorm()
    gm = _canonicalize(model, x)
    assert [n.target for n in gm.graph.nodes if n.op == "call_function"] == [aten.rms_norm.default]
    assert_same_outputs(gm, model, x)


def test_mean_over_a_non_trailing_axis_is_refused_with_a_reason():
    class OverAxis1(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(5, 1))

        def forward(self, x):
            return self.weight * (x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + 1e-6))

    x = torch.randn(2, 5, 16)
    model = OverAxis1()
    gm = _canonicalize(model, x)
    assert count(gm, aten.rms_norm.default) == 0
    reasons = [r for n in gm.graph.nodes for r in explain(gm, n.name)]
    assert any("not the trailing ones" in r for r in reasons)
    assert_same_outputs(gm, model, x)
