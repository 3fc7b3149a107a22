"""FoldPreshift: the pre-shift goes into the norm's gamma/beta, or into up_proj's rows."""

import dataclasses
import importlib

import torch

import bitfold
from bitfold.recipes import load_recipe
from bitfold.passes.fold_preshift import FoldScaleIntoNorm
from bitfold.passes.rewrite import RewritePass

F = torch.nn.functional
QL = torch.ops.bitfold.quantized_linear.default
#: w4a4-fp without its Hadamard rotation: a rotated down_proj input has no producer to fold into.
W4A4_FOLDED = dataclasses.replace(load_recipe("w4a4-fp"), rotate=None)


class GatedMlp(torch.nn.Module):
    """LLaMA's MLP after an RMSNorm: down(silu(gate(h)) · up(h))."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.norm = torch.nn.RMSNorm(32)
        self.gate, self.up = torch.nn.Linear(32, 64, bias=False), torch.nn.Linear(32, 64, bias=True)
        self.down = torch.nn.Linear(64, 32, bias=False)

    def forward(self, x):
        h = self.norm(x)
        return self.down(F.silu(self.gate(h)) * self.up(h))


def _data():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 32, generator=g) * 2 for _ in range(4)]


def test_down_proj_shift_moves_into_up_proj_rows_exactly(monkeypatch):
    model, data = GatedMlp().eval(), _data()
    folded = bitfold.quantize(model, W4A4_FOLDED, data, progress=False)
    quantize_module = importlib.import_module("bitfold.api.quantize")
    monkeypatch.setattr(quantize_module, "FoldPreshift", lambda: RewritePass([FoldScaleIntoNorm()]))
    unfolded = bitfold.quantize(model, W4A4_FOLDED, data, progress=False)

    def down_input(q):
        down = [n for n in q.graph_module.graph.nodes if n.target is QL][-1]
        return down.args[0].args[0]  # what down's activation quantizer reads

    assert down_input(unfolded).target is torch.ops.aten.mul.Tensor
    assert down_input(unfolded).args[0].target is torch.ops.aten.mul.Tensor  # (silu · up) · 2^k
    product = down_input(folded)
    assert product.target is torch.ops.aten.mul.Tensor and any(a.target is QL for a in product.args)
    up = next(a for a in product.args if a.target is QL)
    assert "rows_shifted" in up.args[5].target and "bias_shifted" in up.args[9].target
    shift = dict(unfolded.graph_module.named_buffers())
    assert any(float(v.max()) > 1 for k, v in shift.items() if k.endswith("input_scale"))  # a real shift
    x = torch.randn(6, 32) * 2
    assert torch.equal(folded(x), unfolded(x))


class Attention(torch.nn.Module):
    """BERT's self-attention after a LayerNorm: heads split from v_proj's output, merged before o_proj.

    ``leak`` adds v_proj's output to the result too, so its rows cannot carry the shift."""

    def __init__(self, leak: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.norm = torch.nn.LayerNorm(32)
        self.q, self.k, self.v, self.o = (torch.nn.Linear(32, 32) for _ in range(4))
        self.leak = leak
        with torch.no_grad():
            self.v.weight[::5].mul_(16.0)  # channels far apart, so the shifts differ

    def forward(self, x):
        b, s, _ = x.shape
        h = self.norm(x)
        split = lambda t: t.view(b, s, 4, 8).transpose(1, 2)
        v = self.v(h)
        probs = torch.softmax(split(self.q(h)) @ split(self.k(h)).transpose(2, 3) / 8**0.5, dim=-1)
        context = (probs @ split(v)).transpose(1, 2).reshape(b, s, 32)
        return self.o(context) + (v if self.leak else 0)


def _o_proj_input(q):
    o = [n for n in q.graph_module.graph.nodes if n.target is QL][-1]
    return o.args[0].args[0]  # what o_proj's activation quantizer reads


def test_attention_output_shift_moves_into_v_proj_rows_exactly(monkeypatch):
    data = [torch.randn(2, 6 + i % 2, 32, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    model = Attention().eval()  # captured with a dynamic sequence length: the calibration lengths vary
    folded = bitfold.quantize(model, W4A4_FOLDED, data, progress=False)
    quantize_module = importlib.import_module("bitfold.api.quantize")
    monkeypatch.setattr(quantize_module, "FoldPreshift", lambda: RewritePass([FoldScaleIntoNorm()]))
    unfolded = bitfold.quantize(model, W4A4_FOLDED, data, progress=False)

    assert _o_proj_input(unfolded).target is torch.ops.aten.mul.Tensor  # merged heads · 2^k
    merged = _o_proj_input(folded)
    assert merged.target is torch.ops.aten.reshape.default
    v_proj = next(n for n in folded.graph_module.graph.nodes if n.target is QL and "rows_shifted" in str(n.args[5]))
    assert "bias_shifted" in v_proj.args[9].target
    shifts = [v for k, v in unfolded.graph_module.named_buffers() if k.endswith("input_scale") and v.numel() == 32]
    assert any(float(v.max()) > 1 for v in shifts)  # a real shift
    x = torch.randn(3, 9, 32)
    assert torch.equal(folded(x), unfolded(x))


def test_v_proj_read_elsewhere_keeps_the_shift_with_the_reason():
    model = Attention(leak=True).eval()
    q = bitfold.quantize(model, W4A4_FOLDED, [torch.randn(2, 6, 32)], progress=False)
    mul = _o_proj_input(q)
    assert mul.target is torch.ops.aten.mul.Tensor
    assert any("FoldScaleIntoValueProjection: a node between" in r and "has other users" in r
               for r in mul.meta.get("bitfold_why", []))
