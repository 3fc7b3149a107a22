"""FoldBatchNorm: structure (BN gone or kept with a reason) and numerics."""

import torch
from torch import nn

from bitfold.passes import FoldBatchNorm, PassManager, explain

from ._helpers import assert_same_outputs, capture, count

aten = torch.ops.aten


def _randomize(bn):
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.2, 3)
        if bn.affine:
            bn.weight.uniform_(0.5, 2)
            bn.bias.uniform_(-1, 1)
    return bn


class ConvBN(nn.Module):
    def __init__(self, bias=True, groups=1, affine=True):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1, bias=bias, groups=groups)
        self.bn = _randomize(nn.BatchNorm2d(8, affine=affine))

    def forward(self, x):
        return self.bn(self.conv(x))


def _fold(model, *inputs):
    gm = capture(model, *inputs)
    PassManager([FoldBatchNorm()], sample_inputs=inputs).run(gm)
    return gm


def test_conv_bn_is_folded_with_and_without_bias_groups_affine():
    x = torch.randn(2, 4, 9, 9)
    for kwargs in ({}, {"bias": False}, {"groups": 4}, {"affine": False}):
        model = ConvBN(**kwargs).eval()
        gm = _fold(model, x)
        assert count(gm, aten.batch_norm.default) == 0 and count(gm, aten.conv2d.default) == 1
        assert_same_outputs(gm, model, x)


def test_linear_bn1d_and_a_channel_preserving_reshape_in_between():
    class LinearBN(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.bn = nn.Linear(6, 5), _randomize(nn.BatchNorm1d(5))

        def forward(self, x):
            return self.bn(self.fc(x))

    class ConvReshapeBN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 5, 1), _randomize(nn.BatchNorm1d(5))

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y.reshape(y.shape[0], 5, -1))

    for model, x in ((LinearBN(), torch.randn(4, 6)), (ConvReshapeBN(), torch.randn(2, 3, 4, 4))):
        gm = _fold(model.eval(), x)
        assert count(gm, aten.batch_norm.default) == 0
        assert_same_outputs(gm, model, x)


def test_conv_relu_bn_is_left_alone_with_a_reason():
    class ConvReluBN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), _randomize(nn.BatchNorm2d(4))

        def forward(self, x):
            return self.bn(torch.relu(self.conv(x)))

    x = torch.randn(1, 3, 8, 8)
    model = ConvReluBN().eval()
    gm = _fold(model, x)
    bn = next(n for n in gm.graph.nodes if n.target == aten.batch_norm.default)
    assert "input comes from relu" in explain(gm, bn.name)[0]
    assert_same_outputs(gm, model, x)


def test_shared_conv_output_is_not_folded():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 1), _randomize(nn.BatchNorm2d(4))

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    x = torch.randn(1, 3, 4, 4)
    model = Shared().eval()
    gm = _fold(model, x)
    bn = next(n for n in gm.graph.nodes if n.target == aten.batch_norm.default)
    assert "also feeds other nodes" in explain(gm, bn.name)[0]
    assert_same_outputs(gm, model, x)


def test_folded_weights_replace_the_originals():
    x = torch.randn(1, 4, 5, 5)
    gm = _fold(ConvBN().eval(), x)
    names = {name for name, _ in gm.named_parameters()} | {name for name, _ in gm.named_buffers()}
    assert not any(name.startswith("bn.") for name in names)
    assert "conv.weight" not in names
