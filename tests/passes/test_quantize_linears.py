"""QuantizeLinears + FoldPreshift: structure, and the pre-shift fold identity (bit-exact)."""

import torch
from torch import nn

from bitfold.ir import formats
from bitfold.passes import PassManager
from bitfold.passes.fold_preshift import FoldPreshift
from bitfold.passes.quantize_linears import ActivationPlan, QuantizeLinears, WeightPlan

from ._helpers import capture, count

aten = torch.ops.aten
bitfold = torch.ops.bitfold


class NormQKV(nn.Module):
    def __init__(self, residual: bool = False):
        super().__init__()
        self.residual = residual
        self.norm = nn.LayerNorm(32)
        with torch.no_grad():
            self.norm.weight.uniform_(0.2, 3.0)
            self.norm.bias.uniform_(-1, 1)
        self.q, self.k, self.v = nn.Linear(32, 16), nn.Linear(32, 16), nn.Linear(32, 16)

    def forward(self, x):
        h = self.norm(x)
        out = self.q(h) + self.k(h) * self.v(h)
        return out + h[..., :16] if self.residual else out


def _plans(gm, shift):
    e2m1 = formats.get("e2m1")
    linears = [n for n in gm.graph.nodes if n.target == aten.linear.default]
    weights = {}
    for n in linears:
        w = getattr(gm, n.args[1].target.split(".")[0]).weight
        weights[n.name] = WeightPlan("e2m1", w.detach().abs().amax(1) / e2m1.max)
    rho_scale = float(e2m1.scale_for_bias(torch.tensor(1.3)))
    return weights, {linears[0].args[0].name: ActivationPlan("e2m1", rho_scale, shift=shift)}


def _reference(model, x, weights_plan, act_scale, shift):
    """Per-channel-bias simulation: Q(x; ρ + k_j) per input channel, then W quantized per row."""
    e2m1 = formats.get("e2m1")
    h = model.norm(x)
    per_channel = act_scale * torch.exp2(-shift.float())
    hq = e2m1.quantize(h, per_channel, axis=-1)
    outs = []
    for name, lin in (("q", model.q), ("k", model.k), ("v", model.v)):
        w = lin.weight.detach()
        wq = e2m1.quantize(w, w.abs().amax(1) / e2m1.max, axis=0)
        outs.append(nn.functional.linear(hq, wq, lin.bias))
    return outs[0] + outs[1] * outs[2]


def test_shared_quantizer_and_fold_into_norm_is_bit_identical():
    torch.manual_seed(0)
    model = NormQKV().eval()
    x = torch.randn(3, 7, 32) * 4
    gm = capture(model, x)
    shift = torch.randint(0, 4, (32,), dtype=torch.int32)
    weights, acts = _plans(gm, shift)
    QuantizeLinears(weights, acts).run(gm)
    assert count(gm, bitfold.quantized_linear.default) == 3
    assert count(gm, bitfold.fake_quantize.default) == 1  # Q/K/V share one quantizer and one k
    assert count(gm, aten.mul.Tensor) == 2  # the pre-shift multiply and the model's q*v
    with torch.no_grad():
        before = gm(x)
        ref = _reference(model, x, weights, next(iter(acts.values())).scale, shift)
    assert torch.equal(before, ref)

    PassManager([FoldPreshift()], sample_inputs=(x,)).run(gm)
    assert count(gm, aten.mul.Tensor) == 1  # the shift now lives in the LayerNorm's gamma/beta
    with torch.no_grad():
        assert torch.equal(gm(x), ref)


def test_norm_with_another_user_keeps_the_shift_and_says_why():
    from bitfold.passes import explain

    torch.manual_seed(1)
    model = NormQKV(residual=True).eval()
    x = torch.randn(2, 5, 32)
    gm = capture(model, x)
    weights, acts = _plans(gm, torch.randint(0, 3, (32,), dtype=torch.int32))
    QuantizeLinears(weights, acts).run(gm)
    PassManager([FoldPreshift()], sample_inputs=(x,)).run(gm)
    shift_mul = next(n for n in gm.graph.nodes if n.target == aten.mul.Tensor
                     and n.args[0].target == aten.layer_norm.default)
    assert "also feeds other nodes" in explain(gm, shift_mul.name)[0]
