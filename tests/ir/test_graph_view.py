"""GraphView: producers/consumers, dominators, reachability, LayerNorm fan-out to Q/K/V."""

import torch
from torch import nn

from bitfold.ir import GraphView, from_torch

aten = torch.ops.aten


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.out = nn.Linear(8, 8)

    def forward(self, x):
        h = self.norm(x)
        q = self.q(h)
        k = self.k(h.reshape(x.shape))
        v = self.v(h)
        a = torch.softmax(q @ k.transpose(-1, -2), -1) @ v
        return x + self.out(a)


def _view():
    gm = from_torch(Attention(), (torch.randn(2, 4, 8),))
    return gm, GraphView(gm), {n.name: n for n in gm.graph.nodes}


def test_fan_out_of_layer_norm_through_views():
    gm, view, nodes = _view()
    ln = next(n for n in gm.graph.nodes if n.target == aten.layer_norm.default)
    qkv = view.fan_out(ln, target=lambda n: n.target == aten.linear.default,
                       through=lambda n: n.target in (aten.reshape.default, aten.view.default))
    weights = [n.args[1].target for n in qkv]
    assert weights == ["q.weight", "k.weight", "v.weight"]


def test_producers_consumers_reachability_dominators():
    gm, view, nodes = _view()
    ln = next(n for n in gm.graph.nodes if n.target == aten.layer_norm.default)
    out_linear = [n for n in gm.graph.nodes if n.target == aten.linear.default][-1]
    x = next(n for n in gm.graph.nodes if n.op == "placeholder")
    assert x in view.producers(ln)
    assert ln in view.consumers(x)
    assert view.reachable(ln, out_linear) and not view.reachable(out_linear, ln)
    softmax = next(n for n in gm.graph.nodes if n.target == aten.softmax.int)
    assert view.dominates(ln, softmax)
    assert not view.dominates(ln, out_linear.next)  # the residual add also sees x directly
    assert out_linear in view.descendants(ln) and ln in view.ancestors(out_linear)


def test_norm_inputs_groups_qkv_under_their_layer_norm():
    from bitfold.ir.quantizable import norm_inputs

    gm, view, nodes = _view()
    fed = norm_inputs(gm, view)
    assert sorted(layer.args[1].target for layer in fed) == ["k.weight", "q.weight", "v.weight"]
    assert len(set(fed.values())) == 1
