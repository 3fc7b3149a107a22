"""RemoveNoOps: identities disappear, training-mode dropout stays with a reason."""

import torch
from torch import nn

from bitfold.passes import PassManager, RemoveNoOps, explain

from ._helpers import assert_same_outputs, capture, count

aten = torch.ops.aten


class NoOps(nn.Module):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        y = self.drop(x) * 1
        y = y.reshape(2, 3, 6) + 0
        y = y.permute(0, 1, 2).clone().contiguous() / 1
        y = y[:, 0:3] - 0
        return self.fc(y.to(torch.float32))


def test_identities_are_removed():
    x = torch.randn(2, 3, 6)
    model = NoOps().eval()
    gm = capture(model, x)
    PassManager([RemoveNoOps()], sample_inputs=(x,)).run(gm)
    ops = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert ops == [aten.linear.default]
    assert_same_outputs(gm, model, x)


def test_real_reshapes_and_arithmetic_stay():
    class Real(nn.Module):
        def forward(self, x):
            return (x.reshape(3, 4) * 2 + 1).permute(1, 0)

    x = torch.randn(4, 3)
    gm = capture(Real(), x)
    RemoveNoOps().run(gm)
    assert count(gm, aten.reshape.default) == 1 and count(gm, aten.mul.Tensor) == 1
    assert count(gm, aten.add.Tensor) == 1 and count(gm, aten.permute.default) == 1


def test_training_dropout_is_kept_with_a_reason():
    class TrainDrop(nn.Module):
        def forward(self, x):
            return torch.nn.functional.dropout(x, 0.5, training=True)

    gm = capture(TrainDrop(), torch.randn(4))
    RemoveNoOps().run(gm)
    drop = next(n for n in gm.graph.nodes if n.target == aten.dropout.default)
    assert "training mode" in explain(gm, drop.name)[0]


def test_dtype_changing_multiplication_by_one_stays():
    class IntTimesOne(nn.Module):
        def forward(self, x):
            return x * 1.0

    gm = capture(IntTimesOne(), torch.arange(4))
    RemoveNoOps().run(gm)
    assert count(gm, aten.mul.Tensor) == 1
