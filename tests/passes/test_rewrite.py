"""Pattern / check / rewrite rules, and explain() for rejected matches."""

import torch
from torch import fx

from bitfold.passes import Match, RewritePass, RewriteRule, explain

from ._helpers import assert_same_outputs, capture, count

aten = torch.ops.aten


class ReluOfRelu(RewriteRule):
    """relu(relu(x)) → relu(x), but only for float inputs (to exercise the check)."""

    def patterns(self):
        def pattern(x):
            return aten.relu.default(aten.relu.default(x))

        return [pattern]

    def check(self, match: Match, gm: fx.GraphModule):
        if match["x"].meta["val"].shape[-1] == 3:
            return self.fail("inputs of width 3 are kept for this test")
        return None

    def rewrite(self, match: Match, gm: fx.GraphModule) -> fx.Node:
        return gm.graph.call_function(aten.relu.default, (match["x"],))


class TwoRelus(torch.nn.Module):
    def forward(self, a, b):
        return torch.relu(torch.relu(a)).sum() + torch.relu(torch.relu(b)).sum()


def test_rule_rewrites_and_explains_rejections():
    a, b = torch.randn(2, 4), torch.randn(2, 3)
    model = TwoRelus()
    gm = capture(model, a, b)
    assert count(gm, aten.relu.default) == 4
    result = RewritePass([ReluOfRelu()]).run(gm)
    assert result.modified
    assert count(gm, aten.relu.default) == 3
    assert any("inputs of width 3" in note for note in result.notes)
    rejected = [n.name for n in gm.graph.nodes if explain(gm, n.name)]
    assert len(rejected) == 1
    assert explain(gm, rejected[0]) == ["ReluOfRelu: inputs of width 3 are kept for this test"]
    assert_same_outputs(gm, model, a, b)
