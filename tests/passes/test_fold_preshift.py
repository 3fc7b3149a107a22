"""FoldPreshift: the pre-shift goes into the norm's gamma/beta, or into up_proj's rows."""

import importlib

import torch

import bitfold
from bitfold.passes.fold_preshift import FoldScaleIntoNorm
from bitfold.passes.rewrite import RewritePass

F = torch.nn.functional
QL = torch.ops.bitfold.quantized_linear.default


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
    folded = bitfold.quantize(model, "w4a4-fp", data, progress=False)
    quantize_module = importlib.import_module("bitfold.api.quantize")
    monkeypatch.setattr(quantize_module, "FoldPreshift", lambda: RewritePass([FoldScaleIntoNorm()]))
    unfolded = bitfold.quantize(model, "w4a4-fp", data, progress=False)

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
