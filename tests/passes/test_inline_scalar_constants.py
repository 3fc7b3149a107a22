"""InlineScalarConstants: one-element constants in arithmetic become literals."""

import torch
from torch import nn

from bitfold.passes import InlineScalarConstants

from ._helpers import assert_same_outputs, capture

aten = torch.ops.aten


class ScalarTensors(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("eps", torch.tensor(1e-5))
        self.register_buffer("two", torch.tensor(2.0))
        self.register_buffer("wide", torch.ones(1, 1, 1) * 3)

    def forward(self, x):
        return (torch.pow(x, self.two) + self.eps) * self.wide


def test_scalars_inlined_but_broadcasting_constants_kept():
    x = torch.randn(5)
    model = ScalarTensors()
    gm = capture(model, x)
    assert InlineScalarConstants().run(gm).modified
    by_target = {n.target: n for n in gm.graph.nodes if n.op == "call_function"}
    assert by_target[aten.pow.Tensor_Scalar].args[1] == 2.0
    assert abs(by_target[aten.add.Tensor].args[1] - 1e-5) < 1e-12
    # [1, 1, 1] against a rank-1 input broadcasts the result to rank 3: not a scalar.
    assert isinstance(by_target[aten.mul.Tensor].args[1], torch.fx.Node)
    assert_same_outputs(gm, model, x)
