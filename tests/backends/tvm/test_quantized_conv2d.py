"""``bitfold::quantized_conv2d`` compiled by TVM: the weight decoded in the module, then conv2d."""

import dataclasses

import numpy as np
import pytest
import torch

import bitfold
from bitfold.backends.tvm import compile
from bitfold.recipes import load_recipe

pytestmark = pytest.mark.slow


class Cnn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.dw = torch.nn.Conv2d(8, 8, 5, padding=2, groups=8, bias=False)
        self.pw = torch.nn.Conv2d(8, 12, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        return self.pw(torch.nn.functional.relu6(self.dw(x)))


@pytest.mark.parametrize("recipe", ["w4a16-int-g128", "w4a4-fp", "w8a8-int"])
def test_compiled_convolutions_match_the_simulation(recipe):
    torch.manual_seed(0)
    data = [torch.randn(2, 3, 16, 16) for _ in range(2)]
    q = bitfold.quantize(Cnn().eval(), recipe, data, progress=False)
    assert sum(n.target is torch.ops.bitfold.quantized_conv2d.default for n in q.graph_module.graph.nodes) == 3
    cm = compile(q, "llvm", example_inputs=(data[0],))
    x = torch.randn(2, 3, 16, 16)
    want = q(x).detach()
    got = torch.as_tensor(np.asarray(cm(x)))
    assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())


def test_the_module_keeps_the_weight_packed():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(64, 128, 3, padding=1).eval()
    data = [torch.randn(1, 64, 8, 8)]
    q = bitfold.quantize(conv, dataclasses.replace(load_recipe("w4a16-int"), layers=["conv"]), data, progress=False)
    cm = compile(q, "llvm", example_inputs=(data[0],))
    params = [np.asarray(p.numpy()) for p in cm.params]
    codes = [p for p in params if p.dtype == np.uint8]
    assert [c.shape for c in codes] == [(128, 64 * 9 // 2)]             # two 4-bit codes per byte
    assert not any(p.dtype == np.float32 and p.size == 128 * 64 * 9 for p in params)
    want = q(data[0]).detach()
    assert float((torch.as_tensor(np.asarray(cm(data[0]))) - want).abs().max()) <= 1e-5 * float(want.abs().max())
