"""PassManager: fixed point, verification that names the pass that broke equivalence."""

import pytest
import torch
from torch import fx

from bitfold.passes import EquivalenceError, Pass, PassError, PassManager, PassResult, RemoveNoOps

from ._helpers import capture

aten = torch.ops.aten


class ScaleLinearWeights(Pass):
    """Deliberately wrong: doubles the first linear weight but claims to preserve semantics."""

    def call(self, gm: fx.GraphModule) -> PassResult:
        for node in gm.graph.nodes:
            if node.target == aten.linear.default and not node.meta.get("doubled"):
                weight = getattr(gm, node.args[1].target.replace(".", "_"), None)
                param = gm.get_parameter(node.args[1].target) if weight is None else weight
                with torch.no_grad():
                    param.mul_(2)
                node.meta["doubled"] = True
                return PassResult(gm, True)
        return PassResult(gm, False)


class CountingPass(Pass):
    """Modifies the graph twice (appending a no-op clone), then reports no change."""

    def __init__(self):
        self.calls = 0

    def call(self, gm: fx.GraphModule) -> PassResult:
        self.calls += 1
        if self.calls > 2:
            return PassResult(gm, False)
        out = next(n for n in gm.graph.nodes if n.op == "output")
        src = out.args[0][0]
        with gm.graph.inserting_before(out):
            clone = gm.graph.call_function(aten.clone.default, (src,))
        out.args = ((clone,),)
        return PassResult(gm, True)


def _model():
    return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))


def test_verification_names_the_pass_that_broke_equivalence():
    x = torch.randn(3, 8)
    gm = capture(_model(), x)
    manager = PassManager([RemoveNoOps(), ScaleLinearWeights()], sample_inputs=(x,))
    with pytest.raises(EquivalenceError, match=r"pass scale_linear_weights changed the model's outputs \(iteration 1\)"):
        manager.run(gm)
    assert manager.history[-1].name == "scale_linear_weights"


def test_fixed_point_and_history():
    x = torch.randn(3, 8)
    gm = capture(_model(), x)
    counting = CountingPass()
    manager = PassManager([counting, RemoveNoOps()], sample_inputs=(x,))
    result = manager.run(gm)
    assert result.modified and counting.calls == 3
    assert [(r.name, r.iteration, r.modified) for r in manager.history] == [
        ("counting_pass", 1, True), ("remove_no_ops", 1, True),
        ("counting_pass", 2, True), ("remove_no_ops", 2, True),
        ("counting_pass", 3, False), ("remove_no_ops", 3, False),
    ]
    assert all(r.max_relative_error == 0.0 for r in manager.history if r.modified)


def test_a_pass_that_raises_is_named():
    class Broken(Pass):
        def call(self, gm):
            raise ZeroDivisionError("oops")

    gm = capture(_model(), torch.randn(2, 8))
    with pytest.raises(PassError, match="pass broken failed in iteration 1: oops"):
        PassManager([Broken()]).run(gm)


def test_requires_is_checked_before_the_pass():
    class NeedsConv(Pass):
        def requires(self, gm):
            if not any(n.target == aten.conv2d.default for n in gm.graph.nodes):
                raise PassError("needs a conv")

        def call(self, gm):
            return PassResult(gm, False)

    with pytest.raises(PassError, match="needs a conv"):
        NeedsConv().run(capture(_model(), torch.randn(2, 8)))


def test_no_fixed_point_is_an_error():
    class Forever(Pass):
        def call(self, gm):
            return PassResult(gm, True)

    with pytest.raises(PassError, match="fixed point in 3 iterations"):
        PassManager([Forever()], max_iterations=3).run(capture(_model(), torch.randn(2, 8)))
