"""Write your own graph pass with bitfold's pattern / check / rewrite API and run it.

Models written by hand often spell SiLU as ``x * torch.sigmoid(x)``, or Swish-β as
``x * torch.sigmoid(β * x)``. Captured, that is ATen's ``mul(x, sigmoid(x))``, which neither
the activation fusion nor a backend kernel recognizes. The rule below rewrites it to
``aten.silu(x)``:

* **patterns**: small Python functions written with ``torch.ops.aten`` calls, like the
  model itself. Because they use ``x`` twice, they only match where the multiply and the
  sigmoid read the *same* tensor; ``β`` is a pattern input, so it binds to whatever
  constant the graph holds there;
* **check**: side conditions, each refusal recorded with its reason: Swish-β is SiLU only
  for ``β = 1`` (``β = 1.702`` is the "quick GELU" of CLIP, which must stay as it is);
* **rewrite**: build the replacement; the pass wires it in and removes the matched nodes.

The :class:`~bitfold.passes.PassManager` runs the rule with the standard clean-up passes and
:class:`~bitfold.passes.FuseActivation` to a fixed point. Given sample inputs it checks
after every pass that the model's outputs did not change (the rewrite is exact: SiLU *is*
``x·σ(x)``) and would name the pass if one did. Finally :func:`~bitfold.passes.explain`
answers "why was this node not rewritten?".

    python examples/custom_pass.py
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Optional, Sequence

import torch
from torch import fx, nn

from bitfold.ir import from_torch
from bitfold.passes import FuseActivation, PassManager, RewritePass, RewriteRule, explain, standard_passes
from bitfold.passes.rewrite import Failure, Match

aten = torch.ops.aten


class SigmoidGateToSilu(RewriteRule):
    """``x · sigmoid(x)`` and ``x · sigmoid(β·x)`` with ``β = 1`` → ``silu(x)``."""

    def patterns(self) -> Sequence[Callable]:
        return [
            lambda x: aten.mul.Tensor(x, aten.sigmoid.default(x)),
            lambda x, beta: aten.mul.Tensor(x, aten.sigmoid.default(aten.mul.Tensor(x, beta))),
        ]

    def check(self, match: Match, gm: fx.GraphModule) -> Optional[Failure]:
        if "beta" in match and match["beta"] != 1:
            return self.fail(f"the gate is sigmoid({match['beta']:g}·x): Swish-β with β ≠ 1 is not SiLU")
        return None

    def rewrite(self, match: Match, gm: fx.GraphModule) -> fx.Node:
        return gm.graph.call_function(aten.silu.default, (match["x"],))


class SiluFromSigmoidGate(RewritePass):
    """Rewrite hand-written ``x * sigmoid(x)`` into ``silu(x)`` (exact)."""

    def __init__(self) -> None:
        super().__init__([SigmoidGateToSilu()])


class HandWrittenSwish(nn.Module):
    """A linear with a hand-written SiLU, and one with CLIP's quick GELU ``y · sigmoid(1.702·y)``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.up, self.down = nn.Linear(16, 32), nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        h = h * torch.sigmoid(h)                 # rewritten to silu, then fused into up
        y = self.down(h)
        return y * torch.sigmoid(1.702 * y)      # quick GELU: the check refuses it, with the reason


def op_counts(gm: fx.GraphModule) -> Counter:
    return Counter(getattr(n.target, "__name__", str(n.target)) for n in gm.graph.nodes if n.op == "call_function")


def main() -> None:
    model = HandWrittenSwish().eval()
    x = torch.randn(4, 16)
    gm = from_torch(model, (x,))
    print("captured:     ", dict(op_counts(gm)))

    manager = PassManager([*standard_passes(), SiluFromSigmoidGate(), FuseActivation()], sample_inputs=(x,))
    manager.run(gm)
    print("after passes: ", dict(op_counts(gm)))

    for record in manager.history:
        if record.modified:
            error = "" if record.max_relative_error is None else f", output change {record.max_relative_error:.1e}"
            print(f"  {record.name} changed the graph (iteration {record.iteration}{error})")

    print("why some nodes were left alone:")
    for node in gm.graph.nodes:
        for reason in explain(gm, node.name):
            print(f"  {node.name}: {reason}")

    with torch.no_grad():
        same = torch.allclose(gm(x), model(x), rtol=1e-5, atol=1e-6)
    print(f"outputs match the original model: {same}")


if __name__ == "__main__":
    main()
