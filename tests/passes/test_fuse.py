"""FuseBias and FuseActivation: one linear/conv node with its bias and activation."""

import pytest
import torch
from torch import nn

from bitfold.passes import FoldConstants, FuseActivation, FuseBias, PassManager, explain

from ._helpers import assert_same_outputs, capture, count

aten = torch.ops.aten
bitfold = torch.ops.bitfold


class MatMulAdd(nn.Module):
    """The ONNX spelling of a linear layer: x @ W + b, W of shape [K, N]."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 6))
        self.b = nn.Parameter(torch.randn(6))
        self.cw = nn.Parameter(torch.randn(4, 3, 3, 3))
        self.cb = nn.Parameter(torch.randn(1, 4, 1, 1))

    def forward(self, x, img):
        y = torch.relu(x @ self.w + self.b)
        z = torch.nn.functional.conv2d(img, self.cw, padding=1) + self.cb
        return y.sum() + torch.clamp(z, 0, 6).sum()


def test_matmul_add_becomes_linear_with_bias_then_fused():
    x, img = torch.randn(3, 8), torch.randn(1, 3, 5, 5)
    model = MatMulAdd()
    gm = capture(model, x, img)
    PassManager([FoldConstants(), FuseBias()], sample_inputs=(x, img)).run(gm)
    assert count(gm, aten.matmul.default) == 0 and count(gm, aten.linear.default) == 1
    assert count(gm, aten.add.Tensor) == 1  # only the final sum of two activations
    linear = next(n for n in gm.graph.nodes if n.target == aten.linear.default)
    conv = next(n for n in gm.graph.nodes if n.target == aten.conv2d.default)
    assert linear.args[2] is not None and conv.args[2] is not None
    assert_same_outputs(gm, model, x, img)

    PassManager([FuseActivation()], sample_inputs=(x, img)).run(gm)
    fused = {n.target: n for n in gm.graph.nodes if n.op == "call_function"}
    assert fused[bitfold.fused_linear.default].args[3] == "relu"
    assert fused[bitfold.fused_conv2d.default].args[7] == "relu6"
    assert count(gm, aten.relu.default) == 0 and count(gm, aten.clamp.default) == 0
    assert_same_outputs(gm, model, x, img)


@pytest.mark.parametrize("act,name", [(nn.GELU(), "gelu"), (nn.GELU("tanh"), "gelu_tanh"), (nn.SiLU(), "silu"),
                                      (nn.Sigmoid(), "sigmoid"), (nn.Hardswish(), "hardswish")])
def test_activations(act, name):
    model = nn.Sequential(nn.Linear(4, 4), act)
    x = torch.randn(2, 4)
    gm = capture(model, x)
    PassManager([FuseActivation()], sample_inputs=(x,)).run(gm)
    node = next(n for n in gm.graph.nodes if n.target == bitfold.fused_linear.default)
    assert node.args[3] == name
    assert_same_outputs(gm, model, x)


def test_shared_pre_activation_is_not_fused():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            y = self.fc(x)
            return torch.relu(y) + y

    x = torch.randn(2, 4)
    gm = capture(Shared(), x)
    FuseActivation().run(gm)
    relu = next(n for n in gm.graph.nodes if n.target == aten.relu.default)
    assert "also feeds other nodes" in explain(gm, relu.name)[0]


def test_matmul_between_activations_stays_with_a_reason():
    class Attn(nn.Module):
        def forward(self, q, k):
            return q @ k.transpose(-1, -2)

    q = torch.randn(2, 3, 4)
    gm = capture(Attn(), q, q)
    FuseBias().run(gm)
    mm = next(n for n in gm.graph.nodes if n.target == aten.matmul.default)
    assert "computed at run time" in explain(gm, mm.name)[0]
