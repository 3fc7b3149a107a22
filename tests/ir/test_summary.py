"""summarize / classify / MarkQuantizable: what is quantizable and why the rest stays float."""

import torch
from torch import nn

from bitfold.ir import from_torch, summarize
from bitfold.ir.quantizable import classify
from bitfold.passes import MarkQuantizable


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 8)
        self.conv = nn.Conv1d(8, 8, 1)

    def forward(self, ids):
        x = self.norm(self.emb(ids))
        y = self.fc(x)
        att = torch.softmax(y @ x.transpose(-1, -2), -1)
        return att @ x + self.conv(x.transpose(1, 2)).transpose(1, 2)


def test_classification_and_summary():
    gm = from_torch(Tiny(), (torch.randint(0, 20, (1, 6)),))
    MarkQuantizable().run(gm)
    decisions = {n.name: n.meta["bitfold_quant"] for n in gm.graph.nodes if "bitfold_quant" in n.meta}
    kinds = sorted(d.kind for d in decisions.values() if d.quantizable)
    assert kinds == ["act_matmul", "act_matmul", "conv", "embedding", "linear"]
    ln = next(d for name, d in decisions.items() if name.startswith("layer_norm"))
    assert not ln.quantizable and "normalization" in ln.reason
    text = summarize(gm)
    assert "quantizable layers (5)" in text and "8x8" in text
    assert "softmax stays float" in text and "aten.linear" in text
    fc = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.linear.default)
    assert fc.meta["bitfold_input_norm"].startswith("layer_norm")
    assert "input norm" in text


def test_linear_with_runtime_weight_is_not_quantizable():
    class RuntimeWeight(nn.Module):
        def forward(self, x, w):
            return torch.nn.functional.linear(x, w)

    gm = from_torch(RuntimeWeight(), (torch.randn(2, 4), torch.randn(3, 4)))
    node = next(n for n in gm.graph.nodes if n.op == "call_function")
    decision = classify(gm, node)
    assert decision.kind == "linear" and not decision.quantizable and "run time" in decision.reason
