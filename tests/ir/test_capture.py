"""from_torch: the canonical form, dynamic shapes, and errors that say what to do."""

import pytest
import torch
from torch import nn

from bitfold.ir import CaptureError, from_torch

aten = torch.ops.aten


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 8)
        self.emb = nn.Embedding(10, 8)

    def forward(self, ids):
        x = self.emb(ids)
        return x + self.fc(self.norm(x)).relu()


def test_canonical_form():
    ids = torch.randint(0, 10, (2, 5))
    model = Block()
    gm = from_torch(model, (ids,))
    targets = {n.target for n in gm.graph.nodes if n.op == "call_function"}
    assert {aten.embedding.default, aten.layer_norm.default, aten.linear.default} <= targets
    assert all(isinstance(t, torch._ops.OpOverload) for t in targets)
    assert not any(n.op == "call_module" for n in gm.graph.nodes)
    attrs = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    assert {"fc.weight", "fc.bias", "norm.weight", "emb.weight"} <= attrs
    torch.testing.assert_close(gm(ids), model(ids), rtol=1e-5, atol=1e-6)
    assert gm.meta["bitfold_source"] == "torch"


def test_dynamic_shapes_run_at_other_sizes():
    model = Block()
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    gm = from_torch(model, (torch.randint(0, 10, (2, 5)),), dynamic_shapes=({0: batch, 1: seq},))
    ids = torch.randint(0, 10, (3, 11))
    torch.testing.assert_close(gm(ids), model(ids), rtol=1e-5, atol=1e-6)


def test_model_stays_in_its_training_mode():
    model = Block().train()
    from_torch(model, (torch.randint(0, 10, (1, 3)),))
    assert model.training


def test_data_dependent_control_flow_gets_advice():
    class Branchy(nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return x + 1
            return x - 1

    with pytest.raises(CaptureError) as err:
        from_torch(Branchy(), (torch.randn(3),))
    message = str(err.value)
    assert "torch.export could not trace Branchy" in message
    assert "what to try:" in message and "torch.cond" in message


def test_not_a_module():
    with pytest.raises(CaptureError, match="expects a torch.nn.Module"):
        from_torch(lambda x: x, (torch.randn(2),))
