"""FoldConstants and EliminateDeadCode: constant subexpressions become constants."""

import torch
from torch import nn

from bitfold.passes import EliminateDeadCode, FoldConstants, PassManager

from ._helpers import assert_same_outputs, capture, count

aten = torch.ops.aten


class TransposedWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(5, 7))
        self.unused = nn.Parameter(torch.randn(3))

    def forward(self, x):
        w = self.w.t() * 2.0
        return x @ w + torch.ones(5) + torch.dropout(x, 0.0, False).sum()


def test_constant_subexpressions_are_folded_and_unused_params_dropped():
    x = torch.randn(3, 7)
    model = TransposedWeight().eval()
    gm = capture(model, x)
    assert count(gm, aten.t.default) == 1 and count(gm, aten.ones.default) == 1
    PassManager([FoldConstants(), EliminateDeadCode()], sample_inputs=(x,)).run(gm)
    assert count(gm, aten.t.default) == 0 and count(gm, aten.mul.Tensor) == 0 and count(gm, aten.ones.default) == 0
    assert count(gm, aten.matmul.default) == 1
    names = {n for n, _ in gm.named_parameters()} | {n for n, _ in gm.named_buffers()}
    assert "w" not in names and "unused" not in names
    assert_same_outputs(gm, model, x)


def test_random_ops_are_not_folded():
    class Noise(nn.Module):
        def forward(self, x):
            return x + torch.randn(3)

    gm = capture(Noise(), torch.randn(3))
    FoldConstants().run(gm)
    assert count(gm, aten.randn.default) == 1
